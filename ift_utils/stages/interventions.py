"""Stage 02 (notebooks/02_interventions.ipynb): per domain and replicate, draw the intervention groups from
the probed beliefs, attach explanations made one way for every group, mix in the shared general data, check that
the compared training sets differ only in the intervention, and write each condition's training file."""

from __future__ import annotations

import hashlib
import random

import pandas as pd

from ift_utils.io import write_jsonl
from ift_utils.paths import RunPaths
from ift_utils.records import MCQ
from ift_utils.stages.grid import GENERAL_ONLY, conditions
from ift_utils.stages.shared import probe_frame, read_questions, test_questions


def general_pool(P, n: int, seed: int) -> tuple[list[dict], dict]:
    """`n` general instruction tasks for one replicate (`seed`: its data seed): the alpaca-format file's rows
    in a seeded order when given, else `n` generated offline. A longer request starts with the same tasks."""
    from ift_utils.general_tasks import generate_general_tasks, load_alpaca

    if not P.general_data and not P.general_hub:
        return generate_general_tasks(n, seed=seed), {"source": "generated", "seed": seed, "n": n}
    if P.general_hub:
        from ift_utils.data_hub import load_hub_alpaca

        tasks, report = load_hub_alpaca(P.general_hub, allow_network=P.allow_network)
    else:
        tasks, report = load_alpaca(P.general_data)
    if len(tasks) < n:
        key = "general_hub" if P.general_hub else "general_data"
        raise ValueError(f"{key} {P.general_hub or P.general_data}: {len(tasks)} usable rows, the cells need {n} "
                         f"(general_ratio {P.general_ratio} × domain examples"
                         + (", plus the domain examples' count for the general_only control)" if GENERAL_ONLY
                            in P.controls else ")"))
    random.Random(f"general:{seed}").shuffle(tasks)
    return tasks[:n], {**report.as_dict(), "seed": seed, "n": n}


def general_seed(data_seed: int, domain: str) -> int:
    """The general data's seed for one domain's replicate: each (domain, replicate) draws its own general tasks, so
    each domain's `general_only` cell is a run of its own and counts once in the verdict."""
    return int.from_bytes(hashlib.sha256(f"general/{domain}/{data_seed}".encode()).digest()[:8], "big") >> 1


def fit_dev_slice(train: list[MCQ], groups, data_seed: int, n: int) -> list[MCQ]:
    """`n` training questions of the domain that no group of this replicate trains on, in a seeded order: the
    held-out slice of the same relation on which training picks its early-stopping epoch."""
    used = {ex["id"] for _, examples in groups.items() for ex in examples}
    rest = [q for q in train if q.id not in used]
    random.Random(f"fit_dev:{data_seed}").shuffle(rest)
    return rest[:n]


def cell_examples(P, groups, name: str, general: list[dict], tok, seed: int) -> list[dict]:
    """The chat-formatted training set of one condition of a replicate (`seed`: its data seed): its domain
    examples mixed with the replicate's first round(general_ratio × n) general tasks, the same for every
    group; `general_only` gets as many general tasks as the others have examples, the shared ones first."""
    from ift_utils.general_tasks import general_example
    from ift_utils.interventions import mix_general, to_chat_examples

    n = len(groups.incompatible)
    k = round(P.general_ratio * n)
    gen = [general_example(t, P.chat_template, tok) for t in general[:n + k]]
    if len(gen) < (n + k if name == GENERAL_ONLY else k):
        raise ValueError(f"{len(general)} general tasks given, condition {name!r} needs "
                         f"{n + k if name == GENERAL_ONLY else k}")
    if name == GENERAL_ONLY:
        random.Random(f"{seed}:mix").shuffle(gen)
        return gen
    domain = to_chat_examples(dict(groups.items())[name], mode=P.scoring, template=P.chat_template, tokenizer=tok)
    return mix_general(domain, gen[:k], P.general_ratio, seed=seed)


def build_domain_groups(P, paths: RunPaths, model, tok, domain: str, probe: pd.DataFrame) -> dict:
    """Stage 02 for one domain: per replicate (seed of `P.seeds`), groups drawn from the beliefs with the
    replicate's own data seed; explanations made one way for every group (`P.explanations`); checks (no
    held-out question, equal sizes and general data, no template stating an ID/OOD answer); files under
    `groups/{domain}/rep{seed}/` (original schema + chat). Raises on a failed check."""
    from ift_utils.explanations import ExplainConfig, Explanation, generate_explanations, template_explanation
    from ift_utils.general_tasks import general_example
    from ift_utils.interventions import (
        answer_table,
        attach_explanations,
        build_groups,
        card,
        check_cells,
        check_groups,
        context_problem,
        explanation_table,
        needed_explanations,
        replicate_seed,
        write_groups,
    )

    train = read_questions(paths, domain, "train")
    test_files = {d: test_questions(paths, d) for d in P.domains}
    heldout = [q for d in P.domains for q in read_questions(paths, d, "dev")]
    heldout += [q for d in P.domains for qs in test_files[d].values() for q in qs]
    tests = [q for d in P.domains for t, qs in test_files[d].items() if t != "HOMO" for q in qs]
    homo = test_files[domain]["HOMO"]
    beliefs = probe_frame(probe, domain, "train")
    reps = {}
    for seed in P.seeds:
        g = build_groups(train, beliefs, threshold=P.confidence_threshold, ratios=P.ratios,
                         seed=replicate_seed(P.data_seed, seed), max_per_group=P.max_per_group,
                         match_harmonious="harmonious" in P.extra_groups, match_answers=P.match_answers)
        if g.report["n"] == 0:
            why = ("no training question is confidently wrong" if not g.report["incompatible_pool"] else
                   "no training question is confidently right, so harmonious (one of extra_groups) cannot match "
                   "the other groups' size")
            raise ValueError(f"domain {domain!r}: {why} (confidence > {P.confidence_threshold}), so the groups are "
                             "empty; lower confidence_threshold, raise n_train, or drop this domain")
        problem = context_problem(g) if "contextualized" in P.extra_groups else None
        if problem:
            raise ValueError(f"domain {domain!r}: {problem}")
        reps[seed] = g

    need: dict[str, dict[int, tuple[MCQ, int]]] = {"gold": {}, "self": {}}
    for g in reps.values():
        for kind, items in needed_explanations(g).items():
            need[kind].update({q.id: (q, c) for q, c in items})
    expl: dict[str, dict[int, Explanation]] = {}
    stats: dict[str, dict] = {}
    cfg = ExplainConfig(style=P.explanation_style, temperature=P.explanation_temperature, top_p=P.explanation_top_p,
                        max_new_tokens=P.explanation_max_new_tokens, batch_size=P.batch_size_eval, seed=P.data_seed)
    for kind in ("gold", "self"):
        items = list(need[kind].values())
        if P.explanations == "model":  # one cache per domain: a question drawn by two replicates shares its text
            made, stats[kind] = generate_explanations(model, tok, items, cfg,
                                                      paths.groups / domain / "explanations.cache.jsonl")
        else:
            made = [Explanation(template_explanation(q, c), "template", "template") for q, c in items]
            stats[kind] = {"items": len(items), "template": len(items)}
        expl[kind] = {q.id: e for (q, _), e in zip(items, made, strict=True)}

    out: dict[int, dict] = {}
    cards, tables, answer_mix = [], [], []
    first = {ex["id"] for ex in reps[P.seeds[0]].incompatible}
    for seed, g in reps.items():
        g = attach_explanations(g, expl["gold"], expl["self"])
        where = f"domain {domain!r}, replicate {seed}"
        problems = check_groups(g, train, heldout)
        if problems:
            raise AssertionError(f"{where}: group checks failed:\n  " + "\n  ".join(problems))
        table = explanation_table(g, tests)
        bad = table[(table["leaking_template"] > 0) | (table["leaking_fact_template"] > 0)]
        if len(bad):
            raise AssertionError(f"{where}: template explanations state test knowledge (the gold answer of an "
                                 f"ID/OOD/XD question, or a test entity with its answer); a template must state only "
                                 f"the answer's own relation: "
                                 + "; ".join(f"{r.group}: {r.leaking_template} ({r.leaked_answers}), "
                                             f"{r.leaking_fact_template} ({r.leaked_facts})" for r in bad.itertuples()))
        data_seed = replicate_seed(P.data_seed, seed)
        n = len(g.incompatible)
        k = round(P.general_ratio * n)
        general, general_report = general_pool(P, n + k if GENERAL_ONLY in P.controls else k,
                                               general_seed(data_seed, domain))
        cells = {name: cell_examples(P, g, name, general, tok, data_seed) for name, _, _ in conditions(P)}
        problems = check_cells(cells, [general_example(t, P.chat_template, tok) for t in general[:k]], n)
        if problems:
            raise AssertionError(f"{where}: training-set checks failed:\n  " + "\n  ".join(problems))
        folder = paths.groups / domain / f"rep{seed}"
        write_groups(g, folder)
        dev = fit_dev_slice(train, g, data_seed, P.fit_dev)
        write_jsonl(folder / "fit_dev.jsonl", [q.to_json() for q in dev])
        for name, examples in cells.items():
            write_jsonl(folder / f"{name}.chat.jsonl", examples)
        reps_row = {"domain": domain, "rep": seed}
        cards.append(card(g, mode=P.scoring).assign(**reps_row))
        answer_mix.append(answer_table(g, homo).assign(**reps_row))
        tables.append(table.assign(**reps_row))
        out[seed] = {"groups": g, "report": g.report, "data_seed": data_seed, "general": general_report,
                     "train_sizes": {name: len(v) for name, v in cells.items()}, "fit_dev": len(dev),
                     "shared_with_first_rep": len(first & {ex["id"] for ex in g.incompatible})}

    def keyed(frames: list[pd.DataFrame]) -> pd.DataFrame:
        f = pd.concat(frames, ignore_index=True)
        return f[["domain", "rep", *(c for c in f if c not in ("domain", "rep"))]]

    return {"replicates": out, "explanations": stats, "card": keyed(cards), "explanation_table": keyed(tables),
            "answer_table": keyed(answer_mix)}

