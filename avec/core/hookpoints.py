"""Hook points: named places in a network where activations are read or edited.

A ``Site`` says where a hook point's value lives: the output (or first input) of one module, which
element of a tuple, how to view it (per-head reshape) and which axis holds positions. A
``HookPointTable`` maps names - canonical, aliases, glob patterns - to sites, with errors that
list what is valid.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence


@dataclass(frozen=True)
class Site:
    """Where one hook point's value is found.

    name:        canonical hook point name
    module:      dotted path of the module whose output/input holds the value
    kind:        "output" (forward hook) or "input" (forward pre-hook, first tensor argument)
    index:       element of a tuple output (e.g. 0 = attention output, 1 = attention weights)
    pos_axis:    axis of token positions in the value, or None (plain modules, e.g. a CNN)
    heads:       if set, the last axis is viewed as [heads, d_head] (``attn.z``)
    delta_to:    for residual points read at a norm's input (``resid_mid``): the module whose output
                 also receives any edit, so the residual stream that flows on sees it too
    eager:       reading this value needs eager attention (attention patterns)
    read_only:   interventions are refused here (the value is not on the forward path)
    width:       the value's trailing shape after the position axis, when known statically
    layer:       transformer layer index, or None
    parent:      for a dictionary's points (``<at>.sae.latents``): the hook point the dictionary reads
    part:        which of the dictionary's values: "latents", "recon" or "error"
    """

    name: str
    module: str
    kind: str = "output"
    index: int = 0
    pos_axis: int | None = None
    heads: int | None = None
    delta_to: str | None = None
    eager: bool = False
    read_only: bool = False
    width: tuple[int, ...] | None = None
    layer: int | None = None
    parent: str | None = None
    part: str | None = None

    @property
    def layout(self) -> str:
        """The value's axes, e.g. ``[batch, pos, 576]`` or ``[batch, head, query, key]``."""
        if self.pos_axis is None:
            return "[batch, ...]"
        if self.pos_axis == 2:
            return "[batch, head, query, key]"
        width = ", ".join(map(str, self.width)) if self.width else "..."
        return f"[batch, pos, {width}]"


class UnknownHookPoint(KeyError):
    """A hook point name that the model does not have. The message lists near matches."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0])


_LAYER_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


class HookPointTable:
    """Canonical names -> sites, with aliases and glob patterns.

    ``aliases`` rewrites a spelling into a canonical name (e.g. TransformerLens's
    ``blocks.6.hook_resid_pre``); it returns None when it does not apply.
    """

    def __init__(
        self,
        sites: Sequence[Site],
        aliases: Callable[[str], str | None] | None = None,
        n_layers: int | None = None,
    ):
        self.sites = {s.name: s for s in sites}
        self.names = [s.name for s in sites]
        self._aliases = aliases
        self.n_layers = n_layers

    def insert_after(self, anchor: str, sites: Sequence[Site]) -> None:
        """Add ``sites`` right after ``anchor`` (and anything already inserted after it) in forward order."""
        clash = [s.name for s in sites if s.name in self.sites]
        if clash:
            raise ValueError(f"hook point(s) {clash} exist already")
        i = self.names.index(anchor) + 1
        while i < len(self.names) and self.sites[self.names[i]].parent == anchor:
            i += 1
        self.names[i:i] = [s.name for s in sites]
        self.sites.update({s.name: s for s in sites})

    def remove(self, names: Iterable[str]) -> None:
        for name in list(names):
            self.sites.pop(name, None)
            if name in self.names:
                self.names.remove(name)

    def __contains__(self, name: str) -> bool:
        try:
            self.resolve(name)
            return True
        except (UnknownHookPoint, ValueError):
            return False

    def canonical(self, name: str) -> str:
        """The canonical spelling of one exact (non-glob) hook point name."""
        if not isinstance(name, str):
            raise TypeError(f"hook point names are strings, got {type(name).__name__}")
        if name in self.sites:
            return name
        if self._aliases is not None:
            alias = self._aliases(name)
            if alias is not None and alias in self.sites:
                return alias
            if alias is not None:
                name = alias
        self._raise_unknown(name)

    def resolve(self, name: str) -> Site:
        return self.sites[self.canonical(name)]

    def expand(self, patterns: str | Iterable[str]) -> list[str]:
        """Canonical names matching one or several names or glob patterns, in model order."""
        if isinstance(patterns, str):
            patterns = [patterns]
        chosen: set[str] = set()
        for pattern in patterns:
            if any(c in pattern for c in "*?["):
                matches = [n for n in self.names if fnmatch.fnmatchcase(n, pattern)]
                if not matches and self._aliases is not None:
                    rewritten = self._aliases(pattern)
                    if rewritten is not None:
                        matches = [n for n in self.names if fnmatch.fnmatchcase(n, rewritten)]
                if not matches:
                    raise UnknownHookPoint(
                        f"pattern {pattern!r} matches no hook point. {self._summary()}"
                    )
                chosen.update(matches)
            else:
                chosen.add(self.canonical(pattern))
        return [n for n in self.names if n in chosen]

    def _summary(self) -> str:
        shapes = sorted({_LAYER_RE.sub(r"blocks.{l}.\2", n) for n in self.names})
        if len(shapes) > 40:
            shapes = shapes[:40] + [f"... ({len(shapes) - 40} more)"]
        layers = f" with l in 0..{self.n_layers - 1}" if self.n_layers else ""
        return f"Valid hook points{layers}: {', '.join(shapes)}"

    def _raise_unknown(self, name: str):
        m = _LAYER_RE.match(name)
        if m and self.n_layers is not None:
            layer = int(m.group(1))
            if layer >= self.n_layers:
                raise UnknownHookPoint(
                    f"layer {layer} is out of range in hook point {name!r}: the model has "
                    f"{self.n_layers} layers (0..{self.n_layers - 1})"
                )
        near = difflib.get_close_matches(name, self.names, n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(near)}?" if near else ""
        raise UnknownHookPoint(f"unknown hook point {name!r}.{hint} {self._summary()}")
