"""Ablation: zero, mean and directional, as interventions; and weight orthogonalization.

The helpers return core interventions, so an ablation is ``lm.run(inputs, interventions=[...])`` or
``with lm.intervene(...)`` (generation included). Heads are selected on ``attn.z`` with ``heads=``,
neurons on ``mlp.post`` with ``neurons=``.

Weight orthogonalization (Arditi et al. 2024) removes a direction ``d`` from everything written to the
residual stream by editing weights: the token (and GPT-2 position) embeddings, every attention output
projection and every MLP down projection, biases included: ``W <- W - d d^T W``. The residual then
never has a ``d`` component, exactly as with ``directional_ablation(..., where="residual")`` hooks; the
test suite checks the two agree. Gemma writes through post-norms (``attn_out = norm(o_proj(z))``):
editing ``o_proj`` does not remove ``d`` from the norm's output, so orthogonalization refuses Gemma and
directional ablation by hooks is the way there.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import nn

from ..core.interventions import Apply, Intervention, ProjectOut, SetValue, Zero
from ..models.lm import LanguageModel


def _neuron_mask(lm: LanguageModel, hook: str, neurons: Sequence[int]) -> torch.Tensor:
    site = lm.site(hook)
    if site.width is None or len(site.width) != 1 or site.heads is not None:
        raise ValueError(f"neurons= selects along the last axis of a [batch, pos, width] point such as mlp.post; "
                         f"{hook!r} is {site.layout}")
    width = site.width[0]
    neurons = [int(n) for n in neurons]
    if not neurons:
        raise ValueError("neurons= is empty; give at least one neuron index")
    bad = [n for n in neurons if not 0 <= n < width]
    if bad:
        raise ValueError(f"neuron(s) {bad} out of range at {hook!r}: width {width} (0..{width - 1})")
    mask = torch.zeros(width, dtype=torch.bool)
    mask[neurons] = True
    return mask


def zero_ablation(lm: LanguageModel, hook: str, *, heads: Any = None, neurons: Sequence[int] | None = None,
                  positions: Any = None) -> Intervention:
    """Set the activation at ``hook`` to zero (only ``heads`` on attn.z / ``neurons`` if given)."""
    if neurons is not None:
        mask = _neuron_mask(lm, hook, neurons)
        return Apply(hook, fn=lambda v, ctx: v.masked_fill(mask.to(v.device), 0), positions=positions)
    return Zero(hook, heads=heads, positions=positions)


def mean_activation(lm: LanguageModel, reference: Any, hook: str, per_position: bool = False) -> torch.Tensor:
    """Mean of ``hook`` over a reference set of prompts (real tokens only, padding excluded).

    Returns ``[*width]`` overall, or ``[max_len, *width]`` per prompt position (position i averaged over
    the prompts that have a token there).
    """
    if reference is None or (isinstance(reference, (list, tuple)) and len(reference) == 0) or \
            (isinstance(reference, torch.Tensor) and reference.numel() == 0):
        raise ValueError("the reference set for mean ablation is empty; give at least one prompt")
    name = lm.resolve(hook)[0]
    with torch.no_grad():
        run = lm.run(reference, cache=[name])
    value = run.cache[name].float()  # [batch, pos, *width]
    mask = run.attention_mask.float().reshape(run.attention_mask.shape + (1,) * (value.dim() - 2)).to(value.device)
    if per_position:
        return ((value * mask).sum(0) / mask.sum(0).clamp(min=1)).to(run.cache[name].dtype)
    return ((value * mask).sum((0, 1)) / mask.sum()).to(run.cache[name].dtype)


def mean_ablation(lm: LanguageModel, hook: str, reference: Any, *, per_position: bool = False, heads: Any = None,
                  neurons: Sequence[int] | None = None, positions: Any = None) -> Intervention:
    """Replace the activation at ``hook`` by its mean over ``reference`` prompts (see ``mean_activation``)."""
    mean = mean_activation(lm, reference, hook, per_position)
    if neurons is not None:
        mask = _neuron_mask(lm, hook, neurons)
        if per_position:
            def fn(v, ctx, m=mean, nm=mask):
                pos = ctx.positions().clamp(0, m.shape[0] - 1).to(v.device)  # [batch, seq]
                return torch.where(nm.to(v.device), m.to(v)[pos], v)
        else:
            def fn(v, ctx, m=mean, nm=mask):
                return torch.where(nm.to(v.device), m.to(v), v)
        return Apply(hook, fn=fn, positions=positions)
    return SetValue(hook, value=mean, heads=heads, positions=positions)


def _unit(lm: LanguageModel, direction: torch.Tensor) -> torch.Tensor:
    if not isinstance(direction, torch.Tensor):
        direction = torch.as_tensor(direction, dtype=torch.float32)
    if direction.dim() != 1 or direction.shape[0] != lm.d_model:
        raise ValueError(f"the direction must be a vector of width d_model = {lm.d_model}, got shape "
                         f"{list(direction.shape)}")
    norm = direction.float().norm()
    if not torch.isfinite(norm) or norm < 1e-12:
        raise ValueError("the direction has zero (or non-finite) norm, so it cannot be normalised and removed")
    return direction.float() / norm


def directional_ablation(lm: LanguageModel, direction: torch.Tensor, where: str = "residual",
                         layers: Iterable[int] | None = None) -> list[Intervention]:
    """Project ``direction`` (``[d_model]``, any length) out of the residual stream.

    where: "residual" - out of every resid_pre, resid_mid and the last resid_post (Arditi et al.'s hooks);
           "writes"   - out of everything written to it (embed, every attn_out and mlp_out).
    layers: restrict to these layers (default all; with "residual" the final resid_post is always included).
    """
    d = _unit(lm, direction)
    layers = range(lm.n_layers) if layers is None else [int(l) for l in layers]
    if where == "residual":
        hooks = [f"blocks.{l}.{p}" for l in layers for p in ("resid_pre", "resid_mid")]
        hooks.append(f"blocks.{lm.n_layers - 1}.resid_post")
    elif where == "writes":
        hooks = ["embed"] + [f"blocks.{l}.{p}" for l in layers for p in ("attn_out", "mlp_out")]
    else:
        raise ValueError(f"where must be 'residual' or 'writes', got {where!r}")
    return [ProjectOut(h, direction=d) for h in hooks]


def _writers(lm: LanguageModel) -> list[nn.Module]:
    """Modules whose weights (and biases) write to the residual stream."""
    if lm.arch.family == "gemma":
        raise NotImplementedError(
            "weight orthogonalization is not exact on Gemma: attention and MLP outputs pass through "
            "post-norms before the residual, so editing o_proj/down_proj does not remove the direction from "
            "what is written. Use directional_ablation(lm, direction) (hooks) instead."
        )
    mods = [lm.hf.get_input_embeddings()]
    if lm.arch.family == "gpt2":
        mods.append(lm.hf.transformer.wpe)  # learned positions are added to the residual too
    for l in range(lm.n_layers):
        layer = f"{lm.arch.layers}.{l}"
        mods += [lm.get_module(f"{layer}.{lm.arch.attn_o}"), lm.get_module(f"{layer}.{lm.arch.mlp_down}")]
    return mods


def _orthogonal(module: nn.Module, d: torch.Tensor) -> dict[str, torch.Tensor]:
    """New weight/bias tensors for ``module`` with the d_model axis projected off ``d``."""
    w = module.weight
    dd = d.to(w.device, torch.float32)
    if isinstance(module, nn.Embedding) or (not isinstance(module, nn.Linear)):
        # Embedding [vocab, d_model] and GPT-2 Conv1D [in, d_model]: d_model is the last axis
        wf = w.float()
        new = {"weight": (wf - (wf @ dd)[:, None] * dd).to(w.dtype)}
    else:  # nn.Linear [d_model, in]
        wf = w.float()
        new = {"weight": (wf - dd[:, None] * (dd @ wf)[None]).to(w.dtype)}
    bias = getattr(module, "bias", None)
    if isinstance(bias, torch.Tensor):
        bf = bias.float()
        new["bias"] = (bf - (bf @ dd) * dd).to(bias.dtype)
    return new


@contextmanager
def orthogonalize(lm: LanguageModel, direction: torch.Tensor) -> Iterator[LanguageModel]:
    """Within the block, ``lm``'s residual writers have ``direction`` projected out of their weights.

    Edited tensors are installed as new Parameters and the originals put back on exit (exception or
    not). Tied unembeddings keep the original embedding matrix: only what is *written* changes.
    """
    d = _unit(lm, direction)
    saved: list[tuple[nn.Module, str, nn.Parameter]] = []
    try:
        with torch.no_grad():
            for module in _writers(lm):
                for name, tensor in _orthogonal(module, d).items():
                    saved.append((module, name, getattr(module, name)))
                    setattr(module, name, nn.Parameter(tensor, requires_grad=False))
        yield lm
    finally:
        for module, name, param in reversed(saved):
            setattr(module, name, param)


def orthogonalized(lm: LanguageModel, direction: torch.Tensor) -> LanguageModel:
    """A copy of ``lm`` with ``direction`` removed from its weights for good (the original is untouched)."""
    d = _unit(lm, direction)
    _writers(lm)  # refuse unsupported families before copying anything
    hf = copy.deepcopy(lm.hf)
    out = LanguageModel(hf, lm.tokenizer, name=f"{lm.name}-orthogonalized", arch=lm.arch)
    with torch.no_grad():
        for module in _writers(out):
            for name, tensor in _orthogonal(module, d).items():
                setattr(module, name, nn.Parameter(tensor, requires_grad=False))
    return out
