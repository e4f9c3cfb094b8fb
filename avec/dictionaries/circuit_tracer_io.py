"""circuit-tracer's transcoder folders (github.com/safety-research/circuit-tracer), read and written, so
that transcoders made for it load in avec and avec's load in it.

A set of per-layer transcoders (``model_kind: transcoder_set``)::

    config.yaml            model_name, model_kind, feature_input_hook, feature_output_hook[, scan]
                           [, activation: relu | jump_relu | topk, k]
    layer_{i}.safetensors  W_enc [d_sae, d_in], W_dec [d_sae, d_out], b_enc [d_sae], b_dec [d_out],
                           activation_function.threshold [d_sae] (JumpReLU; absent: ReLU),
                           W_skip [d_out, d_in] (optional; added as x @ W_skip.T)

A cross-layer transcoder (``model_kind: cross_layer_transcoder``)::

    config.yaml            as above
    W_enc_{i}.safetensors  W_enc_{i} [d_sae, d_in], b_enc_{i} [d_sae], b_dec_{i} [d_out],
                           threshold_{i} [d_sae] (JumpReLU; absent: ReLU)
    W_dec_{i}.safetensors  W_dec_{i} [d_sae, n_layers - i, d_out]: feature f of layer i writes
                           W_dec_{i}[f, l - i] to layer l

circuit-tracer's encoders are ``[d_sae, d_in]`` (``F.linear``), avec's ``[d_in, d_sae]``: transposed on the
way; decoders and skips have the same orientation. Layer i is the model's block i. A CLT's files cannot
hold a skip connection or TopK; a TopK set records ``activation: topk`` and ``k`` in its config (as
circuit-tracer's newer loaders read them), and circuit-tracer's TopK keeps the k largest
pre-activations even when negative where avec's zeroes those (the same features whenever the k largest
are positive).

Hook names (circuit-tracer gives TransformerLens names inside block l) and avec's points:

    hook_resid_mid       blocks.{l}.resid_mid
    mlp.hook_in          blocks.{l}.mlp_in (circuit-tracer's wrapper around the MLP: its input)
    ln2.hook_normalized  the pre-MLP norm's output before its gain and bias: avec reads mlp_in and folds
                         1 / gain (and the bias) into the encoders and skip, which needs the model (lm=)
    hook_mlp_out         blocks.{l}.mlp_out
    mlp.hook_out         the MLP module's own output: blocks.{l}.mlp_out where the family has no post-MLP
                         norm; refused for Gemma, whose mlp_out comes after one (needs lm= to check)

Every file is written atomically, ``config.yaml`` last (circuit-tracer's cache takes a config as the mark
of a complete folder).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_write, atomic_write_text
from .transcoder import Transcoders, TranscoderConfig, build

INPUT_HOOKS = {"hook_resid_mid": "resid_mid", "mlp.hook_in": "mlp_in", "ln2.hook_normalized": "mlp_in"}
OUTPUT_HOOKS = {"hook_mlp_out": "mlp_out", "mlp.hook_out": "mlp_out"}
KINDS = ("transcoder_set", "cross_layer_transcoder")
_WRITE_NAMES = {"resid_mid": "hook_resid_mid", "mlp_in": "mlp.hook_in", "mlp_out": "hook_mlp_out"}


class CircuitTracerFormatError(ValueError):
    """A circuit-tracer folder avec cannot read: the message names the file and what is wrong."""


# ----------------------------------------------------------------------------- reading
def _yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise CircuitTracerFormatError(f"{str(path)!r} is not readable YAML: {e}") from None
    if not isinstance(data, dict):
        raise CircuitTracerFormatError(f"{str(path)!r}: expected a mapping of keys (model_kind, feature_input_hook, "
                                       f"...), got {type(data).__name__}")
    return data


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    if not path.is_file():
        raise CircuitTracerFormatError(f"{str(path)!r} is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors' own error types for truncated / garbled files
        raise CircuitTracerFormatError(f"{str(path)!r} is not a readable safetensors file (truncated or corrupt?): "
                                       f"{e}") from None


def _layer_files(folder: Path, pattern: str) -> list[Path]:
    """``pattern`` files (``layer_{}.safetensors``) for layers 0..n-1, refusing gaps."""
    rx = re.compile("^" + re.escape(pattern).replace(r"\{\}", r"(\d+)") + "$")
    found = {int(m.group(1)): p for p in folder.iterdir() if (m := rx.match(p.name))}
    if not found:
        raise CircuitTracerFormatError(f"{str(folder)!r} has no {pattern.format('*')} files")
    missing = sorted(set(range(max(found) + 1)) - set(found))
    if missing:
        raise CircuitTracerFormatError(f"{str(folder)!r}: {pattern.format('i')} files must cover layers 0..{max(found)}; "
                                       f"missing {[pattern.format(i) for i in missing[:5]]}")
    return [found[i] for i in range(len(found))]


def _need(t: dict, key: str, shape: tuple, path: Path) -> torch.Tensor:
    if key not in t:
        raise CircuitTracerFormatError(f"{str(path)!r} has no tensor {key!r} (it has {sorted(t)})")
    if tuple(t[key].shape) != shape:
        raise CircuitTracerFormatError(f"{str(path)!r}: {key} has shape {tuple(t[key].shape)}, expected {shape}")
    return t[key].float()


def load_circuit_tracer(folder: str | Path, lm: Any = None) -> Transcoders:
    """A ``CrossLayerTranscoder`` (or, for a set of per-layer transcoders, one with ``cross_layer=False``;
    a ``Transcoder`` for a one-layer set) from a circuit-tracer folder (module docstring). With ``lm``
    its shapes are checked against the model and ``ln2.hook_normalized`` inputs are folded onto
    ``mlp_in``; the result records its hook points (``lm.add_dictionary(tc)`` attaches it) and the
    folder's config as ``tc.source_config``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no circuit-tracer folder at {str(folder)!r}")
    cfg_path = folder / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no config.yaml (a circuit-tracer folder has config.yaml with "
                                "model_kind, feature_input_hook and feature_output_hook)")
    conf = _yaml(cfg_path)
    missing = [k for k in ("model_kind", "feature_input_hook", "feature_output_hook") if k not in conf]
    if missing:
        raise CircuitTracerFormatError(f"{str(cfg_path)!r} lacks {missing}")
    kind = conf["model_kind"]
    if kind not in KINDS:
        raise CircuitTracerFormatError(f"{str(cfg_path)!r}: model_kind={kind!r}; avec reads {', '.join(KINDS)}")
    hin, hout = conf["feature_input_hook"], conf["feature_output_hook"]
    if hin not in INPUT_HOOKS:
        raise CircuitTracerFormatError(f"{str(cfg_path)!r}: feature_input_hook={hin!r}; avec maps "
                                       f"{', '.join(INPUT_HOOKS)}")
    if hout not in OUTPUT_HOOKS:
        raise CircuitTracerFormatError(f"{str(cfg_path)!r}: feature_output_hook={hout!r}; avec maps "
                                       f"{', '.join(OUTPUT_HOOKS)}")
    if kind == "transcoder_set":
        paths = _set_paths(folder, conf, cfg_path)
        cfg, tensors = _read_set(paths, conf, cfg_path)
    else:
        cfg, tensors = _read_clt(folder)
    cfg = TranscoderConfig(**{**cfg, **_points(cfg["n_layers"], INPUT_HOOKS[hin], OUTPUT_HOOKS[hout])},
                           model_id=getattr(lm, "model_id", None), folded=True)
    if hin == "ln2.hook_normalized":
        if lm is None:
            raise ValueError(f"{str(cfg_path)!r} reads ln2.hook_normalized (the pre-MLP norm before its gain): avec "
                             "reads the norm's output (mlp_in) and folds the gain into the encoders, which needs the "
                             "model: load_circuit_tracer(folder, lm=lm)")
        _fold_norm(tensors, lm, cfg)
    if lm is not None:
        _check_model(cfg, lm, hout, folder)
    tc = build(cfg).load_folded(tensors, source=str(folder))
    tc.source_config = dict(conf)
    return tc


def _set_paths(folder: Path, conf: dict, cfg_path: Path) -> list[Path]:
    listed = conf.get("transcoders")
    if listed is None:
        return _layer_files(folder, "layer_{}.safetensors")
    if not isinstance(listed, list) or not listed:
        raise CircuitTracerFormatError(f"{str(cfg_path)!r}: transcoders should be a list of file paths, one per layer")
    remote = [p for p in listed if isinstance(p, str) and p.startswith("hf://")]
    if remote:
        raise CircuitTracerFormatError(f"{str(cfg_path)!r} lists Hugging Face files ({remote[0]!r}, ...): download "
                                       "them into the folder as layer_{i}.safetensors first (avec reads local files)")
    return [(folder / p) if not Path(p).is_absolute() else Path(p) for p in listed]


def _read_set(paths: list[Path], conf: dict, cfg_path: Path) -> tuple[dict, dict]:
    first = _tensors(paths[0])
    if "W_enc" not in first or first["W_enc"].dim() != 2:
        raise CircuitTracerFormatError(f"{str(paths[0])!r}: expected W_enc [d_sae, d_in] (it has {sorted(first)})")
    d_sae, d_in = first["W_enc"].shape
    d_out = first["b_dec"].shape[0] if "b_dec" in first else d_in
    jump = "activation_function.threshold" in first
    skip = "W_skip" in first
    activation = conf.get("activation")
    arch = {"relu": "relu", "jump_relu": "jumprelu", "jumprelu": "jumprelu", "topk": "topk", None: None}.get(activation, "?")
    if arch == "?":
        raise CircuitTracerFormatError(f"{str(cfg_path)!r}: activation={activation!r}; avec reads relu, jump_relu, topk")
    arch = arch or ("jumprelu" if jump else "relu")
    k = conf.get("k")
    if arch == "topk" and not isinstance(k, int):
        raise CircuitTracerFormatError(f"{str(cfg_path)!r}: activation topk needs an integer k")
    t: dict[str, torch.Tensor] = {}
    enc, benc, dec, bdec, th, sk = [], [], [], [], [], []
    for i, path in enumerate(paths):
        p = first if i == 0 else _tensors(path)
        enc.append(_need(p, "W_enc", (d_sae, d_in), path).T)
        dec.append(_need(p, "W_dec", (d_sae, d_out), path))
        benc.append(_need(p, "b_enc", (d_sae,), path))
        bdec.append(_need(p, "b_dec", (d_out,), path))
        if ("activation_function.threshold" in p) != jump or ("W_skip" in p) != skip:
            raise CircuitTracerFormatError(f"{str(path)!r}: every layer must have the same tensors as layer 0 "
                                           f"({sorted(first)}); it has {sorted(p)}")
        if arch == "jumprelu":
            if not jump:
                raise CircuitTracerFormatError(f"{str(path)!r}: activation jump_relu but no activation_function.threshold")
            th.append(_need(p, "activation_function.threshold", (d_sae,), path))
        if skip:
            sk.append(_need(p, "W_skip", (d_out, d_in), path))
        t[f"W_dec.{i}"] = dec[-1][:, None, :]
    t.update({"W_enc": torch.stack(enc), "b_enc": torch.stack(benc), "b_dec": torch.stack(bdec)})
    if th:
        t["threshold"] = torch.stack(th)
    if sk:
        t["W_skip"] = torch.stack(sk)
    cfg = dict(arch=arch, d_in=int(d_in), d_sae=int(d_sae), d_out=int(d_out), n_layers=len(paths), cross_layer=False,
               k=k if arch == "topk" else None, skip=skip)
    return cfg, t


def _read_clt(folder: Path) -> tuple[dict, dict]:
    enc_paths = _layer_files(folder, "W_enc_{}.safetensors")
    n = len(enc_paths)
    first = _tensors(enc_paths[0])
    if "W_enc_0" not in first or first["W_enc_0"].dim() != 2 or "b_dec_0" not in first:
        raise CircuitTracerFormatError(f"{str(enc_paths[0])!r}: expected W_enc_0 [d_sae, d_in], b_enc_0, b_dec_0 "
                                       f"(it has {sorted(first)})")
    d_sae, d_in = first["W_enc_0"].shape
    d_out = first["b_dec_0"].shape[0]
    jump = "threshold_0" in first
    t: dict[str, torch.Tensor] = {}
    enc, benc, bdec, th = [], [], [], []
    for i, path in enumerate(enc_paths):
        p = first if i == 0 else _tensors(path)
        enc.append(_need(p, f"W_enc_{i}", (d_sae, d_in), path).T)
        benc.append(_need(p, f"b_enc_{i}", (d_sae,), path))
        bdec.append(_need(p, f"b_dec_{i}", (d_out,), path))
        if jump:
            th.append(_need(p, f"threshold_{i}", (d_sae,), path))
        dpath = folder / f"W_dec_{i}.safetensors"
        t[f"W_dec.{i}"] = _need(_tensors(dpath), f"W_dec_{i}", (d_sae, n - i, d_out), dpath)
    t.update({"W_enc": torch.stack(enc), "b_enc": torch.stack(benc), "b_dec": torch.stack(bdec)})
    if th:
        t["threshold"] = torch.stack(th)
    cfg = dict(arch="jumprelu" if jump else "relu", d_in=int(d_in), d_sae=int(d_sae), d_out=int(d_out), n_layers=n,
               cross_layer=n > 1)
    return cfg, t


def _points(n: int, reads: str, writes: str) -> dict:
    return {"reads": [f"blocks.{l}.{reads}" for l in range(n)], "writes": [f"blocks.{l}.{writes}" for l in range(n)]}


def _norm_of(lm: Any, l: int):
    from ..core.norms import ElementwiseNorm

    return ElementwiseNorm(lm.get_module(f"{lm.arch.layers}.{l}.{lm.arch.mlp_in}"))


def _fold_norm(t: dict, lm: Any, cfg: TranscoderConfig) -> None:
    """Inputs read before the norm's gain g and bias b: x_hat = (mlp_in - b) / g, folded into the encoder
    (and skip) so that the transcoder reads mlp_in."""
    for l in range(cfg.n_layers):
        norm = _norm_of(lm, l)
        g = norm.gain.detach().float().cpu()
        if bool((g.abs() < 1e-6).any()):
            raise ValueError(f"layer {l}'s pre-MLP norm has a gain of ~0 in some dimension: a transcoder reading the "
                             "normalised value before the gain cannot be moved after it")
        b = norm.bias.detach().float().cpu() if norm.bias is not None else torch.zeros_like(g)
        shift = b / g
        t["b_enc"][l] = t["b_enc"][l] - shift @ t["W_enc"][l]
        t["W_enc"][l] = t["W_enc"][l] / g[:, None]
        if "W_skip" in t:
            t["b_dec"][l] = t["b_dec"][l] - t["W_skip"][l] @ shift
            t["W_skip"][l] = t["W_skip"][l] / g[None, :]


def _check_model(cfg: TranscoderConfig, lm: Any, hout: str, folder: Path) -> None:
    if cfg.n_layers > lm.n_layers:
        raise ValueError(f"{str(folder)!r} has transcoders for {cfg.n_layers} layers but the model has {lm.n_layers}")
    if cfg.d_in != lm.d_model or cfg.out != lm.d_model:
        raise ValueError(f"{str(folder)!r} reads width {cfg.d_in} and writes {cfg.out}, but the model's d_model is "
                         f"{lm.d_model}")
    if hout == "mlp.hook_out" and lm.arch.mlp_out != "mlp":
        raise ValueError(f"{str(folder)!r} writes mlp.hook_out, the MLP's output before {lm.arch.family}'s post-MLP "
                         "norm, which avec has no hook point for (its mlp_out is after that norm)")


# ----------------------------------------------------------------------------- writing
def _ct_hook(names: tuple[str, ...] | None, what: str) -> str:
    if names is None:
        raise ValueError(f"the transcoder records no {what} hook points (TranscoderConfig {what}=...); circuit-tracer "
                         "needs to know where it reads and writes")
    parts = [re.match(r"^blocks\.(\d+)\.(\w+)$", n) for n in names]
    if not all(parts) or [int(m.group(1)) for m in parts] != list(range(len(names))) \
            or len({m.group(2) for m in parts}) != 1:
        raise ValueError(f"circuit-tracer files hold layers 0..n-1 of one point each ({what}: blocks.0.<p> .. "
                         f"blocks.{len(names) - 1}.<p>), got {list(names)[:4]}")
    point = parts[0].group(2)
    if point not in _WRITE_NAMES or (what == "reads") == (point == "mlp_out"):
        allowed = "resid_mid, mlp_in" if what == "reads" else "mlp_out"
        raise ValueError(f"circuit-tracer has no name for blocks.{{l}}.{point} as a transcoder's {what}; allowed: {allowed}")
    return _WRITE_NAMES[point]


def save_circuit_tracer(tc: Transcoders, folder: str | Path, *, model_name: str, scan: str | None = None,
                        dtype: torch.dtype | None = None, overwrite: bool = False) -> Path:
    """Write ``tc`` as a circuit-tracer folder: a CLT as ``cross_layer_transcoder``, per-layer transcoders
    (``cross_layer=False``, or a ``Transcoder`` of layer 0) as ``transcoder_set``. ``model_name`` is
    the Hugging Face id circuit-tracer loads the model by; ``dtype`` casts the weights (default: as
    they are). A folder holding other transcoder files is refused unless ``overwrite``."""
    import yaml
    from safetensors.torch import save_file

    if not isinstance(tc, Transcoders):
        raise TypeError(f"save_circuit_tracer writes a Transcoder or CrossLayerTranscoder, got {type(tc).__name__}")
    if not isinstance(model_name, str) or not model_name:
        raise ValueError("model_name= is the model's Hugging Face id (circuit-tracer loads the model by it)")
    cfg, t = tc.folded()
    hin, hout = _ct_hook(cfg.reads, "reads"), _ct_hook(cfg.writes, "writes")
    clt = cfg.is_cross_layer
    if clt and cfg.skip:
        raise ValueError("circuit-tracer's cross-layer files hold no skip connection; this CLT has one")
    if clt and cfg.arch == "topk":
        raise ValueError("circuit-tracer's cross-layer files hold ReLU or JumpReLU features, not TopK")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{str(folder)!r} is a file; give a folder")
    folder.mkdir(parents=True, exist_ok=True)
    ours = re.compile(r"^(config\.yaml|layer_\d+\.safetensors|W_(enc|dec)_\d+\.safetensors)$")
    n = cfg.n_layers
    names = ({f"W_enc_{i}.safetensors" for i in range(n)} | {f"W_dec_{i}.safetensors" for i in range(n)} if clt
             else {f"layer_{i}.safetensors" for i in range(n)}) | {"config.yaml"}
    stale = sorted(p.name for p in folder.iterdir() if ours.match(p.name) and p.name not in names)
    existing = sorted(p.name for p in folder.iterdir() if ours.match(p.name))
    if existing and not overwrite:
        raise ValueError(f"{str(folder)!r} already holds transcoder files ({existing[:4]}); pass overwrite=True or "
                         "choose an empty folder")
    cast = (lambda x: x.to(dtype).contiguous()) if dtype is not None else (lambda x: x.contiguous())
    (folder / "config.yaml").unlink(missing_ok=True)  # the config goes last: until then the folder is incomplete
    for name in stale:
        (folder / name).unlink()
    for i in range(n):
        if clt:
            enc = {f"W_enc_{i}": t["W_enc"][i].T, f"b_enc_{i}": t["b_enc"][i], f"b_dec_{i}": t["b_dec"][i]}
            if "threshold" in t:
                enc[f"threshold_{i}"] = t["threshold"][i]
            files = {f"W_enc_{i}.safetensors": enc, f"W_dec_{i}.safetensors": {f"W_dec_{i}": t[f"W_dec.{i}"]}}
        else:
            layer = {"W_enc": t["W_enc"][i].T, "W_dec": t[f"W_dec.{i}"][:, 0], "b_enc": t["b_enc"][i],
                     "b_dec": t["b_dec"][i]}
            if "threshold" in t:
                layer["activation_function.threshold"] = t["threshold"][i]
            if "W_skip" in t:
                layer["W_skip"] = t["W_skip"][i]
            files = {f"layer_{i}.safetensors": layer}
        for fname, tensors in files.items():
            tensors = {k: cast(v) for k, v in tensors.items()}
            atomic_write(folder / fname, lambda tmp, tensors=tensors: save_file(tensors, tmp))
    conf = {"model_name": model_name, "model_kind": "cross_layer_transcoder" if clt else "transcoder_set",
            "feature_input_hook": hin, "feature_output_hook": hout}
    if scan is not None:
        conf["scan"] = scan
    if cfg.arch == "topk":
        conf.update(activation="topk", k=cfg.k)
    atomic_write_text(folder / "config.yaml", yaml.safe_dump(conf, sort_keys=False))
    return folder
