"""The one hooking mechanism: torch forward hooks, attached for the length of a ``with`` block.

Every technique in avec reads and edits activations through ``attach``: it registers one torch hook
per (module, input|output) that any requested hook point needs, runs the interventions of each
point in order, records what was asked to be cached, and removes every handle when the block ends,
exception or not.

Residual points read at a norm's input (``resid_mid``) are special: the residual stream that flows
on is a separate use of the same tensor, so an edit there is also added, as a delta, to the
layer's output (``Site.delta_to``). Downstream therefore sees the edited value everywhere.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from .norms import ElementwiseNorm
from .dictionary import AttachedDictionary
from .hookpoints import Site
from .interventions import Intervention
from .positions import AllPositions, Mask, TokenContext, uncovered_rows


class StopForward(Exception):
    """Raised inside a forward pass once every requested value is recorded (``stop_early``)."""


@dataclass
class HookState:
    """What one ``attach`` block collects. ``store`` maps hook point -> live value (view layout)."""

    store: dict[str, torch.Tensor] = field(default_factory=dict)
    ctx: TokenContext | None = None  # context of the latest forward pass
    prompt_ctx: TokenContext | None = None  # context of the prompt pass (offset 0)
    prompt_ids: torch.Tensor | None = None  # its token ids: a later pass that extends them continues it
    deltas: dict[str, torch.Tensor] = field(default_factory=dict)
    calls: int = 0
    used: set[int] = field(default_factory=set)  # indices (into ``edits``) of interventions that edited something


def check_intervention(site: Site, iv: Intervention, model: Any = None) -> None:
    """Checks every intervention needs, before any forward pass runs."""
    if site.read_only:
        raise ValueError(f"hook point {site.name!r} can be read (cached) but not edited")
    if site.pos_axis is None and not isinstance(iv.positions, AllPositions):
        raise ValueError(
            f"hook point {site.name!r} has no token positions; interventions there apply to the whole "
            f"value (positions='all'), got {iv.positions.describe()}"
        )
    if iv.heads is not None:
        if site.heads is None:
            raise ValueError(f"heads= applies only at per-head hook points (attn.z), not at {site.name!r}")
        bad = [h for h in iv.heads if not 0 <= h < site.heads]
        if bad:
            raise ValueError(f"head(s) {bad} out of range at {site.name!r}: the layer has {site.heads} heads (0..{site.heads - 1})")
    iv.check(site, model)


def check_selection(edits: Sequence[tuple[Site, Intervention]], contexts: Sequence[TokenContext], *,
                    lengths_hint: str = "") -> None:
    """Refuse interventions that would edit nothing, before any forward pass runs.

    contexts: the passes that will run (a prompt pass; for generation also one covering the new
    tokens). An intervention whose positions pick no column of some prompt in any of them (position
    50 of a 9-token prompt, ``From(100)`` without generation, "generated" in a single run) is an
    error, as a cache at that position is. An explicit ``Mask`` may leave rows empty on purpose
    (batched patching sweeps); it must select something somewhere.
    """
    for site, iv in edits:
        if site.pos_axis is None:
            continue
        passes = [iv.selected(ctx, site) for ctx in contexts]
        if any(sel is None for sel in passes):
            continue  # every column
        empty = uncovered_rows(torch.cat([sel.cpu() for sel in passes], dim=1))
        batch = contexts[0].batch
        if not empty or (isinstance(iv.positions, Mask) and len(empty) < batch):
            continue
        lengths = contexts[0].prompt_len.tolist()
        where = "any prompt" if len(empty) == batch else f"prompt(s) {empty[:8]}"
        raise ValueError(
            f"{type(iv).__name__} at {site.name!r} with positions {iv.positions.describe()} selects no token of "
            f"{where} (prompt lengths {lengths[:16]}{lengths_hint}): it would change nothing. A prompt of n "
            "tokens has positions 0..n-1 (or -n..-1); generated tokens continue from n"
        )


def _get(obj: Any, site: Site) -> torch.Tensor:
    if site.kind == "input":
        args, kwargs = obj
        for a in args:
            if isinstance(a, torch.Tensor):
                return a
        for key in ("hidden_states", "input", "x"):
            if isinstance(kwargs.get(key), torch.Tensor):
                return kwargs[key]
        raise RuntimeError(f"no tensor input found for hook point {site.name!r} at module {site.module!r}")
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)):
        value = obj[site.index]
        if value is None:
            raise RuntimeError(
                f"module {site.module!r} returned no value for {site.name!r} (element {site.index} is None)"
            )
        return value
    raise RuntimeError(f"module {site.module!r} returned {type(obj).__name__}; cannot read {site.name!r}")


def _set(obj: Any, site: Site, value: torch.Tensor) -> Any:
    if site.kind == "input":
        args, kwargs = obj
        for i, a in enumerate(args):
            if isinstance(a, torch.Tensor):
                return (args[:i] + (value,) + args[i + 1 :], kwargs)
        for key in ("hidden_states", "input", "x"):
            if isinstance(kwargs.get(key), torch.Tensor):
                return (args, {**kwargs, key: value})
    if isinstance(obj, torch.Tensor):
        return value
    items = list(obj)
    items[site.index] = value
    return type(obj)(items) if isinstance(obj, tuple) else items


def _view(value: torch.Tensor, site: Site) -> torch.Tensor:
    if site.heads is None:
        return value
    return value.unflatten(-1, (site.heads, -1))  # [batch, pos, n_heads, d_head]


def _unview(view: torch.Tensor, site: Site) -> torch.Tensor:
    return view if site.heads is None else view.flatten(-2)


def _where(iv: Intervention, site: Site, value: torch.Tensor, ctx: TokenContext) -> torch.Tensor | None:
    """The bool mask broadcastable to ``value`` that an intervention's positions and heads select."""
    where = None
    if site.pos_axis is not None:
        cols = iv.selected(ctx, site)  # [batch, seq] or None
        if cols is not None:
            shape = [1] * value.dim()
            shape[0], shape[site.pos_axis] = cols.shape[0], cols.shape[1]
            where = cols.reshape(shape).to(value.device)
    if iv.heads is not None:
        heads = torch.zeros(site.heads, dtype=torch.bool, device=value.device)
        heads[list(iv.heads)] = True
        shape = [1] * value.dim()
        shape[-2] = site.heads
        heads = heads.reshape(shape)
        where = heads if where is None else where & heads
    return where


_CACHE_NAMES = ("past_key_values", "cache", "past_key_value", "layer_past")  # spellings across versions


def _cache_length(kwargs: dict) -> int | None:
    """Tokens held by the KV cache passed under any argument name, or None when there is none."""
    for key, value in kwargs.items():
        if value is None:
            continue
        if hasattr(value, "get_seq_length"):
            return int(value.get_seq_length())
        if key in _CACHE_NAMES:
            try:  # legacy tuple cache: ((k, v), ...) with k [batch, heads, seq, d_head]
                return int(value[0][0].shape[-2])
            except (TypeError, IndexError, AttributeError):
                raise RuntimeError(
                    f"cannot read how many tokens the KV cache {key}={type(value).__name__} holds; avec needs it "
                    "to place token positions. Pass an attention_mask covering the cached tokens too."
                ) from None
    return None


def pass_offset(kwargs: dict, seq: int) -> int:
    """Absolute column of this forward pass's first column: how many tokens came before it.

    Read from what every transformers version passes rather than one argument's name: the attention
    mask's width minus the pass's length (generate extends the mask over cached tokens), else the
    cache positions, else the KV cache under whatever name it is passed, else the position ids.
    With none of these (no mask, no cache) the pass starts at column 0. Disagreeing sources raise.
    """
    mask = kwargs.get("attention_mask")
    cached = _cache_length(kwargs)
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        offset = int(mask.shape[1]) - seq
        if offset < 0:
            raise ValueError(f"the attention mask covers {mask.shape[1]} columns but the input has {seq}")
        # a sliding-window cache may hold fewer tokens than came before, never more
        if cached is not None and cached > offset:
            raise ValueError(
                f"the KV cache holds {cached} tokens but the attention mask covers only {mask.shape[1]} columns for "
                f"{seq} new ones; pass an attention mask over the cached tokens and the new ones"
            )
        positions = kwargs.get("cache_position")
        if isinstance(positions, torch.Tensor) and positions.numel() and int(positions.reshape(-1)[0]) != offset:
            raise ValueError(f"cache_position starts at {int(positions.reshape(-1)[0])} but the attention mask "
                             f"puts this pass at column {offset}; avec cannot tell where its tokens are")
        return offset
    positions = kwargs.get("cache_position")
    if isinstance(positions, torch.Tensor) and positions.numel():
        return int(positions.reshape(-1)[0])
    if cached is not None:
        return cached
    ids = kwargs.get("position_ids")
    if isinstance(ids, torch.Tensor) and ids.numel():
        return int(ids[..., 0].min())  # no mask: no padding, so every row starts at the same column
    return 0


def token_context(args: tuple, kwargs: dict, prompt_ctx: TokenContext | None,
                  prompt_ids: torch.Tensor | None = None) -> TokenContext:
    """Where this forward pass's columns sit in each prompt, from a transformer's forward arguments.

    Left padding is read from the attention mask's leading zeros; the offset from ``pass_offset``.
    A pass from column 0 whose token ids extend ``prompt_ids`` (generation without the KV cache
    re-reads the prompt and what it generated) keeps the prompt's lengths: its later columns are
    generated tokens, so ``-1`` still means the prompt's last token.
    """
    x = kwargs.get("input_ids")
    if x is None:
        x = kwargs.get("inputs_embeds")
    if x is None:
        x = next(a for a in args if isinstance(a, torch.Tensor))
    batch, seq = int(x.shape[0]), int(x.shape[1])
    offset = pass_offset(kwargs, seq)
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        whole = TokenContext.from_mask(mask)
        pad_left, real = whole.pad_left, whole.prompt_len
    else:
        pad_left = torch.zeros(batch, dtype=torch.long, device=x.device)
        real = torch.full((batch,), offset + seq, dtype=torch.long, device=x.device)
    ids = kwargs.get("input_ids")
    if (offset == 0 and prompt_ctx is not None and prompt_ids is not None and isinstance(ids, torch.Tensor)
            and ids.shape[0] == prompt_ids.shape[0] and ids.shape[1] > prompt_ids.shape[1]
            and torch.equal(ids[:, : prompt_ids.shape[1]], prompt_ids.to(ids.device))
            and torch.equal(pad_left.cpu(), prompt_ctx.pad_left.cpu())):
        return TokenContext(pad_left.to(x.device), prompt_ctx.prompt_len.to(x.device), 0, seq, continues=True)
    if offset > 0 and prompt_ctx is not None and prompt_ctx.batch == batch:
        prompt_len = prompt_ctx.prompt_len.to(pad_left.device)
    elif offset > 0:
        prompt_len = torch.full_like(real, 0) + offset - pad_left  # prompt seen before we attached
    else:
        prompt_len = real
    return TokenContext(pad_left.to(x.device), prompt_len.to(x.device), offset, seq)


@dataclass
class _Entry:
    site: Site
    edits: list[tuple[int, Intervention]]  # (index in the edits given to attach, intervention)
    read: bool
    sink: bool = False  # adds pending residual deltas to this module's output
    # dictionary roles at this point, in attach order: (dictionary, "read" | "write", encoder / target index)
    dictionaries: list[tuple["_LiveDictionary", str, int]] = field(default_factory=list)


def _apply(e: _Entry, value: torch.Tensor, ctx: TokenContext, state: HookState, track_use: bool) -> torch.Tensor:
    """An entry's interventions, in order, on its (viewed) value."""
    for i, iv in e.edits:
        where = _where(iv, e.site, value, ctx)
        if track_use and i not in state.used and (where is None or bool(where.any())):
            state.used.add(i)
        value = iv.edit(value, where, ctx, e.site)
    return value


def _record(e: _Entry, value: torch.Tensor, state: HookState, grad: bool) -> torch.Tensor:
    """Store an entry's (edited) value if it was asked for; with ``grad`` as a tensor that gradients
    can be taken with respect to (a leaf when nothing upstream requires them)."""
    if e.read:
        if grad and not value.requires_grad:
            value = value.detach().requires_grad_(True)
        state.store[e.site.name] = value
    return value


class _LiveDictionary:
    """One attached dictionary during a forward pass: the latents of its encoders as they fire (kept
    until its write points need them), and what flows on from its write points (see ``dictionary.py``)."""

    def __init__(self, d: AttachedDictionary, parts: dict[str, _Entry]):
        self.d, self.parts = d, parts
        self.x: dict[int, torch.Tensor] = {}
        self.z: dict[int, torch.Tensor] = {}       # latents as encoded in this pass
        self.edited: dict[int, torch.Tensor] = {}  # the same after the latents point's edits
        # a module with decode_targets(z, i) / decoder_bias(j) decodes each source once, to all its targets
        self.by_source = callable(getattr(d.module, "decode_targets", None)) and \
            callable(getattr(d.module, "decoder_bias", None))
        self.written: dict[tuple[str, int], torch.Tensor] = {}  # ("z" | "edited", source) -> [..., targets, d]

    def reset(self) -> None:  # a new forward pass: nothing of the last one may leak into it
        self.x.clear(), self.z.clear(), self.edited.clear(), self.written.clear()

    def _decode(self, j: int, which: str, x_skip: torch.Tensor | None) -> torch.Tensor:
        """Target j's reconstruction from the sources' latents as encoded (``which="z"``) or as edited."""
        d, latents = self.d, (self.z if which == "z" else self.edited)
        sources = d.sources(j)
        if not self.by_source:
            return d.decode(j, [latents[i] for i in sources], x_skip)
        module = d.module
        out = module.decoder_bias(j)
        for i in sources:
            key = (which, i)
            if key not in self.written:
                z_key = ("z", i)
                if which == "edited" and z_key in self.written and _detached_alias(latents[i], self.z[i]):
                    # the same values without a gradient (e.g. StopGradient): no second decode
                    self.written[key] = self.written[z_key].detach()
                else:
                    self.written[key] = module.decode_targets(latents[i], i)
            targets = module.targets(i) if callable(getattr(module, "targets", None)) else [j]
            out = out + self.written[key][..., targets.index(j), :]
        if x_skip is not None:
            skip = d.skip_part(j, x_skip)
            if skip is not None:
                out = out + skip
        return out

    def _point(self, name: str, value: torch.Tensor, ctx: TokenContext, state: HookState, grad: bool,
               track_use: bool) -> torch.Tensor:
        e = self.parts.get(name)
        if e is None:
            return value
        return _record(e, _apply(e, value, ctx, state, track_use), state, grad)

    def read(self, i: int, x: torch.Tensor, ctx: TokenContext, state: HookState, grad: bool, track_use: bool) -> None:
        z = self.d.encode(i, x)
        self.x[i], self.z[i] = x, z
        self.edited[i] = self._point(self.d.point("latents", i), z, ctx, state, grad, track_use)

    def write(self, j: int, y: torch.Tensor, ctx: TokenContext, state: HookState, grad: bool,
              track_use: bool) -> torch.Tensor:
        d = self.d
        sources = d.sources(j)
        missing = [d.reads[i] for i in sources if i not in self.z]
        if missing:
            raise RuntimeError(f"{d.point('recon', j)!r} needs the latents read at {missing[:3]}, which this run does "
                               "not compute (a run started part-way, start_at_layer?)")
        x_skip = self.x.get(j if d.cross_layer else 0)
        recon = self._decode(j, "z", x_skip)
        edited = recon if all(self.edited[i] is self.z[i] for i in sources) else self._decode(j, "edited", x_skip)
        new_recon = self._point(d.point("recon", j), edited, ctx, state, grad, track_use)
        error = (y - recon).detach()  # a constant: upstream gradients flow through the latents only
        new_error = self._point(d.point("error", j), error, ctx, state, grad, track_use)
        if d.splice == "recon":
            return new_recon.to(y.dtype)
        # recon + error, written so that unedited values give back y bit for bit
        exact = y if (new_recon is recon and new_error is error) else y + (new_recon - recon) + (new_error - error)
        if torch.is_grad_enabled() and (new_recon.requires_grad or new_error.requires_grad):
            live = new_recon + new_error  # the same value; carries d out / d recon = d out / d error = 1
            exact = exact.detach() + (live - live.detach())
        return exact.to(y.dtype)


def _detached_alias(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``a`` is ``b``'s very memory without a gradient (e.g. ``b.detach()``): the same values."""
    return (not a.requires_grad and a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
            and a.dtype == b.dtype and a.device == b.device)


def _needed(d: AttachedDictionary, parts: dict[str, _Entry], grad: bool) -> tuple[set[int], set[int]]:
    """(encoders, targets) of ``d`` that must run: those whose points are read or edited; every target
    that edited latents decode to (and, in a gradient run, that read latents decode to, so that they
    are on the path gradients take); every encoder those targets need; all of them for splice="recon"."""
    n_in, n_out = len(d.reads), len(d.writes)
    if d.splice == "recon":
        return set(range(n_in)), set(range(n_out))
    touched = {i for i in range(n_in) if d.point("latents", i) in parts}
    flowing = {i for i in touched if grad or parts[d.point("latents", i)].edits}
    targets = {j for j in range(n_out)
               if d.point("recon", j) in parts or d.point("error", j) in parts or flowing & set(d.sources(j))}
    sources = set(touched)
    for j in targets:
        sources.update(d.sources(j))
    return sources, targets


@contextmanager
def attach(
    root: nn.Module,
    edits: Sequence[tuple[Site, Intervention]] = (),
    reads: Sequence[Site] = (),
    *,
    tracker: str | None = None,
    grad: bool = False,
    track_use: bool = False,
    dictionaries: Sequence[tuple[AttachedDictionary, dict[str, Site]]] = (),
    frozen_norms: Sequence[str] = (),
    stop_early: bool = False,
) -> Iterator[HookState]:
    """Attach interventions and caches to ``root``'s modules for the length of the block.

    edits:   (site, intervention) pairs, applied in the given order at each site
    reads:   sites whose (post-intervention) value is recorded in ``state.store``
    tracker: module path whose forward arguments tell token positions (a transformer's base model)
    grad:    make recorded values part of the autograd graph, so gradients can be taken w.r.t. them
    track_use: record in ``state.used`` which edits selected at least one column (one sync a pass)
    dictionaries: (dictionary, sites of the model points it reads and writes) attached to the model (see
             ``dictionary.py``); a dictionary runs, as far as needed, when it splices its reconstruction in
             or one of its points is asked for
    stop_early: raise ``StopForward`` as soon as every site in ``reads`` is recorded: the rest of the
             network is not computed (the caller catches it; there is then no output)
    frozen_norms: module paths of LayerNorm / RMSNorm modules whose per-token scale is held constant for
             gradients (their outputs are unchanged): gradients see each norm as the affine map it is
             at this input, as attribution through a frozen model needs
    """
    state = HookState()
    modules = dict(root.named_modules())
    groups: dict[tuple[str, str], list[_Entry]] = {}
    by_site: dict[str, _Entry] = {}
    parts: dict[str, _Entry] = {}  # a dictionary's points: handled inside their parent's entry

    def entry(site: Site) -> _Entry:
        if site.parent is not None:
            return parts.setdefault(site.name, _Entry(site, [], False))
        if site.name not in by_site:
            by_site[site.name] = _Entry(site, [], False)
            groups.setdefault((site.module, site.kind), []).append(by_site[site.name])
        return by_site[site.name]

    for i, (site, iv) in enumerate(edits):
        entry(site).edits.append((i, iv))
    for site in reads:
        entry(site).read = True
    n_reads = len({s.name for s in reads})
    lives: list[_LiveDictionary] = []
    for d, points in dictionaries:
        sources, targets = _needed(d, parts, grad)
        if not sources and not targets:
            continue
        live = _LiveDictionary(d, parts)
        lives.append(live)
        roles = [(d.reads[i], "read", i) for i in sorted(sources)] + [(d.writes[j], "write", j) for j in sorted(targets)]
        for point, role, k in roles:  # an SAE's read and write at one point: read first
            entry(points[point]).dictionaries.append((live, role, k))
    for e in list(by_site.values()):
        if e.site.delta_to is not None:
            sinks = groups.setdefault((e.site.delta_to, "output"), [])
            if not any(s.sink for s in sinks):  # the delta must land before that output's own points
                sinks.insert(0, _Entry(Site(name=f"<delta:{e.site.delta_to}>", module=e.site.delta_to), [], False, sink=True))

    def make(entries: list[_Entry]):
        def run_entries(obj: Any) -> Any:
            for e in entries:
                site = e.site
                if e.sink:
                    delta = state.deltas.pop(site.module, None)
                    if delta is not None:
                        obj = _set(obj, site, _get(obj, site) + delta)
                    continue
                value = _get(obj, site)
                view = _view(value, site)
                ctx = state.ctx
                if ctx is None or site.pos_axis is None:
                    ctx = TokenContext.plain(int(value.shape[0]), 1, value.device)
                new = view
                new = _apply(e, new, ctx, state, track_use)
                new = _record(e, new, state, grad)
                for live, role, k in e.dictionaries:
                    if role == "read":
                        live.read(k, new, ctx, state, grad, track_use)
                    else:
                        new = live.write(k, new, ctx, state, grad, track_use)
                if stop_early and len(state.store) >= n_reads:
                    raise StopForward
                if new is not view or (grad and e.read and site.heads is not None):
                    # (a per-head view must itself flow on, or gradients w.r.t. it would be zero)
                    new_value = _unview(new, site)
                    if site.delta_to is not None:
                        d = new_value - value
                        prev = state.deltas.get(site.delta_to)
                        state.deltas[site.delta_to] = d if prev is None else prev + d
                    obj = _set(obj, site, new_value)
            return obj

        return run_entries

    handles = []
    try:
        if tracker is not None:

            def track(module, args, kwargs):
                state.ctx = token_context(args, kwargs, state.prompt_ctx, state.prompt_ids)
                if state.ctx.offset == 0 and not state.ctx.continues:
                    state.prompt_ctx = state.ctx
                    ids = kwargs.get("input_ids")
                    state.prompt_ids = ids.detach() if isinstance(ids, torch.Tensor) else None
                state.calls += 1
                state.deltas.clear()
                for live in lives:
                    live.reset()

            handles.append(modules[tracker].register_forward_pre_hook(track, with_kwargs=True))
        for path in frozen_norms:
            if path not in modules:
                raise KeyError(f"module {path!r} not found in the model")
            norm = ElementwiseNorm(modules[path])

            def freeze(module, args, output, norm=norm):
                if not torch.is_grad_enabled() or not isinstance(output, torch.Tensor):
                    return output
                x = next(a for a in args if isinstance(a, torch.Tensor))
                affine = norm.frozen(x, norm.scale(x).detach()).to(output.dtype)  # gain * center(x) / s, s constant
                return output.detach() + (affine - affine.detach())  # the module's value, the frozen map's gradient

            handles.append(modules[path].register_forward_hook(freeze))
        for (path, kind), entries in groups.items():
            if path not in modules:
                needed = [e.site.name for e in entries if e.dictionaries]
                if needed:  # a skipped layer (start_at_layer): say what needed it
                    raise RuntimeError(f"dictionary point(s) need {needed[:3]}, which this run does not compute (its "
                                       f"module {path!r} is not in the model: a run started part-way, start_at_layer?)")
                raise KeyError(f"module {path!r} not found in the model")
            fn = make(entries)
            if kind == "input":

                def pre_hook(module, args, kwargs, fn=fn):
                    return fn((args, kwargs))

                handles.append(modules[path].register_forward_pre_hook(pre_hook, with_kwargs=True))
            else:

                def post_hook(module, args, output, fn=fn):
                    return fn(output)

                handles.append(modules[path].register_forward_hook(post_hook))
        yield state
    finally:
        for h in handles:
            h.remove()
        state.deltas.clear()
        for live in lives:  # latents of the last pass are not kept alive past the block
            live.reset()
