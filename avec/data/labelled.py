"""Labelled text sets for probes: the bundled ones (``avec/data/labelled/``) and loaders for user data
(CSV, JSONL, Python lists, Hugging Face ``datasets``).

A ``Labelled`` set is texts plus one label each, of one kind:

- ``binary``:      labels 0/1 (e.g. true/false statements, negative/positive sentiment)
- ``multiclass``:  labels are class indices into ``classes`` (e.g. continents)
- ``continuous``:  labels are floats (e.g. a city's latitude)

Bundled sets (``available()``): ``truth/capitals``, ``truth/elements``, ``truth/arithmetic``, ``truth`` (the
three together), ``sentiment``, ``continent``, ``latitude``. ``avec/data/labelled/build.py`` regenerates them
from the fact tables in ``avec/data/labelled/sources/``.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..io import atomic_write

HERE = Path(__file__).parent / "labelled"
KINDS = ("binary", "multiclass", "continuous")
MAX_CLASSES = 20  # whole-number labels with at most this many distinct values are classes (as in avec.probes.linear)

# name -> (file, text column, label column, kind)
BUNDLED: dict[str, tuple[str, str, str, str]] = {
    "truth/capitals": ("truth_capitals.csv", "statement", "label", "binary"),
    "truth/elements": ("truth_elements.csv", "statement", "label", "binary"),
    "truth/arithmetic": ("truth_arithmetic.csv", "statement", "label", "binary"),
    "sentiment": ("sentiment.jsonl", "text", "label", "binary"),
    "continent": ("continent.csv", "text", "label", "multiclass"),
    "latitude": ("latitude.csv", "text", "value", "continuous"),
}


@dataclass(frozen=True)
class Labelled:
    """Texts with one label each.

    texts:   the inputs, in order
    labels:  ``binary`` -> 0/1 ints; ``multiclass`` -> indices into ``classes``; ``continuous`` -> floats
    kind:    "binary" | "multiclass" | "continuous"
    classes: class names (binary: ("0", "1") unless given, e.g. ("false", "true"))
    name:    where it came from
    extra:   other columns of the source, one tuple per column (e.g. "topic", "subject")
    """

    texts: tuple[str, ...]
    labels: tuple
    kind: str
    classes: tuple[str, ...] = ()
    name: str = "data"
    extra: Mapping[str, tuple] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.texts)} texts but {len(self.labels)} labels; give one label per text")
        if not self.texts:
            raise ValueError(f"{self.name}: no items")
        bad = [i for i, t in enumerate(self.texts) if not isinstance(t, str) or not t.strip()]
        if bad:
            raise ValueError(f"{self.name}: item(s) {bad[:10]} have an empty or non-string text")
        for col, values in self.extra.items():
            if len(values) != len(self.texts):
                raise ValueError(f"{self.name}: column {col!r} has {len(values)} values for {len(self.texts)} texts")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def y(self) -> torch.Tensor:
        """``[n]`` labels: long for binary/multiclass, float for continuous."""
        return torch.tensor(self.labels, dtype=torch.float32 if self.kind == "continuous" else torch.long)

    def counts(self) -> dict[str, int]:
        """Items per class (binary/multiclass)."""
        if self.kind == "continuous":
            raise ValueError("a continuous set has no classes to count")
        return {c: sum(1 for y in self.labels if y == i) for i, c in enumerate(self.classes)}

    def subset(self, index: Sequence[int] | torch.Tensor) -> "Labelled":
        idx = [int(i) for i in index]
        return Labelled(tuple(self.texts[i] for i in idx), tuple(self.labels[i] for i in idx), self.kind, self.classes,
                        self.name, {k: tuple(v[i] for i in idx) for k, v in self.extra.items()})

    def where(self, column: str, value: Any) -> "Labelled":
        """Items whose ``extra[column]`` equals ``value`` (e.g. ``truth.where("topic", "capitals")``)."""
        if column not in self.extra:
            raise KeyError(f"{self.name} has no column {column!r}; it has {sorted(self.extra)}")
        return self.subset([i for i, v in enumerate(self.extra[column]) if v == value])

    def sample(self, n: int, seed: int = 0) -> "Labelled":
        """``n`` items drawn without replacement, class-balanced for binary/multiclass sets."""
        if n >= len(self):
            return self
        g = torch.Generator().manual_seed(seed)
        if self.kind == "continuous":
            return self.subset(torch.randperm(len(self), generator=g)[:n].sort().values)
        y = self.y
        k = len(self.classes)
        picks = []
        for c in range(k):
            members = (y == c).nonzero().flatten()
            take = n // k + (1 if c < n % k else 0)
            picks.append(members[torch.randperm(len(members), generator=g)[:take]])
        return self.subset(torch.cat(picks).sort().values)

    def __add__(self, other: "Labelled") -> "Labelled":
        if (self.kind, self.classes) != (other.kind, other.classes):
            raise ValueError(f"cannot join a {self.kind} set with classes {self.classes} and a {other.kind} set "
                             f"with classes {other.classes}")
        cols = set(self.extra) & set(other.extra)
        return Labelled(self.texts + other.texts, self.labels + other.labels, self.kind, self.classes,
                        f"{self.name}+{other.name}", {c: tuple(self.extra[c]) + tuple(other.extra[c]) for c in cols})

    def to_frame(self):
        import pandas as pd

        frame = pd.DataFrame({"text": self.texts, "label": self.labels, **{k: list(v) for k, v in self.extra.items()}})
        if self.kind != "continuous":
            frame["class"] = [self.classes[y] for y in self.labels]
        return frame

    def __repr__(self) -> str:
        what = f"classes {self.classes}" if self.kind != "continuous" else "continuous"
        return f"Labelled({self.name!r}: {len(self)} {self.kind} items, {what})"


# -- building from raw labels --------------------------------------------------------------------------

def _is_missing(y: Any) -> bool:
    if y is None:
        return True
    if isinstance(y, float) and math.isnan(y):
        return True
    return isinstance(y, str) and y.strip().lower() in ("", "nan", "none", "null")


def _is_number(y: Any) -> bool:
    """A number, or a string that reads as one (CSV cells are strings)."""
    if isinstance(y, bool):
        return False
    if isinstance(y, (int, float)):
        return True
    try:
        float(y)
        return True
    except (TypeError, ValueError):
        return False


def _plain(y: Any) -> Any:
    """numpy / torch scalars -> Python scalars (np.True_ -> True, np.int64(2) -> 2)."""
    if not isinstance(y, (str, bytes)) and hasattr(y, "item") and getattr(y, "ndim", 0) == 0:
        return y.item()
    return y


def _is_whole(v: float) -> bool:
    return math.isfinite(v) and v == round(v)


def _as_bool_label(y: Any) -> int | None:
    if isinstance(y, bool):
        return int(y)
    if isinstance(y, (int, float)) and y in (0, 1):
        return int(y)
    if isinstance(y, str):
        s = y.strip().lower()
        table = {"0": 0, "1": 1, "true": 1, "false": 0, "yes": 1, "no": 0, "positive": 1, "negative": 0,
                 "pos": 1, "neg": 0, "1.0": 1, "0.0": 0}
        return table.get(s)
    return None


def from_lists(texts: Sequence[str], labels: Sequence[Any], kind: str | None = None,
               classes: Sequence[str] | None = None, name: str = "data",
               extra: Mapping[str, Sequence[Any]] | None = None) -> Labelled:
    """A ``Labelled`` set from texts and raw labels.

    kind: inferred when None (the same rule as ``avec.probes.linear.check_labels``):
          bools, 0/1, true/false, yes/no -> binary;
          numbers (or numeric strings) that are all whole and take at most ``MAX_CLASSES`` distinct values -> classes:
          two values (e.g. -1/+1) -> binary, more (e.g. 0/1/2) -> multiclass, in numeric order with the values as
          class names; other numbers -> continuous; other strings -> multiclass (classes sorted).
          Force it with ``kind=`` (one of ``KINDS``). For multiclass, ``classes`` fixes the order (labels may then
          be names, or ints read as indices into ``classes``).
    Missing labels (None, NaN, ""), and texts that are None, not strings or empty, raise, naming the rows.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)} (or None to infer it), got {kind!r}")
    texts, labels = list(texts), [_plain(y) for y in labels]
    if len(texts) != len(labels):
        raise ValueError(f"{name}: {len(texts)} texts but {len(labels)} labels; give one label per text")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise ValueError(f"{name}: text(s) at row(s) {bad[:10]}{' ...' if len(bad) > 10 else ''} are None, not strings, "
                         f"or empty: {[texts[i] for i in bad[:3]]!r}")
    missing = [i for i, y in enumerate(labels) if _is_missing(y)]
    if missing:
        raise ValueError(f"{name}: label(s) missing or NaN at row(s) {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    numbers = all(_is_number(y) for y in labels)
    values = sorted({float(y) for y in labels}) if numbers else []
    whole = numbers and all(_is_whole(v) for v in values)
    if kind is None:
        if classes is None and all(_as_bool_label(y) is not None for y in labels):
            kind = "binary"
        elif classes is None and whole and len(values) == 2:
            kind = "binary"
        elif classes is not None or not numbers or (whole and len(values) <= MAX_CLASSES):
            kind = "multiclass"
        else:
            kind = "continuous"
    if kind != "continuous" and classes is None and whole and not all(_as_bool_label(y) is not None for y in labels):
        # numeric classes (-1/+1, 1/2/3, 0/1/2 as floats...): index by numeric order, named by value
        classes = [str(int(v)) for v in values]
        labels = [str(int(float(y))) for y in labels]
    if kind == "binary":
        conv = [_as_bool_label(y) for y in labels]
        if classes is not None and any(c is None for c in conv):
            conv = [list(classes).index(y) if y in classes else None for y in labels]
        bad = [i for i, y in enumerate(conv) if y is None]
        if bad:
            raise ValueError(f"{name}: binary labels must be two values (0/1, -1/+1, true/false, yes/no or two "
                             f"given classes); row(s) {bad[:10]} are "
                             f"{[labels[i] for i in bad[:3]]}")
        out = tuple(conv)
        names = tuple(classes) if classes is not None else ("0", "1")
        if len(names) != 2 or not set(out) <= {0, 1}:
            raise ValueError(f"{name}: binary labels take two values, got {len(names)}: {list(names)[:10]}; "
                             "use kind='multiclass'")
    elif kind == "multiclass":
        if classes is None:
            classes = sorted({str(y) for y in labels})
        elif len(classes) != len(set(str(c) for c in classes)):
            raise ValueError(f"{name}: classes repeat a name: {list(classes)}")
        names = tuple(str(c) for c in classes)
        index = {c: i for i, c in enumerate(names)}
        conv = []
        for i, y in enumerate(labels):
            if isinstance(y, (int,)) and not isinstance(y, bool) and 0 <= y < len(names):
                conv.append(int(y))
            elif str(y) in index:
                conv.append(index[str(y)])
            else:
                raise ValueError(f"{name}: row {i} has label {y!r}, not one of the classes {names}")
        out = tuple(conv)
    elif kind == "continuous":
        try:
            out = tuple(float(y) for y in labels)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name}: continuous labels must be numbers ({e})") from None
        bad = [i for i, y in enumerate(out) if not math.isfinite(y)]
        if bad:
            raise ValueError(f"{name}: label(s) NaN or infinite at row(s) {bad[:10]}")
        names = ()
    return Labelled(tuple(texts), out, kind, names, name,
                    {k: tuple(v) for k, v in (extra or {}).items()})


def _from_rows(rows: list[dict], text: str, label: str, kind: str | None, classes, name: str) -> Labelled:
    if not rows:
        raise ValueError(f"{name}: no rows")
    cols = list(rows[0])
    for col in (text, label):
        if col not in rows[0]:
            raise KeyError(f"{name}: no column {col!r}; columns are {cols}")
    extra = {c: [r.get(c) for r in rows] for c in cols if c not in (text, label)}
    return from_lists([r[text] for r in rows], [r[label] for r in rows], kind, classes, name, extra)


def from_csv(path: str | Path, text: str = "text", label: str = "label", kind: str | None = None,
             classes: Sequence[str] | None = None) -> Labelled:
    """Read a CSV file with a header; ``text`` and ``label`` name its columns (other columns go to ``extra``)."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return _from_rows(rows, text, label, kind, classes, path.stem)


def from_jsonl(path: str | Path, text: str = "text", label: str = "label", kind: str | None = None,
               classes: Sequence[str] | None = None) -> Labelled:
    """Read a JSON-lines file (one object per line; blank lines skipped)."""
    path = Path(path)
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n} is not valid JSON ({e.msg})") from None
    return _from_rows(rows, text, label, kind, classes, path.stem)


def from_hf(dataset: Any, text: str = "text", label: str = "label", split: str = "train", kind: str | None = None,
            classes: Sequence[str] | None = None, limit: int | None = None, **load_kwargs: Any) -> Labelled:
    """From a Hugging Face ``datasets`` dataset, or its name (loaded with ``datasets.load_dataset``).

    Class names come from the dataset's ``ClassLabel`` feature when it has one.
    """
    if isinstance(dataset, str):
        try:
            import datasets
        except ImportError:
            raise ImportError("loading a Hugging Face dataset by name needs the `datasets` package "
                              "(pip install datasets); or pass a CSV/JSONL file or Python lists") from None
        name = dataset
        dataset = datasets.load_dataset(dataset, split=split, **load_kwargs)
    else:
        name = getattr(getattr(dataset, "info", None), "dataset_name", None) or "hf"
    if hasattr(dataset, "keys") and split in dataset.keys() and not hasattr(dataset, "column_names"):
        dataset = dataset[split]  # a DatasetDict
    n = len(dataset) if limit is None else min(limit, len(dataset))
    feature = getattr(dataset, "features", {}).get(label) if hasattr(dataset, "features") else None
    if classes is None and feature is not None and hasattr(feature, "names"):
        classes = list(feature.names)
        kind = kind or ("binary" if len(classes) == 2 else "multiclass")
    rows = dataset[:n] if hasattr(dataset, "column_names") else {k: list(v)[:n] for k, v in dataset.items()}
    if text not in rows or label not in rows:
        raise KeyError(f"{name}: no column {text!r} or {label!r}; columns are {list(rows)}")
    labels = list(rows[label])
    if kind == "binary" and classes is not None:
        labels = [int(y) if isinstance(y, int) else y for y in labels]
    return from_lists(rows[text], labels, kind, classes, name)


# -- bundled sets ------------------------------------------------------------------------------------

def available() -> list[str]:
    """Names accepted by ``load``."""
    return sorted([*BUNDLED, "truth"])


def load(name: str) -> Labelled:
    """A bundled set by name (see ``available()``). ``truth`` joins the three truth sets with a ``topic`` column."""
    if name == "truth":
        parts = [load(f"truth/{t}") for t in ("capitals", "elements", "arithmetic")]
        out = parts[0]
        for p in parts[1:]:
            out = out + p
        return Labelled(out.texts, out.labels, out.kind, out.classes, "truth", out.extra)
    if name not in BUNDLED:
        raise KeyError(f"no bundled labelled set {name!r}; available: {available()}")
    file, text, label, kind = BUNDLED[name]
    path = HERE / file
    reader = from_jsonl if file.endswith(".jsonl") else from_csv
    data = reader(path, text, label, kind)
    classes = {"truth": ("false", "true"), "sentiment": ("negative", "positive")}.get(name.split("/")[0], data.classes)
    extra = dict(data.extra)
    if name.startswith("truth/"):
        extra["topic"] = (name.split("/")[1],) * len(data)
    return Labelled(data.texts, data.labels, kind, tuple(classes), name, extra)


def to_csv(data: Labelled, path: str | Path) -> Path:
    """Write a set as CSV (text, label, extra columns; multi-class labels as class names); ``from_csv`` reads it back.
    Atomic: a failure part-way leaves an existing file untouched."""
    path = Path(path)
    frame = data.to_frame()
    if data.kind == "multiclass":  # class names, so the file reads back without knowing the order
        frame["label"] = frame["class"]
    frame = frame.drop(columns=["class"], errors="ignore")
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def to_jsonl(data: Labelled, path: str | Path) -> Path:
    """Write a set as JSON lines (text, label, extra columns; multi-class labels as class names). Atomic: a
    failure part-way (e.g. a value JSON cannot encode) leaves an existing file untouched."""
    path = Path(path)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for i, (t, y) in enumerate(zip(data.texts, data.labels)):
                label = data.classes[y] if data.kind == "multiclass" else y
                row = {"text": t, "label": label, **{k: v[i] for k, v in data.extra.items()}}
                try:
                    line = json.dumps(row, ensure_ascii=False)
                except (TypeError, ValueError) as e:
                    raise ValueError(f"{data.name}: row {i} cannot be written as JSON ({e}); {path} is unchanged") from None
                f.write(line + "\n")

    return atomic_write(path, write)


__all__ = ["Labelled", "available", "from_csv", "from_hf", "from_jsonl", "from_lists", "load", "to_csv", "to_jsonl"]
