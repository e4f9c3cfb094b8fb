"""Progress of the request being served, streamed to the page as server-sent events.

A client that sends ``Accept: text/event-stream`` gets ``progress`` events while its request waits for
the model and runs (``{"stage": "queued", "ahead": n}``, ``{"stage": "running"}``, ``{"stage":
"generating", "done": k, "total": n}``), then one ``result`` event (the JSON answer) or one ``error``
event (``{"status": 400, "error": ...}``). Code running for a request calls ``report(...)``; it reaches
that request's stream (a context variable, carried onto the model's worker thread), and does nothing
when the client asked for plain JSON.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterator

_sink: ContextVar[Callable[[dict], None] | None] = ContextVar("avec_progress_sink", default=None)


def report(**event: Any) -> None:
    """Send ``event`` to the current request's stream, if it has one."""
    send = _sink.get()
    if send is not None:
        send(event)


def generation_steps(what: str = "generating") -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback for ``lm.generate`` that reports each token."""
    return lambda done, total: report(stage=what, done=done, total=total)


def steps(what: str) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback (avec's long functions take one) reporting stage ``what``."""
    return lambda done, total: report(stage=what, done=done, total=total)


_bars_lock = threading.Lock()
_bars_users = 0
_plain_tqdm: Any = None


@contextmanager
def tqdm_bars() -> Iterator[None]:
    """While inside, every ``tqdm.auto.tqdm`` bar created also reports its count to the stream of the request
    that created it (its stage: the bar's description). For library code that shows progress only as a tqdm
    bar it imports when called (``avec.circuits.attribute``). The bar class is swapped process-wide, but each
    report goes to the creating request's own stream (a context variable), and nowhere outside a request;
    the swap is counted, so overlapping users restore the plain class only when the last one leaves."""
    global _bars_users, _plain_tqdm
    import tqdm.auto

    with _bars_lock:
        if _bars_users == 0:
            _plain_tqdm = tqdm.auto.tqdm
            tqdm.auto.tqdm = _reporting(_plain_tqdm)
        _bars_users += 1
    try:
        yield
    finally:
        with _bars_lock:
            _bars_users -= 1
            if _bars_users == 0:
                tqdm.auto.tqdm = _plain_tqdm


def _reporting(base: type) -> type:
    class ReportingBar(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any):
            self._avec_sink = _sink.get()
            self._avec_done = 0
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> Any:
            out = super().update(n)
            self._avec_done += n or 0  # counted here too: a disabled bar does not count
            if self._avec_sink is not None:
                total = getattr(self, "total", None)
                self._avec_sink({"stage": getattr(self, "desc", "") or "working", "done": int(self._avec_done),
                                 "total": None if total is None else int(total)})
            return out

    return ReportingBar
