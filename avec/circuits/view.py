"""An HTML view of a pruned attribution graph: nodes by position (x) and layer (y), edges by weight, a
side panel with the clicked node's incoming and outgoing edges and its feature dashboard, and supernodes
made from a lasso / box selection (saved in the graph JSON's ``qParams.supernodes``).

The page is one self-contained file (Plotly, inlined: no network), or, with ``plotly_js="file"``, a page
loading a shared ``plotly.min.js`` (beside it, or at ``plotly_src``). Feature dashboards come from
``dashboards``: a mapping from ``(layer, feature)`` to a page (HTML text, shown inline), to a file name
relative to the page, or to an address starting with ``/`` (both linked).
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any, Mapping

from .graph import AttributionGraph, Pruned, _frontend_node

COLORS = {"feature": "#334155", "error": "#a3a3a3", "token": "#16a34a", "logit": "#9333ea"}
WIDTHS = (0.6, 1.4, 2.6, 4.2)  # edge widths by |weight| quartile of the kept edges


def _layout(g: AttributionGraph, p: Pruned) -> dict[int, tuple[float, float]]:
    """x = position (nodes of one cell side by side), y = layer (embeddings -1, logits n_layers)."""
    cells: dict[tuple[int, int], list[int]] = {}
    for n in p.nodes.nonzero().flatten().tolist():
        d = g.describe(n)
        row = {"token": -1, "logit": g.n_layers}.get(d["kind"], d.get("layer", 0))
        cells.setdefault((d["pos"], row), []).append(n)
    xy = {}
    for (pos, row), nodes in cells.items():
        nodes.sort(key=lambda n: -float(p.influence[n]))
        k = len(nodes)
        for i, n in enumerate(nodes):
            xy[n] = (pos + (i - (k - 1) / 2) * min(0.8 / max(k, 1), 0.12), row)
    return xy


def _label(g: AttributionGraph, n: int) -> str:
    d = g.describe(n)
    if d["kind"] == "feature":
        return f"L{d['layer']} f{d['feature']} @{d['pos']}"
    if d["kind"] == "error":
        return f"error L{d['layer']} @{d['pos']}"
    if d["kind"] == "token":
        return f"{d['token']!r} @{d['pos']}"
    return f"logit {d['token']!r} p={d['prob']:.3f}"


def graph_page(g: AttributionGraph, *, node_threshold: float = 0.8, edge_threshold: float = 0.98,
               dashboards: Mapping[tuple[int, int], str] | None = None, title: str | None = None,
               plotly_js: str = "inline", plotly_src: str = "plotly.min.js") -> str:
    """The HTML page (a string) of ``g`` pruned at the given thresholds (see the module docstring)."""
    import plotly.graph_objects as go
    from plotly.offline import get_plotlyjs

    if plotly_js not in ("inline", "file"):
        raise ValueError(f"plotly_js={plotly_js!r}; use 'inline' (one self-contained file) or 'file' (a page "
                         "beside plotly.min.js, written by save_graph_page)")
    p = g.prune(node_threshold, edge_threshold)
    xy = _layout(g, p)
    keep = p.edges.nonzero().flatten()
    src, tgt, w = g.sources[keep].tolist(), g.targets[keep].tolist(), g.weights[keep].float().tolist()
    fig = go.Figure()
    mags = sorted(abs(v) for v in w)
    cuts = [mags[int(len(mags) * q)] if mags else 0.0 for q in (0.25, 0.5, 0.75)]
    for sign, color in ((1, "rgba(37,99,235,0.45)"), (-1, "rgba(220,38,38,0.45)")):
        for b, width in enumerate(WIDTHS):
            xs, ys = [], []
            for s, t, v in zip(src, tgt, w):
                band = sum(abs(v) > c for c in cuts)
                if (v > 0) == (sign > 0) and band == b and s in xy and t in xy:
                    xs += [xy[s][0], xy[t][0], None]
                    ys += [xy[s][1], xy[t][1], None]
            if xs:
                fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color=color, width=width),
                                         hoverinfo="skip", showlegend=False))
    nodes = sorted(xy)
    infl = [float(p.influence[n]) for n in nodes]
    top = max(infl) if infl and max(infl) > 0 else 1.0
    info = []
    for n in nodes:
        d = g.describe(n)
        info.append(dict(node=n, label=_label(g, n), influence=float(p.influence[n]),
                         node_id=_frontend_node(g, n, 0.0)["node_id"], **{
            k: v for k, v in d.items() if k in ("kind", "layer", "pos", "feature", "activation", "prob")}))
    fig.add_trace(go.Scatter(
        x=[xy[n][0] for n in nodes], y=[xy[n][1] for n in nodes], mode="markers",
        marker=dict(size=[14 if g.describe(n)["kind"] == "logit" else 8 + 16 * (v / top) ** 0.5
                          for n, v in zip(nodes, infl)], color=[COLORS[g.describe(n)["kind"]] for n in nodes],
                    line=dict(width=1, color="white")),
        customdata=[i["node"] for i in info],
        text=[f"{i['label']}<br>influence {i['influence']:.4f}" + (f"<br>activation {i['activation']:.4f}"
              if i.get("activation") is not None else "") for i in info],
        hovertemplate="%{text}<extra></extra>", showlegend=False, name="nodes"))
    fig.update_layout(
        height=720, margin=dict(l=60, r=20, t=40, b=90), plot_bgcolor="white", dragmode="lasso",
        xaxis=dict(tickmode="array", tickvals=list(range(g.n_pos)), ticktext=[repr(t)[1:-1] for t in g.token_strs],
                   tickangle=-50, showgrid=False, zeroline=False),
        yaxis=dict(title="layer (embeddings -1, logits on top)", showgrid=True, gridcolor="#eee", zeroline=False),
        title=dict(text=html.escape(title or f"{g.prompt!r}: {len(nodes)} nodes, {len(w)} edges"), x=0.01))
    plot = fig.to_html(full_html=False, include_plotlyjs=False, div_id="graph", config={"displaylogo": False})
    edges = [[s, t, v] for s, t, v in zip(src, tgt, w) if s in xy and t in xy]
    dash = {}
    for key, page in (dashboards or {}).items():
        dash[f"{key[0]}_{key[1]}"] = page
    rep, comp = g.scores()
    data = {"nodes": {str(i["node"]): i for i in info}, "edges": edges, "dashboards": dash,
            "graph": {"prompt": g.prompt, "node_threshold": node_threshold, "edge_threshold": edge_threshold}}
    script = ('<script>' + get_plotlyjs() + '</script>') if plotly_js == "inline" \
        else f'<script src="{html.escape(plotly_src, quote=True)}"></script>'
    return _PAGE.format(title=html.escape(title or "attribution graph"), script=script, plot=plot,
                        data=json.dumps(data).replace("</", "<\\/"), prompt=html.escape(g.prompt),
                        summary=html.escape(f"{len(nodes)} of {g.n_nodes} nodes, {len(w)} of {g.targets.numel()} edges "
                                            f"(node threshold {node_threshold}, edge threshold {edge_threshold}); "
                                            f"replacement score {rep:.3f}, completeness {comp:.3f}"))


def save_graph_page(g: AttributionGraph, path: str | os.PathLike, **kwargs: Any) -> Path:
    """Write ``graph_page`` to ``path`` atomically (with ``plotly_js="file"``, ``plotly.min.js`` beside it)."""
    from plotly.offline import get_plotlyjs

    from ..io import atomic_write_text

    path = Path(path)
    if kwargs.get("plotly_js") == "file":
        js = path.parent / "plotly.min.js"
        if not js.exists():
            atomic_write_text(js, get_plotlyjs())
    return atomic_write_text(path, graph_page(g, **kwargs))


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:0;color:#222}}
header{{padding:.6em 1em;border-bottom:1px solid #ddd}} header p{{margin:.2em 0;color:#555;font-size:.9em}}
main{{display:grid;grid-template-columns:minmax(0,1fr) 360px}} .plot{{min-width:0}} aside{{border-left:1px solid #ddd;padding:.6em 1em;
max-height:760px;overflow:auto;font-size:.85em}}
table{{border-collapse:collapse}} td,th{{padding:1px 6px;border-bottom:1px solid #eee;text-align:left}}
.pos{{color:#1d4ed8}} .neg{{color:#b91c1c}} button{{margin:.2em .2em .2em 0}}
iframe{{width:100%;height:420px;border:1px solid #ccc}}
</style>{script}</head><body>
<header><strong>{prompt}</strong><p>{summary}</p></header>
<main><div class="plot">{plot}</div><aside>
<div id="node"><p>Click a node for its edges and dashboard. Lasso or box-select nodes, then group them.</p></div>
<h3>Supernodes</h3>
<p><input id="sname" placeholder="name" size="14"><button id="group">group selection</button>
<button id="download">download supernodes</button></p>
<ul id="supernodes"></ul>
</aside></main>
<script type="application/json" id="graph-data">{data}</script>
<script>
const DATA = JSON.parse(document.getElementById("graph-data").textContent);
const plot = document.getElementById("graph");
let selection = [];
const supernodes = [];
function esc(s) {{ const d = document.createElement("div"); d.textContent = String(s); return d.innerHTML; }}
function rows(list, key) {{
  return list.slice(0, 12).map(e => {{
    const other = DATA.nodes[String(e[key])];
    return `<tr><td>${{esc(other ? other.label : e[key])}}</td><td class="${{e[2] > 0 ? "pos" : "neg"}}">${{e[2].toFixed(4)}}</td></tr>`;
  }}).join("");
}}
function show(node) {{
  const info = DATA.nodes[String(node)];
  const inc = DATA.edges.filter(e => e[1] === node).sort((a, b) => Math.abs(b[2]) - Math.abs(a[2]));
  const out = DATA.edges.filter(e => e[0] === node).sort((a, b) => Math.abs(b[2]) - Math.abs(a[2]));
  let h = `<h3 id="node-title">${{esc(info.label)}}</h3><p>${{esc(info.kind)}}` +
          (info.activation !== undefined ? `, activation ${{info.activation.toFixed(4)}}` : "") +
          `, influence ${{info.influence.toFixed(4)}}</p>` +
          `<h4>incoming (${{inc.length}})</h4><table id="incoming">${{rows(inc, 0)}}</table>` +
          `<h4>outgoing (${{out.length}})</h4><table id="outgoing">${{rows(out, 1)}}</table>`;
  if (info.kind === "feature") {{
    const page = DATA.dashboards[`${{info.layer}}_${{info.feature}}`];
    if (page && page.trim().startsWith("<")) h += `<h4>dashboard</h4><iframe id="dashboard"></iframe>`;
    else if (page) h += `<p><a id="dashboard-link" href="${{esc(page.startsWith("/") ? page : encodeURI(page))}}" target="_blank">feature dashboard</a></p>`;
    else h += `<p>no dashboard for this feature</p>`;
    document.getElementById("node").innerHTML = h;
    if (page && page.trim().startsWith("<")) document.getElementById("dashboard").srcdoc = page;
  }} else document.getElementById("node").innerHTML = h;
}}
plot.on("plotly_click", ev => {{ const p = ev.points.find(p => p.customdata !== undefined); if (p) show(p.customdata); }});
plot.on("plotly_selected", ev => {{ selection = ev ? ev.points.filter(p => p.customdata !== undefined).map(p => p.customdata) : []; }});
document.getElementById("group").onclick = () => {{
  if (!selection.length) return;
  const name = document.getElementById("sname").value || `group ${{supernodes.length + 1}}`;
  supernodes.push([name, ...selection.map(n => DATA.nodes[String(n)].node_id)]);
  document.getElementById("supernodes").innerHTML = supernodes.map(s => `<li>${{esc(s[0])}}: ${{s.length - 1}} nodes</li>`).join("");
}};
document.getElementById("download").onclick = () => {{
  const blob = new Blob([JSON.stringify({{supernodes}}, null, 1)], {{type: "application/json"}});
  const a = document.createElement("a"); a.href = URL.createObjectURL(blob); a.download = "supernodes.json"; a.click();
}};
window.avecGraph = {{show, supernodes, select: ids => {{ selection = ids; }}}};
</script></body></html>
"""
