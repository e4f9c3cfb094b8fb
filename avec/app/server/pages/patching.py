"""Activation patching of a clean / corrupted prompt pair: the clean run's activation copied into the
corrupted run one (layer, position) cell at a time, for the residual stream, the attention outputs and the
MLP outputs; the metric is the logit difference between the clean and the corrupted answer, normalised (1 =
the clean run, 0 = the corrupted one). Heatmaps (hover for the score and the raw logit difference); the
sweep runs many forward passes, so progress streams to the page."""

from __future__ import annotations

from typing import Any

from ....patching import activation_patching
from .. import inputs as I
from ..progress import steps
from . import Page

POINTS = ("resid_pre", "attn_out", "mlp_out")
DIRECTIONS = ("denoise", "noise")
MAX_PATCH_TOKENS = 32  # per prompt: cells = layers x positions per point


def _patch(lm: Any, clean: str, corrupted: str, answer: str, wrong: str, points: list[str], first: int | None,
           last: int | None, direction: str) -> dict:
    I.prompt_tokens(lm, clean, "clean", MAX_PATCH_TOKENS)
    I.prompt_tokens(lm, corrupted, "corrupted", MAX_PATCH_TOKENS)
    I.single_token(lm, answer, "answer")
    I.single_token(lm, wrong, "wrong")
    first = 0 if first is None else I.integer(first, "first_layer", 0, lm.n_layers - 1)
    last = lm.n_layers - 1 if last is None else I.integer(last, "last_layer", 0, lm.n_layers - 1)
    if last < first:
        raise I.BadInput(f"last_layer ({last}) is below first_layer ({first})")
    out = {}
    for i, point in enumerate(points):
        what = f"patching {point}" + (f" ({i + 1} of {len(points)})" if len(points) > 1 else "")
        res = activation_patching(lm, clean, corrupted, point, "position", answer=answer, wrong=wrong,
                                  layers=range(first, last + 1), direction=direction, progress=steps(what))
        out[point] = res.to_dict()
    return {"results": out, "points": points, "answer": answer, "wrong": wrong}


async def run(state: Any, body: dict) -> dict:
    b = I.fields(body, {"clean", "corrupted", "answer", "wrong", "points", "first_layer", "last_layer", "direction"},
                 {"clean", "corrupted", "answer", "wrong"})
    clean = I.text(b["clean"], "clean", max_chars=200)
    corrupted = I.text(b["corrupted"], "corrupted", max_chars=200)
    answer = I.text(b["answer"], "answer", max_chars=100)
    wrong = I.text(b["wrong"], "wrong", max_chars=100)
    points = b.get("points", list(POINTS))
    if not isinstance(points, list) or not points or any(p not in POINTS for p in points) \
            or len(set(points)) != len(points):
        raise I.BadInput(f"points must be a non-empty list of distinct names from {list(POINTS)}, got {points!r}")
    direction = b.get("direction", "denoise")
    if direction not in DIRECTIONS:
        raise I.BadInput(f"direction must be one of {list(DIRECTIONS)}, got {direction!r}")
    first, last = b.get("first_layer"), b.get("last_layer")
    for name, v in (("first_layer", first), ("last_layer", last)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise I.BadInput(f"{name} must be a whole number, got {v!r}")
    return await state.lm.call(_patch, clean, corrupted, answer, wrong, points, first, last, direction)


BODY = """
<section class="controls">
  <label>clean <input id="clean" size="34" value="The capital of France is"></label>
  <label>corrupted <input id="corrupted" size="34" value="The capital of Germany is"></label>
  <label>answer <input id="answer" size="8" value=" Paris"></label>
  <label>wrong <input id="wrong" size="8" value=" Berlin"></label>
  <fieldset><legend>points</legend>
    <label><input type="checkbox" class="point" value="resid_pre" checked> resid_pre</label>
    <label><input type="checkbox" class="point" value="attn_out" checked> attn_out</label>
    <label><input type="checkbox" class="point" value="mlp_out" checked> mlp_out</label>
  </fieldset>
  <label>layers from <input id="first-layer" type="number" min="0" value="0" style="width:4em"></label>
  <label>to <input id="last-layer" type="number" min="0" style="width:4em"></label>
  <label>direction <select id="direction"><option>denoise</option><option>noise</option></select></label>
  <button id="run">Patch</button>
  <span id="status" class="meta" aria-live="polite"></span>
</section>
<p class="meta">Each cell: the clean run's activation at that layer and position copied into the corrupted run
(denoise; noise: the reverse), scored by logit(answer) - logit(wrong) at the last position, normalised so that 1
is the clean run and 0 the corrupted one. The prompts must have the same number of tokens (at most 32).</p>
<p id="baseline" class="meta"></p>
<div id="plots"></div>
"""

SCRIPT = r"""
const $ = (id) => document.getElementById(id);
let seq = 0;

function draw(point, R) {
  let div = $("plot-" + point);
  if (!div) {
    div = document.createElement("div"); div.id = "plot-" + point; div.className = "plot";
    $("plots").appendChild(div);
  }
  const y = R.labels[0].map((l) => "L" + l);
  Plotly.react(div, [{
    type: "heatmap", x: R.labels[1], y: y, z: R.values, customdata: R.raw, colorscale: "RdBu", reversescale: true,
    zmid: 0, hovertemplate: "%{y}, position %{x}<br>score %{z:.3f}<br>logit diff %{customdata:.3f}<extra></extra>",
    colorbar: {title: {text: "score"}},
  }], {title: {text: point + " (" + R.direction + ")", font: {size: 13}}, margin: {t: 40, l: 60},
       xaxis: {type: "category"}, yaxis: {type: "category"}}, {responsive: true});
}

async function run() {
  const mine = ++seq;
  const points = [...document.querySelectorAll(".point")].filter((c) => c.checked).map((c) => c.value);
  const body = {clean: $("clean").value, corrupted: $("corrupted").value, answer: $("answer").value,
                wrong: $("wrong").value, points: points, direction: $("direction").value,
                first_layer: avec.int($("first-layer").value)};
  if ($("last-layer").value !== "") body.last_layer = avec.int($("last-layer").value);
  try {
    const d = await avec.stream("/api/patching/run", body, (p) => { if (mine === seq) avec.showProgress(p); });
    if (mine !== seq) return;
    for (const div of [...$("plots").children]) if (!d.points.includes(div.id.slice(5))) { Plotly.purge(div); div.remove(); }
    for (const point of d.points) draw(point, d.results[point]);
    const R = d.results[d.points[0]];
    $("baseline").textContent = "logit(" + JSON.stringify(d.answer) + ") - logit(" + JSON.stringify(d.wrong) + "): clean "
      + R.clean_metric.toFixed(3) + ", corrupted " + R.corrupted_metric.toFixed(3) + "; " + R.values.length + " layers x "
      + R.values[0].length + " positions per point";
    avec.clearError();
  } catch (e) { if (mine === seq) avec.showError(e.message); }
}

$("run").addEventListener("click", run);
(async () => {
  const m = await avec.model();
  $("first-layer").max = $("last-layer").max = m.n_layers - 1;
  $("last-layer").value = m.n_layers - 1;
  run();
})().catch((e) => avec.showError(e.message));
"""

PAGE = Page("patching", "Activation patching", "Which layers and positions carry the answer: patch clean into corrupted.",
            BODY, SCRIPT, {"run": run})
