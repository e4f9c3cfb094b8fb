"""Every `avec maze` experiment command runs on a shipped policy (small n) and rejects bad input clearly."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from avec.app.cli import app

CKPT = Path(__file__).resolve().parents[2] / "avec" / "maze" / "checkpoints" / "region5.safetensors"


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


def _ok(runner, args):
    result = runner.invoke(app, ["maze", *args])
    assert result.exit_code == 0, result.output
    return result.output


def _bad(runner, args, *needles):
    result = runner.invoke(app, ["maze", *args])
    assert result.exit_code != 0
    for needle in needles:
        assert needle in result.output, result.output
    return result.output


def test_stats_every_experiment(runner, tmp_path):
    out = _ok(runner, ["stats", "--n", "6", "--experiment", "averaged", "--experiment", "transfer",
                       "--experiment", "all_layers", "--plot-dir", str(tmp_path)])
    assert "averaged cheese vector" in out and "transferred cheese vector" in out and "at 6 layers" in out
    assert "frac_p_cheese_decreased" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maze-stats-all_layers.png", "maze-stats-averaged.png",
                                                          "maze-stats-transfer.png"]
    out = _ok(runner, ["stats", "--n", "6", "--policy", str(CKPT), "--experiment", "cheese",
                       "--hook", "embedder.block3.res1.resadd_out"])  # checkpoint path, another hook point
    assert "cheese vector x -1" in out


def test_sweep_and_layers(runner, tmp_path):
    png = tmp_path / "sweep.png"
    out = _ok(runner, ["sweep", "--n", "6", "--kind", "top_right", "--steps", "3", "--out", str(png)])
    assert "p_top_right" in out and "-3.000" in out and "3.000" in out and png.read_bytes()[:4] == b"\x89PNG"
    out = _ok(runner, ["layers", "--n", "6", "--hook", "embedder.block2.res1.resadd",
                       "--hook", "embedder.block3.res2.resadd_out"])
    assert "embedder.block2.res1.resadd" in out and "embedder.block3.res2.resadd_out" in out
    assert "p_cheese_steered" in out


def test_retarget_command(runner, tmp_path):
    png = tmp_path / "rt.png"
    out = _ok(runner, ["retarget", "--n", "6", "--calibration", "6", "--scale", "2", "--k", "4", "--out", str(png)])
    summary = json.loads(out[:out.index("\n}") + 2])
    assert summary["mazes"] == 6 and len(summary["channels"]) == 4 and summary["scale"] == 2.0
    assert "moves" in out and png.read_bytes()[:4] == b"\x89PNG"
    out = _ok(runner, ["retarget", "--n", "3", "--calibration", "4", "--k", "2", "--out", str(png)])  # --scale auto
    summary = json.loads(out[:out.index("\n}") + 2])
    bounds = summary["scale_search_lower_bound"]  # the scale chosen is the one with the best bound
    assert bounds and summary["scale"] == float(max(bounds, key=bounds.get))


def test_behaviour_command(runner, tmp_path):
    png = tmp_path / "b.png"
    out = _ok(runner, ["behaviour", "--n", "8", "--max-steps", "40", "--out", str(png)])
    summary = json.loads(out[:out.index("\n}") + 2])
    assert summary["mazes"] == 8 and summary["original_agent"]["got_cheese"] == 0.714
    assert "coef_d_euclid_cheese_top_right" in summary and png.read_bytes()[:4] == b"\x89PNG"
    _bad(runner, ["behaviour", "--max-steps", "0"], "--max-steps")


def test_bad_input_lists_allowed_values(runner):
    _bad(runner, ["stats", "--experiment", "nope"], "choose from", "all_layers", "transfer")
    _bad(runner, ["sweep", "--kind", "sideways"], "choose from", "top_right")
    _bad(runner, ["layers", "--n", "6", "--hook", "embedder.nope"], "choose from", "embedder.block2.res1.resadd")
    _bad(runner, ["retarget", "--scale", "lots"], "'auto'")
    _bad(runner, ["stats", "--policy", "no-such-policy"], "region5")
