"""Overhead of avec's hooks against a plain Hugging Face forward, in one process, same batch.

    python benchmarks/core_overhead.py [--model smollm2] [--batch 8] [--tokens 64] [--repeats 15]

Prints the median time of each variant and its ratio to the plain forward:
  plain HF forward  (torch.no_grad, model(input_ids, attention_mask))
  run, no cache     (avec's run with nothing asked: the wrapper's own cost)
  run, cache all residual points (embed + resid_pre/mid/post of every layer)
  run + one addition (a steering vector at one layer)
and the time of a cached `avec.load`. Goal: caching every residual point <= 1.10x the plain forward.

If TransformerLens (>= 4, the HF-wrapping TransformerBridge) is importable - install it in a separate
venv beside torch 2.13, it does not replace torch - the same weights (avec's float cache directory)
are booted into a bridge and its `run_with_cache` is timed on the same batch as a second baseline,
both filtered to the residual points and unfiltered (its default: every hook), and its residual
values are compared with avec's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import avec

    t = time.perf_counter()
    lm = avec.load(args.model)
    load_s = time.perf_counter() - t
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, lm.dims.vocab, (args.batch, args.tokens), generator=g)
    mask = torch.ones_like(ids)
    inputs = {"input_ids": ids, "attention_mask": mask}
    residual = ["embed", "blocks.*.resid_pre", "blocks.*.resid_mid", "blocks.*.resid_post"]
    steer = avec.AddVector(f"blocks.{lm.n_layers // 4}.resid_pre", torch.randn(lm.d_model), coeff=2.0)

    def plain():
        with torch.no_grad():
            lm.hf(input_ids=ids, attention_mask=mask, use_cache=False)

    variants = {
        "plain HF forward": plain,
        "run, no cache": lambda: lm.run(inputs),
        "run, cache all residual points": lambda: lm.run(inputs, cache=residual),
        "run + one addition": lambda: lm.run(inputs, interventions=[steer]),
    }
    # interleave repeats so that drifting machine load hits every variant alike
    times = {k: [] for k in variants}
    for fn in variants.values():
        fn()
    for _ in range(args.repeats):
        for k, fn in variants.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    tl = _transformerlens_variants(args.model, ids, lm)
    for k, fn in tl.items():
        fn()
        times[k] = []
    for _ in range(args.repeats if tl else 0):
        for k, fn in tl.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
        t = time.perf_counter()
        plain()
        times["plain HF forward"].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["plain HF forward"]
    n_points = len(lm.resolve(residual))
    print(f"{args.model}: batch {args.batch} x {args.tokens} tokens, {args.repeats} interleaved repeats, "
          f"{torch.get_num_threads()} threads; cached load {load_s:.2f} s")
    for k, v in med.items():
        extra = f"  ({n_points} points)" if "residual points" in k else ""
        print(f"  {k:<34} {v * 1000:8.1f} ms   {v / base:5.3f}x{extra}")
    return {"load_s": load_s, **{k: v / base for k, v in med.items()}}


def _transformerlens_variants(model: str, ids: torch.Tensor, lm) -> dict:
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        print("(TransformerLens not importable: no second baseline)")
        return {}
    from avec.models.load import BUNDLED, cached_dir

    if model not in BUNDLED:
        print("(TransformerLens baseline only for bundled models, booted from avec's float cache)")
        return {}
    bridge = TransformerBridge.boot_transformers(str(cached_dir(model)), device="cpu")
    names = {"hook_embed"} | {f"blocks.{l}.hook_resid_{p}" for l in range(lm.n_layers) for p in ("pre", "mid", "post")}
    _, tl_cache = bridge.run_with_cache(ids, names_filter=lambda n: n in names)
    ours = lm.run(ids, cache=["blocks.*.resid_post"]).cache.stack("resid_post")
    theirs = torch.stack([tl_cache[f"blocks.{l}.hook_resid_post"] for l in range(lm.n_layers)])
    print(f"TransformerLens {len(tl_cache)} residual points; max |avec - TL| resid_post = "
          f"{(ours - theirs).abs().max().item():.2e} (scale {ours.abs().max().item():.1f})")
    return {
        "TL bridge run_with_cache, residual points": lambda: bridge.run_with_cache(ids, names_filter=lambda n: n in names),
        "TL bridge run_with_cache, all hooks": lambda: bridge.run_with_cache(ids),
    }


if __name__ == "__main__":
    main()
