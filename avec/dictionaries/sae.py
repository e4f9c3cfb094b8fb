"""Sparse autoencoders: one ``SAE`` module, four architectures, saved as safetensors + JSON config.

Every architecture computes, on an input ``x`` ``[..., d_in]``::

    x_n     = x * input_scale                           (input normalisation, see below)
    pre     = (x_n - b_dec) @ W_enc + b_enc              [..., d_sae]   (decoder bias subtracted ...)
    z       = activation(pre)                            [..., d_sae]
    x_hat   = (z @ W_dec + b_dec) / input_scale          [..., d_in]    (... and added back)

Subtracting ``b_dec`` before the encoder is a reparametrisation of ``b_enc`` for the ReLU / JumpReLU
archs and the OpenAI recipe for TopK; one form for all keeps a BatchTopK SAE loadable as a JumpReLU.

Architectures (``SAEConfig.arch``) and the recipe choices made here:

``relu``       z = ReLU(pre); sparsity = sum_i z_i * ||W_dec[i]|| (decoder-norm-weighted L1, Anthropic's
               April 2024 update), so the decoder is free (no unit-norm constraint, no gradient projection).
``jumprelu``   z = pre * H(pre - theta); theta [d_sae] is the parameter itself (kept >= ``min_threshold``
               after each step, so the saved fp32 threshold is exactly the one trained), trained through a
               straight-through estimator with a rectangle kernel of width ``bandwidth`` (Rajamanoharan
               et al. 2024). Sparsity "l0" = sum_i H(pre_i - theta_i) (same STE) or "tanh" =
               sum_i tanh(tanh_scale * z_i * ||W_dec[i]||) (Anthropic Feb 2025); optional pre-activation
               loss sum_i ReLU(theta_i - pre_i) * ||W_dec[i]|| (revives latents that never fire).
               Unit-norm decoder with gradient projection (as in Gemma Scope).
``topk``       z = ReLU(TopK_k(pre)) per token, plus AuxK: the top ``k_aux`` pre-activations among dead
               latents reconstruct the residual error ``x_n - x_hat`` (normalised MSE, weight
               ``aux_coeff``; Gao et al. 2024). Unit-norm decoder with gradient projection.
``batchtopk``  training: the k * batch largest ReLU(pre) over the whole batch (Bussmann et al. 2024),
               AuxK as TopK; an inference threshold theta (a running average, momentum
               ``threshold_momentum``, of the smallest activation kept) gives ``encode`` = JumpReLU(pre,
               theta); saved as a ``jumprelu`` SAE with that threshold. Unit-norm decoder + projection.

Loss: ``||x_n - x_hat_n||^2`` summed over d_in, averaged over tokens, + ``sparsity_coeff`` * sparsity
(relu / jumprelu) + the auxiliary terms above.

Init (``init_from_sample``): decoder rows random unit vectors, ``W_enc = W_dec^T`` (tied init),
``b_enc = 0``, ``b_dec`` = geometric median of a sample (Weiszfeld), JumpReLU thresholds
``init_threshold``.

Normalisation (``normalise``): "expected_norm" scales inputs by ``s = sqrt(d_in / E||x||^2)``
(estimated on the init sample) so the hyperparameters transfer across models and layers; "none" keeps
s = 1. ``save`` folds s into the weights (W_enc * s, W_dec / s, b_dec / s): a saved SAE reads raw
activations and its file has ``input_scale`` 1 (the folded value is recorded as ``folded_scale``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..io import atomic_write
from .sparse_codes import Codes, Encoded, Pattern

ARCHS = ("relu", "jumprelu", "topk", "batchtopk")
SPARSITIES = ("l0", "tanh")
NORMALISATIONS = ("expected_norm", "none")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
FORMAT = "avec.sae/1"


def config_problems(cfg, sizes: tuple[str, ...], k_means: str, aux_default: str) -> list[str]:
    """What is wrong with the fields SAE and transcoder configs share (``cfg.arch``, the ``sizes``, ``k``,
    ``k_aux``, ``normalise``, ``dtype``, the loss coefficients and JumpReLU settings), one message each saying
    what is allowed. ``k_means``: what k counts; ``aux_default``: what ``k_aux=None`` means."""
    problems = []
    if cfg.arch not in ARCHS:
        problems.append(f"arch={cfg.arch!r} is unknown; allowed: {', '.join(ARCHS)}")
    for name in sizes:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            problems.append(f"{name}={v!r}; it must be a positive int")
    if cfg.arch in ("topk", "batchtopk") and cfg.k is None:
        problems.append(f"arch={cfg.arch!r} needs k ({k_means}), 1 <= k <= d_sae")
    if cfg.k is not None and (isinstance(cfg.k, bool) or not isinstance(cfg.k, int) or not
                              (1 <= cfg.k <= (cfg.d_sae if isinstance(cfg.d_sae, int) else cfg.k))):
        problems.append(f"k={cfg.k!r}; allowed: an int with 1 <= k <= d_sae={cfg.d_sae}")
    if cfg.k_aux is not None and (not isinstance(cfg.k_aux, int) or cfg.k_aux < 1):
        problems.append(f"k_aux={cfg.k_aux!r}; allowed: a positive int or None ({aux_default})")
    if cfg.normalise not in NORMALISATIONS:
        problems.append(f"normalise={cfg.normalise!r}; allowed: {', '.join(NORMALISATIONS)}")
    if cfg.dtype not in DTYPES:
        problems.append(f"dtype={cfg.dtype!r}; allowed: {', '.join(DTYPES)}")
    for name in ("sparsity_coeff", "pre_act_coeff", "aux_coeff"):
        if not getattr(cfg, name) >= 0:
            problems.append(f"{name}={getattr(cfg, name)!r}; it must be >= 0")
    for name in ("bandwidth", "init_threshold", "min_threshold", "tanh_scale"):
        if not getattr(cfg, name) > 0:
            problems.append(f"{name}={getattr(cfg, name)!r}; it must be > 0")
    if not 0 < cfg.threshold_momentum <= 1:
        problems.append(f"threshold_momentum={cfg.threshold_momentum!r}; allowed: 0 < m <= 1")
    return problems


@dataclass(frozen=True)
class SAEConfig:
    """What an SAE is (saved with it). ``k`` only for topk / batchtopk; ``unit_decoder`` defaults per
    arch (see the module docstring)."""

    arch: str
    d_in: int
    d_sae: int
    k: int | None = None
    hook: str | None = None            # hook point it reads, e.g. "blocks.6.resid_post"
    model_id: str | None = None        # the model it was trained on (LanguageModel.model_id)
    normalise: str = "expected_norm"
    dtype: str = "float32"
    unit_decoder: bool | None = None   # None: per arch (relu: False, others: True)
    # sparsity (relu, jumprelu)
    sparsity_coeff: float = 1.0
    sparsity: str = "l0"               # jumprelu: "l0" or "tanh"
    tanh_scale: float = 4.0
    pre_act_coeff: float = 0.0         # jumprelu pre-activation loss weight (0: off)
    bandwidth: float = 0.001           # jumprelu STE kernel width
    init_threshold: float = 0.001      # jumprelu initial theta
    min_threshold: float = 1e-6        # jumprelu theta floor (kept after each step)
    # auxiliary loss (topk, batchtopk)
    k_aux: int | None = None           # None: d_in // 2
    aux_coeff: float = 1 / 32
    threshold_momentum: float = 0.01   # batchtopk inference threshold running average
    # provenance
    trained_as: str | None = None      # "batchtopk" for a BatchTopK SAE saved as jumprelu
    folded_scale: float | None = None  # input scale folded into the saved weights

    def __post_init__(self):
        problems = config_problems(self, ("d_in", "d_sae"), k_means="active latents per token",
                                   aux_default="d_in // 2")
        if self.sparsity not in SPARSITIES:
            problems.append(f"sparsity={self.sparsity!r}; allowed: {', '.join(SPARSITIES)}")
        if problems:
            raise ValueError("bad SAE config: " + "; ".join(problems))

    @property
    def uses_unit_decoder(self) -> bool:
        return self.unit_decoder if self.unit_decoder is not None else self.arch != "relu"

    @property
    def aux_k(self) -> int:
        return self.k_aux if self.k_aux is not None else max(1, self.d_in // 2)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "SAEConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source}: unknown SAE config keys {unknown}; known: {sorted(known)}")
        return cls(**d)


# ----------------------------------------------------------------------------- straight-through estimators
def _rect(u: torch.Tensor) -> torch.Tensor:
    """Rectangle kernel: 1 on (-1/2, 1/2)."""
    return (u.abs() < 0.5).to(u.dtype)


def _sum_to(g: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``g`` summed over the axes along which ``like`` (a threshold: [d_sae], or [n_layers, 1, d_sae]
    for a transcoder's layers) was broadcast."""
    while g.dim() > like.dim():
        g = g.sum(0)
    for i, size in enumerate(like.shape):
        if size == 1 and g.shape[i] != 1:
            g = g.sum(i, keepdim=True)
    return g


class _JumpReLU(torch.autograd.Function):
    """pre * H(pre - theta); d/dtheta = -(theta / eps) * rect((pre - theta) / eps) (pseudo-derivative)."""

    @staticmethod
    def forward(ctx, pre, theta, bandwidth):
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return pre * (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, g):
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        g_pre = g * (pre > theta).to(g.dtype)
        g_theta = -(theta / eps) * _rect((pre - theta) / eps) * g
        return g_pre, _sum_to(g_theta, theta), None


class _Step(torch.autograd.Function):
    """H(pre - theta); no gradient to pre, d/dtheta = -(1 / eps) * rect((pre - theta) / eps)."""

    @staticmethod
    def forward(ctx, pre, theta, bandwidth):
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, g):
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        g_theta = -(1.0 / eps) * _rect((pre - theta) / eps) * g
        return None, _sum_to(g_theta, theta), None  # None: no gradient to pre (not a tensor of zeros)


# ----------------------------------------------------------------------------- helpers
def geometric_median(points: torch.Tensor, iters: int = 100, tol: float = 1e-7) -> torch.Tensor:
    """Weiszfeld iterations in float64: argmin_y sum_i ||points_i - y||. ``points`` [n, d] -> [d]."""
    p = points.detach().reshape(-1, points.shape[-1]).double()
    y = p.mean(0)
    for _ in range(iters):
        w = 1.0 / (p - y).norm(dim=-1).clamp_min(1e-12)
        y_new = (w[:, None] * p).sum(0) / w.sum()
        done = (y_new - y).norm() <= tol * max(float(y.norm()), 1.0)
        y = y_new
        if done:
            break
    return y.to(points.dtype)


def topk_per_row(pre: torch.Tensor, k: int) -> torch.Tensor:
    """ReLU of the k largest entries of each row, zeros elsewhere. [..., d_sae] -> [..., d_sae]."""
    vals, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))


def topk_over_batch(pre: torch.Tensor, k: int) -> torch.Tensor:
    """The k * n largest ReLU(pre) over the whole batch [n, d_sae] (BatchTopK), zeros elsewhere."""
    acts = torch.relu(pre)
    flat = acts.reshape(-1)
    vals, idx = flat.topk(min(k * pre.shape[0], flat.numel()))
    return torch.zeros_like(flat).scatter(0, idx, vals).reshape(pre.shape)


@dataclass
class SAEOutput:
    """A training forward pass (normalised space). ``codes`` the latents (``latents``: dense [n, d_sae]),
    ``x_hat`` [n, d_in]."""

    loss: torch.Tensor
    mse: torch.Tensor
    sparsity: torch.Tensor
    aux: torch.Tensor
    codes: Codes
    x_hat: torch.Tensor

    @property
    def latents(self) -> torch.Tensor:
        return self.codes.to_dense()

    @property
    def n_tokens(self) -> int:
        return int(self.x_hat.shape[0])

    @property
    def fired(self) -> torch.Tensor:
        """bool [d_sae]: the latents active on some token of the batch."""
        return self.codes.fired()


# ----------------------------------------------------------------------------- the module
class SAE(nn.Module):
    """A sparse autoencoder (see the module docstring). ``SAE(SAEConfig(...))`` or ``SAE(arch=..., ...)``.

    encode: [..., d_in] -> [..., d_sae]; decode: [..., d_sae] -> [..., d_in]; forward = decode(encode(x)).
    """

    def __init__(self, cfg: SAEConfig | None = None, **kwargs: Any):
        super().__init__()
        if cfg is None:
            cfg = SAEConfig(**kwargs)
        elif kwargs:
            cfg = replace(cfg, **kwargs)
        self.cfg = cfg
        self.d_in, self.d_sae = cfg.d_in, cfg.d_sae
        dt = DTYPES[cfg.dtype]
        self.W_enc = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae, dtype=dt))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dt))
        self.W_dec = nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_in, dtype=dt))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, dtype=dt))
        if cfg.arch == "jumprelu":
            self.threshold = nn.Parameter(torch.full((cfg.d_sae,), float(cfg.init_threshold), dtype=dt))
        else:  # batchtopk: the inference threshold (0 until the first training batch sets it)
            self.register_buffer("threshold", torch.zeros((), dtype=torch.float32))
        self.register_buffer("input_scale", torch.ones((), dtype=torch.float32))
        self.reset_parameters()

    # -- init ----------------------------------------------------------------------------------
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Random unit decoder rows, tied encoder (W_enc = W_dec^T), zero biases."""
        with torch.no_grad():
            w = torch.randn(self.d_sae, self.d_in, generator=generator, dtype=torch.float32)
            w = w / w.norm(dim=-1, keepdim=True)
            self.W_dec.copy_(w)
            self.W_enc.copy_(w.T)
            self.b_enc.zero_()
            self.b_dec.zero_()

    def init_from_sample(self, x: torch.Tensor) -> "SAE":
        """Estimate the input scale (``normalise``) and set ``b_dec`` to the geometric median of the
        normalised sample. ``x`` [n, d_in] raw activations."""
        x = self._check_input(x).reshape(-1, self.d_in).detach().float()
        with torch.no_grad():
            if self.cfg.normalise == "expected_norm":
                mean_sq = x.double().pow(2).sum(-1).mean()
                if not mean_sq > 0:
                    raise ValueError("cannot normalise: the sample's E||x||^2 is 0 (all-zero activations?)")
                self.input_scale.fill_(float((self.d_in / mean_sq).sqrt()))
            self.b_dec.copy_(geometric_median(x * self.input_scale).to(self.b_dec.dtype))
        return self

    # -- forward -------------------------------------------------------------------------------
    @property
    def threshold_vector(self) -> torch.Tensor:
        """theta per latent [d_sae] (jumprelu: the parameter; batchtopk: the inference threshold)."""
        if self.cfg.arch == "jumprelu":
            return self.threshold
        return self.threshold.to(self.W_enc.dtype).expand(self.d_sae)

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"an SAE reads a tensor [..., d_in={self.d_in}], got {type(x).__name__}")
        if x.dim() == 0 or x.shape[-1] != self.d_in:
            raise ValueError(f"this SAE reads [..., d_in={self.d_in}] activations, got shape {tuple(x.shape)}")
        return x

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """[..., d_in] raw -> [..., d_sae]."""
        x = self._check_input(x).to(self.W_enc.dtype)
        return (x * self.input_scale.to(x.dtype) - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents [..., d_sae] of raw activations [..., d_in] (inference: batchtopk uses its threshold)."""
        pre = self.pre_activations(x)
        arch = self.cfg.arch
        if arch == "relu":
            return torch.relu(pre)
        if arch == "topk":
            return topk_per_row(pre, self.cfg.k)
        theta = self.threshold_vector
        return pre * (pre > theta).to(pre.dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Raw-space reconstruction [..., d_in] of latents [..., d_sae]."""
        if not isinstance(z, torch.Tensor) or z.dim() == 0 or z.shape[-1] != self.d_sae:
            raise ValueError(f"this SAE decodes [..., d_sae={self.d_sae}] latents, got shape "
                             f"{tuple(getattr(z, 'shape', ())) or type(z).__name__}")
        return (z.to(self.W_dec.dtype) @ self.W_dec + self.b_dec) / self.input_scale.to(self.W_dec.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    # -- training ------------------------------------------------------------------------------
    def losses(self, x: torch.Tensor, sparsity_scale: float = 1.0, dead: torch.Tensor | None = None) -> SAEOutput:
        """Training loss on a batch of raw activations ``x`` [n, d_in] (in normalised space).

        sparsity_scale: multiplies ``sparsity_coeff`` (the trainer's warm-up); dead: bool [d_sae],
        latents counted dead (AuxK). BatchTopK updates its inference threshold here (when training).
        Mostly-zero latents take sparse kernels for the gradients (``sparse_codes``: same loss, same
        gradients to float rounding).
        """
        x = self._check_input(x).reshape(-1, self.d_in).to(self.W_enc.dtype)
        x_n = x * self.input_scale.to(x.dtype)
        enc = Encoded(self, x_n)
        pre = enc.pre  # no gradient: read it through enc.at / enc.dense for one
        n, m = pre.shape
        cfg, zero = self.cfg, pre.new_zeros(())
        sparsity, aux = zero, zero
        if cfg.arch == "relu":
            z = torch.relu(enc.dense())
            sparsity = (z * self.W_dec.norm(dim=-1)).sum(-1).mean()
            codes = Codes(n, m, dense=z)
        elif cfg.arch == "jumprelu":
            codes, sparsity, aux = self._jumprelu(enc)
        else:
            if cfg.arch == "topk":
                pattern = Pattern.per_row(pre.topk(cfg.k, dim=-1).indices, m)
            else:  # the k * n largest ReLU(pre) over the batch
                flat = torch.relu(pre).reshape(-1)
                pattern = Pattern.flat(flat.topk(min(cfg.k * n, flat.numel())).indices, n, m)
            codes = Codes(n, m, pattern=pattern, values=torch.relu(enc.at(pattern)))
            if cfg.arch == "batchtopk" and self.training:
                self._update_threshold(codes.kept())
        x_hat = codes.decode(self.W_dec) + self.b_dec
        mse = (x_hat - x_n).pow(2).sum(-1).mean()
        if cfg.arch in ("topk", "batchtopk") and dead is not None and bool(dead.any()):
            aux = cfg.aux_coeff * self._aux_k_loss(enc, dead, (x_n - x_hat).detach())
        loss = mse + cfg.sparsity_coeff * sparsity_scale * sparsity + aux
        return SAEOutput(loss, mse, sparsity, aux, codes, x_hat)

    def _jumprelu(self, enc: Encoded) -> tuple[Codes, torch.Tensor, torch.Tensor]:
        """JumpReLU latents, sparsity and pre-activation losses. The gradients reach the entries where
        z != 0 and, for theta, where |pre - theta| < bandwidth / 2 (the STE's window): when those are
        few, only they are read (sparse route); otherwise everything (dense route, as written below)."""
        cfg, pre, theta = self.cfg, enc.pre, self.threshold
        n, m = pre.shape
        zero = pre.new_zeros(())
        if cfg.pre_act_coeff == 0:
            with torch.no_grad():  # u > -1/2 for u = (pre - theta) / bandwidth: exactly pre > theta or |u| < 1/2
                reach = (pre - theta.detach()) / cfg.bandwidth > -0.5
                count = int(reach.sum())
            if enc.sparse_ok(count / max(1, n * m)):
                pattern = Pattern.where(reach)
                p, t = enc.at(pattern), theta[pattern.cols]
                values = _JumpReLU.apply(p, t, cfg.bandwidth)
                if cfg.sparsity == "l0":  # no gradient to pre (_Step), only to theta
                    sparsity = _Step.apply(p.detach(), t, cfg.bandwidth).sum() / n
                else:
                    dec_norm = self.W_dec.norm(dim=-1)[pattern.cols]
                    sparsity = torch.tanh(cfg.tanh_scale * values.abs() * dec_norm).sum() / n
                return Codes(n, m, pattern=pattern, values=values), sparsity, zero
        pre = enc.dense()
        dec_norm = self.W_dec.norm(dim=-1)
        z = _JumpReLU.apply(pre, theta, cfg.bandwidth)
        if cfg.sparsity == "l0":
            sparsity = _Step.apply(pre, theta, cfg.bandwidth).sum(-1).mean()
        else:
            sparsity = torch.tanh(cfg.tanh_scale * z.abs() * dec_norm).sum(-1).mean()
        aux = cfg.pre_act_coeff * (torch.relu(theta - pre) * dec_norm).sum(-1).mean() if cfg.pre_act_coeff > 0 else zero
        return Codes(n, m, dense=z), sparsity, aux

    def _aux_k_loss(self, enc: Encoded, dead: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
        """The top-k_aux dead latents reconstruct the error ``err`` [n, d_in]; MSE normalised by the
        error's variance (as OpenAI's normalized_mse), so its weight does not depend on the error size."""
        k_aux = min(self.cfg.aux_k, int(dead.sum()))
        masked = enc.pre.masked_fill(~dead.to(enc.pre.device), float("-inf"))
        pattern = Pattern.per_row(masked.topk(k_aux, dim=-1).indices, enc.pre.shape[1])
        z_aux = Codes(pattern.n, pattern.m, pattern=pattern, values=torch.relu(enc.at(pattern)))
        err_hat = z_aux.decode(self.W_dec)
        denom = (err - err.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
        return (err_hat - err).pow(2).sum(-1).mean() / denom

    @torch.no_grad()
    def _update_threshold(self, kept: torch.Tensor) -> None:
        """Running average of the smallest activation BatchTopK kept (``kept``: the nonzero ones; the first
        batch sets it)."""
        kept = kept[kept > 0]
        if kept.numel() == 0:
            return
        low = kept.min().float()
        m = self.cfg.threshold_momentum
        self.threshold.copy_(low if float(self.threshold) == 0 else (1 - m) * self.threshold + m * low)

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove the component of each decoder row's gradient parallel to that row (unit-norm decoder)."""
        g = self.W_dec.grad
        if g is None:
            return
        w = self.W_dec / self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        g.sub_((g * w).sum(-1, keepdim=True) * w)

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        """Decoder rows back to unit norm (after an optimiser step)."""
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    def before_step(self) -> None:
        """Called between backward and the optimiser step: gradient projection (unit-norm decoder)."""
        if self.cfg.uses_unit_decoder:
            self.project_decoder_grad()

    @torch.no_grad()
    def after_step(self) -> None:
        """Called after the optimiser step: unit-norm decoder rows, JumpReLU thresholds kept positive."""
        if self.cfg.uses_unit_decoder:
            self.normalise_decoder()
        if self.cfg.arch == "jumprelu":
            self.threshold.clamp_(min=self.cfg.min_threshold)

    # -- saving --------------------------------------------------------------------------------
    def folded(self) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
        """Config and tensors as saved: input scale folded in, BatchTopK as JumpReLU, threshold fp32."""
        s = float(self.input_scale)
        with torch.no_grad():
            t = {"W_enc": self.W_enc * s, "b_enc": self.b_enc.clone(), "W_dec": self.W_dec / s,
                 "b_dec": self.b_dec / s}
            cfg = replace(self.cfg, folded_scale=s * (self.cfg.folded_scale or 1.0))
            if cfg.arch in ("jumprelu", "batchtopk"):
                t["threshold"] = self.threshold_vector.detach().float().clone()
            if cfg.arch == "batchtopk":
                cfg = replace(cfg, arch="jumprelu", trained_as="batchtopk")
        return cfg, {k: v.detach().contiguous() for k, v in t.items()}

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` (``.safetensors``, config as JSON in its metadata) atomically: a failure leaves
        any existing file untouched. The saved SAE reads raw activations (see ``folded``)."""
        from safetensors.torch import save_file

        path = Path(path)
        if path.suffix != ".safetensors":
            raise ValueError(f"an SAE is saved as <name>.safetensors, got {str(path)!r}")
        cfg, tensors = self.folded()
        meta = {"format": FORMAT, "config": json.dumps(asdict(cfg))}
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SAE":
        """Read an SAE written by ``save``; a missing, truncated or foreign file, or a config that does
        not match the tensors, is a ``ValueError`` naming the file."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no SAE file at {str(path)!r}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for truncated / garbled headers
            raise ValueError(f"{str(path)!r} is not a readable safetensors file (truncated or corrupt?): {e}") from None
        if meta.get("format") != FORMAT or "config" not in meta:
            raise ValueError(f"{str(path)!r} is not an avec SAE file (metadata format={meta.get('format')!r}, "
                             f"expected {FORMAT!r} with a JSON config)")
        try:
            raw = json.loads(meta["config"])
        except json.JSONDecodeError as e:
            raise ValueError(f"{str(path)!r}: the SAE config in its metadata is not valid JSON ({e})") from None
        try:
            cfg = SAEConfig.from_dict(raw, source=str(path))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{str(path)!r}: {e}") from None
        sae = cls(replace(cfg))
        want = {"W_enc": (cfg.d_in, cfg.d_sae), "b_enc": (cfg.d_sae,), "W_dec": (cfg.d_sae, cfg.d_in),
                "b_dec": (cfg.d_in,)}
        if cfg.arch == "jumprelu":
            want["threshold"] = (cfg.d_sae,)
        got = {k: tuple(v.shape) for k, v in tensors.items()}
        if got != want:
            raise ValueError(f"{str(path)!r}: tensors {got} do not match its config (arch={cfg.arch!r}, "
                             f"d_in={cfg.d_in}, d_sae={cfg.d_sae}), which needs {want}")
        with torch.no_grad():
            for k in ("W_enc", "b_enc", "W_dec", "b_dec"):
                getattr(sae, k).copy_(tensors[k])
            if cfg.arch == "jumprelu":
                th = tensors["threshold"].float()
                if not bool((th > 0).all()):
                    raise ValueError(f"{str(path)!r}: JumpReLU thresholds must be > 0")
                sae.threshold.copy_(th.to(sae.threshold.dtype))
        return sae

    def extra_repr(self) -> str:
        c = self.cfg
        return f"arch={c.arch}, d_in={c.d_in}, d_sae={c.d_sae}" + (f", k={c.k}" if c.k else "") + \
            (f", hook={c.hook}" if c.hook else "")
