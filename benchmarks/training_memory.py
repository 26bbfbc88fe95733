"""Training memory: tokens/s and peak RSS of LoRA fp32 against QLoRA NF4 (and full against response-only logits),
each configuration in a fresh process so its peak memory is its own."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import (
    Row,
    Sizes,
    chat_examples,
)
from ift_utils.paths import PROJECT_ROOT
from ift_utils.records import MCQ

TRAIN_CONFIGS = (  # (label, TrainConfig fields)
    ("LoRA fp32, response-only logits", {"method": "lora", "response_only_logits": True}),
    ("LoRA fp32, full logits", {"method": "lora", "response_only_logits": False}),
    ("QLoRA NF4, response-only logits", {"method": "qlora", "response_only_logits": True}),
    ("QLoRA NF4, full logits", {"method": "qlora", "response_only_logits": False}),
)


def train_in_subprocess(model_name: str, examples_file: Path, fields_: dict, out_dir: Path,
                        threads: int) -> dict:
    """Run one configuration with `benchmarks.train_worker` in a fresh Python; return its JSON figures."""
    spec = {"model": model_name, "examples_file": str(examples_file), "out_dir": str(out_dir), "threads": threads,
            "config": fields_}
    spec_file = out_dir.with_suffix(".json")
    spec_file.write_text(json.dumps(spec), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.train_worker", str(spec_file)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=1800)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"training worker failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def bench_training(model_name: str, tok, questions: list[MCQ], sizes: Sizes, threads: int) -> tuple[list[Row], dict]:
    """Tokens/s and peak RSS of each training configuration, every one in its own process."""
    examples = chat_examples(tok, questions)
    common = {"lora_r": 16, "lora_alpha": 32, "epochs": 1, "max_length": 160, "batch_size": sizes.train_batch,
              "seed": 0}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ex_file = Path(tmp) / "examples.json"
        ex_file.write_text(json.dumps(examples), encoding="utf-8")
        for i, (label, cfg) in enumerate(TRAIN_CONFIGS):
            results[label] = train_in_subprocess(model_name, ex_file, {**common, **cfg}, Path(tmp) / f"cell{i}",
                                                 threads)
    base_label = TRAIN_CONFIGS[0][0]
    base = results[base_label]
    rows = []
    for label, r in results.items():
        warm = "" if r["warm_up_excluded"] else "first step included; "
        rows.append(Row("training", f"tokens/s: {label} (vs {base_label})", r["tokens_per_s"],
                        base["tokens_per_s"], "tokens/s",
                        f"{warm}{r['timed_tokens']} tokens over {r['timed_steps']} steps; loss "
                        f"{r['first_loss']:.2f}→{r['last_loss']:.2f}"))
    for label, r in results.items():
        rows.append(Row("training", f"peak RSS: {label} (vs {base_label})", r["peak_rss_mb"],
                        base["peak_rss_mb"], "MiB", "fresh process; model load included"))
    note = (f"{len(examples)} chat examples (facts suite, model template), batch {sizes.train_batch}, "
            "LoRA r=16 all linear layers, 1 epoch, first step untimed")
    rows[0].note = f"{note}; {rows[0].note}"
    return rows, {"lora_tokens_per_s": base["tokens_per_s"]}

