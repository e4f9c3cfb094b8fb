import numpy as np
import pandas as pd
import pytest
import torch

from avec.maze.behaviour import FEATURES, behaviour_statistics, decision_square_mazes, maze_features, regress
from avec.maze.policy import ImpalaPolicy
from avec.maze.world import Maze


def test_decision_square_mazes_are_the_first_with_one():
    mazes = decision_square_mazes(6, seed_base=500)
    assert all(m.decision_square() is not None for m in mazes)
    skipped = [s for s in range(500, mazes[-1].seed) if s not in {m.seed for m in mazes}]
    assert all(Maze.from_seed(s).decision_square() is None for s in skipped)
    with pytest.raises(ValueError, match="count"):
        decision_square_mazes(0)


def test_maze_features_by_hand():
    m = decision_square_mazes(1, seed_base=77)[0]
    f = maze_features(m)
    d, (cr, cc), (tr, tc) = m.decision_square(), m.cheese, m.top_right
    assert f["d_euclid_cheese_top_right"] == pytest.approx(((cr - tr) ** 2 + (cc - tc) ** 2) ** 0.5)
    assert f["d_steps_decision_cheese"] == len(m.shortest_path(d, m.cheese)) - 1
    assert f["d_euclid_decision_cheese"] <= f["d_steps_decision_cheese"]


def test_regression_recovers_a_planted_rule():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({k: rng.uniform(0, 20, 400) for k in FEATURES})
    frame["got_cheese"] = frame["d_euclid_cheese_top_right"] < 9  # only this feature matters
    coefs, _, acc, single = regress(frame)
    assert acc > 0.95 and single["d_euclid_cheese_top_right"] > 0.95
    assert single["d_steps_decision_cheese"] < 0.7
    assert coefs["d_euclid_cheese_top_right"] < -abs(coefs["d_steps_decision_cheese"]) * 5


def test_behaviour_statistics_on_a_small_policy():
    torch.manual_seed(0)
    b = behaviour_statistics(ImpalaPolicy(1), n_mazes=16, max_steps=15)
    f = b.to_frame()
    assert len(f) == 16 and set(FEATURES) <= set(f.columns)
    assert (f.loc[~f.got_cheese, "steps"] == 15).all() and (f.loc[f.got_cheese, "steps"] <= 15).all()
    assert ((f.p_cheese >= 0) & (f.p_cheese + f.p_top_right <= 1 + 1e-9)).all()
    assert b.summary()["mazes"] == 16 and 0 <= b.got_cheese <= 1
    # medians and the share of mazes with P(cheese) below 0.05 beside the means, as every maze summary
    assert b.summary()["p_cheese_median"] == pytest.approx(np.median(f.p_cheese))
    assert b.summary()["frac_p_cheese_below_0.05"] == pytest.approx((f.p_cheese < 0.05).mean())
    assert b.plot() is not None and "<table>" in b._repr_html_()
    for feat in FEATURES:  # every maze lands in a bin, however far
        assert b.by_bins(feat, bins=(0, 1, 2))["mazes"].sum() == 16
    with pytest.raises(ValueError, match="d_euclid_cheese_top_right"):
        b.by_bins("nope")
