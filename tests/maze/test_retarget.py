import numpy as np
import pytest
import torch

from avec.core import Model
from avec.maze.evaluate import direction_index, off_region_mazes
from avec.maze.experiments import DEFAULT_HOOK
from avec.maze.render import obs_tensor
from avec.maze.retarget import act_position, cheese_channels, path_probability, retarget_experiment, retarget_intervention
from avec.maze.world import Maze


def test_act_position_orientation():
    assert act_position((0, 0)) == (0, 0)
    assert act_position((24, 24)) == (15, 15)
    assert act_position((24, 0)) == (15, 0)  # bottom-left cell -> bottom-left activation
    assert act_position((12, 12)) == (8, 8)


class Uniform(torch.nn.Module):
    def forward(self, obs):
        return torch.zeros(len(obs), 15)


def test_path_probability_is_geometric_mean_of_on_path_moves():
    m = Maze.from_seed(4, size=9)
    path = m.shortest_path(m.start, m.cheese)
    per_move = {0: 3 / 15, 1: 1 / 15, 2: 1 / 15, 3: 3 / 15}  # LEFT, DOWN, UP, RIGHT under uniform logits
    expect = np.exp(np.mean([np.log(per_move[direction_index(a, b)]) for a, b in zip(path, path[1:])]))
    assert path_probability(Uniform(), m, m.cheese) == pytest.approx(expect)
    with pytest.raises(ValueError):
        path_probability(Uniform(), m, m.start)


def test_retarget_writes_value_at_target_only(tiny_policy):
    m = Maze.from_seed(4, size=9)
    model = Model(tiny_policy)
    iv = retarget_intervention(DEFAULT_HOOK, [1, 5], (m.pad, m.pad), 7.0)
    r0 = model.run(obs_tensor(m), cache=[DEFAULT_HOOK])
    r1 = model.run(obs_tensor(m), cache=[DEFAULT_HOOK], interventions=[iv])
    a, b = r0.cache[DEFAULT_HOOK][0], r1.cache[DEFAULT_HOOK][0]
    y, x = act_position((m.pad, m.pad))
    assert (b[[1, 5], y, x] == 7.0).all()
    diff = (a != b).nonzero().tolist()
    assert all((c in (1, 5)) and (yy, xx) == (y, x) for c, yy, xx in diff)


def test_retarget_experiment_runs(tiny_policy):
    mazes = off_region_mazes(5, 4)
    ch, scores = cheese_channels(tiny_policy, mazes, k=3)
    assert len(ch) == 3 and scores.shape == (32,) and scores[ch[0]] == scores.max()
    res = retarget_experiment(tiny_policy, mazes, channels=ch)
    assert len(res.before) == 4 and ((res.before > 0) & (res.before <= 1)).all()
    assert set(res.summary()) >= {"path_prob_before", "path_prob_after", "frac_increased"}
    assert len(res.to_frame()) == 4 and res.plot() is not None
