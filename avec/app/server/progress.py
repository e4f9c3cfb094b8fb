"""Progress of the request being served, streamed to the page as server-sent events.

A client that sends ``Accept: text/event-stream`` gets ``progress`` events while its request waits for
the model and runs (``{"stage": "queued", "ahead": n}``, ``{"stage": "running"}``, ``{"stage":
"generating", "done": k, "total": n}``), then one ``result`` event (the JSON answer) or one ``error``
event (``{"status": 400, "error": ...}``). Code running for a request calls ``report(...)``; it reaches
that request's stream (a context variable, carried onto the model's worker thread), and does nothing
when the client asked for plain JSON.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Callable

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
