"""Logit lens and direct logit attribution of one prompt: what each layer's residual predicts at every
position (a heatmap: hover for the lens's top-1 token and probabilities), and how each component and
each attention head writes onto the answer's logit at the last position."""

from __future__ import annotations

from typing import Any

from ....lens import dla, logit_lens
from .. import inputs as I
from . import Page


def _lens(lm: Any, prompt: str, target: str | None, against: str | None) -> dict:
    I.prompt_tokens(lm, prompt)
    if target is not None:
        I.single_token(lm, target, "target")
    if against is not None:
        I.single_token(lm, against, "against")
    lens = logit_lens(lm, prompt)  # tracks the model's own final top-1 at each position
    answer = target if target is not None else int(lens.tracked[0, -1, 0])  # default: the model's prediction
    attribution = dla(lm, prompt, answer, against, heads=True)
    return {"lens": lens.to_dict(), "dla": attribution.to_dict()}


async def run(state: Any, body: dict) -> dict:
    b = I.fields(body, {"prompt", "target", "against"}, {"prompt"})
    prompt = I.text(b["prompt"], "prompt")
    target = None if b.get("target") in (None, "") else I.text(b["target"], "target", max_chars=100)
    against = None if b.get("against") in (None, "") else I.text(b["against"], "against", max_chars=100)
    return await state.lm.call(_lens, prompt, target, against)


BODY = """
<section class="controls">
  <label class="wide">Prompt <input id="prompt" value="The Eiffel Tower is in the city of"></label>
  <label>target <input id="target" placeholder="the model's top-1"></label>
  <label>against <input id="against" placeholder="none"></label>
  <button id="run">Run</button>
</section>
<section>
  <h3>Logit lens</h3>
  <p class="meta">Each residual point read through the final norm and unembedding. Colour: the probability
  that point gives the token the model finally predicts at that position; text: the point's own top-1.</p>
  <div id="lens-plot" class="plot tall"></div>
</section>
<section>
  <h3>Direct logit attribution</h3>
  <p class="meta">What each component (and each attention head) adds directly to the answer's logit at the last
  position, the final norm's scale frozen at its value in the run; the parts sum to the logit.</p>
  <div id="dla-plot" class="plot"></div>
  <div id="heads-plot" class="plot"></div>
</section>
"""

SCRIPT = r"""
const $ = (id) => document.getElementById(id);
let seq = 0;

function drawLens(L) {
  const cols = [];
  L.valid[0].forEach((ok, s) => { if (ok) cols.push(s); });
  const x = cols.map((s) => s + ":" + L.input_labels[0][s]);
  const z = L.probs.map((point) => cols.map((s) => point[0][s][0]));
  const text = L.top_labels.map((point) => cols.map((s) => point[0][s]));
  const top = L.top_probs.map((point) => cols.map((s) => point[0][s]));
  Plotly.react("lens-plot", [{
    type: "heatmap", x: x, y: L.point_labels, z: z, text: text, customdata: top, colorscale: "Blues", reversescale: true,
    zmin: 0, zmax: 1, texttemplate: "%{text}", textfont: {size: 9},
    hovertemplate: "%{y}, position %{x}<br>lens top-1: %{text} (p %{customdata:.3f})<br>" +
                   "p(final top-1): %{z:.3f}<extra></extra>",
    colorbar: {title: {text: "p"}},
  }], {title: {text: "Logit lens - " + L.model_name, font: {size: 13}}, margin: {t: 40, l: 80},
       xaxis: {type: "category"}, yaxis: {type: "category"}}, {responsive: true});
}

function drawDla(D) {
  Plotly.react("dla-plot", [{
    type: "bar", x: D.names, y: D.components[0],
    marker: {color: D.names.map((n) => n.endsWith("attn") ? "#4477aa" : n.endsWith("mlp") ? "#cc6677" : "#888")},
    hovertemplate: "%{x}: %{y:.4f}<extra></extra>",
  }], {title: {text: "DLA of " + D.label + " = " + D.logit[0].toFixed(3) + " (blue attn, red mlp)", font: {size: 13}},
       margin: {t: 40}, xaxis: {tickangle: -60}}, {responsive: true});
  const heads = D.heads[0];
  Plotly.react("heads-plot", [{
    type: "heatmap", z: heads, x: heads[0].map((_, h) => "H" + h), y: heads.map((_, l) => "L" + l),
    colorscale: "RdBu", zmid: 0,  // Plotly's RdBu: low blue, high red (positive writes red, as avec's plots)
    hovertemplate: "%{y} %{x}: %{z:.4f}<extra></extra>",
  }], {title: {text: "per head" + (D.frozen_post_norm ? " (post-norm scale frozen)" : ""), font: {size: 13}},
       margin: {t: 40}, yaxis: {type: "category"}}, {responsive: true});
}

async function run() {
  const mine = ++seq;
  const body = {prompt: $("prompt").value, target: $("target").value || null, against: $("against").value || null};
  try {
    const d = await avec.post("/api/lens/run", body);
    if (mine !== seq) return;
    drawLens(d.lens);
    drawDla(d.dla);
    avec.clearError();
  } catch (e) { if (mine === seq) avec.showError(e.message); }
}

$("run").addEventListener("click", run);
$("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter") run(); });
run();
"""

PAGE = Page("lens", "Logit lens and DLA", "What each layer predicts, and which components write the answer.",
            BODY, SCRIPT, {"run": run})
