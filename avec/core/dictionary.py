"""Dictionaries (sparse autoencoders, transcoders, cross-layer transcoders) attached to hook points.

A dictionary reads the value ``x`` at one hook point and writes a reconstruction of the value ``y`` at a
hook point (the same one for an SAE, a later one for a transcoder). Its latents live at the point it
reads, its reconstruction and error at the point it writes, so that every technique reads and edits
them by name with the usual interventions (cache, ``Patch``, ``Zero``, ``AddVector``, ``SetValue``, ...):

    <read>.<name>.latents    encode(x)                                          [batch, pos, d_sae]
    <write>.<name>.recon     decode(latents), after latent edits                 [batch, pos, d_out]
    <write>.<name>.error     y - decode(encode(x)), y the model's value there    [batch, pos, d_out]

Three shapes, told apart by their methods:

    SAE          ``encode(x)``, ``decode(z)``, int ``d_in`` / ``d_sae``; reads and writes ``at`` (x = y):
                 ``<at>.sae.latents / recon / error``
    transcoder   the same, plus ``d_out`` (default d_in) and optionally ``skip(x)`` (a skip connection
                 added to the reconstruction, or None); reads ``at`` and writes ``writes``, which comes
                 later in the forward pass: ``lm.add_dictionary(tc, at="blocks.3.resid_mid",
                 writes="blocks.3.mlp_out")`` gives ``blocks.3.resid_mid.tc.latents`` and
                 ``blocks.3.mlp_out.tc.recon / error``
    cross-layer  ``n_layers`` encoders and targets: ``encode_layer(x, l)``, ``decode_layer(zs, l)`` and no
                 ``encode``; ``zs`` are the latents of ``sources(l)``, by default layers 0..l (a CLT's target
                 l is reconstructed from every layer's features up to l); optionally ``skip_layer(x_l, l)``
                 and ``d_out``; attached with one read and one write point per layer (``at=
                 "blocks.*.resid_mid", writes="blocks.*.mlp_out"``): ``blocks.{l}.resid_mid.clt.latents``
                 and ``blocks.{l}.mlp_out.clt.recon / error``

Latents are computed when their read point fires (after that point's own edits); a write point's
reconstruction uses the latents of its sources as edited, so an edit of layer l's latents reaches the
reconstruction of every target they decode to.

``splice`` says what flows on from each write point:

    "error"  recon + error: the model's own value, plus whatever the edits of latents / recon / error
             change. With no edits it is exactly ``y`` (computed as ``y + (recon' - recon) + (error' -
             error)``, so no rounding creeps in), and a dictionary nobody reads costs nothing.
    "recon"  the reconstruction alone (the model runs on the dictionary's output).

The write point itself (``blocks.3.mlp_out``) still caches the model's own value ``y`` (what the MLP
computed); what flows on from it is ``recon + error`` as edited (``recon`` alone for "recon").

A dictionary runs only as far as needed: caching latents (without gradients) runs the encoders of those
points only; an edit of latents, a read or edit of a recon / error point, ``splice="recon"`` or a
gradient run also run the write points concerned.

Gradients (``run(..., grad=True)``): the error term is a constant, as in a replacement model with
error nodes, so the gradient at ``recon`` equals the one at ``error``, the one at ``latents`` is that
through the decoder(s), and the computation that produced ``y`` (a transcoder's MLP) carries no gradient:
once a point of the dictionary is read, what flows on from a write point depends on the model only
through the latents (and the skip connection); other paths (the residual stream around the MLP) are
untouched. ``StopGradient`` at every latents point then makes each latents gradient the features'
direct effect, as attribution graphs need. An unread dictionary with ``splice="error"`` leaves the
model untouched.

``avec.dictionaries`` provides trained ones (``SAE``, ``Transcoder``, ``CrossLayerTranscoder``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .hookpoints import Site

PARTS = ("latents", "recon", "error")
SPLICES = ("error", "recon")


def is_cross_layer(module: Any) -> bool:
    """A cross-layer dictionary has ``encode_layer`` and no ``encode`` (a one-layer transcoder may
    have both: it is then used through ``encode`` / ``decode``)."""
    return callable(getattr(module, "encode_layer", None)) and not callable(getattr(module, "encode", None))


@dataclass(frozen=True, eq=False)
class AttachedDictionary:
    """One dictionary attached to a model: ``reads[i]`` is encoder i's input point, ``writes[j]`` target
    j's point (one each for an SAE or transcoder). ``prefix`` is ``<first read point>.<name>``."""

    module: Any
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    name: str
    splice: str

    @property
    def at(self) -> str:
        return self.reads[0]

    @property
    def prefix(self) -> str:
        return f"{self.at}.{self.name}"

    @property
    def cross_layer(self) -> bool:
        return is_cross_layer(self.module)

    def point(self, part: str, layer: int = 0) -> str:
        """The hook point of ``part`` ("latents", "recon", "error") of encoder / target ``layer``."""
        if part not in PARTS:
            raise ValueError(f"part={part!r}; a dictionary's parts are {', '.join(PARTS)}")
        where = self.reads if part == "latents" else self.writes
        if not 0 <= layer < len(where):
            raise ValueError(f"layer {layer} is out of range: this dictionary has {len(where)} "
                             f"{'encoder' if part == 'latents' else 'target'}(s) (0..{len(where) - 1})")
        return f"{where[layer]}.{self.name}.{part}"

    def points(self) -> list[str]:
        return ([self.point("latents", i) for i in range(len(self.reads))]
                + [self.point(p, j) for j in range(len(self.writes)) for p in ("recon", "error")])

    def sources(self, target: int) -> list[int]:
        """The encoders whose latents reconstruct target ``target``."""
        if not self.cross_layer:
            return [0]
        own = getattr(self.module, "sources", None)
        return list(own(target)) if callable(own) else list(range(target + 1))

    # -- computing -------------------------------------------------------------------------------
    def encode(self, i: int, x):
        return self.module.encode_layer(x, i) if self.cross_layer else self.module.encode(x)

    def decode(self, j: int, zs: Sequence, x_skip):
        """Target j's reconstruction from its sources' latents ``zs`` (plus the skip connection of the
        input ``x_skip``: the transcoder's input, or encoder j's input for a cross-layer one)."""
        out = self.module.decode_layer(list(zs), j) if self.cross_layer else self.module.decode(zs[0])
        extra = self.skip_part(j, x_skip)
        return out if extra is None else out + extra

    def skip_part(self, j: int, x_skip):
        """The skip connection's part of target j (None without one, or without an input)."""
        if x_skip is None:
            return None
        if self.cross_layer:
            skip = getattr(self.module, "skip_layer", None)
            return skip(x_skip, j) if callable(skip) else None
        skip = getattr(self.module, "skip", None)
        return skip(x_skip) if callable(skip) else None

    def sites(self, table: dict[str, Site]) -> list[tuple[str, list[Site]]]:
        """(anchor point, the sites inserted right after it) for every point of this dictionary."""
        d_in, d_sae = dims(self.module)
        d_out = out_width(self.module)
        groups: dict[str, list[Site]] = {}

        def site(name: str, parent: str, part: str, width: int) -> Site:
            p = table[parent]
            return Site(name, p.module, kind=p.kind, index=p.index, pos_axis=p.pos_axis, width=(width,),
                        layer=p.layer, parent=parent, part=part)

        for i, r in enumerate(self.reads):
            groups.setdefault(r, []).append(site(self.point("latents", i), r, "latents", d_sae))
        for j, w in enumerate(self.writes):
            groups.setdefault(w, []).extend(site(self.point(p, j), w, p, d_out) for p in ("recon", "error"))
        return list(groups.items())


def dims(module: Any) -> tuple[int, int]:
    """``(d_in, d_sae)`` of a dictionary, with an error that says what a dictionary must have."""
    cross = is_cross_layer(module)
    methods = ("encode_layer", "decode_layer") if cross else ("encode", "decode")
    missing = [a for a in methods if not callable(getattr(module, a, None))]
    names = ("d_in", "d_sae", "n_layers") if cross else ("d_in", "d_sae")
    sizes = {a: getattr(module, a, None) for a in names}
    bad = [a for a, v in sizes.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1]
    out = getattr(module, "d_out", None)
    if out is not None and (isinstance(out, bool) or not isinstance(out, int) or out < 1):
        bad.append("d_out")
        sizes["d_out"] = out
    if missing or bad:
        raise TypeError(
            f"{type(module).__name__} is not a dictionary: it needs methods encode(x) -> latents and "
            f"decode(latents) -> x, and positive int attributes d_in and d_sae (a transcoder also d_out; a "
            f"cross-layer one encode_layer(x, l), decode_layer(zs, l) and n_layers instead)"
            + (f" (missing: {', '.join(missing)})" if missing else "")
            + (f" (bad: {', '.join(f'{a}={sizes[a]!r}' for a in bad)})" if bad else "")
        )
    return sizes["d_in"], sizes["d_sae"]


def out_width(module: Any) -> int:
    """What a dictionary writes: ``d_out`` if it has one, else ``d_in``."""
    out = getattr(module, "d_out", None)
    return out if out is not None else dims(module)[0]


def _check_point(site: Site, role: str) -> None:
    if site.parent is not None:
        raise ValueError(f"{site.name!r} is itself a dictionary's hook point; attach at a model hook point")
    if site.read_only or site.pos_axis is None or site.heads is not None or site.width is None \
            or len(site.width) != 1:
        raise ValueError(f"a dictionary {role} a [batch, pos, d] value; {site.name!r} ({site.layout}) is not one "
                         "(use a residual, mlp_in, attn_out, mlp_out or mlp.post point)")


def check_attachable(module: Any, reads: Sequence[Site], writes: Sequence[Site], name: str, splice: str,
                     order: dict[str, int]) -> None:
    """Refuse a dictionary that cannot sit at these points, before anything is registered. ``order``
    maps hook point names to their place in the forward pass."""
    d_in, _ = dims(module)
    d_out = out_width(module)
    if splice not in SPLICES:
        raise ValueError(f"splice={splice!r}; use 'error' (reconstruction + error term: the model's own output "
                         "unless you edit) or 'recon' (the reconstruction alone)")
    if not name or not isinstance(name, str) or any(c in name for c in ".*?[] "):
        raise ValueError(f"a dictionary's name is one word without dots, spaces or glob characters, got {name!r}")
    if is_cross_layer(module):
        n = module.n_layers
        if len(reads) != n or len(writes) != n:
            raise ValueError(f"this cross-layer dictionary has {n} layers: give {n} read points and {n} write points "
                             f"(e.g. at='blocks.*.resid_mid', writes='blocks.*.mlp_out'); got {len(reads)} and "
                             f"{len(writes)}")
    elif len(reads) != 1 or len(writes) != 1:
        raise ValueError(f"{type(module).__name__} reads one hook point and writes one; got {len(reads)} read and "
                         f"{len(writes)} write points")
    for s in reads:
        _check_point(s, "reads")
        if s.width[0] != d_in:
            raise ValueError(f"the dictionary has d_in={d_in} but hook point {s.name!r} has width {s.width[0]}")
    for s in writes:
        _check_point(s, "writes")
        if s.width[0] != d_out:
            raise ValueError(f"the dictionary writes d_out={d_out} but hook point {s.name!r} has width {s.width[0]}")
    probe = AttachedDictionary(module, tuple(s.name for s in reads), tuple(s.name for s in writes), name, splice)
    for j, w in enumerate(writes):
        for i in probe.sources(j):
            if not 0 <= i < len(reads):
                raise ValueError(f"target {j} reads encoder {i}, which does not exist (0..{len(reads) - 1})")
            if order[reads[i].name] > order[w.name]:
                raise ValueError(f"{reads[i].name!r} comes after {w.name!r} in the forward pass: a dictionary's "
                                 "input must be computed before the point it writes")
