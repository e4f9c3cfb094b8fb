"""Attribution graph speed on SmolLM2: time and peak memory against prompt length.

    python benchmarks/attribution_speed.py [--transcoders FILE | --shipped NAME] [--width 2048] [--k 16]
                                           [--tokens 16,64,256] [--max-features N] [--batch-size 32] [--threads 2]

Without ``--transcoders`` / ``--shipped`` a CLT with random weights of the given width and TopK ``k`` over all
30 layers stands in (the cost depends on the number of active features, ``30 * n_tokens * k``, not on what they
mean). ``--shipped smollm2-plt-mlp-batchtopk-512``: the per-layer set shipped with avec (prompts start with the
BOS it was trained after). For each prompt length (the first tokens of a fixed text), in increasing order:
the time of the graph (every active feature attributed unless ``--max-features``; prompts whose dense edge
rows would pass ``--max-memory-gb`` get the largest budget that fits), the milliseconds per attributed node,
the peak resident memory of the process so far (lengths run in increasing order, so it is this length's),
the graph's size, and the time of a plain forward pass of the same prompt in the same process as the
baseline. Goal (the issue): a 16-token prompt under 60 s on 2 cores.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch


# a fixed text (not from the training corpus) whose first n tokens are the prompts
TEXT = ("Fact: the capital of the state containing Dallas is the city of Austin, and the largest city in the state "
        "is Houston. The river that flows past the town was once used to carry timber down to the coast, where the "
        "mills cut it into planks for ships. In the spring the farmers plant cotton and sorghum, and in the autumn "
        "they bring the harvest to the markets in the county seat. The old railway station has been turned into a "
        "museum that tells the story of the cattle drives, the oil boom and the families who settled the plains. "
        "Visitors can walk through the restored carriages, read the letters the settlers sent home, and see the "
        "tools they used to build their houses, dig their wells and mend their fences. On weekends a brass band "
        "plays in the square, children buy ice cream from a cart, and the library opens its doors for a reading "
        "of stories about the early days, when the nearest doctor lived a day's ride away and news arrived by "
        "telegraph. The town council meets on the first Monday of each month to decide on roads, schools, water "
        "and the budget for the annual fair, which draws crowds from every county around. Last year the fair had "
        "a rodeo, a pie contest, a parade of tractors and a dance that lasted until midnight, and the money it "
        "raised paid for new books, a roof for the school gym and lights along the path by the river, where "
        "people walk their dogs in the evening and watch the herons fish in the shallows below the old bridge.")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transcoders", default=None)
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-features", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shipped", default=None)
    p.add_argument("--tokens", default="16", help="comma-separated prompt lengths")
    p.add_argument("--max-memory-gb", type=float, default=8.0)
    p.add_argument("--prompt", default=TEXT)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    import avec
    from avec.circuits import attribute
    from avec.dictionaries.clt import CrossLayerTranscoder, layer_points
    from avec.app.cli.transcoders import _load_any

    lm = avec.load("smollm2")
    if args.shipped:
        from avec.dictionaries.shipped import load_shipped

        clt = load_shipped(args.shipped)
    elif args.transcoders:
        clt = _load_any(args.transcoders, lm)
    else:
        L = lm.n_layers
        clt = CrossLayerTranscoder(arch="topk", k=args.k, d_in=lm.d_model, d_sae=args.width, n_layers=L,
                                   **layer_points(L, reads="mlp_in"))
    text = lm.tokenize(args.prompt)[0]
    bos = getattr(clt.cfg, "bos", None)
    what = (f"shipped {args.shipped}" if args.shipped else f"from {args.transcoders}" if args.transcoders
            else f"random CLT, width {args.width}, k {args.k}")
    results = []
    for n_tok in sorted(int(x) for x in args.tokens.split(",")):
        if text.shape[1] < n_tok:
            raise SystemExit(f"the prompt has {text.shape[1]} tokens, fewer than {n_tok}")
        ids = text[:, :n_tok] if bos is None else torch.cat([torch.tensor([[bos]]), text[:, :n_tok - 1]], 1)
        with torch.no_grad():
            lm.hf(input_ids=ids)
            t = time.perf_counter()
            for _ in range(5):
                lm.hf(input_ids=ids)
            forward = (time.perf_counter() - t) / 5
        budget = args.max_features
        for attempt in range(2):
            try:
                t = time.perf_counter()
                g = attribute(lm, clt, ids, batch_size=args.batch_size, max_feature_nodes=budget, progress=True,
                              max_memory_gb=args.max_memory_gb)
                break
            except ValueError as e:  # too big: the largest budget that fits, as the message says
                import re

                m = re.search(r"max_feature_nodes <= ([\d,]+) fits", str(e))
                if attempt or not m:
                    raise
                budget = int(m.group(1).replace(",", ""))
        seconds = time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out = {"tokens": n_tok, "seconds": seconds, "per_node_ms": 1000 * seconds / (g.n_features + g.n_logits),
               "peak_mb": peak, "active_features": g.meta["n_active_features"], "feature_nodes": g.n_features,
               "edges": int(g.targets.numel()), "plain_forward_ms": 1000 * forward, "ratio_to_forward": seconds / forward}
        results.append(out)
        print(f"SmolLM2, {n_tok} tokens, {args.threads} threads; {what}")
        for k, v in out.items():
            print(f"  {k:>18}: {v:,.2f}" if isinstance(v, float) else f"  {k:>18}: {v:,}")
    out = results[-1] if len(results) == 1 else {"lengths": results}
    return out


if __name__ == "__main__":
    main()
