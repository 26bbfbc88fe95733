"""Tests of the faster training path and the epoch mechanics on the tiny random Llama: the shared prefix gives the
same loss and gradients, CPU bf16 is off unless asked, LR schedule shapes, and the on_epoch_end callback's
stop/save decisions surviving an interruption."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ift_utils.training import (
    IGNORE,
    MIN_SHARED_PREFIX,
    EpochDecision,
    FastDropout,
    TrainConfig,
    _build_model,
    collate,
    config_fingerprint_fields,
    cpu_autocast_wanted,
    encode_example,
    fast_dropout_wanted,
    load_base,
    make_scheduler,
    prefix_sharing_ok,
    response_loss,
    shared_prefix_length,
    train_adapter,
)

SYSTEM = "A chat between a curious user and an assistant. USER: "
WORDS = ["Lyon", "Berlin", "Rome", "Paris", "Madrid", "Lisbon", "Vienna", "Oslo", "Porto", "Turin", "Bonn", "Nice"]


pytestmark = pytest.mark.usefixtures("one_thread")


def data(n: int = 12) -> list[dict]:
    """Prompts sharing a system line, of different lengths (so batches are padded), with short answers."""
    return [{"prompt": SYSTEM + f"Where is {WORDS[i % len(WORDS)]}?" + " Tell me." * (i % 3) + " ASSISTANT:",
             "response": f" In country {i % 5}." + " Yes." * (i % 2)} for i in range(n)]


def _grads(model, batch: dict, shared: bool) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    summed, count = response_loss(model, **batch, shared_prefix=shared)
    (summed / count).backward()
    return float(summed.detach() / count), {n: p.grad.clone() for n, p in model.named_parameters()
                                            if p.requires_grad and p.grad is not None}


@pytest.mark.parametrize("method", ["lora", "full"])
def test_shared_prefix_gives_the_same_loss_and_gradients(tiny_dir: str, tok, method: str) -> None:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = load_base(tiny_dir, "lora", device="cpu")
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0,
                                                 task_type="CAUSAL_LM"))
        for name, p in model.named_parameters():  # non-zero lora_B so the adapter takes part
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.5)
    model.train()
    feats = [encode_example(tok, ex["prompt"], ex["response"], 128) for ex in data()]
    for start in range(0, len(feats), 4):
        batch = collate(feats[start:start + 4], tok.pad_token_id)
        assert (batch["attention_mask"] == 0).any()  # padding present
        prefix = shared_prefix_length(**batch)
        assert prefix >= MIN_SHARED_PREFIX
        assert (batch["labels"][:, : prefix + 1] == IGNORE).all()  # no loss position inside the shared part
        plain, g_plain = _grads(model, batch, shared=False)
        shared, g_shared = _grads(model, batch, shared=True)
        assert abs(plain - shared) < 1e-5
        assert g_plain.keys() == g_shared.keys() and g_plain
        for name, g in g_plain.items():
            torch.testing.assert_close(g_shared[name], g, rtol=1e-4, atol=1e-6)


def test_shared_prefix_length_stops_at_the_first_difference_and_before_the_first_label() -> None:
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 9, 9, 0]])
    mask = torch.tensor([[1] * 7, [1] * 6 + [0]])
    labels = torch.full_like(ids, IGNORE)
    assert shared_prefix_length(ids, mask, labels) == 4
    labels[0, 3] = 4  # predicted from position 2: positions 0..1 only may be shared
    assert shared_prefix_length(ids, mask, labels) == 2
    assert shared_prefix_length(ids[:1], mask[:1], labels[:1]) == 0  # one row: nothing to share


def test_prefix_sharing_falls_back_where_unchecked(tiny_dir: str) -> None:
    model = load_base(tiny_dir, "lora", device="cpu")
    assert prefix_sharing_ok(model, TrainConfig(), 1) == (True, "")
    assert not prefix_sharing_ok(model, TrainConfig(gradient_checkpointing=True), 1)[0]
    assert not prefix_sharing_ok(model, TrainConfig(), 2)[0]
    assert not prefix_sharing_ok(model, TrainConfig(shared_prefix=False), 1)[0]
    assert not prefix_sharing_ok(model, TrainConfig(response_only_logits=False), 1)[0]
    model.config.model_type = "gemma3_text"
    assert "gemma3_text" in prefix_sharing_ok(model, TrainConfig(), 1)[1]


def test_cpu_bf16_is_off_by_default_and_leaves_the_fingerprint_as_before() -> None:
    cpu = torch.device("cpu")
    assert not cpu_autocast_wanted(TrainConfig(), cpu)
    assert cpu_autocast_wanted(TrainConfig(cpu_bf16=True), cpu)
    assert not cpu_autocast_wanted(TrainConfig(cpu_bf16=True, method="qlora"), cpu)
    assert not cpu_autocast_wanted(TrainConfig(cpu_bf16=True), torch.device("cuda"))
    fields = config_fingerprint_fields(TrainConfig(), cpu_autocast=False)
    new = {"min_lr_ratio", "cpu_bf16", "shared_prefix", "cpu_autocast", "fast_dropout", "dropout_masks", "compile"}
    assert not new & fields.keys()  # cells finished before these fields existed keep their fingerprint
    assert list(fields) == [k for k in asdict(TrainConfig()) if k not in new]
    assert config_fingerprint_fields(TrainConfig(cpu_bf16="auto"), cpu_autocast=False) == fields
    assert config_fingerprint_fields(TrainConfig(cpu_bf16="auto"), cpu_autocast=True)["cpu_autocast"] == (
        "bf16 frozen, fp32 LoRA sums")
    with pytest.raises(ValueError, match="cpu_bf16"):
        TrainConfig(cpu_bf16="yes")


def test_fast_dropout_is_dropout_at_rate_p_reproducible_from_torchs_seed_and_used_on_cpu_only() -> None:
    """`FastDropout` zeroes a share p of the elements and keeps the mean; the same torch seed gives the same mask
    (so a resumed run draws what the uninterrupted one drew); gradients pass through the kept elements only."""
    drop = FastDropout(0.05)
    x = torch.ones(1000, 1000, requires_grad=True)
    torch.manual_seed(0)
    y = drop(x)
    share = float((y == 0).float().mean())
    assert abs(share - 0.05) < 5 * (0.05 * 0.95 / x.numel()) ** 0.5  # within 5 standard errors of p
    assert abs(float(y.detach().mean()) - 1) < 2e-3 and torch.allclose(y[y > 0], torch.tensor(65536 / (65536 - 3277)))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d(sum)/dx = mask * scale
    torch.manual_seed(0)
    assert torch.equal(drop(x), y)
    assert not torch.equal(drop(x), y)  # the next call draws another mask
    assert torch.equal(drop.eval()(x), x)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert fast_dropout_wanted(TrainConfig(), cpu) and not fast_dropout_wanted(TrainConfig(), gpu)
    assert not fast_dropout_wanted(TrainConfig(fast_dropout=False), cpu)
    assert not fast_dropout_wanted(TrainConfig(lora_dropout=0.0), cpu)
    assert not fast_dropout_wanted(TrainConfig(method="full"), cpu)
    fields = config_fingerprint_fields(TrainConfig(), cpu_autocast=False, fast_dropout=True)
    assert fields["dropout_masks"] == FastDropout.RNG  # a cell trained with torch's masks is another cell


FAST = TrainConfig(lora_r=4, lora_alpha=16, lora_dropout=0.1, epochs=4, learning_rate=2e-2, batch_size=4,
                   warmup_ratio=0.0, max_length=128, seed=5)


def test_precision_is_recorded_and_bf16_trains_close_to_fp32(tiny_dir: str, tmp_path: Path) -> None:
    cfg = replace(FAST, epochs=1, lora_dropout=0.0)
    fp32 = train_adapter(tiny_dir, data(8), cfg, tmp_path / "fp32", progress=False)
    bf16 = train_adapter(tiny_dir, data(8), replace(cfg, cpu_bf16=True), tmp_path / "bf16", progress=False)
    assert fp32.precision == "fp32" and fp32.shared_prefix
    assert bf16.precision == "bf16 autocast, frozen weights bf16, LoRA weights and sums fp32"
    np.testing.assert_allclose(bf16.losses, fp32.losses, atol=0.02)
    saved = load_file(str(tmp_path / "bf16" / "adapter" / "adapter_model.safetensors"))
    assert all(t.dtype == torch.float32 for t in saved.values())  # fp32 master weights


def test_cpu_bf16_lora_keeps_frozen_weights_bf16_and_adds_the_update_in_fp32(tiny_dir: str) -> None:
    """A small LoRA update survives the sum with a large base output (in bf16 it would be rounded away)."""
    from peft.tuners.lora.layer import LoraLayer

    model = _build_model(tiny_dir, replace(FAST, cpu_bf16=True), torch.device("cpu")).eval()  # no dropout
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}
    layer = next(m for m in model.modules() if isinstance(m, LoraLayer))
    name = layer.active_adapters[0]
    with torch.no_grad():
        layer.lora_B[name].weight.fill_(1e-5)
    x = torch.randn(4, layer.in_features, generator=torch.Generator().manual_seed(0)) * 100
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, base = layer(x), layer.get_base_layer()(x)
    with torch.no_grad():
        delta = x @ layer.lora_A[name].weight.T @ layer.lora_B[name].weight.T * layer.scaling[name]
    assert out.dtype == torch.float32
    assert (base.abs().max() / delta.abs().max()) > 100  # the update is < 1 % of the output: bf16 would round it
    np.testing.assert_allclose((out - base).numpy(), delta.numpy(), rtol=0.05, atol=1e-3 * float(delta.abs().max()))


def _lrs(cfg: TrainConfig, total: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.learning_rate)
    sched = make_scheduler(opt, cfg, total)
    out = []
    for _ in range(total):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


def test_lr_schedule_shapes() -> None:
    base = TrainConfig(learning_rate=1.0, warmup_ratio=0.1)
    constant = _lrs(replace(base, lr_scheduler="constant"), 20)
    assert constant[0] == 0 and constant[1] < 1 and constant[2:] == [1.0] * 18  # warm-up (2 steps), then flat
    cosine = _lrs(base, 20)
    assert max(cosine) == 1.0 and cosine[-1] < 0.01  # to (nearly) zero, as before
    floor = _lrs(replace(base, min_lr_ratio=0.2), 20)
    after = floor[2:]
    assert after[0] == 1.0 and all(np.diff(after) <= 0)
    assert min(after) >= 0.2 and after[-1] < 0.22  # decays towards the floor, never below it
    for bad in ({"lr_scheduler": "step"}, {"min_lr_ratio": 1.0}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


class Interrupt(Exception):
    """Simulated crash."""


class Judge:
    """An on_epoch_end callback: keeps epoch 1, stops after epoch 2; records what it saw."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bool, bool]] = []
        self.model = None

    def __call__(self, model, epoch: int) -> EpochDecision:
        self.model = model
        self.calls.append((epoch, model.training, torch.is_grad_enabled()))
        torch.rand(3)  # draws from the generators: must not change the run
        return EpochDecision(stop=epoch == 2, save=epoch == 1)


def test_callback_stops_saves_and_resumes_alike(tiny_dir: str, tmp_path: Path) -> None:
    judge = Judge()
    modes: list[bool] = []
    whole = train_adapter(tiny_dir, data(), FAST, tmp_path / "whole", progress=False, on_epoch_end=judge,
                          on_step=lambda s, _: modes.append(judge.model is None or judge.model.training))
    per_epoch = 3  # 12 examples, batch 4
    assert judge.calls == [(1, False, False), (2, False, False)] and all(modes)  # train mode restored
    assert whole.stop_reason == "callback" and whole.epochs_completed == 2 and whole.steps == 2 * per_epoch
    assert whole.decisions == [{"epoch": 1, "stop": False, "save": True}, {"epoch": 2, "stop": True, "save": False}]
    assert (tmp_path / "whole" / "epochs" / "epoch1" / "adapter" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "whole" / "epochs" / "epoch2").exists()
    assert len((tmp_path / "whole" / "loss.csv").read_text().splitlines()) == 1 + whole.steps

    def crash_at(k: int):
        def hook(step: int, loss: float) -> None:
            if step == k:
                raise Interrupt

        return hook

    # interrupted in epoch 2, after epoch 1's decision was checkpointed: resumed, epoch 1 is not asked again
    with pytest.raises(Interrupt):
        train_adapter(tiny_dir, data(), FAST, tmp_path / "resumed", progress=False, on_epoch_end=Judge(),
                      on_step=crash_at(per_epoch + 1))
    again = Judge()
    resumed = train_adapter(tiny_dir, data(), FAST, tmp_path / "resumed", progress=False, on_epoch_end=again)
    assert [c[0] for c in again.calls] == [2]
    assert resumed.losses == whole.losses and resumed.decisions == whole.decisions
    a = load_file(str(tmp_path / "whole" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "adapter" / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)

    # interrupted right after the stop was decided and checkpointed: the resumed run stops without training
    with pytest.raises(Interrupt):
        train_adapter(tiny_dir, data(), FAST, tmp_path / "stopped", progress=False, on_epoch_end=Judge(),
                      on_step=crash_at(2 * per_epoch))
    late = Judge()
    steps: list[int] = []
    done = train_adapter(tiny_dir, data(), FAST, tmp_path / "stopped", progress=False, on_epoch_end=late,
                         on_step=lambda s, _: steps.append(s))
    assert not late.calls and not steps
    assert done.stop_reason == "callback" and done.losses == whole.losses and done.epochs_completed == 2


def test_without_callback_all_epochs_run(tiny_dir: str, tmp_path: Path) -> None:
    result = train_adapter(tiny_dir, data(8), replace(FAST, epochs=2), tmp_path / "cell", progress=False,
                           on_epoch_end=lambda model, epoch: None)
    assert result.stop_reason == "max_epochs" and result.epochs_completed == 2 and result.steps == 4
    assert [d["epoch"] for d in result.decisions] == [1, 2]


def test_fp32_attention_for_bf16_autocast_gives_the_same_logits(tiny_dir: str) -> None:
    from ift_utils.training import use_fp32_attention

    model = load_base(tiny_dir, "lora", device="cpu").eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [5, 6, 7, 8, 1, 1]])
    mask = torch.tensor([[1] * 6, [1] * 4 + [0, 0]])  # padding: the mask must reach the new attention
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        assert use_fp32_attention(model)
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, before, rtol=0, atol=1e-6)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(input_ids=ids, attention_mask=mask).logits.float()
    assert (mixed - before).abs().max() < 0.05
