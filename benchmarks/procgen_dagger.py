"""The procgen trainer's DAgger recorder against reading the mouse back from procgen's state every step.

    python benchmarks/procgen_dagger.py [threads]   (torch threads, 2 by default)

* ours: ``train_procgen.rollout_record`` (``procgen_backend.run_episodes``), which tracks the mouse's cell and
  facing from the actions (``env.move`` on the level's grid) and runs the greedy and sampled mazes in one pass
  of the env;
* baseline: the same loop reading every slot's state with ``get_state`` and parsing it each step (how the
  DAgger recorder found the mouse until session 17; :func:`parse_every_step` below), in one pass of 64 mazes,
  and as a DAgger round ran until then: two passes of 32 mazes each (greedy, then sampled) in the 64-slot env.

Both roll the shipped ``procgen_region5`` out greedily (no sampling, so both take the same actions) for at most
200 steps (the trainer's ``dagger_steps``) on the same 64 training-distribution levels, in the same process. The
visited cells must be identical, in the same order; the ratio is the baseline's median seconds over ours."""

import sys

import numpy as np
import torch

from _timing import median_time
from avec.maze import procgen_backend as pb
from avec.maze.env import choose_actions
from avec.maze.policy import load_policy
from avec.maze.procgen_state import parse
from avec.maze.render import to_tensor
from avec.maze.train_procgen import rollout_record, training_levels


@torch.no_grad()
def parse_every_step(policy, mazes, max_steps: int) -> list[tuple[int, int, int]]:
    """Greedy rollouts of ``mazes`` (at most 64) that read each live slot's mouse from procgen's state every
    step: the (maze index, row, col) of every state the policy acted in, each step's live slots in slot order."""
    env, n = pb._env(pb.POOL), len(mazes)
    states = [m.state_bytes(restart=True) for m in mazes]
    env.callmethod("set_state", states + states[:1] * (pb.POOL - n))
    obs, visited = env.observe()[1]["rgb"], []
    done = np.arange(pb.POOL) >= n  # padding slots
    for _ in range(max_steps):
        live = np.flatnonzero(~done)
        if not len(live):
            break
        cells = [parse(b).mouse for b in env.callmethod("get_state")]
        visited.extend((int(j), *cells[j]) for j in live)
        actions = np.full(pb.POOL, pb._NOOP, np.int32)
        actions[live] = choose_actions(policy(to_tensor(obs[live])).logits, np.ones(len(live), bool), None)
        env.act(actions)
        _, ob, first = env.observe()
        obs = ob["rgb"]
        done[live] = first[live]
    return visited


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    policy = load_policy("procgen_region5")
    mazes = training_levels(5, 64, seed_base=2_000_000)  # training-distribution levels, not the held-out seeds
    _, _, ours = rollout_record(policy, mazes, 200, greedy=True, rng=np.random.default_rng(0))
    theirs = np.array(parse_every_step(policy, mazes, 200), np.int64).reshape(-1, 3)
    if not np.array_equal(ours[:, :3], theirs):
        raise SystemExit(f"the tracked visits differ from procgen's own state ({len(ours)} vs {len(theirs)} states)")
    t_ours = median_time(lambda: rollout_record(policy, mazes, 200, greedy=True, rng=np.random.default_rng(0)), 3)
    t_base = median_time(lambda: parse_every_step(policy, mazes, 200), 3)
    t_halves = median_time(lambda: [parse_every_step(policy, half, 200) for half in (mazes[:32], mazes[32:])], 3)
    print(f"{len(ours):,} states visited by 64 greedy rollouts, identical in both")
    print(f"baseline, get_state + parse every step: {t_base:.2f} s ({len(ours) / t_base:,.0f} states/s)")
    print(f"rollout_record, tracked:                {t_ours:.2f} s ({len(ours) / t_ours:,.0f} states/s)")
    print(f"baseline as two passes of 32:           {t_halves:.2f} s")
    print(f"ratio baseline / ours: {t_base / t_ours:.2f}x; two passes / ours: {t_halves / t_ours:.2f}x")


if __name__ == "__main__":
    main()
