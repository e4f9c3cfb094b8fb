"""Maze speed figures: one vector field of a 25 x 25 maze (one batched forward) and the 100-seed
cheese-vector statistic. Run: python benchmarks/maze_bench.py [checkpoint]  (1 thread by default)."""

import sys
import time

import torch

from avec.maze.evaluate import off_region_mazes
from avec.maze.experiments import cheese_vector_stats
from avec.maze.fields import vector_field
from avec.maze.policy import ImpalaPolicy, load_policy
from avec.maze.world import Maze


def best_of(fn, repeat=3):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main(argv):
    torch.set_num_threads(int(argv[1]) if len(argv) > 1 else 1)
    policy = load_policy(argv[0]) if argv else ImpalaPolicy(1).eval()
    maze = Maze.from_seed(0, size=25)
    t, f = best_of(lambda: vector_field(policy, maze))
    print(f"vector field, 25x25 maze ({len(f.cells)} cells, one forward): {t * 1000:.0f} ms")
    mazes = off_region_mazes(5, 100)
    t, s = best_of(lambda: cheese_vector_stats(policy, mazes=mazes), repeat=2)
    print(f"100-seed cheese-vector statistic: {t:.2f} s  {s.summary()}")
    t, _ = best_of(lambda: cheese_vector_stats(policy, n=100), repeat=1)
    print(f"  including maze generation: {t:.2f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
