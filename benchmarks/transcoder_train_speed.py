"""Transcoder training speed: avec's training step against the straightforward PyTorch step, in one process.

    python benchmarks/transcoder_train_speed.py [--kinds plt,clt] [--tokens 2048] [--steps 6] [--threads 1]

Shapes are SmolLM2's (30 layers, d_model 576): the per-layer set as shipped (``plt``: width 512, BatchTopK
k 32) and a cross-layer transcoder (``clt``: width 256 per layer, TopK k 16, each feature decoding to its own
and every later layer's MLP output). Inputs are random activations with per-layer scales (the cost depends on
the shapes and on k, not on what the activations mean).

avec's step: ``Transcoders.losses`` (features decoded through ``sparse_mm`` over the active features only, the
layers taken with ``unbind``), backward, the unit-decoder projection, Adam, renormalisation: what
``avec transcoder train`` runs. The baseline: the same parameters, the same activation function and the
same MSE written the way one writes it first in PyTorch: dense ``z[i] @ W_dec[i][:, j]`` for every (source,
target) pair, autograd for the rest. Before timing, both losses are computed on the same weights and batch
and must agree (float tolerance): the two steps compute the same thing.

The two run alternately, step by step, on copies of the same weights with their own Adam (so load changes hit
both alike); the first step of each is left out. Prints tokens/s of each and the ratio (median over steps).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch


def make(kind: str, n_layers: int = 30, d: int = 576, seed: int = 0):
    from avec.dictionaries.clt import layer_points
    from avec.dictionaries.clt import CrossLayerTranscoder as Transcoders

    torch.manual_seed(seed)
    if kind == "plt":
        return Transcoders(arch="batchtopk", k=32, d_in=d, d_sae=512, n_layers=n_layers, cross_layer=False,
                           **layer_points(n_layers, reads="mlp_in"))
    if kind == "clt":
        return Transcoders(arch="topk", k=16, d_in=d, d_sae=256, n_layers=n_layers, cross_layer=True,
                           **layer_points(n_layers, reads="mlp_in"))
    raise SystemExit(f"--kinds: unknown kind {kind!r}; allowed plt, clt")


def batch(n_layers: int, n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scale = torch.logspace(0, 1, n_layers)[:, None, None]  # layers differ in scale, as a model's do
    return torch.randn(n_layers, n, d, generator=g) * scale, torch.randn(n_layers, n, d, generator=g) * scale


def naive_mse(m, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The training MSE of ``Transcoders.losses``, dense and indexed (the baseline)."""
    from avec.dictionaries.sae import topk_over_batch, topk_per_row

    x_n = x * m.in_scale[:, None, None]
    y_n = y * m.out_scale[:, None, None]
    pre = torch.baddbmm(m.b_enc[:, None, :], x_n, m.W_enc)
    if m.cfg.arch == "topk":
        z = topk_per_row(pre, m.cfg.k)
    else:
        z = torch.stack([topk_over_batch(pre[l], m.cfg.k) for l in range(m.n_layers)])
    y_hat = []
    for l in range(m.n_layers):
        acc = m.b_dec[l]
        for i in m.sources(l):
            acc = acc + z[i] @ m.W_dec[i][:, m.targets(i).index(l)]
        y_hat.append(acc)
    per_layer = (torch.stack(y_hat) - y_n).pow(2).sum(-1).mean(-1)
    w = m.d_out / m.y_var if m.cfg.mse_weighting == "variance" else torch.ones_like(per_layer)
    return (w * per_layer).sum()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", default="plt,clt")
    p.add_argument("--tokens", type=int, default=2048, help="tokens per step")
    p.add_argument("--steps", type=int, default=6, help="timed steps of each (after one untimed)")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = {}
    for kind in a.kinds.split(","):
        ours = make(kind)
        x, y = batch(ours.n_layers, a.tokens, ours.d_in, 0)
        ours.init_from_sample((x, y))
        theirs = copy.deepcopy(ours)
        ours.train(), theirs.train()
        with torch.no_grad():
            got, want = float(ours.losses((x, y)).mse), float(naive_mse(theirs, x, y))
        assert abs(got - want) <= 1e-4 * abs(want), (kind, got, want)
        opt_ours = torch.optim.Adam(ours.parameters(), lr=1e-4)
        opt_theirs = torch.optim.Adam(theirs.parameters(), lr=1e-4)

        def step_ours(xb, yb):
            res = ours.losses((xb, yb))
            res.loss.backward()
            ours.before_step()
            opt_ours.step()
            opt_ours.zero_grad(set_to_none=True)
            ours.after_step()

        def step_theirs(xb, yb):
            naive_mse(theirs, xb, yb).backward()
            opt_theirs.step()
            opt_theirs.zero_grad(set_to_none=True)

        times = {"avec": [], "baseline": []}
        for s in range(a.steps + 1):
            xb, yb = batch(ours.n_layers, a.tokens, ours.d_in, s + 1)
            for name, fn in (("avec", step_ours), ("baseline", step_theirs)):
                t = time.perf_counter()
                fn(xb, yb)
                if s:
                    times[name].append(time.perf_counter() - t)
        ratio = statistics.median(b / o for o, b in zip(times["avec"], times["baseline"]))
        row = {"loss_check": f"{got:.6g} vs {want:.6g}",
               "avec_tokens_per_s": a.tokens / statistics.median(times["avec"]),
               "baseline_tokens_per_s": a.tokens / statistics.median(times["baseline"]),
               "speedup": ratio}
        out[kind] = row
        print(f"{kind} ({ours.n_layers} layers, width {ours.d_sae}, k {ours.cfg.k}, {a.tokens} tokens a step, "
              f"{a.threads} thread(s)): avec {row['avec_tokens_per_s']:,.0f} tokens/s, baseline "
              f"{row['baseline_tokens_per_s']:,.0f} tokens/s, avec {ratio:.2f}x faster (median over {a.steps} "
              f"step pairs; losses {row['loss_check']})", flush=True)
    return out


if __name__ == "__main__":
    main()
