"""One rendering path: a result's JSON form (``to_dict()``, exactly what the web server sends its pages) as a
terminal table for the CLI, and as an HTML fragment (figure + table) for the report.

Every function takes a result object or its dict, and renders only the dict (after a JSON round trip, so
nothing the JSON does not hold can reach the output). Types whose dict holds every field are rebuilt with
their ``from_dict`` and drawn by their own ``to_frame()`` / ``plot()``, so a table or figure has one
implementation whichever front end shows it; types whose dict is a summary (a graph in the frontends'
JSON, an evaluation without its ``[d_sae]`` density, ...) are drawn from the dict by the technique's own
dict-level plot function. Nothing here looks at which model made the result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..results import figure_html, jsonable


def as_dict(result: Any) -> dict:
    """``result.to_dict()`` (or a dict as given) through JSON: plain data, NaN as null."""
    d = result if isinstance(result, Mapping) else result.to_dict()
    return json.loads(json.dumps(jsonable(dict(d)), allow_nan=False))


def kind(d: Mapping) -> str:
    """The result type a dict is the JSON form of: its ``type``; the circuit-tracer / Neuronpedia graph JSON
    (``metadata``, ``nodes``, ``links``; its layout has no room for one) is an ``AttributionGraph``."""
    if "type" in d:
        return str(d["type"])
    if {"metadata", "nodes", "links"} <= set(d):
        return "AttributionGraph"
    raise ValueError(f"this dict names no result type (no 'type' key); keys: {sorted(d)[:12]}")


@dataclass(frozen=True)
class DictView:
    """A result drawn straight from its dict: ``to_frame()`` and ``plot()`` as the result's own."""

    data: dict
    frame: Callable[[dict], Any]
    draw: Callable[..., Any]

    def to_frame(self):
        return self.frame(self.data)

    def plot(self, ax=None, **kw):
        return self.draw(self.data, ax, **kw)


def _records(key: str) -> Callable[[dict], Any]:
    def frame(d: dict):
        import pandas as pd

        return pd.DataFrame(d[key])

    return frame


def _sae_evaluation(d: dict) -> DictView:
    import pandas as pd

    from ..dictionaries.evaluate import density_plot

    scalars = {k: v for k, v in d.items() if k not in ("type", "density_histogram")}
    return DictView(d, lambda _: pd.DataFrame({"metric": list(scalars), "value": list(scalars.values())}),
                    lambda data, ax: density_plot(data, ax))


def _feature_filter(d: dict) -> DictView:
    from ..dictionaries.features import filter_plot

    return DictView(d, _records("table"),
                    lambda data, ax: filter_plot(data["positive_min"], data["negative_max"], data["features"],
                                                 data["threshold"], ax))


def _feature_intervention(d: dict) -> DictView:
    from ..circuits.interventions import intervention_plot

    return DictView(d, _records("table"), lambda data, ax: intervention_plot(data, ax))


_GRAPH_COLUMNS = ["node_id", "feature_type", "layer", "ctx_idx", "feature", "activation", "influence", "clerp"]


def _graph_frame(d: dict):
    import pandas as pd

    frame = pd.DataFrame(d["nodes"])
    return frame[[c for c in _GRAPH_COLUMNS if c in frame.columns]] if len(frame) else frame


def _graph_plot(d: dict, ax=None, max_edges: int = 400):
    """Nodes of a graph JSON by position (x) and layer (y; embeddings below, logits on top), edges blue for
    positive weights, red for negative, width by |weight|."""
    import matplotlib.pyplot as plt

    nodes = d["nodes"]
    numeric = [int(n["layer"]) for n in nodes if str(n["layer"]).lstrip("-").isdigit()]
    top = max(numeric, default=0)
    n_pos = max((int(n["ctx_idx"]) for n in nodes), default=0) + 1
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(max(6, n_pos * 0.7), 6))
    xy, per_cell = {}, {}
    for n in nodes:
        row = -1 if n["layer"] == "E" else int(n["layer"])
        k = per_cell.get((n["ctx_idx"], row), 0)
        per_cell[(n["ctx_idx"], row)] = k + 1
        xy[n["node_id"]] = (n["ctx_idx"] + 0.12 * k, row)
    links = sorted(d["links"], key=lambda e: -abs(e["weight"]))[:max_edges]
    wmax = max((abs(e["weight"]) for e in links), default=1.0) or 1.0
    for e in links:
        if e["source"] in xy and e["target"] in xy:
            ax.plot(*zip(xy[e["source"]], xy[e["target"]]), color="#2563eb" if e["weight"] > 0 else "#dc2626",
                    lw=0.3 + 2.5 * abs(e["weight"]) / wmax, alpha=0.5)
    colors = {"embedding": "#16a34a", "logit": "#9333ea", "mlp reconstruction error": "#aaa"}
    for n in nodes:
        x, y = xy[n["node_id"]]
        ax.scatter([x], [y], s=30, color=colors.get(n["feature_type"], "#444"), zorder=3)
    tokens = d.get("metadata", {}).get("prompt_tokens", [])
    ax.set_xticks(range(len(tokens)), [repr(t) for t in tokens], rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(-1, top + 1), ["emb"] + [str(i) for i in range(top)] + ["logit"])
    ax.set_title(f"attribution graph: {len(nodes)} nodes, {len(d['links'])} edges", fontsize=9)
    return fig


def graph_summary_line(d: Mapping) -> str:
    """One line for a graph JSON: kept nodes and edges of all, replacement and completeness scores, the top
    answer (from ``metadata.info``, which avec's ``to_dict`` fills; a file from elsewhere may lack them)."""
    info = d.get("metadata", {}).get("info", {})
    nodes = f"{len(d['nodes'])} of {info['n_nodes']} nodes" if "n_nodes" in info else f"{len(d['nodes'])} nodes"
    edges = f"{len(d['links'])} of {info['n_edges']} edges" if "n_edges" in info else f"{len(d['links'])} edges"
    parts = [f"{nodes}, {edges}"]
    if "replacement_score" in info:
        parts.append(f"replacement {info['replacement_score']:.3f}, completeness {info['completeness_score']:.3f}")
    if info.get("logits"):
        token, prob = info["logits"][0]
        parts.append(f"top answer {token!r} ({prob:.3f})")
    return "; ".join(parts)


# results whose dict is a summary of the object: drawn from the dict itself
_DICT_VIEWS: dict[str, Callable[[dict], Any]] = {
    "SAEEvaluation": _sae_evaluation,
    "FeatureFilter": _feature_filter,
    "FeatureIntervention": _feature_intervention,
    "AttributionGraph": lambda d: DictView(d, _graph_frame, _graph_plot),
}


def result_types() -> dict[str, type]:
    """Every result class avec defines that rebuilds from its dict, by name (``Result`` subclasses, the
    maze's vector fields)."""
    import importlib

    from ..results import Result

    for module in ("circuits.graph", "circuits.interventions", "dictionaries.evaluate", "dictionaries.features",
                   "dictionaries.latents", "dictionaries.train", "lens.decomposition", "lens.dla", "lens.logit_lens",
                   "lens.norms", "lens.tuned_lens", "patching.result", "probes.ccs", "probes.linear",
                   "steering.evaluate", "steering.generation", "steering.scan", "maze.fields", "maze.behaviour",
                   "maze.evaluate", "maze.experiments", "maze.retarget"):
        importlib.import_module(f"avec.{module}")

    def subclasses(c: type):
        for s in c.__subclasses__():
            yield s
            yield from subclasses(s)

    from ..maze.fields import FieldDiff, VectorField

    found = {c.__name__: c for c in subclasses(Result)}
    found.update(VectorField=VectorField, FieldDiff=FieldDiff)
    return found


def view(result: Any):
    """What the CLI and the report draw: an object with ``to_frame()`` and ``plot()`` (and, when rebuilt,
    the result's other methods: ``summary()``, ``top_heads()``, ...) made from ``as_dict(result)`` only."""
    d = as_dict(result)
    name = kind(d)
    if name in _DICT_VIEWS:
        return _DICT_VIEWS[name](d)
    cls = result_types().get(name)
    if cls is None:
        raise ValueError(f"no renderer for a {name!r} dict; known: {sorted(set(result_types()) | set(_DICT_VIEWS))}")
    return cls.from_dict(d)


def table(result: Any):
    """The result's table (a DataFrame), from its dict."""
    return view(result).to_frame()


def figure(result: Any, **kw):
    """The result's matplotlib figure, from its dict (``kw`` go to its ``plot``)."""
    return view(result).plot(**kw)


def frame_text(frame: Any, float_format: str = "{:.4g}", index: bool = False) -> str:
    """A DataFrame as the CLI prints it."""
    return frame.to_string(index=index, float_format=lambda x: float_format.format(x))


def text(result: Any, float_format: str = "{:.4g}", max_rows: int | None = None) -> str:
    """The result's table as terminal text, from its dict."""
    frame = table(result)
    return frame_text(frame.head(max_rows) if max_rows else frame, float_format)


def frame_html(frame: Any, float_format: str = "{:.4g}") -> str:
    return frame.to_html(float_format=lambda x: float_format.format(x), border=0)


def html(result: Any, with_figure: bool = True, with_table: bool = True, max_rows: int | None = 40,
         float_format: str = "{:.4g}") -> str:
    """An HTML fragment: the figure (an inlined PNG) and the table, both from the result's dict."""
    v = view(result)
    parts = []
    if with_figure:
        parts.append(figure_html(v.plot()))
    if with_table:
        frame = v.to_frame()
        parts.append(frame_html(frame.head(max_rows) if max_rows else frame, float_format))
    return "".join(parts)


def save_figure(result: Any, path: Any, dpi: int = 120, **kw) -> None:
    """Write the result's figure (from its dict) to ``path`` atomically."""
    from ..io import atomic_savefig

    atomic_savefig(figure(result, **kw), path, dpi=dpi, bbox_inches="tight")
