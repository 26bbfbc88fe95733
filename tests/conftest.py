"""Shared fixtures: the tiny random model (built offline on first use) and a few hand-made questions."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer) of the tiny random Llama."""
    import torch

    from ift_utils.models import load_model

    torch.manual_seed(0)
    return load_model("tiny-random")


@pytest.fixture
def questions():
    from ift_utils.records import MCQ

    return [MCQ(id=i, question=f"In which country is the city of Town{i}{'x' * (i % 4)}?",
                choices=("France", "Spain", "Italy", "Germany"), answer=i % 4, domain="geo", subject="geography",
                context=f"Town{i} is a city in {('France', 'Spain', 'Italy', 'Germany')[i % 4]}.")
            for i in range(10)]
