"""Env steps per second of avec's procgen rollouts against procgen's raw vectorised env.

    python benchmarks/procgen_rollout.py [threads]   (torch threads, 1 by default)

* raw: ``ProcgenGym3Env(num=64)``, random actions, ``act`` + ``observe`` (no policy): procgen alone.
* rollout, no network: ``procgen_backend.rollout`` with a policy that returns constant logits (actions
  sampled from them): what the wrapper adds (state writing, float conversion, sampling, bookkeeping).
* rollout, region5: the same with the shipped policy's forward pass on every observation.
* pure-Python world: ``evaluate.rollout`` of region5 on as many pure-Python mazes (its own renderer).

Levels and mazes are drawn before the clock starts. Episodes that finish early drop out of the batch,
so each rollout's rate is its env steps (summed over mazes) per second of wall time."""

import sys
import time

import numpy as np
import torch

from avec.maze import procgen_backend as pb
from avec.maze.evaluate import rollout
from avec.maze.policy import PolicyOutput, load_policy
from avec.maze.world import Maze

N = 64


class Constant(torch.nn.Module):
    def forward(self, obs):
        return PolicyOutput(torch.zeros(len(obs), 15), torch.zeros(len(obs)))


def raw(steps=400) -> float:
    env = pb.make_env(N)
    acts = np.random.default_rng(0).integers(0, 15, (steps, N)).astype(np.int32)
    env.observe()
    t = time.perf_counter()
    for a in acts:
        env.act(a)
        env.observe()
    return steps * N / (time.perf_counter() - t)


def ours(policy, mazes, max_steps) -> tuple[float, float]:
    t = time.perf_counter()
    reached, steps, _ = pb.rollout(policy, mazes, max_steps=max_steps, rng=np.random.default_rng(0))
    return steps.sum() / (time.perf_counter() - t), reached.mean()


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    mazes = pb.levels(range(10_000, 10_000 + N))
    plain = [Maze.from_seed(10_000 + i) for i in range(N)]
    region5 = load_policy("region5")
    print(f"raw procgen env, {N} envs, random actions: {raw():,.0f} env steps/s")
    rate, _ = ours(Constant(), mazes, 400)
    print(f"procgen_backend.rollout, constant logits:   {rate:,.0f} env steps/s")
    rate, got = ours(region5, mazes, 500)
    print(f"procgen_backend.rollout, region5 policy:    {rate:,.0f} env steps/s (reached {got:.2f})")
    t = time.perf_counter()
    reached, steps, _ = rollout(region5, plain, 500, rng=np.random.default_rng(0))
    print(f"pure-Python evaluate.rollout, region5:      {steps.sum() / (time.perf_counter() - t):,.0f} env steps/s "
          f"(reached {reached.mean():.2f})")


if __name__ == "__main__":
    main()
