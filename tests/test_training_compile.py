"""Tests of compiled training and of the model kept across cells, on the tiny random Llama: hashed dropout masks,
an adapter reset in place equal to a fresh build, and (the one test here that compiles) compiled layers giving
eager's losses without graph breaks or per-batch recompiles."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ift_utils.training import (
    FastDropout,
    ModelKeeper,
    TrainConfig,
    compile_layers,
    compiled_graphs,
    config_fingerprint_fields,
    decoder_layers,
    dropout_masks,
    graph_breaks,
    load_base,
    prefix_sharing_ok,
    train_adapter,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TEMPLATE = "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
CITIES = [("Lyon", "France"), ("Berlin", "Germany"), ("Rome", "Italy"), ("Paris", "France"), ("Madrid", "Spain"),
          ("Lisbon", "Portugal"), ("Vienna", "Austria"), ("Oslo", "Norway"), ("Porto", "Portugal"), ("Turin", "Italy")]


def examples(tail: str = "") -> list[dict]:
    """Chat-formatted examples of several lengths (so batches differ in width and in their shared prefix)."""
    return [{"prompt": TEMPLATE.format(q=f"In which country is {city}{' really' * (i % 4)}?{tail}"),
             "response": country + "." * (i % 3)} for i, (city, country) in enumerate(CITIES)]


def test_hash_dropout_has_rate_p_and_its_masks_follow_the_key() -> None:
    """Hashed masks: rate p (16-bit), the same key gives the same mask, another key (or layer) an independent one."""
    x = torch.ones(64, 1000)
    a, b = FastDropout(0.05, "hash", salt=0).train(), FastDropout(0.05, "hash", salt=1).train()
    a.key = b.key = torch.tensor(12345, dtype=torch.int32)
    m = a(x) == 0
    assert abs(m.float().mean().item() - 0.05) < 0.005
    assert torch.equal(a(x), a(x))
    other = b(x) == 0
    assert (m & other).float().mean().item() < 0.005  # independent: about 0.05² = 0.0025
    a.key = torch.tensor(12346, dtype=torch.int32)
    assert (m & (a(x) == 0)).float().mean().item() < 0.005
    assert a(x).max().item() == pytest.approx(65536 / (65536 - round(0.05 * 65536)))
    assert torch.equal(a.eval()(x), x)


def test_compile_switch_and_fingerprint() -> None:
    """compile="off" keeps numpy's masks and the old fingerprint; compiled training records its hashed masks."""
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="compile"):
        TrainConfig(compile="yes")
    off, on, auto = TrainConfig(), TrainConfig(compile="on"), TrainConfig(compile="auto")
    assert dropout_masks(off, cpu) == "numpy" and dropout_masks(on, cpu) == "hash" == dropout_masks(auto, cpu)
    assert dropout_masks(TrainConfig(method="qlora", compile="auto"), cpu) == "numpy"  # 4-bit layers: not compiled
    assert config_fingerprint_fields(off, False, "numpy") == config_fingerprint_fields(on, False, True)
    assert config_fingerprint_fields(on, False, "hash") != config_fingerprint_fields(off, False, "numpy")
    assert "compile" not in config_fingerprint_fields(on, False, "hash")


def test_compiled_layers_turn_the_shared_prefix_off(tiny_dir: str) -> None:
    """A compiled layer taking the key/value cache compiles once per layer index, so compiled runs do not share
    the prefix (marking the layers compiled costs nothing until they are called)."""
    model = load_base(tiny_dir, "lora", device="cpu")
    assert prefix_sharing_ok(model, TrainConfig(), 1)[0]
    assert compile_layers(model) == len(decoder_layers(model)) > 0
    ok, why = prefix_sharing_ok(model, TrainConfig(), 1)
    assert not ok and "compiled" in why


def test_kept_model_trains_a_cell_as_a_fresh_build_does(tiny_dir: str, tmp_path: Path) -> None:
    """A cell trained on the kept model after another cell equals the same cell trained alone (same losses and
    adapter), with dropout on; the base model is built once."""
    cfg = TrainConfig(lora_r=4, lora_dropout=0.1, epochs=2, batch_size=4, learning_rate=1e-2, max_length=64)
    keeper = ModelKeeper()
    train_adapter(tiny_dir, examples(" (first)"), cfg, tmp_path / "first", progress=False, keeper=keeper)
    kept = train_adapter(tiny_dir, examples(), cfg, tmp_path / "kept", progress=False, keeper=keeper)
    alone = train_adapter(tiny_dir, examples(), cfg, tmp_path / "alone", progress=False)
    assert keeper.builds == 1
    assert kept.losses == pytest.approx(alone.losses, rel=1e-6, abs=1e-7)
    a = load_file(str(tmp_path / "kept" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "alone" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in a)


def test_compiled_training_gives_eagers_losses_without_breaks_or_per_batch_recompiles(tiny_dir: str,
                                                                                        tmp_path: Path) -> None:
    """The one test that compiles: decoder layers compiled (hashed dropout, prefix sharing off, batches of several
    widths and a smaller last batch) give the losses of the same model run eagerly, with no graph break, a
    handful of graphs for the whole run, and at most one more for a second cell on the kept model."""
    cfg = TrainConfig(lora_r=4, lora_dropout=0.1, epochs=2, batch_size=4, learning_rate=1e-2, max_length=64,
                      compile="on")
    breaks0, graphs0 = graph_breaks(), compiled_graphs()
    keeper = ModelKeeper()
    compiled = train_adapter(tiny_dir, examples(), cfg, tmp_path / "compiled", progress=False, keeper=keeper)
    assert compiled.compiled and not compiled.shared_prefix and graph_breaks() == breaks0
    assert 0 < compiled.compiled_graphs == compiled_graphs() - graphs0 <= 8
    again = train_adapter(tiny_dir, examples(" (again)"), cfg, tmp_path / "again", progress=False, keeper=keeper)
    assert again.compiled_graphs <= 1 and keeper.builds == 1  # measured: one recompile (cause not traced yet)
    with torch.compiler.set_stance("force_eager"):
        eager = train_adapter(tiny_dir, examples(), cfg, tmp_path / "eager", progress=False)
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-4, abs=1e-5)
