"""Power and simulation: the measured variance components of a contrast, the MDE a planned design would have, and
simulated answer tables with known effects (and shared questions) to check the verdict's coverage.

The MDE is (t_{1-alpha/2} + t_power) × SE, with the t degrees of freedom of the verdict's interval (Satterthwaite
over the replicate and question parts), so a plan and a run's verdict read the same number the same way.

Planning (`design_table`, `cheapest_design`, `predict_study`): a candidate design's predicted primary MDE and its
predicted seconds per stage on the reference machine, from named, re-measurable inputs (variance components,
per-cell training seconds by group, per-question scoring seconds); the runner prints a params file's prediction.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
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


def answer_share(sizes: Sequence[int]) -> float:
    """Σ_c (n_c / Q)² over clusters of sizes n_c (Q = their sum): 1/share is the effective number of clusters."""
    q = sum(sizes)
    return sum(n * n for n in sizes) / (q * q)


def cluster_covariance(blocks: Sequence[Block]) -> dict[str, float]:
    """The covariance of two different questions' paired differences when they share a cluster (a gold answer or
    an entity: the answer prior a group's training moved), moment estimates pooled over blocks from each
    replicate's differences less its mean: `cov_cluster`, the part every training run shares (cross-products of
    two replicates), and `cov_cluster_run`, the part each run has of its own (cross-products within a replicate,
    less the shared part), so a question mean over R replicates carries cov_cluster + cov_cluster_run / R. With one
    replicate the two cannot be told apart and all of it is counted as shared (an upper bound). 0 where no two
    questions share a cluster. `cluster_share` is the blocks' mean Σ_c (n_c / Q)² (1/share: effective clusters)."""
    within = across = 0.0
    pairs_w = pairs_a = 0
    shares = []
    for b in blocks:
        if not b.clusters:
            continue
        d = b.diff - b.diff.mean(axis=1, keepdims=True)
        r, q = d.shape
        idx: dict[str, list[int]] = {}
        for i, key in enumerate(b.clusters):
            idx.setdefault(key, []).append(i)
        shares.append(answer_share([len(v) for v in idx.values()]))
        for cols in idx.values():
            n = len(cols)
            if n < 2:
                continue
            sub = d[:, cols]
            per_rep, sq = sub.sum(axis=1), sub**2
            within += float((per_rep**2).sum() - sq.sum())
            pairs_w += r * (n * n - n)
            if r > 1:  # Σ over r ≠ s and i ≠ j of sub[r, i] × sub[s, j]
                col = sub.sum(axis=0)
                across += float(per_rep.sum() ** 2 - (per_rep**2).sum() - ((col**2).sum() - sq.sum()))
                pairs_a += r * (r - 1) * (n * n - n)
    share = float(np.mean(shares)) if shares else float("nan")
    if not pairs_w:
        return {"cov_cluster": 0.0, "cov_cluster_run": 0.0, "cluster_share": share}
    w = within / pairs_w
    if not pairs_a:
        return {"cov_cluster": w, "cov_cluster_run": 0.0, "cluster_share": share}
    a = across / pairs_a
    return {"cov_cluster": a, "cov_cluster_run": w - a, "cluster_share": share}


def predict_se(
    components: Mapping[str, float], n_domains: int, n_replicates: int, n_questions: int,
    n_clusters: int | None = None, cluster_share: float | None = None,
) -> tuple[float, float]:
    """(SE in points, Satterthwaite df) of one contrast on one test set for a planned design of K domains × R
    replicates × Q questions, as the verdict computes them: a replicate part with K × (R − 1) df and a question part
    with K × (Q − 1) df, or K × (clusters − 1) with `n_clusters` (question clusters a domain: questions joined by
    entity or gold answer). With `cluster_share` S = Σ_c (n_c/Q)² (the domains' mean) and the components' cluster
    covariance (`cluster_covariance`: cov_cluster + cov_cluster_run / R), questions sharing a cluster add that
    covariance × (S − 1/Q) a domain: a part more questions do not shrink, only more domains, replicates (its per-run
    part) or more even clusters."""
    for name, v in (("n_domains", n_domains), ("n_replicates", n_replicates), ("n_questions", n_questions)):
        if v < 1:
            raise ValueError(f"{name} must be at least 1, got {v}")
    k, r, q = n_domains, n_replicates, n_questions
    v_rep = components["var_replicate"] / r / k
    cov = components.get("cov_cluster", 0.0) + components.get("cov_cluster_run", 0.0) / r
    shared = cov * max(0.0, cluster_share - 1 / q) if cluster_share else 0.0
    v_q = (components["var_question"] / q + components["var_residual"] / (q * r) + max(shared, 0.0)) / k
    parts = [(v_rep, k * (r - 1)), (v_q, k * (min(q, n_clusters or q) - 1))]
    var = v_rep + v_q
    denom = sum(v * v / d for v, d in parts if d > 0 and v > 0)
    dof = max(var * var / denom, 1.0) if denom > 0 else 1.0
    return float(100 * math.sqrt(var)), float(dof)


def predict_mde(
    components: Mapping[str, float], n_domains: int, n_replicates: int, n_questions: int,
    alpha: float = 0.05, power: float = 0.80, n_clusters: int | None = None, cluster_share: float | None = None,
) -> float:
    """Minimum detectable difference (points) of one contrast on one test set for a planned design:
    (t_{1-alpha/2} + t_power) × SE with the SE and Satterthwaite df of `predict_se`, as the verdict uses them."""
    se, dof = predict_se(components, n_domains, n_replicates, n_questions, n_clusters, cluster_share)
    return float((stats.t.ppf(1 - alpha / 2, dof) + stats.t.ppf(power, dof)) * se)


def power_table(answers: pd.DataFrame, contrasts: Sequence[Contrast] = CONTRASTS[:3],
                score: str = "correct") -> pd.DataFrame:
    """Measured variance components per contrast and test set (with the covariance of questions that share a
    cluster and the clusters' share), the MDE of the run's own design, and the design sizes to plan with (feed a
    row to predict_mde)."""
    data, _ = clean_answers(answers, score)
    rows: list[dict[str, Any]] = []
    for c in contrasts:
        blocks = contrast_blocks(data, c.group, c.versus)
        for ts in ordered_unique(pd.Series([b.test_set for b in blocks], dtype=object)):
            sub = [b for b in blocks if b.test_set == ts]
            comp = {**variance_components(sub), **cluster_covariance(sub)}
            n_dom = len({(b.model, b.domain) for b in sub})
            n_clusters = float(np.mean([len(set(b.clusters)) for b in sub])) if all(b.clusters for b in sub) else None
            mde = predict_mde(comp, n_dom, max(1, round(comp["replicates"])), max(1, round(comp["questions"])),
                              n_clusters=round(n_clusters) if n_clusters else None,
                              cluster_share=comp["cluster_share"])
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


# ------------------------------------------------------------------------------ planning: a design's MDE and cost
# Every number below is a named input, measured once and meant to be measured again (a faster trainer changes the
# training seconds; another machine changes all of them). Where each comes from:
REFERENCE_MACHINE = "2-core Intel Xeon, 257-261 GFLOP/s fp32 matmul (the default study of 2026-12-06, commit 056326c)"
H_MINUS_I_HOMO = {"var_replicate": 0.00096, "var_question": 0.233, "var_residual": 0.089,
                  "cov_cluster": 0.0758, "cov_cluster_run": 0.0119}
"""Variance components (per answer, 0/1 scale) of harmonious − incompatible on HOMO, raw scoring, in that run
(tables/power.csv), and the covariance of two questions sharing a gold answer (`cluster_covariance`), measured on
the regenerated default run of 2026-12-07 (the same answers: training and raw scoring are deterministic)."""
H_MINUS_I_HOMO_CALIBRATED = {"var_replicate": 0.00096, "var_question": 0.1109, "var_residual": 0.1028,
                             "cov_cluster": 0.0115, "cov_cluster_run": 0.0030}
"""The same contrast with calibrated scoring (content-free PMI), the regenerated default run of 2026-12-07. Its
replicate variance came out 0 (2 replicates a domain, clipped); the plan keeps the raw score's 0.00096. Calibration
removes most of what questions sharing a gold answer have in common (0.0758 raw → 0.0115)."""
COMPONENTS = {"raw": H_MINUS_I_HOMO, "calibrated": H_MINUS_I_HOMO_CALIBRATED}
"""The primary's components by the scoring that decides (`decide_by.score`)."""
TRAIN_SECONDS = {"harmonious": 20.0, "self_aligning": 45.0, "incompatible": 130.0, "mixture": 135.0,
                 "contextualized": 140.0, "general_only": 65.0}
"""Seconds to train one cell to fit, by group: harmonious (1.1 epochs), incompatible and mixture (6.1-6.3 epochs) as
measured (19-23 s; 94-155 s); self_aligning (2.3 epochs), contextualized (incompatible's dose, longer examples) and
general_only (incompatible's dose on the general half alone) from their epochs at ≈ 21 s an epoch of 96 examples.
Their sum over one domain × replicate, 535 s, is the measured 2144 s for 24 cells / 4. Groups not named here cost
the mean."""
GROUP_EPOCHS = {"harmonious": 1.1, "self_aligning": 2.3, "incompatible": 6.1, "mixture": 6.3, "contextualized": 6.1,
                "general_only": 6.1}
"""Mean epochs to fit by group in the train-to-fit runs (the 54-cell power attempt); a smaller `epochs` cap scales
a group's seconds down, as do fewer examples a cell (96 = 48 facts + 48 general tasks measured)."""
COST_MODEL = "smollm2-135m-instruct"  # the model the costs were measured with
PROBE_S_PER_QUESTION = 134.0 / 3200
"""Stage 01: 134 s for 2 domains × (400 training questions × 3 belief prompts + 4 test sets × 100), k-shot."""
EVAL_S_PER_QUESTION = 1044.0 / (20_000 + 1_920)
"""Stage 04: 17.4 min for 50 models, 0-shot, raw and calibrated in one pass: 24 cells at 2 checkpoints × (4 test
sets × 100 + 48 own facts, none for general_only) and no_ift × 2 domains × 400: 20,000 test answers, 1,920 facts."""
INTERVENTIONS_S = 9.0
"""Stage 02 (template explanations)."""
ANALYSIS_S_PER_ANSWER = 31.0 / 20_000
"""Stage 05: 31 s for 20,000 scored answers (50 models × 400)."""
PLAN_DOMAINS = ("city_country", "us_city_state", "europe_city_country")  # the first D are a D-domain design
TRAINED_GROUPS = ("incompatible", "mixture", "self_aligning", "harmonious", "contextualized", "general_only")
OOD_QUESTIONS = 185  # the facts suite's country -> currency relation holds this many questions (n_ood is capped)
EARLY_STOP_ALL = "all"
TEST_SETS = ("HOMO", "ID", "OOD", "XD")


@cache
def gold_profile(domain: str, n_test: int, test_per_answer: int | None = None, n_dev: int = 9,
                 seed: int = 0) -> tuple[int, float] | None:
    """(distinct gold answers, share Σ_c (n_c / Q)²) of a facts domain's HOMO test set as the suite draws it
    (`n_dev` = k_shot × belief_prompts demonstrations come first). A HOMO question's cluster joins its entity and its
    gold answer, so a domain's question df is counted in gold answers, not questions (24-110 a domain at the
    default order), and 1/share is the effective number of clusters: the order as drawn puts 286 of 1,500 world
    cities in India (share 0.064), `test_per_answer` evens it out. None for a domain the suite does not have or a
    cap that cannot fill the set."""
    from .data_facts import DOMAINS, build_facts_suite

    if domain not in DOMAINS:
        return None
    try:
        test = build_facts_suite(seed, [domain], n_train=0, n_dev=n_dev, n_test=n_test, n_id=0, n_ood=0,
                                 test_per_answer=test_per_answer)[domain]["test"]
    except ValueError:
        return None
    counts = Counter(str(q.raw["gold"]) for q in test)
    return len(counts), answer_share(list(counts.values()))


@dataclass(frozen=True)
class Design:
    """A planned study: its domains, replicates, test-set sizes and which test sets the early-stop checkpoint is
    scored on (the convergence checkpoint is scored on all four)."""

    domains: tuple[str, ...]
    replicates: int
    n_test: int
    n_id: int | None = None  # None: as many as n_test
    n_ood: int | None = None  # None: as many as n_test (OOD is capped by its relation, XD by the other domains)
    early_stop_sets: tuple[str, ...] | str = EARLY_STOP_ALL
    groups: tuple[str, ...] = TRAINED_GROUPS
    n_train: int = 400
    belief_prompts: int = 3
    facts_per_cell: int = 48
    id_ood_source: str = "facts"  # facts: OOD capped by its relation, XD from the other domains; mmlu: no XD
    general_ratio: float = 1.0
    max_epochs: int = 10
    test_per_answer: int | None = None  # at most this many HOMO questions a gold answer (None: as drawn)
    k_shot: int = 3
    data_seed: int = 0

    def set_sizes(self) -> dict[str, int]:
        """Questions per test set of one domain."""
        n_ood = self.n_test if self.n_ood is None else self.n_ood
        n_id = self.n_test if self.n_id is None else self.n_id
        if self.id_ood_source == "none":
            return {"HOMO": self.n_test}
        if self.id_ood_source != "facts":
            return {k: v for k, v in {"HOMO": self.n_test, "ID": n_id, "OOD": n_ood}.items() if v > 0}
        sizes = {"HOMO": self.n_test, "ID": n_id, "OOD": min(n_ood, OOD_QUESTIONS),
                 "XD": min(n_ood, (len(self.domains) - 1) * self.n_test)}
        return {k: v for k, v in sizes.items() if v > 0}

    def early_sets(self) -> tuple[str, ...]:
        sets = tuple(self.set_sizes())
        return sets if self.early_stop_sets == EARLY_STOP_ALL else tuple(s for s in sets if s in self.early_stop_sets)

    def _profiles(self) -> list[tuple[int, float]] | None:
        n_dev = max(self.k_shot, 1) * self.belief_prompts  # the demonstrations come first, as the suite draws them
        found = [gold_profile(d, self.n_test, self.test_per_answer, n_dev, self.data_seed) for d in self.domains]
        return None if any(f is None for f in found) else found  # type: ignore[return-value]

    def cluster_share(self) -> float | None:
        """The domains' mean Σ_c (n_c / Q)² over HOMO gold answers (`gold_profile`); None where a domain is not
        in the facts suite."""
        found = self._profiles()
        return None if found is None else float(np.mean([f[1] for f in found]))

    def clusters(self) -> float | None:
        """Mean question clusters (gold answers) a domain (None: questions are their own clusters)."""
        found = self._profiles()
        return None if found is None else float(np.mean([f[0] for f in found]))


def design_cost(
    design: Design, train_seconds: Mapping[str, float] = TRAIN_SECONDS,
    eval_s_per_question: float = EVAL_S_PER_QUESTION, probe_s_per_question: float = PROBE_S_PER_QUESTION,
    interventions_s: float = INTERVENTIONS_S, analysis_s_per_answer: float = ANALYSIS_S_PER_ANSWER,
) -> dict[str, float]:
    """Predicted seconds per stage and in all on the machine the costs were measured on.

    Probe: each domain's training questions under every belief prompt plus its test sets, k-shot. Training: one
    cell per group × replicate × domain at its group's seconds. Evaluation: every trained cell at convergence on
    every test set and at early stop on `early_stop_sets`, each checkpoint also on its own facts (not general_only,
    which has none), and the untrained no_ift once a domain on every test set; calibrated scoring shares the pass.
    Analysis: per scored test answer."""
    d, r = len(design.domains), design.replicates
    sizes = design.set_sizes()
    all_q, early_q = sum(sizes.values()), sum(sizes[s] for s in design.early_sets())
    mean_cell = float(np.mean(list(train_seconds.values())))
    probe = probe_s_per_question * d * (design.n_train * design.belief_prompts + all_q)
    examples = design.facts_per_cell * (1 + design.general_ratio) / 96  # the measured cells had 96 examples

    def cell(g: str) -> float:
        dose = min(1.0, design.max_epochs / GROUP_EPOCHS.get(g, design.max_epochs))
        return train_seconds.get(g, mean_cell) * examples * dose

    training = d * r * sum(cell(g) for g in design.groups)
    facts = sum(design.facts_per_cell for g in design.groups if g != "general_only")
    answers = d * (r * len(design.groups) * (all_q + early_q) + all_q)  # scored test answers, no_ift included
    evaluation = eval_s_per_question * (answers + d * r * 2 * facts)
    analysis = analysis_s_per_answer * answers
    total = probe + interventions_s + training + evaluation + analysis
    return {"probe_s": probe, "interventions_s": interventions_s, "training_s": training,
            "evaluation_s": evaluation, "analysis_s": analysis, "total_s": total, "answers": float(answers)}


def design_mde(design: Design, components: Mapping[str, float] = H_MINUS_I_HOMO, alpha: float = 0.05,
               power: float = 0.80) -> float:
    """The primary contrast's predicted MDE (points) on HOMO: `predict_mde` with the question df counted in the
    domains' gold-answer clusters, as the verdict counts them, and the covariance of questions sharing one."""
    return predict_mde(components, len(design.domains), design.replicates, design.n_test, alpha=alpha, power=power,
                       n_clusters=design.clusters(), cluster_share=design.cluster_share())


def candidate_designs(
    domains: Sequence[int] = (2, 3), replicates: Sequence[int] = (2, 3, 4),
    questions: Sequence[int] = (100, 300, 600, 1000, 1500),
    early_stop_sets: Sequence[tuple[str, ...] | str] = (("HOMO",), EARLY_STOP_ALL),
    other_questions: Sequence[int | None] = (300, None),
    test_per_answer: Sequence[int | None] = (None, 10, 20, 30),
) -> list[Design]:
    """The grid of designs to plan from: the first D of PLAN_DOMAINS, R replicates, Q HOMO questions with at most
    `test_per_answer` a gold answer (a cap the suite cannot fill at Q is left out), and ID, OOD and XD of
    min(Q, other) questions each (None: Q; they carry the secondary claims, not the primary)."""
    out = []
    for other in other_questions:
        for e in early_stop_sets:
            for d in domains:
                for r in replicates:
                    for q in questions:
                        for cap in test_per_answer:
                            n = q if other is None else min(q, other)
                            dz = Design(PLAN_DOMAINS[:d], r, q, n_id=n, n_ood=n, early_stop_sets=e,
                                        test_per_answer=cap)
                            if cap is None or dz.clusters() is not None:
                                out.append(dz)
    return out


def design_table(
    designs: Sequence[Design] | None = None, components: Mapping[str, float] = H_MINUS_I_HOMO,
    train_seconds: Mapping[str, float] = TRAIN_SECONDS, eval_s_per_question: float = EVAL_S_PER_QUESTION,
    probe_s_per_question: float = PROBE_S_PER_QUESTION, interventions_s: float = INTERVENTIONS_S,
    analysis_s_per_answer: float = ANALYSIS_S_PER_ANSWER, alpha: float = 0.05, power: float = 0.80,
) -> pd.DataFrame:
    """One row per design: D, R, Q, the early-stop test sets, the primary MDE (points), the question clusters a
    domain, the cells trained, and the predicted seconds per stage and in all (see `design_cost`)."""
    rows = []
    for dz in candidate_designs() if designs is None else designs:
        cost = design_cost(dz, train_seconds, eval_s_per_question, probe_s_per_question, interventions_s,
                           analysis_s_per_answer)
        early = dz.early_stop_sets if isinstance(dz.early_stop_sets, str) else "+".join(dz.early_stop_sets)
        sizes = dz.set_sizes()
        rows.append({"D": len(dz.domains), "R": dz.replicates, "Q": dz.n_test, "per_answer": dz.test_per_answer,
                     "n_id": sizes.get("ID", 0),
                     "n_ood": dz.n_test if dz.n_ood is None else dz.n_ood, "early_stop_sets": early,
                     "clusters": dz.clusters(), "share": dz.cluster_share(), "cells": len(dz.domains) * dz.replicates * len(dz.groups),
                     "mde": design_mde(dz, components, alpha, power), **cost})
    return pd.DataFrame(rows)


def cheapest_design(table: pd.DataFrame, max_mde: float = 4.0) -> pd.Series:
    """The row of `design_table` with the least predicted total time whose primary MDE is at most `max_mde`
    points; ties go to the smaller MDE. Raises ValueError when no design reaches it."""
    ok = table[table["mde"] <= max_mde]
    if ok.empty:
        raise ValueError(f"no design has a primary MDE <= {max_mde} points (the least is {table['mde'].min():.2f})")
    return ok.sort_values(["total_s", "mde"]).iloc[0]


def best_within(table: pd.DataFrame, max_seconds: float) -> pd.Series:
    """The row of `design_table` with the least primary MDE whose predicted total time is at most `max_seconds`
    (ties go to the cheaper): the plan when no design reaches the MDE aimed at. Raises ValueError when none fits."""
    ok = table[table["total_s"] <= max_seconds]
    if ok.empty:
        raise ValueError(f"no design runs within {max_seconds / 60:.0f} min (the cheapest takes "
                         f"{table['total_s'].min() / 60:.0f})")
    return ok.sort_values(["mde", "total_s"]).iloc[0]


def design_of(P: Any) -> Design:
    """The design a params object (`StudyParams`) runs: its domains, replicates (seeds), test-set sizes, trained
    groups (ratios, extra groups, the general_only control) and early-stop test sets. No torch needed."""
    groups = ["incompatible" if r == 0 else "self_aligning" if r == 1 else "mixture" for r in P.ratios]
    groups += list(P.extra_groups) + (["general_only"] if "general_only" in P.controls else [])
    early = getattr(P, "early_stop_sets", EARLY_STOP_ALL)
    return Design(tuple(P.domains), len(P.seeds), P.n_test, n_id=P.n_id, n_ood=P.n_ood,
                  early_stop_sets=early if isinstance(early, str) else tuple(early), groups=tuple(groups),
                  n_train=P.n_train if P.n_train is not None else 2000, belief_prompts=P.belief_prompts,
                  facts_per_cell=P.max_per_group or 48, id_ood_source=P.id_ood_source,
                  general_ratio=P.general_ratio, max_epochs=P.epochs, test_per_answer=P.test_per_answer,
                  k_shot=P.k_shot, data_seed=P.data_seed)


def predict_study(P: Any, **costs: Any) -> dict[str, Any]:
    """A params object's predicted primary MDE (points, H − I on HOMO with the default run's components for the
    scoring that decides, `decide_by.score`) and predicted seconds per stage on the reference machine
    (`design_cost`; `costs` override its measured inputs)."""
    dz = design_of(P)
    score = getattr(getattr(P, "decide_by", None), "score", "raw")
    return {"mde": design_mde(dz, COMPONENTS[score]), "score": score, "clusters": dz.clusters(),
            "D": len(dz.domains), "R": dz.replicates, "Q": dz.n_test, "same_model": P.model == COST_MODEL,
            **design_cost(dz, **costs)}
