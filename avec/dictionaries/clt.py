"""Cross-layer transcoders (CLTs): one encoder per layer, each reading that layer's MLP input (by default
the residual stream before the MLP, ``blocks.{l}.resid_mid``); the features of layer l decode to the MLP
output of layer l and of every later layer, and layer l's MLP output is reconstructed by the sum of the
decodings of layers 0..l (Ameisen et al. 2025). The math, loss and files are
``avec.dictionaries.transcoder``'s; with ``cross_layer=False`` the same class is a set of per-layer
transcoders trained together (each layer's features decode to their own layer only).

    clt = CrossLayerTranscoder(arch="jumprelu", n_layers=30, d_in=576, d_sae=2048,
                               reads=[f"blocks.{l}.resid_mid" for l in range(30)],
                               writes=[f"blocks.{l}.mlp_out" for l in range(30)])
    with lm.dictionary(clt):       # blocks.{l}.resid_mid.clt.latents, blocks.{l}.mlp_out.clt.recon / error
        run = lm.run(prompt, cache=["blocks.*.resid_mid.clt.latents", "blocks.*.mlp_out.clt.error"])

Why ``resid_mid`` rather than the normalised MLP input (``blocks.{l}.mlp_in``): a feature's
pre-activation is then linear in the residual stream, so in an attribution graph the edge from any
upstream node into a feature is a dot product with its encoder vector (no norm Jacobian on the way in,
as in Anthropic's CLTs and circuit-tracer's ``hook_resid_mid`` ones); the growth of the residual norm
with depth is taken out by a fixed per-layer input scale, folded into the encoder at save time.
``reads=`` any other per-layer point (``mlp_in``) works the same.

Decoders per (source, target): ``clt.decoder(i, j)`` ``[d_sae, d_out]`` (raw space); encoders
``clt.encoder(l)`` ``[d_in, d_sae]``.

Size: a CLT over n layers has n (n + 1) / 2 decoder blocks (465 for SmolLM2's 30 layers: 68.6M
parameters at 256 features per layer, 16x the encoders), so training costs grow with them; features
are decoded through the active ones only (``transcoder.sparse_mm``). Measured on SmolLM2 (30 layers,
256 BatchTopK features per layer, k=16, 1024 tokens per step, 2 cores shared with other jobs, load ~7):
60 tokens/s training from cached activations, and about as fast again to collect them (one forward pass
caching 60 points); after 61,440 tokens the held-out FVU was 0.28-0.95 per layer (mean 0.70).
"""

from __future__ import annotations

from typing import Any

from .transcoder import Transcoders, TranscoderConfig


class CrossLayerTranscoder(Transcoders):
    """A CLT (or, with ``cross_layer=False``, a set of per-layer transcoders) over ``n_layers`` layers.

    encode_layer(x, l): [..., d_in] -> [..., d_sae]; decode_layer([z_i for i in sources(l)], l) ->
    [..., d_out]; skip_layer(x, l); forward([n_layers, ..., d_in]) -> [n_layers, ..., d_out].
    """

    def __init__(self, cfg: TranscoderConfig | None = None, **kwargs: Any):
        super().__init__(cfg, **kwargs)


def layer_points(n_layers: int, reads: str = "resid_mid", writes: str = "mlp_out", first: int = 0) -> dict:
    """``{"reads": [...], "writes": [...]}`` for layers ``first .. first + n_layers - 1``: the hook point
    names of each layer's input and target (``blocks.{l}.<reads>``), for ``TranscoderConfig``."""
    layers = range(first, first + n_layers)
    return {"reads": [f"blocks.{l}.{reads}" for l in layers], "writes": [f"blocks.{l}.{writes}" for l in layers]}
