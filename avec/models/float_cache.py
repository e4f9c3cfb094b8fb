"""The float cache in ``$AVEC_CACHE_DIR`` (default ``~/.cache/avec``): float weights, config and tokenizer
of a converted GGUF, kept as safetensors so later loads take a second or two instead of a dequantization.

transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the cache is written by hand: the state
dict with safetensors (tied weights once) and the config without its quantization entry. The marker
``avec-cache.json`` records size, mtime and sha256 of each file: a load compares size and mtime (free) and
hashes only a file whose mtime changed (``AVEC_VERIFY_CACHE=1``: every file, every load). Writers of a key
hold its lock (``models/.{key}.lock``, a ``filelock`` lock: ``flock`` on Unix); temporary files left by an
interrupted writer are removed by a later load once their owner process is gone and the key's lock is free.
The cache also remembers which pinned files matched their sha256 (``gguf/verified.json``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..io import atomic_write_json
from .gguf_file import _sha256


CACHE_FORMAT = 2  # 2: config records `architectures` (other tools key adapters on it)


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


# -- marker and checksums ---------------------------------------------------------------------------


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



# -- the per-key lock --------------------------------------------------------------------------------


def _lock_path(key: str) -> Path:
    return cache_root() / "models" / f".{key}.lock"


@contextmanager
def _lock(key: str):
    """Hold ``key``'s lock, waiting for it: every writer of the key's cache (or of its temporary files) holds
    it, so concurrent first loads (e.g. parallel test workers) convert once. The lock file stays in place."""
    from filelock import FileLock

    path = _lock_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path):
        yield


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


def _stale_temps(assembly_key: str | None = None) -> list[tuple[Path, str, int | None]]:
    """Temporary files/folders of conversions and assemblies: (path, lock key, owner pid or None).
    ``assembly_key``: the key whose lock guarded assemblies into ``gguf/`` that used the old temp name
    ``.assemble-XXXXXXXX`` (without it, such files are not listed)."""
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
                if assembly_key is not None:
                    out.append((p, assembly_key, None))
    return out


def clean_stale_temps(assembly_key: str | None = None) -> list[Path]:
    """Remove temporary files left by interrupted conversions or assemblies, i.e. those whose owner
    process is gone and whose key's lock is free (every writer holds that lock). Returns what was removed.
    ``assembly_key``: see ``_stale_temps`` (``load`` passes the multi-part bundled model's name)."""
    from filelock import FileLock, Timeout

    removed = []
    try:
        temps = _stale_temps(assembly_key)
    except OSError:
        return removed
    for path, key, pid in temps:
        if pid is not None and pid != os.getpid() and _pid_alive(pid):
            continue
        if pid == os.getpid():
            continue
        lock = _lock_path(key)
        if not lock.parent.is_dir():  # no lock can be taken there (FileLock would create the folder)
            continue
        try:
            with FileLock(lock, timeout=0):  # try once: a writer of this key holds it while it runs
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed.append(path)
        except Timeout:
            continue  # a conversion of this key is running
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
