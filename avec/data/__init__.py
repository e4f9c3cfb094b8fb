"""Bundled corpora and labelled datasets (see each subfolder README)."""

from .labelled import Labelled, from_csv, from_hf, from_jsonl, from_lists, to_csv, to_jsonl
from .labelled import available as labelled_sets
from .labelled import load as load_labelled


def reference_texts(split: str = "all") -> list[str]:
    """The bundled English reference corpus (``text/reference.txt``): 34 short paragraphs we wrote
    (encyclopedic, narrative, instructions, notices), for tuned-lens training and perplexity checks.

    split: "all", "train" (the first 25 paragraphs) or "test" (the last 9, held out)
    """
    from pathlib import Path

    paragraphs = [p.strip() for p in (Path(__file__).parent / "text" / "reference.txt").read_text().split("\n\n") if p.strip()]
    if split == "all":
        return paragraphs
    if split == "train":
        return paragraphs[:25]
    if split == "test":
        return paragraphs[25:]
    raise ValueError(f"split must be 'all', 'train' or 'test', got {split!r}")

__all__ = ["Labelled", "from_csv", "from_hf", "from_jsonl", "from_lists", "labelled_sets", "load_labelled", "reference_texts", "to_csv",
           "to_jsonl"]
