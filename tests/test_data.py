"""Bundled labelled sets: balanced, unique, facts right; loaders round-trip; bad input is refused."""

import csv
import json
import re

import pytest
import torch

from avec.data import labelled as L


@pytest.mark.parametrize("name", L.available())
def test_bundled_sets_are_balanced_and_unique(name):
    d = L.load(name)
    assert len(d) >= 200, f"{name} has only {len(d)} items"
    assert len(set(d.texts)) == len(d.texts), "duplicate texts"
    if d.kind != "continuous":
        counts = d.counts()
        assert min(counts.values()) == max(counts.values()), counts
        assert len(counts) >= 2


def test_arithmetic_statements_are_computed_right():
    d = L.load("truth/arithmetic")
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "x": lambda a, b: a * b}
    for text, label in zip(d.texts, d.labels):
        a, op, b, value = re.fullmatch(r"(\d+) ([+x-]) (\d+) = (\d+)\.", text).groups()
        assert (ops[op](int(a), int(b)) == int(value)) == bool(label), text


def test_capital_and_element_facts_spot_checked():
    truth = dict(zip(L.load("truth").texts, L.load("truth").labels))
    known_true = ["The capital of France is Paris.", "The capital of Japan is Tokyo.", "The capital of Canada is Ottawa.",
                  "The capital of Australia is Canberra.", "The capital of Kenya is Nairobi.",
                  "The capital of Brazil is Brasília.", "The chemical symbol for gold is Au.",
                  "The chemical symbol for sodium is Na.", "The chemical symbol for tungsten is W.",
                  "The atomic number of carbon is 6.", "The atomic number of oxygen is 8.", "The atomic number of iron is 26."]
    for s in known_true:
        assert truth[s] == 1, s
    # every false capital statement names a capital, but not that country's
    rows = list(csv.DictReader(open(L.HERE / "sources" / "countries.csv", encoding="utf-8")))
    capital = {r["country"]: r["capital"] for r in rows}
    d = L.load("truth/capitals")
    for text, label, country, obj in zip(d.texts, d.labels, d.extra["subject"], d.extra["object"]):
        assert (capital[country] == obj) == bool(label), text
    els = list(csv.DictReader(open(L.HERE / "sources" / "elements.csv", encoding="utf-8")))
    assert [int(e["atomic_number"]) for e in els] == list(range(1, 119))
    assert {e["symbol"] for e in els} >= {"H", "He", "Fe", "Au", "Ag", "Pb", "Hg", "Og"} and len({e["symbol"] for e in els}) == 118
    sym = {e["name"].lower(): e["symbol"] for e in els}
    z = {e["name"].lower(): e["atomic_number"] for e in els}
    d = L.load("truth/elements")
    for text, label, name, obj in zip(d.texts, d.labels, d.extra["subject"], d.extra["object"]):
        expected = sym[name] if "symbol" in text else z[name]
        assert (obj == expected) == bool(label), text


def test_continent_and_latitude_spot_checks():
    c = L.load("continent")
    cls = dict(zip(c.texts, (c.classes[y] for y in c.labels)))
    assert cls["France is a country in"] == "Europe" and cls["The city of Nairobi is in"] == "Africa"
    assert cls["Peru is a country in"] == "Americas" and cls["The city of Baghdad is in"] == "Asia"
    lat = L.load("latitude")
    value = dict(zip(lat.extra["entity"], lat.labels))
    assert abs(value["Paris"] - 48.9) < 0.2 and abs(value["Canberra"] + 35.3) < 0.2 and abs(value["Oslo"] - 59.9) < 0.2
    assert all(-90 <= v <= 90 for v in lat.labels)
    # hemispheres are right for a few unmistakable ones
    assert value["Buenos Aires"] < 0 < value["Reykjavik"] and value["Wellington"] < value["Sydney"] < 0


def test_sentiment_sets_do_not_leak_words_across_classes():
    d = L.load("sentiment")
    pos = " ".join(t for t, y in zip(d.texts, d.labels) if y == 1).lower()
    neg = " ".join(t for t, y in zip(d.texts, d.labels) if y == 0).lower()
    for w in ("terrible", "awful", "disappointing", "hated"):
        assert w in neg and w not in pos
    for w in ("wonderful", "excellent", "loved"):
        assert w in pos and w not in neg


def test_loaders_round_trip(tmp_path):
    d = L.load("continent")
    back = L.from_csv(L.to_csv(d, tmp_path / "c.csv"), classes=d.classes)
    assert back.texts == d.texts and back.labels == d.labels and back.kind == "multiclass"
    back = L.from_jsonl(L.to_jsonl(d, tmp_path / "c.jsonl"), kind="multiclass", classes=d.classes)
    assert back.labels == d.labels and back.extra["entity"] == d.extra["entity"]
    lat = L.load("latitude")
    back = L.from_csv(L.to_csv(lat, tmp_path / "l.csv"))
    assert back.kind == "continuous" and torch.allclose(back.y, lat.y)
    s = L.from_lists(["good", "bad", "fine"], ["yes", "no", True])
    assert s.kind == "binary" and s.labels == (1, 0, 1)
    m = L.from_lists(["a", "b", "c"], ["cat", "dog", "cat"])
    assert m.kind == "multiclass" and m.classes == ("cat", "dog") and m.labels == (0, 1, 0)


def test_sample_is_balanced_and_subject_groups_exist():
    d = L.load("truth").sample(101, seed=3)
    assert len(d) == 101 and abs(sum(d.labels) - 50.5) <= 0.5
    assert set(d.extra["topic"]) <= {"capitals", "elements", "arithmetic"}
    assert "subject" in L.load("truth/capitals").extra


def test_bad_inputs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="missing or NaN"):
        L.from_lists(["a", "b"], [1, float("nan")])
    with pytest.raises(ValueError, match="2 texts but 3 labels"):
        L.from_lists(["a", "b"], [1, 0, 1])
    with pytest.raises(ValueError, match="empty"):
        L.from_lists(["a", ""], [1, 0])
    with pytest.raises(ValueError, match="not one of the classes"):
        L.from_lists(["a", "b"], ["x", "y"], classes=["x", "z"])
    with pytest.raises(KeyError, match="no bundled"):
        L.load("nope")
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"text": "a", "label": 1}) + "\n{oops\n")
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        L.from_jsonl(p)
    with pytest.raises(KeyError, match="no column"):
        L.from_csv(L.to_csv(L.load("continent"), tmp_path / "c.csv"), text="sentence")


def test_hf_loader_works_with_a_dataset_like_object_and_says_when_datasets_is_missing(monkeypatch):
    class Fake(dict):  # column access like a datasets.Dataset
        column_names = ["text", "label"]

        def __len__(self):
            return 3

        def __getitem__(self, key):
            if isinstance(key, slice):
                return {"text": ["x", "y", "z"][key], "label": [0, 1, 1][key]}
            return super().__getitem__(key)

    d = L.from_hf(Fake())
    assert d.texts == ("x", "y", "z") and d.labels == (0, 1, 1)
    import builtins

    real = builtins.__import__

    def no_datasets(name, *a, **k):
        if name == "datasets":
            raise ImportError("no")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(ImportError, match="needs the `datasets` package"):
        L.from_hf("imdb")
