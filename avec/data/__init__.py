"""Bundled corpora and labelled datasets (see each subfolder README)."""

from .labelled import Labelled, from_csv, from_hf, from_jsonl, from_lists, to_csv, to_jsonl
from .labelled import available as labelled_sets
from .labelled import load as load_labelled

__all__ = ["Labelled", "from_csv", "from_hf", "from_jsonl", "from_lists", "labelled_sets", "load_labelled", "to_csv",
           "to_jsonl"]
