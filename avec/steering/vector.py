"""SteeringVector: additions to a model's hook points, with their model, positions and recipe.

A steering vector is a set of *terms*; each term adds a tensor at one hook point at selected token
positions. A term's tensor is ``[d_model]`` (added at every selected position) or ``[k, d_model]``
(row i added at prompt position ``start + i``: the ActAdd layout; never at generated tokens).

Algebra: ``a + b``, ``a - b``, ``-a``, ``c * a``, ``a / c``. Terms at the same hook point with the same
positions are merged into one tensor (per-position tensors of different lengths are zero-padded), so
each hook point receives each addition exactly once; terms at different hook points (or with different
positions) stay separate additions. Vectors from different models cannot be combined.

Positions (prompt-relative, identical with and without the KV cache; see ``avec.core.positions``):
``"prompt"``, ``Front(k)``, ``From(p)`` (every position >= p, generated tokens included: the CAA rule;
``From(-1)`` includes the last prompt token, whose logits predict the first generated token),
``"all"``. A vector carries its default; ``as_interventions(positions=...)`` overrides it.

Files: ``save``/``load`` write one safetensors file with the JSON metadata inside (atomically);
``to_gguf``/``from_gguf`` speak llama.cpp / repeng control-vector GGUF (``gguf_io.py``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from ..core.interventions import AddVector
from ..io import atomic_write
from ..core.positions import (
    ALL, GENERATED, PROMPT, At, From, Front, Positions, PositionsLike, Span, as_positions,
)

FORMAT_VERSION = 1


class ModelMismatch(ValueError):
    """A vector used on, or combined with, a model other than the one it was made on."""


@dataclass(frozen=True)
class SteerAdd(AddVector):
    """``AddVector`` that also checks the model the vector was made on (before any forward pass)."""

    model_id: str = ""

    def check(self, site, model) -> None:
        mid = getattr(model, "model_id", None)
        if self.model_id and mid is not None and mid != self.model_id:
            raise ModelMismatch(
                f"this steering vector was made on model {self.model_id!r} but is applied to {mid!r}; "
                "vectors do not transfer between models (re-make it on this model)"
            )
        super().check(site, model)


@dataclass(frozen=True)
class Term:
    """One addition: ``tensor`` (``[d_model]`` or ``[k, d_model]``) at ``hook`` on ``positions``."""

    hook: str
    tensor: torch.Tensor
    positions: Positions = PROMPT
    start: int = 0

    @property
    def per_position(self) -> bool:
        return self.tensor.dim() == 2

    def key(self) -> tuple:
        try:
            pos = json.dumps(_positions_json(self.positions), sort_keys=True)
        except ValueError:  # masks: only the very same object merges
            pos = str(id(self.positions))
        return (self.hook, pos, self.start, self.per_position)


def _check_scalar(c: Any) -> float:
    if isinstance(c, torch.Tensor):
        if c.numel() != 1:
            raise TypeError(f"a steering vector is scaled by a number, got a tensor of shape {list(c.shape)}; "
                            "for one coefficient per batch row use as_interventions(coeff=tensor)")
        c = c.item()
    if not isinstance(c, (int, float)) or isinstance(c, bool):
        raise TypeError(f"a steering vector is scaled by a number, got {type(c).__name__}")
    if not math.isfinite(c):
        raise ValueError(f"cannot scale a steering vector by {c}: the coefficient must be finite (not NaN/inf)")
    return float(c)


@dataclass(frozen=True, eq=False)
class SteeringVector:
    """Additions at one or several hook points of one model.

    terms:    the additions (see ``Term``)
    model_id: the model it was made on (``lm.model_id``); applying it elsewhere raises ``ModelMismatch``
    recipe:   JSON-able description of how it was made (method, prompts, layer, padding, ...)
    """

    terms: tuple[Term, ...]
    model_id: str
    recipe: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not self.terms:
            raise ValueError("a steering vector needs at least one term (hook point + tensor)")
        for t in self.terms:
            if not isinstance(t.tensor, torch.Tensor):
                raise TypeError(f"the term at {t.hook!r} holds a {type(t.tensor).__name__}, not a torch.Tensor")
            if t.tensor.dim() not in (1, 2) or t.tensor.shape[-1] == 0:
                raise ValueError(f"a term at {t.hook!r} must be [d_model] or [k, d_model], got {list(t.tensor.shape)}")
            if not t.tensor.is_floating_point():
                raise TypeError(f"the term at {t.hook!r} has dtype {str(t.tensor.dtype).removeprefix('torch.')}; "
                                "steering vectors hold floating-point tensors (float32, float16, bfloat16, float64)")
        widths = {t.tensor.shape[-1] for t in self.terms}
        if len(widths) != 1:
            raise ValueError(f"all terms of a steering vector must have one width, got {sorted(widths)}")
        for t in self.terms:
            if not torch.isfinite(t.tensor).all():
                raise ValueError(f"the vector at {t.hook!r} contains NaN or inf")

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def make(cls, lm: Any, hook: str | int, tensor: torch.Tensor, positions: PositionsLike = "prompt",
             start: int = 0, recipe: Mapping[str, Any] | None = None) -> "SteeringVector":
        """One term at ``hook`` (a name, alias, or a layer number meaning ``blocks.{l}.resid_pre``),
        checked against ``lm``: the hook must exist and have the tensor's width."""
        name = resolve_hook(lm, hook)
        site = lm.site(name)
        tensor = tensor.detach().float().cpu()
        if site.width is not None and tuple(tensor.shape[-1:]) != tuple(site.width[-1:]):
            raise ValueError(f"the tensor has width {tensor.shape[-1]} but {name!r} has width {site.width[-1]} "
                             f"on model {lm.model_id!r}")
        if site.read_only:
            raise ValueError(f"hook point {name!r} can be read but not edited; steer at resid_pre/resid_post/attn_out/mlp_out")
        return cls((Term(name, tensor, as_positions(positions), start),), lm.model_id, dict(recipe or {}))

    # -- views ------------------------------------------------------------------------------------
    @property
    def hooks(self) -> list[str]:
        return list(dict.fromkeys(t.hook for t in self.terms))

    @property
    def width(self) -> int:
        return int(self.terms[0].tensor.shape[-1])

    def __getitem__(self, hook: str) -> torch.Tensor:
        """The tensor at one hook point (the sum if several terms share it with equal shapes)."""
        found = [t.tensor for t in self.terms if t.hook == hook]
        if not found:
            raise KeyError(f"this vector has no term at {hook!r}; it has {self.hooks}")
        return found[0] if len(found) == 1 else torch.stack(found).sum(0)

    def norms(self) -> dict[str, float]:
        """L2 norm of each term's tensor (all positions together)."""
        return {f"{t.hook} @ {t.positions.describe()}": float(t.tensor.norm()) for t in self.terms}

    def __repr__(self) -> str:
        parts = ", ".join(f"{t.hook}{list(t.tensor.shape)} @ {t.positions.describe()}" for t in self.terms)
        method = self.recipe.get("method", "vector")
        return f"SteeringVector({method}: {parts}; model {self.model_id!r})"

    def describe(self) -> str:
        """One line per term with norms, plus the recipe (what padding did, for ActAdd)."""
        lines = [repr(self)] + [f"  |{k}| = {v:.3f}" for k, v in self.norms().items()]
        lines += [f"  {k}: {v}" for k, v in self.recipe.items()]
        return "\n".join(lines)

    # -- algebra ----------------------------------------------------------------------------------
    def _same_model(self, other: "SteeringVector") -> None:
        if not isinstance(other, SteeringVector):
            raise TypeError(f"can only add or subtract steering vectors, got {type(other).__name__}")
        if other.model_id != self.model_id:
            raise ModelMismatch(f"cannot combine a vector of model {self.model_id!r} with one of {other.model_id!r}")
        if other.width != self.width:
            raise ValueError(f"cannot combine vectors of width {self.width} and {other.width}")

    def scale(self, c: float) -> "SteeringVector":
        c = _check_scalar(c)
        terms = tuple(replace(t, tensor=t.tensor * c) for t in self.terms)
        return SteeringVector(terms, self.model_id, {**self.recipe, "scale": float(self.recipe.get("scale", 1.0)) * c})

    def __mul__(self, c: float) -> "SteeringVector":
        return self.scale(c)

    __rmul__ = __mul__

    def __truediv__(self, c: float) -> "SteeringVector":
        c = _check_scalar(c)
        if c == 0:
            raise ZeroDivisionError("cannot divide a steering vector by 0")
        return self.scale(1.0 / c)

    def __neg__(self) -> "SteeringVector":
        return self.scale(-1.0)

    def __add__(self, other: "SteeringVector") -> "SteeringVector":
        self._same_model(other)
        merged: dict[tuple, Term] = {}
        for t in self.terms + other.terms:
            k = t.key()
            if k in merged:
                merged[k] = replace(merged[k], tensor=_add_padded(merged[k].tensor, t.tensor))
            else:
                merged[k] = t
        recipe = {"method": "sum", "of": [dict(self.recipe), dict(other.recipe)]}
        return SteeringVector(tuple(merged.values()), self.model_id, recipe)

    def __sub__(self, other: "SteeringVector") -> "SteeringVector":
        self._same_model(other)
        return self + (-other)

    def with_positions(self, positions: PositionsLike) -> "SteeringVector":
        pos = as_positions(positions)
        return SteeringVector(tuple(replace(t, positions=pos) for t in self.terms), self.model_id, self.recipe)

    # -- applying ---------------------------------------------------------------------------------
    def as_interventions(self, positions: PositionsLike | None = None, coeff: float | torch.Tensor = 1.0) -> list[AddVector]:
        """One ``AddVector`` per term: each selected position gets ``coeff * tensor`` exactly once per
        forward pass (a cached generation step sees only its new column, so nothing is added twice).

        positions: override every term's positions (None keeps each term's own)
        coeff:     a number, or ``[batch]`` - one coefficient per batch row (coefficient scan)
        """
        if isinstance(coeff, torch.Tensor) and torch.isnan(coeff).any():
            bad = torch.isnan(coeff).nonzero().flatten().tolist()[:10]
            raise ValueError(f"coefficients contain NaN (rows {bad}); every coefficient must be a finite number")
        if not isinstance(coeff, torch.Tensor):
            coeff = _check_scalar(coeff)
        pos = None if positions is None else as_positions(positions)
        return [SteerAdd(t.hook, vector=t.tensor, coeff=coeff, start=t.start, model_id=self.model_id,
                         positions=pos if pos is not None else t.positions) for t in self.terms]

    def check(self, lm: Any) -> None:
        """Raise a clear error if this vector cannot apply to ``lm`` (model, hook points, width)."""
        if lm.model_id != self.model_id:
            raise ModelMismatch(f"this steering vector was made on model {self.model_id!r} but the model is {lm.model_id!r}")
        for t in self.terms:
            lm.site(t.hook)

    # -- files ------------------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        return {
            "format": "avec.steering", "version": FORMAT_VERSION, "model_id": self.model_id,
            "recipe": _jsonable(dict(self.recipe)),
            "terms": [{"hook": t.hook, "positions": _positions_json(t.positions), "start": t.start,
                       "shape": list(t.tensor.shape), "dtype": str(t.tensor.dtype).removeprefix("torch.")}
                      for t in self.terms],
        }

    def save(self, path: str | Path) -> Path:
        """Write one ``.safetensors`` file (tensors + JSON metadata), atomically (temp file + rename)."""
        from safetensors.torch import save_file

        tensors = {f"term.{i}": t.tensor.contiguous() for i, t in enumerate(self.terms)}
        metadata = {"avec.steering": json.dumps(self.metadata())}
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))

    @classmethod
    def load(cls, path: str | Path, lm: Any = None) -> "SteeringVector":
        """Read a file written by ``save``; with ``lm``, also check it fits that model.

        Every tensor must be described by the metadata (shape, dtype) and every term must have its tensor;
        anything else is an error naming the file and what was expected."""
        from safetensors import safe_open

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no steering vector file at {path}")
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a directory; a steering vector is one .safetensors file written by "
                                    "SteeringVector.save")
        try:
            f = safe_open(str(path), framework="pt")
        except Exception as err:  # safetensors raises SafetensorError (truncated, not safetensors, ...)
            raise ValueError(f"{path} is not a readable safetensors file ({type(err).__name__}: {err}); a steering "
                             "vector file is written by SteeringVector.save") from err
        with f:
            meta_text = (f.metadata() or {}).get("avec.steering")
            if meta_text is None:
                raise ValueError(f"{path} is a safetensors file but not an avec steering vector (no 'avec.steering' metadata)")
            meta = _parse_metadata(path, meta_text)
            terms = _read_terms(path, f, meta["terms"])
        try:
            vec = cls(terms, meta["model_id"], meta["recipe"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path} holds an invalid steering vector: {err}") from err
        if lm is not None:
            vec.check(lm)
        return vec

    def to_gguf(self, path: str | Path, model_hint: str | None = None) -> Path:
        from .gguf_io import write_control_vector

        return write_control_vector(self, path, model_hint)

    @classmethod
    def from_gguf(cls, path: str | Path, lm: Any) -> "SteeringVector":
        from .gguf_io import read_control_vector

        return read_control_vector(path, lm)


def _parse_metadata(path: Path, text: str) -> dict[str, Any]:
    """The ``avec.steering`` metadata of a file, checked: a clear error naming the file for anything off."""
    def bad(msg: str) -> ValueError:
        return ValueError(f"{path} has invalid 'avec.steering' metadata: {msg}")

    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise bad(f"not valid JSON ({err}); expected the JSON object SteeringVector.save writes") from None
    if not isinstance(meta, dict):
        raise bad(f"expected a JSON object, got {type(meta).__name__}")
    if meta.get("format", "avec.steering") != "avec.steering":
        raise bad(f"format is {meta.get('format')!r}, expected 'avec.steering'")
    version = meta.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise bad(f"version is {version!r}, expected an integer")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path} has format version {version}; this avec reads up to {FORMAT_VERSION}")
    if not isinstance(meta.get("model_id"), str):
        raise bad(f"'model_id' is {meta.get('model_id')!r}, expected a string (the model the vector was made on)")
    recipe = meta.get("recipe", {})
    if not isinstance(recipe, dict):
        raise bad(f"'recipe' is a {type(recipe).__name__}, expected an object")
    terms = meta.get("terms")
    if not isinstance(terms, list) or not terms:
        raise bad(f"'terms' is {terms!r}, expected a non-empty list of terms")
    for i, m in enumerate(terms):
        if not isinstance(m, dict):
            raise bad(f"term {i} is {m!r}, expected an object with hook, positions, start, shape, dtype")
        missing = [k for k in ("hook", "positions", "start", "shape") if k not in m]
        if missing:
            raise bad(f"term {i} lacks {', '.join(missing)} (each term has hook, positions, start, shape, dtype)")
        if not isinstance(m["hook"], str):
            raise bad(f"term {i} has hook {m['hook']!r}, expected a hook point name")
        if not isinstance(m["start"], int) or isinstance(m["start"], bool):
            raise bad(f"term {i} has start {m['start']!r}, expected an integer")
        shape = m["shape"]
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)):
            raise bad(f"term {i} has shape {shape!r}, expected a list of integers")
    return {"model_id": meta["model_id"], "recipe": recipe, "terms": terms}


def _read_terms(path: Path, f: Any, metas: list[dict[str, Any]]) -> tuple[Term, ...]:
    """Tensors ``term.{i}`` of an open safetensors file, each checked against its metadata."""
    names = set(f.keys())
    expected = [f"term.{i}" for i in range(len(metas))]
    missing = [n for n in expected if n not in names]
    if missing:
        raise ValueError(f"{path}: its metadata describes {len(metas)} terms but the file lacks the tensor(s) "
                         f"{', '.join(missing)}")
    extra = sorted(names - set(expected))
    if extra:
        raise ValueError(f"{path} holds tensor(s) {', '.join(extra)} that its metadata does not describe "
                         f"(expected exactly {', '.join(expected)})")
    terms = []
    for name, m in zip(expected, metas):
        tensor = f.get_tensor(name)
        dtype = str(tensor.dtype).removeprefix("torch.")
        if not tensor.is_floating_point():
            raise ValueError(f"{path}: {name} (at {m['hook']!r}) has dtype {dtype}; steering vectors hold "
                             "floating-point tensors (float32, float16, bfloat16, float64)")
        if list(tensor.shape) != m["shape"]:
            raise ValueError(f"{path}: {name} (at {m['hook']!r}) has shape {list(tensor.shape)} but the metadata "
                             f"says {m['shape']}")
        if "dtype" in m and m["dtype"] != dtype:
            raise ValueError(f"{path}: {name} (at {m['hook']!r}) has dtype {dtype} but the metadata says {m['dtype']!r}")
        try:
            positions = _positions_from_json(m["positions"])
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"{path}: {name} (at {m['hook']!r}) has invalid positions {m['positions']!r} ({err}); "
                             "expected e.g. {\"kind\": \"all\"}, {\"kind\": \"from\", \"start\": -1}, "
                             "{\"kind\": \"front\", \"k\": 3}") from None
        terms.append(Term(m["hook"], tensor, positions, m["start"]))
    return tuple(terms)


def _add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sum of two ``[d]`` or two ``[k, d]`` tensors; per-position ones are zero-padded to equal k."""
    if a.dim() == 2 and a.shape[0] != b.shape[0]:
        k = max(a.shape[0], b.shape[0])
        pad = lambda x: torch.cat([x, x.new_zeros(k - x.shape[0], x.shape[1])])  # noqa: E731
        a, b = pad(a), pad(b)
    return a + b


def resolve_hook(lm: Any, hook: str | int) -> str:
    """A layer number means ``blocks.{l}.resid_pre``; names and aliases resolve to canonical names."""
    if isinstance(hook, bool):
        raise TypeError("a hook point is a name or a layer number")
    if isinstance(hook, int):
        n = lm.n_layers
        if not 0 <= hook < n:
            raise ValueError(f"layer {hook} is out of range: the model has {n} layers (0..{n - 1})")
        hook = f"blocks.{hook}.resid_pre"
    names = lm.resolve(hook)
    if len(names) != 1:
        raise ValueError(f"{hook!r} names {len(names)} hook points; give exactly one (or a list)")
    return names[0]


def resolve_hooks(lm: Any, at: str | int | Sequence[str | int]) -> list[str]:
    if isinstance(at, (str, int)):
        at = [at]
    out: list[str] = []
    for h in at:
        if isinstance(h, str) and any(c in h for c in "*?["):
            out += lm.resolve(h)
        else:
            out.append(resolve_hook(lm, h))
    if not out:
        raise ValueError("no hook point given")
    return list(dict.fromkeys(out))


def _positions_json(p: Positions) -> dict[str, Any]:
    if p is ALL:
        return {"kind": "all"}
    if p is PROMPT:
        return {"kind": "prompt"}
    if p is GENERATED:
        return {"kind": "generated"}
    if isinstance(p, From):
        return {"kind": "from", "start": p.start}
    if isinstance(p, Front):
        return {"kind": "front", "k": p.k}
    if isinstance(p, At):
        return {"kind": "at", "indices": list(p.indices)}
    if isinstance(p, Span):
        return {"kind": "span", "start": p.start, "stop": p.stop}
    raise ValueError(f"positions {p.describe()} cannot be saved with a steering vector; use all/prompt/"
                     "generated/From/Front/At/Span")


def _positions_from_json(d: Mapping[str, Any]) -> Positions:
    kind = d["kind"]
    simple = {"all": ALL, "prompt": PROMPT, "generated": GENERATED}
    if kind in simple:
        return simple[kind]
    if kind == "from":
        return From(int(d["start"]))
    if kind == "front":
        return Front(int(d["k"]))
    if kind == "at":
        return At(tuple(int(i) for i in d["indices"]))
    if kind == "span":
        return Span(int(d["start"]), None if d["stop"] is None else int(d["stop"]))
    raise ValueError(f"unknown positions kind {kind!r} in a steering vector file")


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        return x.item()
    return repr(x)


def stack_terms(vectors: Iterable[SteeringVector]) -> SteeringVector:
    """The sum of several vectors (e.g. one per layer) as one vector."""
    vectors = list(vectors)
    if not vectors:
        raise ValueError("no vectors to sum")
    out = vectors[0]
    for v in vectors[1:]:
        out = out + v
    return out
