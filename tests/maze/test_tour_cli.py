"""The maze sections of `avec tour` and the `avec maze` commands run end to end on the shipped policy."""

from typer.testing import CliRunner

from avec.app.cli import app


def test_maze_tour_sections_run(tmp_path):
    from avec.app import tour

    path, failed = tour.run_tour(tmp_path / "t.html", quick=True, only=["Maze"])
    page = path.read_text()
    assert failed == [] and "Maze: the shipped policies" in page and "cheese vector x -1" in page
    assert "resumed at" in page  # the policy table says whether each shipped run was interrupted
    assert "Layer sweep" in page and "transferred cheese vector" in page and "at 6 layers" in page
    assert "Maze: channel retargeting" in page and "real cheese at target" in page
    assert "Maze: behavioural statistics" in page and "regression_accuracy" in page
    assert page.count("data:image/png;base64,") >= 6


def test_maze_commands(tmp_path):
    runner = CliRunner()
    out = tmp_path / "field.png"
    result = runner.invoke(app, ["maze", "field", "--seed", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:4] == b"\x89PNG"
    result = runner.invoke(app, ["maze", "stats", "--n", "10", "--experiment", "random"])
    assert result.exit_code == 0, result.output
    assert "random" in result.output and "p_cheese_steered" in result.output
    result = runner.invoke(app, ["maze", "stats", "--experiment", "nope"])
    assert result.exit_code != 0 and "choose from" in result.output
