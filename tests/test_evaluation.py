"""Evaluation: swapping adapters on one base model (weights loaded in place, or another shape injected) gives the
same scores as loading each merged model."""

import numpy as np
import torch
from peft import LoraConfig, get_peft_model

from ift_utils.models import load_model, resolve_model
from ift_utils.probing import PromptSpec, score_mcqs
from ift_utils.stages.evaluation import AdapterSwapper


def _random_adapter(path, seed, r=4):
    torch.manual_seed(seed)
    base, _ = load_model("tiny-random")
    model = get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear"))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero; make the adapter change the model
            torch.nn.init.normal_(p, std=0.5)
    model.save_pretrained(path)


def test_swapped_adapters_equal_merged_models(tmp_path, questions):
    from peft import PeftModel

    dirs = [tmp_path / f"a{i}" for i in range(4)]
    for i, d in enumerate(dirs):  # the third has another rank: injected, not loaded into the active tensors
        _random_adapter(d, seed=i, r=8 if i == 2 else 4)
    base, tok = load_model("tiny-random")
    swapper = AdapterSwapper(base)
    spec = PromptSpec(mode="cloze", template="model")
    swapped = [np.array(score_mcqs(swapper.activate(d), tok, questions, spec, show_progress=False).probs.tolist())
               for d in [*dirs, dirs[0]]]
    assert np.abs(swapped[0] - swapped[-1]).max() < 1e-6  # back to the first adapter after the others
    for d, got in zip(dirs, swapped, strict=False):
        fresh, _ = load_model("tiny-random")
        merged = PeftModel.from_pretrained(fresh, d).merge_and_unload().eval()
        want = np.array(score_mcqs(merged, tok, questions, spec, show_progress=False).probs.tolist())
        assert np.abs(got - want).max() < 1e-5
    assert np.abs(swapped[0] - swapped[1]).max() > 1e-3  # the adapters really differ
    plain, _ = load_model(resolve_model("tiny-random"))
    base_probs = np.array(score_mcqs(plain, tok, questions, spec, show_progress=False).probs.tolist())
    assert np.abs(base_probs - swapped[0]).max() > 1e-3
