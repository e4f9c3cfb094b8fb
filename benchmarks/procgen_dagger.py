"""The procgen trainer's DAgger recorder against reading the mouse back from procgen's state every step.

    python benchmarks/procgen_dagger.py [threads]   (torch threads, 2 by default)

* ours: ``train_procgen.rollout_record``, which tracks the mouse's cell and facing from the actions
  (``env.move`` on the level's grid) and runs the greedy and sampled mazes in one pass of the env;
* baseline: ``procgen_backend.rollout(record=True)``, which reads every slot's state with ``get_state`` and
  parses it each step (how the DAgger recorder found the mouse until session 17), in one pass of 64 mazes, and
  as a DAgger round ran until then: two passes of 32 mazes each (greedy, then sampled) in the 64-slot env.

Both roll the shipped ``procgen_region5`` out greedily (no sampling, so both take the same actions) for at most
200 steps (the trainer's ``dagger_steps``) on the same 64 training-distribution levels, in the same process. The
visited cells must be identical, in the same order; the ratio is the baseline's median seconds over ours."""

import sys

import numpy as np
import torch

from _timing import median_time
from avec.maze import procgen_backend as pb
from avec.maze.policy import load_policy
from avec.maze.train_procgen import rollout_record, training_levels


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    policy = load_policy("procgen_region5")
    mazes = training_levels(5, 64, seed_base=2_000_000)  # training-distribution levels, not the held-out seeds
    _, _, ours = rollout_record(policy, mazes, 200, greedy=True, rng=np.random.default_rng(0))
    _, _, theirs = pb.rollout(policy, mazes, 200, greedy=True, record=True)
    theirs = np.array(theirs, np.int64).reshape(-1, 3)
    if not np.array_equal(ours[:, :3], theirs):
        raise SystemExit(f"the tracked visits differ from procgen's own state ({len(ours)} vs {len(theirs)} states)")
    t_ours = median_time(lambda: rollout_record(policy, mazes, 200, greedy=True, rng=np.random.default_rng(0)), 3)
    t_base = median_time(lambda: pb.rollout(policy, mazes, 200, greedy=True, record=True), 3)
    t_halves = median_time(lambda: [pb.rollout(policy, half, 200, greedy=True, record=True)
                                    for half in (mazes[:32], mazes[32:])], 3)
    print(f"{len(ours):,} states visited by 64 greedy rollouts, identical in both")
    print(f"baseline, get_state + parse every step: {t_base:.2f} s ({len(ours) / t_base:,.0f} states/s)")
    print(f"rollout_record, tracked:                {t_ours:.2f} s ({len(ours) / t_ours:,.0f} states/s)")
    print(f"baseline as two passes of 32:           {t_halves:.2f} s")
    print(f"ratio baseline / ours: {t_base / t_ours:.2f}x; two passes / ours: {t_halves / t_ours:.2f}x")


if __name__ == "__main__":
    main()
