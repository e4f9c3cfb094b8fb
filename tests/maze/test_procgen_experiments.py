"""Every maze experiment on procgen levels: the statistics, the averaged vector's donors, retargeting's
calibration and the behavioural statistics stay on procgen's pictures; vector fields are drawn on procgen's
picture of the level; `avec maze ... --backend procgen` runs them with the procgen policy.

Skipped (with the reason) when procgen is not importable; `make setup` installs it. The missing-extra tests
run everywhere: they hide procgen and expect the install command in the error."""

import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from avec.app.cli import app
from avec.maze import procgen_backend as pb
from avec.maze.backends import BACKENDS, DEFAULT_POLICY, backend_of, decision_square_mazes, off_region, policy_backend

needs_procgen = pytest.mark.skipif(
    not pb.available(), reason="procgen 0.10.7 is not importable: the optional procgen backend is not installed "
    "(`make setup` installs it; README: the procgen backend)")

HELD_OUT = 1_500_000_000  # procgen_region5 trained on levels in [1e6, 1e9)


@pytest.fixture(scope="module")
def policy():
    from avec.maze.policy import load_policy

    return load_policy("procgen_region5")


@pytest.fixture(scope="module")
def levels():
    return pb.off_region_levels(5, 5, HELD_OUT)


def test_backend_names_agree_everywhere():
    from avec.app.cli import maze as cli
    from avec.maze import train

    assert BACKENDS == train.BACKENDS == cli.BACKENDS and DEFAULT_POLICY == cli.DEFAULT_POLICY


def test_policy_backend_is_read_from_the_checkpoint(tiny_policy):
    from avec.maze.policy import load_policy

    assert policy_backend(load_policy("procgen_region5")) == "procgen"
    assert policy_backend(load_policy("region5")) == "avec"  # an avec training config without a backend key
    assert policy_backend(tiny_policy) is None  # nothing recorded (a fresh net, a procgen-tools file)


@needs_procgen
def test_every_statistic_runs_on_procgen_pictures(policy, levels):
    """Each statistic on procgen levels sees procgen's observations: its unsteered P(cheese) is the policy's on
    procgen's picture with the mouse on the decision square, not on avec's picture of the same grid."""
    import torch

    from avec.maze import experiments as ex
    from avec.maze.env import five_way
    from avec.maze.evaluate import decision_targets
    from avec.maze.world import Maze

    ds = [decision_targets(m) for m in levels]
    obs = pb.obs_tensor([m.with_mouse(d[0]) for m, d in zip(levels, ds)])
    with torch.no_grad():
        p5 = five_way(torch.softmax(policy(obs).logits.double(), 1)).numpy()
    want = p5[np.arange(len(levels)), [d[1] for d in ds]]
    plain = [Maze(m.grid, m.size, m.mouse, m.cheese, m.seed) for m in levels]  # the same grids, avec's pictures
    assert not np.allclose(ex.cheese_vector_stats(policy, mazes=plain).p_cheese, want, atol=1e-3)
    for fn in (ex.cheese_vector_stats, ex.top_right_stats, ex.composition_stats, ex.random_baseline_stats,
               ex.transfer_stats, ex.all_layers_stats):
        st = fn(policy, mazes=levels)
        np.testing.assert_allclose(st.p_cheese, want, atol=1e-6, err_msg=st.name)
        assert list(st.seeds) == [m.seed for m in levels]
    sweep = ex.coefficient_sweep(policy, levels, "cheese", [0.0])
    np.testing.assert_allclose(sweep.p_cheese, [want.mean()], atol=1e-6)
    layers = ex.layer_sweep(policy, levels, ["embedder.block1.res1.resadd"])
    assert layers["mazes"].tolist() == [5] and abs(layers["p_cheese"][0] - want.mean()) < 1e-6
    got = ex.stats_mazes(policy, n=5, seed_base=HELD_OUT, backend="procgen")
    assert [m.seed for m in got] == [m.seed for m in levels] and backend_of(got) == "procgen"


STATS_FNS = ("cheese_vector_stats", "top_right_stats", "composition_stats", "random_baseline_stats",
             "averaged_cheese_stats", "transfer_stats", "all_layers_stats")


@needs_procgen
def test_steered_statistics_are_computed_on_procgen_pictures(policy, levels):
    """Composition, transfer and the random baseline on procgen levels: each level's vectors are taken from
    procgen's pictures (mouse at the start, with / without the cheese, with the top-right path) and the steered
    P(cheese) / P(top-right) are read off procgen's picture of the decision square, computed here by hand
    through the core; a zero vector changes nothing, and each vector moves the policy."""
    import torch

    from avec.core import Apply
    from avec.maze import experiments as ex
    from avec.maze.env import five_way
    from avec.maze.evaluate import decision_targets
    from avec.maze.fields import as_model

    model, hook = as_model(policy), ex.DEFAULT_HOOK
    start = [m.with_mouse(m.start) for m in levels]

    def acts(mazes):
        with torch.no_grad():
            return model.run(pb.obs_tensor(mazes), cache=[hook]).cache[hook]

    cheese = acts(start) - acts([m.without_cheese() for m in start])  # [N, C, H, W]
    top_right = acts([m.with_top_right_path() for m in start]) - acts(start)
    ds = [decision_targets(m) for m in levels]
    at_ds = pb.obs_tensor([m.with_mouse(d[0]) for m, d in zip(levels, ds)])
    rows = np.arange(len(levels))

    def steered(add):  # (P(cheese), P(top-right)) at the decision squares with add[i] added to level i's row
        iv = [Apply(hook, fn=lambda v, ctx: v + add.to(v))]
        with torch.no_grad():
            p5 = five_way(torch.softmax(model.run(at_ds, interventions=iv).logits.double(), 1)).numpy()
        return p5[rows, [d[1] for d in ds]], p5[rows, [d[2] for d in ds]]

    random = ex.random_like(ex.MazeVector(hook, cheese), 0).tensor
    for st, add in ((ex.composition_stats(policy, mazes=levels), -cheese + top_right),
                    (ex.transfer_stats(policy, mazes=levels), -torch.roll(cheese, 1, dims=0)),
                    (ex.random_baseline_stats(policy, mazes=levels), -random)):
        pc, pt = steered(add)
        np.testing.assert_allclose(st.p_cheese_steered, pc, atol=1e-6, err_msg=st.name)
        np.testing.assert_allclose(st.p_top_right_steered, pt, atol=1e-6, err_msg=st.name)
        assert np.abs(st.p_cheese_steered - st.p_cheese).max() > 1e-3, st.name  # the vector does something
    for st in (ex.composition_stats(policy, mazes=levels, cheese_coeff=0.0, top_right_coeff=0.0),
               ex.transfer_stats(policy, mazes=levels, coeff=0.0), ex.random_baseline_stats(policy, mazes=levels, coeff=0.0)):
        np.testing.assert_allclose(st.p_cheese_steered, st.p_cheese, atol=1e-9, err_msg=st.name)
        np.testing.assert_allclose(st.p_top_right_steered, st.p_top_right, atol=1e-9, err_msg=st.name)


@needs_procgen
def test_statistics_take_backend_procgen(policy, levels):
    """``backend="procgen"`` draws the same held-out procgen levels the CLI's --backend procgen does, for every
    statistic and for full_report (no need to build the levels and pass them as mazes=)."""
    from avec.maze import experiments as ex

    for name in STATS_FNS:
        fn = getattr(ex, name)
        kw = {"n_average": 3} if name == "averaged_cheese_stats" else {}
        got = fn(policy, n=len(levels), seed_base=HELD_OUT, backend="procgen", **kw)
        want = fn(policy, mazes=levels, **kw)
        assert list(got.seeds) == [m.seed for m in levels], name
        np.testing.assert_allclose(got.p_cheese_steered, want.p_cheese_steered, atol=1e-9, err_msg=name)
    report = ex.full_report(policy, n=2, seed_base=HELD_OUT, backend="procgen")
    want = ex.cheese_vector_stats(policy, mazes=levels[:2]).summary()
    assert report["cheese_vector"]["mazes"] == 2
    assert report["cheese_vector"]["p_cheese_steered"] == pytest.approx(want["p_cheese_steered"], abs=1e-9)
    assert report["layer_sweep"][0]["mazes"] == 2


@needs_procgen
def test_averaged_vector_donors_are_procgen_levels(policy, levels):
    """On procgen levels the averaged cheese vector is averaged over procgen donor levels (seeds from 2e9),
    not over pure-Python mazes whose pictures the test levels never show."""
    from avec.maze import experiments as ex

    donors = pb.off_region_levels(5, 3, ex.DONOR_SEED_BASE)
    avg = ex.averaged_vector(ex.cheese_vector(policy, donors))
    want = ex.steering_stats(policy, levels, lambda m, ms: -1.0 * avg, "x")
    got = ex.averaged_cheese_stats(policy, mazes=levels, n_average=3)
    np.testing.assert_allclose(got.p_cheese_steered, want.p_cheese_steered, atol=1e-6)
    pure = ex.averaged_vector(ex.cheese_vector(policy, off_region("avec", 5, 3, ex.DONOR_SEED_BASE)))
    other = ex.steering_stats(policy, levels, lambda m, ms: -1.0 * pure, "x")
    assert not np.allclose(got.p_cheese_steered, other.p_cheese_steered, atol=1e-4)


@needs_procgen
def test_retarget_calibrates_on_procgen_levels(policy, levels):
    from avec.maze.retarget import CALIBRATION_SEED_BASE, calibration_mazes, cheese_channels, retarget_experiment

    cal = calibration_mazes(4, backend="procgen")
    assert backend_of(cal) == "procgen" and [m.seed for m in cal] == list(range(CALIBRATION_SEED_BASE,
                                                                                 CALIBRATION_SEED_BASE + 4))
    res = retarget_experiment(policy, levels, calibration=4, scale=2.0, reference=False)
    want = cheese_channels(policy, cal)
    np.testing.assert_allclose(res.channels.scores, want.scores, atol=1e-5)
    assert not np.allclose(cheese_channels(policy, calibration_mazes(4)).scores, want.scores, atol=1e-3)


@needs_procgen
def test_behaviour_statistics_draw_procgen_levels(policy):
    from avec.maze.behaviour import behaviour_statistics

    got = behaviour_statistics(policy, 4, seed_base=HELD_OUT, max_steps=20, folds=2, backend="procgen")
    mazes = decision_square_mazes("procgen", 4, HELD_OUT)
    assert got.frame["seed"].tolist() == [m.seed for m in mazes] and backend_of(mazes) == "procgen"
    want = behaviour_statistics(policy, mazes=mazes, max_steps=20, folds=2)
    assert got.frame.equals(want.frame)


def test_bad_backend_is_a_clear_error(tiny_policy):
    from avec.maze.behaviour import behaviour_statistics

    with pytest.raises(ValueError, match="avec, procgen"):
        behaviour_statistics(tiny_policy, 2, backend="gym")
    with pytest.raises(ValueError, match="avec, procgen"):
        off_region("real", 5, 2, 0)
    from avec.maze import experiments as ex

    for name in STATS_FNS:  # before any work (the check comes before a maze is drawn)
        with pytest.raises(ValueError, match="avec, procgen"):
            getattr(ex, name)(tiny_policy, n=2, backend="gym")
    with pytest.raises(ValueError, match="avec, procgen"):
        ex.full_report(tiny_policy, n=2, backend="gym")


@needs_procgen
def test_procgen_field_is_drawn_on_procgens_picture(policy, levels):
    """The backdrop is procgen's picture of the level without the mouse: with the mouse on any cell, procgen's
    observation differs from it only inside that cell; it survives the JSON round trip, and an avec field's
    JSON has none."""
    from avec.maze.fields import VectorField, vector_field
    from avec.maze.world import Maze, WORLD

    m = min(levels, key=lambda x: x.size)
    field = vector_field(policy, m)
    assert field.backdrop.shape == (64, 64, 3) and field.backdrop.dtype == np.uint8
    p = 64 / WORLD
    for cell in field.cells[:: max(1, len(field.cells) // 6)]:
        obs = pb.observe(m.with_mouse(tuple(cell)))
        diff = {(int((y + 0.5) // p), int((x + 0.5) // p)) for y, x in np.argwhere((obs != field.backdrop).any(-1))}
        assert diff == {tuple(cell)}, (cell, diff)
    back = VectorField.from_dict(field.to_dict())
    assert np.array_equal(back.backdrop, field.backdrop) and np.allclose(back.probs, field.probs)
    plain = vector_field(policy, Maze(m.grid, m.size, m.mouse, m.cheese, m.seed))
    assert plain.backdrop is None and "backdrop" not in plain.to_dict()
    assert back.plot() is not None


# ------------------------------------------------------------------------------------------ the CLI
def _run(args):
    return CliRunner().invoke(app, ["maze", *args])


@needs_procgen
def test_cli_backend_procgen_uses_the_procgen_policy(policy, tmp_path):
    from avec.maze.experiments import cheese_vector_stats

    res = _run(["stats", "--backend", "procgen", "--n", "3", "--experiment", "cheese", "--seed-base", str(HELD_OUT)])
    assert res.exit_code == 0, res.output
    want = cheese_vector_stats(policy, mazes=pb.off_region_levels(5, 3, HELD_OUT)).summary()
    assert f"{want['p_cheese']:.3f}" in res.output and f"{want['p_cheese_steered']:.3f}" in res.output
    res = _run(["behaviour", "--backend", "procgen", "--n", "3", "--max-steps", "10", "--seed-base", str(HELD_OUT),
                "--out", str(tmp_path / "b.png")])
    assert res.exit_code == 0 and '"mazes": 3' in res.output, res.output
    res = _run(["field", "--backend", "procgen", "--seed", str(HELD_OUT), "--out", str(tmp_path / "f.png")])
    assert res.exit_code == 0 and (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG", res.output
    res = _run(["field", "--backend", "procgen", "--seed", "-1", "--out", str(tmp_path / "g.png")])
    assert res.exit_code == 2 and "level seed" in res.output


@needs_procgen
def test_cli_runs_every_experiment_on_procgen_levels(policy, tmp_path):
    """`avec maze stats / sweep / retarget --backend procgen`: each experiment's numbers are those of the Python
    call on the same held-out procgen levels (composition, transfer, random and averaged included)."""
    import json

    from avec.maze import experiments as ex
    from avec.maze.retarget import retarget_experiment

    levels = pb.off_region_levels(5, 3, HELD_OUT)
    res = _run(["stats", "--backend", "procgen", "--n", "3", "--seed-base", str(HELD_OUT), *[
        a for e in ("top_right", "both", "random", "averaged", "transfer", "all_layers") for a in ("--experiment", e)]])
    assert res.exit_code == 0, res.output
    for st in (ex.top_right_stats(policy, mazes=levels), ex.composition_stats(policy, mazes=levels),
               ex.random_baseline_stats(policy, mazes=levels), ex.averaged_cheese_stats(policy, mazes=levels),
               ex.transfer_stats(policy, mazes=levels), ex.all_layers_stats(policy, mazes=levels)):
        line = next(x for x in res.output.splitlines() if st.name in x)
        assert f"{st.summary()['p_cheese_steered']:.3f}" in line and f"{st.summary()['p_top_right_steered']:.3f}" in line, \
            (st.name, line)
    res = _run(["sweep", "--backend", "procgen", "--n", "3", "--seed-base", str(HELD_OUT), "--steps", "2",
                "--out", str(tmp_path / "s.png")])
    assert res.exit_code == 0, res.output
    sweep = ex.coefficient_sweep(policy, levels, "cheese", [-3.0, 3.0]).to_frame()
    assert all(f"{v:.3f}" in res.output for v in sweep["p_cheese"]), res.output
    res = _run(["retarget", "--backend", "procgen", "--n", "3", "--seed-base", str(HELD_OUT), "--calibration", "4",
                "--scale", "2", "--out", str(tmp_path / "r.png")])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output[:res.output.index("\n}") + 2])
    want = retarget_experiment(policy, levels, calibration=4, scale=2.0).summary()
    assert got["path_prob_after"] == pytest.approx(want["path_prob_after"], abs=1e-9) and got["channels"] == want["channels"]


@needs_procgen
@pytest.mark.parametrize("args, trained_on", [(["--backend", "procgen", "--policy", "region5"], "avec"),
                                              (["--policy", "procgen_region5"], "procgen")])
def test_cli_refuses_a_policy_trained_on_the_other_backend(args, trained_on):
    res = _run(["layers", "--n", "2", *args])
    assert res.exit_code == 2 and f"trained on the {trained_on} backend" in res.output and "--cross-backend" in res.output
    res = _run(["layers", "--n", "2", "--hook", "embedder.block1.res1.resadd", "--cross-backend", *args])
    assert res.exit_code == 0, res.output


def test_cli_bad_backend_and_missing_procgen(monkeypatch):
    res = _run(["sweep", "--backend", "gym"])
    assert res.exit_code == 2 and "choose from ['avec', 'procgen']" in res.output
    monkeypatch.setitem(sys.modules, "procgen", None)  # import procgen now fails, as without the extra
    for cmd in ("stats", "sweep", "layers", "retarget", "behaviour", "field"):
        res = _run([cmd, "--backend", "procgen"])
        assert res.exit_code == 2 and "make setup" in res.output and "procgen2==0.10.7" in res.output, (cmd, res.output)
    with pytest.raises(ImportError, match="make setup"):
        off_region("procgen", 5, 2, 0)
