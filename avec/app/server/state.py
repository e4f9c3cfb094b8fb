"""What the server shares between requests: models, each loaded once and used by one worker thread.

avec's interventions attach torch hooks for the length of one call (``lm.generate(interventions=...)``,
``lm.run(...)``); hooks live on the modules, so two calls overlapping on one model would see each
other's edits. Each model therefore gets ONE worker thread: requests queue for it, the event loop never
waits on a forward pass, and a request's hooks are gone before the next request's call starts. (On a
CPU torch already spreads one forward pass over the cores, so a second concurrent pass would not be faster.)
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


class ModelSlot:
    """A model loaded once (on first use, or given loaded) and the one thread that runs work on it."""

    def __init__(self, name: str, loader: Callable[[], Any] | None = None, model: Any = None):
        if model is None and loader is None:
            raise ValueError("a model slot needs a loaded model or a loader")
        self.name = name
        self._loader = loader
        self._model = model
        self._load_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"avec-{name}")
        self.calls = 0
        self.pending = 0  # calls submitted and not finished (the one running included)
        self._count_lock = threading.Lock()
        self._memos: dict[str, OrderedDict] = {}  # what pages keep between calls (touched on the worker thread only)

    @property
    def model(self) -> Any:
        """The model (loaded here the first time; later calls get the same object)."""
        with self._load_lock:
            if self._model is None:
                self._model = self._loader()
            return self._model

    @property
    def loaded(self) -> Any:
        """The model if it is loaded, else None (never loads it: safe on the event loop)."""
        return self._model

    async def model_id(self) -> str:
        """The model's ``model_id`` (without queueing behind the worker once the model is loaded)."""
        lm = self.loaded
        return lm.model_id if lm is not None else await self.call(lambda lm: lm.model_id)

    def memo(self, kind: str, limit: int) -> "Memo":
        """The store of ``kind`` (e.g. steering vectors, latent indexes, graphs) kept between calls: at most
        ``limit`` entries, the least recently used dropped first. One per kind, so one page's many small
        entries never push out another's costly ones. Use it on the worker thread only."""
        if kind not in self._memos:
            self._memos[kind] = Memo(limit)
        return self._memos[kind]

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(model, *args, **kwargs)`` on this slot's worker thread; awaits its result. The request's
        context (its progress stream) goes along; it hears how many calls are ahead, then that it runs."""
        from .progress import report

        loop = asyncio.get_running_loop()
        with self._count_lock:
            ahead = self.pending
            self.pending += 1
        report(stage="queued", ahead=ahead, model=self.name)

        def work():
            try:
                self.calls += 1
                report(stage="running", model=self.name)
                return fn(self.model, *args, **kwargs)
            finally:
                with self._count_lock:
                    self.pending -= 1

        return await loop.run_in_executor(self._executor, contextvars.copy_context().run, work)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class Memo(OrderedDict):
    """A small LRU store: ``keep(key, make)`` returns the kept value, or makes, keeps and returns it."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def keep(self, key: Any, make: Callable[[], Any]) -> Any:
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = make()
        self.put(key, value)
        return value

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


@dataclass
class ServerState:
    """The language model's slot (``lm``), other models' slots by name (a page adds its own, e.g. a maze
    policy), the one folder files may be read from (``data_dir``; None: no files at all), and how many
    held-out contexts (of how many tokens) feature pages read their examples from."""

    lm: ModelSlot
    data_dir: Path | None = None
    slots: dict[str, ModelSlot] = field(default_factory=dict)
    feature_contexts: int = 256
    feature_context_tokens: int = 32

    def slot(self, name: str, loader: Callable[[], Any]) -> ModelSlot:
        """The slot ``name``, made (not yet loaded) on first request."""
        if name not in self.slots:
            self.slots[name] = ModelSlot(name, loader)
        return self.slots[name]

    def close(self) -> None:
        for s in [self.lm, *self.slots.values()]:
            s.close()
