"""Circuit tracing: attribution graphs over a local replacement model (transcoder features, error nodes,
token embeddings, output logits), their pruning, scores, export, views and interventions.

    attribution    attribute(lm, transcoders, prompt) -> AttributionGraph: the local replacement model's
                   direct effects (features, error nodes, token embeddings, top logits), batched backward passes
    graph          AttributionGraph: nodes, sparse edges, influence, prune, scores, circuit-tracer JSON
    view           graph_page / save_graph_page: an interactive HTML view (click a node: its edges and
                   dashboard; select nodes: a supernode)
    interventions  intervene(lm, transcoders, prompt, [(layer, pos, feature, value)]): turn graph features
                   off or up through the core, the next-token change shown
"""

from .attribution import attribute, logit_targets
from .graph import AttributionGraph, Pruned
from .interventions import FeatureIntervention, intervene
from .view import graph_page, save_graph_page

__all__ = ["AttributionGraph", "Pruned", "FeatureIntervention", "attribute", "graph_page", "intervene", "logit_targets",
           "save_graph_page"]
