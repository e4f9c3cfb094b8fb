"""The steering playground: a vector from a prompt pair (ActAdd, at a layer's resid_pre) or a saved file
under --data-dir; unsteered and steered completions side by side (greedy, or sampled with a seed: the
same request always gives the same text); the coefficient scan of a logit difference, with the
slider's coefficient marked on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ....steering import SteeringVector, coefficient_scan, contrast, generate_cells
from ....steering.generation import Completions
from .. import inputs as I
from ..progress import generation_steps
from ..state import Memo
from . import Page

_MAX_VECTORS = 32  # vectors kept per model: a slider drag re-uses the same vector


def _source(state: Any, body: dict) -> tuple:
    """("pair", plus, minus, layer) or ("file", path, mtime): checked here, the layer once the model is known."""
    if body.get("vector") not in (None, ""):
        if any(body.get(k) not in (None, "") for k in ("plus", "minus")):
            raise I.BadInput("give either a saved vector or a prompt pair (plus, minus), not both")
        path = I.data_file(state.data_dir, body["vector"])
        return ("file", str(path), path.stat().st_mtime_ns)
    if body.get("plus") is None or body.get("minus") is None:
        raise I.BadInput("give a prompt pair (plus and minus) or a saved vector")
    plus = I.text(body["plus"], "plus", max_chars=200)
    minus = I.text(body["minus"], "minus", max_chars=200)
    if isinstance(body.get("layer"), bool) or not isinstance(body.get("layer"), int):
        raise I.BadInput(f"layer must be a whole number, got {body.get('layer')!r}")
    return ("pair", plus, minus, body["layer"])


def _vector(lm: Any, source: tuple, memo: Memo) -> SteeringVector:
    """The vector for ``source`` on ``lm`` (runs on the model's worker thread; ``memo`` is the model slot's)."""

    def make() -> SteeringVector:
        if source[0] == "pair":
            _, plus, minus, layer = source
            I.layer(layer, lm.n_layers)
            I.prompt_tokens(lm, plus, "plus", 32)
            I.prompt_tokens(lm, minus, "minus", 32)
            return contrast(lm, plus, minus, at=layer)
        return SteeringVector.load(source[1], lm)  # safetensors + JSON metadata, checked against lm

    return memo.keep(source, make)


def _label(vector: SteeringVector, source: tuple) -> str:
    if source[0] == "pair":
        return f"({source[1]} - {source[2]}) @ layer {source[3]}"
    return Path(source[1]).name


def _generate(lm: Any, prompt: str, source: tuple, coeff: float, max_new_tokens: int, sample: bool, seed: int,
              temperature: float, memo: Memo) -> dict:
    I.prompt_tokens(lm, prompt)
    vector = _vector(lm, source, memo)
    kw = dict(seed=seed, do_sample=sample, temperature=temperature, progress=generation_steps())
    # both in one batched call: the unsteered row is the same whatever the coefficient (0 * v adds nothing)
    out = generate_cells(lm, [prompt], [("unsteered", None, 0.0), ("steered", vector, coeff)], max_new_tokens, **kw)
    settings = (f"sampled T={temperature:g}" if sample else "greedy") + f", {max_new_tokens} tokens, seed {seed}"
    result = Completions((prompt,), tuple(out["unsteered"]), tuple(out["steered"]),
                         f"{coeff:g} x {_label(vector, source)}", settings)
    return {"completions": result.to_dict(), "describe": vector.describe(), "hooks": list(vector.hooks)}


async def generate(state: Any, body: dict) -> dict:
    b = I.fields(body, {"prompt", "plus", "minus", "vector", "layer", "coeff", "max_new_tokens", "sample", "seed",
                        "temperature"}, {"prompt", "coeff"})
    prompt = I.text(b["prompt"], "prompt")
    coeff = I.number(b["coeff"], "coeff", -I.MAX_COEFF, I.MAX_COEFF)
    max_new_tokens = I.integer(b.get("max_new_tokens", 24), "max_new_tokens", 1, I.MAX_NEW_TOKENS)
    sample = I.flag(b.get("sample", False), "sample")
    seed = I.integer(b.get("seed", 0), "seed", 0, I.MAX_SEED)
    temperature = I.number(b.get("temperature", 1.0), "temperature", 0.0, I.MAX_TEMPERATURE, open_lo=True)
    source = _source(state, b)
    return await state.lm.call(_generate, prompt, source, coeff, max_new_tokens, sample, seed, temperature,
                               state.lm.memo("steering-vectors", _MAX_VECTORS))


def _scan(lm: Any, prompt: str, source: tuple, target: str, against: str, lo: float, hi: float, n: int,
          memo: Memo) -> dict:
    I.prompt_tokens(lm, prompt)
    I.single_token(lm, target, "target")
    I.single_token(lm, against, "against")
    vector = _vector(lm, source, memo)
    result = coefficient_scan(lm, prompt, vector, (target, against), n=n, lo=lo, hi=hi)
    return {**result.to_dict(), "top": result.top(6), "label": _label(vector, source)}


async def scan(state: Any, body: dict) -> dict:
    b = I.fields(body, {"prompt", "plus", "minus", "vector", "layer", "target", "against", "lo", "hi", "n"},
                 {"prompt", "target", "against"})
    prompt = I.text(b["prompt"], "prompt")
    lo = I.number(b.get("lo", -20.0), "lo", -I.MAX_COEFF, I.MAX_COEFF)
    hi = I.number(b.get("hi", 20.0), "hi", -I.MAX_COEFF, I.MAX_COEFF)
    if not lo < hi:
        raise I.BadInput(f"lo must be below hi, got lo={lo:g}, hi={hi:g}")
    n = I.integer(b.get("n", 41), "n", 2, I.MAX_SCAN_POINTS)
    source = _source(state, b)
    return await state.lm.call(_scan, prompt, source, b["target"], b["against"], lo, hi, n,
                               state.lm.memo("steering-vectors", _MAX_VECTORS))


async def vectors(state: Any, body: dict) -> dict:
    return {"files": I.list_data_files(state.data_dir), "data_dir": state.data_dir is not None}


BODY = """
<section class="controls">
  <label class="wide">Prompt <textarea id="prompt" rows="2">I hate you because</textarea></label>
  <fieldset>
    <legend>Vector</legend>
    <label><input type="radio" name="source" value="pair" id="source-pair" checked> prompt pair (ActAdd)</label>
    <label><input type="radio" name="source" value="file" id="source-file"> saved vector</label>
    <div id="pair-fields">
      <label>plus <input id="plus" value="Love"></label>
      <label>minus <input id="minus" value="Hate"></label>
      <label>layer <input id="layer" type="number" value="6" min="0" step="1"></label>
    </div>
    <div id="file-fields" hidden><select id="vector"></select> <span id="vector-note" class="meta"></span></div>
  </fieldset>
  <label>coefficient <input id="coeff" type="range" min="-20" max="20" step="0.5" value="5">
    <output id="coeff-value">5</output></label>
  <label>new tokens <input id="max-new-tokens" type="number" value="24" min="1" max="64"></label>
  <label><input id="sample" type="checkbox"> sample</label>
  <label>seed <input id="seed" type="number" value="0" min="0"></label>
  <label>temperature <input id="temperature" type="number" value="1" min="0.1" max="5" step="0.1"></label>
  <button id="generate">Generate</button>
  <span id="status" class="meta" aria-live="polite"></span>
</section>
<section class="side-by-side">
  <div><h3>unsteered</h3><pre id="unsteered" class="completion"></pre></div>
  <div><h3 id="steered-title">steered</h3><pre id="steered" class="completion"></pre></div>
</section>
<section>
  <h3>Coefficient scan</h3>
  <p class="meta">logit(target) - logit(against) at the prompt's last token, one batched forward pass over
  the coefficients; the dotted line is the slider's coefficient.</p>
  <label>target <input id="target" value=" love"></label>
  <label>against <input id="against" value=" hate"></label>
  <label>from <input id="lo" type="number" value="-20"></label>
  <label>to <input id="hi" type="number" value="20"></label>
  <label>points <input id="n" type="number" value="41" min="2" max="128"></label>
  <button id="scan">Scan</button>
  <div id="scan-plot" class="plot"></div>
</section>
"""

SCRIPT = r"""
const $ = (id) => document.getElementById(id);
let genSeq = 0, scanSeq = 0, timer = null;

function source() {
  if ($("source-file").checked) return {vector: $("vector").value};
  return {plus: $("plus").value, minus: $("minus").value, layer: avec.int($("layer").value)};
}
function coeff() { return parseFloat($("coeff").value); }

function markCoeff() {
  $("coeff-value").textContent = $("coeff").value;
  const plot = $("scan-plot");
  if (plot.data) Plotly.relayout(plot, {"shapes[0].x0": coeff(), "shapes[0].x1": coeff()});
}

async function generate() {
  const mine = ++genSeq;
  const body = {prompt: $("prompt").value, coeff: coeff(), max_new_tokens: avec.int($("max-new-tokens").value),
                sample: $("sample").checked, seed: avec.int($("seed").value),
                temperature: parseFloat($("temperature").value), ...source()};
  try {
    const d = await avec.stream("/api/steering/generate", body, (p) => { if (mine === genSeq) avec.showProgress(p); });
    if (mine !== genSeq) return;  // a later request (the slider moved on) owns the display
    const c = d.completions;
    avec.completion($("unsteered"), c.prompts[0], c.unsteered[0]);
    avec.completion($("steered"), c.prompts[0], c.steered[0]);
    $("steered-title").textContent = "steered: " + c.vector + " (" + c.settings + ")";
    avec.clearError();
  } catch (e) { if (mine === genSeq) avec.showError(e.message); }
}

async function scan() {
  const mine = ++scanSeq;
  const body = {prompt: $("prompt").value, target: $("target").value, against: $("against").value,
                lo: parseFloat($("lo").value), hi: parseFloat($("hi").value), n: avec.int($("n").value), ...source()};
  try {
    const d = await avec.post("/api/steering/scan", body);
    if (mine !== scanSeq) return;
    const traces = [
      {x: d.coeffs, y: d.total, name: "total (sum of components)", line: {color: "black", width: 3}},
      {x: d.coeffs, y: d.actual, name: "from the run's logits", line: {color: "orange", dash: "dash"}},
    ];
    for (const name of d.top) {
      const j = d.names.indexOf(name);
      traces.push({x: d.coeffs, y: d.contributions.map((row) => row[j]), name: name, line: {width: 1}});
    }
    Plotly.react("scan-plot", traces, {
      title: {text: d.metric + " vs coefficient of " + d.label, font: {size: 13}},
      xaxis: {title: {text: "coefficient"}}, yaxis: {title: {text: d.metric}}, margin: {t: 40},
      shapes: [{type: "line", x0: coeff(), x1: coeff(), yref: "paper", y0: 0, y1: 1, line: {color: "red", dash: "dot"}}],
    }, {responsive: true});
    avec.clearError();
  } catch (e) { if (mine === scanSeq) avec.showError(e.message); }
}

async function loadVectors() {
  const d = await avec.get("/api/steering/vectors");
  const select = $("vector");
  select.replaceChildren(...d.files.map((f) => { const o = document.createElement("option"); o.value = o.textContent = f; return o; }));
  $("source-file").disabled = !d.files.length;
  $("vector-note").textContent = d.data_dir ? (d.files.length ? "" : "no .safetensors vectors in the data folder")
                                            : "start the server with --data-dir DIR to use saved vectors";
}

function toggleSource() {
  const file = $("source-file").checked;
  $("file-fields").hidden = !file;
  $("pair-fields").hidden = file;
}

$("coeff").addEventListener("input", () => { markCoeff(); clearTimeout(timer); timer = setTimeout(generate, 120); });
$("generate").addEventListener("click", () => { generate(); scan(); });
$("scan").addEventListener("click", scan);
for (const r of document.querySelectorAll("input[name=source]")) r.addEventListener("change", toggleSource);
(async () => {
  const m = await avec.model();  // the default layer, 6, is SmolLM2's 30 / 5: smaller models get their last
  $("layer").max = m.n_layers - 1;
  $("layer").value = Math.min(avec.int($("layer").value), m.n_layers - 1);
  await loadVectors();
  generate();
  scan();
})().catch((e) => avec.showError(e.message));
"""

PAGE = Page("steering", "Steering playground", "Steer generation with a vector; move the coefficient and compare.",
            BODY, SCRIPT, {"generate": generate, "scan": scan, "vectors:get": vectors})
