"""One training configuration in a fresh process: ``python -m benchmarks.train_worker SPEC.json``.

SPEC.json holds ``model`` (registry name or folder), ``config`` (TrainConfig fields), ``examples_file``
(JSON list of {"prompt", "response"}), ``out_dir`` and ``threads`` (0 = torch's default). The last line
printed on stdout is a JSON object with the measured figures.

Timing: the first optimizer step is the warm-up; tokens/s is measured over the later steps, from the
end of step 1 to the end of the last step (the `on_step` callback of `train_adapter`). Tokens are
non-padding tokens (prompt + response + eos), as `train_adapter` counts them. Peak RSS is the process's
high-water mark from the start of `train_adapter` (model loading included), as `TrainResult` reports it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def step_tokens(model: str, examples: list[dict], cfg) -> list[int]:
    """Non-padding tokens of each optimizer step, planned exactly as `train_adapter` plans them."""
    from transformers import AutoTokenizer

    from ift_utils.models import MODEL_NAMES, resolve_model
    from ift_utils.training import encode_example, plan_steps

    tok = AutoTokenizer.from_pretrained(resolve_model(model) if model in MODEL_NAMES else model)
    encoded = [e for ex in examples if (e := encode_example(tok, ex["prompt"], ex["response"], cfg.max_length))]
    lengths = [len(e["input_ids"]) for e in encoded]
    steps, _ = plan_steps(lengths, cfg)
    return [sum(lengths[i] for mb in step.micro for i in mb) for step in steps]


def run(spec: dict) -> dict:
    """Train one configuration and return its figures (see the module docstring)."""
    import torch

    from ift_utils.training import TrainConfig, train_adapter

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    cfg = TrainConfig(**spec["config"])
    examples = json.loads(Path(spec["examples_file"]).read_text(encoding="utf-8"))
    stamps: list[float] = []
    result = train_adapter(spec["model"], examples, cfg, Path(spec["out_dir"]), progress=False,
                           on_step=lambda step, loss: stamps.append(time.perf_counter()))
    per_step = step_tokens(spec["model"], examples, cfg)
    if len(stamps) >= 2 and len(per_step) == len(stamps):
        seconds, tokens, warm = stamps[-1] - stamps[0], sum(per_step[1:]), True
    else:  # a single step: no warm-up could be left out
        seconds, tokens, warm = result.seconds, result.train_tokens, False
    return {"steps": result.steps, "timed_steps": len(stamps) - 1 if warm else result.steps,
            "timed_seconds": seconds, "timed_tokens": tokens, "tokens_per_s": tokens / seconds,
            "warm_up_excluded": warm, "loop_seconds": result.seconds, "train_tokens": result.train_tokens,
            "peak_rss_mb": result.peak_rss_mb, "first_loss": result.losses[0], "last_loss": result.losses[-1],
            "threads": torch.get_num_threads(), "precision": result.precision, "shared_prefix": result.shared_prefix}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m benchmarks.train_worker SPEC.json", file=sys.stderr)
        return 2
    out = run(json.loads(Path(args[0]).read_text(encoding="utf-8")))
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
