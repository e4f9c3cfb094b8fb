"""Attribution graph speed: a 16-token prompt on SmolLM2 through a cross-layer transcoder.

    python benchmarks/attribution_speed.py [--transcoders FILE] [--width 2048] [--k 16] [--batch-size 32]
                                           [--max-features N] [--threads 2]

Without ``--transcoders`` a CLT with random weights of the given width and TopK ``k`` over all 30 layers
stands in (the cost depends on the number of active features, ``30 * 16 * k``, not on what they mean).
Prints the time of the graph (every active feature attributed unless ``--max-features``), the seconds per
attributed node, the peak resident memory, the graph's size, and the time of a plain forward pass of the
same prompt in the same process as the baseline. Goal (the issue): under 60 s on 2 cores.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transcoders", default=None)
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-features", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt", default="Fact: the capital of the state containing Dallas is the city of Austin, and")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    import avec
    from avec.circuits import attribute
    from avec.dictionaries.clt import CrossLayerTranscoder, layer_points
    from avec.app.cli.transcoders import _load_any

    lm = avec.load("smollm2")
    if args.transcoders:
        clt = _load_any(args.transcoders, lm)
    else:
        L = lm.n_layers
        clt = CrossLayerTranscoder(arch="topk", k=args.k, d_in=lm.d_model, d_sae=args.width, n_layers=L,
                                   **layer_points(L, reads="mlp_in"))
    ids = lm.tokenize(args.prompt)[0][:, :16]
    with torch.no_grad():
        lm.hf(input_ids=ids)
        t = time.perf_counter()
        for _ in range(5):
            lm.hf(input_ids=ids)
        forward = (time.perf_counter() - t) / 5
    t = time.perf_counter()
    g = attribute(lm, clt, ids, batch_size=args.batch_size, max_feature_nodes=args.max_features, progress=True)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"seconds": seconds, "per_node_ms": 1000 * seconds / (g.n_features + g.n_logits), "peak_mb": peak,
           "active_features": g.meta["n_active_features"], "feature_nodes": g.n_features, "edges": int(g.targets.numel()),
           "plain_forward_ms": 1000 * forward, "ratio_to_forward": seconds / forward}
    print(f"SmolLM2, {ids.shape[1]} tokens, {args.threads} threads; CLT {'from ' + args.transcoders if args.transcoders else f'random, width {args.width}, k {args.k}'}")
    for k, v in out.items():
        print(f"  {k:>18}: {v:,.2f}" if isinstance(v, float) else f"  {k:>18}: {v:,}")
    return out


if __name__ == "__main__":
    main()
