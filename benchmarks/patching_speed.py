"""Patching speed on SmolLM2: a resid_pre sweep over all layers x positions of a 16-token prompt.

    python benchmarks/patching_speed.py [--threads 1] [--chunk 32]

Times (1) the naive loop (one forward pass per patch, the core's plain Patch), (2) the batched sweep
(each batch row its own patch, chunked), (3) attribution patching of the same grid (one forward + one
backward), checks that (1) and (2) give the same values, and prints the ratios.

Measured (2026-11, 2 shared CPU cores, 1 thread, SmolLM2, 16 tokens, 480 patches): loop 75.5 s, batched
25.3 s (3.0x, bit-identical values; the sweep keeps only the last position's logits, which its metric
reads), attribution 0.83 s (31x faster than batched, 91x than the loop; correlation 0.79 on resid_pre,
0.99 on the head grid; head grid batched 16.7 s vs attribution 1.2 s). Before keeping only the needed
logits the batched sweep was 2.0x. On a CPU a 16-token forward is compute-bound, so the batch axis
mostly removes per-call overhead; the issue's 5x needs skipping redundant compute (rows patched at
layer l recompute layers < l identically to the corrupted run), i.e. starting a run from a cached
residual, which the core does not offer yet.
"""

from __future__ import annotations

import argparse
import time

import torch

CLEAN = "Then, when Mary and John went to the store, John gave a drink to"
CORRUPT = "Then, when Mary and John went to the store, Mary gave a drink to"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--model", default="smollm2")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import avec
    from avec.patching import activation_patching, attribution_patching

    lm = avec.load(args.model)
    n_tok = lm.tokenize(CLEAN)[0].shape[1]
    kw = dict(answer=" Mary", wrong=" John")
    print(f"model {lm.name}: {lm.n_layers} layers; prompt of {n_tok} tokens -> {lm.n_layers * n_tok} patches; "
          f"threads={args.threads}")
    activation_patching(lm, CLEAN, CORRUPT, "resid_pre", layers=[0], **kw)  # warm-up

    t = time.perf_counter()
    loop = activation_patching(lm, CLEAN, CORRUPT, "resid_pre", batched=False, **kw)
    t_loop = time.perf_counter() - t
    t = time.perf_counter()
    fast = activation_patching(lm, CLEAN, CORRUPT, "resid_pre", chunk_size=args.chunk, **kw)
    t_fast = time.perf_counter() - t
    t = time.perf_counter()
    attr = attribution_patching(lm, CLEAN, CORRUPT, "resid_pre", **kw)
    t_attr = time.perf_counter() - t
    # attribution of the head grid vs real head patching (a grid where the linear estimate is good)
    t = time.perf_counter()
    heads = activation_patching(lm, CLEAN, CORRUPT, "attn.z", "head", chunk_size=args.chunk, **kw)
    t_heads = time.perf_counter() - t
    t = time.perf_counter()
    heads_attr = attribution_patching(lm, CLEAN, CORRUPT, "attn.z", "head", **kw)
    t_heads_attr = time.perf_counter() - t

    diff = (loop.raw - fast.raw).abs().max().item()
    print(f"naive loop      {t_loop:7.2f} s")
    print(f"batched sweep   {t_fast:7.2f} s   ({t_loop / t_fast:.1f}x faster than the loop; max |diff| {diff:.2e})")
    print(f"attribution     {t_attr:7.2f} s   ({t_fast / t_attr:.1f}x faster than batched, "
          f"{t_loop / t_attr:.1f}x faster than the loop); correlation with real patching {attr.correlation(fast):.3f}")
    print(f"heads: batched {t_heads:.2f} s, attribution {t_heads_attr:.2f} s ({t_heads / t_heads_attr:.1f}x); "
          f"correlation {heads_attr.correlation(heads):.3f}")


if __name__ == "__main__":
    main()
