"""The maze sections of `avec tour` and the `avec maze` commands run end to end on the shipped policy."""

from pathlib import Path

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
    from avec.maze import procgen_backend as pb

    if pb.available():  # the procgen section beside avec's world, measured on 16 levels in quick mode
        assert "Maze: the real procgen maze" in page and "procgen, procgen_region5 (this tour)" in page
        assert "original study (rand_region_5)" in page and "0.714" in page and "5,239" in page
        assert "drawn on procgen&#x27;s own picture" in page or "drawn on procgen's own picture" in page
        # the rest of the study on the same procgen levels
        assert "Layer sweep on the same procgen levels" in page and "Channel retargeting on the same procgen" in page
        assert page.count("transferred cheese vector") >= 2 and page.count("at 6 layers") >= 2
        assert page.count("data:image/png;base64,") >= 9


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


def test_procgen_tour_section_without_procgen_says_how_to_install(monkeypatch):
    import sys

    from avec.app.tour.context import TourContext
    from avec.app.tour.maze import procgen_section
    from avec.app.tour.reproduce import EchoSection

    monkeypatch.setitem(sys.modules, "procgen", None)  # import procgen now fails, as without the extra
    said = []
    procgen_section(TourContext(quick=True), EchoSection("procgen", echo=said.append))
    assert len(said) == 1 and "not installed" in said[0] and "make setup" in said[0]


def test_side_by_side_table_leaves_what_a_source_lacks_empty():
    """Each source's numbers land in its own column, formatted; a number it does not have is an empty cell
    (the original study's steering numbers are not in the repo: never filled in)."""
    from avec.app.tour.maze import SIDE_BY_SIDE_ROWS, STEERING, _behaviour_column, _steering_column, side_by_side
    from avec.maze.behaviour import ORIGINAL_AGENT

    beh = {"mazes": 40, "got_cheese": 0.5, "p_cheese": 0.61, "p_top_right": 0.2, "regression_accuracy": 0.7,
           "accuracy_d_euclid_cheese_top_right": 0.65, "baseline_accuracy": 0.5, "coef_d_euclid_cheese_top_right": -1.0,
           "coef_d_steps_decision_cheese": 0.5, "coef_d_euclid_decision_cheese": -0.1}
    steer = [{"mazes": 30, "p_cheese": 0.6, "p_top_right": 0.3, "p_cheese_steered": 0.1 * (i + 1),
              "p_top_right_steered": 0.9 - 0.1 * i, "frac_p_cheese_decreased": 0.25 * i,
              "frac_p_top_right_increased": 0.111} for i in range(4)]
    table = side_by_side({"orig": {"got": ORIGINAL_AGENT["got_cheese"], "b_mazes": ORIGINAL_AGENT["mazes"]},
                          "ours": {**_behaviour_column(beh), **_steering_column(steer)},
                          "half": _steering_column([steer[0], None, None, None])})
    assert list(table.index) == [label for label, _ in SIDE_BY_SIDE_ROWS]
    assert table.loc["got the cheese (sampled rollouts, 500 steps)", "orig"] == "0.714"
    assert table.loc["decision-square mazes (cheese anywhere)", "orig"] == "5,239"
    assert (table["orig"] != "").sum() == 2 and table.loc["unsteered P(cheese)", "orig"] == ""
    assert table.loc["coefficient signs (cheese-top-right, steps, euclid)", "ours"] == "-, +, -"
    assert table.loc[f"{STEERING[2]}: P(cheese)", "ours"] == "0.300"
    assert table.loc[f"{STEERING[1]}: share of mazes moved the intended way", "ours"] == "0.111"  # P(top-right) up
    assert table.loc[f"{STEERING[3]}: share of mazes moved the intended way", "ours"] == "0.750"  # P(cheese) down
    assert table.loc[f"{STEERING[0]}: P(cheese)", "half"] == "0.100" and table.loc[f"{STEERING[1]}: P(cheese)", "half"] == ""


def test_procgen_tour_sentence_quotes_the_recorded_reach_by_size():
    """The tour's sentence on how procgen_region5 does by maze size reads the benchmark's record (README.json),
    smallest and largest size, so it follows the shipped policy; with nothing recorded it says nothing."""
    import json

    from avec.app.tour.maze import _reach_by_size

    stored = json.loads((Path(__file__).resolve().parents[2] / "avec" / "maze" / "checkpoints" / "README.json")
                        .read_text())["procgen_region5"]["procgen_held_out"]
    by_size = stored["training_distribution"]["by_size"]
    assert _reach_by_size(stored) == (f": sampled reach {by_size['3']['reach_sampled']:.2f} in 3 x 3 mazes, "
                                      f"{by_size['25']['reach_sampled']:.2f} in 25 x 25")
    assert _reach_by_size({}) == "" and _reach_by_size({"training_distribution": {}}) == ""
