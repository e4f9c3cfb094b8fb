import numpy as np
import pytest
import torch

from avec.core import Model
from avec.maze.evaluate import direction_index, off_region_mazes
from avec.maze.experiments import DEFAULT_HOOK, _acts
from avec.maze.render import obs_tensor
from avec.maze.retarget import (CheeseChannels, act_position, calibration_mazes, cheese_channels, choose_scale,
                                path_probabilities, path_probability, random_targets, retarget_experiment,
                                retarget_intervention)
from avec.maze.world import Maze


def test_act_position_orientation():
    assert act_position((0, 0)) == (0, 0)
    assert act_position((24, 24)) == (15, 15)
    assert act_position((24, 0)) == (15, 0)  # bottom-left cell -> bottom-left activation
    assert act_position((12, 12)) == (8, 8)
    assert act_position((24, 24), side=8) == (7, 7) and act_position((0, 24), side=32) == (0, 31)


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


def test_batched_path_probabilities_match_one_at_a_time(tiny_policy):
    mazes = off_region_mazes(5, 4)
    targets = random_targets(mazes, 3)
    batched = path_probabilities(tiny_policy, mazes, targets, chunk=7)  # chunks split mazes across batches
    single = [path_probability(tiny_policy, m, t) for m, t in zip(mazes, targets)]
    assert batched == pytest.approx(single, rel=1e-6)
    # a per-row intervention (each row written at its own maze's target) == one maze at a time
    steer = lambda rows: retarget_intervention(DEFAULT_HOOK, [2, 9], rows, add=[0.7, 0.3])  # noqa: E731
    batched = path_probabilities(tiny_policy, mazes, targets, steer, chunk=5)
    single = [path_probability(tiny_policy, m, t, retarget_intervention(DEFAULT_HOOK, [2, 9], t, add=[0.7, 0.3]))
              for m, t in zip(mazes, targets)]
    assert batched == pytest.approx(single, rel=1e-6)


def _diff(model, obs, iv):
    a = model.run(obs, cache=[DEFAULT_HOOK]).cache[DEFAULT_HOOK]
    b = model.run(obs, cache=[DEFAULT_HOOK], interventions=[iv]).cache[DEFAULT_HOOK]
    return a, b, (a != b).nonzero().tolist()


def test_retarget_writes_value_at_target_only(tiny_policy):
    m = Maze.from_seed(4, size=9)
    model = Model(tiny_policy)
    a, b, diff = _diff(model, obs_tensor(m), retarget_intervention(DEFAULT_HOOK, [1, 5], (m.pad, m.pad), 7.0))
    y, x = act_position((m.pad, m.pad))
    assert (b[0, [1, 5], y, x] == 7.0).all()
    assert diff and all(c in (1, 5) and (yy, xx) == (y, x) for _, c, yy, xx in diff)
    # per-channel offsets: each channel at its own position; writes pushed off the map are dropped
    iv = retarget_intervention(DEFAULT_HOOK, [1, 5, 6], (24, 24), add=[1.0, 2.0, 3.0],
                               offsets=[[0, -1], [-2, 0], [1, 0]])
    a, b, diff = _diff(model, obs_tensor(m), iv)
    assert sorted((c, yy, xx) for _, c, yy, xx in diff) == [(1, 15, 14), (5, 13, 15)]
    assert torch.allclose(b[0, 1, 15, 14], a[0, 1, 15, 14] + 1.0) and torch.allclose(b[0, 5, 13, 15], a[0, 5, 13, 15] + 2.0)
    with pytest.raises(ValueError, match="exactly one"):
        retarget_intervention(DEFAULT_HOOK, [1], (0, 0))


def test_writing_the_channels_own_values_changes_nothing(tiny_policy):
    mazes = off_region_mazes(5, 3)
    model = Model(tiny_policy)
    obs = obs_tensor(mazes)
    chans, offs = [3, 7, 20], [[0, 1], [-1, 0], [1, 1]]
    targets = [tuple(int(v) for v in m.open_cells()[5]) for m in mazes]  # one target per batch row
    for i, t in enumerate(targets):  # each maze set to its own current values: identical logits
        clean = model.run(obs[i:i + 1], cache=[DEFAULT_HOOK])
        y, x = act_position(t)
        own = [float(clean.cache[DEFAULT_HOOK][0, c, y + dy, x + dx]) for c, (dy, dx) in zip(chans, offs)]
        iv = retarget_intervention(DEFAULT_HOOK, chans, t, value=own, offsets=offs)
        assert torch.equal(model.run(obs[i:i + 1], interventions=[iv]).logits, clean.logits)
    zero = retarget_intervention(DEFAULT_HOOK, chans, targets, add=0.0, offsets=offs)
    assert torch.equal(model.run(obs, interventions=[zero]).logits, model.run(obs).logits)


def test_cheese_channels_footprint(tiny_policy):
    mazes = calibration_mazes(6)
    found = cheese_channels(tiny_policy, mazes, k=4, radius=1)
    assert isinstance(found, CheeseChannels) and len(found.channels) <= 4 and found.scores.shape == (32,)
    assert (np.abs(found.offsets) <= 1).all() and (found.signal > 0).all()
    assert list(found.scores[found.channels]) == sorted(found.scores[found.channels], reverse=True)
    assert found.scores[found.channels[0]] == found.scores.max()
    # the signal is the mean cheese-vector value at the channel's offset from the cheese position
    starts = [m.with_mouse(m.start) for m in mazes]
    v = _acts(Model(tiny_policy), starts, DEFAULT_HOOK) - _acts(Model(tiny_policy), [m.without_cheese() for m in starts],
                                                                  DEFAULT_HOOK)
    c, (dy, dx) = found.channels[0], found.offsets[0]
    vals = []
    for i, m in enumerate(starts):
        y, x = act_position(m.cheese)
        yy, xx = y + dy, x + dx
        vals.append(float(v[i, c, yy, xx]) if 0 <= yy < 16 and 0 <= xx < 16 else 0.0)  # zero padding off the map
    assert found.signal[0] == pytest.approx(np.mean(vals), rel=1e-5)
    assert list(found.to_frame().columns) == ["channel", "offset_row", "offset_col", "signal", "std", "score"]


def test_retarget_experiment(tiny_policy):
    mazes = off_region_mazes(5, 4)
    cal = calibration_mazes(5)
    found = cheese_channels(tiny_policy, cal, k=3)
    none = retarget_experiment(tiny_policy, mazes, channels=found, scale=0.0)
    assert np.array_equal(none.after, none.before) and none.summary()["frac_increased"] == 0
    res = retarget_experiment(tiny_policy, mazes, channels=found, scale=2.0)
    assert len(res.before) == 4 and ((res.before > 0) & (res.before <= 1)).all()
    assert res.reference is not None and all(t != m.start for t, m in zip(res.targets, mazes))
    assert (res.distances == [len(m.shortest_path(m.start, t)) - 1 for m, t in zip(mazes, res.targets)]).all()
    s = res.summary()
    assert {"path_prob_before", "path_prob_after", "frac_increased", "path_prob_cheese_at_target"} <= set(s)
    assert res.by_distance()["mazes"].sum() == 4 and len(res.to_frame()) == 4 and len(res.plot().axes) == 2
    kept = retarget_experiment(tiny_policy, mazes, channels=found, value=5.0, remove_cheese=False, reference=False)
    assert all(t != m.cheese for t, m in zip(kept.targets, mazes)) and "set to 5" in kept.summary()["rule"]
    auto = retarget_experiment(tiny_policy, mazes, calibration=cal, k=3, reference=False)
    best, bounds = choose_scale(tiny_policy, auto.channels, cal)
    assert auto.scale == best == max(bounds, key=bounds.get) and set(auto.summary()["scale_search_lower_bound"])
    # what the CLI prints (`avec maze retarget`, --scale auto by default) is the summary of the result rebuilt
    # from its JSON form, where the scale search's float keys became strings
    from avec.app.render import view

    back = view(auto)
    assert back.scale_search == auto.scale_search and back.summary() == auto.summary()
