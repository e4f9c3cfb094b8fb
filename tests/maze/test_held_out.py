"""Measuring on held-out mazes: the statistics default to the policy's own training region, take a
seed base, report medians and the share of mazes with P(cheese) already below 0.05 beside the means,
and reach rates come on the training size mix as well as procgen's uniform sizes."""

import copy

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from avec.app.cli import app
from avec.core import Model
from avec.maze import experiments as ex
from avec.app.cli.maze import EVAL_SEED_BASE as CLI_SEED_BASE
from avec.maze.evaluate import (EVAL_SEED_BASE, Motivation, evaluate, off_region_mazes, resolve_region,
                                training_mazes, training_region)
from avec.maze.policy import save_policy
from avec.maze.world import SIZES, top_right_region

STATS = (ex.cheese_vector_stats, ex.top_right_stats, ex.composition_stats, ex.random_baseline_stats,
         ex.transfer_stats, ex.all_layers_stats)


@pytest.fixture(scope="module")
def region15_policy():
    from avec.maze.policy import ImpalaPolicy

    torch.manual_seed(3)
    p = ImpalaPolicy(scale=1).eval()
    p.metadata = {"region": 15, "config": {"region": 15, "size_power": 2.0}}
    return p


def _seeds(mazes):
    return [m.seed for m in mazes]


def test_statistics_default_to_the_policys_own_region(region15_policy, tiny_policy):
    own = off_region_mazes(15, 3)
    assert _seeds(own) != _seeds(off_region_mazes(5, 3))  # the bug made the region matter here
    for fn in STATS:
        st = fn(region15_policy, n=3)
        assert list(st.seeds) == _seeds(own), fn.__name__
    assert list(ex.cheese_vector_stats(Model(region15_policy), n=3).seeds) == _seeds(own)  # a core Model too
    assert list(ex.cheese_vector_stats(region15_policy, region=5, n=3).seeds) == _seeds(off_region_mazes(5, 3))
    # a policy that records no region (a procgen-tools file, a fresh net): the original study's 5
    assert training_region(tiny_policy) is None and resolve_region(tiny_policy) == 5
    assert list(ex.cheese_vector_stats(tiny_policy, n=3).seeds) == _seeds(off_region_mazes(5, 3))


def test_averaged_vector_donors_come_from_the_policys_region(region15_policy):
    mazes = off_region_mazes(15, 3, seed_base=7_000_000)
    got = ex.averaged_cheese_stats(region15_policy, mazes=mazes, n_average=4)
    donors = off_region_mazes(15, 4, seed_base=2_000_000_000)
    avg = ex.averaged_vector(ex.cheese_vector(region15_policy, donors))
    want = ex.steering_stats(region15_policy, mazes, lambda m, ms: -1.0 * avg, "x")
    np.testing.assert_allclose(got.p_cheese_steered, want.p_cheese_steered)


def test_statistics_take_a_seed_base(tiny_policy):
    st = ex.cheese_vector_stats(tiny_policy, n=4, seed_base=5_000_000)
    assert list(st.seeds) == _seeds(off_region_mazes(5, 4, 5_000_000)) and min(st.seeds) >= 5_000_000
    report = ex.full_report(tiny_policy, n=2, seed_base=6_000_000)
    assert report["cheese_vector"]["mazes"] == 2
    assert CLI_SEED_BASE == EVAL_SEED_BASE
    for bad in (-1, 1.5, "0", True):
        with pytest.raises(ValueError, match="seed_base must be a non-negative int"):
            off_region_mazes(5, 2, seed_base=bad)
    for bad in (0, 26, 2.0):
        with pytest.raises(ValueError, match="region must be an int in 1..25"):
            ex.cheese_vector_stats(tiny_policy, region=bad, n=2)


def test_summaries_report_medians_and_the_share_already_near_zero():
    st = ex.SteeringStats("t", np.arange(5), p_cheese=np.array([0.01, 0.5, 0.9, 0.02, 0.6]),
                          p_cheese_steered=np.array([0.0, 0.1, 0.8, 0.02, 0.55]),
                          p_top_right=np.array([0.9, 0.3, 0.05, 0.9, 0.2]),
                          p_top_right_steered=np.array([0.95, 0.6, 0.1, 0.9, 0.3]))
    s = st.summary()
    drop = st.p_cheese - st.p_cheese_steered
    assert s["p_cheese_drop"] == pytest.approx(drop.mean()) and s["p_cheese_drop_median"] == pytest.approx(0.05)
    assert s["p_cheese_median"] == 0.5 and s["p_cheese_steered_median"] == 0.1
    assert s["p_top_right_median"] == 0.3 and s["p_top_right_steered_median"] == 0.6
    assert s["frac_p_cheese_already_below_0.05"] == pytest.approx(2 / 5)
    assert s["p_cheese"] == pytest.approx(st.p_cheese.mean())  # the means stay
    m = Motivation(st.p_cheese, st.p_top_right, np.full(5, 9)).summary()
    assert m["p_cheese_median"] == 0.5 and m["frac_p_cheese_below_0.05"] == pytest.approx(2 / 5)


def test_sweep_medians_are_the_per_maze_medians(tiny_policy):
    mazes = off_region_mazes(5, 5)
    coeffs = [-2.0, 0.0, 3.0]
    sweep = ex.coefficient_sweep(tiny_policy, mazes, coeffs=coeffs)
    frame = sweep.to_frame()
    for j, c in enumerate(coeffs):
        one = ex.cheese_vector_stats(tiny_policy, mazes=mazes, coeff=c)
        assert frame["p_cheese_median"][j] == pytest.approx(np.median(one.p_cheese_steered), abs=1e-6)
        assert frame["p_top_right_median"][j] == pytest.approx(np.median(one.p_top_right_steered), abs=1e-6)
        assert frame["frac_p_cheese_below_0.05"][j] == pytest.approx((one.p_cheese_steered < 0.05).mean())


def test_training_size_mix_mazes():
    uniform = training_mazes(5, 600, seed_base=3_000_000)
    mix = training_mazes(5, 600, seed_base=3_000_000, size_power=1.0)
    assert _seeds(uniform) == _seeds(mix)
    big = lambda ms: np.mean([m.size >= 19 for m in ms])  # noqa: E731
    w = np.array(SIZES, float)
    assert big(mix) == pytest.approx(w[w >= 19].sum() / w.sum(), abs=0.06)  # P(n) ~ n: 0.49
    assert big(uniform) == pytest.approx(4 / 12, abs=0.06)
    for m in mix:  # still the training distribution: the cheese in the top-right 5 x 5
        rows, cols = top_right_region(m.size, 5)
        assert rows.start <= m.cheese[0] < rows.stop and cols.start <= m.cheese[1] < cols.stop
    assert _seeds(training_mazes(5, 600, seed_base=3_000_000, size_power=1.0)) == _seeds(mix)
    assert [m.size for m in training_mazes(5, 600, seed_base=3_000_000, size_power=1.0)] == [m.size for m in mix]


def test_evaluate_reports_reach_on_both_size_mixes(region15_policy, monkeypatch):
    import importlib

    ev = importlib.import_module("avec.maze.evaluate")  # (avec.maze.evaluate the attribute is the function)

    seen = []
    real = ev.rollout

    def short_rollout(policy, mazes, *a, **k):  # 10-step episodes: this test is about which mazes
        seen.append([(m.seed, m.size) for m in mazes])
        return real(policy, mazes, 10, *a[1:], **k)

    monkeypatch.setattr(ev, "rollout", short_rollout)
    rep = evaluate(region15_policy, n_train=40, n_test=2)
    assert rep["training_mix_size_power"] == 2.0  # the policy's own mix, from its checkpoint
    for key in ("reach_rate_greedy", "reach_rate_sampled", "reach_rate_greedy_training_mix",
                "reach_rate_sampled_training_mix"):
        assert 0 <= rep[key] <= 1
    uniform, mix = seen[0], seen[2]
    assert uniform == [(m.seed, m.size) for m in training_mazes(15, 40)]
    assert mix == [(m.seed, m.size) for m in training_mazes(15, 40, size_power=2.0)]
    assert np.mean([n for _, n in mix]) > np.mean([n for _, n in uniform])
    seen.clear()
    same = evaluate(region15_policy, n_train=3, n_test=2, size_power=0.0)
    assert seen[0] == seen[2]  # the same mazes, so the same reach rates
    assert same["reach_rate_greedy"] == same["reach_rate_greedy_training_mix"]
    assert same["reach_rate_sampled"] == same["reach_rate_sampled_training_mix"]


def test_cli_takes_a_seed_base_and_the_policys_region(tmp_path, region15_policy):
    path = tmp_path / "r15.safetensors"
    save_policy(region15_policy, path, copy.deepcopy(region15_policy.metadata))
    runner = CliRunner()
    held_out = off_region_mazes(15, 2, seed_base=8_000_000)
    result = runner.invoke(app, ["maze", "stats", "--policy", str(path), "--n", "2", "--seed-base", "8000000",
                                 "--experiment", "cheese"])
    assert result.exit_code == 0, result.output
    want = ex.cheese_vector_stats(region15_policy, mazes=held_out).summary()
    assert f"{want['p_cheese_median']:.3f}" in result.output and "frac_p_cheese_already_below_0.05" in result.output
    result = runner.invoke(app, ["maze", "sweep", "--policy", str(path), "--n", "2", "--seed-base", "8000000",
                                 "--steps", "2", "--out", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.output
    sweep = ex.coefficient_sweep(region15_policy, held_out, coeffs=[-3.0, 3.0]).to_frame()
    assert f"{sweep['p_cheese_median'][0]:.3f}" in result.output
    for command in (["stats"], ["sweep"], ["layers"], ["retarget"], ["behaviour"]):
        result = runner.invoke(app, ["maze", *command, "--policy", "no-such-policy", "--seed-base", "-1"])
        assert result.exit_code == 2 and "--seed-base must be a non-negative" in result.output, command
