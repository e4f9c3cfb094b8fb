"""`avec tour` sections for sparse autoencoders, on the SAE shipped for SmolLM2 (layer 12 residual).

Every number shown is measured in the tour's run: the held-out metrics on held-out documents, the
features found by filtering prompts (whatever they turn out to be), their effects when steered or
ablated. The recorded training metrics are shown beside them, labelled as recorded.
"""

from __future__ import annotations

import html
import time

from ..render import view

SHIPPED = "smollm2-blocks.12.resid_post-topk-4608"

# A concept the held-out corpus (State of the Union addresses, the King James Bible) has plenty of.
POSITIVE = ["The army marched all night and attacked the fort at dawn.",
            "Our soldiers fought bravely in the war against the invaders.",
            "The enemy fleet was destroyed in the battle off the coast.",
            "The general ordered his troops to defend the city walls."]
NEGATIVE = ["The farmers harvested the wheat before the autumn rains.",
            "She read a long book by the fire in the evening.",
            "The committee approved the new budget for the schools.",
            "Children played in the park after their lessons ended."]
NEUTRAL = ["In the morning I walked down to the", "The most important thing about the new law is",
           "He opened the letter and"]


def _shipped(ctx):
    from .context import shipped_on_tour_model

    return shipped_on_tour_model(ctx, SHIPPED)


def sae_section(ctx, s) -> None:
    import pandas as pd
    import torch

    from ...dictionaries.heldout import evaluate_heldout

    lm, sae, rec = _shipped(ctx)
    at = rec["hook"]
    s.text(f"A TopK SAE of width {sae.d_sae} (k = {sae.cfg.k}) on {at} of SmolLM2, shipped with avec as fp16 "
           f"({rec['d_in']} -> {rec['d_sae']}). Why this layer: {rec['why_layer_12']}. It was trained on this kind "
           f"of machine ({rec['training']['machine']}) in {rec['training']['seconds'] / 60:.0f} minutes by:")
    s.code(rec["command"])
    prompts = ["The Eiffel Tower is in the city of", *NEUTRAL]
    clean = lm.run(prompts).logits
    with lm.dictionary(sae, at=at) as d:
        spliced = lm.run(prompts).logits  # splice="error": reconstruction + error term
        run = lm.run(prompts, cache=[d.point("latents"), d.point("error")])
    with lm.dictionary(sae, at=at, splice="recon"):
        recon_only = lm.run(prompts).logits
    lat = run.cache[d.point("latents")][run.attention_mask.bool()]
    logp = [torch.log_softmax(x.float(), -1) for x in (clean, recon_only)]
    kl = (logp[0].exp() * (logp[0] - logp[1])).sum(-1)[run.attention_mask.bool()]  # per real token
    s.text(f"Spliced in with its error term, the model's logits are unchanged: max |difference| = "
           f"{(spliced - clean).abs().max().item():.1e} over {len(prompts)} prompts. The SAE's latents and error are "
           f"hook points of their own ({d.point('latents')}, {d.point('error')}): cached, patched, ablated and "
           f"steered by name. Without the error term (the model runs on the reconstruction) the next-token "
           f"distribution moves by KL {kl.mean().item():.3f} nats per token on these prompts (median "
           f"{kl.median().item():.3f}). Each token has {(lat > 0).sum(-1).float().mean().item():.1f} active latents (TopK).")
    t = time.perf_counter()
    quick = ctx.quick
    res, data = evaluate_heldout(lm, sae, at, "default", 2, context=128, eval_tokens=4096 if quick else 16384,
                                 eval_contexts=4 if quick else 8)
    took = time.perf_counter() - t
    recorded = rec.get("metrics_held_out", {})
    rows = []
    for key, label in (("fvu", "fraction of variance unexplained"), ("l0", "L0 (active latents per token)"),
                       ("dead_fraction", "dead fraction"), ("dense_fraction", "dense fraction (> 10% of tokens)"),
                       ("cosine", "cosine(x, x_hat)"), ("ce_clean", "CE loss, clean"), ("ce_spliced", "CE loss, SAE spliced"),
                       ("ce_zero_ablation", "CE loss, layer zero-ablated"), ("ce_loss_recovered", "CE loss recovered"),
                       ("kl", "KL(clean || spliced)")):
        rows.append({"metric": label, "measured now": getattr(res, key, None), "recorded at shipping": recorded.get(key)})
    s.text(f"Measured now on held-out documents (never trained on; {data['split']}): reconstruction over "
           f"{res.n_tokens} tokens, CE loss over {data['ce_tokens']} tokens ({took:.0f} s). Recorded at shipping: "
           f"{recorded.get('n_tokens', '?')} reconstruction tokens. The special tokens the store drops keep the model's "
           "own value in the spliced and zero-ablated runs.")
    s.table(pd.DataFrame(rows))
    s.figure(view(res).plot())


def _embed(page: str, height: int = 520) -> str:
    """A dashboard page shown inside the report (an iframe with the page as its source document)."""
    return f'<iframe srcdoc="{html.escape(page, quote=True)}" style="width:100%;height:{height}px;border:1px solid #ccc"></iframe>'


def features_section(ctx, s) -> None:
    import pandas as pd

    from ...dictionaries.dashboard import feature_page
    from ...dictionaries.heldout import heldout_contexts
    from ...dictionaries.features import filter_features, logit_effects, top_examples

    lm, sae, rec = _shipped(ctx)
    at = rec["hook"]
    found = filter_features(lm, sae, at, POSITIVE, NEGATIVE)
    s.text(f"Multi-prompt filtering: the latents active (> 0) somewhere in each of {len(POSITIVE)} sentences about "
           f"war and in none of {len(NEGATIVE)} sentences of the same shape about other things. "
           f"{len(found.features)} of {sae.d_sae} pass.")
    s.table(pd.DataFrame({"positive prompts": POSITIVE, "negative prompts": NEGATIVE}))
    if not found.features:
        s.text("No latent passes this filter on this model, so there are no features to read here.")
        return
    ids = list(found.features[:6])
    texts = heldout_contexts(lm.tokenizer, 48 if ctx.quick else 96)
    examples = top_examples(lm, sae, at, texts, ids, k=5)
    effects = {f: logit_effects(lm, sae, f, k=8) for f in ids}
    rows = []
    for f in ids:
        fe = examples[f]
        top = fe.examples[0] if fe.examples else None
        rows.append({"feature": f, "min over positives": float(found.positive_max[:, f].min()),
                     f"density on {texts.shape[0]} held-out contexts": fe.density,
                     "top held-out example": ("".join(top.tokens[:top.center]) + "[[" + top.tokens[top.center] + "]]"
                                              + "".join(top.tokens[top.center + 1:])) if top else "(never active)",
                     "top logit effects": ", ".join(repr(t) for _, t, _ in effects[f].top[:5])})
    s.text(f"The first {len(ids)} (by their smallest max activation over the positives), read on "
           f"{texts.shape[0]} held-out contexts of 64 tokens: the token in [[ ]] is where the feature peaks; logit "
           "effects are each decoder direction read through the final norm's gain and the unembedding.")
    s.table(pd.DataFrame(rows))
    s.figure(view(examples).plot())
    s.text(f"The dashboard page of feature {ids[0]} (`avec sae dashboard` writes one per feature and an index):")
    s.raw(_embed(feature_page(examples[ids[0]], effects[ids[0]], at)))


def steering_section(ctx, s) -> None:
    import pandas as pd
    import torch

    from ...core.interventions import Zero
    from ...dictionaries.features import ablate, filter_features, steer

    lm, sae, rec = _shipped(ctx)
    at = rec["hook"]
    found = filter_features(lm, sae, at, POSITIVE, NEGATIVE)
    if not found.features:
        s.text("No war feature passed the filter (previous section), so there is nothing to steer with here.")
        return
    f = found.features[0]
    peak = float(found.positive_max[:, f].max())
    with lm.dictionary(sae, at=at) as d:
        prefix = d.prefix
        # Ablating with the error term kept: only what flows through this latent changes.
        upstream = f"blocks.{int(at.split('.')[1])}.mlp_out"  # the last point before the SAE's
        runs = {name: lm.run(POSITIVE, cache=[upstream], interventions=iv)
                for name, iv in (("clean", []), ("ablated", [ablate(prefix, f)]))}
        before = (runs["ablated"].cache[upstream] - runs["clean"].cache[upstream]).abs().max().item()
        logp = {k: torch.log_softmax(r.last_logits().float(), -1) for k, r in runs.items()}
        kl = (logp["clean"].exp() * (logp["clean"] - logp["ablated"])).sum(-1)
        coeffs = [0.0, 4 * peak, 8 * peak]
        gens = {c: lm.generate(NEUTRAL, max_new_tokens=16, interventions=[steer(prefix, f, c)] if c else [])
                for c in coeffs}
        zero_latents = lm.generate(NEUTRAL[:1], max_new_tokens=16, interventions=[Zero(d.point("latents"))])
    s.text(f"Feature {f} (the first war feature of the previous section; its largest activation on the positive "
           f"prompts is {peak:.2f}). Ablating it at every position, the error term kept, changes nothing before "
           f"{at} (max |difference| at {upstream}: {before:.1e}) and moves the next-token distribution of the "
           f"positive prompts by KL {kl.mean().item():.3f} nats on average (per prompt: "
           f"{', '.join(f'{k:.3f}' for k in kl.tolist())}).")
    s.text(f"Steering: adding c units of feature {f} at every position (c times its decoder row, through the "
           "latents, with the error term kept), greedy completions:")
    s.table(pd.DataFrame({"prompt": NEUTRAL, **{f"c = {c:.1f}": gens[c] for c in coeffs}}))
    s.text(f"For contrast, every latent zeroed (the model keeps only the SAE's decoder bias and error term) on "
           f"{NEUTRAL[0]!r}: {zero_latents[0]!r}.")


def probe_section(ctx, s) -> None:
    import pandas as pd

    from ...data.labelled import load
    from ...probes import fit_probes, probe
    from ...dictionaries.features import feature_activations

    lm, sae, rec = _shipped(ctx)
    at = rec["hook"]
    layer = int(at.split(".")[1])
    data = load("sentiment").sample(80 if ctx.quick else 160, seed=0)
    acts = feature_activations(lm, sae, at, list(data.texts), position=-1)
    over_features = fit_probes(acts, data, seed=0)
    over_resid = probe(lm, data, [layer], seed=0)
    active = (acts > 0).float().sum(1).mean().item()
    s.text(f"A linear probe for sentiment ({len(data)} labelled sentences, 75% train / 25% test, same split) over the "
           f"SAE's {sae.d_sae} latents at the last token (about {active:.0f} active per sentence), beside the same probe "
           f"over the {lm.d_model}-wide residual at layer {layer}.")
    s.table(pd.DataFrame([
        {"inputs": f"SAE latents ({sae.d_sae})", "train accuracy": float(over_features.train_score[0]),
         "test accuracy": float(over_features.test_score[0]), "mean-difference baseline": float(over_features.baseline_score[0]),
         "chance": over_features.chance},
        {"inputs": f"residual {at} ({lm.d_model})", "train accuracy": float(over_resid.train_score[0]),
         "test accuracy": float(over_resid.test_score[0]), "mean-difference baseline": float(over_resid.baseline_score[0]),
         "chance": over_resid.chance}]))


SECTIONS = [("Sparse autoencoder: the shipped SmolLM2 SAE, spliced and measured", sae_section),
            ("SAE features: filtering prompts, top examples, logit effects, dashboards", features_section),
            ("SAE features: ablation and steering with the error term kept", steering_section),
            ("SAE features: a linear probe over latents", probe_section)]
