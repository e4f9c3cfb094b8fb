"""Dictionaries (sparse autoencoders and the like) attached at a hook point.

A dictionary reads the value at one hook point ``x`` ``[batch, pos, d_in]`` and writes three hook
points of its own beside it, so that every technique reads and edits them by name with the usual
interventions (cache, ``Patch``, ``Zero``, ``AddVector``, ``SetValue``, ...):

    <at>.<name>.latents   encode(x)                          [batch, pos, d_sae]
    <at>.<name>.recon     decode(latents), after latent edits [batch, pos, d_in]
    <at>.<name>.error     x - decode(encode(x))               [batch, pos, d_in]

``splice`` says what flows on from ``<at>``:

    "error"  recon + error: the model's own value, plus whatever the edits of latents / recon / error
             change. With no edits it is exactly ``x`` (computed as ``x + (recon' - recon) + (error' -
             error)``, so no rounding creeps in), and a dictionary nobody reads costs nothing.
    "recon"  the reconstruction alone (the model runs on the dictionary's output).

Gradients (``run(..., grad=True)``): the error term is a constant, as in a replacement model with
error nodes, so the gradient at ``recon`` equals the one at ``error``, the one at ``latents`` is that
through the decoder, and upstream of ``<at>`` gradients flow only through the latents (once a point of
the dictionary is read; an unread dictionary with ``splice="error"`` leaves the model untouched).

Anything with ``encode(x)``, ``decode(latents)`` and integer ``d_in`` / ``d_sae`` attributes is a
dictionary; ``avec.dictionaries`` provides trained ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .hookpoints import Site

PARTS = ("latents", "recon", "error")
SPLICES = ("error", "recon")


@dataclass(frozen=True, eq=False)
class AttachedDictionary:
    """One dictionary at one hook point. ``prefix`` is ``<at>.<name>``, the stem of its hook points."""

    module: Any
    at: str
    name: str
    splice: str

    @property
    def prefix(self) -> str:
        return f"{self.at}.{self.name}"

    def point(self, part: str) -> str:
        return f"{self.prefix}.{part}"

    def sites(self, parent: Site) -> list[Site]:
        d_in, d_sae = dims(self.module)
        width = {"latents": (d_sae,), "recon": (d_in,), "error": (d_in,)}
        return [Site(self.point(p), parent.module, kind=parent.kind, index=parent.index, pos_axis=parent.pos_axis,
                     width=width[p], layer=parent.layer, parent=parent.name, part=p) for p in PARTS]


def dims(module: Any) -> tuple[int, int]:
    """``(d_in, d_sae)`` of a dictionary, with an error that says what a dictionary must have."""
    missing = [a for a in ("encode", "decode") if not callable(getattr(module, a, None))]
    sizes = {a: getattr(module, a, None) for a in ("d_in", "d_sae")}
    bad = [a for a, v in sizes.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1]
    if missing or bad:
        raise TypeError(
            f"{type(module).__name__} is not a dictionary: it needs methods encode(x) -> latents and "
            f"decode(latents) -> x, and positive int attributes d_in and d_sae"
            + (f" (missing: {', '.join(missing)})" if missing else "")
            + (f" (bad: {', '.join(f'{a}={sizes[a]!r}' for a in bad)})" if bad else "")
        )
    return sizes["d_in"], sizes["d_sae"]


def check_attachable(module: Any, parent: Site, name: str, splice: str) -> None:
    """Refuse a dictionary that cannot sit at ``parent``, before anything is registered."""
    d_in, _ = dims(module)
    if splice not in SPLICES:
        raise ValueError(f"splice={splice!r}; use 'error' (reconstruction + error term: the model's own output "
                         "unless you edit) or 'recon' (the reconstruction alone)")
    if not name or not isinstance(name, str) or any(c in name for c in ".*?[] "):
        raise ValueError(f"a dictionary's name is one word without dots, spaces or glob characters, got {name!r}")
    if parent.parent is not None:
        raise ValueError(f"{parent.name!r} is itself a dictionary's hook point; attach at a model hook point")
    if parent.read_only or parent.pos_axis is None or parent.heads is not None or parent.width is None \
            or len(parent.width) != 1:
        raise ValueError(f"a dictionary reads a [batch, pos, d] value; {parent.name!r} ({parent.layout}) is not one "
                         "(use a residual, attn_out, mlp_out or mlp.post point)")
    if parent.width[0] != d_in:
        raise ValueError(f"the dictionary has d_in={d_in} but hook point {parent.name!r} has width {parent.width[0]}")
