"""The same CAA vector made and applied by avec and by the `steering-vectors` library (if installed:
``pip install --no-deps steering-vectors`` keeps our torch). Values must agree; speeds are printed.

    python benchmarks/steering_compare.py [--model smollm2] [--layer 8] [--new 24] [--repeats 3]

steering-vectors reads a decoder block's output (= our ``blocks.{l}.resid_post``) at token -1 and
adds the vector to that output at every position (``min_token_index=0``) = our positions "all".
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

PAIRS = [("I love weddings", "I love cooking"), ("We talked about the wedding", "We talked about the weather"),
         ("The bride and groom", "The cat and dog"), ("She planned her wedding", "She planned her holiday"),
         ("a beautiful wedding dress", "a beautiful summer dress")]
PROMPTS = ["I went up to my friend and said", "Yesterday, my neighbour told me that",
           "The most important thing in life is", "When I woke up this morning,"]


def _median(fn, repeats):
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--layer", type=int, default=8)
    parser.add_argument("--coeff", type=float, default=1.0)
    parser.add_argument("--new", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        import steering_vectors as sv
    except ImportError:
        print("steering-vectors is not installed (pip install --no-deps steering-vectors); nothing to compare")
        return {}

    import avec
    from avec.steering import mean_difference

    lm = avec.load(args.model)
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
    t_o = _median(ours_generate, args.repeats)
    t_t = _median(theirs_generate, args.repeats)
    n = len(PROMPTS) * args.new
    out["tokens/s ours"], out["tokens/s theirs"], out["ratio ours/theirs"] = n / t_o, n / t_t, t_t / t_o
    for k, v in out.items():
        print(f"{k:<32} {v}")
    return out


if __name__ == "__main__":
    main()
