"""Model: any ``nn.Module`` with named hook points, runs with caches, and interventions.

``Model`` wraps a plain module (its hook points are its module paths, e.g. a CNN policy's
``embedder.block2.res1.resadd``); ``avec.models.LanguageModel`` extends it with a tokenizer and
an architecture adapter that names transformer hook points the TransformerLens way.
"""

from __future__ import annotations

import copy
import warnings

from collections.abc import Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from .dictionary import AttachedDictionary, check_attachable
from .norms import ElementwiseNorm
from .hookpoints import HookPointTable, Site
from .notices import NonFiniteWarning, UnusedInterventionWarning
from .hooks import StopForward, attach, check_intervention, check_selection
from .interventions import Intervention, Patch, _source_tensor
from .positions import AllPositions, PositionsLike, TokenContext, as_positions, column_of


class Cache(Mapping):
    """Activations recorded by a run: hook point name -> tensor.

    Values have the hook point's layout (``[batch, pos, d_model]`` for residual points,
    ``[batch, pos, n_heads, d_head]`` for ``attn.z``, ``[batch, n_heads, query, key]`` for
    ``attn.pattern``); with ``positions`` the pos axis holds only the selected positions.
    Any spelling the model accepts (aliases such as ``blocks.3.hook_resid_pre``) works as a key.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], model_id: str, table: HookPointTable | None, positions: str = "all"):
        self._tensors = tensors
        self.model_id = model_id
        self.positions = positions
        self._table = table

    def _key(self, name: str) -> str:
        if name in self._tensors:
            return name
        if self._table is not None:
            canonical = self._table.canonical(name)
            if canonical in self._tensors:
                return canonical
            name = canonical
        have = ", ".join(list(self._tensors)[:12])
        raise KeyError(f"{name!r} was not cached in this run (cached: {have or 'nothing'}); pass it in cache=[...]")

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._tensors[self._key(name)]

    def __contains__(self, name: object) -> bool:
        try:
            self._key(name)  # type: ignore[arg-type]
            return True
        except (KeyError, ValueError, TypeError):
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def stack(self, point: str) -> torch.Tensor:
        """Stack ``blocks.{l}.<point>`` over the cached layers -> ``[n_layers, ...]`` in layer order."""
        names = [n for n in self._tensors if n.startswith("blocks.") and n.split(".", 2)[2] == point]
        if not names:
            raise KeyError(f"no blocks.*.{point} in this cache (cached: {', '.join(list(self._tensors)[:12])})")
        names.sort(key=lambda n: int(n.split(".")[1]))
        return torch.stack([self._tensors[n] for n in names])

    def to(self, device=None, dtype=None) -> "Cache":
        moved = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else None) for k, v in self._tensors.items()}
        return Cache(moved, self.model_id, self._table, self.positions)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._tensors.values())

    def __repr__(self) -> str:
        items = ", ".join(f"{k}: {list(v.shape)}" for k, v in list(self._tensors.items())[:6])
        more = f", ... ({len(self) - 6} more)" if len(self) > 6 else ""
        return f"Cache({items}{more})"


@dataclass
class Run:
    """The result of ``Model.run``.

    output:         the wrapped module's own output (for a transformer, its ``CausalLMOutput``)
    cache:          the requested activations (a ``Cache``)
    grads:          d metric / d activation for each cached point when run with ``grad=True``
    metric:         the metric's value when run with ``grad=True``
    tokens:         ``[batch, pos]`` token ids (language models; right-padded)
    attention_mask: ``[batch, pos]`` 1 for real tokens
    prompts:        the input strings, when strings were given
    """

    output: Any
    cache: Cache
    grads: Cache | None = None
    metric: float | None = None
    tokens: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    prompts: list[str] | None = None
    model_id: str = ""
    _graph: Any = field(default=None, repr=False, compare=False)

    def gradients(self, metric: Callable[["Run"], torch.Tensor]) -> "Cache":
        """d metric / d each cached activation, from this run's forward pass (run with ``grad=True`` and no
        ``metric``, which keeps its autograd graph: call this as often as needed, e.g. once per batch of
        attribution targets). ``metric`` gets the run with live activations, as in ``Model.run``, and returns a
        scalar or a vector ``[k]`` (then each gradient has a leading axis ``[k, ...]``)."""
        if self._graph is None:
            raise ValueError("gradients() needs a run made with grad=True and no metric (such a run keeps its "
                             "autograd graph); this one was not")
        return self._graph.gradients(self, metric)

    @property
    def logits(self) -> torch.Tensor:
        """``[batch, pos, vocab]`` for a language model; the module's output if it is a tensor."""
        out = self.output
        if out is None:
            raise AttributeError("this run stopped once its cached points were recorded (stop_early=True): it has "
                                 "no logits; run without stop_early to get them")
        if isinstance(out, torch.Tensor):
            return out
        if hasattr(out, "logits"):
            return out.logits
        if isinstance(out, (tuple, list)) and isinstance(out[0], torch.Tensor):
            return out[0]
        raise AttributeError(f"this model's output ({type(out).__name__}) has no logits")

    @property
    def lengths(self) -> torch.Tensor:
        """[batch] number of real tokens of each prompt."""
        if self.attention_mask is None:
            if self.tokens is None:
                raise AttributeError("this run has no tokens")
            return torch.full((self.tokens.shape[0],), self.tokens.shape[1])
        return self.attention_mask.sum(1)

    def last_logits(self) -> torch.Tensor:
        """``[batch, vocab]`` logits at each prompt's last real token (left or right padding; with
        ``logits_to_keep=k`` the logits cover the batch's last k columns)."""
        logits = self.logits
        if self.attention_mask is not None:
            idx = column_of(-1, TokenContext.from_mask(self.attention_mask.cpu())).to(logits.device)
        else:
            idx = (self.lengths - 1).to(logits.device)
        if self.tokens is not None and logits.shape[1] != self.tokens.shape[1]:
            idx = idx - (self.tokens.shape[1] - logits.shape[1])
            if (idx < 0).any():
                raise ValueError("the kept logits do not reach every prompt's last token (shorter prompts are "
                                 "right-padded); keep more positions or run same-length prompts")
        return logits[torch.arange(logits.shape[0], device=idx.device), idx]


class _Graph:
    """A gradient run's live activations (part of its autograd graph): gradients of metrics w.r.t. them."""

    def __init__(self, model: "Model", live: dict, names: list, output: Any, selector, ctx, device, dtype,
                 keep: bool):
        self.model, self.live, self.names, self.output = model, live, names, output
        self.selector, self.ctx, self.device, self.dtype = selector, ctx, device, dtype
        self.keep = keep  # False: one metric, and the backward pass frees the graph as it goes (lower peak memory)

    def gradients(self, run: Run, metric: Callable[[Run], torch.Tensor]) -> "Cache":
        """Sets ``run.metric`` and returns the gradients (see ``Run.gradients``); the graph is kept if ``keep``."""
        m = self.model
        with torch.enable_grad():
            value = metric(replace(run, output=self.output, cache=Cache(self.live, m.model_id, m.table), _graph=None))
            if not isinstance(value, torch.Tensor) or value.dim() > 1 or value.numel() == 0:
                raise ValueError("the metric must return a scalar tensor or a vector [k] of metrics, got "
                                 f"{tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}")
            tensors = [self.live[n] for n in self.names]
            rows = value.dim() == 1
            if not value.requires_grad:  # nothing the metric reads depends on a cached point (e.g. all stopped)
                found = [None] * len(tensors)
            elif rows and value.shape[0] > 1:  # k vector-Jacobian products in one vmapped backward pass
                eye = torch.eye(value.shape[0], dtype=value.dtype, device=value.device)
                found = torch.autograd.grad(value, tensors, grad_outputs=eye, is_grads_batched=True,
                                            allow_unused=True, retain_graph=self.keep)
            else:
                found = torch.autograd.grad(value.reshape(()), tensors, allow_unused=True, retain_graph=self.keep)
                found = [g[None] if g is not None and rows else g for g in found]
        shape = (value.shape[0],) if rows else ()
        grads = {n: (g if g is not None else torch.zeros(*shape, *t.shape, dtype=t.dtype, device=t.device))
                 for n, g, t in zip(self.names, found, tensors)}
        run.metric = value.detach() if rows else float(value.detach())
        fin = lambda g: m._finish(g, self.selector, self.ctx, self.device, self.dtype)  # noqa: E731
        if not rows:
            return fin(grads)
        # one row per metric: positions are selected within each row
        per_row = [fin({n: g[i] for n, g in grads.items()}) for i in range(value.shape[0])]
        return Cache({n: torch.stack([c[n] for c in per_row]) for n in grads}, m.model_id, m.table,
                     positions=per_row[0].positions)


InterventionsLike = Intervention | Iterable[Intervention] | Any


def _flatten(interventions: Iterable[Any]) -> list[Intervention]:
    """Interventions, or objects with ``as_interventions()`` (steering vectors), flattened in order."""
    out: list[Intervention] = []
    for item in interventions:
        if item is None:
            continue
        if isinstance(item, Intervention):
            out.append(item)
        elif hasattr(item, "as_interventions"):
            out.extend(_flatten(item.as_interventions()))
        elif isinstance(item, (list, tuple)):
            out.extend(_flatten(item))
        else:
            raise TypeError(f"expected an Intervention (AddVector, Patch, ...), got {type(item).__name__}")
    return out


def _plain_table(module: nn.Module) -> HookPointTable:
    sites = [Site(name=path, module=path) for path, _ in module.named_modules() if path]

    def alias(name: str) -> str | None:
        # procgen-tools / circrl spelling: "<module path>_out" is the module's output
        return name[: -len("_out")] if name.endswith("_out") else None

    return HookPointTable(sites, aliases=alias)


def _gather_positions(value: torch.Tensor, axis: int, mask: torch.Tensor, name: str,
                      lengths: torch.Tensor) -> torch.Tensor:
    """Keep only the masked positions (the same count in every row) along ``axis``."""
    counts = mask.sum(1)
    if (counts != counts[0]).any():
        short = [i for i, c in enumerate(counts.tolist()) if c < int(counts.max())]
        raise ValueError(
            f"cache positions select different numbers of tokens per prompt ({counts.tolist()}) at {name!r}: "
            f"prompt(s) {short[:8]} are too short (lengths {lengths.tolist()[:16]}); choose positions that exist "
            "in every prompt (e.g. -1, or indices below the shortest prompt's length)"
        )
    if int(counts[0]) == 0:
        raise ValueError(f"cache positions select no token at {name!r}")
    idx = mask.nonzero()[:, 1].reshape(mask.shape[0], -1).to(value.device)  # [batch, k]
    shape = [1] * value.dim()
    shape[0], shape[axis] = idx.shape
    idx = idx.reshape(shape).expand(*[s if i != axis else idx.shape[1] for i, s in enumerate(value.shape)])
    return value.gather(axis, idx)


class Model:
    """A network with hook points. Wraps any ``nn.Module`` without changing it.

    model_id identifies the weights' architecture; caches carry it so that a cache from another
    model cannot be patched in by mistake.
    """

    def __init__(
        self,
        module: nn.Module,
        name: str | None = None,
        table: HookPointTable | None = None,
        tracker: str | None = None,
    ):
        self.module = module.eval()
        self.name = name or type(module).__name__
        self.table = table or _plain_table(module)
        self.tracker = tracker
        n_params = sum(p.numel() for p in module.parameters())
        self.model_id = f"{self.name}:{type(module).__name__}:{n_params}"
        self._dictionaries: dict[str, AttachedDictionary] = {}

    # -- hook points -------------------------------------------------------------------------
    @property
    def hook_points(self) -> list[str]:
        """Every hook point name, in forward order."""
        return list(self.table.names)

    def resolve(self, patterns: str | Iterable[str]) -> list[str]:
        """Canonical names for names, aliases or glob patterns (``blocks.*.resid_post``)."""
        return self.table.expand(patterns)

    def site(self, name: str) -> Site:
        return self.table.resolve(name)

    # -- dictionaries ------------------------------------------------------------------------
    @property
    def dictionaries(self) -> list[AttachedDictionary]:
        """The dictionaries attached to this model, in the order they were added."""
        return list(self._dictionaries.values())

    def add_dictionary(self, dictionary: Any, at: str | Sequence[str] | None = None, name: str | None = None,
                       splice: str = "error", writes: str | Sequence[str] | None = None) -> AttachedDictionary:
        """Attach ``dictionary`` (see ``avec.core.dictionary``): its latents become hook points
        ``<at>.<name>.latents`` and its reconstruction and error ``<writes>.<name>.recon / error``.

        at:     the point it reads (an SAE or transcoder), or one point per layer for a cross-layer
                dictionary (a list, or a glob such as ``"blocks.*.resid_mid"``); default: the
                dictionary's own ``reads`` (or ``cfg.hook``)
        writes: the point it reconstructs: ``at`` for an SAE, a later point for a transcoder (e.g.
                ``"blocks.3.mlp_out"``), one per layer for a cross-layer one; default: the dictionary's
                own ``writes``, else ``at``
        name:   default "sae" (reads = writes), "tc" (a transcoder, or a set of per-layer ones) or "clt"
                (cross-layer)
        splice: "error" keeps the model's output unchanged unless those points are edited; "recon" runs
                the model on the reconstruction

        Stays until ``remove_dictionary``; ``with model.dictionary(...)`` attaches for a block."""
        reads, outs = _default_points(dictionary, at, writes)
        read_sites = [self.site(n) for n in self._points(reads, "at")]
        write_sites = [self.site(n) for n in self._points(outs, "writes")]
        if name is None:
            from .dictionary import is_cross_layer

            name = ("clt" if is_cross_layer(dictionary) and getattr(dictionary, "cross_layer", True) else
                    "sae" if [s.name for s in read_sites] == [s.name for s in write_sites] else "tc")
        order = {n: i for i, n in enumerate(self.table.names)}
        check_attachable(dictionary, read_sites, write_sites, name, splice, order)
        attached = AttachedDictionary(dictionary, tuple(s.name for s in read_sites), tuple(s.name for s in write_sites),
                                      name, splice)
        taken = [p for p in attached.points() if p in self.table.sites]
        if attached.prefix in self._dictionaries or taken:
            raise ValueError(f"a dictionary named {name!r} is already attached at {attached.at!r}"
                             + (f" (hook points {taken[:3]} exist)" if taken else "")
                             + "; remove it first or pick another name")
        for anchor, sites in attached.sites(self.table.sites):
            self.table.insert_after(anchor, sites)
        self._dictionaries[attached.prefix] = attached
        return attached

    def _points(self, spec: str | Sequence[str], what: str) -> list[str]:
        if isinstance(spec, str):
            return self.resolve(spec)
        if not isinstance(spec, (list, tuple)) or not spec or not all(isinstance(s, str) for s in spec):
            raise TypeError(f"{what}= takes a hook point name, a glob or a list of names; got {spec!r}")
        names = []
        for s in spec:
            names.extend(self.resolve(s))
        return names

    def remove_dictionary(self, which: AttachedDictionary | str) -> None:
        """Detach a dictionary (the object ``add_dictionary`` returned, or its ``<at>.<name>`` prefix)."""
        prefix = which.prefix if isinstance(which, AttachedDictionary) else which
        if prefix not in self._dictionaries:
            have = ", ".join(self._dictionaries) or "none"
            raise KeyError(f"no dictionary {prefix!r} is attached (attached: {have})")
        attached = self._dictionaries.pop(prefix)
        self.table.remove(attached.points())

    @contextmanager
    def dictionary(self, dictionary: Any, at: str | Sequence[str] | None = None, name: str | None = None,
                   splice: str = "error", writes: str | Sequence[str] | None = None) -> Iterator[AttachedDictionary]:
        """``add_dictionary`` for the length of a ``with`` block (removed on exit, exception or not)."""
        attached = self.add_dictionary(dictionary, at, name, splice, writes=writes)
        try:
            yield attached
        finally:
            self.remove_dictionary(attached)

    # -- freezing for gradients ------------------------------------------------------------------
    def norm_modules(self) -> list[str]:
        """Paths of every LayerNorm / RMSNorm module (what ``freeze=["norms"]`` holds fixed)."""
        out = []
        for path, module in self.module.named_modules():
            if not path or not (isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("Norm")):
                continue
            try:
                ElementwiseNorm(module)
            except TypeError:
                continue
            out.append(path)
        return out

    def _freezable(self) -> tuple[str, ...]:
        return ("norms",)

    def _freeze_edits(self, freeze: Sequence[str]) -> list[Intervention]:
        """Interventions that implement ``freeze`` (language models stop gradients at queries and keys)."""
        return []

    def _attached(self) -> list[tuple[AttachedDictionary, dict[str, Site]]]:
        """Each dictionary with the sites of the model points it reads and writes."""
        return [(d, {n: self.table.sites[n] for n in (*d.reads, *d.writes)}) for d in self._dictionaries.values()]

    def _bind(self, interventions: Iterable[Any]) -> list[tuple[Site, Intervention]]:
        bound = []
        for iv in _flatten(interventions):
            site = self.table.resolve(iv.hook)
            check_intervention(site, iv, self)
            bound.append((site, iv))
        return bound

    # -- running -----------------------------------------------------------------------------
    def _prepare(self, inputs: Any, **forward_kwargs: Any) -> tuple[Callable[[], Any], dict[str, Any]]:
        """(a thunk that runs the module, extra fields for the Run). Language models override."""
        kw = forward_kwargs
        if isinstance(inputs, torch.Tensor):
            if inputs.numel() == 0 or inputs.shape[0] == 0:
                raise ValueError(f"empty input: got a tensor of shape {list(inputs.shape)}")
            return (lambda: self.module(inputs, **kw)), {}
        if isinstance(inputs, dict):
            return (lambda: self.module(**inputs, **kw)), {}
        if isinstance(inputs, (tuple, list)):
            if not inputs:
                raise ValueError("empty input")
            return (lambda: self.module(*inputs, **kw)), {}
        raise TypeError(f"cannot run {type(self.module).__name__} on {type(inputs).__name__}")

    def _check_edits(self, edits: Sequence[tuple[Site, Intervention]], extra: dict[str, Any]) -> None:
        """Checks of a single run's interventions against its inputs, before it runs: each must
        select some token, and a patch source must cover exactly the run's positions."""
        mask = extra.get("attention_mask")
        if mask is None:
            return
        ctx = TokenContext.from_mask(mask.cpu())
        check_selection(edits, [ctx])
        for site, iv in edits:
            if isinstance(iv, Patch) and site.pos_axis is not None:
                src = _source_tensor(iv.source, site, self)
                if src.dim() > site.pos_axis and src.shape[site.pos_axis] != ctx.seq_len:
                    raise ValueError(
                        f"the patch source at {site.name!r} covers {src.shape[site.pos_axis]} positions but this run has "
                        f"{ctx.seq_len}; clean and corrupted inputs must have the same token length (a longer source "
                        "is not cut to fit)"
                    )

    def _runtime(self, sites: Sequence[Site]):
        """Context needed for some hook points (e.g. eager attention for patterns)."""
        return nullcontext()

    def run(
        self,
        inputs: Any,
        cache: str | Iterable[str] | None = None,
        interventions: InterventionsLike = (),
        *,
        grad: bool = False,
        metric: Callable[[Run], torch.Tensor] | None = None,
        positions: PositionsLike = None,
        cache_device: str | torch.device | None = None,
        cache_dtype: torch.dtype | None = None,
        freeze: Iterable[str] = (),
        stop_early: bool = False,
        **forward_kwargs: Any,
    ) -> Run:
        """Run the model once, recording the hook points in ``cache`` (names or globs) and applying
        ``interventions``.

        positions:   cache only these token positions (prompt-relative; see ``avec.core.positions``)
        grad:        also return ``run.grads``: d metric / d each cached activation; ``metric`` maps
                     the Run (with live logits) to a scalar tensor, or to a vector ``[k]`` of k metrics: then
                     each gradient has a leading axis ``[k, ...]`` (one row per metric, from one forward pass
                     and one batched backward pass: a Jacobian's rows, e.g. attribution targets). With
                     ``grad=True`` and no ``metric`` the run keeps its autograd graph instead:
                     ``run.gradients(metric)`` then takes the gradients of any number of metrics from this
                     one forward pass (the graph lives as long as the run)
        cache_device, cache_dtype: where and how to store the cache (default: as computed)
        freeze:      for gradients, hold parts of the model fixed at their values in this run (outputs
                     are unchanged): "norms" (every LayerNorm / RMSNorm's per-token scale), and for
                     transformers "attention" (the attention patterns: no gradient through queries
                     and keys). Attribution through a frozen model needs both.
        stop_early:  stop the forward pass once every cached point is recorded (the layers after the last
                     one are not computed; the run then has no output or logits): for collecting
                     activations, e.g. an SAE's training data
        forward_kwargs: passed to the wrapped module's forward, e.g. ``logits_to_keep=1`` for a
                     transformer whose metric reads only the last position (skips most of the unembedding)
        """
        if isinstance(interventions, Intervention) or hasattr(interventions, "as_interventions"):
            interventions = [interventions]
        freeze = _check_freeze(freeze, self._freezable())
        edits = self._bind([interventions, self._freeze_edits(freeze)])
        names = self.resolve(cache) if cache else []
        reads = [self.table.resolve(n) for n in names]
        if grad and not reads:
            raise ValueError("grad=True needs cached hook points to take gradients with respect to")
        if stop_early and (grad or not reads):
            raise ValueError("stop_early=True needs cached points and no gradients (there are no logits to take a "
                             "metric of)")
        selector = as_positions(positions)
        call, extra = self._prepare(inputs, **forward_kwargs)
        self._check_edits(edits, extra)
        sites = reads + [s for s, _ in edits]
        norms = self.norm_modules() if "norms" in freeze else ()
        with self._runtime(sites), attach(self.module, edits, reads, tracker=self.tracker, grad=grad,
                                          dictionaries=self._attached(), frozen_norms=norms,
                                          stop_early=stop_early) as state:
            constants = _weights_as_constants([self.module, *(d.module for d, _ in self._attached())]) if grad \
                else nullcontext()
            with torch.set_grad_enabled(grad), constants:
                try:
                    output = call()
                except StopForward:
                    output = None
            live = dict(state.store)
        run = Run(output=output, cache=Cache(live, self.model_id, self.table), model_id=self.model_id, **extra)
        _warn_if_non_finite(run, edits)
        graph = _Graph(self, live, names, output, selector, state.prompt_ctx or state.ctx, cache_device,
                       cache_dtype, keep=metric is None) if grad else None
        if grad:
            if metric is None:  # the graph stays with the run: run.gradients(metric), as often as needed
                run._graph = graph
                run.output = _detach(copy.copy(output))  # a copy: the graph keeps the live one
            else:
                run.grads = graph.gradients(run, metric)
                run.output = _detach(output)
        ctx = state.prompt_ctx or state.ctx
        run.cache = self._finish(live, selector, ctx, cache_device, cache_dtype)
        return run

    def _finish(self, tensors, selector, ctx: TokenContext | None, device, dtype) -> Cache:
        out = {}
        for name, value in tensors.items():
            value = value.detach()
            site = self.table.sites[name]
            if not isinstance(selector, AllPositions):
                if site.pos_axis is None or ctx is None:
                    raise ValueError(f"hook point {name!r} has no token positions; cache it with positions=None")
                value = _gather_positions(value, site.pos_axis, selector.mask(ctx), name, ctx.prompt_len)
            if device is not None or dtype is not None:
                value = value.to(device=device, dtype=dtype if value.is_floating_point() else None)
            out[name] = value
        return Cache(out, self.model_id, self.table, positions=selector.describe())

    @contextmanager
    def intervene(self, *interventions: Any) -> Iterator[None]:
        """Apply interventions to every forward pass inside the block (``generate`` included).

        Every hook is removed when the block ends, also on an exception.
        """
        edits = self._bind(interventions)
        with self._runtime([s for s, _ in edits]), attach(self.module, edits, (), tracker=self.tracker,
                                                         track_use=True, dictionaries=self._attached()) as state:
            yield
        unused = [f"{type(iv).__name__} at {s.name} (positions {iv.positions.describe()})"
                  for i, (s, iv) in enumerate(edits) if state.calls and s.pos_axis is not None and i not in state.used]
        if unused:
            warnings.warn(f"{'; '.join(unused)} edited no token in any of the {state.calls} forward pass(es) of this "
                          "block", UnusedInterventionWarning, stacklevel=3)

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self.table.names)} hook points)"


def _default_points(module: Any, at: Any, writes: Any) -> tuple[Any, Any]:
    """The points a dictionary reads and writes: as given, else its own ``reads`` / ``writes`` (or an
    SAE's ``cfg.hook``). A transcoder given only ``at`` still writes where it was trained to."""
    own_reads = getattr(module, "reads", None)
    if own_reads is None:
        own_reads = getattr(getattr(module, "cfg", None), "hook", None)
    own_writes = getattr(module, "writes", None)
    reads = at if at is not None else own_reads
    if reads is None:
        raise ValueError(f"say which hook point {type(module).__name__} reads: at=... (it records none itself)")
    outs = writes if writes is not None else own_writes if own_writes is not None else reads
    return reads, outs


def _check_freeze(freeze: Iterable[str], allowed: Sequence[str]) -> tuple[str, ...]:
    freeze = (freeze,) if isinstance(freeze, str) else tuple(freeze)
    bad = [f for f in freeze if f not in allowed]
    if bad:
        raise ValueError(f"cannot freeze {bad}; this model can freeze {list(allowed)}")
    return freeze


def _warn_if_non_finite(run: Run, edits: Sequence[tuple[Site, Intervention]]) -> None:
    """Say so when a run's logits are not all finite (the values would poison every metric)."""
    try:
        logits = run.logits
    except (AttributeError, IndexError, TypeError):
        return
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        return
    if bool(torch.isfinite(logits.sum())):  # one cheap reduction: NaN/inf anywhere makes the sum non-finite
        return
    finite = torch.isfinite(logits)
    if bool(finite.all()):  # a sum that overflowed from finite logits
        return
    bad = int((~finite).sum())
    rows = (~finite).reshape(finite.shape[0], -1).any(1).nonzero().flatten().tolist()
    cause = (f"; interventions: {', '.join(f'{type(iv).__name__} at {s.name}' for s, iv in edits[:6])}"
             if edits else "")
    warnings.warn(f"the run's logits hold {bad} NaN or inf value(s) in batch row(s) {rows[:8]}{cause}",
                  NonFiniteWarning, stacklevel=3)


@contextmanager
def _weights_as_constants(modules: Sequence[Any]) -> Iterator[None]:
    """The modules' parameters hold ``requires_grad=False`` while a gradient run's forward pass is recorded (and
    get it back after, also on an exception). Gradients are taken with respect to cached activations, never
    weights; weights that require grad (the default for a loaded model, or a dictionary just trained) would put
    every weight's product on the tape of each (batched) backward pass: attribution graphs ran ~3x slower with a
    trainable cross-layer transcoder attached."""
    params = {id(p): p for m in modules if isinstance(m, nn.Module) for p in m.parameters() if p.requires_grad}
    for p in params.values():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params.values():
            p.requires_grad_(True)


def _detach(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output.detach()
    if hasattr(output, "logits") and isinstance(output.logits, torch.Tensor):
        output.logits = output.logits.detach()
        return output
    if isinstance(output, (tuple, list)):
        return type(output)(_detach(o) for o in output)
    return output
