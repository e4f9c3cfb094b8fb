"""`avec tour` sections for the lenses (wired into ``avec.app.tour.SECTIONS`` by the tour)."""

from __future__ import annotations

from .context import on_model

GEMMA = "gemma3-270m"

FACT = "The Eiffel Tower is in the city of"


def logit_lens_section(ctx, s) -> None:
    from ...lens.logit_lens import logit_lens

    lm = ctx.lm
    ll = logit_lens(lm, FACT, tokens=[" Paris"])
    s.text(f"Logit lens on {FACT!r}: each block's input residual (and the final residual) read through the "
           "model's own final norm and unembedding. Colour: probability of ' Paris'; text: the lens's top-1 token. "
           "The last row is the model's output exactly.")
    s.figure(ll.plot())
    s.figure(ll.plot_kl())
    summary = ll.summary()
    s.table(summary[summary["position"] == summary["position"].max()])


def dla_section(ctx, s) -> None:
    from ...lens.dla import dla

    lm = ctx.lm
    res = dla(lm, FACT, target=" Paris", against=" Rome", heads=True, neurons=True)
    s.text(f"Direct logit attribution of logit(' Paris') - logit(' Rome') = {res.logit.item():.3f} at the last token of "
           f"{FACT!r}, with the final norm's scale frozen at its value in the run. The contributions sum to "
           f"{res.total.item():.3f} (difference {abs(res.total - res.logit).item():.1e}).")
    s.figure(res.plot())
    s.text("Largest heads (attn.z through each head's slice of o_proj) and neurons (mlp.post through down_proj):")
    s.table(res.top_heads(10))
    s.table(res.top_neurons(10))


def norm_growth_section(ctx, s) -> None:
    from ...lens.norms import growth_rate, residual_norms, weight_norms

    lm = ctx.lm
    prompts = ["The Eiffel Tower is in the city of Paris, which is the capital of France.",
               "I hate you because you never listen to me.",
               "The mitochondria is the powerhouse of the cell.",
               "import numpy as np\nx = np.zeros(10)"]
    norms = residual_norms(lm, prompts)
    wn = weight_norms(lm)
    s.text(f"Residual norm grows by a factor {growth_rate(norms):.3f} per layer on average (geometric mean, "
           f"first token excluded). Beside it, the Frobenius norms of what each layer can write: each head's "
           "W_OV = W_V W_O and each MLP's W_out.")
    s.figure(wn.plot())
    frame = wn.to_frame()
    frame["resid_growth"] = norms.growth.numpy()
    s.table(frame)


def tuned_lens_section(ctx, s) -> None:
    import time

    from ...data import reference_texts
    from ...lens.tuned_lens import compare_lenses, train_tuned_lens

    lm = ctx.lm
    t = time.perf_counter()
    lens = train_tuned_lens(lm, reference_texts("train"), steps=4, lr=1e-4, batch_tokens=32, progress=False)
    t_train = time.perf_counter() - t
    held_out = reference_texts("test")
    cmp = compare_lenses(lm, lens, held_out, max_tokens=128)
    s.text(f"Tuned lens: one affine translator per layer, fitted on {lens.meta['train_tokens']} tokens of the bundled "
           "reference corpus (avec.data.reference_texts('train'); closed-form ridge start, then 4 Adam steps on the "
           f"KL to the final distribution; {t_train:.0f} s) and scored on 128 tokens of the 9 held-out paragraphs. "
           "Lower KL = the layer's prediction is closer to the model's final one. The paper trains on far more text; "
           "this is the small CPU version, judged on held-out text only. (Measured once: 8 KL steps after the ridge "
           "start lowered the held-out KL by a further 3-10% per layer.)")
    s.figure(cmp.plot())
    s.table(cmp.to_frame())


SECTIONS = [
    ("Logit lens on a factual prompt", logit_lens_section),
    ("Tuned lens vs logit lens on held-out text", tuned_lens_section),
    ("Direct logit attribution of the answer", dla_section),
    ("Norm growth: residual and weight norms", norm_growth_section),
    ("Gemma 3 270M: logit lens on a factual prompt", on_model(GEMMA, logit_lens_section)),
    ("Gemma 3 270M: direct logit attribution of the answer", on_model(GEMMA, dla_section)),
    ("Gemma 3 270M: norm growth", on_model(GEMMA, norm_growth_section)),
]
