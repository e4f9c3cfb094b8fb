"""The CLI commands, the HTML report and the residual-norm result on the bundled model."""

import base64

import torch
from typer.testing import CliRunner

from avec.app.cli import app
from avec.lens import residual_norms
from avec.app.report import Report


def test_models_command_lists_bundled_models():
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert "smollm2" in result.output and "gemma3-270m" in result.output and "installed" in result.output


def test_hooks_command(smollm2):
    result = CliRunner().invoke(app, ["hooks", "smollm2", "--pattern", "blocks.29.*"])
    assert result.exit_code == 0, result.output
    lines = [l for l in result.output.splitlines() if l.startswith("blocks.29.")]
    assert [l.split()[0] for l in lines] == smollm2.resolve("blocks.29.*")
    assert "[batch, pos, 9, 64]" in result.output


def test_residual_norms_match_the_cache(smollm2):
    prompts = ["The cat sat on the mat.", "Paris is the capital of France and a big city."]
    norms = residual_norms(smollm2, prompts)
    run = smollm2.run(prompts[1], cache=["blocks.10.resid_pre"])
    direct = run.cache["blocks.10.resid_pre"][0, 1:].norm(dim=-1).mean()
    assert torch.isclose(norms.norms[10, 1], direct, rtol=1e-4)
    frame = norms.to_frame()
    assert len(frame) == smollm2.n_layers + 1 and frame["mean_norm"].gt(0).all()
    assert "<img" in norms._repr_html_()


def test_tour_writes_a_self_contained_report(tmp_path, smollm2):
    from avec.app import tour

    out = tmp_path / "tour.html"
    path, failed = tour.run_tour(out, only=["Residual"])
    assert failed == []
    page = path.read_text()
    assert "Residual stream norms by layer" in page
    png = page.split("data:image/png;base64,")[1].split('"')[0]
    assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "src=\"http" not in page  # nothing fetched from outside


def test_report_records_failing_sections(tmp_path):
    from avec.app import tour

    def broken(ctx, section):
        raise RuntimeError("section exploded")

    tour.SECTIONS.append(("Broken demo", broken))
    try:
        path, failed = tour.run_tour(tmp_path / "t.html", only=["Broken"])
    finally:
        tour.SECTIONS.pop()
    assert failed == ["Broken demo"] and "section exploded" in path.read_text()


def test_report_save_is_atomic(tmp_path):
    r = Report("t")
    r.section("a").text("<b>escaped</b>")
    path = r.save(tmp_path / "r.html")
    assert "&lt;b&gt;escaped" in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]
