"""Activations for probing: one token position of each prompt, at every (or chosen) layer, in batched
runs that cache only those hook points at only that position.

Prompts are sorted by token length before chunking, so a chunk pads to nearly its own length (less
wasted compute), and the rows are put back in the caller's order.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..core.positions import At, columns, uncovered_rows


@dataclass(frozen=True)
class Activations:
    """x: ``[n_layers, n, d_model]`` (layer ``layers[i]`` in row i), in the inputs' order.

    point:    the hook point family read (``resid_post`` -> ``blocks.{l}.resid_post``)
    position: the prompt-relative token index (-1 = each prompt's last real token)
    """

    x: torch.Tensor
    layers: tuple[int, ...]
    point: str = "resid_post"
    position: int = -1
    model_id: str = ""
    seconds: float = float("nan")

    def __post_init__(self):
        if self.x.dim() != 3 or self.x.shape[0] != len(self.layers):
            raise ValueError(f"x must be [n_layers={len(self.layers)}, n, d_model], got {list(self.x.shape)}")

    def hook(self, layer: int) -> str:
        return f"blocks.{layer}.{self.point}"

    def at(self, layer: int) -> torch.Tensor:
        """``[n, d_model]`` at one layer (a model layer number, not a row index)."""
        if layer not in self.layers:
            raise KeyError(f"layer {layer} was not collected; have {list(self.layers)}")
        return self.x[self.layers.index(layer)]

    def subset(self, index: Sequence[int] | torch.Tensor) -> "Activations":
        idx = torch.as_tensor(index, dtype=torch.long)
        return Activations(self.x[:, idx], self.layers, self.point, self.position, self.model_id, self.seconds)

    def __len__(self) -> int:
        return int(self.x.shape[1])


def _texts(inputs: Any) -> Any:
    if hasattr(inputs, "texts") and hasattr(inputs, "labels"):  # a Labelled set
        return list(inputs.texts)
    if isinstance(inputs, str):
        return [inputs]
    return inputs


def _check_position(position: int, lengths: torch.Tensor, texts: Sequence[str] | None) -> None:
    missing = uncovered_rows(columns(At((position,)), lengths))  # the rule the hooks use when caching there
    if missing:
        i = missing[0]
        what = f"prompt {i} ({texts[i]!r})" if texts is not None else f"row {i}"
        raise ValueError(f"position {position} is beyond {what}, which has {int(lengths[i])} tokens; "
                         f"use a position every prompt has (e.g. -1, the last token)")


def collect(lm: Any, inputs: Sequence[str] | torch.Tensor | Any, layers: Sequence[int] | None = None, *,
            point: str = "resid_post", position: int = -1, batch_size: int = 32,
            dtype: torch.dtype = torch.float32, progress: bool = False) -> Activations:
    """Activations of ``point`` at token ``position`` for every input, at each of ``layers`` (default: all).

    inputs:   prompts (strings, or a ``Labelled`` set), or token ids ``[n, seq]`` (no padding)
    position: prompt-relative index; -1 = each prompt's last real token (right padding handled by core)
    returns   ``Activations`` with x ``[n_layers, n, d_model]`` (float32 on the CPU by default)

    Memory: only ``len(layers) x n x d_model`` values are kept (plus one chunk's forward pass).
    """
    if isinstance(position, bool) or not isinstance(position, int):
        raise TypeError(f"position must be one int (e.g. -1 for the last token), got {position!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    layers = tuple(range(lm.n_layers)) if layers is None else tuple(int(l) for l in layers)
    if not layers:
        raise ValueError("no layers to collect")
    bad = [l for l in layers if not 0 <= l < lm.n_layers]
    if bad:
        raise ValueError(f"layer(s) {bad} out of range: the model has layers 0..{lm.n_layers - 1}")
    hooks = [f"blocks.{l}.{point}" for l in layers]
    inputs = _texts(inputs)
    start = time.perf_counter()
    if isinstance(inputs, torch.Tensor):
        ids_all = inputs if inputs.dim() == 2 else inputs[None]
        n = ids_all.shape[0]
        lengths = torch.full((n,), ids_all.shape[1])
        _check_position(position, lengths, None)
        order = torch.arange(n)
        texts = None
    else:
        texts = list(inputs)
        if not texts:
            raise ValueError("no inputs to collect activations for")
        if lm.tokenizer is None:
            raise ValueError("this model has no tokenizer: pass token ids [n, seq] instead of strings")
        n = len(texts)
        _, mask_all = lm.tokenize(texts)  # lengths as the model sees them (special tokens included)
        lengths = mask_all.sum(1).cpu()
        _check_position(position, lengths, texts)
        # sort by length so that each chunk pads little; core handles what padding remains
        order = torch.argsort(lengths, stable=True)
    # the logits are not needed: keep one position (a [batch, pos, vocab] tensor is ~100 MB a chunk for SmolLM2)
    extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(lm.module.forward).parameters else {}
    chunks = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="activations", unit="batch")
    out = None
    for chunk in chunks:
        if texts is None:
            batch = ids_all[chunk]
            run_input: Any = batch
        else:
            ids, mask = lm.tokenize([texts[i] for i in chunk])
            run_input = {"input_ids": ids, "attention_mask": mask}
        with torch.no_grad():
            run = lm.run(run_input, cache=hooks, positions=position, cache_device="cpu", cache_dtype=dtype, **extra)
        acts = torch.stack([run.cache[h] for h in hooks])[:, :, 0]  # [L, b, d]
        del run  # drop this chunk's logits before the next forward pass
        if out is None:
            out = torch.empty(len(layers), n, acts.shape[-1], dtype=dtype)
        out[:, chunk] = acts
    return Activations(out, layers, point, position, lm.model_id, time.perf_counter() - start)
