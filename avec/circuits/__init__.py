"""Circuit tracing: attribution graphs over a local replacement model (transcoder features, error nodes,
token embeddings, output logits), their pruning, scores and export.

    graph      AttributionGraph: nodes, sparse edges, influence, prune, scores, circuit-tracer JSON
    view       graph_page / save_graph_page: an interactive HTML view (click a node: its edges and
               dashboard; select nodes: a supernode)
"""

from .graph import AttributionGraph, Pruned
from .view import graph_page, save_graph_page

__all__ = ["AttributionGraph", "Pruned", "graph_page", "save_graph_page"]
