"""Probing speed on SmolLM2: all 30 layers at the last token of 1,000 true/false statements.

    python benchmarks/probe_speed.py [--threads 1] [--n 1000] [--batch 32]

Collects ``blocks.*.resid_post`` at the last real token only (one batched pass per chunk, prompts sorted
by length), then fits a logistic probe at every layer (one batched L-BFGS). Reports wall time and peak
resident memory of each phase (VmHWM, reset before each phase), and the size of what is kept.

Measured (2026-11, 2 shared CPU cores under load from other jobs, 1 thread, SmolLM2-135M, 1,000 statements
of 7-17 tokens, batch 32): collection 50-57 s (~19 statements/s; 30 layers x 1000 x 576 float32 = 66 MB
kept), peak RSS +123 MB over the model after a warm-up pass (the weights are memory-mapped: the first
forward pass alone pages in ~510 MB, which a cold measurement would wrongly charge to probing); passing
``logits_to_keep=1`` cut the collection peak by ~165 MB (no [batch, pos, vocab] logits). Fitting 30
logistic probes (one batched L-BFGS, float64): 13 s, +459 MB. Best layer 14, test accuracy 0.66 on the
mixed truth set (capitals, elements, arithmetic; subjects kept on one side of the split).
"""

from __future__ import annotations

import argparse
import time

import torch


def _rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    try:  # Linux: writing 5 resets VmHWM to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import avec
    from avec.data.labelled import load
    from avec.probes import collect, fit_probes

    t = time.perf_counter()
    lm = avec.load("smollm2")
    print(f"load: {time.perf_counter() - t:.1f} s, RSS {_rss_mb():.0f} MB")
    data = load("truth").sample(args.n, seed=0)
    lengths = [len(lm.to_tokens(s)) for s in data.texts]
    print(f"{len(data)} statements, {min(lengths)}-{max(lengths)} tokens (mean {sum(lengths) / len(lengths):.1f})")

    with torch.no_grad():  # page in the (memory-mapped) weights first, so the baseline counts them
        lm.run(list(data.texts[:32]))
    print(f"after a warm-up forward pass: RSS {_rss_mb():.0f} MB")
    base = _rss_mb()
    _reset_peak()
    acts = collect(lm, data, batch_size=args.batch)
    peak = _rss_mb("VmHWM")
    kept = acts.x.numel() * acts.x.element_size() / 2 ** 20
    print(f"collect: {acts.seconds:.1f} s ({len(data) / acts.seconds:.0f} statements/s) for {len(acts.layers)} layers; "
          f"kept {list(acts.x.shape)} = {kept:.0f} MB; peak RSS {peak:.0f} MB (+{peak - base:.0f} MB over the loaded model)")

    base = _rss_mb()
    _reset_peak()
    t = time.perf_counter()
    res = fit_probes(acts, data)
    took = time.perf_counter() - t
    peak = _rss_mb("VmHWM")
    print(f"fit 30 logistic probes: {took:.1f} s; peak RSS {peak:.0f} MB (+{peak - base:.0f} MB)")
    print(f"best layer {res.best_layer}: test accuracy {float(res.test_score.max()):.3f} (n_test={res.n_test})")
    print(res.to_frame().round(3).to_string(index=False))


if __name__ == "__main__":
    main()
