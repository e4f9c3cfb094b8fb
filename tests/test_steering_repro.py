"""`avec steer-repro NAME`: each steering reproduction as a command, running the tour's own section."""

import pytest
from typer.testing import CliRunner

from avec.app.cli import app
from avec.app.tour import steering as tour_sections
from avec.app.tour.reproduce import reproduce, reproduction_names

from _steering_tiny import tiny_lm_with_tokenizer


@pytest.fixture(scope="module")
def tiny(smollm2):
    return tiny_lm_with_tokenizer(smollm2.tokenizer, n_layers=13)


def test_every_reproduction_is_a_tour_section_and_a_command():
    names = reproduction_names()
    assert {"love-hate", "wedding", "french", "composition", "caa"} <= set(names)
    tour_fns = [fn for _, fn in tour_sections.SECTIONS]
    runner = CliRunner()
    for name in names:
        assert tour_sections.REPRODUCTIONS[name][1] in tour_fns  # the same function, not a copy
        result = runner.invoke(app, ["steer-repro", name, "--help"])
        assert result.exit_code == 0, result.output
        assert "--model" in result.output and "--out" in result.output


def test_cli_runs_a_reproduction_and_writes_its_report(tiny, tmp_path, monkeypatch):
    loaded = []
    monkeypatch.setattr("avec.models.load", lambda name: loaded.append(name) or tiny)
    out = tmp_path / "repro.html"
    result = CliRunner().invoke(app, ["steer-repro", "composition", "--model", "some-model", "--quick", "--out", str(out),
                                      "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert loaded == ["some-model"]
    page = out.read_text()
    assert "Steering: composing vectors (some-model)" in page and "<table" in page
    assert "mean VADER compound" in result.output and "mean VADER compound" in page  # the same table, both places
    assert f"wrote {out}" in result.output


def test_reproduce_echoes_what_the_report_holds(tiny):
    said = []
    report = reproduce("composition", tiny, quick=True, echo=said.append)
    (section,) = report.sections
    assert section.seconds is not None and section.title.endswith(f"({tiny.name})")
    assert sum("<table" in p for p in section.parts) == sum("steering" in t and "example" in t for t in said) >= 1
    texts = [t for t in said if tiny.name in t]
    assert texts and all(any(t[:40] in p for p in section.parts) for t in texts)


def test_bad_input(tiny, monkeypatch):
    with pytest.raises(ValueError, match="unknown reproduction 'love'.*love-hate"):
        reproduce("love", tiny)
    with pytest.raises(TypeError, match="model name or a LanguageModel"):
        reproduce("composition", 3)
    result = CliRunner().invoke(app, ["steer-repro", "nonsense"])
    assert result.exit_code != 0 and "nonsense" in result.output

    def missing(name):
        raise ValueError(f"could not load {name!r}")

    monkeypatch.setattr("avec.models.load", missing)
    result = CliRunner().invoke(app, ["steer-repro", "composition", "--model", "nope"])
    assert result.exit_code != 0 and "could not load 'nope'" in str(result.exception)
