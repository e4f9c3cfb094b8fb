"""`avec tour` sections for probes and CCS (wired into ``avec.app.tour.SECTIONS`` by the tour)."""

from __future__ import annotations

import time

YES_NO = "{statement}\nQuestion: Is this statement true?\nAnswer:"


def _layers(ctx):
    n = ctx.lm.n_layers
    return list(range(0, n, 3 if ctx.quick else 1))


def probe_by_layer_section(ctx, s) -> None:
    import pandas as pd

    from ...data.labelled import load
    from ...probes.linear import probe

    lm = ctx.lm
    rows = []
    for name, n in (("sentiment", 80 if ctx.quick else 120), ("truth/capitals", 120 if ctx.quick else 240)):
        data = load(name).sample(n, seed=0)
        t = time.perf_counter()
        res = probe(lm, data, _layers(ctx))
        took = time.perf_counter() - t
        s.figure(res.plot())
        i = res.layers.index(res.best_layer)
        rows.append({"data": name, "items": len(data), "best layer": res.best_layer,
                     "probe test accuracy": float(res.test_score[i]), "mean-diff at that layer": float(res.baseline_score[i]),
                     "chance": res.chance, "seconds": took})
    s.text("Logistic probes on the residual stream after each block (last token), trained on 75% of each set and "
           "scored on the other 25%. The truth set pairs each country with its capital and with another capital of "
           "the same continent; both statements about a country stay on the same side of the split (otherwise a probe "
           "that memorises the country scores below chance). The dashed line is the mean-difference direction with a "
           "midpoint threshold.")
    s.table(pd.DataFrame(rows))


def ccs_section(ctx, s) -> None:
    from ...data.labelled import load
    from ...probes.ccs import confound_experiment

    lm = ctx.lm
    data = load("truth/capitals").sample(80 if ctx.quick else 120, seed=0)
    layers = list(range(0, lm.n_layers, 6 if ctx.quick else 3))
    plain, mixed = confound_experiment(lm, data, layers, pca=16, n_restarts=10, epochs=400, test_size=0.4)
    s.text(f"CCS (linear, 10 restarts, sides normalised, top-16 principal components) against a supervised logistic "
           f"probe on the same {len(data)} contrast pairs ('... Is this statement true? Answer: Yes' / '... No'), "
           f"test accuracy up to sign on {plain.n_test} held-out pairs (a small model and a small test set: differences of "
           f"0.1 are within noise).")
    s.figure(plain.plot())
    s.table(plain.to_frame())
    s.text("The confound: the same pairs with a random word appended - ' Banana' to the Yes side and ' Shed' to the No "
           "side for a random half, the reverse for the rest. 'Which side has Banana' is as consistent and confident as "
           "truth. If CCS follows it, its accuracy against that distractor rises and against truth falls to chance; the "
           "supervised probe, which sees the labels, is unaffected.")
    s.figure(mixed.plot())
    s.table(mixed.to_frame())


def steering_section(ctx, s) -> None:
    import pandas as pd
    import torch

    from ...data.labelled import load
    from ...probes.linear import probe

    lm = ctx.lm
    data = load("truth/capitals")
    train = data.sample(160, seed=1)
    res = probe(lm, train, [9, 12, 15, 18])
    vec = res.to_steering_vector(lm)  # unit direction x class-mean gap, at the layer it was read
    s.text(f"The truth probe's direction at its best layer ({res.best_layer}, test accuracy "
           f"{float(res.test_score.max()):.2f}) as a steering vector: {vec!r}. Added at every position of prompts asking "
           "whether a statement is true, it moves the model's answer: the table is the mean logit(' Yes') - logit(' No') "
           "over held-out true and false statements, by coefficient (1 = the gap between the class means).")
    seen = set(train.extra["subject"])  # held out: countries the probe never saw
    held = data.subset([i for i, c in enumerate(data.extra["subject"]) if c not in seen]).sample(24, seed=7)
    prompts = [YES_NO.format(statement=t) for t in held.texts]
    y = torch.tensor(held.labels)
    yes, no = lm.token_id(" Yes"), lm.token_id(" No")
    rows = []
    for c in (-8.0, -4.0, 0.0, 4.0, 8.0):
        run = lm.run(prompts, interventions=vec.as_interventions(coeff=c) if c else ())
        last = run.last_logits()
        diff = (last[:, yes] - last[:, no]).float()
        rows.append({"coefficient": c, "true statements": float(diff[y == 1].mean()),
                     "false statements": float(diff[y == 0].mean()),
                     "answers Yes (share)": float((diff > 0).float().mean())})
    s.table(pd.DataFrame(rows))
    prompt = YES_NO.format(statement="The capital of Italy is Madrid.")
    outs = {c: repr(lm.generate(prompt, max_new_tokens=12, steer=c * vec if c else None)[0]) for c in (-8.0, 0.0, 8.0)}
    s.table(pd.DataFrame({"coefficient": list(outs), "completion": list(outs.values())}))


SECTIONS = [
    ("Linear probes by layer: sentiment and truth", probe_by_layer_section),
    ("CCS vs a supervised probe, and the distractor confound", ccs_section),
    ("Steering along the truth probe's direction", steering_section),
]
