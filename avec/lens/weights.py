"""Read the weights that write to (and read from) the residual stream, in one layout for every family.

Hugging Face stores projections two ways: ``nn.Linear`` keeps ``weight [out, in]``, GPT-2's ``Conv1D``
keeps ``weight [in, out]``. Everything here returns ``[in, out]`` views split the way interpretability
needs them (per head, per neuron), so callers never care which family they hold.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.lm import LanguageModel
from ..core.norms import ElementwiseNorm  # noqa: F401  (used as W.ElementwiseNorm)


def _in_out(module: nn.Module) -> torch.Tensor:
    """A projection's weight as ``[in, out]`` (nn.Linear stores [out, in]; GPT-2's Conv1D [in, out])."""
    w = module.weight
    return w.T if isinstance(module, nn.Linear) else w


def layer_module(lm: LanguageModel, layer: int, path: str) -> nn.Module:
    return lm.get_module(f"{lm.arch.layers}.{layer}.{path}")


def W_O(lm: LanguageModel, layer: int) -> torch.Tensor:
    """Each head's slice of the attention output projection ``[n_heads, d_head, d_model]``."""
    return _in_out(layer_module(lm, layer, lm.arch.attn_o)).reshape(lm.n_heads, lm.d_head, -1)


def b_O(lm: LanguageModel, layer: int) -> torch.Tensor | None:
    """The output projection's bias ``[d_model]`` (None when it has none)."""
    return getattr(layer_module(lm, layer, lm.arch.attn_o), "bias", None)


def W_out(lm: LanguageModel, layer: int) -> torch.Tensor:
    """The MLP down projection ``[d_mlp, d_model]``: row n is what neuron n writes per unit activation."""
    return _in_out(layer_module(lm, layer, lm.arch.mlp_down))


def b_out(lm: LanguageModel, layer: int) -> torch.Tensor | None:
    return getattr(layer_module(lm, layer, lm.arch.mlp_down), "bias", None)


def W_V(lm: LanguageModel, layer: int) -> torch.Tensor:
    """Each head's value projection ``[n_heads, d_model, d_head]`` (grouped-query heads share theirs)."""
    if lm.arch.family == "gpt2":  # fused c_attn [d_model, 3 * d_model]: q | k | v
        w = _in_out(layer_module(lm, layer, f"{lm.arch.attn}.c_attn"))
        v = w[:, 2 * lm.d_model:]
        return v.reshape(lm.d_model, lm.n_heads, lm.d_head).permute(1, 0, 2)
    v = _in_out(layer_module(lm, layer, f"{lm.arch.attn}.v_proj"))  # [d_model, n_kv * d_head]
    n_kv = v.shape[1] // lm.d_head
    v = v.reshape(lm.d_model, n_kv, lm.d_head).permute(1, 0, 2)
    return v.repeat_interleave(lm.n_heads // n_kv, dim=0)


def post_norm(lm: LanguageModel, layer: int, which: str) -> nn.Module | None:
    """Gemma's norm applied to a sublayer's output before it joins the residual (None elsewhere).

    which: "attn" or "mlp". Detected from the adapter: the module whose output is ``attn_out`` /
    ``mlp_out`` is a norm rather than the sublayer itself.
    """
    path = lm.arch.attn_out if which == "attn" else lm.arch.mlp_out
    sublayer = lm.arch.attn if which == "attn" else lm.arch.mlp_down.rsplit(".", 1)[0]
    return None if path == sublayer else layer_module(lm, layer, path)


def has_post_norms(lm: LanguageModel) -> bool:
    return post_norm(lm, 0, "attn") is not None or post_norm(lm, 0, "mlp") is not None


def unembed_bias(lm: LanguageModel) -> torch.Tensor | None:
    return getattr(lm.get_module(lm.arch.unembed), "bias", None)


def softcap(lm: LanguageModel) -> float | None:
    """Gemma 2's final logit soft-capping (applied after the ``logits`` hook point), or None."""
    return getattr(lm.config, "final_logit_softcapping", None)


