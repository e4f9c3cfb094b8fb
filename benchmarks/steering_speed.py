"""Speed of steering against the unsteered baselines, in one process, same inputs.

    python benchmarks/steering_speed.py [--model smollm2] [--prompts 8] [--new 32] [--n 128] [--repeats 3]

1. steered generation tokens/s vs plain ``lm.generate`` (same prompts, greedy, KV cache on; the ActAdd
   Love-Hate vector at layer 6, and a CAA-style From(-1) vector). Goal: >= 0.95x.
2. the 128-coefficient injection scan (one batched run caching embed + every attn_out/mlp_out at the
   answer position, plus the decomposition and clustering) vs one plain batch-128 forward of the same
   prompt. Goal: <= 1.5x.
Prints medians and ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _timing import median_time


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import avec
    from avec import From
    from avec.steering import SteeringVector, coefficient_scan, contrast

    lm = avec.load(args.model)
    base_prompts = ["I hate you because", "The weather today is", "My favourite food is", "Once upon a time",
                    "The best way to learn is", "Yesterday I went to", "The capital of France is", "I think that"]
    prompts = (base_prompts * (args.prompts // len(base_prompts) + 1))[:args.prompts]
    love = contrast(lm, "Love", "Hate", at=6)
    caa_like = SteeringVector.make(lm, 6, love["blocks.6.resid_pre"].mean(0), positions=From(-1))
    gen = lambda steer: lm.generate(prompts, max_new_tokens=args.new, steer=steer)  # noqa: E731
    # repeats interleaved (plain, ActAdd, From(-1), plain, ...) so that load from other processes hits
    # all three alike; speed = decoding steps per second, where steps = the longest completion (EOS can
    # end a batch early, and a steered batch may stop at a different step than the plain one)
    variants = {"plain": None, "ActAdd front": 5 * love, "From(-1)": 4 * caa_like}
    for steer in variants.values():
        gen(steer)  # warm-up
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, steer in variants.items():
            t = time.perf_counter()
            texts = gen(steer)
            seconds = time.perf_counter() - t
            steps = min(args.new, max(len(lm.to_tokens(x)) for x in texts) + 1)
            rates[name].append(args.prompts * steps / seconds)
    out = {}
    for name in variants:
        out[f"generate tokens/s {name}"] = statistics.median(rates[name])
    out["ratio ActAdd (goal >= 0.95)"] = out["generate tokens/s ActAdd front"] / out["generate tokens/s plain"]
    out["ratio From(-1) (goal >= 0.95)"] = out["generate tokens/s From(-1)"] / out["generate tokens/s plain"]

    prompt = "I hate you because"
    ids, mask = lm.tokenize([prompt])
    big = ids.expand(args.n, -1)

    def forward():
        with torch.no_grad():
            lm.hf(input_ids=big, attention_mask=mask.expand(args.n, -1), use_cache=False)

    t_fwd = median_time(forward, args.repeats)
    t_scan = median_time(lambda: coefficient_scan(lm, prompt, love, (" love", " hate"), n=args.n), args.repeats)
    out[f"batch-{args.n} forward s"] = t_fwd
    out[f"{args.n}-coefficient scan s"] = t_scan
    out["ratio scan / forward (goal <= 1.5)"] = t_scan / t_fwd
    t_loop = median_time(lambda: [lm.run(ids, interventions=love.as_interventions(coeff=c))
                                  for c in torch.linspace(-10, 10, 16).tolist()], 1)
    out["16-coefficient python loop s (for scale)"] = t_loop
    for k, v in out.items():
        print(f"{k:<45} {v:10.3f}")
    return out


if __name__ == "__main__":
    main()
