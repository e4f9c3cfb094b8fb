"""Attribution graphs: nodes, sparse weighted edges, influence, pruning, scores, and the JSON that
circuit-tracer's and Neuronpedia's graph frontends read.

Nodes, in this order (the order circuit-tracer uses, so indices and exports line up):

    features   active dictionary features, one per (layer, position, feature id)      ``features[i]``
    errors     one per (layer, position): the MLP output the dictionary misses          layer-major
    tokens     one per position: the token embedding
    logits     the output logits attributed (the top ones covering ``desired_logit_prob``, <= max)

An edge ``source -> target`` is the direct, linear effect of the source on the target in the local
replacement model (attention patterns and norm scales frozen, MLPs replaced by the dictionary's features
plus the error nodes): for a feature target, on its pre-activation; for a logit target, on the logit
minus the mean logit. Only targets that were attributed (features and logits) have incoming edges.

Edges are kept sparse (COO: ``targets``, ``sources``, ``weights``; only the non-zero ones), so memory
grows with the edges that exist, not with the square of the node count. Influence, pruning and the scores
follow circuit-tracer's definitions (``prune``, ``scores``), computed on the sparse matrix.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..results import Result

KINDS = ("feature", "error", "token", "logit")


@dataclass(frozen=True)
class Pruned:
    """What ``AttributionGraph.prune`` keeps: ``nodes`` ``[n_nodes]`` bool, ``edges`` ``[n_edges]`` bool
    (over the graph's edge list), ``influence`` ``[n_nodes]`` each node's total influence on the logits and
    ``cumulative`` ``[n_nodes]`` the share of all influence carried by nodes at least as influential."""

    nodes: torch.Tensor
    edges: torch.Tensor
    influence: torch.Tensor
    cumulative: torch.Tensor
    node_threshold: float
    edge_threshold: float


@dataclass(frozen=True, eq=False)
class AttributionGraph(Result):
    """An attribution graph for one prompt (see the module docstring for node order and edge meaning).

    prompt:        the text (or the decoded token ids)
    token_ids:     ``[n_pos]``; ``token_strs`` their strings
    features:      ``[n_feat, 3]`` (layer, position, feature id) of each feature node
    activations:   ``[n_feat]`` each feature node's activation
    n_layers:      layers with error nodes (one per layer and position)
    logit_ids:     ``[n_logits]`` token ids of the logit nodes; ``logit_strs`` their strings; ``logit_probs``
                   ``[n_logits]`` their probabilities (the weights of influence)
    targets, sources, weights: the edges ``[n_edges]`` (node indices and direct effects)
    meta:          how it was made (model, dictionary, timings, sizes), JSON-ready
    """

    prompt: str
    token_ids: torch.Tensor
    token_strs: tuple[str, ...]
    features: torch.Tensor
    activations: torch.Tensor
    n_layers: int
    logit_ids: torch.Tensor
    logit_strs: tuple[str, ...]
    logit_probs: torch.Tensor
    targets: torch.Tensor
    sources: torch.Tensor
    weights: torch.Tensor
    meta: dict = field(default_factory=dict)

    # -- node bookkeeping ------------------------------------------------------------------------
    @property
    def n_pos(self) -> int:
        return int(self.token_ids.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_logits(self) -> int:
        return int(self.logit_ids.shape[0])

    @property
    def offsets(self) -> dict[str, int]:
        """First node index of each kind."""
        e = self.n_features
        t = e + self.n_layers * self.n_pos
        g = t + self.n_pos
        return {"feature": 0, "error": e, "token": t, "logit": g}

    @property
    def n_nodes(self) -> int:
        return self.offsets["logit"] + self.n_logits

    def error_node(self, layer: int, pos: int) -> int:
        return self.offsets["error"] + layer * self.n_pos + pos

    def token_node(self, pos: int) -> int:
        return self.offsets["token"] + pos

    def logit_node(self, i: int) -> int:
        return self.offsets["logit"] + i

    def feature_node(self, layer: int, pos: int, feature: int) -> int:
        """Index of the feature node (layer, pos, feature); KeyError if it is not active."""
        hit = ((self.features[:, 0] == layer) & (self.features[:, 1] == pos) & (self.features[:, 2] == feature)).nonzero()
        if hit.numel() == 0:
            raise KeyError(f"feature {feature} at layer {layer}, position {pos} is not a node of this graph (not active)")
        return int(hit[0, 0])

    def describe(self, node: int) -> dict[str, Any]:
        """Kind, layer, position and id of a node index."""
        o = self.offsets
        if not 0 <= node < self.n_nodes:
            raise IndexError(f"node {node} is out of range: this graph has {self.n_nodes} nodes")
        if node < o["error"]:
            layer, pos, f = self.features[node].tolist()
            return {"kind": "feature", "layer": layer, "pos": pos, "feature": f, "activation": float(self.activations[node])}
        if node < o["token"]:
            layer, pos = divmod(node - o["error"], self.n_pos)
            return {"kind": "error", "layer": layer, "pos": pos}
        if node < o["logit"]:
            pos = node - o["token"]
            return {"kind": "token", "pos": pos, "token": self.token_strs[pos], "token_id": int(self.token_ids[pos])}
        i = node - o["logit"]
        return {"kind": "logit", "pos": self.n_pos - 1, "token": self.logit_strs[i], "token_id": int(self.logit_ids[i]),
                "prob": float(self.logit_probs[i])}

    # -- matrices --------------------------------------------------------------------------------
    def adjacency(self) -> torch.Tensor:
        """The sparse ``[n_nodes, n_nodes]`` matrix, rows = targets, columns = sources (float32)."""
        idx = torch.stack([self.targets, self.sources])
        return torch.sparse_coo_tensor(idx, self.weights.float(), (self.n_nodes, self.n_nodes), check_invariants=True).coalesce()

    def incoming(self, node: int) -> torch.Tensor:
        """``[n_nodes]`` dense: the direct effect of every node on ``node``."""
        out = torch.zeros(self.n_nodes)
        m = self.targets == node
        out.index_add_(0, self.sources[m], self.weights[m].float())
        return out

    def logit_weights(self) -> torch.Tensor:
        w = torch.zeros(self.n_nodes)
        w[self.offsets["logit"]:] = self.logit_probs.float()
        return w

    def _normalised(self, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Edges with |weight| / (sum of |weights| into their target), over the edges in ``keep``."""
        t, s, w = self.targets, self.sources, self.weights.float().abs()
        if keep is not None:
            w = torch.where(keep, w, torch.zeros_like(w))
        row = torch.zeros(self.n_nodes, dtype=torch.float64).index_add_(0, t, w.double())
        norm = (w.double() / row[t].clamp_min(1e-10)).float()
        return t, s, norm

    def _influence(self, t: torch.Tensor, s: torch.Tensor, a: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """``start @ (A + A^2 + ...)`` for the sparse normalised matrix (t, s, a): the graph is acyclic, so
        the series ends after at most its depth."""
        total = torch.zeros(self.n_nodes, dtype=torch.float64)
        cur = start.double()
        for _ in range(self.n_nodes + 1):
            nxt = torch.zeros(self.n_nodes, dtype=torch.float64).index_add_(0, s, cur[t] * a.double())
            if not bool(nxt.any()):
                return total.float()
            total += nxt
            cur = nxt
        raise RuntimeError("influence did not converge: the edges contain a cycle (an attribution graph is acyclic)")

    def influence(self, logits: int | Sequence[int] | None = None) -> torch.Tensor:
        """``[n_nodes]`` each node's total (direct and indirect) influence on the logits, weighted by their
        probabilities, through the row-normalised absolute edge weights (circuit-tracer's node influence).
        ``logits``: only these logit nodes (indices into ``logit_ids``), each with weight 1: the influence on
        one answer rather than on the output as a whole."""
        t, s, a = self._normalised()
        if logits is None:
            return self._influence(t, s, a, self.logit_weights())
        chosen = [logits] if isinstance(logits, int) else list(logits)
        if not chosen or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.n_logits for i in chosen):
            raise ValueError(f"logits={logits!r}: give logit indices in 0..{self.n_logits - 1} (this graph's logit "
                             f"nodes: {', '.join(repr(x) for x in self.logit_strs)})")
        start = torch.zeros(self.n_nodes)
        start[[self.logit_node(i) for i in chosen]] = 1.0
        return self._influence(t, s, a, start)

    # -- pruning and scores ----------------------------------------------------------------------
    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Pruned:
        """Keep the most influential nodes carrying ``node_threshold`` of the total influence (tokens and
        logits always kept), then the edges carrying ``edge_threshold`` of the influence among those, then
        drop feature / error nodes left without an outgoing edge and features without an incoming one,
        until nothing changes (circuit-tracer's ``prune_graph``)."""
        for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v <= 1.0:
                raise ValueError(f"{name}={v!r}; it is a share of the influence, in (0, 1]")
        influence = self.influence()
        nodes = influence >= _threshold(influence, node_threshold)
        always = self.offsets["token"]
        nodes[always:] = True
        t, s = self.targets, self.sources
        kept = nodes[t] & nodes[s]
        tt, ss, a = self._normalised(kept)
        pruned_influence = self._influence(tt, ss, a, self.logit_weights()) + self.logit_weights()
        edge_scores = a * pruned_influence[tt]
        edges = kept & (edge_scores >= _threshold(edge_scores[kept], edge_threshold)) if bool(kept.any()) else kept
        n_feat = self.n_features
        while True:
            before = nodes.clone()
            edges &= nodes[t] & nodes[s]
            has_out = torch.zeros(self.n_nodes, dtype=torch.bool)
            has_out[s[edges]] = True
            has_in = torch.zeros(self.n_nodes, dtype=torch.bool)
            has_in[t[edges]] = True
            nodes[:always] &= has_out[:always]
            nodes[:n_feat] &= has_in[:n_feat]
            if torch.equal(nodes, before):
                break
        order = influence.argsort(descending=True)
        cum = torch.zeros_like(influence)
        total = influence.sum()
        cum[order] = influence[order].cumsum(0) / (total if total > 0 else 1.0)
        return Pruned(nodes, edges, influence, cum, float(node_threshold), float(edge_threshold))

    def scores(self) -> tuple[float, float]:
        """(replacement score, completeness score), as circuit-tracer defines them: the share of the
        token-to-logit influence that reaches the logits from tokens rather than error nodes, and the
        influence-weighted share of each node's normalised input that comes from non-error nodes."""
        t, s, a = self._normalised()
        w = self.logit_weights()
        influence = self._influence(t, s, a, w)
        o = self.offsets
        tokens = influence[o["token"]:o["logit"]].sum()
        errors = influence[o["error"]:o["token"]].sum()
        replacement = float(tokens / (tokens + errors)) if float(tokens + errors) > 0 else float("nan")
        from_error = (s >= o["error"]) & (s < o["token"])
        err_share = torch.zeros(self.n_nodes).index_add_(0, t[from_error], a[from_error])
        has_input = torch.zeros(self.n_nodes, dtype=torch.bool)
        has_input[t] = True
        non_error = torch.where(has_input, 1 - err_share, torch.ones(self.n_nodes))
        out = influence + w
        completeness = float((non_error * out).sum() / out.sum())
        return replacement, completeness

    # -- results ---------------------------------------------------------------------------------
    def nodes_frame(self, pruned: Pruned | None = None):
        """One row per node (kept nodes only, with ``pruned``): kind, layer, position, feature, activation,
        influence."""
        import pandas as pd

        p = pruned or self.prune()
        rows = []
        for n in p.nodes.nonzero().flatten().tolist():
            d = self.describe(n)
            d.update(node=n, influence=float(p.influence[n]), cumulative=float(p.cumulative[n]))
            rows.append(d)
        cols = ["node", "kind", "layer", "pos", "feature", "activation", "token", "prob", "influence", "cumulative"]
        frame = pd.DataFrame(rows)
        return frame[[c for c in cols if c in frame.columns]]

    def edges_frame(self, pruned: Pruned | None = None):
        """One row per edge (kept edges only, with ``pruned``): source, target, weight."""
        import pandas as pd

        keep = (pruned or self.prune()).edges
        return pd.DataFrame({"source": self.sources[keep].tolist(), "target": self.targets[keep].tolist(),
                             "weight": self.weights[keep].float().tolist()})

    def to_frame(self):
        return self.nodes_frame()

    def to_dict(self, node_threshold: float = 0.8, edge_threshold: float = 0.98, slug: str = "avec-graph") -> dict:
        """The pruned graph as circuit-tracer / Neuronpedia graph JSON (metadata, qParams, nodes, links)."""
        p = self.prune(node_threshold, edge_threshold)
        ids = {}
        nodes = []
        for n in p.nodes.nonzero().flatten().tolist():
            node = _frontend_node(self, n, float(p.cumulative[n]))
            ids[n] = node["node_id"]
            nodes.append(node)
        keep = p.edges.nonzero().flatten()
        links = [{"source": ids[s], "target": ids[t], "weight": w}
                 for s, t, w in zip(self.sources[keep].tolist(), self.targets[keep].tolist(), self.weights[keep].float().tolist())
                 if s in ids and t in ids]
        used = {x for link in links for x in (link["source"], link["target"])}
        nodes = [n for n in nodes if n["node_id"] in used or n["feature_type"] in ("embedding", "logit")]
        rep, comp = self.scores()
        # whole-graph numbers the pruned node/link lists cannot give back (frontends ignore unknown info keys)
        stats = {"replacement_score": rep, "completeness_score": comp, "n_nodes": self.n_nodes,
                 "n_feature_nodes": self.n_features, "n_edges": int(self.targets.numel()),
                 "kept_nodes": int(p.nodes.sum()), "kept_edges": int(p.edges.sum()),
                 "edge_threshold": float(edge_threshold),
                 "logits": [[s, float(q)] for s, q in zip(self.logit_strs, self.logit_probs)]}
        meta = {"slug": slug, "scan": str(self.meta.get("scan", self.meta.get("dictionary", "avec"))),
                "transcoder_list": [], "prompt_tokens": list(self.token_strs), "prompt": self.prompt,
                "node_threshold": float(node_threshold), "schema_version": 1,
                "info": {"creator_name": "avec", "generator": {"name": "avec.circuits.attribute"}, **{
                    k: v for k, v in self.meta.items() if isinstance(v, (str, int, float, bool))}, **stats}}
        q = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
        return {"metadata": meta, "qParams": q, "nodes": nodes, "links": links}

    def save_json(self, path: str | os.PathLike, node_threshold: float = 0.8, edge_threshold: float = 0.98,
                  slug: str | None = None):
        """Write ``to_dict`` to ``path`` atomically (the file circuit-tracer's ``serve`` and Neuronpedia load)."""
        from ..io import atomic_write_text

        slug = slug or os.path.splitext(os.path.basename(os.fspath(path)))[0]
        return atomic_write_text(path, json.dumps(self.to_dict(node_threshold, edge_threshold, slug)))

    def plot(self, ax=None, pruned: Pruned | None = None, max_edges: int = 400):
        """Kept nodes by position (x) and layer (y), edges coloured by sign (blue +, red -), width by |weight|."""
        import matplotlib.pyplot as plt

        p = pruned or self.prune()
        fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(max(6, self.n_pos * 0.7), 6))
        xy = {}
        per_cell: dict[tuple[int, int], int] = {}
        for n in p.nodes.nonzero().flatten().tolist():
            d = self.describe(n)
            row = {"token": -1, "logit": self.n_layers + 1}.get(d["kind"], d.get("layer", 0))
            k = per_cell.get((d["pos"], row), 0)
            per_cell[(d["pos"], row)] = k + 1
            xy[n] = (d["pos"] + 0.12 * k, row)
        keep = p.edges.nonzero().flatten()
        w = self.weights[keep].float()
        order = w.abs().argsort(descending=True)[:max_edges]
        wmax = float(w.abs().max()) if w.numel() else 1.0
        for i in order.tolist():
            e = int(keep[i])
            s, t = int(self.sources[e]), int(self.targets[e])
            if s in xy and t in xy:
                ax.plot(*zip(xy[s], xy[t]), color="#2563eb" if w[i] > 0 else "#dc2626",
                        lw=0.3 + 2.5 * abs(float(w[i])) / wmax, alpha=0.5)
        colors = {"feature": "#444", "error": "#aaa", "token": "#16a34a", "logit": "#9333ea"}
        for n, (x, y) in xy.items():
            ax.scatter([x], [y], s=18, color=colors[self.describe(n)["kind"]], zorder=3)
        ax.set_xticks(range(self.n_pos))
        ax.set_xticklabels([repr(t)[1:-1] for t in self.token_strs], rotation=60, fontsize=7)
        ax.set_ylabel("layer (embeddings at -1, logits on top)")
        ax.set_title(f"attribution graph: {int(p.nodes.sum())} nodes, {int(p.edges.sum())} edges")
        return fig


def _threshold(scores: torch.Tensor, share: float) -> torch.Tensor:
    """The score above which the largest scores carry ``share`` of their total."""
    if scores.numel() == 0:
        return torch.tensor(float("inf"))
    ordered = scores.sort(descending=True).values
    total = ordered.sum()
    if float(total) <= 0:
        return ordered[0]
    cum = ordered.cumsum(0) / total
    i = min(int(torch.searchsorted(cum, torch.tensor(share, dtype=cum.dtype))), ordered.numel() - 1)
    return ordered[i]


def _frontend_node(g: AttributionGraph, n: int, influence: float) -> dict:
    d = g.describe(n)
    base = {"influence": influence, "activation": None, "token_prob": 0.0, "is_target_logit": False, "run_idx": 0,
            "reverse_ctx_idx": 0, "clerp": ""}
    if d["kind"] == "feature":
        layer, pos, f = d["layer"], d["pos"], d["feature"]
        pair = (layer + f) * (layer + f + 1) // 2 + f  # the frontends' one number for (layer, feature)
        return {**base, "node_id": f"{layer}_{f}_{pos}", "feature": pair, "layer": str(layer), "ctx_idx": pos,
                "feature_type": "cross layer transcoder", "jsNodeId": f"{layer}_{f}-0", "activation": d["activation"]}
    if d["kind"] == "error":
        layer, pos = d["layer"], d["pos"]
        return {**base, "node_id": f"{layer}_-1_{pos}", "feature": -1, "layer": str(layer), "ctx_idx": pos,
                "feature_type": "mlp reconstruction error", "jsNodeId": f"{layer}_-1-{pos}"}
    if d["kind"] == "token":
        pos, tok = d["pos"], d["token_id"]
        return {**base, "node_id": f"E_{tok}_{pos}", "feature": pos, "layer": "E", "ctx_idx": pos,
                "feature_type": "embedding", "jsNodeId": f"E_{tok}-{pos}"}
    layer = str(g.n_layers + 1)
    i = n - g.offsets["logit"]
    return {**base, "node_id": f"{layer}_{d['token_id']}_{d['pos']}", "feature": d["token_id"], "layer": layer,
            "ctx_idx": d["pos"], "feature_type": "logit", "jsNodeId": f"L_{d['token_id']}-{d['pos']}",
            "token_prob": d["prob"], "is_target_logit": i == 0, "clerp": f'Output "{d["token"]}" (p={d["prob"]:.3f})'}
