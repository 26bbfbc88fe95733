"""Contrasts and their standard errors: paired answer matrices per (model, domain, test set), the crossed
replicate × question (ANOVA) SE computed directly, its bootstrap check, the GLMM alternative, the paired t over
replicates, and one verdict row per contrast and test set (read and decided in ``decision``).

* **Contrast.** Accuracy of `group` minus `versus`, paired on the same question and replicate (one (model, domain,
  seed): a training run of each group on the replicate's own sample of facts; the untrained ``no_ift`` control,
  seed -1, pairs with every replicate). A block is one (model, domain) and test set: D[replicate, question] in
  {-1, 0, 1}. Estimate: the replicate-weighted mean over domains of the blocks' means ("all": the mean over the
  test sets of a domain first). Domains are fixed: the inference covers these domains, not a population of them.
* **Variance, directly** (``contrast_estimate``): the crossed random-effects (ANOVA) estimate; for one block it is
  (MS_rep + MS_q - MS_res) / (R Q). Replicates: the sample variance of each replicate's mean over the blocks in the
  row, pooled over domains (R - 1 df each). Questions: *clusters* enter once, with the covariance of their items,
  however many blocks they appear in. A cluster (``cluster_keys``) joins every question that shares an entity
  (``qkey``: one entity asked in HOMO and ID, one domain's cross-domain set that is another's HOMO) or a gold answer
  string (questions with the same gold answer share the answer prior a group's training moved): the connected
  components of the entity–answer graph, the coarsest key both nest in. Interval: estimate ± t × SE with
  Satterthwaite's df (at least 1, at most the df of the positive components, the question part counted in
  clusters); p from the same t.
* **The bootstrap is the check** (``bootstrap_contrast``, column ``se_boot``): replicates resampled within domains,
  question clusters resampled once for all blocks, the known bias of that two-way scheme removed
  (McCullagh 2000, Bernoulli 6: 285-301).
* **GLMM** (``verdict_method="glmm"``): statsmodels' BinomialBayesMixedGLM, cell means per group × test set with
  random intercepts for question, run and replicate, converted to points by the delta method (normal quantiles).
  It has no group × question effect: a question's effect is the same for both groups, so the part of the variance
  the direct SE counts as question × group interaction is absorbed into the residual.
* **Degenerate contrasts.** Where every answer pair is equal, the interval, p and MDE are NaN and the reading says
  "not estimable"; groups not in the grid give no row. Where the unbiased ANOVA variance comes out not positive
  (possible with few replicates: it subtracts the residual once), the SE leaves that correction out, which
  over-states it (conservative), and the reading says so (``CONSERVATIVE_SE``).
* **MDE** (planning column): (t_{0.975} + t_{0.80}) × SE with the interval's df. A null is read by its interval.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

from .correlation import (
    CLAIM_CONSISTENCY,
    TEST_SET_ORDER,
    final_epoch,
    ordered_unique,
)

# Headline numbers of the paper (docs/design.md §1), accuracy points.
PAPER_HARMONIOUS_MINUS_INCOMPATIBLE = {"HOMO": 11.27, "ID": 14.58, "OOD": 14.57}
PAPER_SELF_ALIGNING_MINUS_INCOMPATIBLE = {"HOMO": 5.25, "ID": 9.78, "OOD": 6.97}
PAPER_CONTEXTUALIZED_PER_MODEL = {"LLaMA-2-7B": 8.16, "LLaMA-2-13B": 9.48, "Mistral-7B": 3.98}
PAPER_CONTEXTUALIZED_MEAN = round(float(np.mean(list(PAPER_CONTEXTUALIZED_PER_MODEL.values()))), 2)

CLAIM_HARMONIOUS = "harmonious > incompatible"
CLAIM_SELF_ALIGNING = "self-aligning > incompatible"
CLAIM_CONTEXTUALIZED = "contextualized > incompatible"
CLAIM_GENERAL_VS_NO_IFT = "general_only − no_ift"
CLAIM_REPRODUCTION = f"{CLAIM_CONSISTENCY} (paper's statistic)"

PRIMARY = (CLAIM_HARMONIOUS, "HOMO")  # the primary contrast: tested first, it gates the others
ALPHA = 0.05
Z_MDE = float(stats.norm.ppf(0.975) + stats.norm.ppf(0.80))  # 80 % power, two-sided alpha 0.05: 2.80

_CONTEXT_NOTE = (
    "paper reports this per model (+8.16 LLaMA-2-7B, +9.48 LLaMA-2-13B, +3.98 Mistral-7B); "
    f"`paper` is their mean {PAPER_CONTEXTUALIZED_MEAN}"
)
_CONTROL_NOTES = {
    "no_ift": "what general IFT and the chat format do (a control: descriptive, not a test)",
    "general_only": "what the domain data add over general IFT alone (a control: descriptive, not a test)",
}


@dataclass(frozen=True)
class Contrast:
    """One verdict comparison: accuracy of `group` minus accuracy of `versus`, with the paper's numbers if any."""

    claim: str
    group: str
    versus: str
    paper: Mapping[str, float]
    note: str = ""
    kind: str = "claim"  # "claim" (a paper claim, tested) or "control" (a descriptive reading of the controls)
    with_all: bool = False  # also a row averaging the test sets (the paper's contextualized number)


CONTRASTS: tuple[Contrast, ...] = (
    Contrast(CLAIM_HARMONIOUS, "harmonious", "incompatible", PAPER_HARMONIOUS_MINUS_INCOMPATIBLE),
    Contrast(CLAIM_SELF_ALIGNING, "self_aligning", "incompatible", PAPER_SELF_ALIGNING_MINUS_INCOMPATIBLE),
    Contrast(CLAIM_CONTEXTUALIZED, "contextualized", "incompatible",
             dict.fromkeys((*TEST_SET_ORDER, "all"), PAPER_CONTEXTUALIZED_MEAN), _CONTEXT_NOTE, with_all=True),
    Contrast(CLAIM_GENERAL_VS_NO_IFT, "general_only", "no_ift", {}, _CONTROL_NOTES["no_ift"], "control"),
    *(Contrast(f"{g} − general_only", g, "general_only", {}, _CONTROL_NOTES["general_only"], "control")
      for g in ("harmonious", "incompatible", "self_aligning", "contextualized")),
)

VERDICT_COLUMNS = ["claim", "kind", "model", "test_set", "score", "checkpoint", "role", "ours", "lo", "hi", "p",
                   "p_holm_claim", "p_holm_all", "p_adj", "gate", "mde", "t_lo", "t_hi", "se", "se_boot", "df",
                   "n_replicates", "n_questions", "n_clusters", "se_entity", "lo_entity", "hi_entity", "paper",
                   "paper_model", "p_vs_paper", "p_vs_paper_holm", "vs_paper", "supported", "decision", "method",
                   "reading", "reading_vs_paper", "note"]

# ------------------------------------------------------------------------------------------- the answers
ANSWER_COLUMNS = ("model", "domain", "condition", "group", "ratio", "seed", "epoch", "test_set", "id", "correct",
                  "base_correct")
QKEY = "qkey"  # question-cluster key: answers with the same qkey are one question for resampling
GOLD = "gold"  # the gold answer's text: questions with the same one share the answer prior a group's training moved
ENTITY = "entity_key"  # clean_answers' copy of the entity-only key (the clustering before gold answers joined it)


def clean_answers(answers: pd.DataFrame, score: str = "correct") -> tuple[pd.DataFrame, dict[str, int]]:
    """Validate the answers table, score it by `score` ("correct" or "correct_cal"), keep each cell's final
    epoch, add the cluster key, and count (never hide) the rows left out, by reason."""
    required = set(ANSWER_COLUMNS) - {"ratio", "base_correct", "epoch", "correct"} | {score}
    missing = sorted(required - set(answers.columns))
    if missing:
        raise ValueError(f"answers table lacks column(s) {missing}; expected {[*ANSWER_COLUMNS[:-2], score]}")
    data = answers.copy()
    counts = {"read": len(data)}
    correct = pd.to_numeric(data[score], errors="coerce")
    bad = ~correct.isin([0, 1]) | data["id"].isna() | data["test_set"].isna() | data["group"].isna()
    counts[f"malformed ({score} not 0/1, or no id/test_set/group)"] = int(bad.sum())
    data = data.loc[~bad].assign(correct=correct[~bad].astype(int))
    data["seed"] = pd.to_numeric(data["seed"], errors="coerce").fillna(-1).astype(int)
    before = len(data)
    data = final_epoch(data)
    counts["earlier checkpoints (not the final model)"] = before - len(data)
    dup = data.duplicated(["model", "domain", "condition", "seed", "test_set", "id"], keep="first")
    counts["duplicate answers (same cell and question)"] = int(dup.sum())
    data = data.loc[~dup].reset_index(drop=True)
    data[ENTITY] = question_keys(data)
    data[QKEY] = cluster_keys(data, data[ENTITY])
    counts["kept"] = len(data)
    return data, counts


def question_keys(answers: pd.DataFrame) -> pd.Series:
    """The cluster key of each answer: the table's `qkey` when it has one; else (model, source domain or domain,
    test set, id), which assumes no question is shared between test sets or domains."""
    if QKEY in answers.columns and answers[QKEY].notna().all():
        return answers["model"].astype(str) + "|" + answers[QKEY].astype(str)
    source = answers["source_domain"] if "source_domain" in answers.columns else answers["domain"]
    return (answers["model"].astype(str) + "|" + source.astype(str) + "|" + answers["test_set"].astype(str) + "|"
            + answers["id"].astype(str))


def cluster_keys(answers: pd.DataFrame, entity: pd.Series | None = None) -> pd.Series:
    """Each answer's question cluster: the connected component of the graph joining an entity key (`entity`,
    default ``question_keys``) to its gold answer (model | gold text), so questions that share an entity or a gold
    answer are one cluster (the coarsest key both nest in). Without a `gold` column: the entity key."""
    entity = question_keys(answers) if entity is None else entity
    if GOLD not in answers.columns or answers[GOLD].isna().all():
        return entity
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    e_codes, e_names = pd.factorize(entity, sort=True)
    has = answers[GOLD].notna().to_numpy()
    g_codes, g_names = pd.factorize((answers["model"].astype(str) + "|" + answers[GOLD].astype(str))[has], sort=True)
    n_e = len(e_names)
    graph = coo_matrix((np.ones(int(has.sum())), (e_codes[has], n_e + g_codes)),
                       shape=(n_e + len(g_names), n_e + len(g_names)))
    _, labels = connected_components(graph, directed=False)
    first = {}  # name each component by its first entity key (sorted), so keys read like the qkey they extend
    for code, name in enumerate(e_names):
        first.setdefault(labels[code], str(name))
    return pd.Series([first[labels[c]] for c in e_codes], index=answers.index, dtype=object)


def shares_questions(answers: pd.DataFrame) -> bool:
    """True when the answers table names its question clusters (a `qkey` column), so sharing is resampled."""
    return QKEY in answers.columns and answers[QKEY].notna().all()


@dataclass
class Block:
    """The answers of one contrast in one (model, domain) stratum and test set: differences D[replicate, question]."""

    model: str
    domain: str
    test_set: str
    seeds: list[int]
    diff: np.ndarray  # R × Q, values in {-1, 0, 1}
    clusters: list[str] = field(default_factory=list)  # the cluster key of each column (entity and gold answer)
    entities: list[str] = field(default_factory=list)  # the entity-only key of each column (the earlier clustering)


def contrast_blocks(answers: pd.DataFrame, group: str, versus: str) -> list[Block]:
    """Paired answer matrices of `group` and `versus` per (model, domain, test set): rows are the replicates where
    both were scored (an untrained control, seed -1, pairs with every replicate), columns the questions both
    answered; `answers` comes from clean_answers. One grouping of the table serves every stratum (the verdict and
    the simulation tests call this thousands of times)."""
    blocks: list[Block] = []
    data = answers[answers["group"].isin([group, versus])]
    if data.empty:
        return blocks
    levels = ["model", "domain", "test_set", "group", "seed", "id"]
    means = data.groupby(levels, sort=True)["correct"].mean()  # correct (0/1) per replicate and question
    matrices = {key: m.droplevel([0, 1, 2, 3]).unstack("id")
                for key, m in means.groupby(level=[0, 1, 2, 3], sort=False)}
    last = data.drop_duplicates(["model", "domain", "test_set", "id"], keep="last").set_index(
        ["model", "domain", "test_set", "id"])
    cluster = last[QKEY].to_dict() if QKEY in data.columns else {}
    entity = last[ENTITY].to_dict() if ENTITY in data.columns else cluster
    for (model, domain), stratum in data.groupby(["model", "domain"], sort=True):
        per_ts: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}
        seeds: set[int] | None = None
        for ts in ordered_unique(stratum["test_set"]):
            a, b = matrices.get((model, domain, ts, group)), matrices.get((model, domain, ts, versus))
            if a is None or b is None:
                continue
            a, b = _broadcast_untrained(a, b), _broadcast_untrained(b, a)
            common = set(a.index) & set(b.index)
            seeds = common if seeds is None else seeds & common
            per_ts[ts] = (a, b)
        if not seeds:
            continue
        order = sorted(seeds)
        for ts, (a, b) in per_ts.items():
            a, b = a.loc[order], b.loc[order]
            cols = [c for c in a.columns if c in set(b.columns)]
            a, b = a[cols], b[cols]
            keep = a.notna().all(axis=0) & b.notna().all(axis=0)
            ids = [c for c, k in zip(cols, keep, strict=True) if k]
            if not ids:
                continue
            own = [f"{model}|{domain}|{ts}|{i}" for i in ids]
            clusters = [str(cluster.get((model, domain, ts, i), o)) for i, o in zip(ids, own, strict=True)]
            entities = [str(entity.get((model, domain, ts, i), o)) for i, o in zip(ids, own, strict=True)]
            blocks.append(Block(str(model), str(domain), ts, order,
                                a[ids].to_numpy(float) - b[ids].to_numpy(float), clusters, entities))
    return blocks


def _broadcast_untrained(m: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    """An untrained control scored once (seed -1) stands beside every replicate of the other group."""
    if list(m.index) == [-1] and not (len(other.index) == 1 and other.index[0] == -1):
        return pd.DataFrame(np.repeat(m.to_numpy(), len(other.index), axis=0), index=other.index, columns=m.columns)
    return m


def two_way_anova(d: np.ndarray) -> dict[str, float]:
    """Mean squares of a replicate × question table without replication (rows, columns, residual)."""
    r, q = d.shape
    grand = d.mean()
    rows, cols = d.mean(axis=1), d.mean(axis=0)
    df_rep, df_q, df_res = r - 1, q - 1, (r - 1) * (q - 1)
    ss_res = float(((d - rows[:, None] - cols[None, :] + grand) ** 2).sum())
    return {"r": r, "q": q, "df_rep": df_rep, "df_q": df_q, "df_res": df_res,
            "ms_rep": q * float(((rows - grand) ** 2).sum()) / df_rep if df_rep else 0.0,
            "ms_q": r * float(((cols - grand) ** 2).sum()) / df_q if df_q else 0.0,
            "ms_res": ss_res / df_res if df_res else 0.0}


def _rows_of(blocks: Sequence[Block], ts: str) -> dict[tuple[str, str], list[Block]]:
    """The blocks that make up one row (a test set, or "all": every test set), by (model, domain) stratum."""
    out: dict[tuple[str, str], list[Block]] = {}
    for b in blocks:
        if ts in ("all", b.test_set):
            out.setdefault((b.model, b.domain), []).append(b)
    return out


def _row_names(blocks: Sequence[Block]) -> list[str]:
    """The test sets of the blocks in HOMO, ID, XD, OOD order, then "all"."""
    return [*ordered_unique(pd.Series([b.test_set for b in blocks], dtype=object)), "all"]


# ---------------------------------------------------------------------------------- the direct estimate
CONSERVATIVE_SE = ("conservative SE: the unbiased variance estimate was not positive, so the residual correction "
                   "is left out (the residual then counts in both the replicate and the question part)")


def contrast_estimate(blocks: Sequence[Block], level: float = 0.95,
                      by: Literal["clusters", "entities"] = "clusters") -> dict[str, dict[str, float]]:
    """Per test set and "all": difference in points, its crossed random-effects SE computed directly (ANOVA, with
    shared question clusters counted once: `by` "clusters" joins entity and gold answer, "entities" is the
    entity-only key), Satterthwaite df, t interval and two-sided p."""
    out: dict[str, dict[str, float]] = {}
    if not blocks:
        return out
    for ts in _row_names(blocks):
        parts = _rows_of(blocks, ts)
        total = sum(len(bl[0].seeds) for bl in parts.values())
        est, rep, resid_terms = 0.0, [], []
        contrib: dict[str, float] = {}
        df_q, all_equal = 0, True
        for bl in parts.values():
            r = len(bl[0].seeds)
            w = r / total
            lam = w / len(bl)
            est += w * float(np.mean([b.diff.mean() for b in bl]))
            rows = np.mean([b.diff.mean(axis=1) for b in bl], axis=0)
            rep.append((w, float(rows.var(ddof=1)) if r > 1 else 0.0, r))
            for b in bl:
                all_equal &= bool(np.ptp(b.diff) == 0)
                a = two_way_anova(b.diff)
                q = a["q"]
                resid_terms.append((-(lam**2) * a["ms_res"] / (r * q), a["df_res"]))
                if q > 1:  # each item's share of the question part, Q/(Q-1) for an unbiased column variance
                    dev = (b.diff.mean(axis=0) - b.diff.mean()) * lam / q * math.sqrt(q / (q - 1))
                    for key, v in zip(b.clusters if by == "clusters" else b.entities, dev, strict=True):
                        contrib[key] = contrib.get(key, 0.0) + float(v)
                df_q += q - 1
        df_rep = sum(r - 1 for _, _, r in rep)
        s2 = sum((r - 1) * s for _, s, r in rep) / df_rep if df_rep else 0.0
        df_q = min(df_q, len(contrib) - 1)  # the question part has as many df as clusters, less one
        terms = [(sum(w**2 / r for w, _, r in rep) * s2, df_rep),
                 (sum(v * v for v in contrib.values()), max(df_q, 1)), *resid_terms]
        var = sum(t for t, _ in terms)
        conservative = var <= 0 and not all_equal
        if conservative:  # the unbiased estimate came out <= 0: keep the residual twice (an upper bound), not NaN
            terms = terms[:2]
            var = sum(t for t, _ in terms)
        denom = sum(t**2 / df for t, df in terms if df > 0)
        # Satterthwaite over every term (the negative residual ones too), at least 1 and at most the df of the
        # positive components together: no floor may raise it above what the components give
        dof = var**2 / denom if denom > 0 and var > 0 else 1.0
        dof = min(max(dof, 1.0), max(sum(df for t, df in terms if t > 0 and df > 0), 1.0))
        n_q = sum(b.diff.shape[1] for bl in parts.values() for b in bl)
        res = {"ours": 100 * est, "n_replicates": int(total), "n_questions": int(n_q), "df_replicates": df_rep,
               "n_clusters": len(contrib), **({"se_note": CONSERVATIVE_SE} if conservative else {})}
        if all_equal or var <= 0:
            nan = float("nan")
            why = "no variance: every answer pair gives the same difference" if all_equal else "the variance estimate is not positive"
            out[ts] = {**res, "lo": nan, "hi": nan, "se": nan, "df": nan, "p": nan, "degenerate": why}
            continue
        se = math.sqrt(var)
        half = float(stats.t.ppf((1 + level) / 2, dof)) * se
        out[ts] = {**res, "lo": 100 * (est - half), "hi": 100 * (est + half), "se": 100 * se, "df": float(dof),
                   "p": float(2 * stats.t.sf(abs(est) / se, dof))}
    return out


# -------------------------------------------------------------------------------------- the bootstrap check
def bootstrap_contrast(blocks: Sequence[Block], n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """The check on the direct SE (points, per test set and "all"): a two-way bootstrap drawing replicates within
    each domain and question clusters once for all blocks, with the known bias of that scheme removed."""
    if not blocks:
        return {}
    rng = np.random.default_rng(seed)
    strata = sorted({(b.model, b.domain) for b in blocks})
    n_rep = {s: len(next(b for b in blocks if (b.model, b.domain) == s).seeds) for s in strata}
    w_rep = {s: rng.multinomial(n_rep[s], np.full(n_rep[s], 1.0 / n_rep[s]), size=n_boot) for s in strata}
    keys = sorted({k for b in blocks for k in b.clusters})
    index = {k: i for i, k in enumerate(keys)}
    w_cl = rng.multinomial(len(keys), np.full(len(keys), 1.0 / len(keys)), size=n_boot).astype(float)
    draws: dict[int, np.ndarray] = {}
    for i, b in enumerate(blocks):
        r = b.diff.shape[0]
        wq = w_cl[:, [index[k] for k in b.clusters]]
        with np.errstate(invalid="ignore", divide="ignore"):
            draws[i] = ((w_rep[(b.model, b.domain)] @ b.diff) * wq).sum(axis=1) / (r * wq.sum(axis=1))
    out: dict[str, float] = {}
    for ts in _row_names(blocks):
        parts = _rows_of(blocks, ts)
        total = sum(n_rep[s] for s in parts)
        dist, correction, rep = np.zeros(n_boot), 0.0, []
        for s, bl in parts.items():
            w = n_rep[s] / total
            dist += w * np.mean([draws[blocks.index(b)] for b in bl], axis=0)
            rows = np.mean([b.diff.mean(axis=1) for b in bl], axis=0)
            rep.append((w, float(rows.var(ddof=1)) if n_rep[s] > 1 else 0.0, n_rep[s]))
            for b in bl:
                a = two_way_anova(b.diff)
                r, q = a["r"], a["q"]
                c = w**2 / (r * q * len(bl) ** 2)
                correction += c * (a["ms_q"] / q - a["ms_res"] * (1 + (r - 1) * (q - 1) / (r * q)))
        df_rep = sum(r - 1 for _, _, r in rep)
        s2 = sum((r - 1) * s for _, s, r in rep) / df_rep if df_rep else 0.0
        correction += sum(w**2 * (s2 / r - s * (r - 1) / r**2) for w, s, r in rep)
        out[ts] = 100 * math.sqrt(max(float(np.nanvar(dist, ddof=1)) + correction, 0.0))
    return out


# -------------------------------------------------------------------------------------------------- GLMM
def _expit(x: np.ndarray | float) -> np.ndarray:
    """Logistic function."""
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=float)))


@dataclass
class AnswerGlmm:
    """A fitted binomial GLMM of every scored answer and the lookup tables to read contrasts from it."""

    result: Any
    fe: dict[str, tuple[float, float]]  # cell "model|group|test_set" -> (posterior mean, sd) on the logit scale
    question_effect: dict[str, float]  # "domain|test_set|id" -> posterior mean of its random intercept
    run_sd: float  # posterior estimate of the SD of the training-run intercepts (logit scale)
    runs: dict[tuple[str, str], int]  # (model, group) -> number of training runs
    questions: dict[tuple[str, str, str], list[str]]  # (model, group, test_set) -> question keys answered


def fit_answer_glmm(answers: pd.DataFrame, groups: Sequence[str], fit_method: str = "L-BFGS-B") -> AnswerGlmm:
    """Fit correct ~ group × test set with random intercepts for question, training run and replicate by
    variational Bayes (statsmodels BinomialBayesMixedGLM.fit_vb): the alternative to the direct estimate."""
    from statsmodels.genmod.bayes_mixed_glm import BinomialBayesMixedGLM

    data = answers[answers["group"].isin(list(groups))].copy()
    if data.empty:
        raise ValueError(f"no answers of the groups {list(groups)} to fit")
    data["cell"] = data["model"].astype(str) + "|" + data["group"].astype(str) + "|" + data["test_set"].astype(str)
    data["question"] = data["domain"].astype(str) + "|" + data["test_set"].astype(str) + "|" + data["id"].astype(str)
    data["run"] = (data["model"].astype(str) + "|" + data["domain"].astype(str) + "|" + data["group"].astype(str)
                   + "|" + data["seed"].astype(str))
    data["replicate"] = data["model"].astype(str) + "|" + data["domain"].astype(str) + "|" + data["seed"].astype(str)
    vcs = {"question": "0 + C(question)", "run": "0 + C(run)"}
    if data["replicate"].nunique() > 1:
        vcs["replicate"] = "0 + C(replicate)"  # shared by the groups of a replicate: the pairing
    model = BinomialBayesMixedGLM.from_formula("correct ~ 0 + C(cell)", vcs, data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's minimizer warns about precision loss near the optimum
        res = model.fit_vb(fit_method=fit_method)
    fe = {name[len("C(cell)["):-1]: (float(m), float(s))
          for name, m, s in zip(model.exog_names, res.fe_mean, res.fe_sd, strict=True)}
    q_ident = model.vcp_names.index("question")
    r_ident = model.vcp_names.index("run")
    q_effect = {name[len("C(question)["):-1]: float(m)
                for name, m, ident in zip(model.vc_names, res.vc_mean, model.ident, strict=True) if ident == q_ident}
    run_sd = float(np.exp(res.vcp_mean[r_ident]))
    trained = data[~data["group"].eq("no_ift")]
    runs = trained.groupby(["model", "group"])["run"].nunique().to_dict()
    questions = {k: sorted(set(v)) for k, v in data.groupby(["model", "group", "test_set"])["question"]}
    return AnswerGlmm(res, fe, q_effect, run_sd, {(str(m), str(g)): int(n) for (m, g), n in runs.items()},
                      {(str(m), str(g), str(t)): v for (m, g, t), v in questions.items()})


def glmm_contrast(fit: AnswerGlmm, group: str, versus: str, level: float = 0.95) -> dict[str, dict[str, float]]:
    """Per test set (and "all"): the GLMM's difference in accuracy points over the questions both groups answered,
    with a delta-method SE (the between-run variance, which mean-field VB leaves out of a group mean, added back)."""
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    s2 = fit.run_sd ** 2
    per_model: dict[str, dict[str, tuple[float, float, float, float, int]]] = {}
    for (model, g, ts), qs in fit.questions.items():
        if g != group or (model, versus, ts) not in fit.questions:
            continue
        common = sorted(set(qs) & set(fit.questions[(model, versus, ts)]))
        if not common:
            continue
        u = np.array([fit.question_effect.get(q, 0.0) for q in common])
        (ma, sa), (mb, sb) = fit.fe[f"{model}|{group}|{ts}"], fit.fe[f"{model}|{versus}|{ts}"]
        pa, pb = _expit(ma + u), _expit(mb + u)
        ga, gb = float(np.mean(pa * (1 - pa))), float(np.mean(pb * (1 - pb)))
        per_model.setdefault(model, {})[ts] = (float(np.mean(pa - pb)), ga, gb, ga**2 * sa**2 + gb**2 * sb**2,
                                               len(common))
    out: dict[str, dict[str, float]] = {}
    test_sets = ordered_unique(pd.Series([t for m in per_model.values() for t in m], dtype=object))
    for ts in [*test_sets, "all"]:
        ests, variances, weights, n_q = [], [], [], 0
        for model, by_ts in per_model.items():
            parts = list(by_ts.values()) if ts == "all" else ([by_ts[ts]] if ts in by_ts else [])
            if not parts:
                continue
            ra, rb = fit.runs.get((model, group), 0), fit.runs.get((model, versus), 0)
            ga, gb = np.mean([p[1] for p in parts]), np.mean([p[2] for p in parts])
            run_var = (ga**2 * s2 / ra if ra else 0.0) + (gb**2 * s2 / rb if rb else 0.0)
            ests.append(np.mean([p[0] for p in parts]))
            variances.append(sum(p[3] for p in parts) / len(parts) ** 2 + run_var)
            weights.append(max(ra, rb, 1))
            n_q += sum(p[4] for p in parts)
        if not ests:
            continue
        w = np.asarray(weights, float) / sum(weights)
        est, se = float(np.dot(w, ests)), float(math.sqrt(np.dot(w**2, variances)))
        n_rep = int(sum(max(fit.runs.get((m, group), 0), fit.runs.get((m, versus), 0)) for m in per_model))
        p = float(2 * stats.norm.sf(abs(est) / se)) if se > 0 else float("nan")
        out[ts] = {"ours": 100 * est, "lo": 100 * (est - z * se), "hi": 100 * (est + z * se), "se": 100 * se,
                   "df": float("inf"), "p": p, "n_replicates": n_rep, "n_questions": n_q}
    return out


# --------------------------------------------------------------------------------- the paired t cross-check
def paired_diff_ci(diffs: Sequence[float] | np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Mean of per-replicate differences with a t interval (n - 1 df); lo = hi = nan with fewer than two."""
    d = np.asarray(diffs, dtype=float).ravel()
    d = d[np.isfinite(d)]
    n = int(d.size)
    nan = float("nan")
    if n == 0:
        return {"mean": nan, "lo": nan, "hi": nan, "n": 0}
    mean = float(d.mean())
    if n < 2:
        return {"mean": mean, "lo": nan, "hi": nan, "n": n}
    half = float(stats.t.ppf(0.5 + level / 2.0, n - 1) * d.std(ddof=1) / math.sqrt(n))
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n}


def replicate_t_interval(blocks: Sequence[Block], level: float = 0.95) -> dict[str, dict[str, float]]:
    """Cross-check: paired t interval over replicates of their accuracy differences (points), per test set and
    "all" (a replicate's mean over the test sets)."""
    per_rep: dict[str, list[float]] = {}
    for b in blocks:
        per_rep.setdefault(b.test_set, []).extend((100 * b.diff.mean(axis=1)).tolist())
    alls: list[float] = []
    for s in sorted({(b.model, b.domain) for b in blocks}):
        mats = [b.diff.mean(axis=1) for b in blocks if (b.model, b.domain) == s]
        alls.extend((100 * np.mean(mats, axis=0)).tolist())
    per_rep["all"] = alls
    return {ts: paired_diff_ci(v, level) for ts, v in per_rep.items()}


def pair_t_contrast(eval_table: pd.DataFrame, c: Contrast, level: float = 0.95) -> dict[str, dict[str, float]]:
    """Without an answers table: the paired t interval over replicates from the eval table's accuracies, in the
    shape of contrast_estimate's result (the cross-check standing in for the verdict)."""
    data = final_epoch(eval_table)
    keys = ["model", "domain", "seed", "test_set"]
    a = data[data["group"] == c.group].groupby(keys)["ft_acc"].mean()
    b = data[data["group"] == c.versus].groupby(keys)["ft_acc"].mean()
    if a.empty or b.empty:
        return {}
    if set(b.index.get_level_values("seed")) == {-1}:  # an untrained control pairs with every replicate
        b = b.droplevel("seed")
        diff = 100 * (a - b.reindex(a.index.droplevel("seed")).to_numpy())
    else:
        diff = 100 * (a - b)
    diff = diff.dropna().reset_index(name="d")
    out: dict[str, dict[str, float]] = {}
    per = {ts: sub["d"].to_numpy() for ts, sub in diff.groupby("test_set")}
    per["all"] = diff.groupby(["model", "domain", "seed"])["d"].mean().to_numpy()
    for ts in [*ordered_unique(diff["test_set"]), "all"]:
        d = per[ts]
        res = paired_diff_ci(d, level)
        n = res["n"]
        se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
        degenerate = n > 1 and not se > 0
        p = float(2 * stats.t.sf(abs(res["mean"]) / se, n - 1)) if n > 1 and se > 0 else float("nan")
        out[ts] = {"ours": res["mean"], "lo": res["lo"] if not degenerate else float("nan"),
                   "hi": res["hi"] if not degenerate else float("nan"), "se": se if not degenerate else float("nan"),
                   "df": float(n - 1) if n > 1 else float("nan"), "p": p, "n_replicates": n,
                   "n_questions": float("nan"), "df_replicates": n - 1}
        if degenerate:
            out[ts]["degenerate"] = "every replicate's difference is equal (no variance)"
        elif n < 2:
            out[ts]["degenerate"] = "one replicate: no interval"
    return out


# ------------------------------------------------------------------------------------------- verdict rows
def answer_verdict(
    answers: pd.DataFrame,
    method: Literal["bootstrap", "glmm"] = "bootstrap",
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    contrasts: Sequence[Contrast] = CONTRASTS,
    score: str = "correct",
) -> pd.DataFrame:
    """Verdict rows (claims 1-3 and the controls' readings) from every scored answer: direct estimate with its
    bootstrap check (or the GLMM), MDE and the paired t cross-check; groups not in the grid give no row."""
    if method not in ("bootstrap", "glmm"):
        raise ValueError(f"verdict_method must be 'bootstrap' or 'glmm', got {method!r}")
    data, _ = clean_answers(answers, score)
    present = set(data["group"])
    todo = [c for c in contrasts if c.group in present and c.versus in present]
    fit = None
    if method == "glmm" and todo:
        fit = fit_answer_glmm(data, sorted({g for c in todo for g in (c.group, c.versus)}))
    shared = shares_questions(answers)
    rows: list[dict[str, Any]] = []
    for c in todo:
        blocks = contrast_blocks(data, c.group, c.versus)
        if not blocks:
            continue
        direct = contrast_estimate(blocks, level)
        entity_only = contrast_estimate(blocks, level, by="entities")
        res = glmm_contrast(fit, c.group, c.versus, level) if fit is not None else direct
        boot = bootstrap_contrast(blocks, n_boot=n_boot, seed=seed) if fit is None else {}
        t_ci = replicate_t_interval(blocks, level)
        how = "direct (ANOVA) SE, bootstrap check" if fit is None else "glmm (no group × question effect)"
        how += "; shared questions resampled together" if shared else "; no qkey: questions taken as unshared"
        if GOLD in answers.columns and answers[GOLD].notna().any():
            how += ", questions sharing a gold answer too"
        for ts in [*ordered_unique(pd.Series([b.test_set for b in blocks], dtype=object)),
                   *(["all"] if c.with_all else [])]:
            r = dict(res.get(ts, direct[ts]))
            if fit is not None and "degenerate" in direct[ts]:
                r = direct[ts]
            r["se_boot"] = boot.get(ts, float("nan"))
            before = entity_only.get(ts, {})
            r.update(n_clusters=direct[ts].get("n_clusters", float("nan")),
                     **{f"{k}_entity": before.get(k, float("nan")) for k in ("se", "lo", "hi")})
            rows.append(verdict_row(c, ts, r, t_ci.get(ts, {}), method, how, score))
    return pd.DataFrame(rows, columns=[*VERDICT_COLUMNS, "_detail"])


def verdict_row(c: Contrast, test_set: str, res: Mapping[str, Any], t_ci: Mapping[str, float], method: str,
                how: str = "", score: str = "correct") -> dict[str, Any]:
    """One verdict row from a contrast result: MDE from the interval's df; its reading is filled in by
    read_rows once the multiplicity adjustment is known."""
    nan = float("nan")
    est, se, dof = res["ours"], res.get("se", nan), res.get("df", nan)
    mult = float(stats.t.ppf(0.975, dof) + stats.t.ppf(0.80, dof)) if np.isfinite(dof) else Z_MDE
    mde = mult * se if np.isfinite(se) else nan
    df_txt = f", {dof:.1f} df" if np.isfinite(dof) else ""
    if res.get("df_replicates", 1) == 0:
        df_txt += ", one replicate per domain: the between-run variance is not estimable and is left out"
    nq = res.get("n_questions", nan)
    q_txt = f" × {int(nq)} question(s)" if isinstance(nq, int | float) and np.isfinite(nq) else ""
    # the default method's interval is the direct (ANOVA) SE, named in `how`; only the GLMM is named up front
    detail = f"{'' if method == 'bootstrap' else method + ', '}{res['n_replicates']} replicate(s){q_txt}{df_txt}"
    if np.isfinite(mde):
        detail += f"; MDE {mde:.1f} = {mult:.2f} × SE {se:.2f}"
    if res.get("se_note"):
        detail += f"; {res['se_note']}"
    if how:
        detail += f"; {how}"
    return {"claim": c.claim, "kind": c.kind, "model": "all", "test_set": test_set, "score": score, "ours": est,
            "lo": res.get("lo", nan), "hi": res.get("hi", nan), "p": res.get("p", nan), "mde": mde,
            "t_lo": t_ci.get("lo", nan), "t_hi": t_ci.get("hi", nan), "se": se, "se_boot": res.get("se_boot", nan),
            "df": dof, "n_replicates": res["n_replicates"], "n_questions": nq,
            "n_clusters": res.get("n_clusters", nan), "se_entity": res.get("se_entity", nan),
            "lo_entity": res.get("lo_entity", nan), "hi_entity": res.get("hi_entity", nan),
            "paper": float(c.paper.get(test_set, nan)), "method": method, "note": c.note,
            "reading": res.get("degenerate", ""), "_detail": detail}


