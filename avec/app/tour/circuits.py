"""`avec tour` sections for circuit tracing, on the per-layer transcoder set shipped for SmolLM2.

A two-hop factual prompt ("the capital of the state containing Dallas"): what the model answers, its
attribution graph through the local replacement model, the features that carry the intermediate answer
(the state), and interventions on them. Nothing here names a feature: the intermediate answer is the model's
own answer to the one-hop prompt, the features are the graph's most influential on that answer, and every
number shown is measured in the tour's run, beside a control (as many other active features at the same
cells turned off).
"""

from __future__ import annotations

import html
import time

SHIPPED = "smollm2-plt-mlp-batchtopk-512"
TWO_HOP = "Fact: the capital of the state containing Dallas is"
ONE_HOP = "Fact: Dallas is a city in the state of"   # its answer is the intermediate step (the state)
CAPITAL_OF = "Fact: the capital of {} is"            # its answer is what the two-hop prompt should say
N_EDITED = 5                                         # the intermediate features turned off / up together


def _shipped(ctx):
    from ...dictionaries.shipped import available
    from .context import shipped_on_tour_model

    return shipped_on_tour_model(ctx, SHIPPED) if SHIPPED in available() else None


def prompt_ids(lm, prompt: str, bos: bool):
    """``[1, n_pos]`` token ids of ``prompt``, after the tokenizer's BOS when ``bos`` (as the transcoders were
    trained: SmolLM2's tokenizer adds none, and without one the first word carries the attention sink's huge
    activation, which the training never saw)."""
    import torch

    ids = lm.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    if bos:
        ids = torch.cat([torch.tensor([[lm.tokenizer.bos_token_id]]), ids], 1)
    return ids.to(lm.device)


def next_tokens(lm, prompt: str, k: int = 5, bos: bool = False) -> list[tuple[int, str, float]]:
    """The model's top ``k`` next tokens after ``prompt``: (id, string, probability)."""
    import torch

    with torch.no_grad():
        p = torch.softmax(lm.run(prompt_ids(lm, prompt, bos)).logits[0, -1].float(), -1)
    v, i = p.topk(k)
    return [(int(t), lm.tokenizer.decode([int(t)]), float(x)) for t, x in zip(i, v)]


def two_hop(lm, tc, s, quick: bool = False, prompt: str = TWO_HOP, one_hop: str = ONE_HOP,
            capital_of: str = CAPITAL_OF, n_edited: int = N_EDITED, bos: bool = True) -> dict:
    """Write the two-hop study into section ``s``; returns the measured values (for tests and the record).
    ``bos``: every prompt starts with the tokenizer's BOS (as the shipped transcoders were trained)."""
    import pandas as pd
    import torch

    from ...circuits import attribute, graph_page, intervene
    from ...circuits.dashboards import graph_dashboards
    from ...dictionaries.heldout import heldout_contexts
    from ...dictionaries.features import logit_effects

    # 1. What the model says: the one-hop answer (the intermediate), the capital of that, the two-hop answer.
    hop1 = next_tokens(lm, one_hop, bos=bos)
    inter_id, inter = hop1[0][0], hop1[0][1]
    hop2 = next_tokens(lm, capital_of.format(inter.strip()), bos=bos)
    answer_id, answer = hop2[0][0], hop2[0][1]
    ids = prompt_ids(lm, prompt, bos)
    said = next_tokens(lm, prompt, 10, bos=bos)
    probs = {t: p for t, _, p in said}
    with torch.no_grad():
        p_all = torch.softmax(lm.run(ids).logits[0, -1].float(), -1)
    p_inter, p_answer = float(p_all[inter_id]), float(p_all[answer_id])
    s.text(("Every prompt starts with the BOS token, as the transcoders were trained. " if bos else "") +
           f"The model's own answers: {one_hop!r} -> {inter!r} (p {hop1[0][2]:.3f}); "
           f"{capital_of.format(inter.strip())!r} -> {answer!r} (p {hop2[0][2]:.3f}). So the two hops are "
           f"{inter!r} then {answer!r}. On the two-hop prompt {prompt!r} the model's top next tokens are:")
    s.table(pd.DataFrame([{"token": t, "p": p} for _, t, p in said]))
    rank = int((p_all > p_all[answer_id]).sum()) + 1
    s.text(f"P({answer!r}) = {p_answer:.4f} (rank {rank}) and P({inter!r}) = {p_inter:.4f}: "
           + ("the model completes the second hop." if said[0][0] == answer_id else
              f"this 135M-parameter model does not complete the second hop; its top answer is {said[0][1]!r}. "
              "The graph below shows what carries the answers it does give, the intermediate one among them."))

    # 2. The attribution graph.
    t0 = time.perf_counter()
    g = attribute(lm, tc, ids, max_feature_nodes=1500 if quick else None, progress=False)
    took = time.perf_counter() - t0
    pruned = g.prune(0.8, 0.98)
    rep, comp = g.scores()
    kinds = [g.describe(int(n))["kind"] for n in pruned.nodes.nonzero().flatten()]
    s.text(f"Attribution graph of the {g.n_pos}-token prompt through the local replacement model (attention patterns "
           f"and norm scales frozen, every MLP replaced by its transcoder's features plus an error node): "
           f"{g.meta.get('n_active_features', g.n_features):,} active features, {g.n_features:,} attributed"
           f"{' (the most influential, to keep the tour short)' if g.n_features < g.meta.get('n_active_features', 0) else ''}"
           f", {g.targets.numel():,} edges, in "
           f"{took:.0f} s. Pruned to 80% of the node influence and 98% of the edge influence: "
           f"{kinds.count('feature')} features, {kinds.count('error')} error nodes, {int(pruned.edges.sum()):,} edges. "
           f"Replacement score {rep:.3f}, completeness {comp:.3f} (circuit-tracer's definitions: the share of "
           "influence reaching the logits from tokens rather than error nodes, and the share of node inputs "
           "not from error nodes).")
    # each kept feature's dashboard (top held-out contexts, density, logit effects) opens on a click
    t1 = time.perf_counter()
    texts = heldout_contexts(lm.tokenizer, 16 if quick else 64, 32, prepend_bos=bos)
    pages = graph_dashboards(lm, tc, g, texts)
    s.text(f"Click a feature node for its dashboard ({len(pages)} dashboards from {texts.shape[0]} held-out contexts "
           f"of 32 tokens, {time.perf_counter() - t1:.0f} s).")
    s.raw(f'<iframe srcdoc="{html.escape(graph_page(g, dashboards=pages), quote=True)}" '
          'style="width:100%;height:900px;border:1px solid #ccc"></iframe>')

    # 3. The features carrying the intermediate answer: the graph's most influential on its logit.
    logit_ids = g.logit_ids.tolist()
    if inter_id not in logit_ids:
        s.text(f"{inter!r} is not among the graph's logit nodes ({', '.join(map(repr, g.logit_strs))}): the features "
               "of the intermediate step cannot be read off this graph.")
        return {"inter": inter, "answer": answer, "top": said[0][1], "graph": g}
    i_inter = logit_ids.index(inter_id)
    on_inter = g.influence(i_inter)[:g.n_features]
    on_top = g.influence(0)[:g.n_features]
    # specific to the intermediate answer: its influence beyond the mean on the graph's other logits (features
    # that carry every logit alike, e.g. those of the first positions, score ~0)
    others = [g.influence(i)[:g.n_features] for i in range(g.n_logits) if i != i_inter]
    specific = on_inter - (torch.stack(others).mean(0) if others else 0.0)
    order = specific.argsort(descending=True)[:n_edited].tolist()
    rows, edits = [], []
    for n in order:
        layer, pos, f = g.features[n].tolist()
        edits.append((layer, pos, f))
        rows.append({"layer": layer, "position": pos, "token": g.token_strs[pos], "feature": f,
                     "activation": float(g.activations[n]), f"influence on {inter!r}": float(on_inter[n]),
                     "beyond the other logits' mean": float(specific[n]),
                     f"influence on {g.logit_strs[0]!r}": float(on_top[n]),
                     "promotes (decoder through the unembedding)": " ".join(
                         repr(t) for _, t, _ in logit_effects(lm, tc, f, k=5, layer=layer).top)})
    s.text(f"The {n_edited} features with the most influence specific to the {inter!r} logit: their influence on it "
           "(direct and indirect, through the graph's normalised edges) beyond their mean influence on the graph's "
           "other logits (features that carry every answer alike rank low):")
    s.table(pd.DataFrame(rows))

    # 4. Interventions through the real model (transcoders spliced with their error terms; downstream
    # features respond): the features off, then at 3x their activation; a control turns off as many other
    # active features at the same (layer, position) cells, chosen at random with a fixed seed.
    off = intervene(lm, tc, ids, [(l, p, f, 0.0) for l, p, f in edits])
    up = intervene(lm, tc, ids, [(l, p, f, 3.0) for l, p, f in edits], scale=True)
    gen = torch.Generator().manual_seed(0)
    chosen = set(order)
    control = []
    for layer, pos, _ in edits:
        cell = [n for n in ((g.features[:, 0] == layer) & (g.features[:, 1] == pos)).nonzero().flatten().tolist()
                if n not in chosen]
        if cell:
            n = cell[int(torch.randint(len(cell), (1,), generator=gen))]
            chosen.add(n)
            control.append(tuple(g.features[n].tolist()) + (0.0,))
    ctrl = intervene(lm, tc, ids, control) if control else None
    top_id = said[0][0]

    def p(res, which, tok):
        return float(torch.softmax((res.clean_logits if which == "clean" else res.edited_logits).float(), -1)[tok])

    table = []
    for name, res in (("clean", off), (f"the {n_edited} features off", off), (f"the {n_edited} features at 3x", up),
                      (f"control: {len(control)} other features off", ctrl)):
        if res is None:
            continue
        which = "clean" if name == "clean" else "edited"
        table.append({"run": name, f"P({inter!r})": p(res, which, inter_id), f"P({answer!r})": p(res, which, answer_id),
                      f"P({said[0][1]!r})": p(res, which, top_id),
                      "KL from clean (nats)": 0.0 if name == "clean" else res.kl})
    s.table(pd.DataFrame(table))
    frame = pd.DataFrame(table).set_index("run")
    col = f"P({inter!r})"
    s.text(f"Turning the {n_edited} features off moved P({inter!r}) from {frame[col].iloc[0]:.4f} to "
           f"{frame[col].iloc[1]:.4f}; at 3x it became {frame[col].iloc[2]:.4f}"
           + (f"; the control (as many other features off at the same cells) gave {frame[col].iloc[3]:.4f}." if ctrl
              else ".") + f" Top next tokens with the features at 3x: "
           + ", ".join(f"{t!r} {q:.3f}" for t, q in up.top("edited")[:5]) + ".")
    return {"inter": inter, "answer": answer, "top": said[0][1], "graph": g, "table": table, "features": rows}


def two_hop_section(ctx, s) -> None:
    import pandas as pd

    got = _shipped(ctx)
    if got is None:
        s.text(f"The transcoder set {SHIPPED!r} is not shipped with this copy of avec, so this section has nothing to "
               "trace. `avec transcoder train --kind plt --layers all --reads mlp_in --prepend-bos ...` makes one; "
               "`avec graph PROMPT --transcoders FILE` then draws a graph with it.")
        return
    lm, tc, rec = got
    m = rec["metrics_held_out"]
    st = rec["structure"]
    s.text(f"Per-layer transcoders (one per MLP: {st['reads']} -> {st['writes']} of every one of SmolLM2's "
           f"{len(st['layers'])} layers), {st['width']} features each, trained as {st['arch_trained']} (k = {st['k']}) and "
           f"saved as {st['arch_saved']}; shipped with avec ({rec['size_bytes'] / 2**20:.0f} MiB, fp16). Trained on this "
           f"kind of machine in {rec['training']['seconds'] / 60:.0f} minutes by:")
    s.code(rec["command"])
    fvu = m["fvu"]
    s.table(pd.DataFrame([
        {"metric": "mean FVU over layers (held out)", "recorded at shipping": m["mean_fvu"]},
        {"metric": "FVU, best / worst layer", "recorded at shipping": f"{min(fvu):.3f} / {max(fvu):.3f}"},
        {"metric": "replacement model (every MLP replaced): CE loss recovered", "recorded at shipping": m.get("ce_loss_recovered")},
        {"metric": "replacement model: KL from the real model (nats / token)", "recorded at shipping": m.get("kl")},
        {"metric": "replacement model: top-1 next-token agreement", "recorded at shipping": m.get("top1_agreement")}]))
    out = two_hop(lm, tc, s, quick=ctx.quick, bos=bool(rec["data"].get("bos")))
    ctx.results["circuits:two_hop:plt"] = {**out, "metrics": {"mean FVU": m["mean_fvu"], **{
        k: m.get(k) for k in ("ce_loss_recovered", "kl", "top1_agreement")}}}


def _graph_row(name: str, out: dict) -> dict:
    g = out["graph"]
    rep, comp = g.scores()
    return {"transcoders": name, **out.get("metrics", {}), "replacement score": rep, "completeness score": comp,
            "attributed features": g.n_features, "top answer": out["top"]}


def train_small_clt(lm, width: int, k: int, tokens: int, batch_tokens: int = 2048, seed: int = 0, progress: bool = True):
    """A cross-layer transcoder over every layer of ``lm`` (``blocks.{l}.mlp_in`` -> the MLP outputs of layer l and
    every later one), BatchTopK (saved as JumpReLU), trained on ``tokens`` tokens of the default corpus's training
    documents (128-token contexts after a BOS). Returns (the CLT, the number of steps, seconds)."""
    import itertools

    import torch

    from ...dictionaries.clt import layer_points
    from ...dictionaries.heldout import split_documents
    from ...dictionaries.store import ActivationStore
    from ...dictionaries.train import TrainConfig, train
    from ...dictionaries.transcoder import TranscoderConfig, build

    torch.manual_seed(seed)
    points = layer_points(lm.n_layers, reads="mlp_in")
    store = ActivationStore(lm, points["reads"] + points["writes"],
                            split_documents("default", "train", 2, shuffle=True, seed=seed), context=128,
                            batch_tokens=batch_tokens, buffer_tokens=4 * batch_tokens, max_tokens=int(tokens * 1.05) + 128,
                            seed=seed, prepend_bos=True, progress=progress)
    clt = build(TranscoderConfig(arch="batchtopk", k=k, d_in=lm.d_model, d_sae=width, n_layers=lm.n_layers,
                                 cross_layer=True, model_id=lm.model_id, bos=store.rule.bos, **points))
    steps = tokens // batch_tokens
    t0 = time.perf_counter()
    train({"clt": clt}, lambda start: itertools.islice(iter(store), start, None),
          TrainConfig(steps=steps, lr=1e-3, warmup_steps=min(20, steps // 4), sparsity_warmup_steps=1,
                      dead_tokens=10 * batch_tokens, checkpoint_every=0), progress=progress)
    return clt.eval(), steps, time.perf_counter() - t0


def clt_section(ctx, s) -> None:
    """A small CLT trained in the tour (none ships: at widths that explain much its decoders are hundreds of MB),
    its held-out metrics, and the same two-hop study through it."""
    import pandas as pd

    from ...dictionaries.heldout import evaluate_transcoder_heldout
    from ...models.lm import LanguageModel

    lm = ctx.lm
    if not isinstance(lm, LanguageModel) or lm.n_layers < 2:
        s.text("A cross-layer transcoder needs a language model with several layers; this tour's model has none.")
        return
    width, k, tokens = (64, 8, 32_768) if ctx.quick else (128, 16, 196_608)
    clt, steps, seconds = train_small_clt(lm, width, k, tokens)
    n_dec = sum(w.numel() for w in clt.W_dec)
    s.text(f"No cross-layer transcoder ships with avec: each feature decodes to its own layer and every later one, so "
           f"at a width that explains much (256 per layer) SmolLM2's CLT has 73 M decoder parameters, 146 MB in fp16. "
           f"The tour trains a small one instead: {width} features per layer, BatchTopK k = {k}, reading each layer's "
           f"MLP input and writing its own and all later MLP outputs ({n_dec / 1e6:.1f} M decoder parameters), on "
           f"{tokens:,} tokens ({steps} steps) of the default corpus's training documents, in {seconds:.0f} s. "
           "The same with the CLI:")
    s.code(f"avec transcoder train --model {ctx.model_name} --kind clt --layers all --reads mlp_in --arch batchtopk "
           f"--width {width} --k {k} --lr 1e-3 --tokens {tokens} --batch-tokens 2048 --prepend-bos --out runs/clt")
    res, _ = evaluate_transcoder_heldout(lm, clt, eval_tokens=4096 if ctx.quick else 8192,
                                         eval_contexts=4 if ctx.quick else 8, prepend_bos=True)
    m = res.to_dict()
    fvu = m["fvu"]
    s.table(pd.DataFrame([
        {"metric": "mean FVU over layers (held out)", "value": sum(fvu) / len(fvu)},
        {"metric": "FVU, best / worst layer", "value": f"{min(fvu):.3f} / {max(fvu):.3f}"},
        {"metric": "mean L0 per layer", "value": sum(m["l0"]) / len(m["l0"])},
        {"metric": "replacement model: CE loss recovered", "value": m.get("ce_loss_recovered")},
        {"metric": "replacement model: KL from the real model (nats / token)", "value": m.get("kl")},
        {"metric": "replacement model: top-1 next-token agreement", "value": m.get("top1_agreement")}]))
    s.text("A CLT trained for minutes explains little: the error nodes carry the rest, so the graph below is still "
           "exact. The two-hop study of the section above, through this CLT:")
    out = two_hop(lm, clt, s, quick=True, bos=True)
    mine = {**out, "metrics": {"mean FVU": sum(fvu) / len(fvu), **{k: m.get(k) for k in ("ce_loss_recovered", "kl",
                                                                                         "top1_agreement")}}}
    rows = [_graph_row(f"this CLT ({width} per layer, trained here)", mine)]
    plt = ctx.results.get("circuits:two_hop:plt")
    if plt is not None:  # the section above ran in this tour: its graph, side by side
        rows.insert(0, _graph_row("the shipped per-layer set (512 per layer)", plt))
    s.text("The two graphs of the two-hop prompt, side by side (metrics on held-out text; scores of each whole graph):"
           if plt is not None else "This graph's scores (the shipped per-layer set's section did not run in this tour):")
    s.table(pd.DataFrame(rows))


SECTIONS = [("Circuit tracing: a two-hop prompt's attribution graph and its intermediate features", two_hop_section),
            ("Circuit tracing with a cross-layer transcoder trained in the tour", clt_section)]
