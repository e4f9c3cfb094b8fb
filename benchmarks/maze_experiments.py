"""Measure the shipped maze policies and write avec/maze/checkpoints/README.json.

    python benchmarks/maze_experiments.py region5 region15

For each policy: its training report (<name>.json, written by `avec maze train`), then the steering
experiments on 100 off-region test mazes with decision squares, the channel-retargeting experiment,
the original study's behavioural statistics on 1000 decision-square mazes, and timings. Figures go to /tmp/maze_figures/ (not shipped)."""

import json
import sys
import time
from pathlib import Path

import torch

from avec.io import atomic_write_json
from avec.maze.behaviour import ORIGINAL_AGENT, behaviour_statistics
from avec.maze.evaluate import off_region_mazes
from avec.maze.experiments import cheese_vector, full_report
from avec.maze.fields import vector_field
from avec.maze.policy import load_policy
from avec.maze.retarget import retarget_experiment

CKPT = Path(__file__).resolve().parents[1] / "avec" / "maze" / "checkpoints"
FIGS = Path("/tmp/maze_figures")

# The exact command that made each shipped checkpoint is recorded by `avec maze train` in its report
# (<name>.json, "command"); run it from the repo root (`python -m avec.maze.train ARGS` is
# `avec maze train ARGS`). Each policy is trained from scratch by that one command.


def measure(name: str) -> dict:
    policy = load_policy(name)
    region = int(policy.metadata["region"])
    train_report = json.loads((CKPT / f"{name}.json").read_text())
    t = time.perf_counter()
    exps = full_report(policy, region, n=100)
    exps["seconds"] = round(time.perf_counter() - t, 1)
    mazes = off_region_mazes(region, 100)
    # channels and scale from calibration mazes (seeds from 2e9); reported on the 100 test mazes
    t = time.perf_counter()
    rt = retarget_experiment(policy, mazes)
    exps["retarget"] = rt.summary() | {"seconds": round(time.perf_counter() - t, 1),
                                       "by_distance": rt.by_distance().round(4).to_dict("records")}
    exps["retarget_naive_fixed_5"] = retarget_experiment(policy, mazes, channels=rt.channels, value=5.0,
                                                         use_offsets=False, remove_cheese=False,
                                                         reference=False).summary()
    # the original study's protocol: decision-square mazes, cheese anywhere, sampled rollouts
    t = time.perf_counter()
    bs = behaviour_statistics(policy, 1000)
    exps["behaviour"] = bs.summary() | {"seconds": round(time.perf_counter() - t, 1),
                                        "original_agent": ORIGINAL_AGENT,
                                        "by_d_euclid_cheese_top_right": bs.by_bins("d_euclid_cheese_top_right")
                                        .reset_index().astype({"bin": str}).round(4).to_dict("records")}
    FIGS.mkdir(exist_ok=True)
    bs.plot().savefig(FIGS / f"{name}_behaviour.png", dpi=80)
    m = mazes[0]
    f0 = vector_field(policy, m)
    f1 = vector_field(policy, m, steer=-1 * cheese_vector(policy, m), label="cheese vector x -1")
    f1.plot(compare_to=f0).savefig(FIGS / f"{name}_cheese_field.png", dpi=80)
    return {"file": f"{name}.safetensors", "command": train_report.get("command"),
            "width_scale": policy.scale,
            "parameters": sum(p.numel() for p in policy.parameters()),
            "training": train_report, "experiments": exps}


def main(names):
    torch.set_num_threads(1)
    out_path = CKPT / "README.json"
    readme = json.loads(out_path.read_text()) if out_path.exists() else {}
    readme["about"] = (
        "Maze policies trained by behaviour cloning of a BFS shortest-path expert plus DAgger "
        "(avec/maze/train.py), cheese in the maze's top-right R x R square during training; --pull-frac 0.5 "
        "draws half the non-path fresh states where the moves toward the cheese and the top-right differ. Each policy is "
        "trained from scratch by the one command in its 'command' field, run from the repo root with "
        "OMP_NUM_THREADS=2 (--threads 2) on an otherwise idle 2-core AMD EPYC (avx512_bf16), one policy after the "
        "other; training.resumed_at lists the steps where a killed run was resumed ([] = one uninterrupted run); "
        "bfloat16 autocast + channels_last for speed, float32 weights shipped. "
        "training.train_seconds excludes the final evaluation (eval_seconds). "
        "training.eval: reach rates over 200 training-distribution mazes (seeds 1e9..), 500-step limit; "
        "decision_square: P(first step toward cheese / toward the maze's top-right cell) on 200 mazes "
        "with the cheese outside the R x R square. experiments: 100 such mazes, vectors at "
        "embedder.block2.res1.resadd_out computed with the mouse at the start. "
        "Greedy = the most likely of the five moves; sampled = a procgen action drawn from the policy "
        "(how procgen agents act). "
        "Regenerate the numbers with: python benchmarks/maze_experiments.py " + " ".join(names))
    for name in names:
        readme[name] = measure(name)
        print(name, json.dumps(readme[name]["training"].get("eval"), indent=1))
        print(json.dumps({k: v for k, v in readme[name]["experiments"].items() if "sweep" not in k}, indent=1))
    atomic_write_json(out_path, readme)


if __name__ == "__main__":
    main(sys.argv[1:] or ["region5", "region15"])
