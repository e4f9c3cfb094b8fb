"""Attribution graphs: a prompt and a transcoder (an avec transcoder / cross-layer transcoder file, or a
circuit-tracer folder, under ``--data-dir``) -> ``avec.circuits.attribute`` on the model's worker, its
progress streamed, then the pruned graph in the viewer of ``avec.circuits.view`` (nodes by position and
layer; click a node for its edges; a feature node links to its feature page, read from the same transcoder).

The graph (``AttributionGraph``) is kept in memory (the last few); the JSON answer is its ``to_dict`` (the
circuit-tracer / Neuronpedia graph JSON) at the chosen thresholds, and the viewer is served at
``/graph/view/<id>``. No transcoder for SmolLM2 ships with avec yet (``avec transcoder train`` makes one).
"""

from __future__ import annotations

import re
import secrets
from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from .. import dictionaries as D
from .. import inputs as I
from ..progress import steps
from . import Page

MAX_GRAPH_TOKENS = 32
MAX_FEATURE_NODES = 2000
MAX_LOGITS = 20
MAX_MEMORY_GB = 2.0
_GRAPHS = 8  # graphs kept per model
_ID = re.compile(r"^[0-9a-f]{16}$")


def _thresholds(b: dict) -> tuple[float, float]:
    return (I.number(b.get("node_threshold", 0.8), "node_threshold", 0.0, 1.0, open_lo=True),
            I.number(b.get("edge_threshold", 0.98), "edge_threshold", 0.0, 1.0, open_lo=True))


def _summary(g: Any, nt: float, et: float) -> dict:
    p = g.prune(nt, et)
    rep, comp = g.scores()
    kept = p.nodes.nonzero().flatten().tolist()
    return {"nodes": len(kept), "edges": int(p.edges.sum()), "all_nodes": g.n_nodes, "all_edges": int(g.targets.numel()),
            "feature_nodes": sum(1 for n in kept if n < g.n_features), "replacement_score": rep,
            "completeness_score": comp, "logits": [[s, float(q)] for s, q in zip(g.logit_strs, g.logit_probs)]}


def _view_url(graph_id: str, nt: float, et: float) -> str:
    return f"/graph/view/{graph_id}?" + urlencode({"node_threshold": nt, "edge_threshold": et})


def _run(lm: Any, state: Any, src: D.Source, prompt: str, nt: float, et: float, max_feature_nodes: int,
         max_n_logits: int) -> dict:
    from ....circuits import attribute

    I.prompt_tokens(lm, prompt, max_tokens=MAX_GRAPH_TOKENS)
    module = D.load(lm, src, state.lm.memo("dictionaries", 4))
    g = attribute(lm, module, prompt, max_feature_nodes=max_feature_nodes, max_n_logits=max_n_logits,
                  max_memory_gb=MAX_MEMORY_GB, progress=steps("attribution"))
    graph_id = secrets.token_hex(8)
    state.lm.memo("graphs", _GRAPHS).put(graph_id, (g, src))
    return {"id": graph_id, "graph": g.to_dict(nt, et, slug=f"avec-{graph_id}"), "summary": _summary(g, nt, et),
            "view": _view_url(graph_id, nt, et), "transcoder": src.to_dict()}


async def run(state: Any, body: dict) -> dict:
    b = I.fields(body, {"prompt", "transcoder", "node_threshold", "edge_threshold", "max_feature_nodes", "max_n_logits"},
                 {"prompt", "transcoder"})
    prompt = I.text(b["prompt"], "prompt")
    nt, et = _thresholds(b)
    max_feature_nodes = I.integer(b.get("max_feature_nodes", 200), "max_feature_nodes", 0, MAX_FEATURE_NODES)
    max_n_logits = I.integer(b.get("max_n_logits", 5), "max_n_logits", 1, MAX_LOGITS)
    src = await run_in_threadpool(D.resolve, state, b["transcoder"], await state.lm.model_id(), ("transcoder",),
                                  "transcoder")
    return await state.lm.call(_run, state, src, prompt, nt, et, max_feature_nodes, max_n_logits)


def _kept(state: Any, graph_id: str) -> tuple:
    got = state.lm.memo("graphs", _GRAPHS).get(graph_id)
    if got is None:
        raise I.BadInput(f"no graph {graph_id!r} on this server (only the last {_GRAPHS} are kept); make it again")
    return got


def _prune(lm: Any, state: Any, graph_id: str, nt: float, et: float) -> dict:
    g, src = _kept(state, graph_id)
    return {"id": graph_id, "graph": g.to_dict(nt, et, slug=f"avec-{graph_id}"), "summary": _summary(g, nt, et),
            "view": _view_url(graph_id, nt, et), "transcoder": src.to_dict()}


async def prune(state: Any, body: dict) -> dict:
    """The kept graph at other thresholds (no new attribution)."""
    b = I.fields(body, {"id", "node_threshold", "edge_threshold"}, {"id"})
    graph_id = b["id"]
    if not isinstance(graph_id, str) or not _ID.match(graph_id):
        raise I.BadInput(f"id must be a graph id (16 hex digits) this server gave, got {graph_id!r}")
    nt, et = _thresholds(b)
    return await state.lm.call(_prune, state, graph_id, nt, et)


async def transcoders(state: Any, body: dict) -> dict:
    found = await run_in_threadpool(D.list_sources, state, await state.lm.model_id(), ("transcoder",))
    return {"transcoders": [s.to_dict() for s in found],
            "data_dir": state.data_dir is not None}


def _render(lm: Any, state: Any, graph_id: str, nt: float, et: float) -> str:
    from ....circuits.view import graph_page

    g, src = _kept(state, graph_id)
    # every feature node links to its page on the features view, read from the same transcoder
    pages = {(l, f): "/feature?" + urlencode({"dictionary": src.name, "layer": l, "id": f})
             for l, _, f in g.features.tolist()}
    return graph_page(g, node_threshold=nt, edge_threshold=et, dashboards=pages, plotly_js="file",
                      plotly_src="/static/plotly.min.js")


async def view(request: Request):
    state = request.app.state.avec
    graph_id = request.path_params["graph_id"]
    try:
        if not _ID.match(graph_id):
            raise I.BadInput(f"not a graph id: {graph_id!r}")
        q = request.query_params
        given = {}
        for k in ("node_threshold", "edge_threshold"):
            if k in q:
                try:
                    given[k] = float(q[k])
                except ValueError:
                    raise I.BadInput(f"{k} must be a number, got {q[k]!r}") from None
        nt, et = _thresholds(given)
        page = await state.lm.call(_render, state, graph_id, nt, et)
    except I.BadInput as e:
        return JSONResponse({"error": str(e)}, status_code=400)
    return HTMLResponse(page)


BODY = """
<section class="controls">
  <label class="wide">Prompt <input id="prompt" value="The capital of France is"></label>
  <label>transcoder <select id="transcoder"></select></label>
  <label>node threshold <input id="node-threshold" type="number" value="0.8" min="0" max="1" step="0.01" style="width:5em"></label>
  <label>edge threshold <input id="edge-threshold" type="number" value="0.98" min="0" max="1" step="0.01" style="width:5em"></label>
  <label>feature nodes <input id="max-feature-nodes" type="number" value="200" min="0" max="2000" style="width:5em"></label>
  <label>logits <input id="max-n-logits" type="number" value="5" min="1" max="20" style="width:4em"></label>
  <button id="run">Attribute</button>
  <button id="prune" disabled>Prune again</button>
  <span id="status" class="meta" aria-live="polite"></span>
</section>
<p id="note" class="meta"></p>
<p id="summary" class="meta"></p>
<iframe id="graph-view" title="attribution graph" style="width:100%;height:880px;border:1px solid #ccc" hidden></iframe>
"""

SCRIPT = r"""
const $ = (id) => document.getElementById(id);
let seq = 0, current = null;

function show(d) {
  current = d;
  const s = d.summary;
  $("summary").textContent = s.nodes + " of " + s.all_nodes + " nodes (" + s.feature_nodes + " features), " + s.edges +
    " of " + s.all_edges + " edges; replacement score " + s.replacement_score.toFixed(3) + ", completeness " +
    s.completeness_score.toFixed(3) + "; top logits: " + s.logits.map((l) => JSON.stringify(l[0]) + " " + l[1].toPrecision(3)).join(", ");
  $("graph-view").hidden = false;
  $("graph-view").src = d.view;
  $("prune").disabled = false;
}

function thresholds() {
  return {node_threshold: parseFloat($("node-threshold").value), edge_threshold: parseFloat($("edge-threshold").value)};
}

async function run() {
  const mine = ++seq;
  const body = {prompt: $("prompt").value, transcoder: $("transcoder").value, ...thresholds(),
                max_feature_nodes: avec.int($("max-feature-nodes").value), max_n_logits: avec.int($("max-n-logits").value)};
  try {
    const d = await avec.stream("/api/graph/run", body, (p) => { if (mine === seq) avec.showProgress(p); });
    if (mine !== seq) return;
    show(d);
    avec.clearError();
  } catch (e) { if (mine === seq) avec.showError(e.message); }
}

async function prune() {
  if (!current) return;
  const mine = ++seq;
  try {
    const d = await avec.post("/api/graph/prune", {id: current.id, ...thresholds()});
    if (mine !== seq) return;
    show(d);
    avec.clearError();
  } catch (e) { if (mine === seq) avec.showError(e.message); }
}

$("run").addEventListener("click", run);
$("prune").addEventListener("click", prune);
(async () => {
  const d = await avec.get("/api/graph/transcoders");
  $("transcoder").replaceChildren(...d.transcoders.map((t) => {
    const o = document.createElement("option"); o.value = t.name; o.textContent = t.name + " (" + t.layers + " layers)"; return o; }));
  $("run").disabled = !d.transcoders.length;
  $("note").textContent = d.transcoders.length
    ? "Attribution runs one forward pass per prompt prefix and a batched backward pass per group of nodes; the graph shows the nodes and edges carrying the thresholds' share of the influence on the top logits."
    : "No transcoder here: avec ships none for SmolLM2 yet (train one with `avec transcoder train`), so put an avec " +
      "transcoder file (.safetensors) or a circuit-tracer folder in the folder given by --data-dir" +
      (d.data_dir ? "." : " (none was given).");
})().catch((e) => avec.showError(e.message));
"""

PAGE = Page("graph", "Attribution graph", "A prompt's attribution graph through a transcoder: features, errors, tokens, logits.",
            BODY, SCRIPT, {"run": run, "prune": prune, "transcoders:get": transcoders},
            extra=(Route("/graph/view/{graph_id}", view),))
