"""Measure the shipped maze policies and write avec/maze/checkpoints/README.json.

    python benchmarks/maze_experiments.py region5 region15

For each policy: its training report (<name>.json, written by `avec maze train`), then the steering
experiments on 100 off-region test mazes with decision squares, the channel-retargeting experiment,
and timings. Figures go to /tmp/maze_figures/ (not shipped)."""

import json
import sys
import time
from pathlib import Path

import torch

from avec.maze.evaluate import off_region_mazes
from avec.maze.experiments import cheese_vector, full_report
from avec.maze.fields import vector_field
from avec.io import atomic_write_json
from avec.maze.policy import load_policy
from avec.maze.retarget import cheese_channels, retarget_experiment

CKPT = Path(__file__).resolve().parents[1] / "avec" / "maze" / "checkpoints"
FIGS = Path("/tmp/maze_figures")

# The exact commands that made the shipped checkpoints (run from the repo root, 1 CPU thread each;
# `python -m avec.maze.train ARGS` is `avec maze train ARGS`). region5 was trained in two stages:
# 40 min from scratch (written to region5.safetensors, then renamed region5_stage1.*), then a 20 min
# fine-tune; region15 is a 35 min fine-tune of the final region5 on R = 15 data.
COMMANDS = {
    "region5_stage1": ["python -m avec.maze.train --region 5 --out avec/maze/checkpoints/region5.safetensors --minutes 40",
                       "mv region5.{safetensors,json,curves.csv} region5_stage1.*  (in avec/maze/checkpoints)"],
    "region5": ["python -m avec.maze.train --region 5 --out avec/maze/checkpoints/region5.safetensors --minutes 20 "
                "--lr 5e-4 --seed 1 --init-from avec/maze/checkpoints/region5_stage1.safetensors"],
    "region15": ["python -m avec.maze.train --region 15 --out avec/maze/checkpoints/region15.safetensors --minutes 35 "
                 "--lr 5e-4 --seed 2 --init-from avec/maze/checkpoints/region5.safetensors"],
}


def measure(name: str) -> dict:
    policy = load_policy(name)
    region = int(policy.metadata["region"])
    train_report = json.loads((CKPT / f"{name}.json").read_text())
    t = time.perf_counter()
    exps = full_report(policy, region, n=100)
    exps["seconds"] = round(time.perf_counter() - t, 1)
    mazes = off_region_mazes(region, 100)
    ch, _ = cheese_channels(policy, mazes[:50])
    held_out = off_region_mazes(region, 50, seed_base=3_000_000_000)
    exps["retarget"] = retarget_experiment(policy, held_out, channels=ch).summary()
    FIGS.mkdir(exist_ok=True)
    m = mazes[0]
    f0 = vector_field(policy, m)
    f1 = vector_field(policy, m, steer=-1 * cheese_vector(policy, m), label="cheese vector x -1")
    f1.plot(compare_to=f0).savefig(FIGS / f"{name}_cheese_field.png", dpi=80)
    stages = [json.loads((CKPT / f"{n}.json").read_text()) for n in ("region5_stage1",) if name == "region5"]
    return {"file": f"{name}.safetensors", "commands": COMMANDS.get(name), "earlier_stages": stages,
            "width_scale": policy.scale,
            "parameters": sum(p.numel() for p in policy.parameters()),
            "training": train_report, "experiments": exps}


def main(names):
    torch.set_num_threads(1)
    out_path = CKPT / "README.json"
    readme = json.loads(out_path.read_text()) if out_path.exists() else {}
    readme.setdefault("about", (
        "Maze policies trained by behaviour cloning of a BFS shortest-path expert plus DAgger "
        "(avec/maze/train.py), cheese in the maze's top-right R x R square during training. "
        "training.eval: reach rates over 200 training-distribution mazes (seeds 1e9..), 500-step limit; "
        "decision_square: P(first step toward cheese / toward the maze's top-right cell) on 200 mazes "
        "with the cheese outside the R x R square. experiments: 100 such mazes, vectors at "
        "embedder.block2.res1.resadd_out computed with the mouse at the start. "
        "Greedy = the most likely of the five moves, except in region5_stage1's own eval, which took "
        "the argmax over the 15 procgen actions (biased against LEFT/RIGHT/NOOP, which own 3-7 actions). "
        "Regenerate the numbers with: python benchmarks/maze_experiments.py " + " ".join(names)))
    for name in names:
        readme[name] = measure(name)
        print(name, json.dumps(readme[name]["training"].get("eval"), indent=1))
        print(json.dumps({k: v for k, v in readme[name]["experiments"].items() if "sweep" not in k}, indent=1))
    atomic_write_json(out_path, readme)


if __name__ == "__main__":
    main(sys.argv[1:] or ["region5", "region15"])
