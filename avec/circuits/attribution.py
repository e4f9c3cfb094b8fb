"""Attribution graphs of one prompt through a local replacement model.

The local replacement model of a prompt is the model with every MLP replaced by a transcoder's features
(a cross-layer transcoder, or one transcoder per layer), an error node per (layer, position) holding what
the features miss (so the output is exactly the model's), and the attention patterns and norm scales held
at their values in the real run. In it every node's input is a linear function of the nodes before it:

    feature (l, p, f):  pre-activation = sum of incoming edges + constant (encoder bias, decoder biases ...)
    logit t:            logit t - mean logit = sum of incoming edges (+ constant)

An edge's weight is the source's activation times the gradient of the target with respect to it, with
gradients stopped at every feature's activation (features are nodes: what reaches them is an edge to
them, not through them), at the attention patterns and norm scales (``run(freeze=["norms",
"attention"])``) and carried through an MLP only as its features and error. The gradients are read at
the MLP outputs (the error nodes) and the embeddings; a feature's edges are its activation times its
decoder vectors dotted with the gradients at the MLP outputs it writes to, so backward passes never run
through the decoders. One forward pass per prompt prefix keeps its graph (``Run.gradients``); each batch
of ``batch_size`` targets takes one batched (vmapped) backward pass from it.

    graph = attribute(lm, clt, "Fact: the capital of the state containing Dallas is")
    graph.prune()              # nodes carrying 80% of the influence, edges carrying 98%
    graph.save_json("g.json")  # what circuit-tracer's and Neuronpedia's frontends read
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch

from ..core.interventions import StopGradient
from .graph import AttributionGraph


DECODER_CACHE_BYTES = 1 << 30  # keep the active features' decoder vectors in memory up to this size


def logit_targets(lm: Any, logits: torch.Tensor, max_n_logits: int = 10, desired_logit_prob: float = 0.95
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The most likely next tokens, fewest first whose probabilities sum to ``desired_logit_prob`` (at most
    ``max_n_logits``): ``(token ids [k], probabilities [k], directions [k, d_model])``, each direction the
    token's unembedding column minus the mean column (so an edge attributes logit - mean logit)."""
    if isinstance(max_n_logits, bool) or not isinstance(max_n_logits, int) or max_n_logits < 1:
        raise ValueError(f"max_n_logits={max_n_logits!r}; it must be a positive int")
    if not 0 < desired_logit_prob <= 1:
        raise ValueError(f"desired_logit_prob={desired_logit_prob!r}; it is a probability in (0, 1]")
    probs = torch.softmax(logits.float(), -1)
    top_p, top_i = probs.topk(min(max_n_logits, probs.shape[-1]))
    keep = int(torch.searchsorted(top_p.cumsum(0), torch.tensor(desired_logit_prob))) + 1
    top_p, top_i = top_p[:keep], top_i[:keep]
    W_U = lm.W_U.detach().float()  # [d_model, vocab]
    dirs = (W_U[:, top_i] - W_U.mean(-1, keepdim=True)).T
    return top_i, top_p, dirs


def _check_replacement(lm: Any, d: Any) -> None:
    """The dictionary must replace every MLP: one target per layer, at that layer's mlp_out."""
    L = lm.n_layers
    want = [f"blocks.{l}.mlp_out" for l in range(L)]
    if list(d.writes) != want:
        raise ValueError(f"an attribution graph needs every MLP replaced: a transcoder set writing {want[0]} .. "
                         f"{want[-1]} ({L} layers); this one writes {list(d.writes)[:3]}{' ...' if len(d.writes) > 3 else ''} "
                         f"({len(d.writes)} point(s))")
    if d.splice != "error":
        raise ValueError(f"the local replacement model keeps the model's output exactly through error nodes: attach "
                         f"the transcoders with splice='error' (this one has splice={d.splice!r})")
    missing = [m for m in ("pre_activations", "decoder_vectors", "targets", "n_targets")
               if not callable(getattr(d.module, m, None))]
    if missing:
        raise TypeError(f"{type(d.module).__name__} has no {' or '.join(missing)}: attribution needs each feature's "
                        "pre-activation as a function of its input and its decoder vectors (avec's Transcoder / "
                        "CrossLayerTranscoder have them)")


class _Context:
    """The prompt's clean run with the dictionary attached: active features, errors, embeddings."""

    def __init__(self, lm: Any, d: Any, ids: torch.Tensor, first_position_nodes: bool = True):
        self.lm, self.d, self.ids = lm, d, ids
        self.first_position_nodes = first_position_nodes
        L = lm.n_layers
        self.lat = [d.point("latents", l) for l in range(L)]
        self.err = [d.point("error", l) for l in range(L)]
        with torch.no_grad():
            run = lm.run(ids, cache=["embed", *self.lat, *self.err])
        self.logits = run.logits[0, -1].detach()
        self.embed = run.cache["embed"][0].float()                             # [n, d_model]
        self.errors = torch.stack([run.cache[p][0].float() for p in self.err])  # [L, n, d_model]
        feats, acts = [], []
        for l, p in enumerate(self.lat):
            z = run.cache[p][0].float()                                        # [n, d_sae]
            nz = z.nonzero()                                                   # (pos, f), row-major
            feats.append(torch.cat([torch.full((nz.shape[0], 1), l), nz], 1))
            acts.append(z[nz[:, 0], nz[:, 1]])
        self.features = torch.cat(feats) if feats else torch.zeros(0, 3, dtype=torch.long)  # [n_feat, 3]
        self.activations = torch.cat(acts) if acts else torch.zeros(0)
        if not first_position_nodes:  # position 0's MLP outputs are constants: its features are not nodes
            keep = self.features[:, 1] > 0
            self.features, self.activations = self.features[keep], self.activations[keep]
        self.n_pos = ids.shape[1]
        self._live: tuple[int, Any] | None = None
        self._dec: dict[int, torch.Tensor] = {}
        self._dec_fits: bool | None = None

    def _decoders(self, l: int, idx: torch.Tensor, below: int) -> torch.Tensor:
        """[len(idx), n_t, d] the decoder vectors of active features ``idx`` (indices into ``features``, all
        at layer l) to their targets below layer ``below``. Every active feature's are read once and kept
        when they fit in ``DECODER_CACHE_BYTES``, else read for each batch."""
        module = self.d.module
        if self._dec_fits is None:
            n_t = torch.tensor([module.n_targets(int(i)) for i in range(self.lm.n_layers)])
            per_layer = torch.bincount(self.features[:, 0], minlength=self.lm.n_layers)
            self._dec_fits = int((per_layer * n_t).sum()) * self.embed.shape[-1] * 4 <= DECODER_CACHE_BYTES
            self._dec_start = torch.cat([torch.zeros(1, dtype=torch.long), per_layer.cumsum(0)])
        n_t = len([t for t in module.targets(l) if t < below])
        if not self._dec_fits:
            return module.decoder_vectors(l, self.features[idx, 2], below).float()
        if l not in self._dec:
            lo, hi = int(self._dec_start[l]), int(self._dec_start[l + 1])
            self._dec[l] = module.decoder_vectors(l, self.features[lo:hi, 2]).detach().float()
        return self._dec[l][idx - self._dec_start[l], :n_t]

    def _prefix_run(self, upto: int) -> Any:
        """The frozen run of the prompt's first ``upto`` tokens, its autograd graph kept, so that every batch of
        targets within those positions takes its gradients from one forward pass (batches come in position
        order, so one such run is kept at a time)."""
        if self._live is not None and self._live[0] == upto:
            return self._live[1]
        self._live = None  # free the previous graph first
        lm, d, L = self.lm, self.d, self.lm.n_layers
        # gradients are read at the MLP outputs (the error points) and the embeddings only: a feature's edge is
        # its activation times its decoder vectors dotted with the gradients at the MLP outputs it writes to,
        # so backward passes never run through the decoders (for a CLT, most of the weights); the metric reads
        # the targets' inputs (each layer's read point, the final norm)
        cache = ["embed", *self.err, *dict.fromkeys(d.reads), "final_norm"]
        # reading a pattern runs the model with eager attention, whose backward (plain matrix products) the batched
        # gradients vectorise; the fused attention kernel's backward would run once per target (8x slower here)
        cache.append("blocks.0.attn.pattern")
        run = lm.run(self.ids[:, :upto], cache=cache, grad=True, freeze=["norms", "attention"],
                     interventions=[StopGradient(p) for p in self.lat])
        self._live = (upto, run)
        return run

    def rows(self, specs: Sequence[tuple], selected: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """Incoming edges of each target in ``specs`` over the sources (selected features, errors, tokens):
        ``[len(specs), n_selected + L * n + n]``. A spec is ("logit", direction [d_model]) or
        ("feature", layer, pos, feature id).

        Only what can reach the targets is run: the prompt up to the last target position (the model is
        causal; ``upto`` positions if given, so that batches at different positions share one forward pass),
        and backward passes stop below the deepest target."""
        d, n, L = self.d, self.n_pos, self.lm.n_layers
        B = len(specs)
        logits = any(s[0] == "logit" for s in specs)
        need = n if logits else max(s[2] for s in specs) + 1               # positions that can matter
        if upto is None:
            upto = need
        elif not need <= upto <= n:
            raise ValueError(f"upto={upto}: the targets need the first {need} position(s) of {n}")
        below = L if logits else max(s[1] for s in specs)                  # layers whose nodes can be sources
        module = d.module

        def metric(run):  # one value per target: the gradients get a leading target axis
            values = []
            for s in specs:
                if s[0] == "logit":
                    values.append(run.cache["final_norm"][0, -1].float() @ s[1].to(run.cache["final_norm"].device))
                else:
                    _, l, p, f = s
                    values.append(module.pre_activations(run.cache[d.reads[l]][0, p], l, features=[f])[0].float())
            return torch.stack(values)

        grads = self._prefix_run(upto).gradients(metric)
        with torch.no_grad():  # edges are numbers: no tape (a trainable set's decoders would chain every batch's)
            return self._edges(grads, specs, selected, upto, below)

    def _edges(self, grads: Any, specs: Sequence[tuple], selected: torch.Tensor, upto: int, below: int) -> torch.Tensor:
        """The rows of ``rows`` from the targets' gradients at the MLP outputs and the embeddings."""
        n, L, B = self.n_pos, self.lm.n_layers, len(specs)
        g_err = torch.stack([grads[self.err[l]][:, 0].float() for l in range(below)], 2) if below else \
            torch.zeros(B, upto, 0, self.embed.shape[-1])                                # [B, upto, below, d]
        sel = self.features[selected]
        acts = self.activations[selected]
        feat_edges = torch.zeros(B, sel.shape[0])
        for l in range(below):
            m = ((sel[:, 0] == l) & (sel[:, 1] < upto)).nonzero()[:, 0]
            if m.numel() == 0:
                continue
            dec = self._decoders(l, selected[m], below)                               # [r, n_t, d]
            n_t = dec.shape[1]
            pos = sel[m, 1]
            for p in pos.unique().tolist():  # one product per position: [B, n_t * d] @ [n_t * d, r_p]
                at = m[pos == p]
                g = g_err[:, p, l:l + n_t].reshape(B, -1)
                feat_edges[:, at] = (g @ dec[pos == p].reshape(at.numel(), -1).T) * acts[at]
        err_edges = torch.zeros(B, L, n)
        err_edges[:, :below, :upto] = (g_err * self.errors[:below, :upto].transpose(0, 1)).sum(-1).transpose(1, 2)
        if not self.first_position_nodes:
            err_edges[:, :, 0] = 0.0  # position 0's error is part of a constant there, not a node's value
        tok_edges = torch.zeros(B, n)
        tok_edges[:, :upto] = (grads["embed"][:, 0].float() * self.embed[:upto]).sum(-1)
        return torch.cat([feat_edges, err_edges.reshape(B, -1), tok_edges], 1)


def _strs(lm: Any, ids: torch.Tensor) -> list[str]:
    """Each token id as text (``<id>`` for a model without a tokenizer)."""
    tok = getattr(lm, "tokenizer", None)
    return [tok.decode([int(i)]) if tok is not None else f"<{int(i)}>" for i in ids.tolist()]


def with_bos(lm: Any, ids: torch.Tensor, module: Any, prepend_bos: bool | None) -> torch.Tensor:
    """``ids`` ``[1, n]`` with the dictionary's training BOS first: the token every context it was trained on
    began with (``cfg.bos``; else the tokenizer's), unless the prompt already starts with it.
    ``prepend_bos=None``: only when the dictionary records one (a prompt without it would put the attention
    sink's huge activation on its first word, which such a dictionary never saw)."""
    bos = getattr(getattr(module, "cfg", None), "bos", None)
    if prepend_bos is None:
        prepend_bos = bos is not None
    if not prepend_bos:
        return ids
    if bos is None:
        bos = getattr(getattr(lm, "tokenizer", None), "bos_token_id", None)
        if bos is None:
            raise ValueError("prepend_bos=True but neither the dictionary (cfg.bos) nor the tokenizer names a BOS token")
    if int(ids[0, 0]) == bos:
        return ids
    return torch.cat([ids.new_tensor([[bos]]), ids], 1)


def _tokens(lm: Any, prompt: Any) -> torch.Tensor:
    if isinstance(prompt, str):
        if not prompt:
            raise ValueError("the prompt is empty")
        return lm.tokenize(prompt)[0]
    ids = torch.as_tensor(prompt, dtype=torch.long)
    if ids.dim() == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.dim() != 1 or ids.numel() == 0:
        raise ValueError(f"give one prompt: a string or token ids [n_pos]; got shape {tuple(ids.shape)}")
    return ids[None]


def attribute(lm: Any, transcoders: Any, prompt: Any, *, max_n_logits: int = 10, desired_logit_prob: float = 0.95,
              batch_size: int = 16, max_feature_nodes: int | None = None, max_memory_gb: float = 8.0,
              progress: bool | Callable[[int, int], Any] = True, prepend_bos: bool | None = None,
              first_position_nodes: bool | None = None) -> AttributionGraph:
    """The attribution graph of ``prompt`` (a string or token ids ``[n_pos]``) through the local replacement
    model made with ``transcoders`` (a cross-layer transcoder or a set of per-layer transcoders covering every
    layer, or such a dictionary already attached with ``lm.add_dictionary``).

    max_n_logits, desired_logit_prob: which output logits are nodes (``logit_targets``)
    batch_size:        targets per batched backward pass (memory grows with it); targets come in position
                       order, and the batches at one prompt prefix share its forward pass
    max_feature_nodes: attribute at most this many features, the most influential first (influence estimated
                       from the edges found so far, as circuit-tracer does); None: every active feature
    progress:          True shows a tqdm bar; a function ``progress(done, total)`` is called with the nodes
                       attributed so far after each batch (e.g. to show progress in a page)
    prepend_bos:       put the dictionary's training BOS before a prompt that lacks it (``with_bos``; None: when
                       the dictionary records one, as avec's trainer does); the graph's tokens include it
    first_position_nodes: whether the first position's features and errors are nodes. False is circuit-tracer's
                       convention: that position's MLP outputs are constants of the frozen model, so its features
                       are not nodes and its error nodes have no edges (the other edges are unchanged: nothing at a
                       later position reaches position 0). None: False when the prompt starts with the BOS the
                       dictionary records (it never trained on those positions, which hold the attention sink),
                       else True
    max_memory_gb:     refuse up front (naming the sizes and what would fit) a prompt whose edges, one row of
                       floats per attributed node over every active feature, error and token, would take more
                       (the dense rows are what influence ranking and pruning read)
    """
    from tqdm.auto import tqdm

    from ..core.dictionary import AttachedDictionary

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}; it must be a positive int")
    if isinstance(max_memory_gb, bool) or not isinstance(max_memory_gb, (int, float)) or not max_memory_gb > 0:
        raise ValueError(f"max_memory_gb={max_memory_gb!r}; give a positive number of gigabytes")
    if max_feature_nodes is not None and (isinstance(max_feature_nodes, bool) or not isinstance(max_feature_nodes, int)
                                          or max_feature_nodes < 0):
        raise ValueError(f"max_feature_nodes={max_feature_nodes!r}; give a number of features >= 0, or None for all")
    for name, v in (("prepend_bos", prepend_bos), ("first_position_nodes", first_position_nodes)):
        if v is not None and not isinstance(v, bool):
            raise ValueError(f"{name}={v!r}; give True, False or None (follow the dictionary)")
    ids = _tokens(lm, prompt)
    t0 = time.perf_counter()
    attached = transcoders if isinstance(transcoders, AttachedDictionary) else None
    d = attached or lm.add_dictionary(transcoders)
    try:
        _check_replacement(lm, d)
        ids = with_bos(lm, ids, d.module, prepend_bos)
        if first_position_nodes is None:
            bos = getattr(getattr(d.module, "cfg", None), "bos", None)
            first_position_nodes = not (bos is not None and int(ids[0, 0]) == bos)
        ctx = _Context(lm, d, ids, bool(first_position_nodes))
        n, L = ctx.n_pos, lm.n_layers
        n_active = ctx.features.shape[0]
        tok_ids, probs, dirs = logit_targets(lm, ctx.logits, max_n_logits, desired_logit_prob)
        n_logits = tok_ids.shape[0]
        budget = n_active if max_feature_nodes is None else min(max_feature_nodes, n_active)
        n_cols = n_active + L * n + n
        need = (budget + n_logits) * n_cols * 4 / 2**30
        if need > max_memory_gb:
            fits = max(0, int(max_memory_gb * 2**30 / (4 * n_cols)) - n_logits)
            raise ValueError(f"the graph of this {n}-token prompt ({n_active:,} active features) would hold "
                             f"{budget + n_logits:,} x {n_cols:,} edge weights, {need:.1f} GB > max_memory_gb="
                             f"{max_memory_gb}: attribute fewer features (max_feature_nodes <= {fits:,} fits), give "
                             "a shorter prompt, or raise max_memory_gb")
        every = torch.arange(n_active)
        # batches of targets that share a prompt prefix and a depth are cheapest (see _Context.rows)
        by_place = torch.tensor(sorted(range(n_active), key=lambda j: (int(ctx.features[j, 1]), int(ctx.features[j, 0]))),
                                dtype=torch.long) if n_active else every
        bar = tqdm(total=n_logits + budget, desc="attribution", unit="node", disable=progress is not True)
        tell = progress if callable(progress) else (lambda done, total: None)
        # one dense row per node over all active features (columns of unvisited features are dropped at the end),
        # allocated once: visited features' rows from the top in visit order, the logits' rows last
        M = torch.zeros(budget + n_logits, n_cols)
        for i in range(0, n_logits, batch_size):
            M[budget + i:budget + i + batch_size] = ctx.rows([("logit", v) for v in dirs[i:i + batch_size]], every)
        bar.update(n_logits)
        tell(n_logits, n_logits + budget)
        visited: list[int] = []
        seen = torch.zeros(n_active, dtype=torch.bool)
        while len(visited) < budget:
            if budget == n_active:
                queue = by_place[~seen[by_place]]
            else:  # the most influential unvisited features by the edges found so far
                influence = _partial_influence(M, visited, ctx.features[:, 0], probs, L)
                order = influence[:n_active].argsort(descending=True)
                queue = order[~seen[order]][:min(4 * batch_size, budget - len(visited))]
                # the same features, batched by layer: a batch's backward pass stops below its deepest target
                queue = queue[ctx.features[queue, 0].argsort(stable=True)]
            for i in range(0, len(queue), batch_size):
                chunk = queue[i:i + batch_size].tolist()
                specs = [("feature", *ctx.features[j].tolist()) for j in chunk]
                # in position order, batches share the forward pass of their prefix; in influence order,
                # all share the whole prompt's
                M[len(visited):len(visited) + len(chunk)] = ctx.rows(specs, every, upto=None if budget == n_active else n)
                visited += chunk
                seen[chunk] = True
                bar.update(len(chunk))
                tell(n_logits + len(visited), n_logits + budget)
        bar.close()
        # nodes: the visited features (in (layer, pos, feature) order), errors, tokens, logits
        selected = torch.tensor(sorted(visited), dtype=torch.long)
        n_sel = selected.shape[0]
        row_nodes = torch.cat([torch.searchsorted(selected, torch.tensor(visited, dtype=torch.long)),
                               n_sel + L * n + n + torch.arange(n_logits)])
        col_node = torch.full((n_cols,), -1, dtype=torch.long)  # column -> source node (-1: an unvisited feature)
        col_node[selected] = torch.arange(n_sel)
        col_node[n_active:] = n_sel + torch.arange(L * n + n)
        targets, sources, weights = _sparse_edges(M, row_nodes, col_node)
        del M
        seconds = time.perf_counter() - t0
        graph = AttributionGraph(
            prompt=prompt if isinstance(prompt, str) else "".join(_strs(lm, ids[0])),
            token_ids=ids[0].clone(), token_strs=tuple(_strs(lm, ids[0])),
            features=ctx.features[selected].clone(), activations=ctx.activations[selected].clone(), n_layers=L,
            logit_ids=tok_ids, logit_strs=tuple(_strs(lm, tok_ids)), logit_probs=probs,
            targets=targets, sources=sources, weights=weights.float(),
            meta={"model": getattr(lm, "name", ""), "dictionary": type(d.module).__name__, "reads": d.reads[0].split(".", 2)[-1],
                  "n_active_features": int(n_active), "n_feature_nodes": int(n_sel), "n_logits": int(n_logits),
                  "first_position_nodes": bool(first_position_nodes),
                  "batch_size": batch_size, "seconds": round(seconds, 3)})
        return graph
    finally:
        if attached is None:
            lm.remove_dictionary(d)


def _sparse_edges(M: torch.Tensor, row_nodes: torch.Tensor, col_node: torch.Tensor,
                  rows_per_chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The nonzero entries of the dense rows ``M`` ``[n_rows, n_cols]`` as (targets, sources, weights), rows and
    columns mapped to nodes (columns mapped to -1 dropped), read a block of rows at a time so that no second
    dense copy is ever made."""
    t, s, w = [], [], []
    for a in range(0, M.shape[0], rows_per_chunk):
        block = M[a:a + rows_per_chunk]
        nz = block.nonzero()
        src = col_node[nz[:, 1]]
        keep = src >= 0
        nz = nz[keep]
        t.append(row_nodes[a + nz[:, 0]])
        s.append(src[keep])
        w.append(block[nz[:, 0], nz[:, 1]])
    if not t:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0)
    return torch.cat(t), torch.cat(s), torch.cat(w)


def _partial_influence(M: torch.Tensor, visited: list[int], feature_layers: torch.Tensor, probs: torch.Tensor,
                       n_layers: int, rows_per_chunk: int = 2048) -> torch.Tensor:
    """Influence ``[n_cols]`` of every source on the logits through the rows found so far (circuit-tracer's
    ranking of which features to attribute next): the total over all paths of the products of normalised
    absolute edge weights, starting from the logits weighted by their probabilities.

    ``M``: the dense rows, visited features' first (``len(visited)`` of them, in visit order) and the logits'
    last (``len(probs)``); ``feature_layers`` ``[n_active]`` each active feature's layer. A feature's edges
    come from lower layers only, so the graph is layered: going down from the top layer, each layer's
    features have all their influence before they pass it on, and one pass over the rows gives what
    iterating the normalised matrix to convergence gives (circuit-tracer iterates; that is one pass per
    level of depth)."""
    def spread(rows: torch.Tensor, weight: torch.Tensor, total: torch.Tensor) -> None:
        for a in range(0, rows.shape[0], rows_per_chunk):
            block = M[rows[a:a + rows_per_chunk]].abs_()                   # a copy of this block only
            w = weight[a:a + rows_per_chunk] / block.sum(1).clamp_min(1e-10)
            total.add_(w @ block)

    total = torch.zeros(M.shape[1])
    n_logits = probs.shape[0]
    spread(torch.arange(M.shape[0] - n_logits, M.shape[0]), probs.float(), total)
    if visited:
        vis = torch.tensor(visited, dtype=torch.long)
        layer_of_row = feature_layers[vis]
        for layer in range(n_layers - 1, -1, -1):
            rows = (layer_of_row == layer).nonzero()[:, 0]
            if rows.numel():
                spread(rows, total[vis[rows]].clone(), total)
    return total
