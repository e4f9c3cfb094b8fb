import numpy as np
import pytest
import torch

from avec.core import Model
from avec.maze.evaluate import off_region_mazes
from avec.maze.experiments import (DEFAULT_HOOK, MazeVector, averaged_vector, cheese_vector, cheese_vector_stats,
                                   coefficient_sweep, composition_stats, decision_probs, random_like,
                                   top_right_vector, transfer_stats)
from avec.maze.render import obs_tensor
from avec.maze.world import Maze


@pytest.fixture(scope="module")
def mazes():
    return off_region_mazes(5, 12)


def _act(policy, maze, hook=DEFAULT_HOOK):
    return Model(policy).run(obs_tensor(maze), cache=[hook]).cache[hook][0]


def test_cheese_vector_is_activation_difference_at_start(tiny_policy):
    m = Maze.from_seed(7).with_mouse(Maze.from_seed(7).open_cells()[3])  # mouse elsewhere: vector uses start
    v = cheese_vector(tiny_policy, m)
    start = m.with_mouse(m.start)
    expect = _act(tiny_policy, start) - _act(tiny_policy, start.without_cheese())
    assert v.tensor.shape == (32, 16, 16) and torch.allclose(v.tensor, expect, atol=1e-6)
    assert v.hook == DEFAULT_HOOK


def test_top_right_vector_zero_for_full_size_maze(tiny_policy):
    m = Maze.from_seed(3, size=25)
    assert torch.equal(top_right_vector(tiny_policy, m).tensor, torch.zeros(32, 16, 16))
    m = Maze.from_seed(3, size=11)
    assert top_right_vector(tiny_policy, m).norm > 0


def test_vector_algebra(tiny_policy, mazes):
    v = cheese_vector(tiny_policy, mazes[0])
    w = top_right_vector(tiny_policy, mazes[0])
    assert (-v).coeff == -1 and (3 * v).coeff == 3 and (v * 2).coeff == 2
    s = -v + 2 * w
    assert torch.allclose(s.tensor, -v.tensor + 2 * w.tensor)
    with pytest.raises(ValueError, match="same hook"):
        v + MazeVector("embedder.block1.conv", torch.zeros(16, 32, 32))


def test_batched_vectors_match_single(tiny_policy, mazes):
    vb = cheese_vector(tiny_policy, mazes[:4])
    assert vb.tensor.shape == (4, 32, 16, 16)
    for i in range(4):
        assert torch.allclose(vb.tensor[i], cheese_vector(tiny_policy, mazes[i]).tensor, atol=1e-5)
    # per-maze steering in one batch == one maze at a time
    batched = decision_probs(tiny_policy, mazes[:4], -1 * vb)
    for i in range(4):
        single = decision_probs(tiny_policy, [mazes[i]], -1 * cheese_vector(tiny_policy, mazes[i]))
        assert batched.p_cheese[i] == pytest.approx(single.p_cheese[0], abs=1e-6)
    avg = averaged_vector(vb)
    assert torch.allclose(avg.tensor, vb.tensor.mean(0))


def test_random_like_has_same_norm(tiny_policy, mazes):
    vb = cheese_vector(tiny_policy, mazes[:3])
    r = random_like(vb, seed=1)
    assert torch.allclose(r.norm, vb.norm, rtol=1e-5)
    assert not torch.allclose(r.tensor, vb.tensor)


def test_zero_coefficient_and_sweep_consistency(tiny_policy, mazes):
    s = cheese_vector_stats(tiny_policy, mazes=mazes, coeff=0.0)
    assert np.allclose(s.p_cheese, s.p_cheese_steered, atol=1e-9)
    sweep = coefficient_sweep(tiny_policy, mazes[:5], coeffs=[-1.0, 0.0, 2.0])
    base = decision_probs(tiny_policy, mazes[:5])
    assert sweep.p_cheese[1] == pytest.approx(base.p_cheese.mean(), abs=1e-6)
    one = cheese_vector_stats(tiny_policy, mazes=mazes[:5], coeff=2.0)
    assert sweep.p_cheese[2] == pytest.approx(one.p_cheese_steered.mean(), abs=1e-6)
    assert len(sweep.to_frame()) == 3 and sweep.plot() is not None


def test_stats_objects(tiny_policy, mazes):
    for s in (composition_stats(tiny_policy, mazes=mazes), transfer_stats(tiny_policy, mazes=mazes)):
        summ = s.summary()
        assert summ["mazes"] == len(mazes) and 0 <= summ["p_cheese"] <= 1
        assert len(s.to_frame()) == len(mazes)
        assert len(s.plot().axes) == 3 and "<table>" in s._repr_html_()
