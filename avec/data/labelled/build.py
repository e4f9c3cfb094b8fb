"""Regenerate the shipped labelled sets from the fact tables in ``sources/`` (deterministic).

    python avec/data/labelled/build.py

Sources (public knowledge): ``countries.csv`` (country, capital, continent, capital latitude in degrees,
rounded to 0.1; transcontinental countries have no continent), ``cities.csv`` (large non-capital cities),
``elements.csv`` (the 118 elements: atomic number, symbol, name). Countries whose capital is disputed or
split (Bolivia, South Africa, Israel, Ivory Coast, Benin, Sri Lanka, ...) were left out on purpose.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

HERE = Path(__file__).parent


def _read(name: str) -> list[dict]:
    with open(HERE / "sources" / name, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _write_csv(name: str, rows: list[dict]) -> None:
    with open(HERE / name, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def capitals(rng: random.Random) -> list[dict]:
    """One true and one false statement per country; the false capital comes from another country of
    the same continent when possible (so the wrong answer is a plausible capital, not a surface cue)."""
    countries = _read("countries.csv")
    rows = []
    for c in countries:
        same = [o for o in countries if o["continent"] == c["continent"] and o["country"] != c["country"]]
        other = rng.choice(same or [o for o in countries if o["country"] != c["country"]])
        rows.append({"statement": f"The capital of {c['country']} is {c['capital']}.", "label": 1,
                     "subject": c["country"], "object": c["capital"]})
        rows.append({"statement": f"The capital of {c['country']} is {other['capital']}.", "label": 0,
                     "subject": c["country"], "object": other["capital"]})
    return rows


def elements(rng: random.Random) -> list[dict]:
    """Per element: symbol true/false and atomic number true/false (false number 1-5 away)."""
    els = _read("elements.csv")
    rows = []
    for e in els:
        name = e["name"].lower()
        z = int(e["atomic_number"])
        wrong_sym = rng.choice([o["symbol"] for o in els if o["symbol"] != e["symbol"]])
        offsets = [d for d in (-5, -4, -3, -2, -1, 1, 2, 3, 4, 5) if 1 <= z + d <= 118]
        wrong_z = z + rng.choice(offsets)
        rows += [
            {"statement": f"The chemical symbol for {name} is {e['symbol']}.", "label": 1, "subject": name, "object": e["symbol"]},
            {"statement": f"The chemical symbol for {name} is {wrong_sym}.", "label": 0, "subject": name, "object": wrong_sym},
            {"statement": f"The atomic number of {name} is {z}.", "label": 1, "subject": name, "object": str(z)},
            {"statement": f"The atomic number of {name} is {wrong_z}.", "label": 0, "subject": name, "object": str(wrong_z)},
        ]
    return rows


def arithmetic(rng: random.Random, n: int = 200) -> list[dict]:
    """n operand triples (+, -, x on 2..20), each stated once with the right result and once wrong."""
    seen, rows = set(), []
    while len(seen) < n:
        op = rng.choice("+-*")
        a, b = rng.randint(2, 20), rng.randint(2, 20)
        if op == "-" and b > a:
            a, b = b, a
        if (a, op, b) in seen:
            continue
        seen.add((a, op, b))
        right = {"+": a + b, "-": a - b, "*": a * b}[op]
        wrong = right + rng.choice([d for d in (-10, -3, -2, -1, 1, 2, 3, 10) if right + d >= 0])
        sym = "x" if op == "*" else op
        for value, label in ((right, 1), (wrong, 0)):
            rows.append({"statement": f"{a} {sym} {b} = {value}.", "label": label, "subject": f"{a} {sym} {b}",
                         "object": str(value)})
    return rows


def continent() -> list[dict]:
    """Four continents x 34 countries (every sovereign state of the Americas in the table), each as a
    country prompt and as a capital prompt: 272 items, 68 per class."""
    countries = [c for c in _read("countries.csv") if c["continent"] in ("Africa", "Americas", "Asia", "Europe")]
    rows = []
    for cont in ("Africa", "Americas", "Asia", "Europe"):
        chosen = sorted((c for c in countries if c["continent"] == cont), key=lambda c: c["country"])[:34]
        assert len(chosen) == 34, cont
        for c in chosen:
            rows.append({"text": f"{c['country']} is a country in", "label": cont, "entity": c["country"]})
            rows.append({"text": f"The city of {c['capital']} is in", "label": cont, "entity": c["capital"]})
    return rows


def latitude() -> list[dict]:
    rows = [{"text": f"The city of {c['capital']}", "value": float(c["capital_latitude"]), "entity": c["capital"]}
            for c in _read("countries.csv")]
    rows += [{"text": f"The city of {c['city']}", "value": float(c["latitude"]), "entity": c["city"]}
             for c in _read("cities.csv")]
    return rows


POSITIVE_ADJ = ["wonderful", "excellent", "delightful", "fantastic", "superb", "lovely", "brilliant", "charming",
                "outstanding", "enjoyable", "pleasant", "amazing", "marvelous", "terrific", "impressive", "great",
                "beautiful", "heartwarming"]
NEGATIVE_ADJ = ["terrible", "awful", "dreadful", "horrible", "disappointing", "boring", "miserable", "unpleasant",
                "disgusting", "mediocre", "painful", "annoying", "tedious", "poor", "frustrating", "dull", "lousy",
                "depressing"]
NOUNS = ["movie", "meal", "hotel", "concert", "book", "service", "weather", "trip", "game", "performance",
         "restaurant", "song", "class", "party", "show", "coffee", "view", "holiday"]
TEMPLATES = ["The {noun} was {adj}.", "I thought the {noun} was {adj}.", "What {a} {adj} {noun}!",
             "Honestly, the {noun} was {adj}.", "Everyone agreed that the {noun} was {adj}.",
             "My friends said the {noun} was {adj}."]
POSITIVE_FREE = [
    "I loved every minute of it.", "This made my whole week.", "I would happily do it again.",
    "She smiled all the way home.", "It was the best day of my life.", "We had a truly great time together.",
    "The staff were kind and helpful.", "I can't wait to go back.", "Everything worked perfectly.",
    "He was thrilled with the result.", "What a joy it was to be there.", "The food was delicious and fresh.",
    "I am so grateful for your help.", "The children laughed and played all afternoon.", "This is a masterpiece.",
    "I highly recommend it to everyone.", "Our team won and we celebrated all night.", "The garden looks gorgeous in spring.",
    "You did a fantastic job.", "I feel happy and relaxed.", "The room was clean and comfortable.",
    "It exceeded all my expectations.", "Their kindness warmed my heart.", "The music filled me with joy.",
    "I'm proud of what we built.", "The sunset was breathtaking.", "This gift is perfect, thank you!",
    "I finally passed the exam and I'm overjoyed.", "The new park is a treasure for the town.", "We felt welcome from the start.",
]
NEGATIVE_FREE = [
    "I hated every minute of it.", "This ruined my whole week.", "I would never do it again.",
    "She cried all the way home.", "It was the worst day of my life.", "We had a truly awful time together.",
    "The staff were rude and unhelpful.", "I never want to go back.", "Nothing worked at all.",
    "He was furious with the result.", "What a misery it was to be there.", "The food was stale and cold.",
    "I am so angry about your mistake.", "The children cried and fought all afternoon.", "This is a complete failure.",
    "I would not recommend it to anyone.", "Our team lost and we felt awful all night.", "The garden looks dead and neglected.",
    "You did a careless job.", "I feel sad and anxious.", "The room was dirty and cramped.",
    "It fell far below my expectations.", "Their cruelty broke my heart.", "The noise gave me a headache.",
    "I'm ashamed of what we built.", "The trip was a disaster.", "This gift is useless, what a waste.",
    "I failed the exam again and I'm devastated.", "The new mall is an eyesore for the town.", "We felt unwelcome from the start.",
]


def sentiment(rng: random.Random, per_class: int = 200) -> list[dict]:
    """200 positive and 200 negative sentences: 30 written by hand per class, the rest from templates
    (noun x adjective x frame), sampled without repetition."""
    out = []
    for label, adjs, free in ((1, POSITIVE_ADJ, POSITIVE_FREE), (0, NEGATIVE_ADJ, NEGATIVE_FREE)):
        combos = [(t, n, a) for t in TEMPLATES for n in NOUNS for a in adjs]
        rng.shuffle(combos)
        texts = list(free)
        for t, n, a in combos:
            if len(texts) == per_class:
                break
            texts.append(t.format(noun=n, adj=a, a="an" if a[0] in "aeiou" else "a"))
        out += [{"text": x, "label": label} for x in texts]
    return out


def main() -> None:
    rng = random.Random(0)
    _write_csv("truth_capitals.csv", capitals(rng))
    _write_csv("truth_elements.csv", elements(rng))
    _write_csv("truth_arithmetic.csv", arithmetic(rng))
    _write_csv("continent.csv", continent())
    _write_csv("latitude.csv", latitude())
    with open(HERE / "sentiment.jsonl", "w", encoding="utf-8") as f:
        for row in sentiment(rng):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
