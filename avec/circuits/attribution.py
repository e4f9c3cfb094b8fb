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

    def __init__(self, lm: Any, d: Any, ids: torch.Tensor):
        self.lm, self.d, self.ids = lm, d, ids
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
        tok_edges = torch.zeros(B, n)
        tok_edges[:, :upto] = (grads["embed"][:, 0].float() * self.embed[:upto]).sum(-1)
        return torch.cat([feat_edges, err_edges.reshape(B, -1), tok_edges], 1)


def _strs(lm: Any, ids: torch.Tensor) -> list[str]:
    """Each token id as text (``<id>`` for a model without a tokenizer)."""
    tok = getattr(lm, "tokenizer", None)
    return [tok.decode([int(i)]) if tok is not None else f"<{int(i)}>" for i in ids.tolist()]


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
              progress: bool | Callable[[int, int], Any] = True) -> AttributionGraph:
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
    ids = _tokens(lm, prompt)
    t0 = time.perf_counter()
    attached = transcoders if isinstance(transcoders, AttachedDictionary) else None
    d = attached or lm.add_dictionary(transcoders)
    try:
        _check_replacement(lm, d)
        ctx = _Context(lm, d, ids)
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
        # rows over all active features first (columns of unvisited features are dropped at the end)
        logit_rows = torch.cat([ctx.rows([("logit", v) for v in dirs[i:i + batch_size]], every)
                                for i in range(0, n_logits, batch_size)])
        bar.update(n_logits)
        tell(n_logits, n_logits + budget)
        visited: list[int] = []
        feat_rows: list[torch.Tensor] = []
        seen = torch.zeros(n_active, dtype=torch.bool)
        while len(visited) < budget:
            if budget == n_active:
                queue = by_place[~seen[by_place]]
            else:  # the most influential unvisited features by the edges found so far
                influence = _partial_influence(logit_rows, feat_rows, visited, probs, n_active)
                order = influence[:n_active].argsort(descending=True)
                queue = order[~seen[order]][:min(4 * batch_size, budget - len(visited))]
            for i in range(0, len(queue), batch_size):
                chunk = queue[i:i + batch_size].tolist()
                specs = [("feature", *ctx.features[j].tolist()) for j in chunk]
                # in position order, batches share the forward pass of their prefix; in influence order,
                # all share the whole prompt's
                feat_rows.append(ctx.rows(specs, every, upto=None if budget == n_active else n))
                visited += chunk
                seen[chunk] = True
                bar.update(len(chunk))
                tell(n_logits + len(visited), n_logits + budget)
        bar.close()
        # nodes: the visited features (in (layer, pos, feature) order), errors, tokens, logits
        selected = torch.tensor(sorted(visited), dtype=torch.long)
        n_sel = selected.shape[0]
        rows = torch.cat([*feat_rows, logit_rows]) if feat_rows else logit_rows
        row_nodes = torch.cat([torch.searchsorted(selected, torch.tensor(visited, dtype=torch.long)),
                               n_sel + L * n + n + torch.arange(n_logits)])
        keep_cols = torch.cat([selected, n_active + torch.arange(L * n + n)])
        rows = rows[:, keep_cols]
        nz = rows.nonzero()
        targets = row_nodes[nz[:, 0]]
        sources = nz[:, 1]
        weights = rows[nz[:, 0], nz[:, 1]]
        seconds = time.perf_counter() - t0
        graph = AttributionGraph(
            prompt=prompt if isinstance(prompt, str) else "".join(_strs(lm, ids[0])),
            token_ids=ids[0].clone(), token_strs=tuple(_strs(lm, ids[0])),
            features=ctx.features[selected].clone(), activations=ctx.activations[selected].clone(), n_layers=L,
            logit_ids=tok_ids, logit_strs=tuple(_strs(lm, tok_ids)), logit_probs=probs,
            targets=targets, sources=sources, weights=weights.float(),
            meta={"model": getattr(lm, "name", ""), "dictionary": type(d.module).__name__, "reads": d.reads[0].split(".", 2)[-1],
                  "n_active_features": int(n_active), "n_feature_nodes": int(n_sel), "n_logits": int(n_logits),
                  "batch_size": batch_size, "seconds": round(seconds, 3)})
        return graph
    finally:
        if attached is None:
            lm.remove_dictionary(d)


def _partial_influence(logit_rows: torch.Tensor, feat_rows: list[torch.Tensor], visited: list[int],
                       probs: torch.Tensor, n_active: int) -> torch.Tensor:
    """Influence of every source on the logits through the rows found so far (circuit-tracer's ranking of
    which features to attribute next). Sources are indexed as in ``_Context.rows`` with every feature."""
    rows = torch.cat([logit_rows, *feat_rows]).abs()
    rows = rows / rows.sum(1, keepdim=True).clamp_min(1e-10)
    n_src = rows.shape[1]
    # row r belongs to node: logits -> themselves (weights = probs); feature rows -> that feature's column
    row_of_source = torch.full((n_src,), -1, dtype=torch.long)
    k = logit_rows.shape[0]
    if visited:
        row_of_source[torch.tensor(visited)] = torch.arange(k, k + len(visited))
    cur = torch.zeros(rows.shape[0])
    cur[:k] = probs.float()
    total = torch.zeros(n_src)
    for _ in range(n_src + 1):
        nxt = cur @ rows                                   # [n_src] influence arriving at each source
        if not bool(nxt.any()):
            break
        total += nxt
        cur = torch.zeros(rows.shape[0])
        has = row_of_source >= 0
        cur[row_of_source[has]] = nxt[has]
    return total
