"""Tour sections reproducing the steering experiments on the bundled model (``SECTIONS``).

Each is ``fn(ctx, s)`` and reports what it measures, whatever that is. Greedy decoding unless said;
sample sizes are small (CPU, < 1 minute each) and say so.
"""

from __future__ import annotations

import time
from typing import Any

import torch

NEUTRAL = ["I went up to my friend and said", "Yesterday, my neighbour told me that",
           "The most important thing in life is", "When I woke up this morning,"]


def _grid(lm, prompts, vector, coeffs, max_new_tokens, **kw) -> dict[float, list[str]]:
    """Completions of every prompt at every coefficient in ONE generate call (per-row coefficients)."""
    rows = [p for _ in coeffs for p in prompts]
    per_row = torch.tensor([float(c) for c in coeffs for _ in prompts])
    out = lm.generate(rows, max_new_tokens, interventions=vector.as_interventions(coeff=per_row), **kw)
    n = len(prompts)
    return {c: out[i * n:(i + 1) * n] for i, c in enumerate(coeffs)}


def _sent(texts):
    from .evaluate import sentiment

    return sum(sentiment(texts)) / len(texts)


def love_hate(ctx: Any, s: Any) -> None:
    import pandas as pd

    from .contrast import contrast
    from .generation import side_by_side

    lm = ctx.lm
    t0 = time.time()
    prompts = ["I hate you because", "You are the worst person and", "My boss yelled at me, so I"]
    layers = [2, 6, 12] if ctx.quick else [2, 6, 12, 18]
    coeffs = [5.0, 10.0] if ctx.quick else [2.0, 5.0, 10.0]
    base = lm.generate(prompts, 20)
    rows = [{"layer": "-", "coeff": 0.0, "mean VADER compound": _sent(base)}]
    for layer in layers:
        v = contrast(lm, "Love", "Hate", at=layer)
        for c, out in _grid(lm, prompts, v, coeffs, 20).items():
            rows.append({"layer": layer, "coeff": c, "mean VADER compound": _sent(out)})
    v6 = contrast(lm, "Love", "Hate", at=6)
    s.text(f"ActAdd Love - Hate ({v6.recipe['padding']}), added at the prompt's first {v6['blocks.6.resid_pre'].shape[0]} "
           "positions of resid_pre; all coefficients of a layer run as one batched generate call (one coefficient per "
           "row). "
           f"Sentiment = mean VADER compound of greedy 20-token completions of {len(prompts)} "
           f"negative prompts (-1 = negative, +1 = positive). Small sample: read the direction, not the decimals.")
    s.table(pd.DataFrame(rows))
    s.table(side_by_side(lm, prompts, 5 * v6, 25).to_frame())
    s.text(f"({time.time() - t0:.0f} s)")


WEDDING_PAIRS = [("I love weddings", "I love cooking"), ("We talked about the wedding", "We talked about the weather"),
                 ("The bride and groom", "The cat and dog"), ("She planned her wedding", "She planned her holiday"),
                 ("a beautiful wedding dress", "a beautiful summer dress")]


def wedding(ctx: Any, s: Any) -> None:
    import pandas as pd

    from .caa import mean_difference
    from .contrast import contrast
    from .evaluate import effectiveness, perplexity_ratio, wedding_rate

    lm = ctx.lm
    t0 = time.time()
    prompts = NEUTRAL[:3] if ctx.quick else NEUTRAL
    plist = [p for p in prompts for _ in range(2)]
    sampling = dict(do_sample=True, temperature=1.0, top_p=0.3, seed=0)
    rows = [{"vector": "none", "layer": "-", "coeff": 0.0, **wedding_rate(lm.generate(plist, 24, **sampling))}]
    plus, minus = "I talk about weddings constantly", "I do not talk about weddings constantly"
    for layer in ([6] if ctx.quick else [6, 12]):
        v = contrast(lm, plus, minus, at=layer)
        for c, out in _grid(lm, plist, v, [4.0, 8.0], 24, **sampling).items():
            rows.append({"vector": "ActAdd (front)", "layer": layer, "coeff": c, **wedding_rate(out)})
    best = (None, -1.0)
    for layer in ([8] if ctx.quick else [8, 12]):
        v = mean_difference(lm, WEDDING_PAIRS, at=layer, positions="all")
        for c, out in _grid(lm, plist, v, [0.5, 1.0, 1.5], 24, **sampling).items():
            r = wedding_rate(out)
            rows.append({"vector": "mean diff (all positions)", "layer": layer, "coeff": c, **r})
            if r["texts with a wedding word"] > best[1]:
                best = ((layer, c, v), r["texts with a wedding word"])
    s.text(f"Two wedding vectors. ActAdd {plus!r} - {minus!r} ({contrast(lm, plus, minus, at=6).recipe['padding']}), "
           f"added at the prompt's front positions as in the paper; and a mean difference over {len(WEDDING_PAIRS)} "
           "hand-written pairs (wedding vs other topic, read at the last token), added at every position. "
           f"{len(plist)} sampled completions per cell (top-p 0.3, T 1, 24 tokens, seed 0) of neutral prompts; fraction of "
           "completions with a wedding word (ActAdd list) and wedding words / all words. The original found > 90% vs ~2% "
           "at the best layer of GPT-2-XL. On SmolLM2-135M the front-position ActAdd vector did not produce wedding words "
           "in our trials (coefficients 4-40, layers 4-12); the all-positions vector works only in a narrow coefficient "
           "window (about 1x its norm; 2x already degrades text into repetition).")
    s.table(pd.DataFrame(rows))
    if best[0] is not None:
        layer, c, v = best[0]
        refs = ["The committee met on Tuesday to discuss the budget for the next school year.",
                "Photosynthesis converts light energy into chemical energy stored in glucose.",
                "He opened the window, looked at the rain, and decided to stay at home."]
        eff = effectiveness(lm, refs, c * v, ["wedding", "weddings", "bride", "groom", "marry", "married", "marriage"])
        ppl = perplexity_ratio(lm, refs, c * v, mask_injected=False)
        s.text(f"Mean-difference vector at layer {layer}, coeff {c:g}: effectiveness (mean change of log P(wedding tokens) "
               f"over every position of {len(refs)} unrelated sentences) {eff.effectiveness:+.2f} nats; disruption (KL on "
               f"the other tokens) {eff.disruption:.3f} nats; perplexity ratio {ppl.ratio:.3f} (not masked: this vector "
               "is injected at every position).")
    s.text(f"({time.time() - t0:.0f} s)")


def french(ctx: Any, s: Any) -> None:
    import pandas as pd

    from .contrast import contrast
    from .evaluate import language_rate

    lm = ctx.lm
    t0 = time.time()
    prompts = ["I want to tell you about my day.", "The best thing about summer is", "My favourite book is",
               "Here is what I think about the news:"]
    plus, minus = "Je parle en français.", "I speak in English."
    base = lm.generate(prompts, 24)
    rows = [{"layer": "-", "coeff": 0.0, "fraction French (langdetect)": language_rate(base)}]
    example = None
    for layer in ([4, 10] if ctx.quick else [2, 6, 10, 16]):
        v = contrast(lm, plus, minus, at=layer)
        for c, out in _grid(lm, prompts, v, [4.0, 8.0], 24).items():
            rows.append({"layer": layer, "coeff": c, "fraction French (langdetect)": language_rate(out)})
            if example is None or rows[-1]["fraction French (langdetect)"] > example[0]:
                example = (rows[-1]["fraction French (langdetect)"], layer, c, out)
    s.text(f"ActAdd {plus!r} - {minus!r} ({contrast(lm, plus, minus, at=6).recipe['padding']}); greedy 24-token "
           f"completions of {len(prompts)} English prompts; fraction identified as French by langdetect (seeded).")
    s.table(pd.DataFrame(rows))
    if example:
        s.table(pd.DataFrame({"prompt": prompts, f"steered (layer {example[1]}, coeff {example[2]:g})": example[3]}))
    s.text(f"({time.time() - t0:.0f} s)")


def composition(ctx: Any, s: Any) -> None:
    import pandas as pd

    from .contrast import contrast
    from .evaluate import wedding_rate

    lm = ctx.lm
    t0 = time.time()
    prompts = ["I hate you because", "My boss yelled at me, so I", "I went up to my friend and said"]
    love = contrast(lm, "Love", "Hate", at=6)
    wed = contrast(lm, "I talk about weddings constantly", "I do not talk about weddings constantly", at=6)
    other_layer = contrast(lm, "I talk about weddings constantly", "I do not talk about weddings constantly", at=10)
    rows = []
    for name, steer in [("none", None), ("5 love", 5 * love), ("6 wedding", 6 * wed),
                        ("5 love + 6 wedding (layer 6)", 5 * love + 6 * wed),
                        ("5 love @6 + 6 wedding @10", 5 * love + 6 * other_layer)]:
        out = lm.generate(prompts, 24, steer=steer)
        rows.append({"steering": name, "mean VADER compound": _sent(out), **wedding_rate(out), "example": out[0][:90]})
    s.text("Vector algebra: the sum of two ActAdd vectors at one layer is one addition (per-position tensors zero-padded "
           "to the longer); at two layers it is two additions. Greedy 24-token completions of 3 prompts.")
    s.table(pd.DataFrame(rows))
    s.text(f"({time.time() - t0:.0f} s)")


def caa_ab(ctx: Any, s: Any) -> None:
    import pandas as pd

    from ..core.positions import From
    from .caa import ab_pairs, behaviours, load_ab, mean_difference
    from .evaluate import ab_eval

    lm = ctx.lm
    t0 = time.time()
    n_train, n_test = (6, 12) if ctx.quick else (8, 20)  # CPU budget; `avec caa` scores the full test split
    layer = 12
    rows = []
    for beh in behaviours():
        train, test = load_ab(beh, "train")[:n_train], load_ab(beh, "test")[:n_test]
        v = mean_difference(lm, ab_pairs(lm, train), at=layer)
        base = ab_eval(lm, test)
        row = {"behaviour": beh, "train pairs": len(train), "test items": len(test), "|v|": float(v[f"blocks.{layer}.resid_pre"].norm()),
               "p(A)+p(B) base": float((base.p_a + base.p_b).mean()), "base": base.score}
        for c in [-10.0, 10.0]:
            row[f"coeff {c:+g} (from -1)"] = ab_eval(lm, test, c * v).score
        rows.append(row)
    s.text(f"CAA mean difference at blocks.{layer}.resid_pre, read at the answer letter (position -1), over train pairs of "
           "the shipped A/B datasets (train and test share no scenario); scored on the test split: mean of "
           "p(matching)/(p(A)+p(B)) at the token after '(' (0.5 = indifferent). Applied From(-1) (the '(' token onward, "
           f"generated tokens included). Matching letters alternate A/B. Default vector positions: {From(-1)!r}.")
    s.table(pd.DataFrame(rows))
    s.text(f"({time.time() - t0:.0f} s)")


def scan_section(ctx: Any, s: Any) -> None:
    from .contrast import contrast
    from .scan import coefficient_scan

    lm = ctx.lm
    t0 = time.time()
    love = contrast(lm, "Love", "Hate", at=6)
    n = 32 if ctx.quick else 128
    r = coefficient_scan(lm, "I hate you because", love, (" love", " hate"), n=n)
    s.text(f"Injection coefficient scan: Love - Hate at blocks.6.resid_pre (ActAdd, first 2 positions), {n} coefficients "
           f"in linspace(-10, 10), one batched forward pass; metric {r.metric} at the last prompt token, decomposed into "
           f"embed + each layer's attention and MLP output + injected, through the final RMSNorm scale of each row. "
           f"Sum of components vs the run's own logits: max error {r.max_error:.1e}. KMeans (k=4) clusters components "
           f"by their response profile. ({time.time() - t0:.1f} s)")
    s.figure(r.plot())
    s.table(r.cluster_frame().head(15))
    frame = r.to_frame()
    picks = sorted({0, len(frame) // 4, len(frame) // 2, 3 * len(frame) // 4, len(frame) - 1})
    s.table(frame.iloc[picks][r.top(8) + ["total"]])


SECTIONS = [
    ("Steering: love minus hate across layers and coefficients", love_hate),
    ("Steering: the wedding vector", wedding),
    ("Steering: a French vector", french),
    ("Steering: composing vectors", composition),
    ("Steering: CAA on shipped A/B datasets", caa_ab),
    ("Steering: the injection coefficient scan", scan_section),
]
