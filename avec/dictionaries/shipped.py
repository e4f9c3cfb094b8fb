"""SAEs shipped with avec, as package data in ``avec/dictionaries/shipped/``: ``<name>.safetensors`` (fp16)
and ``<name>.json`` beside it (the exact training command, the data, the training time and the held-out
metrics).

    from avec.dictionaries.shipped import available, info, load_shipped
    sae = load_shipped("smollm2-blocks.12.resid_post-topk-4608")     # float32 by default
    with lm.dictionary(sae, sae.cfg.hook, splice="recon"):
        ...
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .sae import DTYPES, SAE

SHIPPED_DIR = Path(__file__).with_name("shipped")


def available() -> list[str]:
    """Names of the shipped SAEs."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.safetensors")) if SHIPPED_DIR.is_dir() else []


def _path(name: str, suffix: str) -> Path:
    stem = name.removesuffix(".safetensors").removesuffix(".json")
    path = SHIPPED_DIR / f"{stem}{suffix}"
    if not path.is_file():
        raise ValueError(f"no shipped SAE {name!r}; shipped: {', '.join(available()) or 'none'}")
    return path


def info(name: str) -> dict[str, Any]:
    """The JSON record of a shipped SAE: command, data, training time, metrics."""
    return json.loads(_path(name, ".json").read_text(encoding="utf-8"))


def cast(sae: SAE, dtype: str = "float32") -> SAE:
    """A copy of ``sae`` with its weights (and config dtype) in ``dtype``."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}; allowed: {', '.join(DTYPES)}")
    if sae.cfg.dtype == dtype:
        return sae
    out = SAE(replace(sae.cfg, dtype=dtype))
    with torch.no_grad():
        for k, v in sae.state_dict().items():
            target = out.state_dict()[k]
            target.copy_(v.to(target.dtype))
    return out.eval()


def load_shipped(name: str, dtype: str = "float32") -> SAE:
    """Load a shipped SAE (``available()`` lists them), its fp16 weights cast to ``dtype``."""
    return cast(SAE.load(_path(name, ".safetensors")), dtype).eval()
