"""``avec serve``: a local web app over avec's techniques (Starlette on uvicorn).

    from avec.app.server import create_app
    app = create_app(lm)                    # an ASGI app; a loaded model, or a name loaded on first use

Pages (``pages/``): the steering playground, the logit lens / DLA view, activation patching, the maze explorer,
SAE feature pages and attribution graphs. Each page's endpoints check
every input (``inputs.py``), run the model on the model's one worker thread (``state.py``: a request's
hooks never meet another's) and answer a result's ``to_dict()``; the page draws it with Plotly, served
from the installed plotly package. A client that accepts ``text/event-stream`` gets progress events
first (``progress.py``). Files are read only from the folder given at start (``data_dir``),
never from a path the browser sends; safetensors only (no pickle), nothing evaluated.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path
from typing import Any, Sequence

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


MAX_FEATURE_CONTEXTS = 4096


def create_app(lm: Any = "smollm2", *, data_dir: str | Path | None = None, pages: Sequence | None = None,
               allowed_hosts: Sequence[str] | None = None, feature_contexts: int = 256,
               feature_context_tokens: int = 32):
    """The web app (an ASGI app) for the model ``lm`` (loaded, or a name for ``avec.load``, loaded once on
    first use). ``data_dir``: the only folder files (saved vectors, dictionaries) are read from.
    ``allowed_hosts``: Host headers answered (default: local names only, which stops DNS-rebinding pages
    from reaching it). ``feature_contexts`` held-out contexts of ``feature_context_tokens`` tokens: where
    feature pages find their top examples (read once per dictionary, kept in memory)."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.responses import FileResponse, HTMLResponse, Response
    from starlette.routing import Route

    from .layout import CSS, JS, index, shell
    from .pages import default_pages, json_endpoint
    from .state import ModelSlot, ServerState

    for name, v, hi in (("feature_contexts", feature_contexts, MAX_FEATURE_CONTEXTS), ("feature_context_tokens",
                                                                                        feature_context_tokens, 512)):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
            raise ValueError(f"{name} must be a whole number in 1..{hi}, got {v!r}")
    if data_dir is not None:
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise NotADirectoryError(f"data_dir {str(data_dir)!r} is not a folder")
    if isinstance(lm, str):
        name = lm

        def load():
            from ...models import load as load_model

            return load_model(name)

        slot = ModelSlot(name, loader=load)
    else:
        slot = ModelSlot(getattr(lm, "name", "model"), model=lm)
    state = ServerState(slot, data_dir, feature_contexts=feature_contexts,
                        feature_context_tokens=feature_context_tokens)
    pages = list(default_pages() if pages is None else pages)
    slugs = [p.slug for p in pages]
    if len(set(slugs)) != len(slugs) or any(s in ("api", "static", "") for s in slugs):
        raise ValueError(f"page slugs must be distinct and not 'api', 'static' or empty, got {slugs}")

    async def model_info(state: Any, body: dict) -> dict:
        def info(lm):
            d = lm.dims
            return {"name": lm.name, "n_layers": d.n_layers, "d_model": d.d_model, "n_heads": d.n_heads,
                    "vocab": d.vocab}

        return await state.lm.call(info)

    def page_route(page):
        async def show(request):
            return HTMLResponse(shell(page.title, pages, page.slug, slot.name, page.body, page.script))

        return Route(f"/{page.slug}", show)

    async def home(request):
        return HTMLResponse(index(pages, slot.name))

    import plotly

    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"

    async def plotly_file(request):
        return FileResponse(plotly_js, media_type="text/javascript")

    async def avec_js(request):
        return Response(JS, media_type="text/javascript")

    async def avec_css(request):
        return Response(CSS, media_type="text/css")

    async def no_icon(request):  # browsers ask for one; answered, so the console shows no 404
        return Response(status_code=204)

    routes = [Route("/", home), Route("/favicon.ico", no_icon), Route("/static/plotly.min.js", plotly_file), Route("/static/avec.js", avec_js),
              Route("/static/avec.css", avec_css), Route("/api/model", json_endpoint(model_info, False))]
    for page in pages:
        routes += [page_route(page), *page.routes()]
    hosts = list(allowed_hosts) if allowed_hosts is not None else ["127.0.0.1", "localhost", "[::1]"]
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        state.close()

    app = Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)],
                    lifespan=lifespan)
    app.state.avec = state
    return app


class BackgroundServer:
    """uvicorn serving ``app`` on a thread (tests, benchmarks, notebooks): ``with BackgroundServer(app) as s:
    urlopen(s.url + "/lens")``. Port 0 picks a free port (the socket is bound before the thread starts)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def serve(model: str = "smollm2", host: str = "127.0.0.1", port: int = 8000, data_dir: str | Path | None = None,
          echo=print, feature_contexts: int = 256) -> None:
    """Load ``model`` once, then serve the app on ``host:port`` until interrupted (Ctrl-C)."""
    import uvicorn

    from ...models import load

    t = time.time()
    lm = load(model)
    echo(f"loaded {lm.name} in {time.time() - t:.1f} s")
    hosts = None if host in LOCAL_HOSTS else ["*"]  # bound to a public address: any Host header
    app = create_app(lm, data_dir=data_dir, allowed_hosts=hosts, feature_contexts=feature_contexts)
    shown = f"[{host}]" if ":" in host else host
    echo(f"avec serve: http://{shown}:{port}/  (Ctrl-C stops it)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
