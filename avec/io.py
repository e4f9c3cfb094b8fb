"""Atomic file writes: readers never see half a file, and a crash leaves the old file in place."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """``write(tmp_path)`` fills a temporary file beside ``path``, which then replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


# ------------------------------------------------------------------------------ output paths
FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def _nearest_existing(path: Path) -> Path:
    """``path`` itself or its nearest ancestor that exists."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_folder_reachable(folder: Path, what: str, original) -> None:
    """Every existing ancestor of ``folder`` must be a writable folder; then ``folder`` is created."""
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise ValueError(f"{what} {str(original)!r}: {str(existing)!r} is a file, not a folder; "
                         "choose a path inside a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {str(original)!r}: folder {str(existing)!r} is not writable; "
                         "choose a path in a folder you can write to")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{what} {str(original)!r}: cannot create folder {str(folder)!r} ({e.strerror or e})") from None


def check_writable(path: str | os.PathLike, suffixes: tuple[str, ...] | None = None, *,
                   what: str = "output path") -> Path:
    """Check, before any long computation, that a file can be written at ``path``; returns it as a Path.

    Refused with a ``ValueError`` that names ``what`` (e.g. ``"--out"``), the path and what is allowed:
    an empty path; a path that is an existing folder; a suffix not in ``suffixes`` (case-insensitive;
    ``None`` allows any); a path below an existing *file*; a path whose nearest existing folder is not
    writable.

    Missing parent folders are created here, as ``mkdir -p`` would (``--out runs/today/fig.png`` works
    the way users expect, and the writers, ``atomic_write`` included, create them too); creating them
    now means a folder that cannot be created fails up front, not after the computation (an accepted
    path whose computation then fails may leave an empty folder behind).
    """
    if path is None or str(path).strip() == "":
        raise ValueError(f"{what} is empty; give a file path")
    p = Path(path).expanduser()
    if p.is_dir():
        raise ValueError(f"{what} {str(path)!r} is an existing folder; give a file path inside it")
    if suffixes is not None and p.suffix.lower() not in tuple(s.lower() for s in suffixes):
        raise ValueError(f"{what} {str(path)!r} has suffix {p.suffix or '(none)'!r}; allowed: {', '.join(suffixes)}")
    _check_folder_reachable(p.parent, what, path)
    return p


def check_writable_dir(path: str | os.PathLike, *, what: str = "output folder") -> Path:
    """Like ``check_writable`` for an output *folder*: refused if ``path`` is an existing file, lies
    below a file or in an unwritable place; created (with its parents) if missing."""
    if path is None or str(path).strip() == "":
        raise ValueError(f"{what} is empty; give a folder path")
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ValueError(f"{what} {str(path)!r} is an existing file; give a folder path")
    _check_folder_reachable(p, what, path)
    return p


def atomic_savefig(fig: Any, path: str | os.PathLike, **kwargs: Any) -> Path:
    """``fig.savefig(path, **kwargs)`` written atomically (the format is taken from the suffix)."""
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, **kwargs))


def check_out_option(path: str | os.PathLike | None, suffixes: tuple[str, ...] | None = None, *,
                     what: str = "--out", folder: bool = False):
    """For CLI commands: ``check_writable`` (or ``check_writable_dir`` with ``folder``) of an optional
    output option, its ValueError turned into a ``typer.BadParameter`` (exit status 2). None passes."""
    if path is None:
        return None
    import typer

    try:
        return check_writable_dir(path, what=what) if folder else check_writable(path, suffixes, what=what)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
