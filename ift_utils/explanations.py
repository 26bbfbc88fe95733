"""Explanations written by the base model for a given answer (gold or its own), URIAL-style.

Why: the self-aligning group pairs the model's own (wrong) answer with an explanation the base model
writes for it, so the response stays consistent with what the model already believes (docs/design.md §2).

Two prompt styles:
- "paper": a URIAL preamble, one worked example, then "Below is a multiple-choice question and the
  answer. Please give the explanation." with the question, choices and answer letter; the prompt ends
  with an opening ``` and the model writes until the closing ```. Sampling T=0.7, top-p 0.8, 256 tokens.
- "short": the same idea in a compact form for small models (answer letter *and* text, one short worked
  example, 48 new tokens).

Extraction rule (the original's, docs/design.md §2; stated once): the explanation is the text between the first
pair of ``` — the prompt supplies the opening fence (a fence the model repeats at the start is dropped), so
it is the completion up to the first closing ```; without a closing fence it is the whole completion. Such
a completion is kept, never replaced, and counted: *truncated* when it hit the token limit, *no_fence*
when it ended (EOS) before. Only a blank result (*empty*) takes the template (`template_explanation`).
Statuses are recomputed from the cached completion on every read, so a cache outlives a change of rule.

Every group's explanations are made one way (`Explanation.source`): "model" (this module, gold answer for
gold groups, the model's own for self-aligning), "template" (`template_explanation`: a sentence stating only
the answer's own relation), or "data" (an explanation the data bring, kept for gold answers).

Seeding: each item samples from its own `torch.Generator`, seeded from (cfg.seed, id, choice), inside a
logits processor; `generate` then decodes greedily over the one-hot result. So an item's draws do not
depend on which batch it lands in. Padded batches change logits by float rounding only (~1e-6), which
can flip a sampled token only when a uniform draw falls on a boundary — rare, not impossible.

Cache: one JSON line per finished item, appended and flushed as soon as its batch ends, keyed by
sha256 of (prompt, style, temperature, top_p, max_new_tokens, item seed, model name). A rerun reuses
cached items (resumable after a kill); lines that do not parse (a partially written last line) are
ignored and counted.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ift_utils.io import sha256_json
from ift_utils.prompts import question_block
from ift_utils.records import LETTERS, MCQ

FENCE = "```"
STYLES = ("short", "paper")
DEFAULT_MAX_NEW_TOKENS = {"short": 48, "paper": 256}
INSTRUCTION = "Below is a multiple-choice question and the answer. Please give the explanation."

URIAL_PREAMBLE = """# Instruction

Below is a list of conversations between a human and an AI assistant (you).
Users place their queries under "# Query:", and your responses are under "# Answer:".
You are a helpful, respectful, and honest assistant.
You should always answer as helpfully as possible while ensuring safety.
Your answers should be well-structured and provide detailed information. They should also have an engaging tone.
Your responses should not contain any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content, even if it may be helpful.
Your response must be socially responsible, and thus you can refuse to answer some controversial topics.

"""

EXAMPLE = MCQ(id=-1, question="Which planet is known as the Red Planet?",
              choices=("Venus", "Mars", "Jupiter", "Saturn"), answer=1)
EXAMPLE_PAPER = ("The answer is B. Mars is called the Red Planet because its surface is covered with iron oxide, "
                 "better known as rust. The fine reddish dust and rocks give the planet its distinctive colour, "
                 "which is visible even to the naked eye from Earth. Venus looks yellowish-white, while Jupiter "
                 "and Saturn are gas giants with banded, pale appearances.")
EXAMPLE_SHORT = "Mars looks red because its surface is covered with reddish iron oxide dust."


@dataclass
class ExplainConfig:
    """Prompt style and sampling settings; `max_new_tokens=None` takes the style's default (48 / 256)."""

    style: str = "short"
    temperature: float = 0.7
    top_p: float = 0.8
    max_new_tokens: int | None = None
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"explanation style must be one of {STYLES}, got {self.style!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    @property
    def new_tokens(self) -> int:
        """The token limit in force (explicit, else the style's default)."""
        return self.max_new_tokens or DEFAULT_MAX_NEW_TOKENS[self.style]


def _paper_query(q: MCQ, choice: int) -> str:
    return f"{INSTRUCTION}\n\n{question_block(q)} {LETTERS[choice]}"


def _short_query(q: MCQ, choice: int) -> str:
    return f"{question_block(q)} {LETTERS[choice]}. {q.choices[choice]}\nExplanation:\n"


def explain_prompt(q: MCQ, choice: int, style: str = "short") -> str:
    """The prompt asking the model to explain answer `choice` of `q`; it ends with an opening fence."""
    if style == "paper":
        return (f"{URIAL_PREAMBLE}# Query:\n{FENCE}\n{_paper_query(EXAMPLE, EXAMPLE.answer)}\n{FENCE}\n\n"
                f"# Answer:\n{FENCE}\n{EXAMPLE_PAPER}\n{FENCE}\n\n"
                f"# Query:\n{FENCE}\n{_paper_query(q, choice)}\n{FENCE}\n\n# Answer:\n{FENCE}\n")
    if style == "short":
        return (f"{INSTRUCTION} Write one sentence between triple back-ticks.\n\n"
                f"{_short_query(EXAMPLE, EXAMPLE.answer)}{FENCE}\n{EXAMPLE_SHORT}\n{FENCE}\n\n"
                f"{_short_query(q, choice)}{FENCE}\n")
    raise ValueError(f"explanation style must be one of {STYLES}, got {style!r}")


@dataclass(frozen=True)
class Explanation:
    """One response explanation and how it was made: source "model" | "template" | "data"; status "ok",
    "no_fence", "truncated", "empty" (model output, see the extraction rule), else the source's name."""

    text: str
    source: str
    status: str


def _strip_fence(text: str) -> str:
    stripped = text.lstrip()
    return stripped[len(FENCE):] if stripped.startswith(FENCE) else text


def extract_explanation(completion: str, *, opened: bool = True) -> str:
    """The text between the first ``` pair (the opening one is in the prompt when `opened`), stripped;
    without a closing fence, the whole completion with a leading fence removed. Never None (the original
    keeps every completion)."""
    if not opened:
        parts = completion.split(FENCE)
        return parts[1].strip() if len(parts) >= 3 else _strip_fence(completion).strip()
    return _strip_fence(completion).split(FENCE)[0].strip()


def completion_status(completion: str, new_tokens: int, limit: int) -> str:
    """"ok" (closing fence), "truncated" (no closing fence, token limit hit), "no_fence" (ended before),
    or "empty" (blank explanation)."""
    if not extract_explanation(completion):
        return "empty"
    if FENCE in _strip_fence(completion):
        return "ok"
    return "truncated" if new_tokens >= limit else "no_fence"


def template_explanation(q: MCQ, choice: int) -> str:
    """A sentence that states only option `choice`'s own relation: the facts relation's sentence
    ("Lyon is a city in France.") for facts questions, else "The answer is {option text}."."""
    from ift_utils.data_facts import fact_sentence

    return fact_sentence(q, choice) or f"The answer is {q.choices[choice]}."


def fallback_explanation(q: MCQ, choice: int) -> str:
    """The template that replaces a blank model explanation (= `template_explanation`)."""
    return template_explanation(q, choice)


def item_seed(seed: int, qid: int, choice: int) -> int:
    """A per-item seed from (run seed, question id, chosen option): independent of batch composition."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{qid}:{choice}".encode()).digest()[:8], "big") >> 1


def _model_name(model: Any) -> str:
    path = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    return Path(str(path)).name


def cache_key(prompt: str, cfg: ExplainConfig, seed: int, model_name: str = "") -> str:
    """sha256 of everything that determines an item's output (batch size excluded on purpose)."""
    return sha256_json({"prompt": prompt, "style": cfg.style, "temperature": cfg.temperature, "top_p": cfg.top_p,
                        "max_new_tokens": cfg.new_tokens, "seed": seed, "model": model_name})


def read_cache(path: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """Cached records by key, and the number of lines that did not parse (e.g. a cut last line)."""
    records: dict[str, dict[str, Any]] = {}
    bad = 0
    if not path.exists():
        return records, bad
    with open(path, "rb") as f:  # bytes: a line cut inside a multi-byte character is one bad line, not an error
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line.decode("utf-8"))
                records[rec["key"]] = rec
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
                bad += 1
    return records, bad


def _append(path: Path, recs: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:  # start on a fresh line if a previous run died mid-line
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs).encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


class _SeededSampler:
    """Logits processor: temperature + top-p, then one draw per row from that row's own generator;
    returns one-hot scores so that greedy decoding picks the sampled token."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float):
        self.gens = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float()
        if self.temperature == 0:
            chosen = scores.argmax(dim=-1)
        else:
            probs = torch.softmax(scores / self.temperature, dim=-1)
            sorted_p, order = probs.sort(dim=-1, descending=True)
            before = sorted_p.cumsum(dim=-1) - sorted_p
            sorted_p = sorted_p.masked_fill(before >= self.top_p, 0.0)  # keeps at least the top token
            cdf = sorted_p.cumsum(dim=-1)
            u = torch.cat([torch.rand(1, generator=g) for g in self.gens]).to(cdf.device) * cdf[:, -1]
            pos = torch.searchsorted(cdf, u.unsqueeze(-1).contiguous()).clamp_max(cdf.shape[-1] - 1)
            chosen = order.gather(-1, pos).squeeze(-1)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(-1, chosen.unsqueeze(-1), 0.0)
        return out


class _FenceStop:
    """Stopping criterion: a row is done once its generated text contains the closing ```."""

    def __init__(self, tokenizer: Any, prompt_len: int):
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len:], skip_special_tokens=True)
        return torch.tensor([FENCE in t for t in texts], dtype=torch.bool, device=input_ids.device)


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids = list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def _generate_batch(model: Any, tokenizer: Any, prompts: list[str], seeds: list[int],
                    cfg: ExplainConfig) -> tuple[list[str], list[int]]:
    """Sample completions for one left-padded batch; return (texts, generated token counts)."""
    from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    enc = {k: v.to(model.device) for k, v in enc.items()}
    prompt_len = enc["input_ids"].shape[1]
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    gen_cfg = GenerationConfig(max_new_tokens=cfg.new_tokens, do_sample=False, num_beams=1,
                               eos_token_id=eos, pad_token_id=pad)
    out = model.generate(**enc, generation_config=gen_cfg,
                         logits_processor=LogitsProcessorList([_SeededSampler(seeds, cfg.temperature, cfg.top_p)]),
                         stopping_criteria=StoppingCriteriaList([_FenceStop(tokenizer, prompt_len)]))
    new = out[:, prompt_len:]
    texts, counts = [], []
    for row in new.tolist():
        n = len(row)
        for i, tok in enumerate(row):
            if tok in eos or tok == pad:  # EOS, or padding after a row stopped at its fence
                n = i
                break
        counts.append(n)
        texts.append(tokenizer.decode(row[:n], skip_special_tokens=True))
    return texts, counts


def generate_explanations(model: Any, tokenizer: Any, items: list[tuple[MCQ, int]], cfg: ExplainConfig,
                          cache_path: Path, progress: bool = True) -> tuple[list[Explanation], dict[str, Any]]:
    """Model-written explanations for (question, chosen option) items, in item order, cached per item.

    Stats: items, generated (model ran this call), cached (reused), ok, no_fence, truncated, empty (replaced
    by the template: `fallback`), truncated_items and fallback_items ([id, choice]), bad_cache_lines,
    new_tokens, seconds.
    """
    from ift_utils.progress import progress as tqdm

    cache_path = Path(cache_path)
    for q, choice in items:
        if not 0 <= choice < len(q.choices):
            raise ValueError(f"question {q.id}: choice {choice} out of range for {len(q.choices)} options")
    model_name = _model_name(model)
    prompts = [explain_prompt(q, c, cfg.style) for q, c in items]
    seeds = [item_seed(cfg.seed, q.id, c) for q, c in items]
    keys = [cache_key(p, cfg, s, model_name) for p, s in zip(prompts, seeds, strict=True)]
    cached, bad_lines = read_cache(cache_path)
    results: dict[str, dict[str, Any]] = {k: cached[k] for k in keys if k in cached}
    uses = Counter(keys)
    todo = list({k: i for i, k in enumerate(keys) if k not in results}.values())  # one per distinct key
    n_tok = {i: len(tokenizer(prompts[i], add_special_tokens=False)["input_ids"]) for i in todo}
    todo.sort(key=lambda i: (n_tok[i], i))  # buckets of similar length: little padding
    stats: dict[str, Any] = {"items": len(items), "generated": 0, "cached": sum(k in results for k in keys),
                             "bad_cache_lines": bad_lines, "new_tokens": 0, "seconds": 0.0}

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    bar = tqdm(total=len(todo), desc="explanations", disable=not progress or not todo)
    try:
        with torch.inference_mode():
            for start in range(0, len(todo), cfg.batch_size):
                idx = todo[start:start + cfg.batch_size]
                t0 = time.perf_counter()
                texts, counts = _generate_batch(model, tokenizer, [prompts[i] for i in idx],
                                                [seeds[i] for i in idx], cfg)
                stats["seconds"] += time.perf_counter() - t0
                recs = []
                for i, text, n in zip(idx, texts, counts, strict=True):
                    q, choice = items[i]
                    recs.append({"key": keys[i], "id": q.id, "choice": choice, "seed": seeds[i],
                                 "style": cfg.style, "completion": text, "new_tokens": n})
                    stats["new_tokens"] += n
                _append(cache_path, recs)
                for r in recs:
                    results[r["key"]] = r
                stats["generated"] += sum(uses[r["key"]] for r in recs)
                bar.update(len(idx))
    finally:
        bar.close()
        tokenizer.padding_side = side

    out: list[Explanation] = []
    for (q, choice), k in zip(items, keys, strict=True):
        rec = results[k]
        status = completion_status(rec["completion"], int(rec["new_tokens"]), cfg.new_tokens)
        out.append(Explanation(template_explanation(q, choice), "template", "empty") if status == "empty"
                   else Explanation(extract_explanation(rec["completion"]), "model", status))
    statuses = [e.status for e in out]
    for status in ("ok", "no_fence", "truncated", "empty"):
        stats[status] = statuses.count(status)
    stats["fallback"] = stats["empty"]
    stats["truncated_items"] = [[q.id, c] for (q, c), e in zip(items, out, strict=True) if e.status == "truncated"]
    stats["fallback_items"] = [[q.id, c] for (q, c), e in zip(items, out, strict=True) if e.status == "empty"]
    stats["tokens_per_s"] = stats["new_tokens"] / stats["seconds"] if stats["seconds"] else None
    stats["config"] = asdict(cfg)
    return out, stats
