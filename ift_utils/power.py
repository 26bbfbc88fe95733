"""Power and simulation: the measured variance components of a contrast, the MDE a planned design would have, and
simulated answer tables with known effects (and shared questions) to check the verdict's coverage.

The MDE is (t_{1-alpha/2} + t_power) × SE, with the t degrees of freedom of the verdict's interval (Satterthwaite
over the replicate and question parts), so a plan and a run's verdict read the same number the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .correlation import ordered_unique
from .verdict import CONTRASTS, Block, Contrast, _expit, clean_answers, contrast_blocks, two_way_anova


def variance_components(blocks: Sequence[Block]) -> dict[str, float]:
    """Method-of-moments variance components of a paired difference (replicate × question per block, pooled
    over blocks): between replicates, between questions, and the residual (one answer pair)."""
    ss = {"replicate": 0.0, "question": 0.0, "residual": 0.0}
    df = dict.fromkeys(ss, 0)
    sizes = []
    for b in blocks:
        a = two_way_anova(b.diff)
        ss["replicate"] += a["ms_rep"] * a["df_rep"]
        ss["question"] += a["ms_q"] * a["df_q"]
        ss["residual"] += a["ms_res"] * a["df_res"]
        df["replicate"] += a["df_rep"]
        df["question"] += a["df_q"]
        df["residual"] += a["df_res"]
        sizes.append((a["r"], a["q"]))
    nan = float("nan")
    ms = {k: ss[k] / df[k] if df[k] else nan for k in ss}
    r_bar = float(np.mean([s[0] for s in sizes])) if sizes else nan
    q_bar = float(np.mean([s[1] for s in sizes])) if sizes else nan
    resid = ms["residual"]
    if not np.isfinite(resid):  # one replicate: residual and replicate variance cannot be told apart
        resid = ms["question"] if np.isfinite(ms["question"]) else nan
    return {"var_replicate": max(0.0, (ms["replicate"] - resid) / q_bar) if np.isfinite(ms["replicate"]) else nan,
            "var_question": max(0.0, (ms["question"] - resid) / r_bar) if np.isfinite(ms["question"]) else nan,
            "var_residual": resid, "replicates": r_bar, "questions": q_bar, "blocks": len(sizes)}


def predict_mde(
    components: Mapping[str, float], n_domains: int, n_replicates: int, n_questions: int,
    alpha: float = 0.05, power: float = 0.80, n_clusters: int | None = None,
) -> float:
    """Minimum detectable difference (points) of one contrast on one test set for a planned design of K domains ×
    R replicates × Q questions: (t_{1-alpha/2} + t_power) × SE with Satterthwaite's df, as the verdict uses; with
    `n_clusters` (question clusters per domain: questions joined by entity or gold answer) the question part has
    K × (clusters − 1) df, as the verdict counts it."""
    for name, v in (("n_domains", n_domains), ("n_replicates", n_replicates), ("n_questions", n_questions)):
        if v < 1:
            raise ValueError(f"{name} must be at least 1, got {v}")
    k, r, q = n_domains, n_replicates, n_questions
    v_rep = components["var_replicate"] / r / k
    v_q = (components["var_question"] / q + components["var_residual"] / (q * r)) / k
    parts = [(v_rep, k * (r - 1)), (v_q, k * (min(q, n_clusters or q) - 1))]
    var = v_rep + v_q
    denom = sum(v * v / d for v, d in parts if d > 0 and v > 0)
    dof = max(var * var / denom, 1.0) if denom > 0 else 1.0
    mult = stats.t.ppf(1 - alpha / 2, dof) + stats.t.ppf(power, dof)
    return float(100 * mult * math.sqrt(var))


def power_table(answers: pd.DataFrame, contrasts: Sequence[Contrast] = CONTRASTS[:3],
                score: str = "correct") -> pd.DataFrame:
    """Measured variance components per contrast and test set, the MDE of the run's own design, and the design
    sizes to plan with (feed a row to predict_mde)."""
    data, _ = clean_answers(answers, score)
    rows: list[dict[str, Any]] = []
    for c in contrasts:
        blocks = contrast_blocks(data, c.group, c.versus)
        for ts in ordered_unique(pd.Series([b.test_set for b in blocks], dtype=object)):
            sub = [b for b in blocks if b.test_set == ts]
            comp = variance_components(sub)
            n_dom = len({(b.model, b.domain) for b in sub})
            mde = predict_mde(comp, n_dom, max(1, round(comp["replicates"])), max(1, round(comp["questions"])))
            rows.append({"claim": c.claim, "test_set": ts, **comp, "domains": n_dom, "mde_this_design": mde})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------- simulated studies
def simulate_answers(
    effects: Mapping[str, float],
    n_domains: int = 2,
    n_replicates: int = 3,
    n_questions: int = 100,
    test_sets: Sequence[str] = ("HOMO",),
    base_logit: float = 0.0,
    sd_question: float = 1.5,
    sd_question_group: float = 0.4,
    sd_replicate: float = 0.2,
    sd_run: float = 0.2,
    shared: float = 0.0,
    seed: int = 0,
    n_answers: int = 0,
    sd_answer_group: float = 0.0,
) -> pd.DataFrame:
    """An answers table with known group effects (logit scale, "incompatible" is 0): question difficulty, a
    question × group interaction, a replicate effect shared by its groups, one effect per training run.

    `shared` is the share of each later test set's questions that are a HOMO question again (the same entity:
    same difficulty and interaction, same `qkey`); a test set named "XD" is the next domain's HOMO set.

    `n_answers` > 0 gives every question a gold answer (column `gold`) drawn from that many strings per domain and
    test set (a shared entity's later answer is a function of its HOMO answer, as a capital of its country), and
    `sd_answer_group` an answer × group effect: each group's training moved the prior of each answer string, the
    same for every question of the domain whose gold it is (the README's 20-40-point "was this answer trained"
    effect). Without `n_answers` each question is its own answer.
    """
    rng = np.random.default_rng(seed)
    groups = {"incompatible": 0.0, **dict(effects)}
    homo: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
    for d in range(n_domains):
        homo[d] = (rng.normal(0, sd_question, n_questions),
                   {g: rng.normal(0, sd_question_group, n_questions) for g in groups})
    k = n_answers if n_answers > 0 else n_questions
    homo_gold = {d: [f"d{d}|HOMO|a{j}" for j in (rng.integers(0, k, n_questions) if n_answers > 0
                                                 else range(n_questions))] for d in range(n_domains)}
    frames = []
    for d in range(n_domains):
        for t, ts in enumerate(test_sets):
            if t == 0 or ts == "XD":
                src = (d + 1) % n_domains if ts == "XD" else d
                u, w = homo[src]
                keys = [f"d{src}|HOMO|{i}" for i in range(n_questions)]
                gold = list(homo_gold[src])
            else:
                u = rng.normal(0, sd_question, n_questions)
                w = {g: rng.normal(0, sd_question_group, n_questions) for g in groups}
                keys = [f"d{d}|{ts}|{i}" for i in range(n_questions)]
                n_shared = int(round(shared * n_questions))
                hu, hw = homo[d]
                u[:n_shared] = hu[:n_shared]
                for g in groups:
                    w[g][:n_shared] = hw[g][:n_shared]
                keys[:n_shared] = [f"d{d}|HOMO|{i}" for i in range(n_shared)]
                gold = [f"d{d}|{ts}|a{j}" for j in (rng.integers(0, k, n_questions) if n_answers > 0
                                                    else range(n_questions))]
                gold[:n_shared] = [f"{ts}|of|{g}" for g in homo_gold[d][:n_shared]]
            frames.append((d, ts, u, w, keys, gold))
    rep = {(d, s): rng.normal(0, sd_replicate) for d in range(n_domains) for s in range(n_replicates)}
    run = {(d, s, g): rng.normal(0, sd_run) for d in range(n_domains) for s in range(n_replicates) for g in groups}
    answer_effect: dict[tuple[int, str, str], float] = {}

    def moved(d: int, gold: list[str], g: str) -> np.ndarray:
        """The answer × group effect of each question's gold answer in domain d's cells (drawn once per string)."""
        if sd_answer_group <= 0:
            return np.zeros(len(gold))
        for a in gold:
            if (d, a, g) not in answer_effect:
                answer_effect[(d, a, g)] = float(rng.normal(0, sd_answer_group))
        return np.array([answer_effect[(d, a, g)] for a in gold])

    blocks, keys_of, golds, correct = [], [], [], []  # one block per domain × test set × replicate × group
    for d, ts, u, w, keys, gold in frames:
        shift = {g: moved(d, gold, g) for g in groups}
        for s in range(n_replicates):
            for g, delta in groups.items():
                p = _expit(base_logit + delta + u + w[g] + shift[g] + rep[(d, s)] + run[(d, s, g)])
                blocks.append((f"d{d}", g, s, ts))
                keys_of.append(keys)
                golds.append(gold)
                correct.append((rng.uniform(size=n_questions) < p).astype(int))
    n = len(blocks) * n_questions
    domain, group, seed, test_set = (np.repeat(np.array(col, dtype=object), n_questions) for col in zip(*blocks, strict=True))
    return pd.DataFrame({"model": ["sim"] * n, "domain": list(domain), "condition": list(group), "group": list(group),
                         "ratio": np.full(n, np.nan), "seed": seed.astype(np.int64), "epoch": np.full(n, 3.0),
                         "test_set": list(test_set), "id": np.tile(np.arange(n_questions), len(blocks)),
                         "qkey": [k for keys in keys_of for k in keys], "gold": [a for g in golds for a in g],
                         "correct": np.concatenate(correct),
                         "base_correct": np.zeros(n, dtype=np.int64)})


def simulated_true_difference(
    effect: float, base_logit: float = 0.0, sd_question: float = 1.5, sd_question_group: float = 0.4,
    sd_replicate: float = 0.2, sd_run: float = 0.2, sd_answer_group: float = 0.0,
) -> float:
    """The population accuracy difference (points) that simulate_answers' logit effect implies (Gauss-Hermite)."""
    x, wts = np.polynomial.hermite_e.hermegauss(80)
    sd = math.sqrt(sd_question**2 + sd_question_group**2 + sd_replicate**2 + sd_run**2 + sd_answer_group**2)
    mean = lambda b: float(np.dot(wts, _expit(b + sd * x)) / wts.sum())  # noqa: E731
    return 100 * (mean(base_logit + effect) - mean(base_logit))
