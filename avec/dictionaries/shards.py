"""The activation store's on-disk cache: sharded safetensors plus ``index.json``.

Layout of a cache folder::

    index.json               settings (model id, hook points, context rule, corpus, dtype, ...) and
                             the completed shards, in order, with their token counts
    shard_00000.safetensors  {hook point: [n_tokens, d]} for ``contexts_per_shard`` contexts
    ...

Every shard is written atomically and only then listed in the index (also written atomically), so
an interrupted run leaves a valid cache of whole shards and the next run resumes at the next one.
Each shard also records a hash of its contexts' token ids: a resumed run checks that the corpus
gives the same tokens before appending to it. A cache is reused only under the settings it was
built with.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

import torch

from ..io import atomic_write, atomic_write_json, check_writable_dir

FORMAT = "avec-activation-store/1"
INDEX = "index.json"


def shard_name(i: int) -> str:
    return f"shard_{i:05d}.safetensors"


def tokens_hash(ids: torch.Tensor) -> str:
    """A short hash of a shard's contexts ``[n, context]``, to check a resumed corpus."""
    return hashlib.sha1(ids.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()[:16]


class ShardCache:
    """One cache folder under fixed ``settings`` (a JSON-able dict; every key must match to reuse)."""

    def __init__(self, folder: str | Path, settings: dict[str, Any]):
        self.folder = check_writable_dir(folder, what="cache_dir")
        self.settings = settings
        path = self.folder / INDEX
        if path.exists():
            try:
                self.index = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise ValueError(f"cache_dir {str(folder)!r}: {INDEX} cannot be read ({e}); delete the folder "
                                 "or choose another") from None
            self._check(folder)
        else:
            stray = [p.name for p in self.folder.iterdir() if not p.name.startswith(".")]
            if stray:
                raise ValueError(f"cache_dir {str(folder)!r} holds files ({', '.join(sorted(stray)[:5])}) but no "
                                 f"{INDEX}: it is not an activation store; choose an empty or new folder")
            self.index = {"format": FORMAT, "settings": settings, "shards": [], "complete": False}

    def _check(self, folder) -> None:
        if self.index.get("format") != FORMAT:
            raise ValueError(f"cache_dir {str(folder)!r} is not an activation store of this version "
                             f"(format {self.index.get('format')!r}, expected {FORMAT!r})")
        have = self.index.get("settings", {})
        diff = [f"{k}: cache has {have.get(k)!r}, asked {v!r}" for k, v in self.settings.items() if have.get(k) != v]
        diff += [f"{k}: cache has {v!r}, asked nothing" for k, v in have.items() if k not in self.settings]
        if diff:
            raise ValueError(f"cache_dir {str(folder)!r} holds activations of other settings, so it is not reused:\n  "
                             + "\n  ".join(diff) + "\nuse another folder, or delete this one to rebuild it")
        for s in self.index["shards"]:
            if not (self.folder / s["file"]).exists():
                raise ValueError(f"cache_dir {str(folder)!r}: {s['file']} is listed in {INDEX} but missing; "
                                 "delete the folder to rebuild it")

    # -- state ---------------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return bool(self.index["complete"])

    @property
    def shards(self) -> list[dict[str, Any]]:
        return list(self.index["shards"])

    @property
    def n_tokens(self) -> int:
        return sum(s["tokens"] for s in self.index["shards"])

    # -- writing -------------------------------------------------------------------------------
    def write_shard(self, i: int, acts: dict[str, torch.Tensor], ids: torch.Tensor) -> None:
        """Write shard ``i`` (``acts``: hook -> ``[n_tokens, d]``; ``ids``: its contexts ``[n, context]``),
        then list it in the index. Shards are written in order."""
        from safetensors.torch import save_file

        if i != len(self.index["shards"]):
            raise RuntimeError(f"shard {i} written out of order (the index lists {len(self.index['shards'])})")
        name = shard_name(i)
        tensors = {k: v.contiguous() for k, v in acts.items()}
        atomic_write(self.folder / name, lambda tmp: save_file(tensors, tmp))
        n = int(next(iter(acts.values())).shape[0])
        self.index["shards"].append({"file": name, "tokens": n, "contexts": int(ids.shape[0]),
                                     "tokens_sha1": tokens_hash(ids)})
        self._save()

    def finish(self) -> None:
        self.index["complete"] = True
        self._save()

    def _save(self) -> None:
        atomic_write_json(self.folder / INDEX, self.index)

    # -- reading -------------------------------------------------------------------------------
    def read(self, rank: int = 0, world_size: int = 1) -> Iterator[dict[str, torch.Tensor]]:
        """The shards ``i`` with ``i % world_size == rank``, in order: ``{hook: [n_tokens, d]}``."""
        for i in range(len(self.index["shards"])):
            if i % world_size == rank:
                yield self.load(i)

    def load(self, i: int) -> dict[str, torch.Tensor]:
        """Shard ``i``: ``{hook: [n_tokens, d]}``."""
        from safetensors.torch import load_file

        return load_file(self.folder / self.index["shards"][i]["file"])
