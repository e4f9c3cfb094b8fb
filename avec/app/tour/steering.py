"""Tour sections reproducing the steering experiments (``SECTIONS``), also run one at a time by
``avec steer-repro NAME`` (``REPRODUCTIONS``; see ``reproduce.py``): one implementation for both.

Each is ``fn(ctx, s)`` and reports what it measures, whatever that is. ``ctx.lm`` is the model,
``ctx.quick`` asks for smaller samples. Layers are written for SmolLM2's 30 layers and moved to the same
relative depth on other models (``_layer``). Greedy decoding unless said; sample sizes are small (CPU,
< 1 minute each) and say so. ``avec.app.tour.context.on_model(name, fn)`` pins a section to one model (the Gemma 3 sections),
sharing the tour's model cache.
"""

from __future__ import annotations

import time
from typing import Any


from ...steering.generation import generate_cells
from .context import on_model

NEUTRAL = ["I went up to my friend and said", "Yesterday, my neighbour told me that",
           "The most important thing in life is", "When I woke up this morning,"]


REFERENCE_LAYERS = 30  # the layer numbers below are SmolLM2-135M's


def _layer(lm, layer: int) -> int:
    """``layer`` of SmolLM2's 30 moved to the same relative depth of ``lm`` (identity on SmolLM2)."""
    return min(lm.n_layers - 1, max(0, round(layer * lm.n_layers / REFERENCE_LAYERS)))


def _layers(lm, layers) -> list[int]:
    return sorted({_layer(lm, l) for l in layers})


def _sent(texts):
    from ...steering.evaluate import sentiment

    return sum(sentiment(texts)) / len(texts)


def love_hate(ctx: Any, s: Any) -> None:
    import pandas as pd

    from ...steering.contrast import contrast

    lm = ctx.lm
    t0 = time.time()
    prompts = ["I hate you because", "You are the worst person and", "My boss yelled at me, so I"]
    layers = _layers(lm, [2, 6, 12] if ctx.quick else [2, 6, 12, 18])
    coeffs = [5.0, 10.0] if ctx.quick else [2.0, 5.0, 10.0]
    vectors = {layer: contrast(lm, "Love", "Hate", at=layer) for layer in layers}
    cells = [(("-", 0.0), None, 0.0)] + [((layer, c), vectors[layer], c) for layer in layers for c in coeffs]
    outs = generate_cells(lm, prompts, cells, 20)
    rows = [{"layer": layer, "coeff": c, "mean VADER compound": _sent(out)} for (layer, c), out in outs.items()]
    l6 = _layer(lm, 6)
    v6 = vectors[l6]
    s.text(f"{lm.name}: ActAdd Love - Hate ({v6.recipe['padding']}), added at the prompt's first "
           f"{v6[f'blocks.{l6}.resid_pre'].shape[0]} positions of resid_pre; every layer and coefficient (and the "
           "unsteered baseline) in one batched generate call (one coefficient per row and vector). "
           f"Sentiment = mean VADER compound of greedy 20-token completions of {len(prompts)} "
           f"negative prompts (-1 = negative, +1 = positive). Small sample: read the direction, not the decimals.")
    s.table(pd.DataFrame(rows))
    s.text(f"Unsteered vs steered (coeff 5 at layer {l6}), from the same run:")
    s.table(pd.DataFrame({"prompt": prompts, "unsteered": outs[("-", 0.0)], "steered": outs[(l6, 5.0)]}))
    s.text(f"({time.time() - t0:.0f} s)")


WEDDING_PAIRS = [("I love weddings", "I love cooking"), ("We talked about the wedding", "We talked about the weather"),
                 ("The bride and groom", "The cat and dog"), ("She planned her wedding", "She planned her holiday"),
                 ("a beautiful wedding dress", "a beautiful summer dress")]


def wedding(ctx: Any, s: Any) -> None:
    import pandas as pd

    from ...steering.caa import mean_difference
    from ...steering.contrast import contrast
    from ...steering.evaluate import effectiveness, perplexity_ratio, wedding_rate

    lm = ctx.lm
    t0 = time.time()
    prompts = NEUTRAL[:3] if ctx.quick else NEUTRAL
    plist = [p for p in prompts for _ in range(2)]
    sampling = {"do_sample": True, "temperature": 1.0, "top_p": 0.3, "seed": 0}
    plus, minus = "I talk about weddings constantly", "I do not talk about weddings constantly"
    cells = [(("none", "-", 0.0), None, 0.0)]
    for layer in _layers(lm, [6] if ctx.quick else [6, 12]):
        v = contrast(lm, plus, minus, at=layer)
        cells += [(("ActAdd (front)", layer, c), v, c) for c in [4.0, 8.0]]
    for layer in _layers(lm, [8] if ctx.quick else [8, 12]):
        v = mean_difference(lm, WEDDING_PAIRS, at=layer, positions="all")
        cells += [(("mean diff (all positions)", layer, c), v, c) for c in [0.5, 1.0, 1.5]]
    vectors = {key: v for key, v, _ in cells}
    rows, best = [], (None, -1.0)
    for (name, layer, c), out in generate_cells(lm, plist, cells, 24, **sampling).items():
        r = wedding_rate(out)
        rows.append({"vector": name, "layer": layer, "coeff": c, **r})
        if name.startswith("mean diff") and r["texts with a wedding word"] > best[1]:
            best = ((layer, c, vectors[(name, layer, c)]), r["texts with a wedding word"])
    s.text(f"{lm.name}: two wedding vectors. ActAdd {plus!r} - {minus!r} "
           f"({contrast(lm, plus, minus, at=_layer(lm, 6)).recipe['padding']}), "
           f"added at the prompt's front positions as in the paper; and a mean difference over {len(WEDDING_PAIRS)} "
           "hand-written pairs (wedding vs other topic, read at the last token), added at every position. "
           f"{len(plist)} sampled completions per cell (top-p 0.3, T 1, 24 tokens, seed 0) of neutral prompts; fraction of "
           "completions with a wedding word (ActAdd list) and wedding words / all words. The original found > 90% vs ~2% "
           "at the best layer of GPT-2-XL.")
    s.table(pd.DataFrame(rows))
    s.text(_wedding_outcome(rows))
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


def _wedding_outcome(rows: list[dict]) -> str:
    """What this run's table shows, read from the rows (whatever the model): each vector's best cell
    against the unsteered baseline."""
    key = "texts with a wedding word"
    base = next(r[key] for r in rows if r["vector"] == "none")
    parts = []
    for name in dict.fromkeys(r["vector"] for r in rows if r["vector"] != "none"):
        best = max((r for r in rows if r["vector"] == name), key=lambda r: (r[key], -r["coeff"]))
        verdict = "above" if best[key] > base else "not above"
        parts.append(f"{name}: at best {best[key]:.0%} (layer {best['layer']}, coeff {best['coeff']:g}), {verdict} "
                     f"the unsteered {base:.0%}")
    return "In this run, completions with a wedding word - " + "; ".join(parts) + "."


def french(ctx: Any, s: Any) -> None:
    import pandas as pd

    from ...steering.contrast import contrast
    from ...steering.evaluate import language_rate

    lm = ctx.lm
    t0 = time.time()
    prompts = ["I want to tell you about my day.", "The best thing about summer is", "My favourite book is",
               "Here is what I think about the news:"]
    plus, minus = "Je parle en français.", "I speak in English."
    cells = [(("-", 0.0), None, 0.0)]
    for layer in _layers(lm, [4, 10] if ctx.quick else [2, 6, 10, 16]):
        v = contrast(lm, plus, minus, at=layer)
        cells += [((layer, c), v, c) for c in [4.0, 8.0]]
    rows, example = [], None
    for (layer, c), out in generate_cells(lm, prompts, cells, 24).items():
        rows.append({"layer": layer, "coeff": c, "fraction French (langdetect)": language_rate(out)})
        if layer != "-" and (example is None or rows[-1]["fraction French (langdetect)"] > example[0]):
            example = (rows[-1]["fraction French (langdetect)"], layer, c, out)
    s.text(f"{lm.name}: ActAdd {plus!r} - {minus!r} ({contrast(lm, plus, minus, at=_layer(lm, 6)).recipe['padding']}); greedy 24-token "
           f"completions of {len(prompts)} English prompts; fraction identified as French by langdetect (seeded).")
    s.table(pd.DataFrame(rows))
    if example:
        s.table(pd.DataFrame({"prompt": prompts, f"steered (layer {example[1]}, coeff {example[2]:g})": example[3]}))
    s.text(f"({time.time() - t0:.0f} s)")


def composition(ctx: Any, s: Any) -> None:
    import pandas as pd

    from ...steering.contrast import contrast
    from ...steering.evaluate import wedding_rate

    lm = ctx.lm
    t0 = time.time()
    prompts = ["I hate you because", "My boss yelled at me, so I", "I went up to my friend and said"]
    a, b = _layer(lm, 6), _layer(lm, 10)
    love = contrast(lm, "Love", "Hate", at=a)
    wed = contrast(lm, "I talk about weddings constantly", "I do not talk about weddings constantly", at=a)
    other_layer = contrast(lm, "I talk about weddings constantly", "I do not talk about weddings constantly", at=b)
    cells = [(name, steer, 1.0) for name, steer in [
        ("none", None), ("5 love", 5 * love), ("6 wedding", 6 * wed), (f"5 love + 6 wedding (layer {a})", 5 * love + 6 * wed),
        (f"5 love @{a} + 6 wedding @{b}", 5 * love + 6 * other_layer)]]
    rows = [{"steering": name, "mean VADER compound": _sent(out), **wedding_rate(out), "example": out[0][:90]}
            for name, out in generate_cells(lm, prompts, cells, 24).items()]
    s.text(f"{lm.name}: vector algebra: the sum of two ActAdd vectors at one layer is one addition (per-position tensors zero-padded "
           "to the longer); at two layers it is two additions. Greedy 24-token completions of 3 prompts (all rows in "
           "one batched generate call).")
    s.table(pd.DataFrame(rows))
    s.text(f"({time.time() - t0:.0f} s)")


def caa_ab(ctx: Any, s: Any) -> None:
    import pandas as pd

    from ...core.positions import From
    from ...steering.caa import ab_pairs, behaviours, load_ab, mean_difference
    from ...steering.evaluate import ab_eval

    lm = ctx.lm
    t0 = time.time()
    n_train, n_test = (6, 12) if ctx.quick else (8, 20)  # CPU budget; `avec caa` scores the full test split
    layer = _layer(lm, 12)
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
    s.text(f"{lm.name}: CAA mean difference at blocks.{layer}.resid_pre, read at the answer letter (position -1), over train pairs of "
           "the shipped A/B datasets (train and test share no scenario); scored on the test split: mean of "
           "p(matching)/(p(A)+p(B)) at the token after '(' (0.5 = indifferent). Applied From(-1) (the '(' token onward, "
           f"generated tokens included). Matching letters alternate A/B. Default vector positions: {From(-1)!r}.")
    s.table(pd.DataFrame(rows))
    s.text(f"({time.time() - t0:.0f} s)")


def scan_section(ctx: Any, s: Any) -> None:
    from ...steering.contrast import contrast
    from ...steering.scan import coefficient_scan

    lm = ctx.lm
    t0 = time.time()
    layer = _layer(lm, 6)
    love = contrast(lm, "Love", "Hate", at=layer)
    n = 32 if ctx.quick else 128
    r = coefficient_scan(lm, "I hate you because", love, (" love", " hate"), n=n, heads=True)
    frozen = r.info["frozen post-norm"]
    s.text(f"{lm.name}: injection coefficient scan: Love - Hate at blocks.{layer}.resid_pre (ActAdd, first "
           f"{love[f'blocks.{layer}.resid_pre'].shape[0]} positions), {n} coefficients "
           f"in linspace(-10, 10), one batched forward pass; metric {r.metric} at the last prompt token, decomposed into "
           f"embed + each attention head (through its slice of the output projection"
           + (", and through the attention post-norm with its scale frozen at this run's value per row, as DLA does: "
              "head terms describe the linearised layer, not an ablation" if frozen else "")
           + f") + each MLP output + injected, through the final norm's scale of each row. "
           f"Sum of components vs the run's own logits: max error {r.max_error:.1e}; heads vs attn_out: max error "
           f"{r.info['heads error']:.1e}. KMeans (k=4) clusters components by their response profile. "
           f"({time.time() - t0:.1f} s)")
    s.figure(r.plot())
    s.table(r.cluster_frame().head(15))
    frame = r.to_frame()
    picks = sorted({0, len(frame) // 4, len(frame) // 2, 3 * len(frame) // 4, len(frame) - 1})
    s.table(frame.iloc[picks][r.top(8) + ["total"]])


# name -> (title, section): each is a section of `avec tour` and a command `avec steer-repro NAME`
REPRODUCTIONS = {
    "love-hate": ("Steering: love minus hate across layers and coefficients", love_hate),
    "wedding": ("Steering: the wedding vector", wedding),
    "french": ("Steering: a French vector", french),
    "composition": ("Steering: composing vectors", composition),
    "caa": ("Steering: CAA on shipped A/B datasets", caa_ab),
    "scan": ("Steering: the injection coefficient scan", scan_section),
}

GEMMA = "gemma3-270m"
# the reproductions repeated on Gemma 3 270M in the tour, and their size (None = the tour's): a decoding
# step there reads the 262k-token unembedding and top-p sorts 262k logits per row, so sampled sections
# run their quick size (< 60 s on one thread)
GEMMA_SECTIONS = {"love-hate": None, "wedding": True, "scan": None}

SECTIONS = [*REPRODUCTIONS.values(),
            *[(f"{REPRODUCTIONS[k][0]} (Gemma 3 270M)", on_model(GEMMA, REPRODUCTIONS[k][1], quick))
              for k, quick in GEMMA_SECTIONS.items()]]
