"""Feature dashboards: one self-contained HTML page per feature and an index page linking them.

A feature page shows: the density (share of tokens where it is active) and max activation, a
histogram of its non-zero activations (inline SVG), its logit effects (top and bottom tokens), and its
top examples with every token shaded by the feature's activation (hover shows the value). Pages use
inline CSS only (no scripts, fonts or images from the network); every token and text is HTML-escaped.

    write_dashboard(folder, examples, effects=None)   from ``top_examples`` (+ ``logit_effects``) results
    dashboard(lm, sae, at, texts, feature_ids, folder) computes both, then writes (layer=: a transcoder
                                                       set's or cross-layer transcoder's encoder layer)

Files: ``<folder>/index.html`` and ``<folder>/feature_<i>.html``, each written atomically.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Mapping

from ..io import atomic_write_text, check_writable_dir
from .features import FeatureExamples, LogitEffects, TopExamples, has_logit_effects, logit_effects

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:60em}
h1{font-size:1.3em}h2{font-size:1.05em;margin-top:1.4em}
table{border-collapse:collapse;font-size:.85em}td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}
.ex{font-family:monospace;font-size:.85em;white-space:pre-wrap;margin:.3em 0;padding:.2em;border-left:3px solid #ddd}
.tok{border-radius:2px}.max{outline:1px solid #a00}
.t{white-space:pre;font-family:monospace}.pos{color:#1a7f37}.neg{color:#b42318}.muted{color:#777;font-size:.85em}
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _tok(s: str) -> str:
    """A token as shown: escaped, with whitespace made visible enough to read."""
    return _e(s).replace("\n", "\u21b5\n")


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


def histogram_svg(fe: FeatureExamples, width: int = 420, height: int = 120) -> str:
    """The non-zero activation histogram as inline SVG (empty note when the feature never fired)."""
    counts = list(fe.hist_counts)
    if not counts or max(counts) == 0:
        return '<p class="muted">never active on these texts</p>'
    top = max(counts)
    bw = width / len(counts)
    bars = "".join(
        f'<rect x="{i * bw:.1f}" y="{height - 20 - (c / top) * (height - 30):.1f}" width="{max(bw - 1, 1):.1f}" '
        f'height="{(c / top) * (height - 30):.1f}" fill="#c33"><title>{fe.hist_edges[i]:.3g}..'
        f'{fe.hist_edges[i + 1]:.3g}: {c}</title></rect>'
        for i, c in enumerate(counts))
    axis = (f'<text x="0" y="{height - 4}" font-size="10">{fe.hist_edges[0]:.3g}</text>'
            f'<text x="{width}" y="{height - 4}" font-size="10" text-anchor="end">{fe.hist_edges[-1]:.3g}</text>'
            f'<text x="2" y="10" font-size="10">{top}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
            f'aria-label="activation histogram">{bars}{axis}</svg>')


def _example_html(ex, peak: float) -> str:
    spans = []
    for j, (t, a) in enumerate(zip(ex.tokens, ex.acts)):
        alpha = max(0.0, min(1.0, a / peak)) if peak > 0 else 0.0
        cls = "tok max" if j == ex.center else "tok"
        spans.append(f'<span class="{cls}" style="background:rgba(220,40,40,{alpha:.2f})" '
                     f'title="{a:.4g}">{_tok(t)}</span>')
    return (f'<div class="ex"><span class="muted">{ex.value:.3g} | text {ex.text}, pos {ex.position}: </span>'
            f'{"".join(spans)}</div>')


def _effects_html(eff: LogitEffects | None) -> str:
    if eff is None:
        return '<p class="muted">not computed</p>'
    rows = "".join(
        f'<tr><td class="pos t">{_tok(ts)}</td><td class="pos">{tv:+.3f}</td>'
        f'<td class="neg t">{_tok(bs)}</td><td class="neg">{bv:+.3f}</td></tr>'
        for (_, ts, tv), (_, bs, bv) in zip(eff.top, eff.bottom))
    return (f'<table><tr><th>top tokens</th><th></th><th>bottom tokens</th><th></th></tr>{rows}</table>'
            f'<p class="muted">{_e(effects_path(eff))}; final norm: {_e(eff.norm)}</p>')


def effects_path(eff: LogitEffects) -> str:
    """Which decoders the logit effects read (the direct path to the logits)."""
    if eff.layer is None:
        return "the decoder row through the unembedding"
    return (f"the direct write of layer {eff.layer}'s feature to the residual stream (a cross-layer feature: its "
            "decoders to this and every later MLP output, summed) through the unembedding")


def feature_page(fe: FeatureExamples, effects: LogitEffects | None = None, at: str = "", index_link: bool = True) -> str:
    """One feature's page (a complete HTML document); ``index_link``: a link back to ``index.html`` (off for a
    page shown on its own, e.g. inside a graph view)."""
    examples = "".join(_example_html(ex, fe.max_value) for ex in fe.examples) or '<p class="muted">no active token</p>'
    back = '<p><a href="index.html">&larr; all features</a></p>' if index_link else ""
    body = (f'{back}<h1>Feature {fe.feature}'
            f'{" at " + _e(at) if at else ""}</h1>'
            f'<p>density {fe.density:.3%} ({fe.n_active} of {fe.n_tokens} tokens) &middot; max activation '
            f'{fe.max_value:.4g}</p><h2>Activation histogram (non-zero)</h2>{histogram_svg(fe)}'
            f'<h2>Logit effects</h2>{_effects_html(effects)}<h2>Top examples</h2>{examples}')
    return _page(f"feature {fe.feature}", body)


def index_page(examples: TopExamples, effects: Mapping[int, LogitEffects] | None = None) -> str:
    rows = []
    for f, fe in examples.features.items():
        eff = (effects or {}).get(f)
        top = ", ".join(_tok(s) for _, s, _ in eff.top[:5]) if eff is not None else ""
        first = fe.examples[0].tokens[fe.examples[0].center] if fe.examples else ""
        rows.append(f'<tr><td><a href="feature_{f}.html">{f}</a></td><td>{fe.density:.3%}</td>'
                    f'<td>{fe.max_value:.4g}</td><td>{_tok(first)}</td><td>{top}</td></tr>')
    body = (f'<h1>Features at {_e(examples.at)}</h1><p class="muted">{examples.n_texts} texts</p>'
            '<table><tr><th>feature</th><th>density</th><th>max</th><th>top token</th><th>top logits</th></tr>'
            f'{"".join(rows)}</table>')
    return _page(f"features at {examples.at}", body)


def write_dashboard(folder: str | os.PathLike, examples: TopExamples,
                    effects: Mapping[int, LogitEffects] | None = None) -> Path:
    """Write ``index.html`` and ``feature_<i>.html`` for every feature of ``examples`` into ``folder``
    (created if missing); returns the index path."""
    if not isinstance(examples, TopExamples):
        raise TypeError(f"write_dashboard needs the TopExamples from top_examples(...), got {type(examples).__name__}")
    folder = check_writable_dir(folder, what="dashboard folder")
    for f, fe in examples.features.items():
        atomic_write_text(folder / f"feature_{f}.html", feature_page(fe, (effects or {}).get(f), examples.at))
    return atomic_write_text(folder / "index.html", index_page(examples, effects))


def dashboard(lm: Any, sae: Any, at: str | None, texts: Any, feature_ids: Any, folder: str | os.PathLike, *,
              k: int = 10, context: Any = (8, 4), n_logits: int = 10, batch_size: int = 8,
              layer: int | None = None) -> Path:
    """Top examples and (for dictionaries that write the residual stream: SAEs there, transcoders) ``logit_effects``
    of ``feature_ids``, written as a dashboard into ``folder``; returns the index path. ``layer``: for a
    transcoder set or cross-layer transcoder, the encoder layer whose features these are (default 0)."""
    from .features import _feature_ids
    from .latents import collect_latents

    folder = check_writable_dir(folder, what="dashboard folder")  # before the runs
    module = getattr(sae, "module", sae)
    transcoder = callable(getattr(module, "targets", None))
    if layer is not None and not transcoder:
        raise ValueError(f"layer={layer!r}: an SAE has one layer (leave layer out)")
    ids = _feature_ids(feature_ids, module.d_sae)
    index = collect_latents(lm, sae, at, texts, layer=layer or 0, features=ids, batch_size=batch_size)
    examples = index.examples(ids, k=k, context=context)
    effects = None
    if has_logit_effects(lm, module):
        effects = {f: logit_effects(lm, module, f, k=n_logits, layer=(layer or 0) if transcoder else None)
                   for f in examples.features}
    return write_dashboard(folder, examples, effects)
