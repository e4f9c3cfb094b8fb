"""SAE (and transcoder) features: an index (a dictionary, a feature id to open, and the strongest latents at
each position of a typed prompt) and one feature's page (its dashboard: top examples with each token shaded by
the activation, the activation histogram, the logit effects; and steering with it, the error term kept).

Dictionaries: the SAEs shipped for the server's model (``shipped:<name>``) and the SAE / transcoder files or
circuit-tracer folders under ``--data-dir`` (``dictionaries.py``). Example contexts: the first
``feature_contexts`` held-out contexts of the default corpus (documents never trained on, the split the SAE
training uses), of ``feature_context_tokens`` tokens each, cut once per server; each dictionary's latents over
them are collected once (``collect_latents``: one pass, kept sparse), after which every feature page of it is
read from memory.
"""

from __future__ import annotations

from typing import Any

import torch
from starlette.concurrency import run_in_threadpool

from ....dictionaries.features import logit_effects, steer
from ....dictionaries.latents import attached_layer, collect_latents, prompt_features
from ....core.dictionary import dims
from .. import dictionaries as D
from .. import inputs as I
from ..progress import generation_steps, report, steps
from . import Page

MAX_K = 20               # latents listed per position
MAX_EXAMPLES = 50        # top examples per feature
MAX_FEATURE_COEFF = 1000.0
_DICTS, _INDEXES = 4, 6  # dictionaries and latent indexes kept per model


def _module(lm: Any, state: Any, src: D.Source, layer: Any) -> tuple[Any, int]:
    """The loaded dictionary and the checked encoder layer (on the worker thread)."""
    module = D.load(lm, src, state.lm.memo("dictionaries", _DICTS))
    n = src.layers
    layer = I.integer(layer, "layer", 0, n - 1)
    return module, layer


def _contexts(lm: Any, state: Any) -> torch.Tensor:
    from ....dictionaries.heldout import heldout_contexts

    def make():
        report(stage="cutting held-out contexts", done=0, total=state.feature_contexts)
        return heldout_contexts(lm.tokenizer, state.feature_contexts, state.feature_context_tokens)

    return state.lm.memo("contexts", 1).keep((state.feature_contexts, state.feature_context_tokens), make)


def latent_index(lm: Any, state: Any, src: D.Source, module: Any, layer: int):
    """The dictionary's latents over the held-out contexts (collected once per server, then kept)."""
    key = (src.name, src.path, src.mtime, layer, state.feature_contexts, state.feature_context_tokens)

    def make():
        contexts = _contexts(lm, state)
        return collect_latents(lm, module, D.at_of(src, module), contexts, layer=layer, batch_size=16,
                               progress=steps(f"reading {src.name} on {contexts.shape[0]} held-out contexts"))

    return state.lm.memo("latent-indexes", _INDEXES).keep(key, make)


async def dictionaries(state: Any, body: dict) -> dict:
    found = await run_in_threadpool(D.list_sources, state, await state.lm.model_id())  # file reads: off the event loop
    return {"dictionaries": [s.to_dict() for s in found], "data_dir": state.data_dir is not None,
            "contexts": state.feature_contexts, "context_tokens": state.feature_context_tokens}


async def _source(state: Any, b: dict) -> D.Source:
    return await run_in_threadpool(D.resolve, state, b["dictionary"], await state.lm.model_id())


def as_context(lm: Any, prompt: str) -> torch.Tensor:
    """``[pos]`` the prompt's token ids as the example contexts are cut (and the shipped SAE was trained):
    the tokenizer's BOS first when it has one. The BOS is not read (a special token), and the first real
    token is then no attention sink: models such as SmolLM2 put a huge activation on a text's first token,
    which would top every position's latents."""
    ids = I.prompt_tokens(lm, prompt)
    bos = getattr(lm.tokenizer, "bos_token_id", None)
    return torch.tensor(([bos] if bos is not None and (not ids or ids[0] != bos) else []) + list(ids))


def _prompt(lm: Any, state: Any, src: D.Source, layer: Any, prompt: str, k: int) -> dict:
    ids = as_context(lm, prompt)
    module, layer = _module(lm, state, src, layer)
    res = prompt_features(lm, module, D.at_of(src, module), ids, k=k, layer=layer)
    return {"features": res.to_dict(), "dictionary": src.to_dict(), "layer": layer, "d_sae": dims(module)[1]}


async def prompt(state: Any, body: dict) -> dict:
    b = I.fields(body, {"dictionary", "layer", "prompt", "k"}, {"dictionary", "prompt"})
    text = I.text(b["prompt"], "prompt")
    k = I.integer(b.get("k", 5), "k", 1, MAX_K)
    src = await _source(state, b)
    return await state.lm.call(_prompt, state, src, b.get("layer", 0), text, k)


def _feature(lm: Any, state: Any, src: D.Source, layer: Any, feature: Any, k: int) -> dict:
    module, layer = _module(lm, state, src, layer)
    d_in, d_sae = dims(module)
    feature = I.integer(feature, "feature", 0, d_sae - 1)
    index = latent_index(lm, state, src, module, layer)
    examples = index.examples([feature], k=k)[feature]
    effects = None
    if callable(getattr(module, "decode", None)) and d_in == lm.d_model:  # a decoder direction in the residual
        effects = logit_effects(lm, module, feature, k=10).to_dict()
    return {"examples": examples.to_dict(), "effects": effects, "at": index.at, "contexts": index.describe(),
            "dictionary": src.to_dict(), "layer": layer, "feature": feature, "d_sae": d_sae}


async def feature(state: Any, body: dict) -> dict:
    b = I.fields(body, {"dictionary", "layer", "feature", "k"}, {"dictionary", "feature"})
    k = I.integer(b.get("k", 10), "k", 1, MAX_EXAMPLES)
    if isinstance(b["feature"], bool) or not isinstance(b["feature"], int):
        raise I.BadInput(f"feature must be a whole number, got {b['feature']!r}")
    src = await _source(state, b)
    return await state.lm.call(_feature, state, src, b.get("layer", 0), b["feature"], k)


def _steer(lm: Any, state: Any, src: D.Source, layer: Any, feature: Any, prompt: str, coeff: float,
           max_new_tokens: int) -> dict:
    I.prompt_tokens(lm, prompt)
    module, layer = _module(lm, state, src, layer)
    feature = I.integer(feature, "feature", 0, dims(module)[1] - 1)
    with attached_layer(lm, module, D.at_of(src, module), layer) as (d, point):  # splice="error": the error term kept
        prefix = point[: -len(".latents")]
        # one batch: row 0 adds 0 x the feature (the plain model's text), row 1 coeff x it
        edit = steer(prefix, feature, torch.tensor([0.0, coeff]))
        out = lm.generate([prompt, prompt], max_new_tokens, interventions=[edit], progress=generation_steps())
    return {"prompt": prompt, "unsteered": out[0], "steered": out[1], "coeff": coeff, "feature": feature,
            "layer": layer, "hook": point, "dictionary": src.to_dict()}


async def steer_feature(state: Any, body: dict) -> dict:
    b = I.fields(body, {"dictionary", "layer", "feature", "prompt", "coeff", "max_new_tokens"},
                 {"dictionary", "feature", "prompt", "coeff"})
    text = I.text(b["prompt"], "prompt")
    coeff = I.number(b["coeff"], "coeff", -MAX_FEATURE_COEFF, MAX_FEATURE_COEFF)
    max_new_tokens = I.integer(b.get("max_new_tokens", 24), "max_new_tokens", 1, I.MAX_NEW_TOKENS)
    if isinstance(b["feature"], bool) or not isinstance(b["feature"], int):
        raise I.BadInput(f"feature must be a whole number, got {b['feature']!r}")
    src = await _source(state, b)
    return await state.lm.call(_steer, state, src, b.get("layer", 0), b["feature"], text, coeff, max_new_tokens)


# ----------------------------------------------------------------------------- the index page
DICT_CONTROLS = """
  <label>dictionary <select id="dictionary"></select></label>
  <label id="layer-label" hidden>layer <select id="layer"></select></label>
"""

# shared by both pages: the dictionary list, the layer choice, links to a feature's page
COMMON = r"""
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
let sources = [];
function featureUrl(dictionary, layer, id) {
  return "/feature?" + new URLSearchParams({dictionary: dictionary, layer: String(layer), id: String(id)}).toString();
}
function current() { return sources.find((s) => s.name === $("dictionary").value); }
function fillLayers() {
  const s = current();
  const n = s ? s.layers : 1;
  $("layer").replaceChildren(...Array.from({length: n}, (_, l) => {
    const o = document.createElement("option"); o.value = String(l); o.textContent = l + ": " + (s.reads[l] || ""); return o; }));
  $("layer-label").hidden = n <= 1;
}
async function loadSources(note) {
  const d = await avec.get("/api/features/dictionaries");
  sources = d.dictionaries;
  $("dictionary").replaceChildren(...sources.map((s) => {
    const o = document.createElement("option"); o.value = s.name;
    o.textContent = s.name + " (" + s.kind + (s.layers > 1 ? ", " + s.layers + " layers" : ", " + s.reads[0]) + ")"; return o; }));
  if (params.get("dictionary")) $("dictionary").value = params.get("dictionary");
  fillLayers();
  if (params.get("layer")) $("layer").value = params.get("layer");
  $("dictionary").addEventListener("change", fillLayers);
  if (note) note.textContent = sources.length ? "Examples come from " + d.contexts + " held-out contexts of " + d.context_tokens +
    " tokens (documents the SAEs never trained on), read once per dictionary when a feature page first opens."
    : "No dictionary for this model: the shipped SAE is SmolLM2's; put SAE or transcoder files (.safetensors) or " +
      "circuit-tracer folders in the folder given by --data-dir" + (d.data_dir ? "." : " (none was given).");
  return d;
}
"""

INDEX_BODY = f"""
<section class="controls">
{DICT_CONTROLS}
  <label>feature id <input id="feature-id" type="number" min="0" value="0" style="width:6em"></label>
  <button id="open">Open feature</button>
  <span id="status" class="meta" aria-live="polite"></span>
</section>
<p id="note" class="meta"></p>
<section>
  <h3>Strongest latents of a prompt</h3>
  <div class="controls">
    <label class="wide">Prompt <input id="prompt" value="The Eiffel Tower is in Paris, the capital of France."></label>
    <label>per position <input id="k" type="number" value="5" min="1" max="20" style="width:4em"></label>
    <button id="run">Run</button>
  </div>
  <p class="meta">Each column a token, each row a latent among the strongest at some position; click a cell to open
  that feature's page. The prompt is read as the example contexts are: after the tokenizer's BOS, which (like
  other special tokens) is not read.</p>
  <div id="prompt-plot" class="plot tall"></div>
  <table id="prompt-table"></table>
</section>
"""

INDEX_SCRIPT = COMMON + r"""
let seq = 0;
function openFeature(id) { location.href = featureUrl($("dictionary").value, $("layer").value || 0, id); }

function drawPrompt(d) {
  const F = d.features;
  const x = F.tokens.map((t, i) => i + ":" + JSON.stringify(t).slice(1, -1));
  const y = F.features.map((f) => "f" + f);
  const z = F.features.map((_, j) => F.values.map((row) => row[j]));
  Plotly.react("prompt-plot", [{
    type: "heatmap", x: x, y: y, z: z, customdata: F.features.map((f) => x.map(() => f)), colorscale: "Reds",
    zmin: 0, hovertemplate: "feature %{customdata}<br>position %{x}<br>activation %{z:.3f}<extra></extra>",
    colorbar: {title: {text: "activation"}},
  }], {title: {text: "strongest latents at " + F.at + " (" + d.dictionary.name + ")", font: {size: 13}},
       margin: {t: 40, l: 70}, xaxis: {type: "category"}, yaxis: {type: "category", autorange: "reversed"}},
     {responsive: true});
  const plot = $("prompt-plot");
  plot.removeAllListeners && plot.removeAllListeners("plotly_click");
  plot.on("plotly_click", (ev) => { const p = ev.points[0]; if (p) openFeature(p.customdata); });
  const rows = F.tokens.map((t, i) => {
    const tr = document.createElement("tr");
    const tok = document.createElement("td"); tok.textContent = i + ": " + JSON.stringify(t); tr.appendChild(tok);
    const cell = document.createElement("td");
    if (!F.read[i]) cell.textContent = "(not read)";
    F.top_ids[i].forEach((f, r) => {
      if (f < 0) return;
      const a = document.createElement("a"); a.href = featureUrl(d.dictionary.name, d.layer, f);
      a.textContent = "f" + f + " (" + F.top_values[i][r].toFixed(2) + ")"; a.className = "feature-link";
      cell.appendChild(a); cell.appendChild(document.createTextNode(" "));
    });
    tr.appendChild(cell);
    return tr;
  });
  $("prompt-table").replaceChildren(...rows);
}

async function run() {
  const mine = ++seq;
  if (!$("dictionary").value) return;
  const body = {dictionary: $("dictionary").value, layer: avec.int($("layer").value || 0), prompt: $("prompt").value,
                k: avec.int($("k").value)};
  try {
    const d = await avec.post("/api/features/prompt", body);
    if (mine !== seq) return;
    drawPrompt(d);
    $("feature-id").max = d.d_sae - 1;
    avec.clearError();
  } catch (e) { if (mine === seq) avec.showError(e.message); }
}

$("open").addEventListener("click", () => openFeature($("feature-id").value));
$("feature-id").addEventListener("keydown", (e) => { if (e.key === "Enter") openFeature($("feature-id").value); });
$("run").addEventListener("click", run);
$("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter") run(); });
loadSources($("note")).then(run).catch((e) => avec.showError(e.message));
"""

# ----------------------------------------------------------------------------- one feature's page
FEATURE_BODY = f"""
<p><a href="/features" id="back">&larr; features</a></p>
<section class="controls">
{DICT_CONTROLS}
  <label>feature id <input id="feature-id" type="number" min="0" value="0" style="width:6em"></label>
  <button id="open">Open</button>
  <span id="status" class="meta" aria-live="polite"></span>
</section>
<h2 id="feature-title"></h2>
<p id="summary" class="meta"></p>
<section class="side-by-side">
  <div><h3>Activation histogram (positive activations)</h3><div id="hist" class="plot"></div></div>
  <div><h3>Logit effects</h3><div id="effects" class="plot"></div></div>
</section>
<section>
  <h3>Top examples</h3>
  <p class="meta">Each token shaded by the feature's activation on it (hover: the value); the outlined token is where
  it peaks.</p>
  <div id="examples"></div>
</section>
<section>
  <h3>Steer with this feature</h3>
  <p class="meta">Adds the coefficient to this latent at every position (through the decoder, the error term kept:
  nothing else changes); greedy completions.</p>
  <div class="controls">
    <label class="wide">Prompt <input id="steer-prompt" value="I think that"></label>
    <label>coefficient <input id="coeff" type="range" min="-50" max="50" step="0.5" value="10">
      <output id="coeff-value">10</output></label>
    <label>new tokens <input id="max-new-tokens" type="number" value="20" min="1" max="64" style="width:4em"></label>
    <button id="steer">Generate</button>
  </div>
  <div class="side-by-side">
    <div><h3>unsteered</h3><pre id="unsteered" class="completion"></pre></div>
    <div><h3 id="steered-title">steered</h3><pre id="steered" class="completion"></pre></div>
  </div>
</section>
"""

FEATURE_SCRIPT = COMMON + r"""
let seq = 0, steerSeq = 0, timer = null, shown = null;
function tokenText(t) { return t.replace(/\n/g, "\u21b5\n"); }

function drawExamples(fe) {
  const peak = fe.max > 0 ? fe.max : 1;
  const out = fe.examples.map((ex) => {
    const div = document.createElement("div"); div.className = "example";
    const meta = document.createElement("span"); meta.className = "meta";
    meta.textContent = ex.value.toFixed(3) + " | context " + ex.text + ", position " + ex.position + ": ";
    div.appendChild(meta);
    ex.tokens.forEach((t, j) => {
      const s = document.createElement("span"); s.className = "tok" + (j === ex.center ? " peak" : "");
      const a = Math.max(0, Math.min(1, ex.acts[j] / peak));
      s.style.background = "rgba(220,40,40," + a.toFixed(2) + ")"; s.title = ex.acts[j].toFixed(4);
      s.textContent = tokenText(t);
      div.appendChild(s);
    });
    return div;
  });
  if (!out.length) { const p = document.createElement("p"); p.className = "meta"; p.textContent = "never active on these contexts"; out.push(p); }
  $("examples").replaceChildren(...out);
}

function drawHist(fe) {
  const mids = fe.hist_counts.map((_, i) => (fe.hist_edges[i] + fe.hist_edges[i + 1]) / 2);
  Plotly.react("hist", [{type: "bar", x: mids, y: fe.hist_counts, marker: {color: "#c33"},
    hovertemplate: "activation %{x:.3f}: %{y} tokens<extra></extra>"}],
    {margin: {t: 10}, xaxis: {title: {text: "activation"}}, yaxis: {title: {text: "tokens"}}}, {responsive: true});
}

function drawEffects(eff) {
  if (!eff) { Plotly.purge("effects"); $("effects").textContent = "not computed (the decoder does not write the residual stream directly)"; return; }
  const items = eff.top.concat(eff.bottom.slice().reverse());
  Plotly.react("effects", [{type: "bar", orientation: "h", y: items.map((t, i) => i + ": " + JSON.stringify(t[1])),
    x: items.map((t) => t[2]), marker: {color: items.map((t) => t[2] >= 0 ? "#2a7" : "#c33")},
    hovertemplate: "%{y}: %{x:.3f}<extra></extra>"}],
    {margin: {t: 10, l: 110}, yaxis: {autorange: "reversed", type: "category", dtick: 1},
     xaxis: {title: {text: "logit effect (" + eff.norm + ")"}}}, {responsive: true});
}

async function load() {
  const mine = ++seq;
  const body = {dictionary: $("dictionary").value, layer: avec.int($("layer").value || 0),
                feature: avec.int($("feature-id").value)};
  try {
    const d = await avec.stream("/api/features/feature", body, (p) => { if (mine === seq) avec.showProgress(p); });
    if (mine !== seq) return;
    shown = d;
    const fe = d.examples;
    $("feature-title").textContent = "Feature " + d.feature + " of " + d.dictionary.name + " at " + d.at;
    $("summary").textContent = "density " + (100 * fe.density).toFixed(3) + "% (" + fe.n_active + " of " + fe.n_tokens +
      " tokens read in " + d.contexts.n_texts + " held-out contexts) | max activation " + fe.max.toFixed(4);
    history.replaceState(null, "", featureUrl(d.dictionary.name, d.layer, d.feature));
    drawExamples(fe); drawHist(fe); drawEffects(d.effects);
    const span = Math.max(1, Math.ceil(8 * fe.max));  // the slider spans +-8x the feature's largest activation
    $("coeff").min = -span; $("coeff").max = span; $("coeff").step = span / 100;
    $("coeff").value = fe.max > 0 ? (4 * fe.max).toFixed(2) : 10; $("coeff-value").textContent = $("coeff").value;
    avec.clearError();
    steerNow();
  } catch (e) { if (mine === seq) avec.showError(e.message); }
}

async function steerNow() {
  if (!shown) return;
  const mine = ++steerSeq;
  const body = {dictionary: shown.dictionary.name, layer: shown.layer, feature: shown.feature,
                prompt: $("steer-prompt").value, coeff: parseFloat($("coeff").value),
                max_new_tokens: avec.int($("max-new-tokens").value)};
  try {
    const d = await avec.stream("/api/features/steer", body, (p) => { if (mine === steerSeq) avec.showProgress(p); });
    if (mine !== steerSeq) return;
    avec.completion($("unsteered"), d.prompt, d.unsteered);
    avec.completion($("steered"), d.prompt, d.steered);
    $("steered-title").textContent = "steered: " + d.coeff + " x feature " + d.feature + " at " + d.hook;
    avec.clearError();
  } catch (e) { if (mine === steerSeq) avec.showError(e.message); }
}

$("coeff").addEventListener("input", () => { $("coeff-value").textContent = $("coeff").value; clearTimeout(timer); timer = setTimeout(steerNow, 150); });
$("steer").addEventListener("click", steerNow);
$("open").addEventListener("click", load);
$("feature-id").addEventListener("keydown", (e) => { if (e.key === "Enter") load(); });
loadSources(null).then(() => {
  if (params.get("id") !== null) $("feature-id").value = params.get("id");
  if (!sources.length) { avec.showError("no dictionary for this model; see the features page"); return; }
  return load();
}).catch((e) => avec.showError(e.message));
"""

PAGE = Page("features", "SAE features", "Browse a dictionary's features: the strongest latents of a prompt, any feature's page.",
            INDEX_BODY, INDEX_SCRIPT, {"dictionaries:get": dictionaries, "prompt": prompt, "feature": feature,
                                       "steer": steer_feature})
FEATURE = Page("feature", "Feature", "One feature: top examples, histogram, logit effects, steering.", FEATURE_BODY,
               FEATURE_SCRIPT, nav=False)
