"""Read and write SAELens SAE folders: ``cfg.json`` + ``sae_weights.safetensors``.

The format (SAELens 6.x, read from its source: ``SAE.save_model`` / ``load_from_disk`` /
``handle_pre_6_0_config``):

    sae_weights.safetensors   W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in],
                              threshold [d_sae] (jumprelu only); stored in ``dtype``
    cfg.json                  {"architecture": "standard" | "jumprelu" | "topk" | ..., "d_in", "d_sae",
                               "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
                               "reshape_activations", "k" and "rescale_acts_by_decoder_norm" (topk),
                               "metadata": {"sae_lens_version", "hook_name", "model_name", ...}}

Files older than 6.0 (no ``metadata.sae_lens_version`` >= 6) keep ``hook_name`` / ``hook_point`` and
``model_name`` at the top level, name the activation ``activation_fn_str`` (``"relu"`` / ``"topk"`` with
``activation_fn_kwargs: {"k": ...}``), may have ``normalize_activations`` as a bool and a
``scaling_factor`` [d_sae] tensor multiplying the latents in the decoder; both layouts are read.

SAELens computes ``pre = (x - b_dec * apply_b_dec_to_input) @ W_enc + b_enc``, ``z = act(pre)``,
``x_hat = z @ W_dec + b_dec``. How each architecture maps to ``avec.dictionaries.SAE`` (exactly, up to
float rounding of the folds):

    standard   -> relu      (activation "relu" only)
    jumprelu   -> jumprelu  (SAELens: ReLU(pre) * (pre > threshold); ours: pre * (pre > threshold),
                             the same for threshold >= 0; a negative threshold is refused)
    topk       -> topk      (ReLU of the top k; ``rescale_acts_by_decoder_norm`` is folded in:
                             W_enc, b_enc times ||W_dec_i||, W_dec rows divided by it)
    apply_b_dec_to_input=false   folded into b_enc (b_enc + b_dec @ W_enc)
    normalize_activations "none"; "expected_average_only_in" only with ``norm_scaling_factor=`` (the
                             factor is not in the files; it becomes the SAE's input scale)
    a pre-6 ``scaling_factor`` tensor (finetuning) is folded into the decoder rows

Refused, with the reason: other architectures (gated, abstopk, transcoders, temporal, matching
pursuit, ...), other activation functions, ``normalize_activations`` "constant_norm_rescale" /
"layer_norm" (a per-token rescaling that is not linear in x) and "covariance_whitening",
``reshape_activations="hook_z"`` / ``hook_head_index`` (per-head inputs: a dictionary here reads a
``[batch, pos, d]`` point).

``save_saelens`` writes what 6.x SAELens reads with ``SAE.load_from_disk``: relu -> standard, jumprelu
(and batchtopk, saved with its inference threshold) -> jumprelu, topk -> topk with
``rescale_acts_by_decoder_norm=false``; the input scale folded into the weights, ``apply_b_dec_to_input``
true, ``normalize_activations`` "none". Each file is written atomically (the weights first).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_write, atomic_write_json
from .sae import DTYPES, SAE, SAEConfig

WEIGHTS = "sae_weights.safetensors"
CONFIG = "cfg.json"
FORMAT_VERSION = "6.0.0"  # the cfg.json layout written here (SAELens reads 6.x configs as written by 6.x)

ARCH_TO_AVEC = {"standard": "relu", "jumprelu": "jumprelu", "topk": "topk"}
AVEC_TO_ARCH = {"relu": "standard", "jumprelu": "jumprelu", "topk": "topk", "batchtopk": "jumprelu"}
NORMALISATIONS_OK = ("none", "expected_average_only_in")
SAELENS_DTYPES = {**{k: k for k in DTYPES}, **{f"torch.{k}": k for k in DTYPES}}


class SAELensFormatError(ValueError):
    """A SAELens folder that cannot be read (names the file and what is wrong)."""


# ----------------------------------------------------------------------------- hook names
_OURS = re.compile(r"^blocks\.(\d+)\.((?:attn|mlp)\.)?(\w+)$")


def to_saelens_hook(hook: str | None) -> str | None:
    """Ours -> TransformerLens spelling: ``blocks.6.resid_post`` -> ``blocks.6.hook_resid_post``."""
    if hook is None:
        return None
    if hook == "embed":
        return "hook_embed"
    m = _OURS.match(hook)
    return f"blocks.{m.group(1)}.{m.group(2) or ''}hook_{m.group(3)}" if m else hook


def from_saelens_hook(name: str | None) -> str | None:
    """TransformerLens spelling -> ours (unknown spellings are kept as they are)."""
    if not name:
        return None
    from ..models.architectures import transformerlens_alias

    return transformerlens_alias(name) or name


# ----------------------------------------------------------------------------- reading
def _is_v6(raw: dict) -> bool:
    version = raw.get("sae_lens_version") or (raw.get("metadata") or {}).get("sae_lens_version")
    if not isinstance(version, str):
        return False
    m = re.match(r"^(\d+)", version)
    return bool(m) and int(m.group(1)) >= 6


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """``cfg.json`` of a SAELens folder, normalised to one layout: architecture, d_in, d_sae, k (topk),
    dtype (one of ``avec.dictionaries.sae.DTYPES``), apply_b_dec_to_input, normalize_activations,
    rescale_acts_by_decoder_norm, reshape_activations, hook_head_index, hook_name, model_name, raw."""
    path = Path(folder) / CONFIG
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"no SAELens folder at {str(folder)!r} (expected a folder with {CONFIG} and {WEIGHTS})")
    if not path.is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no {CONFIG}; a SAELens SAE is a folder with {CONFIG} and {WEIGHTS}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SAELensFormatError(f"{str(path)!r} is not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise SAELensFormatError(f"{str(path)!r} holds a JSON {type(raw).__name__}, expected an object of config keys")

    def bad(key: str, why: str) -> SAELensFormatError:
        return SAELensFormatError(f"{str(path)!r}: key {key!r} {why}")

    meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    v6 = _is_v6(raw)
    activation = raw.get("activation_fn", raw.get("activation_fn_str", "relu"))
    kwargs = raw.get("activation_fn_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise bad("activation_fn_kwargs", f"must be an object such as {{\"k\": 32}}, got {kwargs!r}")
    arch = raw.get("architecture", "standard" if not v6 else None)
    if arch is None:
        raise bad("architecture", "is missing; allowed: " + ", ".join(ARCH_TO_AVEC))
    if not v6 and activation == "topk" and kwargs.get("k") is not None:
        arch = "topk"
    if arch not in ARCH_TO_AVEC:
        raise bad("architecture", f"is {arch!r}, which has no avec equivalent; supported: {', '.join(ARCH_TO_AVEC)}")
    if arch == "standard" and activation != "relu":
        raise bad("activation_fn_str", f"is {activation!r}; a standard SAE is read only with activation 'relu'")

    out: dict[str, Any] = {"architecture": arch, "raw": raw, "v6": v6}
    for key in ("d_in", "d_sae"):
        if key not in raw:
            raise bad(key, "is missing (the SAE's input and latent widths)")
        v = raw[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise bad(key, f"must be a positive int, got {v!r}")
        out[key] = v
    if arch == "topk":
        k = raw.get("k", kwargs.get("k"))
        if k is None:
            raise bad("k", "is missing; a topk SAE needs k (or activation_fn_kwargs {\"k\": ...})")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= out["d_sae"]:
            raise bad("k", f"must be an int with 1 <= k <= d_sae={out['d_sae']}, got {k!r}")
        out["k"] = k
    dtype = raw.get("dtype", "float32")
    if dtype not in SAELENS_DTYPES:
        raise bad("dtype", f"is {dtype!r}; allowed: {', '.join(SAELENS_DTYPES)}")
    out["dtype"] = SAELENS_DTYPES[dtype]
    norm = raw.get("normalize_activations", "none")
    if norm is None or norm is False:
        norm = "none"
    elif norm is True:
        norm = "expected_average_only_in"
    if norm not in NORMALISATIONS_OK:
        why = {"constant_norm_rescale": "rescales each token to norm sqrt(d_in) and back, which is not linear in x",
               "layer_norm": "layer-normalises each token and undoes it after decoding, which is not linear in x",
               "covariance_whitening": "whitens with matrices SAELens folds in itself; fold them first "
                                       "(SAE.fold_activation_whitening) and save again"}.get(norm, "is unknown")
        raise bad("normalize_activations", f"is {norm!r}: it {why}; readable: {', '.join(NORMALISATIONS_OK)}")
    out["normalize_activations"] = norm
    for key, default in (("apply_b_dec_to_input", True), ("rescale_acts_by_decoder_norm", False),
                         ("finetuning_scaling_factor", False)):
        v = raw.get(key, default)
        if not isinstance(v, bool):
            raise bad(key, f"must be true or false, got {v!r}")
        out[key] = v
    reshape = raw.get("reshape_activations", "none") or "none"
    hook_name = meta.get("hook_name") or raw.get("hook_name") or raw.get("hook_point")
    head = meta.get("hook_head_index", raw.get("hook_head_index", raw.get("hook_point_head_index")))
    if reshape != "none" or head is not None:
        raise bad("reshape_activations" if reshape != "none" else "hook_head_index",
                  f"is {reshape if reshape != 'none' else head!r}: a per-head SAE (hook_z) reads [n_heads, d_head] "
                  "values; an avec dictionary reads a [batch, pos, d] point (residual, attn_out, mlp_out, mlp.post)")
    if hook_name is not None and not isinstance(hook_name, str):
        raise bad("hook_name", f"must be a string such as 'blocks.6.hook_resid_post', got {hook_name!r}")
    out["hook_name"] = hook_name
    out["model_name"] = meta.get("model_name") or raw.get("model_name")
    return out


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    if not path.is_file():
        raise FileNotFoundError(f"{str(path.parent)!r} has no {path.name}; a SAELens SAE is a folder with "
                                f"{CONFIG} and {WEIGHTS}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated / garbled files
        raise SAELensFormatError(f"{str(path)!r} is not a readable safetensors file (truncated or corrupt?): {e}") from None


def load_saelens(folder: str | os.PathLike, *, norm_scaling_factor: float | None = None) -> SAE:
    """An ``avec.dictionaries.SAE`` from a SAELens folder (see the module docstring for the mapping).

    norm_scaling_factor: for ``normalize_activations="expected_average_only_in"`` (inputs multiplied
        by this factor before encoding; SAELens keeps it outside the files); refused otherwise.

    The SAELens config as read is kept as ``sae.saelens_config`` (a dict).
    """
    folder = Path(folder)
    cfg = read_config(folder)
    wpath = folder / WEIGHTS
    tensors = _read_tensors(wpath)
    d_in, d_sae, arch = cfg["d_in"], cfg["d_sae"], cfg["architecture"]
    want = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if arch == "jumprelu":
        want["threshold"] = (d_sae,)
    scaling = tensors.pop("scaling_factor", tensors.pop("finetuning_scaling_factor", None))
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if got != want:
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        wrong = sorted(k for k in set(want) & set(got) if got[k] != want[k])
        raise SAELensFormatError(
            f"{str(wpath)!r} does not match {CONFIG} (architecture={arch!r}, d_in={d_in}, d_sae={d_sae}): "
            + "; ".join(filter(None, [f"missing {missing}" if missing else "", f"unexpected {extra}" if extra else "",
                                      ", ".join(f"{k} is {list(got[k])}, expected {list(want[k])}" for k in wrong)])))
    t = {k: v.detach().to(torch.float64) for k, v in tensors.items()}
    for k, v in t.items():
        if not bool(torch.isfinite(v).all()):
            raise SAELensFormatError(f"{str(wpath)!r}: tensor {k!r} holds NaN or inf values")
    if scaling is not None:
        if tuple(scaling.shape) != (d_sae,):
            raise SAELensFormatError(f"{str(wpath)!r}: scaling_factor is {list(scaling.shape)}, expected [{d_sae}]")
        t["W_dec"] = t["W_dec"] * scaling.double()[:, None]  # decode(z * s) == (z @ diag(s)) @ W_dec
    if cfg["rescale_acts_by_decoder_norm"]:
        if arch != "topk":
            raise SAELensFormatError(f"{str(folder / CONFIG)!r}: rescale_acts_by_decoder_norm is only defined for topk")
        n = t["W_dec"].norm(dim=-1).clamp_min(1e-8)
        t["W_enc"], t["b_enc"], t["W_dec"] = t["W_enc"] * n, t["b_enc"] * n, t["W_dec"] / n[:, None]
    if not cfg["apply_b_dec_to_input"]:
        t["b_enc"] = t["b_enc"] + t["b_dec"] @ t["W_enc"]
    if arch == "jumprelu" and bool((t["threshold"] < 0).any()):
        bad = (t["threshold"] < 0).nonzero().flatten().tolist()
        raise SAELensFormatError(f"{str(wpath)!r}: JumpReLU threshold is negative at latent(s) {bad[:8]}; SAELens "
                                 "then passes ReLU(pre), avec pre itself, so they would differ; thresholds must be >= 0")
    scale = 1.0
    if cfg["normalize_activations"] == "expected_average_only_in":
        if norm_scaling_factor is None:
            raise SAELensFormatError(
                f"{str(folder / CONFIG)!r}: normalize_activations is 'expected_average_only_in', whose scaling factor "
                "is not stored in the folder; pass load_saelens(..., norm_scaling_factor=<the factor>)")
        scale = float(norm_scaling_factor)
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"norm_scaling_factor={norm_scaling_factor!r}; it must be a finite number > 0")
    elif norm_scaling_factor is not None:
        raise ValueError(f"norm_scaling_factor is only for normalize_activations='expected_average_only_in'; "
                         f"{str(folder / CONFIG)!r} has {cfg['normalize_activations']!r}")
    ours = SAEConfig(arch=ARCH_TO_AVEC[arch], d_in=d_in, d_sae=d_sae, k=cfg.get("k"),
                     hook=from_saelens_hook(cfg["hook_name"]), normalise="none", dtype=cfg["dtype"])
    sae = SAE(ours)
    with torch.no_grad():
        for k in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, k).copy_(t[k].to(getattr(sae, k).dtype))
        if arch == "jumprelu":
            sae.threshold.copy_(t["threshold"].to(sae.threshold.dtype))
        sae.input_scale.fill_(scale)
    sae.saelens_config = cfg["raw"]
    return sae


# ----------------------------------------------------------------------------- writing
def saelens_config(sae: SAE, *, model_name: str | None = None, hook_name: str | None = None) -> dict[str, Any]:
    """The ``cfg.json`` dict ``save_saelens`` writes for ``sae``."""
    cfg = sae.cfg
    arch = AVEC_TO_ARCH[cfg.arch]
    out: dict[str, Any] = {
        "architecture": arch, "d_in": cfg.d_in, "d_sae": cfg.d_sae, "dtype": cfg.dtype, "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
    }
    if arch == "topk":
        out["k"] = cfg.k
        out["rescale_acts_by_decoder_norm"] = False
    out["metadata"] = {
        "sae_lens_version": FORMAT_VERSION,
        "sae_lens_training_version": FORMAT_VERSION,
        "hook_name": hook_name or to_saelens_hook(cfg.hook),
        "model_name": model_name or cfg.model_id,
        "hook_head_index": None,
        "written_by": "avec",
    }
    return out


def save_saelens(sae: SAE, folder: str | os.PathLike, *, model_name: str | None = None,
                 hook_name: str | None = None) -> Path:
    """Write ``sae`` as a SAELens folder (``cfg.json`` + ``sae_weights.safetensors``); returns the folder.

    model_name / hook_name: recorded in the config's metadata (default: the SAE's ``model_id`` and
    its ``hook`` in TransformerLens spelling, ``blocks.6.hook_resid_post``).
    """
    from safetensors.torch import save_file

    if not isinstance(sae, SAE):
        raise TypeError(f"save_saelens writes an avec.dictionaries.SAE, got {type(sae).__name__}")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{str(folder)!r} is a file; a SAELens SAE is written as a folder")
    cfg_dict = saelens_config(sae, model_name=model_name, hook_name=hook_name)
    _, tensors = sae.folded()
    dt = DTYPES[sae.cfg.dtype]
    tensors = {k: v.to(dt).contiguous() for k, v in tensors.items()}
    atomic_write(folder / WEIGHTS, lambda tmp: save_file(tensors, tmp))
    atomic_write_json(folder / CONFIG, cfg_dict)
    return folder
