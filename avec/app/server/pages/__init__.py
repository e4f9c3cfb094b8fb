"""Pages of the web app. A page is an HTML body, its script and its JSON endpoints; the server mounts
every page it is given (``create_app(pages=...)``), lists them in the navigation and on the index.

A new view (the maze explorer, SAE feature dashboards, the attribution-graph viewer) is one more module
here with a ``PAGE``: its endpoints compute a result in a model slot (``state.lm``, or its own slot via
``state.slot(name, loader)``) and answer the result's ``to_dict()``; its script draws that with Plotly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from ..inputs import MAX_BODY_BYTES, BadInput

log = logging.getLogger("avec.server")

# what avec's own checks raise for bad arguments (as the command line treats them): answered 400
BAD_INPUT = (ValueError, KeyError, TypeError, IndexError)

Handler = Callable[[Any, dict], Awaitable[Any]]


@dataclass(frozen=True)
class Page:
    """slug: the page's URL (``/<slug>``) and API prefix (``/api/<slug>/...``); body: HTML inside
    ``<main>``; script: JavaScript run once Plotly and ``avec.js`` are loaded; endpoints: ``{name:
    handler}``, each ``async handler(state, body) -> JSON data`` served at ``POST /api/<slug>/<name>``
    (``GET`` when the name ends in ``:get``; body is then ``{}``); extra: other routes (e.g. a page of HTML
    a handler made); nav: listed in the navigation and on the index (a page reached by links only, such
    as one feature's page, is not)."""

    slug: str
    title: str
    summary: str
    body: str
    script: str
    endpoints: dict[str, Handler] = field(default_factory=dict)
    extra: tuple[Route, ...] = ()
    nav: bool = True

    def routes(self) -> list[Route]:
        out = list(self.extra)
        for name, handler in self.endpoints.items():
            method = "GET" if name.endswith(":get") else "POST"
            path = f"/api/{self.slug}/{name.removesuffix(':get')}"
            out.append(Route(path, json_endpoint(handler, method == "POST"), methods=[method]))
        return out


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def read_json(request: Request) -> Any:
    """The request's JSON body: application/json only (a cross-site form cannot send that without a CORS
    preflight, which this server never grants), at most ``MAX_BODY_BYTES``."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise _Refused(415, f"send JSON (content-type application/json), got {kind or 'no content type'!r}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _Refused(413, f"the request body is {declared} bytes; at most {MAX_BODY_BYTES} are allowed")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise _Refused(413, f"the request body is over {MAX_BODY_BYTES} bytes")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise BadInput(f"the request body is not valid JSON: {e}") from None


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def json_endpoint(handler: Handler, has_body: bool = True) -> Callable[[Request], Awaitable[Any]]:
    """A Starlette endpoint around ``handler``: bad input -> 400 with the reason, anything else that goes
    wrong -> 500 with the exception's type and message (logged with its traceback); the server stays up.
    A client that accepts ``text/event-stream`` gets the answer as server-sent events, progress first
    (``progress.py``)."""

    async def answer(request: Request, body: Any) -> tuple[int, Any]:
        try:
            return 200, await handler(request.app.state.avec, body)
        except BAD_INPUT as e:
            msg = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 else e
            return 400, {"error": " ".join(str(msg).split()) or type(e).__name__}
        except Exception as e:  # noqa: BLE001 - answered, logged, and the server goes on
            log.error("error in %s:\n%s", request.url.path, traceback.format_exc())
            return 500, {"error": f"internal error: {type(e).__name__}: {' '.join(str(e).split())}"}

    async def endpoint(request: Request):
        try:
            body = await read_json(request) if has_body else {}
        except _Refused as e:
            return error(e.status, str(e))
        except BadInput as e:
            return error(400, str(e))
        if "text/event-stream" not in request.headers.get("accept", ""):
            status, payload = await answer(request, body)
            return JSONResponse(payload, status_code=status)
        return StreamingResponse(_events(answer(request, body)), media_type="text/event-stream",
                                 headers={"cache-control": "no-store"})

    return endpoint


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, allow_nan=False)}\n\n"


async def _events(work: Awaitable[tuple[int, Any]]):
    """``progress`` events while ``work`` runs (it reports through ``progress.report``), then its answer."""
    from .. import progress

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    token = progress._sink.set(lambda event: loop.call_soon_threadsafe(queue.put_nowait, event))
    try:
        task = asyncio.ensure_future(work)  # the task copies the context: reports reach this queue
    finally:
        progress._sink.reset(token)
    while True:
        getter = asyncio.ensure_future(queue.get())
        done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            yield _sse("progress", getter.result())
            continue
        getter.cancel()
        while not queue.empty():
            yield _sse("progress", queue.get_nowait())
        status, payload = task.result()
        yield _sse("result", payload) if status == 200 else _sse("error", {"status": status, **payload})
        return


def default_pages() -> list[Page]:
    """The pages ``avec serve`` shows, in navigation order."""
    from .features import FEATURE, PAGE as features
    from .graph import PAGE as graph
    from .lens import PAGE as lens
    from .maze import PAGE as maze
    from .patching import PAGE as patching
    from .steering import PAGE as steering

    return [steering, lens, patching, maze, features, FEATURE, graph]
