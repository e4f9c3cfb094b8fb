"""Activation patching, batched: every patch configuration is a batch row of one forward pass.

Denoising (the default): run the corrupted prompt and copy in the clean run's activation at one cell
(a layer and position, a layer, a head, ...); the normalised metric says how much of the clean
behaviour that single cell restores (0 = corrupted, 1 = clean). ``direction="noise"`` runs the clean
prompt and copies the corrupted activation in (same normalisation: a cell that matters drops toward 0).

Other libraries run one forward pass per cell. Here the corrupted input is repeated along the batch
axis, each row carries its own patch (a per-row position / head mask), and cells are processed in
chunks of ``chunk_size`` to bound memory; the values equal the one-at-a-time loop (``batched=False``).
A row patched at layer ``l`` computes layers ``< l`` exactly as the unpatched run did, so each chunk
(cells in layer order) starts at its first layer from the unpatched run's cached residual
(``LanguageModel.run(start_at_layer=...)``): a layer x position sweep does about half the layer work.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from tqdm.auto import tqdm

from ..core.interventions import Apply, Patch
from ..core.positions import At, Mask
from ..models.lm import LanguageModel
from ._pairs import Pair, logits_view, measure, prepare
from .metrics import Metric, evaluate
from .result import PatchingResult

POINTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "attn.z", "attn.q", "attn.k", "attn.v")
GRIDS = {  # the grids each point supports; the first is the default
    "resid_pre": ("position", "layer"),
    "resid_mid": ("position", "layer"),
    "resid_post": ("position", "layer"),
    "attn_out": ("layer", "position"),
    "mlp_out": ("layer", "position"),
    "attn.z": ("head", "head_position"),
    "attn.q": ("head", "head_position"),
    "attn.k": ("head", "head_position"),  # k and v: the key-value heads (fewer with grouped-query attention)
    "attn.v": ("head", "head_position"),
}
PER_HEAD = ("attn.z", "attn.q", "attn.k", "attn.v")


@dataclass(frozen=True)
class Grid:
    """The cells of a sweep: ``cells[i] = (layer, position or None, head or None)``."""

    point: str
    by: str
    layers: tuple[int, ...]
    shape: tuple[int, ...]
    axes: tuple[str, ...]
    labels: tuple[tuple[str, ...], ...]
    cells: tuple[tuple[int, int | None, int | None], ...]

    def hook(self, layer: int) -> str:
        return f"blocks.{layer}.{self.point}"


def make_grid(lm: LanguageModel, point: str, by: str | None, seq: int, pos_labels: tuple[str, ...],
              layers: Iterable[int] | None = None) -> Grid:
    if point in ("heads", "z"):
        point = "attn.z"
    if point not in GRIDS:
        raise ValueError(f"cannot patch {point!r}; patchable points: {', '.join(POINTS)}")
    by = by or GRIDS[point][0]
    if by not in GRIDS[point]:
        raise ValueError(f"{point} can be patched by {' or '.join(GRIDS[point])}, not {by!r}")
    layers = tuple(range(lm.n_layers)) if layers is None else tuple(int(l) for l in layers)
    bad = [l for l in layers if not 0 <= l < lm.n_layers]
    if bad or not layers:
        raise ValueError(f"layers {bad or '[]'} invalid: the model has layers 0..{lm.n_layers - 1}")
    if point in PER_HEAD and f"blocks.0.{point}" not in lm.hook_points:
        raise ValueError(f"{lm.name} has no {point} hook point (e.g. GPT-2's fused qkv projection); "
                         f"patchable per-head points here: {', '.join(p for p in PER_HEAD if f'blocks.0.{p}' in lm.hook_points)}")
    n_heads = lm.site(f"blocks.0.{point}").heads if point in PER_HEAD else lm.n_heads
    lab_l = tuple(str(l) for l in layers)
    lab_h = tuple(str(h) for h in range(n_heads))
    if by == "layer":
        cells = [(l, None, None) for l in layers]
        shape, axes, labels = (len(layers),), ("layer",), (lab_l,)
    elif by == "position":
        cells = [(l, p, None) for l in layers for p in range(seq)]
        shape, axes, labels = (len(layers), seq), ("layer", "position"), (lab_l, pos_labels)
    elif by == "head":
        cells = [(l, None, h) for l in layers for h in range(n_heads)]
        shape, axes, labels = (len(layers), n_heads), ("layer", "head"), (lab_l, lab_h)
    else:
        cells = [(l, p, h) for l in layers for h in range(n_heads) for p in range(seq)]
        shape, axes, labels = (len(layers), n_heads, seq), ("layer", "head", "position"), (lab_l, lab_h, pos_labels)
    return Grid(point, by, layers, shape, axes, labels, tuple(cells))


def _chunk_interventions(grid: Grid, chunk, source: dict[str, torch.Tensor], batch: int, seq: int):
    """One intervention per layer touched by this chunk; row ``i * batch + b`` carries cell ``i``."""
    rows = len(chunk) * batch
    by_layer: dict[int, list[tuple[int, int | None, int | None]]] = {}
    for i, (l, p, h) in enumerate(chunk):
        by_layer.setdefault(l, []).append((i, p, h))
    out = []
    for l, items in by_layer.items():
        hook = grid.hook(l)
        src = source[hook]  # [batch, seq, ...] from the source run
        reps = [len(chunk)] + [1] * (src.dim() - 1)
        src_rows = src.repeat(*reps)  # [rows, seq, ...]
        if grid.point in PER_HEAD:
            mask = torch.zeros(rows, seq, src.shape[2], 1, dtype=torch.bool, device=src.device)
            for i, p, h in items:
                mask[i * batch:(i + 1) * batch, slice(None) if p is None else p, h] = True
            # per-row heads: Patch's heads= is one set for the whole batch, so this is an Apply
            out.append(Apply(hook, fn=lambda v, ctx, m=mask, s=src_rows: torch.where(m, s.to(v.dtype), v)))
        else:
            mask = torch.zeros(rows, seq, dtype=torch.bool)
            for i, p, _ in items:
                mask[i * batch:(i + 1) * batch, slice(None) if p is None else p] = True
            out.append(Patch(hook, source=src_rows, positions=Mask(mask)))
    return out


def activation_patching(lm: LanguageModel, clean: Any, corrupted: Any, point: str = "resid_pre", by: str | None = None,
                        *, metric: Metric | None = None, answer: Any = None, wrong: Any = None,
                        layers: Iterable[int] | None = None, direction: str = "denoise", chunk_size: int = 32,
                        batched: bool = True, progress: bool | Callable[[int, int], Any] = False) -> PatchingResult:
    """Patch every cell of a grid and score each patched run.

    clean, corrupted: prompts (or token ids ``[batch, pos]``) of the same token length, pair by pair
    point:   resid_pre | resid_mid | resid_post | attn_out | mlp_out | attn.z (heads) | attn.q / attn.k /
             attn.v (per query head / per key-value head)
    by:      "position" (layer x position), "layer" (all positions at once), "head" (layer x head,
             all positions), "head_position" (layer x head x position); defaults per point
    metric:  a function of a Run returning a scalar tensor; or answer=/wrong= for a logit difference
    direction: "denoise" (patch clean into corrupted) or "noise" (corrupted into clean)
    chunk_size: cells per forward pass (rows = chunk_size x number of prompt pairs)
    batched: False runs the one-forward-per-cell loop (the reference; slower)
    progress: True shows a tqdm bar; a function ``progress(done, total)`` is called with the cells done
              after each forward pass (e.g. to show progress in a page)
    """
    if direction not in ("denoise", "noise"):
        raise ValueError(f"direction must be 'denoise' or 'noise', got {direction!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    t0 = time.perf_counter()
    pair = prepare(lm, clean, corrupted, metric, answer, wrong)
    grid = make_grid(lm, point, by, pair.seq, pair.labels, layers)
    base_ids, base_mask = (pair.corrupt_ids, pair.corrupt_mask) if direction == "denoise" \
        else (pair.clean_ids, pair.clean_mask)
    # the baseline runs cache the patched points (source) and each layer's input residual (where
    # a chunk of the sweep starts)
    hooks = list(dict.fromkeys([grid.hook(l) for l in grid.layers] + [f"blocks.{l}.resid_pre" for l in grid.layers]))
    clean_run, corrupt_run = measure(lm, pair, hooks)
    source_run, base_run = (clean_run, corrupt_run) if direction == "denoise" else (corrupt_run, clean_run)
    with torch.no_grad():
        raw = _sweep(lm, grid, pair, source_run, base_run, base_ids, base_mask, chunk_size, progress) if batched \
            else _loop(lm, grid, pair, source_run, base_ids, base_mask, progress)
    raw = raw.reshape(grid.shape)
    return PatchingResult(pair.normalise(raw), raw, grid.axes, grid.labels, grid.point, "activation", direction,
                          pair.clean_metric, pair.corrupted_metric, lm.name, time.perf_counter() - t0)


def _steps(progress: Any, total: int, desc: str):
    """``(bar, tell)``: a tqdm bar shown when ``progress is True``; ``tell(done)`` calls a progress function."""
    bar = tqdm(total=total, desc=desc, disable=progress is not True)
    report = progress if callable(progress) else None
    done = [0]  # a disabled bar does not count

    def tell(step: int) -> None:
        bar.update(step)
        done[0] += step
        if report is not None:
            report(done[0], total)

    return bar, tell


def _sweep(lm, grid: Grid, pair: Pair, source_run, base_run, ids, mask, chunk_size: int, progress: Any) -> torch.Tensor:
    B, seq = pair.batch, pair.seq
    source = {h: source_run.cache[h] for h in (grid.hook(l) for l in grid.layers)}
    starts = base_run.cache  # the unpatched run's residual entering each layer: a chunk starts there
    order = sorted(range(len(grid.cells)), key=lambda i: grid.cells[i][0])  # layer-major, stable
    values: list[torch.Tensor | None] = [None] * len(grid.cells)
    chunks = [order[i:i + chunk_size] for i in range(0, len(order), chunk_size)]
    keep = pair.forward_kwargs()
    bar, tell = _steps(progress, len(grid.cells), f"patching {grid.point}")
    for chunk in chunks:
        k = len(chunk)
        cells = [grid.cells[i] for i in chunk]
        ivs = _chunk_interventions(grid, cells, source, B, seq)
        rows_ids, rows_mask = ids.repeat(k, 1), mask.repeat(k, 1)
        first = min(l for l, _, _ in cells)
        start = starts[f"blocks.{first}.resid_pre"].repeat(k, 1, 1)
        logits = lm.run({"input_ids": rows_ids, "attention_mask": rows_mask}, interventions=ivs,
                        start_at_layer=first, start_resid=start, **keep).logits
        for i, cell in enumerate(chunk):
            sl = slice(i * B, (i + 1) * B)
            values[cell] = evaluate(pair.metric, logits_view(lm, logits[sl], rows_ids[sl], rows_mask[sl])).float().cpu()
        tell(k)
    bar.close()
    return torch.stack(values)


def _loop(lm, grid: Grid, pair: Pair, source_run, ids, mask, progress: Any) -> torch.Tensor:
    """The reference: one forward pass per cell with the core's plain ``Patch``."""
    values = []
    bar, tell = _steps(progress, len(grid.cells), f"patching {grid.point} (loop)")
    for l, p, h in grid.cells:
        iv = Patch(grid.hook(l), source=source_run, positions=None if p is None else At((p,)),
                   heads=None if h is None else (h,))
        run = lm.run({"input_ids": ids, "attention_mask": mask}, interventions=[iv])
        values.append(evaluate(pair.metric, run).float().cpu())
        tell(1)
    bar.close()
    return torch.stack(values)
