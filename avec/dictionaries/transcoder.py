"""Transcoders: sparse dictionaries that read one activation (an MLP's input) and reconstruct another (that
MLP's output), one layer (``Transcoder``) or several at once (``avec.dictionaries.clt``).

For layer l, input ``x`` ``[..., d_in]`` and target ``y`` ``[..., d_out]``::

    x_n    = x * in_scale[l]                                  (input normalisation, see below)
    pre    = x_n @ W_enc[l] + b_enc[l]                        [..., d_sae]
    z      = activation(pre)                                  [..., d_sae]
    y_hat  = (sum_{i in sources(l)} z_i @ W_dec[i][:, l] + b_dec[l] + x_n @ W_skip[l].T) / out_scale[l]

A per-layer transcoder's only source is its own layer; a cross-layer transcoder's target l has the
features of every layer i <= l as sources (``W_dec[i]`` is ``[d_sae, n_layers - i, d_out]``: feature f of
layer i writes ``W_dec[i][f, l - i]`` to layer l). ``W_skip`` (optional, ``[d_out, d_in]`` per layer) is a
linear skip connection from the input (Paulo et al. 2025).

Activations (``arch``), as in ``avec.dictionaries.sae`` (whose straight-through estimators and TopK code
they use): ``relu``; ``jumprelu`` (z = pre * H(pre - theta), theta per feature trained through the
rectangle-kernel STE); ``topk`` (the k largest of each layer's features per token, ReLU'd); ``batchtopk``
(the k * n largest over each layer's batch in training, a learned per-layer inference threshold: saved
as ``jumprelu``).

Loss (normalised spaces)::

    mse      = sum_l w_l * mean_tokens ||y_n[l] - y_hat_n[l]||^2      (w_l = 1, or d_out / Var y_n[l] with
                                                                       mse_weighting="variance": each layer's FVU)
    sparsity = sum_{l, f} mean_tokens s(z[l, f] * ||W_dec[l][f]||)    (||W_dec[l][f]|| the norm of the feature's
                                                                       concatenated decoders, to every target)
               s = tanh(tanh_scale * .) ("tanh", Anthropic's CLT loss), identity ("l1"), or the
               STE step H(pre - theta) ("l0", jumprelu)
    loss     = mse + sparsity_coeff * warm-up * sparsity + pre_act_coeff * sum ReLU(theta - pre) ||W_dec||
               (+ AuxK for topk / batchtopk: the top k_aux dead features of each layer reconstruct the error)

Normalisation (``normalise="expected_norm"``): per layer, ``in_scale = sqrt(d_in / E||x||^2)`` and
``out_scale = sqrt(d_out / E||y||^2)`` estimated on the first batch (residual norms grow with depth; the
scales let one set of hyperparameters fit every layer). ``save`` folds them into the weights: a saved
transcoder reads and writes raw activations.

Init: encoder columns random unit vectors; each feature's decoder to its own layer a random direction of
norm ``dec_init_norm`` (1 for topk / batchtopk, whose concatenated decoders stay unit-norm with gradient
projection), its decoders to later layers 0 (a CLT starts as per-layer transcoders: random writes to
every later layer made the late layers' FVU start above 2 on SmolLM2); b_enc centres each encoder on the
first batch's mean input (``init_from_sample``), b_dec the mean target, JumpReLU thresholds
``init_threshold``. On SmolLM2 (30 layers, 256 features each, BatchTopK k=16, 40 steps of 1024 tokens)
the centring took the held-out mean FVU from above 1 to 0.66.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..io import atomic_write
from .sae import ARCHS, DTYPES, NORMALISATIONS, _JumpReLU, _Step, config_problems, topk_over_batch, topk_per_row

SPARSITIES = ("tanh", "l1", "l0")
WEIGHTINGS = ("none", "variance")
FORMAT = "avec.transcoder/1"


SPARSE_BELOW = 0.08  # decode through the active features alone when fewer than this fraction are active
GATHER_BELOW = 1 << 24  # up to this many gathered weights, gather rows (vmappable backward) rather than embedding_bag


def sparse_mm(z: torch.Tensor, w: torch.Tensor, support: torch.Tensor | None = None,
              batched_grads: bool = True) -> torch.Tensor:
    """``z @ w`` for ``z`` [..., d_sae] and ``w`` [d_sae, m], through the entries of ``support`` (default:
    the nonzero ones) when they are few: the cost then grows with the active features, not d_sae.
    Entries outside ``support`` count as 0 (their gradient too: include every entry whose gradient
    matters, e.g. JumpReLU's features within the STE window below threshold). ``batched_grads=False``:
    the backward is never vmapped (training), so a few active features need no gather route."""
    lead = z.shape[:-1]
    flat = z.reshape(-1, z.shape[-1])
    mask = (flat != 0) if support is None else support.reshape(flat.shape)
    if flat.shape[0] == 0 or float(mask.float().mean()) >= SPARSE_BELOW:
        return (flat.to(w.dtype) @ w).reshape(*lead, w.shape[-1])
    rows, cols = mask.nonzero(as_tuple=True)  # row-major: each row's entries are contiguous
    if batched_grads and z.requires_grad and torch.is_grad_enabled() and rows.numel() * w.shape[-1] <= GATHER_BELOW:
        # few tokens (a prompt, not a training batch): gather the active rows and add them up. Its backward
        # is plain indexing, which batched (vmapped) gradients run at once; embedding_bag's per-sample-weight
        # backward has no batching rule and runs once per gradient row (minutes for an attribution graph). Not for a
        # training batch: there it costs 10x embedding_bag (2,048 tokens, k 32 of 512, 1 thread: 1.5 s against 0.07 s)
        vals = flat[rows, cols].to(w.dtype)
        out = torch.zeros(flat.shape[0], w.shape[-1], dtype=w.dtype, device=w.device)
        out = out.index_add(0, rows, w[cols] * vals[:, None])
        return out.reshape(*lead, w.shape[-1])
    offsets = torch.zeros(flat.shape[0], dtype=torch.long, device=z.device)
    offsets[1:] = torch.bincount(rows, minlength=flat.shape[0]).cumsum(0)[:-1]
    out = nn.functional.embedding_bag(cols, w.contiguous(), offsets, mode="sum",
                                      per_sample_weights=flat[rows, cols].to(w.dtype))
    return out.reshape(*lead, w.shape[-1])


def _names(v: Any) -> tuple[str, ...] | None:
    if v is None:
        return None
    return (v,) if isinstance(v, str) else tuple(v)


@dataclass(frozen=True)
class TranscoderConfig:
    """What a transcoder is (saved with it). ``n_layers`` > 1 with ``cross_layer`` (the default then) is
    a CLT; with ``cross_layer=False`` a set of per-layer transcoders trained together. ``reads`` /
    ``writes``: the hook point of each layer's input and target (e.g. ``blocks.3.resid_mid`` /
    ``blocks.3.mlp_out``)."""

    arch: str
    d_in: int
    d_sae: int                          # features per layer
    d_out: int | None = None            # None: d_in
    n_layers: int = 1
    cross_layer: bool | None = None     # None: n_layers > 1
    k: int | None = None                # topk / batchtopk: active features per layer and token
    skip: bool = False                  # a linear skip connection W_skip
    reads: tuple[str, ...] | None = None
    writes: tuple[str, ...] | None = None
    model_id: str | None = None
    normalise: str = "expected_norm"
    dtype: str = "float32"
    unit_decoder: bool | None = None    # None: topk / batchtopk yes, relu / jumprelu no
    sparsity_coeff: float = 1.0
    sparsity: str | None = None         # None: tanh (relu: l1)
    tanh_scale: float = 4.0
    pre_act_coeff: float = 0.0
    bandwidth: float = 0.001
    init_threshold: float = 0.001
    min_threshold: float = 1e-6
    dec_init_norm: float | None = None  # None: 1 for topk / batchtopk, 0.1 otherwise
    mse_weighting: str = "none"
    k_aux: int | None = None            # None: d_out // 2
    aux_coeff: float = 1 / 32
    threshold_momentum: float = 0.01
    trained_as: str | None = None       # "batchtopk" for a BatchTopK one saved as jumprelu
    folded: bool = False                # normalisation folded into the weights (a saved file)
    bos: int | None = None              # the token every training context began with (its positions were not
                                        # trained on); attribution puts it before a prompt that lacks it

    def __post_init__(self):
        object.__setattr__(self, "reads", _names(self.reads))
        object.__setattr__(self, "writes", _names(self.writes))
        problems = config_problems(self, ("d_in", "d_sae", "n_layers") + (("d_out",) if self.d_out is not None else ()),
                                   k_means="active features per layer and token", aux_default="d_out // 2")
        if self.bos is not None and (isinstance(self.bos, bool) or not isinstance(self.bos, int) or self.bos < 0):
            problems.append(f"bos={self.bos!r}; allowed: a token id (int >= 0) or None")
        if self.cross_layer and self.n_layers == 1:
            problems.append("cross_layer=True needs n_layers > 1")
        if self.sparsity is not None and self.sparsity not in SPARSITIES:
            problems.append(f"sparsity={self.sparsity!r}; allowed: {', '.join(SPARSITIES)}")
        if self.sparsity == "l0" and self.arch != "jumprelu":
            problems.append("sparsity='l0' needs arch='jumprelu' (its step function has the STE)")
        if self.mse_weighting not in WEIGHTINGS:
            problems.append(f"mse_weighting={self.mse_weighting!r}; allowed: {', '.join(WEIGHTINGS)}")
        if self.dec_init_norm is not None and not self.dec_init_norm > 0:
            problems.append(f"dec_init_norm={self.dec_init_norm!r}; it must be > 0")
        for name in ("reads", "writes"):
            v = getattr(self, name)
            if v is not None and (len(v) != self.n_layers or not all(isinstance(s, str) and s for s in v)):
                problems.append(f"{name}={v!r}; give one hook point name per layer ({self.n_layers})")
        if problems:
            raise ValueError("bad transcoder config: " + "; ".join(problems))

    @property
    def out(self) -> int:
        return self.d_out if self.d_out is not None else self.d_in

    @property
    def is_cross_layer(self) -> bool:
        return self.cross_layer if self.cross_layer is not None else self.n_layers > 1

    @property
    def uses_unit_decoder(self) -> bool:
        return self.unit_decoder if self.unit_decoder is not None else self.arch in ("topk", "batchtopk")

    @property
    def sparsity_kind(self) -> str:
        return self.sparsity or ("l1" if self.arch == "relu" else "tanh")

    @property
    def aux_k(self) -> int:
        return self.k_aux if self.k_aux is not None else max(1, self.out // 2)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "config") -> "TranscoderConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source}: unknown transcoder config keys {unknown}; known: {sorted(known)}")
        return cls(**d)


@dataclass
class TranscoderOutput:
    """A training forward pass in normalised space. ``latents`` [n_layers, n, d_sae], ``y_hat`` / ``y``
    [n_layers, n, d_out]; ``per_layer_mse`` [n_layers] (mean over tokens of the squared error norm)."""

    loss: torch.Tensor
    mse: torch.Tensor
    sparsity: torch.Tensor
    aux: torch.Tensor
    latents: torch.Tensor
    y_hat: torch.Tensor
    y: torch.Tensor
    per_layer_mse: torch.Tensor

    @property
    def n_tokens(self) -> int:
        return int(self.latents.shape[1])

    @property
    def fired(self) -> torch.Tensor:
        """bool [n_layers * d_sae]: the features active on some token of the batch (layer-major)."""
        return (self.latents != 0).any(1).reshape(-1)


class _IntoTargets(torch.autograd.Function):
    """``total[j] = sum_i outs[i][j - starts[i]]``: each source's block [n_targets, n, d] added into the
    targets from ``starts[i]`` on; the gradient of each block is a view of the total's. (Slicing each
    target out of each block instead makes autograd fill a full-size zero gradient per slice: quadratic
    in the number of layers.)"""

    @staticmethod
    def forward(ctx, n_layers, starts, *outs):
        ctx.spans = [(s, o.shape[0]) for s, o in zip(starts, outs)]
        total = outs[0].new_zeros((n_layers, *outs[0].shape[1:]))
        for s, o in zip(starts, outs):
            total[s:s + o.shape[0]] += o
        return total

    @staticmethod
    def backward(ctx, g):
        return (None, None, *(g[s:s + t] for s, t in ctx.spans))


class Transcoders(nn.Module):
    """The machinery shared by ``Transcoder`` (one layer) and ``CrossLayerTranscoder`` (several); build
    one of those. Parameters: ``W_enc`` [n_layers, d_in, d_sae], ``b_enc`` [n_layers, d_sae], ``W_dec[i]``
    [d_sae, n_targets(i), d_out], ``b_dec`` [n_layers, d_out], ``threshold`` [n_layers, d_sae] (jumprelu;
    batchtopk: a buffer [n_layers]), ``W_skip`` [n_layers, d_out, d_in] (skip). Layer indices are the
    transcoder's own (0..n_layers-1); ``cfg.reads[l]`` / ``cfg.writes[l]`` name the model's points."""

    def __init__(self, cfg: TranscoderConfig | None = None, **kwargs: Any):
        super().__init__()
        if cfg is None:
            cfg = TranscoderConfig(**kwargs)
        elif kwargs:
            cfg = replace(cfg, **kwargs)
        self.cfg = cfg
        n, s, din, dout = cfg.n_layers, cfg.d_sae, cfg.d_in, cfg.out
        self.n_layers, self.d_in, self.d_sae, self.d_out = n, din, s, dout
        dt = DTYPES[cfg.dtype]
        self.W_enc = nn.Parameter(torch.zeros(n, din, s, dtype=dt))
        self.b_enc = nn.Parameter(torch.zeros(n, s, dtype=dt))
        self.W_dec = nn.ParameterList([nn.Parameter(torch.zeros(s, self.n_targets(i), dout, dtype=dt))
                                       for i in range(n)])
        self.b_dec = nn.Parameter(torch.zeros(n, dout, dtype=dt))
        self.W_skip = nn.Parameter(torch.zeros(n, dout, din, dtype=dt)) if cfg.skip else None
        if cfg.arch == "jumprelu":
            self.threshold = nn.Parameter(torch.full((n, s), float(cfg.init_threshold), dtype=dt))
        elif cfg.arch == "batchtopk":  # the inference threshold per layer (0 until the first batch sets it)
            self.register_buffer("threshold", torch.zeros(n, dtype=torch.float32))
        else:
            self.threshold = None
        self.register_buffer("in_scale", torch.ones(n, dtype=torch.float32))
        self.register_buffer("out_scale", torch.ones(n, dtype=torch.float32))
        self.register_buffer("y_var", torch.full((n,), float(dout), dtype=torch.float32))
        self.reset_parameters()

    # -- structure -----------------------------------------------------------------------------
    @property
    def cross_layer(self) -> bool:
        return self.cfg.is_cross_layer

    def n_targets(self, i: int) -> int:
        """How many targets layer i's features write to (itself, and every later layer for a CLT)."""
        return self.cfg.n_layers - i if self.cfg.is_cross_layer else 1

    def sources(self, j: int) -> list[int]:
        """The layers whose features reconstruct target j."""
        return list(range(j + 1)) if self.cfg.is_cross_layer else [j]

    @property
    def n_latents(self) -> int:
        return self.n_layers * self.d_sae

    @property
    def reads(self):
        return self.cfg.reads

    @property
    def writes(self):
        return self.cfg.writes

    def decoder_norms(self) -> torch.Tensor:
        """[n_layers, d_sae] the norm of each feature's concatenated decoders (to every target)."""
        return torch.stack([w.flatten(1).norm(dim=-1) for w in self.W_dec])

    def decoder(self, source: int, target: int) -> torch.Tensor:
        """[d_sae, d_out] what layer ``source``'s features write to layer ``target`` (raw space)."""
        self._check_layer(source), self._check_layer(target)
        if target not in self.targets(source):
            raise ValueError(f"layer {source}'s features write to layers {self.targets(source)}, not {target}")
        w = self.W_dec[source][:, target - source if self.cross_layer else 0]
        return w / self.out_scale[target].to(w.dtype)

    def decoder_vectors(self, source: int, features: torch.Tensor, below: int | None = None) -> torch.Tensor:
        """[len(features), n, d_out] what each of layer ``source``'s ``features`` (ids [r]) writes to its targets
        ``targets(source)`` lying below layer ``below`` (default: all of them, ``n`` of them), in raw space:
        ``decoder(source, t)[f]`` for each such target t in order. Only these rows are read (attribution
        graphs take the few active features' decoders, never a whole decoder)."""
        source = self._check_layer(source)
        targets = [t for t in self.targets(source) if below is None or t < below]
        w = self.W_dec[source][features.to(torch.long), :len(targets)]        # [r, n, d_out]
        return w / self.out_scale[targets].to(w.dtype)[:, None]

    def encoder(self, l: int) -> torch.Tensor:
        """[d_in, d_sae] layer l's encoder in raw space: ``pre_activations(x, l) == x @ encoder(l) + b_enc[l]``."""
        l = self._check_layer(l)
        return self.W_enc[l] * self.in_scale[l].to(self.W_enc.dtype)

    def targets(self, i: int) -> list[int]:
        return list(range(i, self.n_layers)) if self.cross_layer else [i]

    def _check_layer(self, l: int) -> int:
        if isinstance(l, bool) or not isinstance(l, int) or not 0 <= l < self.n_layers:
            raise ValueError(f"layer {l!r} is out of range: this transcoder has {self.n_layers} layer(s) "
                             f"(0..{self.n_layers - 1})")
        return l

    def _check(self, x: torch.Tensor, width: int, what: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"a transcoder reads tensors [..., {what}={width}], got {type(x).__name__}")
        if x.dim() == 0 or x.shape[-1] != width:
            raise ValueError(f"this transcoder's {what} is {width}, got a tensor of shape {tuple(x.shape)}")
        return x

    # -- init ----------------------------------------------------------------------------------
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        cfg = self.cfg
        norm = cfg.dec_init_norm if cfg.dec_init_norm is not None else (
            1.0 if cfg.arch in ("topk", "batchtopk") else 0.1)
        with torch.no_grad():
            enc = torch.randn(self.n_layers, self.d_in, self.d_sae, generator=generator)
            self.W_enc.copy_(enc / enc.norm(dim=1, keepdim=True))
            for w in self.W_dec:
                r = torch.randn(w.shape, generator=generator)
                r[:, 1:] = 0  # a CLT starts as per-layer transcoders: random writes to later layers add noise
                w.copy_(r / r.flatten(1).norm(dim=-1)[:, None, None] * norm)
            self.b_enc.zero_()
            self.b_dec.zero_()
            if self.W_skip is not None:
                self.W_skip.zero_()

    def pick(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x [n_layers, n, d_in], y [n_layers, n, d_out])`` from a batch: a dict hook -> [n, d] read at
        ``cfg.reads`` / ``cfg.writes``, or a pair ``(x, y)`` (layer axis first, or [n, d] for one layer)."""
        if isinstance(batch, Mapping):
            if self.cfg.reads is None or self.cfg.writes is None:
                raise ValueError("this transcoder records no reads / writes hook points; give batches as (x, y) pairs "
                                 "or set TranscoderConfig(reads=..., writes=...)")
            missing = [h for h in (*self.cfg.reads, *self.cfg.writes) if h not in batch]
            if missing:
                raise KeyError(f"the batch has no {missing[:3]} (keys: {sorted(batch)[:8]})")
            x = torch.stack([batch[h] for h in self.cfg.reads])
            y = torch.stack([batch[h] for h in self.cfg.writes])
        elif isinstance(batch, (tuple, list)) and len(batch) == 2:
            x, y = batch
        else:
            raise TypeError("a transcoder's batch is a dict hook -> [n, d] or a pair (x, y), "
                            f"got {type(batch).__name__}")
        if x.dim() == 2 and self.n_layers == 1:
            x, y = x[None], y[None]
        for t, width, what in ((x, self.d_in, "d_in"), (y, self.d_out, "d_out")):
            self._check(t, width, what)
            if t.dim() != 3 or t.shape[0] != self.n_layers:
                raise ValueError(f"expected [n_layers={self.n_layers}, n, {what}] activations, got {tuple(t.shape)}")
        if x.shape[1] != y.shape[1]:
            raise ValueError(f"inputs and targets have different token counts: {x.shape[1]} vs {y.shape[1]}")
        return x, y

    def init_from_sample(self, batch: Any) -> "Transcoders":
        """Estimate the per-layer input / output scales (``normalise``), centre each encoder on the sample's
        mean input (``b_enc = -mean(x_n) @ W_enc``), set ``b_dec`` to the mean normalised target and record
        its variance (for ``mse_weighting="variance"``)."""
        x, y = self.pick(batch)
        with torch.no_grad():
            x, y = x.double(), y.double()
            if self.cfg.normalise == "expected_norm":
                for scale, t, width in ((self.in_scale, x, self.d_in), (self.out_scale, y, self.d_out)):
                    ms = t.pow(2).sum(-1).mean(-1)  # [n_layers]
                    if not bool((ms > 0).all()):
                        raise ValueError("cannot normalise: some layer's sample has E||x||^2 = 0 (all-zero activations?)")
                    scale.copy_((width / ms).sqrt().float())
            # encoders centred on the sample mean (residual streams carry large constant components: without
            # this, SmolLM2's first CLT steps reconstructed with FVU above 1)
            x_mean = (x * self.in_scale.double()[:, None, None]).mean(1)
            self.b_enc.copy_(-torch.einsum("ld,lds->ls", x_mean, self.W_enc.double()).to(self.b_enc.dtype))
            y_n = y * self.out_scale.double()[:, None, None]
            mean = y_n.mean(1)
            self.b_dec.copy_(mean.to(self.b_dec.dtype))
            self.y_var.copy_((y_n - mean[:, None]).pow(2).sum(-1).mean(-1).clamp_min(1e-12).float())
        return self

    # -- forward (inference, raw space) -----------------------------------------------------------
    def pre_activations(self, x: torch.Tensor, l: int, features: torch.Tensor | None = None) -> torch.Tensor:
        """[..., d_in] raw input of layer l -> [..., d_sae], or [..., len(features)] for the feature ids
        ``features`` alone (their encoder columns only)."""
        l = self._check_layer(l)
        x = self._check(x, self.d_in, "d_in").to(self.W_enc.dtype)
        W, b = self.W_enc[l], self.b_enc[l]
        if features is not None:
            W, b = W[:, features], b[features]
        return (x * self.in_scale[l].to(x.dtype)) @ W + b

    def threshold_vector(self, l: int) -> torch.Tensor | None:
        """theta of layer l's features [d_sae] (jumprelu; batchtopk: its inference threshold)."""
        if self.cfg.arch == "jumprelu":
            return self.threshold[l]
        if self.cfg.arch == "batchtopk":
            return self.threshold[l].to(self.W_enc.dtype).expand(self.d_sae)
        return None

    def encode_layer(self, x: torch.Tensor, l: int) -> torch.Tensor:
        """Layer l's features [..., d_sae] of its raw input [..., d_in]."""
        pre = self.pre_activations(x, l)
        if self.cfg.arch == "relu":
            return torch.relu(pre)
        if self.cfg.arch == "topk":
            return topk_per_row(pre, self.cfg.k)
        theta = self.threshold_vector(l)
        return pre * (pre > theta).to(pre.dtype)

    def decode_layer(self, zs: Sequence[torch.Tensor], l: int) -> torch.Tensor:
        """Target l's reconstruction [..., d_out] (raw space) from the features of ``sources(l)`` (one
        tensor [..., d_sae] each, in that order); without the skip connection (``skip_layer``)."""
        l = self._check_layer(l)
        src = self.sources(l)
        if len(zs) != len(src):
            raise ValueError(f"target {l} is decoded from the features of layers {src}: give {len(src)} latent "
                             f"tensors, got {len(zs)}")
        out = self.b_dec[l]
        for i, z in zip(src, zs):
            self._check(z, self.d_sae, "d_sae")
            out = out + sparse_mm(z.to(self.W_enc.dtype), self.W_dec[i][:, l - i if self.cross_layer else 0])
        return out / self.out_scale[l].to(out.dtype)

    def decode_targets(self, z: torch.Tensor, i: int) -> torch.Tensor:
        """What layer i's features ``z`` [..., d_sae] write to each of their targets ``targets(i)``, in raw
        space and without the decoder bias: [..., n_targets(i), d_out]. One product for all targets (the
        decoders of a source are one contiguous [d_sae, n_targets * d_out] matrix), so a model run decodes
        each source once rather than once per (source, target) pair (see ``avec.core.hooks``)."""
        i = self._check_layer(i)
        self._check(z, self.d_sae, "d_sae")
        w = self.W_dec[i]
        out = sparse_mm(z.to(self.W_enc.dtype), w.reshape(self.d_sae, -1)).unflatten(-1, (w.shape[1], self.d_out))
        scale = self.out_scale[self.targets(i)].to(out.dtype)
        return out / scale[:, None]

    def decoder_bias(self, l: int) -> torch.Tensor:
        """Target l's decoder bias in raw space [d_out]: ``decode_layer`` is this plus the sum over sources
        of ``decode_targets``."""
        l = self._check_layer(l)
        return self.b_dec[l] / self.out_scale[l].to(self.b_dec.dtype)

    def skip_layer(self, x: torch.Tensor, l: int) -> torch.Tensor | None:
        """The skip connection's part of target l [..., d_out] from layer l's raw input, or None."""
        if self.W_skip is None:
            return None
        l = self._check_layer(l)
        x = self._check(x, self.d_in, "d_in").to(self.W_skip.dtype)
        return (x * self.in_scale[l].to(x.dtype)) @ self.W_skip[l].T / self.out_scale[l].to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[n_layers, ..., d_in] raw inputs of every layer -> [n_layers, ..., d_out] reconstructions."""
        return self.reconstruct(x)[1]

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features [n_layers, ..., d_sae], reconstructions [n_layers, ..., d_out], skip included) of raw
        inputs [n_layers, ..., d_in], every layer's decoders applied once (sparse when few are active)."""
        self._check(x, self.d_in, "d_in")
        if x.dim() < 2 or x.shape[0] != self.n_layers:
            raise ValueError(f"expected [n_layers={self.n_layers}, ..., d_in] inputs, got {tuple(x.shape)}")
        lead = x.shape[1:-1]
        flat = x.reshape(self.n_layers, -1, self.d_in)
        z = torch.stack([self.encode_layer(flat[l], l) for l in range(self.n_layers)])
        out = self._decode_all(z) / self.out_scale.to(z.dtype)[:, None, None]
        if self.W_skip is not None:
            out = out + torch.stack([self.skip_layer(flat[l], l) for l in range(self.n_layers)])
        return z.reshape(self.n_layers, *lead, self.d_sae), out.reshape(self.n_layers, *lead, self.d_out)

    # -- training ------------------------------------------------------------------------------
    def _decode_all(self, z: torch.Tensor, bias: bool = True, support: torch.Tensor | None = None,
                    batched_grads: bool = True) -> torch.Tensor:
        """[n_layers, n, d_sae] normalised-space features -> [n_layers, n, d_out] targets (no skip);
        ``support`` [n_layers, n, d_sae] (default z != 0): the entries decoded (see ``sparse_mm``)."""
        n = z.shape[1]
        # unbind, not z[i]: each z[i]'s backward would fill a zero tensor of z's whole shape
        zs = z.unbind(0)
        sup = [None] * self.n_layers if support is None else support.unbind(0)
        outs = [sparse_mm(zs[i], w.flatten(1), sup[i], batched_grads).view(n, w.shape[1], self.d_out)
                .transpose(0, 1) for i, w in enumerate(self.W_dec)]  # each source to all its targets in one product
        total = _IntoTargets.apply(self.n_layers, [self.targets(i)[0] for i in range(self.n_layers)], *outs)
        return total + self.b_dec[:, None, :] if bias else total

    def _activate(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(features, theta as broadcast) of pre-activations [n_layers, n, d_sae] in training."""
        arch = self.cfg.arch
        if arch == "relu":
            return torch.relu(pre), None
        if arch == "jumprelu":
            theta = self.threshold[:, None, :]
            return _JumpReLU.apply(pre, theta, self.cfg.bandwidth), theta
        if arch == "topk":
            return topk_per_row(pre, self.cfg.k), None
        z = torch.stack([topk_over_batch(p, self.cfg.k) for p in pre.unbind(0)])
        if self.training:
            self._update_threshold(z)
        return z, None

    def losses(self, batch: Any, sparsity_scale: float = 1.0, dead: torch.Tensor | None = None) -> TranscoderOutput:
        """Training loss (module docstring) on a batch (see ``pick``). ``dead``: bool [n_layers * d_sae]
        (AuxK for topk / batchtopk)."""
        x, y = self.pick(batch)
        dt = self.W_enc.dtype
        x_n = x.to(dt) * self.in_scale.to(dt)[:, None, None]
        y_n = y.to(dt) * self.out_scale.to(dt)[:, None, None]
        pre = torch.baddbmm(self.b_enc[:, None, :], x_n, self.W_enc)  # [n_layers, n, d_sae]
        z, theta = self._activate(pre)
        # JumpReLU's threshold gradient needs the features just below it too (the STE window)
        support = (pre > theta - self.cfg.bandwidth / 2) if theta is not None else None
        y_hat = self._decode_all(z, support=support, batched_grads=False)
        if self.W_skip is not None:
            y_hat = y_hat + torch.bmm(x_n, self.W_skip.transpose(1, 2))
        per_layer = (y_hat - y_n).pow(2).sum(-1).mean(-1)
        cfg, zero = self.cfg, pre.new_zeros(())
        w = self.d_out / self.y_var.to(dt) if cfg.mse_weighting == "variance" else torch.ones_like(per_layer)
        mse = (w * per_layer).sum()
        sparsity = aux = zero
        if cfg.arch in ("relu", "jumprelu"):
            dec = self.decoder_norms()[:, None, :]
            kind = cfg.sparsity_kind
            if kind == "tanh":
                sparsity = torch.tanh(cfg.tanh_scale * z.abs() * dec).sum(-1).mean(-1).sum()
            elif kind == "l1":
                sparsity = (z.abs() * dec).sum(-1).mean(-1).sum()
            else:
                sparsity = _Step.apply(pre, theta, cfg.bandwidth).sum(-1).mean(-1).sum()
            if cfg.arch == "jumprelu" and cfg.pre_act_coeff > 0:
                aux = cfg.pre_act_coeff * (torch.relu(theta - pre) * dec).sum(-1).mean(-1).sum()
        elif dead is not None and bool(dead.any()):
            aux = cfg.aux_coeff * self._aux_k_loss(pre, dead.view(self.n_layers, self.d_sae), (y_n - y_hat).detach())
        loss = mse + cfg.sparsity_coeff * sparsity_scale * sparsity + aux
        return TranscoderOutput(loss, mse, sparsity, aux, z, y_hat, y_n, per_layer.detach())

    def _aux_k_loss(self, pre: torch.Tensor, dead: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
        """The top-k_aux dead features of each layer reconstruct the error of every target (through all
        their decoders), normalised by the error's variance (as in ``SAE._aux_k_loss``)."""
        k_aux = min(self.cfg.aux_k, int(dead.sum(-1).max()))
        masked = pre.masked_fill(~dead.to(pre.device)[:, None, :], float("-inf"))
        vals, idx = masked.topk(k_aux, dim=-1)
        z_aux = torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))  # -inf -> 0 where a layer has fewer
        err_hat = self._decode_all(z_aux, bias=False, batched_grads=False)
        denom = (err - err.mean(1, keepdim=True)).pow(2).sum(-1).mean().clamp_min(1e-12)
        return (err_hat - err).pow(2).sum(-1).mean() / denom

    @torch.no_grad()
    def _update_threshold(self, z: torch.Tensor) -> None:
        m = self.cfg.threshold_momentum
        for l in range(self.n_layers):
            kept = z[l][z[l] > 0]
            if kept.numel() == 0:
                continue
            low = kept.min().float()
            self.threshold[l] = low if float(self.threshold[l]) == 0 else (1 - m) * self.threshold[l] + m * low

    def batch_metrics(self, batch: Any, res: TranscoderOutput) -> dict[str, Any]:
        """Logged per step: loss terms, per-layer FVU (normalised MSE on this batch) and L0, and their
        means over layers ("fvu", "l0")."""
        with torch.no_grad():
            var = (res.y - res.y.mean(1, keepdim=True)).pow(2).sum(-1).sum(-1)
            err = (res.y_hat - res.y).pow(2).sum(-1).sum(-1)
            fvu = (err / var.clamp_min(1e-12)).tolist()
            l0 = (res.latents != 0).sum(-1).float().mean(-1).tolist()
        return {"loss": float(res.loss.detach()), "mse": float(res.mse.detach()),
                "sparsity": float(res.sparsity.detach()), "aux": float(res.aux.detach()), "l0": sum(l0) / len(l0), "fvu": sum(fvu) / len(fvu),
                "fvu_per_layer": fvu, "l0_per_layer": l0}

    @torch.no_grad()
    def _unit_rows(self) -> list[torch.Tensor]:
        return [w / w.flatten(1).norm(dim=-1).clamp_min(1e-12)[:, None, None] for w in self.W_dec]

    @torch.no_grad()
    def before_step(self) -> None:
        """Between backward and the optimiser step: unit-norm decoders' gradient projection."""
        if not self.cfg.uses_unit_decoder:
            return
        for w, u in zip(self.W_dec, self._unit_rows()):
            if w.grad is not None:
                w.grad.sub_((w.grad * u).flatten(1).sum(-1)[:, None, None] * u)

    @torch.no_grad()
    def after_step(self) -> None:
        """After the optimiser step: unit-norm decoders, JumpReLU thresholds kept positive."""
        if self.cfg.uses_unit_decoder:
            for w, u in zip(self.W_dec, self._unit_rows()):
                w.copy_(u)
        if self.cfg.arch == "jumprelu":
            self.threshold.clamp_(min=self.cfg.min_threshold)

    # -- saving --------------------------------------------------------------------------------
    def folded(self) -> tuple[TranscoderConfig, dict[str, torch.Tensor]]:
        """Config and tensors as saved: scales folded in (raw activations in and out), BatchTopK as
        JumpReLU, thresholds fp32. Keys: W_enc, b_enc, W_dec.{i}, b_dec, threshold, W_skip."""
        with torch.no_grad():
            s_in = self.in_scale.to(self.W_enc.dtype)
            s_out = self.out_scale.to(self.W_enc.dtype)
            t = {"W_enc": self.W_enc * s_in[:, None, None], "b_enc": self.b_enc.clone(),
                 "b_dec": self.b_dec / s_out[:, None]}
            for i, w in enumerate(self.W_dec):
                t[f"W_dec.{i}"] = w / s_out[self.targets(i)][None, :, None]
            if self.W_skip is not None:
                t["W_skip"] = self.W_skip * (s_in / s_out)[:, None, None]
            cfg = replace(self.cfg, folded=True)
            if cfg.arch in ("jumprelu", "batchtopk"):
                t["threshold"] = torch.stack([self.threshold_vector(l) for l in range(self.n_layers)]).float()
            if cfg.arch == "batchtopk":
                cfg = replace(cfg, arch="jumprelu", trained_as="batchtopk")
        return cfg, {k: v.detach().contiguous() for k, v in t.items()}

    def load_folded(self, tensors: Mapping[str, torch.Tensor], source: str = "tensors") -> "Transcoders":
        """Fill this (folded-config) transcoder from ``folded()``-style tensors, checking their shapes."""
        want = {"W_enc": (self.n_layers, self.d_in, self.d_sae), "b_enc": (self.n_layers, self.d_sae),
                "b_dec": (self.n_layers, self.d_out)}
        want.update({f"W_dec.{i}": (self.d_sae, self.n_targets(i), self.d_out) for i in range(self.n_layers)})
        if self.W_skip is not None:
            want["W_skip"] = (self.n_layers, self.d_out, self.d_in)
        if self.cfg.arch == "jumprelu":
            want["threshold"] = (self.n_layers, self.d_sae)
        got = {k: tuple(v.shape) for k, v in tensors.items()}
        if got != want:
            raise ValueError(f"{source}: tensors {got} do not match the config (arch={self.cfg.arch!r}, "
                             f"n_layers={self.n_layers}, d_in={self.d_in}, d_sae={self.d_sae}, d_out={self.d_out}, "
                             f"cross_layer={self.cross_layer}, skip={self.cfg.skip}), which needs {want}")
        with torch.no_grad():
            for k in ("W_enc", "b_enc", "b_dec"):
                getattr(self, k).copy_(tensors[k])
            for i, w in enumerate(self.W_dec):
                w.copy_(tensors[f"W_dec.{i}"])
            if self.W_skip is not None:
                self.W_skip.copy_(tensors["W_skip"])
            if self.cfg.arch == "jumprelu":
                th = tensors["threshold"].float()
                if not bool((th > 0).all()):
                    raise ValueError(f"{source}: JumpReLU thresholds must be > 0")
                self.threshold.copy_(th.to(self.threshold.dtype))
            self.in_scale.fill_(1.0)
            self.out_scale.fill_(1.0)
        return self

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` (``.safetensors``, config as JSON in its metadata) atomically; the saved
        transcoder reads and writes raw activations (``folded``)."""
        from safetensors.torch import save_file

        path = Path(path)
        if path.suffix != ".safetensors":
            raise ValueError(f"a transcoder is saved as <name>.safetensors, got {str(path)!r}")
        cfg, tensors = self.folded()
        meta = {"format": FORMAT, "config": json.dumps(cfg.to_dict())}
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike, dtype: str | None = None) -> "Transcoders":
        """Read a file written by ``save`` (a ``Transcoder`` for one layer, else a ``CrossLayerTranscoder``);
        a missing, truncated or foreign file, or a config that disagrees with the tensors, is a
        ``ValueError`` naming the file. ``dtype`` ("float32", ...): the weights in that dtype, cast from the
        file's tensors (never through a module of the stored dtype, so fp32 thresholds of an fp16 set stay
        exact); default: as stored."""
        from safetensors import safe_open

        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r}; allowed: {', '.join(DTYPES)}")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no transcoder file at {str(path)!r}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own types for truncated / garbled headers
            raise ValueError(f"{str(path)!r} is not a readable safetensors file (truncated or corrupt?): {e}") from None
        if meta.get("format") != FORMAT or "config" not in meta:
            raise ValueError(f"{str(path)!r} is not an avec transcoder file (metadata format={meta.get('format')!r}, "
                             f"expected {FORMAT!r} with a JSON config)")
        try:
            cfg = TranscoderConfig.from_dict(json.loads(meta["config"]), source=str(path))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{str(path)!r}: {e}") from None
        if dtype is not None:
            cfg = replace(cfg, dtype=dtype)
            tensors = {k: v.to(DTYPES[dtype]) for k, v in tensors.items()}
        return build(cfg).load_folded(tensors, source=str(path))

    def extra_repr(self) -> str:
        c = self.cfg
        kind = "cross-layer" if self.cross_layer else "per-layer"
        return (f"arch={c.arch}, n_layers={c.n_layers} ({kind}), d_in={c.d_in}, d_sae={c.d_sae}, d_out={c.out}"
                + (f", k={c.k}" if c.k else "") + (", skip" if c.skip else ""))


class Transcoder(Transcoders):
    """One transcoder: reads one hook point (``cfg.reads``, e.g. ``blocks.6.mlp_in``) and reconstructs
    another (``cfg.writes``, e.g. ``blocks.6.mlp_out``). ``Transcoder(arch=..., d_in=..., d_sae=...)``.

    encode: [..., d_in] -> [..., d_sae]; decode: [..., d_sae] -> [..., d_out] (without the skip);
    skip: [..., d_in] -> [..., d_out] or None; forward(x) = decode(encode(x)) + skip(x).
    Attach with ``lm.add_dictionary(tc)`` (its own points) or ``lm.add_dictionary(tc, at=..., writes=...)``.
    """

    def __init__(self, cfg: TranscoderConfig | None = None, **kwargs: Any):
        super().__init__(cfg, **kwargs)
        if self.cfg.n_layers != 1:
            raise ValueError(f"a Transcoder has one layer, got n_layers={self.cfg.n_layers}; use "
                             "CrossLayerTranscoder for several")

    @property
    def reads(self):
        return None if self.cfg.reads is None else self.cfg.reads[0]

    @property
    def writes(self):
        return None if self.cfg.writes is None else self.cfg.writes[0]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_layer(x, 0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode_layer([z], 0)

    def skip(self, x: torch.Tensor) -> torch.Tensor | None:
        return self.skip_layer(x, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.decode(self.encode(x))
        s = self.skip(x)
        return out if s is None else out + s


def build(cfg: TranscoderConfig) -> Transcoders:
    """A ``Transcoder`` for a one-layer config, else a ``CrossLayerTranscoder``."""
    if cfg.n_layers == 1 and not cfg.is_cross_layer:
        return Transcoder(cfg)
    from .clt import CrossLayerTranscoder

    return CrossLayerTranscoder(cfg)


def load_transcoder(path: str | os.PathLike, dtype: str | None = None) -> Transcoders:
    """A ``Transcoder`` or ``CrossLayerTranscoder`` saved by ``save``; in the dtype it was saved in, or in ``dtype``
    ("float32", ...), cast from the file's tensors (fp32 thresholds of a half-precision set stay exact)."""
    return Transcoders.load(path, dtype=dtype)
