"""Behaviour of the shipped checkpoints (skipped when a checkpoint is absent)."""

from pathlib import Path

import numpy as np
import pytest

from avec.maze.env import ACTION_NAMES, expert_move
from avec.maze.fields import vector_field
from avec.maze.policy import load_policy
from avec.maze.world import Maze

CKPT = Path(__file__).resolve().parents[2] / "avec" / "maze" / "checkpoints"


@pytest.mark.parametrize("name,region", [("region5", 5), ("region15", 15)])
def test_shipped_policy_loads_and_solves_small_mazes(name, region):
    if not (CKPT / f"{name}.safetensors").exists():
        pytest.skip(f"{name} not trained yet")
    p = load_policy(name)
    assert p.metadata["region"] == region and p.metadata["complete"] and p.scale == 1
    # on small training-distribution mazes the field points along the expert's move almost everywhere
    agree = []
    for seed in range(5):
        m = Maze.from_seed(2_000_000_000 + seed, size=7, region=region)
        f = vector_field(p, m)
        for cell, probs in zip(f.cells, f.probs):
            agree.append(ACTION_NAMES[int(np.argmax(probs))] == expert_move(m, tuple(cell)))
    assert np.mean(agree) > 0.9
