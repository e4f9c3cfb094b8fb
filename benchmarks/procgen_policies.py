"""Measure maze policies on held-out procgen levels and record the numbers in avec/maze/checkpoints/README.json.

    python benchmarks/procgen_policies.py procgen_region5 [region5 ...] [--n 500] [--seed-base 1500000000]

For each policy, on procgen levels with seeds from --seed-base (never used for training: training levels are
below 1e9), each number also per maze size:

* reach: greedy and sampled rollouts (500 steps, procgen's env) on the first --n levels with the cheese moved
  into the policy's top-right R x R square (its training distribution, ``train_procgen.training_levels``), on
  procgen's uniform sizes and on the policy's training size mix (``train_procgen.mix_reach``);
* behaviour: the original study's protocol on the first --n decision-square levels (cheese where procgen put
  it): how often sampled (and greedy) rollouts get the cheese, P(cheese) / P(top-right) at the decision
  square, and the logistic regression (``behaviour.behaviour_statistics(mazes=...)``);
* motivations and the cheese vector on the first --n off-region levels (decision square, cheese outside the
  R x R square): ``experiments.cheese_vector_stats`` (mean and median drop of P(cheese)).

A policy trained by ``avec maze train --backend procgen`` gets its training report (``<name>.json``) and
these numbers under its name; other policies (the avec-world ``region5``) get them under
``procgen_held_out`` of their entry."""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from avec.io import atomic_write_json
from avec.maze import procgen_backend as pb
from avec.maze.behaviour import ORIGINAL_AGENT, behaviour_statistics
from avec.maze.experiments import cheese_vector_stats
from avec.maze.policy import load_policy
from avec.maze.evaluate import training_size_power
from avec.maze.train_procgen import evaluate_by_size, mix_reach, training_levels

CKPT = Path(__file__).resolve().parents[1] / "avec" / "maze" / "checkpoints"
ORIGINAL = {"p_cheese_decision_square": 0.848, "p_top_right_decision_square": "~0.15", **ORIGINAL_AGENT}


def measure(policy, region: int, n: int, seed_base: int) -> dict:
    out = {"seed_base": seed_base, "region": region, "original_agent": ORIGINAL}
    t = time.perf_counter()
    train = training_levels(region, n, seed_base)
    g, _, _ = pb.rollout(policy, train, greedy=True)
    s, _, _ = pb.rollout(policy, train, greedy=False, rng=np.random.default_rng(seed_base))
    sizes = np.array([m.size for m in train])
    power = training_size_power(policy)
    out["training_distribution"] = {"levels": n, "reach_greedy": float(g.mean()), "reach_sampled": float(s.mean()),
                                    "reach_greedy_training_mix": mix_reach(sizes, g, power),
                                    "reach_sampled_training_mix": mix_reach(sizes, s, power),
                                    "training_mix_size_power": power,
                                    "by_size": evaluate_by_size(sizes, reach_greedy=g, reach_sampled=s),
                                    "seconds": round(time.perf_counter() - t, 1)}
    t = time.perf_counter()
    ds = pb.random_levels(n, seed_base, keep=lambda m: m.decision_square() is not None)
    bs = behaviour_statistics(policy, mazes=ds)
    greedy, _, _ = pb.rollout(policy, ds, greedy=True)
    f = bs.frame
    out["behaviour"] = bs.summary() | {
        "got_cheese_greedy": float(greedy.mean()), "last_seed": int(ds[-1].seed),
        "frac_top_right_wins": float((f["p_top_right"] > f["p_cheese"]).mean()),
        "by_size": evaluate_by_size(f["size"].to_numpy(), got_cheese_sampled=f["got_cheese"].to_numpy(),
                                    got_cheese_greedy=greedy, p_cheese=f["p_cheese"].to_numpy(),
                                    p_top_right=f["p_top_right"].to_numpy()),
        "seconds": round(time.perf_counter() - t, 1)}
    t = time.perf_counter()
    off = pb.off_region_levels(region, n, seed_base)
    cv = cheese_vector_stats(policy, region, mazes=off)
    drop = cv.p_cheese - cv.p_cheese_steered
    out["off_region"] = cv.summary() | {
        "last_seed": int(off[-1].seed),
        "by_size": evaluate_by_size(np.array([m.size for m in off]), p_cheese=cv.p_cheese, p_top_right=cv.p_top_right,
                                    p_cheese_drop=drop),
        "seconds": round(time.perf_counter() - t, 1)}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="+")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed-base", type=int, default=1_500_000_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--load-log", default=None,
                    help="a file of '<time> <contents of /proc/loadavg>' lines sampled while the policy trained: "
                    "its 1-minute load averages are summarised into training.load_average")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out_path = CKPT / "README.json"
    readme = json.loads(out_path.read_text())
    readme.setdefault("procgen_about", (
        "procgen_region*: trained on procgen 0.10.7's own levels and observations by the one "
        "command in 'command' (avec maze train --backend procgen = python -m avec.maze.train_procgen, from the repo "
        "root, OMP_NUM_THREADS=1, --threads 1): BC + DAgger from the BFS expert as region5 / region15, every "
        "picture rendered by procgen, the cheese moved into the maze's top-right R x R square of procgen levels "
        "with seeds in [1e6, 1e9), plus auxiliary losses on where the mouse, the cheese and the open floor are "
        "(a 1 x 1 conv head on block1, not part of the policy). training.train_seconds is wall-clock on a machine "
        "shared with other jobs (training.load_average), training.train_cpu_seconds the run's own CPU time "
        "(one thread: about the wall-clock on an idle core). procgen_held_out: benchmarks/procgen_policies.py on "
        "procgen levels from seed 1.5e9 (never trained on): reach on the first n levels with the cheese moved "
        "into the R x R square (500-step limit), the original study's behavioural statistics on the first n "
        "decision-square levels (cheese where procgen put it; got_cheese = sampled rollouts as in the study, "
        "got_cheese_greedy beside it), and the cheese vector on the first n off-region decision-square levels; "
        "each also per maze size. The avec-world policies' entries hold the same measurement under "
        "procgen_held_out where it was run."))
    for name in args.names:
        policy = load_policy(name)
        region = int(policy.metadata.get("region", 5))
        t = time.perf_counter()
        res = measure(policy, region, args.n, args.seed_base)
        res["seconds"] = round(time.perf_counter() - t, 1)
        print(name, json.dumps({k: v for k, v in res.items() if k != "original_agent"}, indent=1))
        if args.no_write:
            continue
        if (policy.metadata.get("config") or {}).get("backend") == "procgen":
            report = json.loads((CKPT / f"{name}.json").read_text())
            if args.load_log:
                rows = np.array([line.split()[:2] for line in Path(args.load_log).read_text().splitlines()], float)
                stamps, load = rows[:, 0], rows[:, 1]
                every = f"every {np.median(np.diff(stamps)):.0f} s" if len(stamps) > 1 else "sampled once"
                report["load_average"] = {"samples": int(len(load)), "min": float(load.min()),
                                          "mean": round(float(load.mean()), 2), "max": float(load.max()),
                                          "cores": 2, "note": f"1-minute load average of the machine, {every}"}
            entry = readme.setdefault(name, {})  # what is written by hand there (goals, diagnosis, tried) stays
            if "load_average" not in report and "load_average" in entry.get("training", {}):
                report["load_average"] = entry["training"]["load_average"]
            entry.update({"file": f"{name}.safetensors", "command": report.get("command"),
                          "width_scale": policy.scale, "parameters": sum(p.numel() for p in policy.parameters()),
                          "training": report, "procgen_held_out": res})
        else:
            readme.setdefault(name, {})["procgen_held_out"] = res
        atomic_write_json(out_path, readme)


if __name__ == "__main__":
    main()
