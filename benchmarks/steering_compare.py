"""The same vectors made and applied by avec and by other steering libraries, if installed beside ours
(each is optional and skipped cleanly when absent). Values must agree; speeds are printed.

    python benchmarks/steering_compare.py [--lib all|steering-vectors|repeng] [--model smollm2] [--repeats 3]

steering-vectors (``pip install --no-deps steering-vectors`` keeps our torch): the CAA mean difference.
It reads a decoder block's output (= our ``blocks.{l}.resid_post``) at token -1 and adds the vector to
that output at every position (``min_token_index=0``) = our positions "all".

repeng 0.4.0: the PCA direction of paired differences (``ControlVector.train``, method ``pca_diff``).
``pip install --dry-run repeng`` would downgrade NumPy 2.x to 1.26.4 (repeng pins ``numpy<2``), so install
it with ``pip install --no-deps repeng``. It then does not import under NumPy 2: its annotations name
``np.float_`` (removed in NumPy 2.0) at class-definition time::

    AttributeError: `np.float_` was removed in the NumPy 2.0 release. Use `np.float64` instead.

This benchmark aliases ``np.float_ = np.float64`` before importing it (only annotations use it) and says so.
With that, repeng 0.4.0 runs on transformers 5.x for a llama-family model. Conventions, and how we map them:

- layer ``i`` in repeng = ``hidden_states[i + 1]`` = the output of decoder block ``i`` = our
  ``blocks.{i}.resid_post`` (read at each text's last non-padding token = our ``read_at=-1``); it steers by
  wrapping block ``i`` and adding ``coeff * direction`` to its output at every non-left-padding position
  (our positions "all" at ``blocks.{i}.resid_post``).
- repeng's ``pca_diff`` is scikit-learn's PCA of the differences, i.e. *centred*: compare with
  ``pca_direction(..., center=True)``; our default (``center=False``, the top singular vector of the raw
  differences) is printed too, and differs.
- normalisation: repeng's direction has norm 1; ours is scaled to the mean difference's projection on it.
- sign: repeng flips the direction so that, for most pairs, the positive text projects higher than the
  negative; ours so that the mean difference projects positively. These agree unless the pairs disagree.
- the texts are tokenised by the same tokenizer call (``tokenizer(texts, padding=True)``); the tokenizer
  must pad on the right for repeng's reading (HF gives left-padded rows shifted positions).

Measured on SmolLM2-135M, 1 thread, a shared 2-core machine (torch 2.13, transformers 5.23, NumPy 2.4.6):
repeng (32 love/hate pairs, layers 8/12/16): cos(ours centred, repeng) = 1.0 at every layer, max entry
difference of the unit vectors 1e-7 / 1.5e-5 / 4e-7 (entries up to 0.35), same sign; our default
uncentred direction has cos 0.39 / 0.05 / 0.26 with it (a different vector, see above). Greedy text
steered by 4 x the unit direction at the three block outputs: identical. Speed: train 1.2 s ours vs
1.6 s repeng; generation 37.9 vs 39.5 tokens/s (0.96x; 1.06x in an earlier run: parity within noise).
On the shipped A/B pairs (``--behaviour corrigible``, 30 pairs) the vectors agree up to sign (cos -1.0):
the answer letter alternates between pairs, the top component is the letter axis, and neither sign
rule (mean projection vs majority of pairs) is meaningful there.
steering-vectors: the CAA vector is identical (max difference 0.0), same greedy text, 0.97x its speed.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from _timing import median_time

PAIRS = [("I love weddings", "I love cooking"), ("We talked about the wedding", "We talked about the weather"),
         ("The bride and groom", "The cat and dog"), ("She planned her wedding", "She planned her holiday"),
         ("a beautiful wedding dress", "a beautiful summer dress")]
SUBJECTS = ["cats", "my job", "this city", "rainy days", "this book", "my neighbours", "the new phone", "jazz",
            "the food here", "my teacher", "winter", "the movie", "our garden", "this song", "the train", "my car",
            "the beach", "spicy food", "my brother", "this game", "the office", "football", "the museum", "coffee",
            "the hotel", "mornings", "this painting", "the weather", "my laptop", "the party", "homework", "the sea"]
SENTIMENT_PAIRS = [(f"I really love {x}", f"I really hate {x}") for x in SUBJECTS]
PROMPTS = ["I went up to my friend and said", "Yesterday, my neighbour told me that",
           "The most important thing in life is", "When I woke up this morning,"]


def _show(title: str, out: dict) -> None:
    print(f"\n== {title}")
    for k, v in out.items():
        print(f"{k:<44} {v}")


def compare_steering_vectors(lm, args) -> dict:
    try:
        import steering_vectors as sv
    except ImportError:
        print("\nsteering-vectors is not installed (pip install --no-deps steering-vectors); skipped")
        return {}
    from avec.steering import mean_difference

    hook = f"blocks.{args.layer}.resid_post"
    t = time.perf_counter()
    ours = mean_difference(lm, PAIRS, at=hook, positions="all")
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    theirs = sv.train_steering_vector(lm.hf, lm.tokenizer, PAIRS, layers=[args.layer], read_token_index=-1, batch_size=len(PAIRS))
    t_theirs = time.perf_counter() - t
    a, b = ours[hook], theirs.layer_activations[args.layer].float().cpu()
    out = {"max |ours - theirs| (vector)": float((a - b).abs().max()), "|ours|": float(a.norm()),
           "cosine": float(torch.cosine_similarity(a, b, 0)), "train s ours": t_ours, "train s theirs": t_theirs}

    ids, mask = lm.tokenize(PROMPTS, padding_side="left")

    def theirs_generate():
        with torch.no_grad(), theirs.apply(lm.hf, multiplier=args.coeff, min_token_index=0):
            o = lm.hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.new, do_sample=False,
                               pad_token_id=lm.tokenizer.pad_token_id)
        return lm.tokenizer.batch_decode(o[:, ids.shape[1]:], skip_special_tokens=True)

    ours_generate = lambda: lm.generate(PROMPTS, args.new, steer=args.coeff * ours)  # noqa: E731
    out["same greedy text"] = ours_generate() == theirs_generate()
    t_o = median_time(ours_generate, args.repeats)
    t_t = median_time(theirs_generate, args.repeats)
    n = len(PROMPTS) * args.new
    out["tokens/s ours"], out["tokens/s theirs"], out["ratio ours/theirs"] = n / t_o, n / t_t, t_t / t_o
    _show("steering-vectors: CAA mean difference", out)
    return out


def _import_repeng() -> tuple[object | None, str]:
    """(module or None, a note on how it imported)."""
    try:
        import repeng

        return repeng, "imported as is"
    except ImportError as e:
        return None, f"not installed ({e}); pip install --no-deps repeng"
    except AttributeError as e:  # repeng 0.4.0 under NumPy 2: annotations name np.float_
        import numpy as np

        for name in [m for m in sys.modules if m == "repeng" or m.startswith("repeng.")]:
            del sys.modules[name]
        note = (f"`import repeng` failed under NumPy {np.__version__}: {e}; "
                "retried with the alias np.float_ = np.float64 (used only in its annotations)")
        np.float_ = np.float64
        import repeng

        return repeng, note


def compare_repeng(lm, args) -> dict:
    repeng, note = _import_repeng()
    print(f"\nrepeng: {note}")
    if repeng is None:
        return {"repeng": note}
    from avec.steering import SteeringVector, ab_pairs, load_ab, pca_direction

    layers = [int(x) for x in args.repeng_layers.split(",")]
    if args.behaviour:
        pairs = ab_pairs(lm, load_ab(args.behaviour, "train")[:args.pairs])
        what = f"{len(pairs)} A/B train pairs of {args.behaviour!r}, read at the answer letter"
    else:
        pairs = SENTIMENT_PAIRS[:args.pairs]
        what = f"{len(pairs)} pairs 'I really love X' / 'I really hate X', read at the last token"
    hooks = [f"blocks.{l}.resid_post" for l in layers]
    lm.tokenizer.padding_side = "right"  # repeng reads with the tokenizer's current padding side
    t = time.perf_counter()
    ours_c = pca_direction(lm, pairs, at=hooks, center=True, batch_size=args.batch)
    t_ours = time.perf_counter() - t
    ours_u = pca_direction(lm, pairs, at=hooks, center=False, batch_size=args.batch)
    dataset = [repeng.DatasetEntry(positive=p, negative=n) for p, n in pairs]
    lm.tokenizer.padding_side = "right"
    t = time.perf_counter()
    theirs = repeng.ControlVector.train(lm.hf, lm.tokenizer, dataset, hidden_layers=layers, batch_size=args.batch)
    t_theirs = time.perf_counter() - t
    out: dict = {"version": getattr(repeng, "__version__", "0.4.0 (pip metadata)"), "import": note,
                 "pairs": what}
    for l, h in zip(layers, hooks, strict=True):
        r = torch.as_tensor(theirs.directions[l]).float()
        c, u = ours_c[h], ours_u[h]
        cos_c = float(torch.cosine_similarity(c, r, 0))
        sign = 1.0 if cos_c >= 0 else -1.0
        out[f"L{l} |repeng direction|"] = round(float(r.norm()), 6)
        out[f"L{l} cos(ours centred, repeng)"] = cos_c
        out[f"L{l} max |sign * unit(ours centred) - repeng|"] = float((sign * c / c.norm() - r).abs().max())
        out[f"L{l} max |repeng| entry"] = float(r.abs().max())
        out[f"L{l} cos(ours uncentred (default), repeng)"] = float(torch.cosine_similarity(u, r, 0))
        out[f"L{l} |ours centred| (scaled to mean-diff projection)"] = float(c.norm())
    out["train s ours (centred; reads pos and neg)"] = t_ours
    out["train s repeng"] = t_theirs

    # apply the same vector: coeff * unit direction at each layer's block output, every position
    coeff = args.repeng_coeff
    steer = None
    for l, h in zip(layers, hooks, strict=True):
        unit = ours_c[h] / ours_c[h].norm()
        unit = unit if float(unit @ torch.as_tensor(theirs.directions[l])) >= 0 else -unit
        term = SteeringVector.make(lm, h, coeff * unit, positions="all")
        steer = term if steer is None else steer + term
    ours_generate = lambda: lm.generate(PROMPTS, args.new, steer=steer)  # noqa: E731
    ours_text = ours_generate()
    t_o = median_time(ours_generate, args.repeats)
    ids, mask = lm.tokenize(PROMPTS, padding_side="left")
    model = repeng.ControlModel(lm.hf, layers)  # wraps lm.hf's blocks in place; unwrapped below
    try:
        model.set_control(theirs, coeff)

        def theirs_generate():
            with torch.no_grad():
                o = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.new, do_sample=False,
                                   pad_token_id=lm.tokenizer.pad_token_id)
            return lm.tokenizer.batch_decode(o[:, ids.shape[1]:], skip_special_tokens=True)

        theirs_text = theirs_generate()
        t_t = median_time(theirs_generate, args.repeats)
    finally:
        model.unwrap()
    n = len(PROMPTS) * args.new
    out[f"same greedy text (coeff {coeff:g} x unit, {len(layers)} layers)"] = ours_text == theirs_text
    if ours_text != theirs_text:
        out["first differing completion (ours | repeng)"] = next(f"{a!r} | {b!r}" for a, b in zip(ours_text, theirs_text, strict=True) if a != b)
    out["tokens/s ours"], out["tokens/s repeng"], out["ratio ours/repeng"] = n / t_o, n / t_t, t_t / t_o
    _show("repeng: PCA of paired differences", out)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lib", choices=["all", "steering-vectors", "repeng"], default="all")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--layer", type=int, default=8, help="steering-vectors: the layer")
    parser.add_argument("--coeff", type=float, default=1.0, help="steering-vectors: the coefficient")
    parser.add_argument("--repeng-layers", default="8,12,16", help="repeng: comma-separated layers")
    parser.add_argument("--repeng-coeff", type=float, default=4.0, help="repeng: coefficient of the unit direction")
    parser.add_argument("--behaviour", default=None, help="repeng: a shipped A/B dataset for the pairs (default: "
                        "32 templated love/hate pairs)")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    import avec

    lm = avec.load(args.model)
    results = {}
    if args.lib in ("all", "steering-vectors"):
        results["steering-vectors"] = compare_steering_vectors(lm, args)
    if args.lib in ("all", "repeng"):
        results["repeng"] = compare_repeng(lm, args)
    return results


if __name__ == "__main__":
    main()
