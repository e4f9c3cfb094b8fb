"""Throughput of the activation store against the plain Hugging Face forward over the same contexts.

    python benchmarks/store_speed.py [--model smollm2] [--context 128] [--batch 4] [--batches 2] [--repeats 5]

One process, the same contexts (the bundled reference paragraphs, repeated) for every variant,
repeats interleaved, medians. Variants, each over ``batches`` forward batches of ``batch`` contexts:

  plain HF forward           torch.no_grad, model(input_ids, logits_to_keep=1): the work the store needs
  plain HF, full logits      the same with every position's logits (what a naive loop would pay)
  store forward              ``store.activations(ids)``: the core run, the cache, special tokens dropped
  store end to end           iterating an ``ActivationStore`` from the documents: tokenising, forward,
                             dropping, mixing buffer, batches
  plain HF, layers 0..L      the forward stopped after the last layer the store reads (the benchmark
                             swaps the later layers out: a reference for the store's ``stop_early`` run)

for one middle layer (``blocks.12.resid_post``) and for several hook points. Goal: store / plain <= 1.10x.

Measured 2026-11-30 (SmolLM2, 2 CPU threads, 4 x 128-token contexts x 2 batches, 3 repeats), with the
store's forward stopping once its last point is recorded (``run(..., stop_early=True)``): store forward
0.46x the plain forward (one point at layer 12; the forward cut after layer 12 by hand: 0.49x) and 0.63x
for four points up to layer 18 (cut by hand: 0.64x); end to end 0.47x / 0.66x. Before ``stop_early``
the store ran every layer: 1.04x / 1.02x. A profile of ``store.activations`` shows only the HF model's
own ops: avec's hooks, the special-token mask and the copy out are below 1% of the time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager

import torch


@contextmanager
def _only_layers(lm, last: int):
    """The HF model's decoder layers 0..last only, for this block (benchmark estimate of stop_at)."""
    parent = lm.hf.model
    full = parent.layers
    parent.layers = torch.nn.ModuleList(list(full)[: last + 1])
    try:
        yield
    finally:
        parent.layers = full


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import avec
    from avec.data import reference_texts
    from avec.dictionaries.contexts import batch_contexts, iter_contexts
    from avec.dictionaries.store import ActivationStore

    lm = avec.load(args.model)
    n_ctx = args.batch * args.batches
    docs = reference_texts() * (1 + n_ctx * args.context // 2000)
    settings = {
        "one middle layer": ["blocks.12.resid_post"],
        "several": ["blocks.6.resid_post", "blocks.12.resid_post", "blocks.12.mlp_out", "blocks.18.resid_post"],
    }
    results = {}
    for label, hooks in settings.items():
        store_kw = dict(context=args.context, batch_contexts=args.batch, max_tokens=n_ctx * args.context,
                        batch_tokens=512, buffer_tokens=4096, progress=False)
        probe = ActivationStore(lm, hooks, docs, **store_kw)
        batches = list(batch_contexts(iter_contexts(docs, lm.tokenizer, probe.rule), args.batch))[: args.batches]
        last = max(lm.site(h).layer for h in probe.hooks)
        n_tokens = sum(b.numel() for b in batches)

        def plain(keep=1):
            with torch.no_grad():
                for ids in batches:
                    lm.hf(input_ids=ids, use_cache=False, logits_to_keep=keep)

        def truncated():
            with _only_layers(lm, last):
                plain()

        def store_forward():
            for ids in batches:
                probe.activations(ids)

        def store_end_to_end():
            for _ in ActivationStore(lm, hooks, docs, **store_kw):
                pass

        variants = {"plain HF forward": plain, "plain HF, full logits": lambda: plain(0),
                    "store forward": store_forward, "store end to end": store_end_to_end,
                    f"plain HF, layers 0..{last}": truncated}
        times = {k: [] for k in variants}
        for fn in variants.values():
            fn()
        for _ in range(args.repeats):  # interleaved: drifting machine load hits every variant alike
            for k, fn in variants.items():
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        base = med["plain HF forward"]
        print(f"{args.model}, {label} {probe.hooks}: {args.batches} batches x {args.batch} contexts x "
              f"{args.context} tokens, {args.repeats} interleaved repeats, {torch.get_num_threads()} threads")
        for k, v in med.items():
            print(f"  {k:<26} {n_tokens / v:9.0f} tokens/s   {v / base:5.3f}x")
        results[label] = {k: v / base for k, v in med.items()}
    return results


if __name__ == "__main__":
    main()
