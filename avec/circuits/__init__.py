"""Circuit tracing: attribution graphs over a local replacement model (transcoder features, error nodes,
token embeddings, output logits), their pruning, scores and export.

    graph      AttributionGraph: nodes, sparse edges, influence, prune, scores, circuit-tracer JSON
"""

from .graph import AttributionGraph, Pruned

__all__ = ["AttributionGraph", "Pruned"]
