"""Which token positions an intervention or a cache touches.

Positions are always counted *within each prompt*: position 0 is a prompt's first token whatever
padding the batch needed, and negative positions count back from the prompt's last token
(-1 = the last prompt token, the one whose logits predict the first generated token). Generated
tokens continue the count: the first generated token sits at position ``prompt_len``.

The same selector therefore means the same tokens in a single forward pass, in a batch with left or
right padding, and during cached generation where each forward pass sees one new token. A selector
becomes a boolean mask ``[batch, seq]`` for the columns of the current forward pass; selectors other
than "all" never select padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch


@dataclass(frozen=True)
class TokenContext:
    """Where the columns of the current forward pass sit inside each prompt.

    pad_left:   [batch] number of left-padding columns of each row
    prompt_len: [batch] number of real prompt tokens of each row
    offset:     absolute column of this pass's first column (tokens already in the KV cache)
    seq_len:    number of columns in this pass
    continues:  the columns past the prompt are generated tokens, not right padding (set for passes
                that re-read the prompt plus what was generated, i.e. generation without the KV cache)
    """

    pad_left: torch.Tensor
    prompt_len: torch.Tensor
    offset: int
    seq_len: int
    continues: bool = False  # a pass over the prompt plus generated tokens (generation without KV cache)

    @property
    def batch(self) -> int:
        return int(self.pad_left.shape[0])

    def positions(self) -> torch.Tensor:
        """[batch, seq] prompt-relative position of every column (negative inside left padding)."""
        cols = torch.arange(self.offset, self.offset + self.seq_len, device=self.pad_left.device)
        return cols[None, :] - self.pad_left[:, None]

    def real(self) -> torch.Tensor:
        """[batch, seq] True where a column holds a real token, not padding.

        Left padding has negative positions; right padding exists only in a prompt pass (offset 0):
        in later passes (cached or not) every column past the prompt is a generated token.
        """
        pos = self.positions()
        if self.offset > 0 or self.continues:
            return pos >= 0
        return (pos >= 0) & (pos < self.prompt_len[:, None])

    @staticmethod
    def plain(batch: int, seq_len: int, device: torch.device | str = "cpu") -> "TokenContext":
        zeros = torch.zeros(batch, dtype=torch.long, device=device)
        return TokenContext(zeros, zeros + seq_len, 0, seq_len)

    @staticmethod
    def from_mask(mask: torch.Tensor) -> "TokenContext":
        """The prompt pass of a batch with attention ``mask`` ``[batch, seq]`` (1 = real token):
        left padding = the leading zeros of each row, prompt length = its number of ones."""
        mask = mask.long()
        pad_left = (mask.cumsum(1) == 0).sum(1)
        return TokenContext(pad_left, mask.sum(1), 0, int(mask.shape[1]))

    @staticmethod
    def for_prompts(lengths: torch.Tensor | Sequence[int], seq_len: int | None = None, *,
                    padding: str = "right") -> "TokenContext":
        """The prompt pass over prompts of ``lengths`` [batch] padded to ``seq_len`` columns
        (default: the longest), on the ``padding`` side: for code that works on a run's tensors
        outside the hooks and must pick the same columns the hooks did."""
        lengths = torch.as_tensor(lengths, dtype=torch.long).cpu()
        seq_len = int(lengths.max()) if seq_len is None else int(seq_len)
        if int(lengths.max()) > seq_len:
            raise ValueError(f"prompt lengths {lengths.tolist()} exceed the {seq_len} columns")
        if padding not in ("left", "right"):
            raise ValueError(f"padding is 'left' or 'right', got {padding!r}")
        pad_left = seq_len - lengths if padding == "left" else torch.zeros_like(lengths)
        return TokenContext(pad_left, lengths, 0, seq_len)


class Positions:
    """Base class of position selectors. ``mask(ctx)`` -> bool ``[batch, seq]`` or None for all."""

    def mask(self, ctx: TokenContext) -> torch.Tensor | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.describe()

    def describe(self) -> str:
        return type(self).__name__


@dataclass(frozen=True, repr=False)
class AllPositions(Positions):
    """Every column, prompt and generated alike (padding included: it never affects real tokens)."""

    def mask(self, ctx: TokenContext) -> None:
        return None

    def describe(self) -> str:
        return "all"


@dataclass(frozen=True, repr=False)
class PromptPositions(Positions):
    """The prompt's real tokens only; nothing during generated steps."""

    def mask(self, ctx: TokenContext) -> torch.Tensor:
        pos = ctx.positions()
        return (pos >= 0) & (pos < ctx.prompt_len[:, None])

    def describe(self) -> str:
        return "prompt"


@dataclass(frozen=True, repr=False)
class GeneratedPositions(Positions):
    """Generated tokens only (positions >= prompt length)."""

    def mask(self, ctx: TokenContext) -> torch.Tensor:
        return (ctx.positions() >= ctx.prompt_len[:, None]) & ctx.real()

    def describe(self) -> str:
        return "generated"


def as_index(value: object, what: str) -> int:
    """An integer index, refusing floats and bools (1.7 must not quietly become 1); ``what`` starts
    the error message (e.g. "From(start) is an integer index"). Positions and heads both use it."""
    if isinstance(value, bool) or isinstance(value, float) or not hasattr(value, "__index__"):
        raise TypeError(f"{what}, got {value!r}")
    return int(value.__index__())


def _absolute(index: int, prompt_len: torch.Tensor) -> torch.Tensor:
    """[batch] prompt-relative index; negative counts back from each prompt's end."""
    if index >= 0:
        return torch.full_like(prompt_len, index)
    return prompt_len + index


@dataclass(frozen=True, repr=False)
class From(Positions):
    """Every position >= ``start`` (prompt-relative; -1 = the last prompt token), generated included.

    This is the CAA rule: steering from the last instruction token onward, so the token whose
    logits predict the first generated token is included, and every generated token after it.
    """

    start: int

    def __post_init__(self):
        object.__setattr__(self, "start", as_index(self.start, "From(start) is an integer index"))

    def mask(self, ctx: TokenContext) -> torch.Tensor:
        start = _absolute(self.start, ctx.prompt_len)
        return (ctx.positions() >= start[:, None]) & ctx.real()

    def describe(self) -> str:
        return f"from {self.start}"


@dataclass(frozen=True, repr=False)
class Front(Positions):
    """The prompt's first ``k`` tokens (ActAdd's "front" positions)."""

    k: int

    def __post_init__(self):
        object.__setattr__(self, "k", as_index(self.k, "Front(k) is an integer index"))
        if self.k < 1:
            raise ValueError(f"Front(k) needs k >= 1, got {self.k}")

    def mask(self, ctx: TokenContext) -> torch.Tensor:
        pos = ctx.positions()
        return (pos >= 0) & (pos < torch.minimum(ctx.prompt_len, torch.full_like(ctx.prompt_len, self.k))[:, None])

    def describe(self) -> str:
        return f"first {self.k}"


@dataclass(frozen=True, repr=False)
class At(Positions):
    """Explicit prompt-relative indices (negative counts back from each prompt's end)."""

    indices: tuple[int, ...]

    def __post_init__(self):
        indices = self.indices.tolist() if isinstance(self.indices, torch.Tensor) else self.indices
        indices = (indices,) if isinstance(indices, int) else tuple(indices)
        for i in indices:  # 1.7 must not quietly become position 1
            as_index(i, f"each of the positions {list(indices)} is an integer index")
        if not indices:
            raise ValueError("an empty list of positions selects nothing")
        object.__setattr__(self, "indices", tuple(as_index(i, "a position is an integer index") for i in indices))

    def mask(self, ctx: TokenContext) -> torch.Tensor:
        pos = ctx.positions()
        out = torch.zeros_like(pos, dtype=torch.bool)
        for i in self.indices:
            target = _absolute(i, ctx.prompt_len)
            out |= (pos == target[:, None]) & (target[:, None] >= 0)
        return out & ctx.real()

    def describe(self) -> str:
        return f"positions {list(self.indices)}"


@dataclass(frozen=True, repr=False)
class Span(Positions):
    """Prompt-relative half-open range ``[start, stop)``; ``stop=None`` runs to the prompt's end."""

    start: int
    stop: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "start", as_index(self.start, "Span(start) is an integer index"))
        if self.stop is not None:
            object.__setattr__(self, "stop", as_index(self.stop, "Span(stop) is an integer index"))

    def mask(self, ctx: TokenContext) -> torch.Tensor:
        pos = ctx.positions()
        start = _absolute(self.start, ctx.prompt_len)
        stop = ctx.prompt_len if self.stop is None else _absolute(self.stop, ctx.prompt_len)
        return (pos >= start[:, None]) & (pos < stop[:, None]) & ctx.real()

    def describe(self) -> str:
        return f"span [{self.start}:{'' if self.stop is None else self.stop}]"


@dataclass(frozen=True, repr=False)
class Mask(Positions):
    """An explicit boolean mask ``[batch, total_seq]`` over absolute columns (for batched sweeps)."""

    columns: torch.Tensor

    def mask(self, ctx: TokenContext) -> torch.Tensor:
        cols = self.columns
        if cols.dim() != 2 or cols.shape[0] not in (1, ctx.batch):
            raise ValueError(
                f"position mask must be [batch, seq] with batch 1 or {ctx.batch}, got {tuple(cols.shape)}"
            )
        stop = ctx.offset + ctx.seq_len
        if cols.shape[1] < stop:
            raise ValueError(f"position mask covers {cols.shape[1]} columns but the input has {stop}")
        return cols[:, ctx.offset : stop].to(device=ctx.pad_left.device, dtype=torch.bool).expand(ctx.batch, -1)

    def describe(self) -> str:
        return f"mask {tuple(self.columns.shape)}"


def rows_of(ctx: TokenContext, start: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a per-position tensor ``[k, *width]`` (row i for prompt position ``start + i``) lands.

    Returns ``(row, covered)``, both ``[batch, seq]``: ``row`` the tensor row for each column
    (clamped into 0..k-1), ``covered`` True where the column is prompt position start..start+k-1.
    Per-position tensors describe prompts (the ActAdd layout), so generated tokens are never covered.
    """
    pos = ctx.positions()
    idx = pos - start
    covered = (idx >= 0) & (idx < k) & (pos < ctx.prompt_len[:, None])
    return idx.clamp(0, k - 1), covered


def columns(selector: "PositionsLike", lengths: torch.Tensor | Sequence[int], seq_len: int | None = None, *,
            padding: str = "right") -> torch.Tensor:
    """bool ``[batch, seq]``: the columns ``selector`` picks in a prompt pass over prompts of
    ``lengths`` padded on the ``padding`` side, exactly as the hooks pick them. "all" covers every
    column (padding included, as in the hooks)."""
    ctx = TokenContext.for_prompts(lengths, seq_len, padding=padding)
    sel = as_positions(selector).mask(ctx)
    return torch.ones(ctx.batch, ctx.seq_len, dtype=torch.bool) if sel is None else sel.cpu()


def column_of(position: int, lengths: "torch.Tensor | Sequence[int] | TokenContext", *, padding: str = "right",
              seq_len: int | None = None) -> torch.Tensor:
    """``[batch]`` absolute column of one prompt-relative ``position`` in each prompt (``-1`` = each
    prompt's last token), raising when a prompt has no such position. ``lengths`` may instead be a
    ``TokenContext`` (e.g. ``TokenContext.from_mask(run.attention_mask)``)."""
    if isinstance(position, bool) or not isinstance(position, int):
        raise TypeError(f"a position is one int (e.g. -1 for each prompt's last token), got {position!r}")
    if isinstance(lengths, TokenContext):
        ctx = lengths
        lengths = ctx.prompt_len.cpu()
        sel = At((position,)).mask(ctx).cpu()
    else:
        lengths = torch.as_tensor(lengths, dtype=torch.long).cpu()
        sel = columns(At((position,)), lengths, seq_len, padding=padding)
    missing = (sel.sum(1) == 0).nonzero().flatten().tolist()
    if missing:
        raise ValueError(
            f"position {position} is outside prompt(s) {missing[:8]} (lengths {lengths[missing[:8]].tolist()}): "
            f"a prompt of n tokens has positions 0..n-1 and -n..-1; use -1 for each prompt's last token"
        )
    return sel.int().argmax(1)


def uncovered_rows(selected: torch.Tensor | None) -> list[int]:
    """Rows of a ``[batch, seq]`` selection with no column selected (None selects everything)."""
    if selected is None:
        return []
    return (~selected.any(1)).nonzero().flatten().tolist()


ALL = AllPositions()
PROMPT = PromptPositions()
GENERATED = GeneratedPositions()

PositionsLike = Union[Positions, None, str, int, slice, Sequence[int], torch.Tensor]


def as_positions(spec: PositionsLike) -> Positions:
    """Turn user shorthand into a selector.

    None / "all" -> every position; "prompt"; "generated"; an int -> that index; a list of ints;
    a slice -> Span; a bool tensor [batch, seq] -> Mask.
    """
    if spec is None:
        return ALL
    if isinstance(spec, Positions):
        return spec
    if isinstance(spec, str):
        named = {"all": ALL, "prompt": PROMPT, "generated": GENERATED}
        if spec not in named:
            raise ValueError(f"unknown positions {spec!r}; use one of {sorted(named)} or an index/slice/list")
        return named[spec]
    if isinstance(spec, bool):
        raise TypeError("positions cannot be a bool; use 'all' or a mask tensor")
    if isinstance(spec, int):
        return At((spec,))
    if isinstance(spec, slice):
        if spec.step not in (None, 1):
            raise ValueError("position slices cannot have a step")
        return Span(spec.start or 0, spec.stop)
    if isinstance(spec, torch.Tensor):
        if spec.dtype != torch.bool:
            raise TypeError(f"a positions tensor must be a bool mask [batch, seq], got dtype {spec.dtype}")
        return Mask(spec)
    try:
        items = list(spec)
    except TypeError:
        raise TypeError(f"cannot read positions from {spec!r}") from None
    if not items:
        raise ValueError("an empty list of positions selects nothing")
    return At(tuple(items))
