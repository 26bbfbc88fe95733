"""Which packaged base model should the default study use? Candidates side by side in one run:

    python -m benchmarks.compare_models [--quick] [--models a,b] [--per-domain N] [--threads N] [--out DIR]

For each model (default: the study's SmolLM2-135M-Instruct and the packaged base model Gemma-3-270M), with
params/default.yaml's domains, prompts and sizes (facts suite, 3-shot cloze, stage 01's `score_by_subject`):

- knowledge gradient: accuracy on the training questions by popularity quintile (log10 population, quintiles
  of each domain's questions), Q5 - Q1, and the logistic slope of `correct` on popularity; HOMO accuracy;
- the confidently-wrong pool: training questions answered wrongly with p > confidence_threshold (the raw
  material of the incompatible and self-aligning groups), as counted and per 400 training questions;
- cost: probing seconds per question and peak RSS (each model in a fresh process, model load included, one
  untimed warm-up question; timed in chunks of PROBE_CHUNK questions); seconds per LoRA step (lora_r,
  batch_size, max_length of the params, fp32, response-only logits, first step untimed) on chat examples built
  like the study's (half facts questions with gold answer and explanation, half general tasks, in the model's
  chat template or Vicuna when it has none), in a fresh process (`train_adapter`), with its peak RSS. Other
  processes on a shared CPU slow every clock (CPU time too: waiting threads spin), so the ratios between models
  use the fastest chunk and the fastest step per token; run it on an otherwise idle machine all the same;
- torch fp32 matmul GFLOP/s (1024^3, the run's threads) of this machine, so times can be scaled;
- the default study's projected time with each model: the reference run's stage seconds (outputs/default's
  manifest when there is one, else REFERENCE_STAGES from the README) times this run's cost ratio of the
  model to the reference model (training for stage 03, probing for 01, 02 and 04).

Writes compare_models.csv (long: model, section, measure, value, unit, note) and compare_models.md under --out
(default outputs/bench) and prints the markdown table. `--quick` shrinks every size to check the code runs
(figures meaningless). Gemma-3-270M's package ships its GGUF in chunks that `ift_utils.models.find_gguf` does
not assemble (yet); `model_path` assembles them with the package's own `assemble()` (sha256-checked) and
converts the result once, as `convert_gguf` does, into the cache folder `assembled/<name>`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from ift_utils.config import PROJECT_ROOT, load_params  # noqa: E402

DEFAULT_MODELS = ("smollm2-135m-instruct", "gemma3-270m")
# Stage seconds of the reference default run (README, 2026-11-30, 2-vCPU EPYC at 156 GFLOP/s, SmolLM2-135M).
REFERENCE_STAGES = {"01_probe": 78.0, "02_interventions": 35.0, "03_training": 1264.0, "04_evaluation": 564.0,
                    "05_regression": 7.0}
REFERENCE_MODEL = "smollm2-135m-instruct"
BUDGET_MINUTES = 45.0
PROBE_CHUNK = 25  # questions per timed probing call (each encodes its k-shot prefix once, as a whole split does)
QUINTILES = ("Q1", "Q2", "Q3", "Q4", "Q5")


# ---------------------------------------------------------------------------------------------- models


def model_path(name: str) -> str:
    """A folder `from_pretrained` loads offline (packaged GGUFs, split ones included, are converted once)."""
    from ift_utils.models import resolve_model

    return resolve_model(name)


def count_parameters(model) -> tuple[int, int]:
    """(all parameters, parameters outside the input embedding and an untied output head)."""
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    body = total - emb.numel()
    if head is not None and head.weight.data_ptr() != emb.data_ptr():
        body -= head.weight.numel()
    return total, body


# ---------------------------------------------------------------------------------------------- workers


def study_params(name: str, path: str, per_domain: int | None, n_test: int | None):
    """params/default.yaml with this model and (optionally) fewer training or test questions per domain."""
    overrides: dict[str, Any] = {"model": path}
    if per_domain:
        overrides["n_train"] = per_domain
    if n_test:
        overrides.update(n_test=n_test, n_id=n_test, n_ood=n_test)
    return load_params(PROJECT_ROOT / "params" / "default.yaml", overrides)


def probe_worker(spec: dict) -> dict:
    """Stage 01's probing of the training and HOMO questions for one model, in this (fresh) process: writes
    the per-question frame to spec["frame_file"] and returns timings, peak RSS and model facts."""
    from ift_utils.data_sources import load_study_data
    from ift_utils.io import write_jsonl
    from ift_utils.models import load_model
    from ift_utils.stages.probe import score_by_subject
    from ift_utils.training import _peak_rss_mb, _reset_peak_rss

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    _reset_peak_rss()
    P = study_params(spec["name"], spec["path"], spec.get("per_domain"), spec.get("n_test"))
    data = load_study_data(P)
    t0 = time.perf_counter()
    model, tok = load_model(spec["path"], dtype=torch.float32)
    load_s = time.perf_counter() - t0
    first = next(iter(data.values()))
    score_by_subject(model, tok, first.test[:1], P, first, desc="warm-up")
    chunk = int(spec.get("chunk") or PROBE_CHUNK)
    frames, rates, n, t0, c0 = [], [], 0, time.perf_counter(), time.process_time()
    for d, dd in data.items():
        for split, qs in (("train", dd.train), ("HOMO", dd.test)):
            for i in range(0, len(qs), chunk):  # chunks: the fastest one is the least disturbed by other processes
                part, tc = qs[i:i + chunk], time.perf_counter()
                f = score_by_subject(model, tok, part, P, dd, desc=f"{spec['name']} {d}/{split}")
                rates.append((time.perf_counter() - tc) / len(part))
                frames.append(f.assign(split=split, probe_domain=d))
                n += len(part)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    frame = pd.concat(frames, ignore_index=True)
    write_jsonl(spec["frame_file"], frame.to_dict(orient="records"))
    total, body = count_parameters(model)
    return {"questions": n, "probe_seconds": seconds, "probe_cpu_seconds": cpu, "fastest_seconds_per_question":
            min(rates), "chunk": chunk, "load_seconds": load_s, "peak_rss_mb": _peak_rss_mb(),
            "params_total": total, "params_body": body, "vocab": int(model.get_input_embeddings().weight.shape[0]),
            "adds_bos": bool(tok("x").input_ids[:1] == [tok.bos_token_id] and tok.bos_token_id is not None),
            "chat_template": bool(getattr(tok, "chat_template", None)), "threads": torch.get_num_threads()}


def run_worker(args: list[str], timeout: float = 3600) -> dict:
    """Run `python -m MODULE ...` from the project root; return the JSON object on its last stdout line."""
    proc = subprocess.run([sys.executable, "-m", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def training_examples(path: str, n: int, seed: int = 0) -> list[dict]:
    """Chat examples like the study's cells: half facts questions (gold answer + explanation, cloze form),
    half general tasks, in the model's chat template (Vicuna when the tokenizer has none)."""
    from ift_utils.data_facts import build_facts_suite
    from ift_utils.explanations import fallback_explanation
    from ift_utils.general_tasks import general_example, generate_general_tasks
    from ift_utils.interventions import mix_general
    from ift_utils.models import load_tokenizer
    from ift_utils.prompts import chat, ift_query, ift_response

    tok = load_tokenizer(path)
    half = max(n // 2, 1)
    suite = build_facts_suite(seed=0, domains=["city_country", "us_city_state"], n_train=half, n_dev=1, n_test=1,
                              n_id=1)
    qs = [q for d in suite.values() for q in d["train"]][::2][:half]
    domain = [{"prompt": chat(ift_query(q, mode="cloze"), "model", tok),
               "response": ift_response(q, q.answer, fallback_explanation(q, q.answer), "cloze")} for q in qs]
    general = [general_example(t, "model", tok) for t in generate_general_tasks(n - half, seed=seed)]
    return mix_general(domain, general, 1.0, seed=seed)


def train_cost(path: str, P, n_examples: int, threads: int, tmp: Path) -> dict:
    """Seconds per LoRA step and peak RSS for one model (fresh process; the first step is left out)."""
    examples = training_examples(path, n_examples, seed=0)
    tag = Path(path).name
    (tmp / f"{tag}.examples.json").write_text(json.dumps(examples), encoding="utf-8")
    spec = {"model": path, "examples_file": str(tmp / f"{tag}.examples.json"), "out_dir": str(tmp / f"{tag}.cell"),
            "threads": threads,
            "config": {"method": "lora", "lora_r": P.lora_r, "lora_alpha": P.lora_alpha, "epochs": 1,
                       "max_length": P.max_length, "batch_size": P.batch_size, "learning_rate": P.learning_rate,
                       "response_only_logits": True, "seed": 0}}
    spec_file = tmp / f"{tag}.train.json"
    spec_file.write_text(json.dumps(spec), encoding="utf-8")
    return run_worker(["benchmarks.compare_models", "--train-worker", str(spec_file)])


def train_worker(spec: dict) -> dict:
    """One short LoRA run in this (fresh) process (`train_adapter`): wall and CPU seconds per optimizer step
    after the first (warm-up), tokens per step, peak RSS (model load included), first and last loss."""
    from benchmarks.train_worker import step_tokens
    from ift_utils.training import TrainConfig, train_adapter

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    cfg = TrainConfig(**spec["config"])
    examples = json.loads(Path(spec["examples_file"]).read_text(encoding="utf-8"))
    stamps: list[tuple[float, float]] = []
    result = train_adapter(spec["model"], examples, cfg, Path(spec["out_dir"]), progress=False,
                           on_step=lambda step, loss: stamps.append((time.perf_counter(), time.process_time())))
    tokens = step_tokens(spec["model"], examples, cfg)
    if len(stamps) < 2:
        raise ValueError(f"{len(examples)} examples with batch {cfg.batch_size} give {len(stamps)} step(s); "
                         "at least 2 are needed to leave the first one out")
    steps = len(stamps) - 1
    # other processes sharing the CPU only ever slow a step down: the fastest step per token is the least disturbed
    fastest = min((stamps[i + 1][0] - stamps[i][0]) / tokens[i + 1] for i in range(steps))
    return {"timed_steps": steps, "seconds_per_step": (stamps[-1][0] - stamps[0][0]) / steps,
            "fastest_seconds_per_step": fastest * sum(tokens[1:]) / steps,
            "cpu_seconds_per_step": (stamps[-1][1] - stamps[0][1]) / steps,
            "tokens_per_step": sum(tokens[1:]) / steps, "peak_rss_mb": result.peak_rss_mb,
            "first_loss": result.losses[0], "last_loss": result.losses[-1], "threads": torch.get_num_threads()}


def matmul_gflops(threads: int, min_seconds: float) -> tuple[float, float]:
    """torch fp32 matmul of two 1024x1024 matrices with `threads` threads (as `make bench`): GFLOP/s over all
    repetitions, and of the fastest one (the least disturbed when other processes share the CPU)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    out = torch.empty(1024, 1024)
    try:
        with torch.inference_mode():
            torch.matmul(a, b, out=out)
            times: list[float] = []
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < min_seconds:
                tr = time.perf_counter()
                torch.matmul(a, b, out=out)
                times.append(time.perf_counter() - tr)
        flops = 2.0 * 1024**3
        return flops * len(times) / sum(times) / 1e9, flops / min(times) / 1e9
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------- analysis


def knowledge(frame: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per domain: accuracy by popularity quintile of the training questions, Q5 - Q1, the logistic slope of
    correct on popularity (per decade of population) with its p-value, HOMO accuracy, and the belief pools."""
    import statsmodels.formula.api as smf
    from statsmodels.tools.sm_exceptions import ConvergenceWarning, PerfectSeparationError, PerfectSeparationWarning

    from ift_utils.metrics import accuracy_ci

    rows = []
    for d, g in frame.groupby("probe_domain", sort=True):
        train = g[g["split"] == "train"].assign(correct=lambda x: x["correct"].astype(int))
        homo = g[g["split"] == "HOMO"]["correct"].astype(bool).to_numpy()
        row: dict[str, Any] = {"domain": d, "n_train": len(train), "n_homo": len(homo)}
        row["train accuracy"] = 100 * train["correct"].mean()
        quint = pd.qcut(train["popularity"].rank(method="first"), 5, labels=list(QUINTILES))
        for q, acc in train.groupby(quint, observed=False)["correct"].mean().items():
            row[f"train accuracy {q}"] = 100 * acc
        row["Q5 - Q1"] = row["train accuracy Q5"] - row["train accuracy Q1"]
        try:  # a separated or non-converged fit gives a meaningless slope: no slope then, and why
            with warnings.catch_warnings():
                warnings.simplefilter("error", ConvergenceWarning)
                warnings.simplefilter("error", PerfectSeparationWarning)
                warnings.simplefilter("error", RuntimeWarning)
                fit = smf.logit("correct ~ popularity", data=train).fit(disp=0)
            row["logit slope"], row["slope p"] = float(fit.params["popularity"]), float(fit.pvalues["popularity"])
        except (ConvergenceWarning, PerfectSeparationWarning, RuntimeWarning, np.linalg.LinAlgError,
                PerfectSeparationError, ValueError) as e:
            row["logit slope"], row["slope p"] = math.nan, math.nan
            row["slope note"] = f"logit failed: {type(e).__name__}"
        acc, lo, hi = accuracy_ci(homo)
        row["HOMO accuracy"], row["HOMO ci"] = 100 * acc, f"[{100 * lo:.0f}, {100 * hi:.0f}]"
        conf = train["confidence"] > threshold
        row["confidently wrong"] = int((conf & (train["correct"] == 0)).sum())
        row["confidently right"] = int((conf & (train["correct"] == 1)).sum())
        row["confidently wrong per 400"] = 400 * row["confidently wrong"] / max(len(train), 1)
        row["mean confidence"] = float(train["confidence"].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def default_training_steps(P) -> tuple[int, int]:
    """(cells, optimizer steps per cell) of the default study when every group is full: each cell trains
    max_per_group domain examples plus general_ratio times as many general ones for `epochs` epochs."""
    from ift_utils.stages.grid import grid

    cells = len(grid(P))
    per_cell = math.ceil(P.max_per_group * (1 + P.general_ratio) / (P.batch_size * P.grad_accum)) * math.ceil(P.epochs)
    return cells, per_cell


def reference_stages(runs_root: Path) -> tuple[dict[str, float], str]:
    """Stage seconds of the reference default run: its manifest when present, else the README figures."""
    path = runs_root / "default" / "manifest.json"
    try:
        stages = json.loads(path.read_text(encoding="utf-8")).get("stages", {})
        secs = {k: float(v["seconds"]) for k, v in stages.items() if isinstance(v.get("seconds"), (int, float))}
        if len(secs) == len(REFERENCE_STAGES):
            return secs, f"{path}"
    except (OSError, ValueError, AttributeError):
        pass
    return dict(REFERENCE_STAGES), "README (2026-11-30, 156 GFLOP/s machine)"


def projected_minutes(stages: dict[str, float], probe_ratio: float, train_ratio: float) -> float:
    """Default-study minutes with a model whose probing and training cost `probe_ratio` and `train_ratio` times
    the reference model's: stage 03 scales with training, 01/02/04 with probing (forward passes), 05 not."""
    total = 0.0
    for stage, s in stages.items():
        ratio = train_ratio if stage.startswith("03") else 1.0 if stage.startswith("05") else probe_ratio
        total += s * ratio
    return total / 60


# ---------------------------------------------------------------------------------------------- report


def cost_rows(res: dict, ref: dict, ref_name: str, P, grid_steps: tuple[int, int], stages: dict[str, float],
              stages_from: str) -> list[tuple[str, Any, str, str]]:
    """(measure, value, unit, note) of one model's cost. Other processes sharing the CPU slow every clock down,
    the CPU-time one too (waiting threads spin): the ratios to the reference model use the fastest probing chunk
    and the fastest training step (per token), the least disturbed; means are given beside them."""
    probe, train = res["probe"], res["train"]
    threads = max(probe["threads"], 1)
    spq, fastest = probe["probe_seconds"] / probe["questions"], probe["fastest_seconds_per_question"]
    probe_ratio = fastest / ref["probe"]["fastest_seconds_per_question"]
    train_ratio = train["fastest_seconds_per_step"] / ref["train"]["fastest_seconds_per_step"]
    cells, per_cell = grid_steps
    shape = (f"r={P.lora_r}, batch {P.batch_size}, max_length {P.max_length}, fp32, response-only logits; "
             f"{train['timed_steps']} timed steps after 1 untimed")
    return [
        ("parameters (all / outside embeddings)", f"{probe['params_total'] / 1e6:.0f} M / "
         f"{probe['params_body'] / 1e6:.0f} M", "", f"vocabulary {probe['vocab']:,}"),
        ("tokenizer adds BOS / has a chat template", f"{probe['adds_bos']} / {probe['chat_template']}", "",
         "" if probe["chat_template"] else "no chat template: the study's chat_template 'model' falls back to Vicuna"),
        ("probing seconds per question, fastest chunk", fastest, "s",
         f"3-shot cloze, 4 options, stage 01's score_by_subject, chunks of {probe['chunk']} questions"),
        ("probing seconds per question, mean", spq, "s", ""),
        ("probing CPU seconds per question ÷ threads", probe["probe_cpu_seconds"] / probe["questions"] / threads, "s",
         "inflated like the wall clock when others share the CPU"),
        (f"probing cost vs {ref_name} (fastest chunks)", probe_ratio, "×", ""),
        ("probing peak RSS", probe["peak_rss_mb"], "MiB", "fresh process, model load included"),
        ("LoRA seconds per step, fastest", train["fastest_seconds_per_step"], "s",
         f"{shape}; the fastest step's seconds per token × mean tokens per step"),
        ("LoRA seconds per step, mean", train["seconds_per_step"], "s", ""),
        ("LoRA CPU seconds per step ÷ threads", train["cpu_seconds_per_step"] / threads, "s", ""),
        ("LoRA tokens per step", train["tokens_per_step"], "tokens", "same examples; each model's tokenizer"),
        (f"LoRA cost vs {ref_name} (fastest steps)", train_ratio, "×", ""),
        ("LoRA peak RSS", train["peak_rss_mb"], "MiB", "fresh process, model load included"),
        ("LoRA loss first → last step", f"{train['first_loss']:.2f} → {train['last_loss']:.2f}", "",
         "losses of different batches (facts and general tasks mixed), a few steps: not a convergence check"),
        ("default-study training: steps × fastest s/step", cells * per_cell * train["fastest_seconds_per_step"] / 60,
         "min", f"{cells} cells × {per_cell} steps (full groups); no loading or evaluation"),
        ("default study projected", projected_minutes(stages, probe_ratio, train_ratio), "min",
         f"stage times of the reference run ({stages_from}) × this run's cost ratios; "
         f"budget {BUDGET_MINUTES:g} min"),
        ("first conversion (this run; 0 when cached)", res["convert_s"], "s", ""),
    ]



def long_rows(models: dict[str, dict], knowledge_frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Every figure as one row: model, section, measure, value, unit, note."""
    rows = []
    for m, res in models.items():
        for _, k in knowledge_frames[m].iterrows():
            d = k["domain"]
            for col, v in k.items():
                if col == "domain":
                    continue
                unit = "%" if "accuracy" in col or col == "Q5 - Q1" else ""
                rows.append({"model": m, "section": f"knowledge {d}", "measure": col, "value": v, "unit": unit})
        for measure, v, unit, note in res["cost"]:
            rows.append({"model": m, "section": "cost", "measure": measure, "value": v, "unit": unit, "note": note})
    return pd.DataFrame(rows, columns=["model", "section", "measure", "value", "unit", "note"])


def fmt(v: Any) -> str:
    """Numbers with sensible precision; text as is."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if v == 0 or isinstance(v, int) or float(v).is_integer() and abs(v) >= 10:
        return f"{int(v):,}"
    if abs(v) < 0.01:
        return f"{v:.1e}"
    return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"


def markdown(table: pd.DataFrame, meta: dict[str, Any]) -> str:
    """One row per (section, measure), one column per model."""
    lines = ["# Which base model: packaged candidates side by side", ""]
    if meta.get("quick"):
        lines += ["**--quick run: tiny sizes to check the code; the figures are not representative.**", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items() if k != "quick"] + [""]
    models = list(dict.fromkeys(table["model"]))
    wide = table.pivot_table(index=["section", "measure"], columns="model", values="value", aggfunc="first",
                             sort=False)
    units = table.drop_duplicates(["section", "measure"]).set_index(["section", "measure"])["unit"]
    lines += ["| Section | Measure | " + " | ".join(models) + " | Unit |", "|---|---|" + "---:|" * len(models) + "---|"]
    for (section, measure), row in wide.iterrows():
        cells = [section, measure, *(fmt(row.get(m)) for m in models), units.get((section, measure), "")]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    notes = table.dropna(subset=["note"])
    notes = notes[notes["note"].astype(str) != ""].drop_duplicates("measure")
    if len(notes):
        lines += ["", "Notes:"] + [f"- {r.measure}: {r.note}" for r in notes.itertuples()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.compare_models", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated registry names or folders")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs")
    ap.add_argument("--per-domain", type=int, default=None,
                    help="training questions probed per domain (default: params' n_train, 400)")
    ap.add_argument("--n-test", type=int, default=None, help="HOMO questions per domain (default: params' n_test)")
    ap.add_argument("--train-examples", type=int, default=48, help="chat examples for the LoRA step timing")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads in every measurement (0 = default)")
    ap.add_argument("--out", default=str(PROJECT_ROOT / "outputs" / "bench"), help="folder for the CSV and markdown")
    ap.add_argument("--runs-root", default=str(PROJECT_ROOT / "outputs"), help="where outputs/default lives")
    ap.add_argument("--probe-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--train-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.models:
        ap.error("--models: give at least one registry name or folder")
    if args.quick:
        args.per_domain = args.per_domain or 8
        args.n_test = args.n_test or 4
        args.train_examples = min(args.train_examples, 16)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for worker, spec_file in ((probe_worker, args.probe_worker), (train_worker, args.train_worker)):
        if spec_file:  # internal: one model's measurement in a fresh process
            print(json.dumps(worker(json.loads(Path(spec_file).read_text(encoding="utf-8")))), flush=True)
            return 0
    from ift_utils.io import read_jsonl, write_csv, write_text

    t_start, load = time.perf_counter(), os.getloadavg()
    P = study_params(args.models[0], args.models[0], args.per_domain, args.n_test)
    gflops = matmul_gflops(args.threads, 0.1 if args.quick else 2.0)
    cells, steps_per_cell = default_training_steps(load_params(PROJECT_ROOT / "params" / "default.yaml"))
    stages, stages_from = reference_stages(Path(args.runs_root))
    results: dict[str, dict] = {}
    frames: dict[str, pd.DataFrame] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for i, name in enumerate(args.models):
            t0 = time.perf_counter()
            path = model_path(name)
            convert_s = time.perf_counter() - t0
            spec = {"name": name, "path": path, "per_domain": args.per_domain, "n_test": args.n_test,
                    "threads": args.threads, "frame_file": str(tmp / f"probe{i}.jsonl")}
            (tmp / f"probe{i}.json").write_text(json.dumps(spec), encoding="utf-8")
            probe = run_worker(["benchmarks.compare_models", "--probe-worker", str(tmp / f"probe{i}.json")])
            frames[name] = pd.DataFrame(read_jsonl(spec["frame_file"]))
            print(f"[compare] {name}: probed {probe['questions']} questions in {probe['probe_seconds']:.0f} s",
                  file=sys.stderr, flush=True)
            train = train_cost(path, P, args.train_examples, args.threads, tmp)
            print(f"[compare] {name}: {train['fastest_seconds_per_step']:.1f} s per LoRA step (fastest; mean "
                  f"{train['seconds_per_step']:.1f} s)", file=sys.stderr, flush=True)
            results[name] = {"probe": probe, "train": train, "convert_s": convert_s}
    ref_name = REFERENCE_MODEL if REFERENCE_MODEL in results else args.models[0]
    for res in results.values():
        res["cost"] = cost_rows(res, results[ref_name], ref_name, P, (cells, steps_per_cell), stages, stages_from)
    table = long_rows(results, {m: knowledge(f, P.confidence_threshold) for m, f in frames.items()})
    machine = [{"model": m, "section": "machine", "measure": measure, "value": v, "unit": "GFLOP/s",
                "note": f"{args.threads} threads"} for m in results
               for measure, v in (("torch fp32 matmul 1024³ (all repetitions)", gflops[0]),
                                  ("torch fp32 matmul 1024³ (fastest repetition)", gflops[1]))]
    table = pd.concat([table, pd.DataFrame(machine)], ignore_index=True)
    import transformers

    meta = {"quick": args.quick, "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "CPU": f"{_cpu()} ({os.cpu_count()} logical CPUs), torch threads {args.threads or torch.get_num_threads()}",
            "fp32 matmul 1024³": f"{gflops[0]:.0f} GFLOP/s over all repetitions, {gflops[1]:.0f} in the fastest "
                                 f"(load average {load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end)",
            "versions": f"python {platform.python_version()}, torch {torch.__version__}, "
                        f"transformers {transformers.__version__}",
            "data": f"params/default.yaml facts suite (seed {P.data_seed}), domains {', '.join(P.domains)}: "
                    f"{P.n_train} training and {P.n_test} HOMO questions per domain, {P.k_shot}-shot {P.scoring}, "
                    f"confidence threshold {P.confidence_threshold}",
            "seconds": f"{time.perf_counter() - t_start:.0f} in all"}
    out = Path(args.out)
    write_csv(out / "compare_models.csv", table)
    text = markdown(table, meta)
    write_text(out / "compare_models.md", text)
    print(text)
    print(f"written: {out / 'compare_models.md'}, {out / 'compare_models.csv'}", file=sys.stderr)
    return 0


def _cpu() -> str:
    from benchmarks.common import cpu_model

    return cpu_model()


if __name__ == "__main__":
    raise SystemExit(main())
