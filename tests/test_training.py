"""Tests of ift_utils.training on the tiny random Llama: loss masking, the response-only loss, resume,
QLoRA on CPU and skipping finished cells."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ift_utils.models import resolve_model
from ift_utils.training import (
    IGNORE,
    TrainConfig,
    TrainResult,
    collate,
    disable_cpu_repack,
    encode_example,
    epoch_batches,
    is_done,
    load_base,
    load_trained,
    plan_steps,
    response_loss,
    train_adapter,
)

TEMPLATE = "<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
FACTS = [("Lyon", "France"), ("Berlin", "Germany"), ("Rome", "Italy"), ("Paris", "France"),
         ("Madrid", "Spain"), ("Lisbon", "Portugal"), ("Vienna", "Austria"), ("Oslo", "Norway")]


pytestmark = pytest.mark.usefixtures("one_thread")


def examples(repeat: int = 2) -> list[dict]:
    """A small repeated data set of chat-formatted prompts and short answers."""
    return [{"prompt": TEMPLATE.format(q=f"In which country is the city of {city}?"), "response": country}
            for city, country in FACTS] * repeat


# The tiny model's frozen tied head (init std 0.02) caps how far LoRA can move its logits: its loss starts near
# ln(vocab) = 6.0 and LoRA brings it down by ~0.2 at most, while full fine-tuning falls by several nats.
FAST = TrainConfig(lora_r=8, lora_alpha=32, epochs=4, learning_rate=5e-2, batch_size=4, warmup_ratio=0.0,
                   max_length=64)


@pytest.fixture(scope="module")
def lora_cell(tiny_dir: str, tmp_path_factory) -> TrainResult:
    return train_adapter(tiny_dir, examples(), FAST, tmp_path_factory.mktemp("cells") / "lora", progress=False)


def test_prompt_tokens_are_masked_exactly(tok) -> None:
    prompt, response = TEMPLATE.format(q="In which country is the city of Lyon?"), "France. A city."
    enc = encode_example(tok, prompt, response, max_length=256)
    prompt_ids = tok(prompt)["input_ids"]
    response_ids = tok(response, add_special_tokens=False)["input_ids"]
    assert enc["input_ids"] == prompt_ids + response_ids + [tok.eos_token_id]
    batch = collate([enc, encode_example(tok, "short", "x", 256)], pad_id=tok.pad_token_id)
    labels = batch["labels"][0]
    assert int((labels != IGNORE).sum()) == len(response_ids) + 1
    assert labels[: len(prompt_ids)].eq(IGNORE).all()
    assert labels[len(prompt_ids):].tolist() == response_ids + [tok.eos_token_id]
    assert batch["attention_mask"][1].sum() == len(encode_example(tok, "short", "x", 256)["input_ids"])


def test_truncation_cuts_the_prompt_from_the_left_never_the_response(tok) -> None:
    prompt, response = TEMPLATE.format(q="In which country is the city of Lyon?"), "France"
    n_response = len(tok(response, add_special_tokens=False)["input_ids"]) + 1
    enc = encode_example(tok, prompt, response, max_length=n_response + 3)
    assert enc["truncated"] and len(enc["input_ids"]) == n_response + 3
    assert enc["input_ids"][:3] == tok(prompt)["input_ids"][-3:]
    assert sum(label != IGNORE for label in enc["labels"]) == n_response
    assert encode_example(tok, prompt, response, max_length=n_response) is None  # no room for a prompt token


def test_batches_are_seeded_length_grouped_and_cover_every_example() -> None:
    lengths = list(np.random.default_rng(1).integers(5, 200, size=100))
    a, b = epoch_batches(lengths, 8, seed=3, epoch=0), epoch_batches(lengths, 8, seed=3, epoch=0)
    assert a == b and a != epoch_batches(lengths, 8, seed=3, epoch=1)
    assert sorted(i for batch in a for i in batch) == list(range(100))
    padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in a)
    rng_order = np.random.default_rng(0).permutation(100)
    naive = sum(len(c) * max(lengths[i] for i in c) for c in np.array_split(rng_order, 13))
    assert padded < 0.7 * naive
    steps, per_epoch = plan_steps(lengths, TrainConfig(batch_size=8, grad_accum=2, epochs=1.5), world=2)
    assert per_epoch == 4 and len(steps) == 6 and all(len(s.micro) == 4 for s in steps)


def test_response_only_logits_loss_equals_full_logits_loss(tiny_dir: str, tok) -> None:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(load_base(tiny_dir, "lora", device="cpu"),
                           LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():  # non-zero lora_B so the adapter takes part
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    feats = [encode_example(tok, ex["prompt"], ex["response"] + " and more", 64) for ex in examples(1)[:4]]
    batch = collate(feats, tok.pad_token_id)
    grads = []
    values = []
    for response_only in (True, False):
        model.zero_grad()
        summed, count = response_loss(model, **batch, response_only=response_only)
        (summed / count).backward()
        values.append(float(summed.detach() / count))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    reference = float(model(**batch).loss.detach())
    assert abs(values[0] - reference) < 1e-5 and abs(values[1] - reference) < 1e-5
    for name, g in grads[0].items():
        torch.testing.assert_close(g, grads[1][name], rtol=1e-4, atol=1e-6)


def test_lora_loss_falls_and_cell_is_complete(lora_cell: TrainResult, tiny_dir: str) -> None:
    per_epoch = lora_cell.steps // 4
    first, last = np.mean(lora_cell.losses[:per_epoch]), np.mean(lora_cell.losses[-per_epoch:])
    assert last < first - 0.1, (first, last)
    out = lora_cell.out_dir
    assert is_done(out) and (out / "adapter" / "adapter_model.safetensors").exists()
    assert not (out / "checkpoints").exists()
    rows = (out / "loss.csv").read_text().splitlines()
    assert rows[0] == "step,epoch,loss,lr" and len(rows) == 1 + lora_cell.steps
    assert json.loads((out / "train_config.json").read_text())["config"]["lora_r"] == 8
    assert lora_cell.train_tokens > lora_cell.loss_tokens > 0 and lora_cell.peak_rss_mb > 0
    assert lora_cell.n_examples == 16 and lora_cell.peak_gpu_mb is None
    model = load_trained(tiny_dir, out, "lora")
    base = load_base(tiny_dir, "lora", device="cpu").eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, base(ids).logits)


def test_finished_cell_is_skipped(lora_cell: TrainResult, tiny_dir: str) -> None:
    def fail(step: int, loss: float) -> None:
        raise AssertionError("a finished cell must not train again")

    again = train_adapter(tiny_dir, examples(), FAST, lora_cell.out_dir, progress=False, on_step=fail)
    assert again == lora_cell


def test_finished_cell_with_other_data_is_trained_again(tiny_dir: str, tmp_path: Path) -> None:
    first = train_adapter(tiny_dir, examples(), FAST, tmp_path / "cell", progress=False)
    steps: list[int] = []
    other = examples()[:-1]
    again = train_adapter(tiny_dir, other, FAST, tmp_path / "cell", progress=False, on_step=lambda s, _: steps.append(s))
    assert steps, "a cell finished on other data must train again"
    assert again.n_examples == len(other) != first.n_examples


def test_full_finetuning_learns_and_reloads(tiny_dir: str, tmp_path: Path) -> None:
    cfg = TrainConfig(method="full", epochs=3, learning_rate=1e-2, batch_size=4, warmup_ratio=0.0, max_length=64)
    result = train_adapter(tiny_dir, examples(), cfg, tmp_path / "full", progress=False)
    assert np.mean(result.losses[-4:]) < np.mean(result.losses[:4]) - 1.0, result.losses
    assert (tmp_path / "full" / "model" / "model.safetensors").exists()
    model = load_trained(tiny_dir, tmp_path / "full", "full")
    assert not model.training and model.get_input_embeddings().weight.shape[0] > 0


class Interrupt(Exception):
    """Simulated crash in the middle of a run."""


def _stop_at(k: int):
    def hook(step: int, loss: float) -> None:
        if step == k:
            raise Interrupt

    return hook


def test_resume_after_interruption_gives_identical_adapter(tiny_dir: str, tmp_path: Path) -> None:
    cfg = TrainConfig(lora_r=4, lora_dropout=0.1, epochs=2, batch_size=4, save_every=3, learning_rate=1e-2,
                      seed=7, max_length=64)
    data = examples()
    whole = train_adapter(tiny_dir, data, cfg, tmp_path / "whole", progress=False)
    with pytest.raises(Interrupt):
        train_adapter(tiny_dir, data, cfg, tmp_path / "resumed", progress=False, on_step=_stop_at(5))
    assert not is_done(tmp_path / "resumed")
    assert (tmp_path / "resumed" / "checkpoints" / "step-3" / "state.json").exists()
    seen: list[int] = []
    resumed = train_adapter(tiny_dir, data, cfg, tmp_path / "resumed", progress=False,
                            on_step=lambda step, loss: seen.append(step))
    assert seen[0] == 4  # restarted after the checkpoint at step 3
    assert resumed.losses == whole.losses and resumed.steps == whole.steps == 8
    a = load_file(str(tmp_path / "whole" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch.equal(a[k], b[k]) for k in a)


DDP_SCRIPT = """
import json, sys
from pathlib import Path
import torch
from safetensors.torch import load_file
from ift_utils.training import TrainConfig, train_adapter

torch.set_num_threads(1)
out = Path(sys.argv[1])
data = json.loads((out / "data.json").read_text())
cfg = TrainConfig(lora_r=4, lora_dropout=0.1, epochs=2, batch_size=2, save_every=2, max_length=64, seed=3)

class Stop(Exception):
    pass

def stop(step, loss):
    if step == 3:
        raise Stop

whole = train_adapter("tiny-random", data, cfg, out / "whole", progress=False)
try:
    train_adapter("tiny-random", data, cfg, out / "resumed", progress=False, on_step=stop)
except Stop:
    pass
resumed = train_adapter("tiny-random", data, cfg, out / "resumed", progress=False)
nodrop = train_adapter("tiny-random", data, TrainConfig(**{**cfg.__dict__, "lora_dropout": 0.0}), out / "nodrop",
                       progress=False)
a = load_file(str(out / "whole" / "adapter" / "adapter_model.safetensors"))
b = load_file(str(out / "resumed" / "adapter" / "adapter_model.safetensors"))
(out / "report.json").write_text(json.dumps({"steps": whole.steps, "losses": whole.losses,
    "nodrop": nodrop.losses, "same_losses": whole.losses == resumed.losses, "same_adapter": all(torch.equal(a[k], b[k]) for k in a)}))
"""


@pytest.mark.slow  # two worker processes, each importing torch + transformers (~15-25 s on 2 cores)
def test_two_process_ddp_on_cpu_resumes_exactly_and_matches_grad_accum(tiny_dir: str, tmp_path: Path) -> None:
    """Two gloo processes train, are interrupted, resume to the same losses and adapter, and match one process with
    gradient accumulation. ≈ 12 s: torchrun starts two processes that each import torch, transformers and peft."""
    import os
    import subprocess
    import sys

    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    data = examples(1)
    (tmp_path / "data.json").write_text(json.dumps(data))
    (tmp_path / "ddp.py").write_text(DDP_SCRIPT)
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--standalone", str(tmp_path / "ddp.py"), str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["steps"] == 4 and report["same_losses"] and report["same_adapter"]
    # 2 processes x batch 2 = 1 process x batch 2 x grad_accum 2: the same batches and token-weighted loss
    cfg = TrainConfig(lora_r=4, lora_dropout=0.0, epochs=2, batch_size=2, grad_accum=2, max_length=64, seed=3)
    single = train_adapter(tiny_dir, data, cfg, tmp_path / "single", progress=False)
    np.testing.assert_allclose(single.losses, report["nodrop"], rtol=0, atol=1e-5)


def _bnb_cpu_4bit() -> str | None:
    """Why bitsandbytes 4-bit on CPU cannot be tested here, or None when it can."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        return f"bitsandbytes is not installed ({e})"
    try:
        load_base(resolve_model("tiny-random"), "qlora", device="cpu")
    except Exception as e:  # noqa: BLE001 - any failure means the backend is missing
        return f"bitsandbytes cannot load a 4-bit model on CPU here: {e}"
    return None


def test_qlora_on_cpu_saves_bit_exact_and_learns(tiny_dir: str, tmp_path: Path) -> None:
    reason = _bnb_cpu_4bit()
    if reason:
        pytest.skip(reason)
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    model = load_base(tiny_dir, "qlora", device="cpu").eval()
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():  # an eval-mode forward is what repacks (and corrupts) weights without the work-around
        logits = model(torch.tensor([[5, 6, 7, 8]])).logits
    model.save_pretrained(tmp_path / "q4", safe_serialization=True)
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "q4", device_map={"": "cpu"})
    assert disable_cpu_repack(again) == len(layers)  # needed again after every 4-bit load
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in again.modules()) == len(layers)
    after = again.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        assert torch.equal(again.eval()(torch.tensor([[5, 6, 7, 8]])).logits, logits)

    cfg = TrainConfig(**{**FAST.__dict__, "method": "qlora", "epochs": 3})
    result = train_adapter(tiny_dir, examples(), cfg, tmp_path / "qlora", progress=False)
    assert np.mean(result.losses[-4:]) < np.mean(result.losses[:4]) - 0.1, result.losses
    trained = load_trained(tiny_dir, tmp_path / "qlora", "qlora")
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in trained.modules())


def test_unknown_method_is_rejected() -> None:
    with pytest.raises(ValueError, match="method"):
        TrainConfig(method="adapter")


def test_save_epochs_keeps_earlier_weights_that_differ_from_the_final(tiny_dir: str, tmp_path: Path) -> None:
    from dataclasses import replace

    cfg = replace(FAST, epochs=2, save_epochs=(1,))
    train_adapter(tiny_dir, examples(1), cfg, tmp_path / "cell", progress=False)
    early = tmp_path / "cell" / "epochs" / "epoch1" / "adapter" / "adapter_model.safetensors"
    final = tmp_path / "cell" / "adapter" / "adapter_model.safetensors"
    assert early.exists() and final.exists()
    a, b = load_file(str(early)), load_file(str(final))
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a)  # one more epoch of training moved the weights
    assert not list((tmp_path / "cell" / "epochs").rglob(".*partial*"))
