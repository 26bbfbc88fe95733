"""The package's layout: imports point down (mechanisms → stages → runner), with no circle, and every notebook
imports its own stage's module."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "ift_utils"
NOTEBOOKS = PKG.parent / "notebooks"
TOP = {"ift_utils.run", "ift_utils.train_grid"}  # commands: they may import anything below them
STAGE_OF = {"01": "probe", "02": "interventions", "03": "training", "04": "evaluation", "05": "analysis"}


def module_name(path: Path) -> str:
    return ".".join(path.with_suffix("").relative_to(PKG.parent).parts).removesuffix(".__init__")


def imports_of(path: Path) -> set[str]:
    """The ift_utils modules a file imports, at top level or inside functions."""
    name, deps = module_name(path), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                mod = ".".join(name.split(".")[: -node.level] + ([mod] if mod else []))
            if mod == "ift_utils" or mod == "ift_utils.stages":
                deps |= {f"{mod}.{a.name}" for a in node.names}
            elif mod.startswith("ift_utils"):
                deps.add(mod)
        elif isinstance(node, ast.Import):
            deps |= {a.name for a in node.names if a.name.startswith("ift_utils")}
    return deps - {name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = {module_name(p): p for p in PKG.rglob("*.py")}
    return {m: {d for d in imports_of(p) if d in mods} for m, p in mods.items()}


def test_no_import_circle(graph):
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, [*stack, d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_arrows_point_down(graph):
    """Mechanisms never import a stage; stages never import the runner."""
    up = []
    for m, deps in graph.items():
        stage = m.startswith("ift_utils.stages")
        for d in deps:
            if (not stage and m not in TOP and d.startswith("ift_utils.stages")) or (stage and d in TOP):
                up.append(f"{m} -> {d}")
    assert not up, up


def test_each_notebook_imports_its_stage():
    for nb_path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(nb_path.read_text(encoding="utf-8"))["cells"]
        code = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        stage = STAGE_OF[nb_path.name[:2]]
        assert f"from ift_utils.stages import {stage} as stage" in code, nb_path.name
