"""Interventions: small immutable edits applied to one hook point during a forward pass.

Every intervention names its hook point, the positions it touches (see ``positions.py``) and, on
``attn.z``, the heads. ``edit(value, where, ctx, site)`` returns the new value; ``where`` is a bool
mask broadcastable to ``value`` (None = everywhere) that the engine built from the positions and
heads. Interventions never modify ``value`` in place: the engine may have cached it.

Value layout at a hook point: ``[batch, pos, *width]`` for transformer points (``width`` =
``(d_model,)`` for residual points, ``(n_heads, d_head)`` for ``attn.z``, ``(d_mlp,)`` for
``mlp.post``), and ``[batch, *shape]`` for plain modules (e.g. ``[batch, C, H, W]``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .hookpoints import Site
from .positions import ALL, Positions, TokenContext, as_index, as_positions, rows_of


def _site_width(site: Site, value: torch.Tensor) -> tuple[int, ...]:
    start = 1 if site.pos_axis is None else site.pos_axis + 1
    return tuple(value.shape[start:])


def _fmt(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _as_coeff(coeff: Any, what: str = "coefficient") -> float | torch.Tensor:
    if isinstance(coeff, torch.Tensor):
        if coeff.dim() > 1:
            raise ValueError(f"a {what} is a scalar or one value per batch row [batch], got {_fmt(coeff.shape)}")
        if not coeff.is_floating_point() and coeff.dtype not in (torch.int32, torch.int64, torch.int16, torch.int8, torch.uint8):
            raise TypeError(f"a {what} tensor must hold numbers, got dtype {coeff.dtype}")
        bad = (~torch.isfinite(coeff.float())).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"the {what} tensor holds NaN or inf at row(s) {bad[:8]}; every value must be finite")
        return coeff.float() if coeff.dim() == 1 else float(coeff)
    if isinstance(coeff, (list, tuple)):
        return _as_coeff(torch.tensor(coeff, dtype=torch.float32), what)
    if isinstance(coeff, bool) or not isinstance(coeff, (int, float)) and not hasattr(coeff, "__float__"):
        raise TypeError(f"a {what} is a number, got {coeff!r}")
    value = float(coeff)
    if not math.isfinite(value):
        raise ValueError(f"the {what} is {value}: NaN and inf are not allowed, give a finite number")
    return value


def _check_finite(tensor: torch.Tensor, what: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        return
    if tensor.dtype == torch.bool or not (tensor.is_floating_point() or tensor.is_complex()):
        if tensor.dtype == torch.bool:
            raise TypeError(f"{what} is a bool tensor; give floating-point values")
        return
    if not torch.isfinite(tensor).all():
        n = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{what} holds {n} NaN or inf value(s) of {tensor.numel()}; every value must be finite")


def _as_heads(heads: Any) -> tuple[int, ...] | None:
    if heads is None:
        return None
    if isinstance(heads, torch.Tensor):
        heads = heads.tolist()
    items = [heads] if not isinstance(heads, (list, tuple, range, set, frozenset)) else list(heads)
    out = [as_index(h, f"heads are integer indices (heads={heads!r})") for h in items]
    if not out:
        raise ValueError("an empty list of heads selects nothing")
    return tuple(out)


@dataclass(frozen=True)
class Intervention:
    """Base class. Subclasses implement ``edit``; ``check`` validates against a site before running."""

    hook: str
    positions: Positions = field(default=ALL, kw_only=True)
    heads: tuple[int, ...] | None = field(default=None, kw_only=True)

    def __post_init__(self):
        object.__setattr__(self, "positions", as_positions(self.positions))
        object.__setattr__(self, "heads", _as_heads(self.heads))

    def check(self, site: Site, model: Any) -> None:
        """Raise a clear error if this intervention cannot apply at ``site`` of ``model``."""

    def edit(self, value: torch.Tensor, where: torch.Tensor | None, ctx: TokenContext, site: Site) -> torch.Tensor:
        raise NotImplementedError

    def selected(self, ctx: TokenContext, site: Site) -> torch.Tensor | None:
        """bool ``[batch, seq]``: the columns of a pass this intervention edits (None = every column).

        The one rule, used by the hooks and by code that reads a run's tensors afterwards.
        """
        return self.positions.mask(ctx)

    def with_hook(self, hook: str) -> "Intervention":
        from dataclasses import replace

        return replace(self, hook=hook)


def _blend(old: torch.Tensor, new: torch.Tensor, where: torch.Tensor | None) -> torch.Tensor:
    return new if where is None else torch.where(where, new, old)


def _check_width(tensor: torch.Tensor, site: Site, what: str) -> None:
    """A tensor placed at a site must have the site's width, optionally per position / per head."""
    if site.width is None:
        return  # plain modules: the width is checked against the live value in _place
    width, shape = tuple(site.width), tuple(tensor.shape)
    bases = [width] + ([width[1:]] if site.heads is not None else [])
    per_position = site.pos_axis is not None and len(shape) >= 1 and shape[1:] in bases
    if shape not in bases and not per_position:
        allowed = " or ".join(_fmt(b) for b in bases)
        if site.pos_axis is not None:
            allowed += " (or any of these with a leading axis of k positions)"
        raise ValueError(
            f"{what} has shape {_fmt(shape)} but hook point {site.name!r} has width {_fmt(width)}; allowed: {allowed}"
        )


def _per_position(tensor: torch.Tensor, site: Site, width: tuple[int, ...] | None = None) -> bool:
    """Whether ``tensor`` is one row per prompt position ``[k, *width]`` rather than ``[*width]``."""
    width = tuple(site.width) if width is None and site.width is not None else width
    if site.pos_axis is None or width is None:
        return False
    bases = [width] + ([width[1:]] if site.heads is not None else [])
    shape = tuple(tensor.shape)
    return shape not in bases and len(shape) >= 2 and shape[1:] in bases


def _covered(tensor: torch.Tensor, start: int, ctx: TokenContext, site: Site, base: torch.Tensor | None):
    """``base`` restricted to the columns a per-position tensor covers (unchanged otherwise)."""
    if not _per_position(tensor, site):
        return base
    covered = rows_of(ctx, start, tensor.shape[0])[1]
    return covered if base is None else base & covered.to(base.device)


def _place(tensor: torch.Tensor, value: torch.Tensor, site: Site, ctx: TokenContext, start: int, what: str):
    """Broadcast a site-shaped tensor, or one per prompt position ``[k, *width]`` (row i at
    position ``start + i``), against ``value``. Which columns it covers is decided by
    ``positions.rows_of`` (through ``selected``), not here."""
    tensor = tensor.to(device=value.device, dtype=value.dtype)
    width = _site_width(site, value)
    heads_view = site.heads is not None
    if tuple(tensor.shape) == width or (heads_view and tuple(tensor.shape) == width[1:]):
        return tensor
    if _per_position(tensor, site, width):
        row, _ = rows_of(ctx, start, tensor.shape[0])
        placed = tensor[row.to(tensor.device)]  # [batch, seq, *width] (or [batch, seq, d_head])
        return placed.unsqueeze(-2) if placed.dim() < value.dim() else placed  # one d_head row for every head
    raise ValueError(
        f"{what} has shape {_fmt(tensor.shape)} but hook point {site.name!r} carries values of width "
        f"{_fmt(width)}; give {_fmt(width)}"
        + (f" or [k, {', '.join(map(str, width))}] for k positions" if site.pos_axis is not None else "")
    )


@dataclass(frozen=True)
class AddVector(Intervention):
    """value += coeff * vector.

    vector: ``[*width]`` (added at every selected position), or ``[k, *width]`` (row i added at
            prompt position ``start + i``; the ActAdd layout). On ``attn.z`` a ``[d_head]`` vector
            is added to each selected head.
    coeff:  a number, or ``[batch]`` - one coefficient per batch row (a coefficient scan in one pass).
    """

    vector: torch.Tensor = None
    coeff: float | torch.Tensor = 1.0
    start: int = 0

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.vector, torch.Tensor):
            raise TypeError(f"AddVector needs a tensor vector, got {type(self.vector).__name__}")
        _check_finite(self.vector, f"the vector added at {self.hook!r}")
        object.__setattr__(self, "coeff", _as_coeff(self.coeff))

    def check(self, site: Site, model: Any) -> None:
        _check_width(self.vector, site, "the vector")

    def selected(self, ctx, site):
        return _covered(self.vector, self.start, ctx, site, self.positions.mask(ctx))

    def edit(self, value, where, ctx, site):
        delta = _place(self.vector, value, site, ctx, self.start, "the vector")
        coeff = self.coeff
        if isinstance(coeff, torch.Tensor):
            if coeff.shape[0] != value.shape[0]:
                raise ValueError(
                    f"{coeff.shape[0]} coefficients (one per batch row) but the batch at {site.name!r} "
                    f"has {value.shape[0]} rows"
                )
            coeff = coeff.to(device=value.device, dtype=value.dtype).reshape((-1,) + (1,) * (value.dim() - 1))
        delta = coeff * delta
        if where is None:
            return value + delta
        return value + torch.where(where, delta, torch.zeros((), dtype=value.dtype, device=value.device))


@dataclass(frozen=True)
class SetValue(Intervention):
    """value = constant (``[*width]`` or per position ``[k, *width]``): mean ablation, or any fixed value."""

    value: torch.Tensor = None
    start: int = 0

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.value, torch.Tensor):
            raise TypeError(f"SetValue needs a tensor, got {type(self.value).__name__}")
        _check_finite(self.value, f"the value set at {self.hook!r}")

    def check(self, site, model):
        _check_width(self.value, site, "the value")

    def selected(self, ctx, site):
        return _covered(self.value, self.start, ctx, site, self.positions.mask(ctx))

    def edit(self, value, where, ctx, site):
        return _blend(value, _place(self.value, value, site, ctx, self.start, "the value").expand_as(value), where)


def MeanAblate(hook: str, mean: torch.Tensor, **kw) -> SetValue:
    """Replace the activation by a mean (``[*width]``, or ``[k, *width]`` per position)."""
    return SetValue(hook, value=mean, **kw)


@dataclass(frozen=True)
class Zero(Intervention):
    """value = 0 at the selected positions/heads (zero ablation)."""

    def edit(self, value, where, ctx, site):
        return _blend(value, torch.zeros_like(value), where) if where is not None else torch.zeros_like(value)


@dataclass(frozen=True)
class Scale(Intervention):
    """value *= factor."""

    factor: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "factor", _as_coeff(self.factor, "scale factor"))

    def edit(self, value, where, ctx, site):
        factor = self.factor
        if isinstance(factor, torch.Tensor):  # one factor per batch row
            if factor.shape[0] != value.shape[0]:
                raise ValueError(f"{factor.shape[0]} scale factors (one per batch row) but the batch at {site.name!r} "
                                 f"has {value.shape[0]} rows")
            factor = factor.to(device=value.device, dtype=value.dtype).reshape((-1,) + (1,) * (value.dim() - 1))
        return _blend(value, value * factor, where)


@dataclass(frozen=True)
class ProjectOut(Intervention):
    """Directional ablation: remove the component along a direction, ``v - (v . d) d`` with ``|d| = 1``.

    direction: ``[width[-1]]`` (the last axis: d_model, d_head for ``attn.z``, d_mlp for neurons).
    """

    direction: torch.Tensor = None

    def __post_init__(self):
        super().__post_init__()
        d = self.direction
        if not isinstance(d, torch.Tensor) or d.dim() != 1:
            raise ValueError(f"a direction is a 1-D tensor, got {getattr(d, 'shape', type(d).__name__)}")
        norm = d.float().norm()
        if not torch.isfinite(norm) or norm < 1e-12:
            raise ValueError(f"the direction for {self.hook!r} has zero (or non-finite) norm; it cannot be normalised")
        object.__setattr__(self, "direction", d / norm)

    def check(self, site, model):
        if site.width is not None and self.direction.shape[0] != site.width[-1]:
            raise ValueError(
                f"the direction has width {self.direction.shape[0]} but hook point {site.name!r} has "
                f"width {site.width[-1]} on its last axis"
            )

    def edit(self, value, where, ctx, site):
        d = self.direction.to(device=value.device, dtype=value.dtype)
        if d.shape[0] != value.shape[-1]:
            raise ValueError(f"the direction has width {d.shape[0]} but {site.name!r} has width {value.shape[-1]}")
        projected = value - (value @ d)[..., None] * d
        return _blend(value, projected, where)


def _source_tensor(source: Any, site: Site, model: Any) -> torch.Tensor:
    """The tensor a Patch copies from: a tensor, a Run (its cache) or a Cache."""
    if isinstance(source, torch.Tensor):
        return source
    cache = getattr(source, "cache", source)
    model_id = getattr(cache, "model_id", None)
    if model is not None and model_id is not None and model_id != model.model_id:
        raise ValueError(
            f"the cache comes from model {model_id!r} but this model is {model.model_id!r}; "
            "activations cannot be patched across models"
        )
    try:
        tensor = cache[site.name]
    except KeyError:
        have = ", ".join(list(cache.keys())[:10]) if hasattr(cache, "keys") else "nothing"
        raise KeyError(f"the source cache has no {site.name!r} (it holds {have}); cache it in the source run") from None
    if getattr(cache, "positions", "all") != "all":
        raise ValueError(
            f"the source cache holds only positions {cache.positions}; patching needs every position cached"
        )
    return tensor


@dataclass(frozen=True)
class Patch(Intervention):
    """value = source's value at the same hook point (activation patching).

    source: a ``Run`` or ``Cache`` from the same model with this hook point cached at all positions,
            or a tensor shaped like the value (batch 1 broadcasts over the batch).
    """

    source: Any = None

    def check(self, site, model):
        if self.source is None:
            raise ValueError("Patch needs a source run, cache or tensor")
        _check_finite(_source_tensor(self.source, site, model), f"the patch source at {site.name!r}")

    def edit(self, value, where, ctx, site):
        src = _source_tensor(self.source, site, None).to(device=value.device, dtype=value.dtype)
        if site.pos_axis is not None and src.dim() == value.dim():
            axis = site.pos_axis
            stop = ctx.offset + ctx.seq_len
            if src.shape[axis] < stop:
                raise ValueError(
                    f"the patch source at {site.name!r} covers {src.shape[axis]} positions but this "
                    f"input has {stop}; clean and corrupted inputs must have the same token length"
                )
            if src.shape[axis] != value.shape[axis]:
                src = src.narrow(axis, ctx.offset, ctx.seq_len)
        if src.dim() != value.dim() or src.shape[1:] != value.shape[1:] or src.shape[0] not in (1, value.shape[0]):
            raise ValueError(
                f"the patch source has shape {_fmt(src.shape)} but the value at {site.name!r} has "
                f"shape {_fmt(value.shape)}; the batch may differ only if the source has batch 1"
            )
        return _blend(value, src.expand_as(value), where)


@dataclass(frozen=True)
class Apply(Intervention):
    """value = fn(value, ctx): any user function. It must return a tensor of the same shape."""

    fn: Callable[[torch.Tensor, TokenContext], torch.Tensor] = None

    def edit(self, value, where, ctx, site):
        new = self.fn(value, ctx)
        if not isinstance(new, torch.Tensor) or new.shape != value.shape:
            raise ValueError(
                f"the function applied at {site.name!r} must return a tensor of shape {_fmt(value.shape)}, "
                f"got {getattr(new, 'shape', type(new).__name__)}"
            )
        return _blend(value, new, where)


@dataclass(frozen=True)
class StopGradient(Intervention):
    """The value is unchanged, but no gradient flows back through it at the selected positions / heads:
    what is upstream is held fixed for attribution (e.g. freeze a layer's input)."""

    def edit(self, value, where, ctx, site):
        return value.detach() if where is None else torch.where(where, value.detach(), value)
