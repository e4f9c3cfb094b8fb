"""The maze explorer: a maze from a seed, a shipped policy's vector field (the action distribution with
the mouse on every open cell, one batched forward pass), the same field steered by the cheese and/or the
top-right vector at ``embedder.block2.res1.resadd_out``, and the difference; the probabilities at the
decision square. Policies are named (the shipped checkpoints), never given as paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import inputs as I
from . import Page

MAX_MAZE_SEED = 10**9
MAX_MAZE_COEFF = 10.0


def shipped_policies() -> list[str]:
    """Names of the policies shipped in avec/maze/checkpoints that were trained on avec's world: the explorer
    draws avec's pictures, which a policy trained on procgen's (``procgen_region5``) has never seen."""
    import json

    from safetensors import safe_open

    from ....maze import policy

    def backend(path: Path) -> str:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("avec", "{}"))
        return (meta.get("config") or {}).get("backend", "avec")

    return sorted(p.stem for p in (Path(policy.__file__).parent / "checkpoints").glob("*.safetensors")
                  if backend(p) == "avec")


def _decision(field) -> dict | None:
    try:
        d = field.decision()
    except ValueError:  # a maze without a decision square
        return None
    return {**d, "decision_square": list(d["decision_square"])}


def _fields(policy: Any, seed: int, size: int | None, cheese: float | None, top_right: float | None) -> dict:
    from ....maze.experiments import cheese_vector, top_right_vector
    from ....maze.fields import vector_field
    from ....maze.world import Maze

    maze = Maze.from_seed(seed, size=size)
    parts, names = [], []
    if cheese is not None:
        parts.append(cheese * cheese_vector(policy, maze))
        names.append(f"{cheese:g} x cheese")
    if top_right is not None:
        parts.append(top_right * top_right_vector(policy, maze))
        names.append(f"{top_right:g} x top-right")
    steer = None
    if parts:
        steer = parts[0]
        for p in parts[1:]:
            steer = steer + p
    label = " + ".join(names) or "not steered"
    original = vector_field(policy, maze)
    steered = vector_field(policy, maze, steer=steer, label=label)
    return {"diff": steered.diff(original).to_dict(), "decision": {"original": _decision(original),
                                                                   "steered": _decision(steered)}}


async def field(state: Any, body: dict) -> dict:
    b = I.fields(body, {"seed", "size", "policy", "cheese", "top_right"}, {"seed", "policy"})
    seed = I.integer(b["seed"], "seed", 0, MAX_MAZE_SEED)
    size = None if b.get("size") is None else I.integer(b["size"], "size", 3, 25)
    if size is not None and size % 2 == 0:
        raise I.BadInput(f"size must be odd (3, 5, ..., 25), got {size}")
    names = shipped_policies()
    if b["policy"] not in names:
        raise I.BadInput(f"unknown policy {b['policy']!r}; shipped: {names}")
    coeffs = {k: None if b.get(k) is None else I.number(b[k], k, -MAX_MAZE_COEFF, MAX_MAZE_COEFF)
              for k in ("cheese", "top_right")}
    name = b["policy"]

    def load():
        from ....maze.policy import load_policy

        return load_policy(name)

    return await state.slot(f"maze:{name}", load).call(_fields, seed, size, coeffs["cheese"], coeffs["top_right"])


async def policies(state: Any, body: dict) -> dict:
    return {"policies": shipped_policies()}


BODY = """
<section class="controls">
  <label>seed <input id="seed" type="number" value="7" min="0"></label>
  <label>size <input id="size" type="number" value="13" min="3" max="25" step="2"></label>
  <label>policy <select id="policy"></select></label>
  <label><input id="use-cheese" type="checkbox" checked> cheese vector</label>
  <label>coefficient <input id="cheese" type="range" min="-3" max="3" step="0.25" value="-1">
    <output id="cheese-value">-1</output></label>
  <label><input id="use-top-right" type="checkbox"> top-right vector</label>
  <label>coefficient <input id="top-right" type="range" min="-3" max="3" step="0.25" value="1">
    <output id="top-right-value">1</output></label>
  <button id="run">Show</button>
</section>
<p class="meta">Arrows: P(right) - P(left), P(up) - P(down) with the mouse on each open cell (the policy's
5-way action distribution); the vectors are added at embedder.block2.res1.resadd_out on every forward pass.</p>
<p id="decision" class="meta"></p>
<section class="fields">
  <div id="field-original" class="plot"></div>
  <div id="field-steered" class="plot"></div>
  <div id="field-diff" class="plot"></div>
</section>
"""

SCRIPT = r"""
const $ = (id) => document.getElementById(id);
let seq = 0, timer = null;

function drawField(id, maze, cells, arrows, title, color) {
  const lo = maze.pad - 0.5, hi = maze.pad + maze.size + 0.5;
  const xs = [], ys = [], sizes = [];
  cells.forEach(([r, c], k) => {
    const [dx, dy] = arrows[k];
    xs.push(c + 0.5 - dx / 2, c + 0.5 + dx / 2, null);
    ys.push(r + 0.5 + dy / 2, r + 0.5 - dy / 2, null);  // "up" is towards row 0
    sizes.push(0, 7, 0);
  });
  const walls = {type: "heatmap", z: maze.grid.map((row) => row.map((open) => open ? 1 : 0)),
                 x0: 0.5, y0: 0.5, dx: 1, dy: 1, colorscale: [[0, "#555"], [1, "#f4f1e8"]], showscale: false,
                 hoverinfo: "skip"};
  const traces = [walls, {type: "scatter", mode: "lines+markers", x: xs, y: ys, hoverinfo: "skip",
                          line: {color: color, width: 1.5}, marker: {symbol: "arrow", size: sizes, angleref: "previous", color: color}}];
  if (maze.cheese) traces.push({type: "scatter", mode: "markers", x: [maze.cheese[1] + 0.5], y: [maze.cheese[0] + 0.5],
                                marker: {symbol: "star", size: 14, color: "gold", line: {color: "black", width: 1}}, name: "cheese", hoverinfo: "name"});
  Plotly.react(id, traces, {title: {text: title, font: {size: 12}}, showlegend: false, margin: {t: 30, l: 10, r: 10, b: 10},
                            xaxis: {range: [lo, hi], visible: false, scaleanchor: "y"},
                            yaxis: {range: [hi, lo], visible: false}, width: 360, height: 380}, {displayModeBar: false});
}

function describe(d) {
  if (!d) return "no decision square";
  return "P(cheese) " + d.p_cheese.toFixed(3) + ", P(top-right) " + d.p_top_right.toFixed(3);
}

async function run() {
  const mine = ++seq;
  const size = $("size").value === "" ? null : avec.int($("size").value);
  const body = {seed: avec.int($("seed").value), size: size, policy: $("policy").value,
                cheese: $("use-cheese").checked ? parseFloat($("cheese").value) : null,
                top_right: $("use-top-right").checked ? parseFloat($("top-right").value) : null};
  try {
    const d = await avec.post("/api/maze/field", body);
    if (mine !== seq) return;
    const f = d.diff;
    drawField("field-original", f.b.maze, f.b.cells, f.b.arrows, f.b.label, "#c0392b");
    drawField("field-steered", f.a.maze, f.a.cells, f.a.arrows, f.a.label, "#c0392b");
    drawField("field-diff", f.a.maze, f.a.cells, f.arrows, "steered - original", "#1f5fbf");
    $("decision").textContent = "At the decision square: original " + describe(d.decision.original) +
                                "; steered " + describe(d.decision.steered) + ".";
    avec.clearError();
  } catch (e) { if (mine === seq) avec.showError(e.message); }
}

function later() { clearTimeout(timer); timer = setTimeout(run, 120); }
for (const id of ["cheese", "top-right"]) {
  $(id).addEventListener("input", () => { $(id + "-value").textContent = $(id).value; later(); });
}
for (const id of ["use-cheese", "use-top-right", "policy"]) $(id).addEventListener("change", run);
$("run").addEventListener("click", run);
avec.get("/api/maze/policies").then((d) => {
  $("policy").replaceChildren(...d.policies.map((p) => { const o = document.createElement("option"); o.value = o.textContent = p; return o; }));
  run();
}).catch((e) => avec.showError(e.message));
"""

PAGE = Page("maze", "Maze explorer", "A policy's vector field, steered by the cheese and top-right vectors.",
            BODY, SCRIPT, {"field": field, "policies:get": policies})
