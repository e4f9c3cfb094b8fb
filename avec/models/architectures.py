"""Architecture adapters: canonical transformer hook points -> the modules of a Hugging Face model.

An adapter is data, not code: module paths for one family. Hook points and their meaning:

    embed                      what enters block 0 (token embedding; + position embedding for GPT-2;
                               Gemma's scaled embedding)
    blocks.{l}.resid_pre       the residual stream entering block l            [batch, pos, d_model]
    blocks.{l}.attn.q/k/v      query/key/value projections' outputs, per head  [batch, pos, head, d_head]
                               (before rotary embedding and Qwen3/Gemma 3's q/k norms; k and v have the
                               model's key-value heads: with grouped-query attention fewer than q's)
    blocks.{l}.attn.pattern    attention probabilities (read-only; eager)      [batch, head, query, key]
    blocks.{l}.attn.z          each head's output before the output projection [batch, pos, head, d_head]
    blocks.{l}.attn_out        what attention adds to the residual (after Gemma's post-norm)
    blocks.{l}.resid_mid       residual after attention, before the MLP (edits reach the MLP *and* the
                               residual that flows on)
    blocks.{l}.mlp_in          the MLP's input: the pre-MLP norm's output, gain (and bias) applied
                               (edits reach the MLP only; circuit-tracer's ``mlp.hook_in``; TransformerLens's
                               ``ln2.hook_normalized`` is the same before the gain)
    blocks.{l}.mlp.pre         MLP pre-activation (gate projection's output)  [batch, pos, d_mlp]
    blocks.{l}.mlp.pre_linear  gated MLPs: the up projection's output; post = act(pre) * pre_linear
    blocks.{l}.mlp.post        MLP neurons, the input of its down projection  [batch, pos, d_mlp]
    blocks.{l}.mlp_out         what the MLP adds to the residual (after Gemma's post-norm)
    blocks.{l}.resid_post      the residual stream leaving block l
    final_norm                 the final norm's output
    logits                     the unembedding's output (before Gemma 2's final soft-capping)

So ``resid_post[l] == resid_pre[l] + attn_out[l] + mlp_out[l]`` and ``resid_pre[l+1] == resid_post[l]``.

To add a family: build an ``Architecture`` with its module paths and ``register_architecture`` it
for its ``config.model_type`` values (the tests in ``tests/test_architectures.py`` show how to check
those identities on a tiny random config).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..core.hookpoints import HookPointTable, Site


@dataclass(frozen=True)
class Architecture:
    """Module paths of one decoder family. Per-layer paths are relative to the layer."""

    family: str
    base: str  # the model body, whose forward arguments carry the attention mask and KV cache
    layers: str  # the ModuleList of decoder layers
    embed: str  # module whose output enters block 0
    attn: str  # attention module (returns (output, weights))
    attn_out: str  # module whose output is exactly what attention adds to the residual
    mlp_in: str  # the MLP's pre-norm: its input is resid_mid, its output the hook point mlp_in
    mlp_out: str  # module whose output is exactly what the MLP adds to the residual
    attn_o: str  # attention output projection (its input is z)
    mlp_down: str  # MLP down projection (its input is the neurons)
    final_norm: str
    unembed: str = "lm_head"
    attn_norm: str = "input_layernorm"
    # optional points (None: the family has no separate module for them, e.g. GPT-2's fused qkv)
    attn_q: str | None = "self_attn.q_proj"
    attn_k: str | None = "self_attn.k_proj"
    attn_v: str | None = "self_attn.v_proj"
    mlp_pre: str | None = "mlp.gate_proj"
    mlp_pre_linear: str | None = "mlp.up_proj"


LLAMA = Architecture(
    family="llama",
    base="model",
    layers="model.layers",
    embed="model.embed_tokens",
    attn="self_attn",
    attn_out="self_attn",
    mlp_in="post_attention_layernorm",
    mlp_out="mlp",
    attn_o="self_attn.o_proj",
    mlp_down="mlp.down_proj",
    final_norm="model.norm",
)

GEMMA = Architecture(  # Gemma 2 / 3: sandwich norms; attn_out and mlp_out are after the post-norms
    family="gemma",
    base="model",
    layers="model.layers",
    embed="model.embed_tokens",  # Gemma*ScaledWordEmbedding: the sqrt(d_model) scale is inside
    attn="self_attn",
    attn_out="post_attention_layernorm",
    mlp_in="pre_feedforward_layernorm",
    mlp_out="post_feedforward_layernorm",
    attn_o="self_attn.o_proj",
    mlp_down="mlp.down_proj",
    final_norm="model.norm",
)

GPT2 = Architecture(  # fused qkv (Conv1D c_attn); learned positions added before dropout
    family="gpt2",
    base="transformer",
    layers="transformer.h",
    embed="transformer.drop",
    attn="attn",
    attn_out="attn",
    mlp_in="ln_2",
    mlp_out="mlp",
    attn_o="attn.c_proj",
    mlp_down="mlp.c_proj",
    final_norm="transformer.ln_f",
    attn_norm="ln_1",
    attn_q=None,
    attn_k=None,
    attn_v=None,
    mlp_pre="mlp.c_fc",
    mlp_pre_linear=None,
)

_REGISTRY: dict[str, Architecture] = {
    "llama": LLAMA,
    "mistral": LLAMA,
    "qwen2": LLAMA,
    "qwen3": LLAMA,
    "gemma2": GEMMA,
    "gemma3_text": GEMMA,
    "gpt2": GPT2,
}


def register_architecture(model_type: str, architecture: Architecture) -> None:
    """Support another ``config.model_type`` (see the module docstring)."""
    _REGISTRY[model_type] = architecture


def supported_model_types() -> list[str]:
    return sorted(_REGISTRY)


class UnsupportedArchitecture(ValueError):
    pass


def architecture_for(config: Any) -> Architecture:
    model_type = getattr(config, "model_type", None)
    if model_type not in _REGISTRY:
        raise UnsupportedArchitecture(
            f"architecture {model_type!r} is not supported yet. Supported model types: "
            f"{', '.join(supported_model_types())}. To add one, describe its module paths with "
            "avec.models.Architecture(...) and call avec.models.register_architecture("
            f"{model_type!r}, arch); see avec/models/architectures.py."
        )
    return _REGISTRY[model_type]


@dataclass(frozen=True)
class Dims:
    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    vocab: int
    n_kv_heads: int = 0  # key-value heads (grouped-query attention); 0 = n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads


def dims_of(config: Any) -> Dims:
    def first(*names, default=None):
        for n in names:
            v = getattr(config, n, None)
            if v is not None:
                return v
        if default is None:
            raise ValueError(f"config has none of {names}")
        return default

    d_model = first("hidden_size", "n_embd")
    n_heads = first("num_attention_heads", "n_head")
    d_head = getattr(config, "head_dim", None) or d_model // n_heads
    return Dims(
        n_layers=first("num_hidden_layers", "n_layer"),
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=first("intermediate_size", "n_inner", default=4 * d_model),
        vocab=first("vocab_size"),
        n_kv_heads=getattr(config, "num_key_value_heads", None) or n_heads,
    )


_TL_LAYER = re.compile(r"^blocks\.(\d+)\.(attn\.|mlp\.)?hook_(\w+)$")


def transformerlens_alias(name: str) -> str | None:
    """TransformerLens spellings -> ours: ``blocks.6.hook_resid_pre`` -> ``blocks.6.resid_pre``."""
    fixed = {"hook_embed": "embed", "ln_final.hook_normalized": "final_norm", "unembed": "logits", "hook_logits": "logits"}
    if name in fixed:
        return fixed[name]
    m = _TL_LAYER.match(name)
    if m:
        sub = {"attn.": "attn.", "mlp.": "mlp.", None: ""}[m.group(2)]
        return f"blocks.{m.group(1)}.{sub}{m.group(3)}"
    if ".hook_" in name:  # glob patterns such as blocks.*.hook_resid_post
        return name.replace(".hook_", ".")
    return None


def hook_table(arch: Architecture, dims: Dims) -> HookPointTable:
    d = (dims.d_model,)
    sites = [Site("embed", arch.embed, pos_axis=1, width=d)]
    for l in range(dims.n_layers):
        layer = f"{arch.layers}.{l}"
        heads = {"q": dims.n_heads, "k": dims.kv_heads, "v": dims.kv_heads}
        qkv = [Site(f"blocks.{l}.attn.{x}", f"{layer}.{path}", pos_axis=1, heads=heads[x], width=(heads[x], dims.d_head), layer=l)
               for x, path in (("q", arch.attn_q), ("k", arch.attn_k), ("v", arch.attn_v)) if path]
        pre = [Site(f"blocks.{l}.mlp.{x}", f"{layer}.{path}", pos_axis=1, width=(dims.d_mlp,), layer=l)
               for x, path in (("pre", arch.mlp_pre), ("pre_linear", arch.mlp_pre_linear)) if path]
        sites += [
            Site(f"blocks.{l}.resid_pre", layer, kind="input", pos_axis=1, width=d, layer=l),
            *qkv,
            Site(f"blocks.{l}.attn.pattern", f"{layer}.{arch.attn}", index=1, pos_axis=2, eager=True, read_only=True, layer=l),
            Site(f"blocks.{l}.attn.z", f"{layer}.{arch.attn_o}", kind="input", pos_axis=1, heads=dims.n_heads, width=(dims.n_heads, dims.d_head), layer=l),
            Site(f"blocks.{l}.attn_out", f"{layer}.{arch.attn_out}", pos_axis=1, width=d, layer=l),
            Site(f"blocks.{l}.resid_mid", f"{layer}.{arch.mlp_in}", kind="input", pos_axis=1, delta_to=layer, width=d, layer=l),
            Site(f"blocks.{l}.mlp_in", f"{layer}.{arch.mlp_in}", pos_axis=1, width=d, layer=l),
            *pre,
            Site(f"blocks.{l}.mlp.post", f"{layer}.{arch.mlp_down}", kind="input", pos_axis=1, width=(dims.d_mlp,), layer=l),
            Site(f"blocks.{l}.mlp_out", f"{layer}.{arch.mlp_out}", pos_axis=1, width=d, layer=l),
            Site(f"blocks.{l}.resid_post", layer, pos_axis=1, width=d, layer=l),
        ]
    sites += [
        Site("final_norm", arch.final_norm, pos_axis=1, width=d),
        Site("logits", arch.unembed, pos_axis=1, width=(dims.vocab,)),
    ]
    return HookPointTable(sites, aliases=transformerlens_alias, n_layers=dims.n_layers)
