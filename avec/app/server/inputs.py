"""Checks on everything a request sends. A bad value raises ``BadInput`` saying what was wrong and what
is allowed; the server answers it as JSON 400 and the page shows it. Limits keep one request small: a
page is for looking, not for batch jobs (the command line and the Python API have no such limits)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

MAX_BODY_BYTES = 16_384
MAX_PROMPT_CHARS = 500
MAX_PROMPT_TOKENS = 64
MAX_NEW_TOKENS = 64
MAX_COEFF = 200.0
MAX_SCAN_POINTS = 128
MAX_TEMPERATURE = 5.0
MAX_SEED = 2**31 - 1
VECTOR_SUFFIXES = (".safetensors",)


class BadInput(ValueError):
    """A request value that is not allowed (HTTP 400)."""


def fields(body: Any, allowed: set[str], required: set[str] = frozenset()) -> dict:
    """``body`` as a JSON object holding only ``allowed`` keys and every ``required`` one."""
    if not isinstance(body, dict):
        raise BadInput(f"the request body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadInput(f"unknown field(s) {unknown}; allowed: {sorted(allowed)}")
    missing = sorted(required - set(body))
    if missing:
        raise BadInput(f"missing field(s) {missing}")
    return body


def text(value: Any, name: str, max_chars: int = MAX_PROMPT_CHARS, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise BadInput(f"{name} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise BadInput(f"{name} is empty; give some text")
    if len(value) > max_chars:
        raise BadInput(f"{name} is {len(value)} characters; at most {max_chars} are allowed")
    if "\x00" in value:
        raise BadInput(f"{name} contains a NUL character")
    return value


def integer(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(f"{name} must be a whole number in {lo}..{hi}, got {value!r}")
    if not lo <= value <= hi:
        raise BadInput(f"{name} must be in {lo}..{hi}, got {value}")
    return value


def number(value: Any, name: str, lo: float, hi: float, *, open_lo: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadInput(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise BadInput(f"{name} must be a finite number, got {value}")
    if value < lo or value > hi or (open_lo and value == lo):
        raise BadInput(f"{name} must be in {'(' if open_lo else '['}{lo:g}, {hi:g}], got {value:g}")
    return value


def flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise BadInput(f"{name} must be true or false, got {value!r}")
    return value


def layer(value: Any, n_layers: int) -> int:
    return integer(value, "layer", 0, n_layers - 1)


def prompt_tokens(lm: Any, prompt: str, name: str = "prompt", max_tokens: int = MAX_PROMPT_TOKENS) -> list[int]:
    """The prompt's token ids, refused past ``max_tokens``."""
    ids = lm.to_tokens(prompt)
    if len(ids) > max_tokens:
        raise BadInput(f"{name} is {len(ids)} tokens; at most {max_tokens} are allowed")
    return ids


def single_token(lm: Any, value: Any, name: str) -> str:
    token = text(value, name, max_chars=100)
    try:
        lm.token_id(token)
    except ValueError as e:
        raise BadInput(f"{name}: {e}") from None
    return token


def data_file(data_dir: Path | None, name: Any, suffixes: tuple[str, ...] = VECTOR_SUFFIXES, what: str = "vector",
              folders: bool = False) -> Path:
    """The file ``name`` (relative to ``data_dir``), refused unless it resolves (symlinks followed) to a
    file inside ``data_dir`` with one of ``suffixes`` (or, with ``folders``, to a folder inside it none of
    whose files leads out of it). The browser names files; it never gives paths. ``what`` names the field."""
    if data_dir is None:
        raise BadInput(f"this server reads no files: start it with --data-dir DIR to read {what} files from DIR")
    name = text(name, what, max_chars=300)
    if Path(name).is_absolute():
        raise BadInput(f"{what} must be a file name inside the data folder, not an absolute path: {name!r}")
    root = data_dir.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        raise BadInput(f"{what} {name!r} is outside the data folder; only files under it can be read")
    if folders and path.is_dir():
        if any(not p.resolve().is_relative_to(root) for p in path.rglob("*")):
            raise BadInput(f"{what} {name!r} holds a link to a file outside the data folder; only files under it "
                           "can be read")
        return path
    if path.suffix not in suffixes:
        raise BadInput(f"{what} {name!r} has suffix {path.suffix!r}; allowed: {', '.join(suffixes)}"
                       + (" or a folder" if folders else ""))
    if not path.is_file():
        raise BadInput(f"{what} {name!r} is not a file in the data folder")
    return path


def list_data_files(data_dir: Path | None, suffixes: tuple[str, ...] = VECTOR_SUFFIXES, limit: int = 500) -> list[str]:
    """Files under ``data_dir`` with those suffixes, as relative names (sorted; links out of it skipped)."""
    if data_dir is None:
        return []
    root = data_dir.resolve()
    out = []
    for p in sorted(root.rglob("*")):
        if p.suffix in suffixes and p.is_file() and p.resolve().is_relative_to(root):
            out.append(p.relative_to(root).as_posix())
            if len(out) >= limit:
                break
    return out
