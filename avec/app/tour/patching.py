"""`avec tour` sections for patching (wired into ``avec.app.tour.SECTIONS`` by the tour)."""

from __future__ import annotations

from .context import on_model

GEMMA = "gemma3-270m"

COUNTRY = ("The capital of France is", "The capital of Germany is", " Paris", " Berlin")
IOI = ("When Mary and John went to the store, John gave a drink to",
       "When Mary and John went to the store, Mary gave a drink to", " Mary", " John")


def country_section(ctx, s) -> None:
    from ...patching.activation import activation_patching
    from ...patching.attribution import attribution_patching

    lm = ctx.lm
    clean, corrupt, answer, wrong = COUNTRY
    kw = dict(answer=answer, wrong=wrong)
    res = activation_patching(lm, clean, corrupt, "resid_pre", **kw)
    s.text(f"Clean {clean!r} vs corrupted {corrupt!r}; metric logit({answer!r}) - logit({wrong!r}) "
           f"({res.clean_metric:.2f} clean, {res.corrupted_metric:.2f} corrupted), normalised to 1 = clean, "
           f"0 = corrupted. Each cell copies the clean residual at one (layer, position) into the corrupted run; "
           f"all {res.values.numel()} patches ran as batch rows in {res.seconds:.1f} s.")
    s.figure(res.plot())
    est = attribution_patching(lm, clean, corrupt, "resid_pre", **kw)
    s.text(f"Attribution patching (gradient x difference) of the same grid in {est.seconds:.1f} s; correlation "
           f"with real patching {est.correlation(res):.3f}.")
    s.figure(est.plot())
    for point in ("attn_out", "mlp_out"):  # whole layers (all positions): one patch per layer
        r = activation_patching(lm, clean, corrupt, point, "layer", **kw)
        s.figure(r.plot())


def ioi_section(ctx, s) -> None:
    from ...patching.activation import activation_patching
    from ...patching.attribution import attribution_patching

    lm = ctx.lm
    clean, corrupt, answer, wrong = IOI
    kw = dict(answer=answer, wrong=wrong)
    res = activation_patching(lm, clean, corrupt, "attn.z", "head", **kw)
    est = attribution_patching(lm, clean, corrupt, "attn.z", "head", **kw)
    s.text(f"Indirect object: {clean!r} (answer {answer!r}) vs {corrupt!r}; metric logit difference "
           f"({res.clean_metric:.2f} clean, {res.corrupted_metric:.2f} corrupted). Each head's output (attn.z, all "
           f"positions) patched from clean into corrupted, {res.values.numel()} heads in {res.seconds:.1f} s; "
           f"attribution patching agrees with correlation {est.correlation(res):.3f}.")
    s.figure(res.plot())
    top = res.to_frame().assign(absolute=lambda f: f["score"].abs()).nlargest(10, "absolute").drop(columns="absolute")
    s.table(top)
    est_resid = attribution_patching(lm, clean, corrupt, "resid_pre", **kw)
    s.text(f"Attribution-patching estimate of the residual grid (layer x position), {est_resid.seconds:.1f} s:")
    s.figure(est_resid.plot())


def ablation_section(ctx, s) -> None:
    import pandas as pd

    from ...patching.ablation import directional_ablation, orthogonalize

    lm = ctx.lm
    prompt = "The capital of France is"
    d = lm.W_U[:, lm.token_id(" Paris")].detach().float()  # the unembedding direction of " Paris"
    run = lm.run(prompt)
    hooked = lm.run(prompt, interventions=directional_ablation(lm, d))
    with orthogonalize(lm, d):
        edited = lm.run(prompt)
    top = lambda r: [lm.tokenizer.decode([i]) for i in r.last_logits()[0].topk(5).indices.tolist()]  # noqa: E731
    s.text("Directional ablation of the ' Paris' unembedding direction, by hooks (projected out of every residual "
           "point) and by weight orthogonalization (embedding, every o_proj and down_proj edited, then restored). "
           f"Max logit difference between the two: {(hooked.logits - edited.logits).abs().max().item():.2e}.")
    s.table(pd.DataFrame({"run": ["original", "hooks", "orthogonalized weights"],
                          "top-5 next tokens": [top(run), top(hooked), top(edited)]}))


SECTIONS = [
    ("Activation patching: France vs Germany", country_section),
    ("Activation patching: indirect object identification", ioi_section),
    ("Directional ablation and weight orthogonalization", ablation_section),
    ("Gemma 3 270M: activation patching, France vs Germany", on_model(GEMMA, country_section)),
    ("Gemma 3 270M: activation patching, indirect object identification", on_model(GEMMA, ioi_section)),
]
