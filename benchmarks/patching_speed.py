"""Patching speed on SmolLM2: a resid_pre sweep over all layers x positions of a 16-token prompt.

    python benchmarks/patching_speed.py [--threads 1] [--chunk 32]

Times (1) the naive loop (one forward pass per patch, the core's plain Patch), (2) the batched sweep
(each batch row its own patch, chunked), (3) attribution patching of the same grid (one forward + one
backward), checks that (1) and (2) give the same values, and prints the ratios.

Measured (2026-11-21, 2 CPU cores shared with two other jobs, 1 thread, SmolLM2, 16 tokens, 480 patches):
naive loop 92.6 s; batched sweep 17.9 s = 5.2x (bit-identical values); attribution 0.69 s = 25.9x faster
than the batched sweep (134x than the loop; correlation 0.79 on resid_pre, 0.99 on the head grid);
TransformerLens 4.3 ``get_act_patch_resid_pre`` on its TransformerBridge (same float weights, run in a
separate venv beside torch 2.13) 135.4 s, i.e. ours is 7.6x faster, values agree to 1.2e-5 on logit
differences of scale 6. Where the speed comes from: the batch axis removes per-call overhead; keeping
only the last position's logits (what the metric reads) skips most of the unembedding; and each chunk
of cells starts at its first layer from the corrupted run's cached residual
(``LanguageModel.run(start_at_layer=...)``), skipping the layers a patch cannot change - before that
last step the sweep was 3.0x the loop.

Run it where TransformerLens is importable to get the peer comparison:
    /path/to/tl-venv/bin/python benchmarks/patching_speed.py --threads 1
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
    _transformerlens(args.model, lm, fast, t_fast, t_loop)


def _transformerlens(model: str, lm, fast, t_fast: float, t_loop: float) -> None:
    """TransformerLens's ``get_act_patch_resid_pre`` (one forward per patch) on its TransformerBridge,
    booted from the same float weights, same tokens and metric: values and time against ours."""
    try:
        from transformer_lens import patching
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        print("(TransformerLens not importable: no peer comparison; install it in a separate venv beside "
              "torch 2.13 and run this script there with avec on the path)")
        return
    from avec.models.load import BUNDLED, cached_dir

    if model not in BUNDLED:
        print("(TransformerLens comparison only for bundled models, booted from avec's float cache)")
        return
    bridge = TransformerBridge.boot_transformers(str(cached_dir(model)), device="cpu")
    clean, corrupt = lm.tokenize(CLEAN)[0], lm.tokenize(CORRUPT)[0]
    mary, john = lm.token_id(" Mary"), lm.token_id(" John")

    def metric(logits):
        return logits[0, -1, mary] - logits[0, -1, john]

    with torch.no_grad():
        _, clean_cache = bridge.run_with_cache(clean)
        t = time.perf_counter()
        theirs = patching.get_act_patch_resid_pre(bridge, corrupt, clean_cache, metric)
        t_tl = time.perf_counter() - t
    diff = (theirs.cpu() - fast.raw).abs().max().item()
    print(f"TransformerLens get_act_patch_resid_pre {t_tl:7.2f} s   (ours batched is {t_tl / t_fast:.1f}x faster; "
          f"our loop {t_loop:.2f} s); max |avec - TL| = {diff:.2e} on logit differences of scale "
          f"{fast.raw.abs().max().item():.2f}")


if __name__ == "__main__":
    main()
