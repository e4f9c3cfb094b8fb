"""Maze speed figures: one vector field of a 25 x 25 maze (one batched forward) and the 100-seed
cheese-vector statistic, and the training throughput (one batch of 128 expert-labelled states:
data generation vs forward/backward, float32 vs channels_last + bfloat16 autocast).
Run: python benchmarks/maze_bench.py [checkpoint [threads]]  (1 thread by default)."""

import sys
import time

import numpy as np
import torch

from avec.maze.evaluate import off_region_mazes
from avec.maze.experiments import cheese_vector_stats
from avec.maze.fields import vector_field
from avec.maze.policy import ImpalaPolicy, load_policy
from avec.maze.train import Sampler, loss_fn
from avec.maze.world import Maze


def best_of(fn, repeat=3):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def training_throughput(batch_size=128):
    sampler = Sampler(5, np.random.default_rng(0), size_power=1.0, path_frac=0.25)
    t_data, (obs, labels, dists) = best_of(lambda: sampler.batch(batch_size, 0.0), repeat=5)
    print(f"training batch of {batch_size} (maze generation, BFS labels, rendering): {t_data * 1000:.0f} ms")
    for name, bf16, layout in (("float32", False, torch.contiguous_format),
                               ("channels_last + bf16 autocast", True, torch.channels_last)):
        policy = ImpalaPolicy(1).to(memory_format=layout).train()
        opt = torch.optim.Adam(policy.parameters(), 1e-3)

        def step(policy=policy, opt=opt, bf16=bf16):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss, _, _ = loss_fn(policy, obs, labels, dists)
            opt.zero_grad()
            loss.backward()
            opt.step()

        step()
        t_step, _ = best_of(step, repeat=5)
        print(f"  forward+backward+Adam, {name}: {t_step * 1000:.0f} ms "
              f"-> {batch_size / (t_step + t_data):.0f} samples/s with data")


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
    training_throughput()


if __name__ == "__main__":
    main(sys.argv[1:])
