"""Feature dashboards for the feature nodes of an attribution graph: for each kept feature, its top activating
contexts (with every token shaded by its activation), its activation histogram and density, and its logit
effects (the transcoder feature's direct write to the residual stream through the unembedding: for a
cross-layer feature its decoders to its own and every later MLP output, summed), as the pages
``avec.dictionaries.dashboard`` writes. ``avec.circuits.view.graph_page(g, dashboards=...)`` shows the page
of a clicked feature node.

    pages = graph_dashboards(lm, clt, graph, texts)     # {(layer, feature): HTML page}
    save_graph_page(graph, "graph.html", dashboards=pages)

One pass over ``texts`` per layer that has kept feature nodes (the run stops at that layer's latents), keeping
only those features' latents.
"""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

from ..core.dictionary import AttachedDictionary
from ..dictionaries.dashboard import feature_page
from ..dictionaries.features import has_logit_effects, logit_effects
from ..dictionaries.latents import collect_latents
from .graph import AttributionGraph


def graph_features(graph: AttributionGraph, node_threshold: float = 0.8,
                   edge_threshold: float = 0.98) -> dict[int, list[int]]:
    """``{layer: [feature ids]}`` of the feature nodes the pruned graph keeps."""
    p = graph.prune(node_threshold, edge_threshold)
    out: dict[int, set[int]] = {}
    for n in p.nodes[:graph.n_features].nonzero().flatten().tolist():
        layer, _, f = graph.features[n].tolist()
        out.setdefault(int(layer), set()).add(int(f))
    return {layer: sorted(fs) for layer, fs in sorted(out.items())}


def graph_dashboards(lm: Any, transcoders: Any, graph: AttributionGraph, texts: Any, *, node_threshold: float = 0.8,
                     edge_threshold: float = 0.98, k: int = 5, context: Any = (8, 4), n_logits: int = 8,
                     batch_size: int = 8, progress: bool = False) -> dict[tuple[int, int], str]:
    """``{(layer, feature): dashboard page}`` for every feature node the graph keeps at these thresholds:
    top ``k`` examples over ``texts`` (strings or token ids ``[n, pos]``; held-out text, e.g.
    ``avec.dictionaries.heldout.heldout_contexts``) and ``n_logits`` top / bottom logit effects (when the
    transcoder writes the residual stream)."""
    module = transcoders.module if isinstance(transcoders, AttachedDictionary) else transcoders
    wanted = graph_features(graph, node_threshold, edge_threshold)
    n = getattr(module, "n_layers", 1)
    if wanted and max(wanted) >= n:
        raise ValueError(f"the graph has feature nodes at layer {max(wanted)} but the transcoder has {n} layers; "
                         "give the transcoders the graph was made with")
    effects_ok = has_logit_effects(lm, module)
    pages = {}
    for layer, ids in tqdm(wanted.items(), desc="feature dashboards", unit="layer", disable=not progress):
        examples = collect_latents(lm, transcoders, None, texts, layer=layer, features=ids,
                                   batch_size=batch_size).examples(ids, k=k, context=context)
        for f in ids:
            eff = logit_effects(lm, module, f, k=n_logits, layer=layer) if effects_ok else None
            pages[(layer, f)] = feature_page(examples[f], eff, f"{examples.at} (layer {layer})", index_link=False)
    return pages
