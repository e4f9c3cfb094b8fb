"""The `avec` command line: one-line errors (not traceback boxes), and output paths checked before any
model is loaded or anything computed (avec.io.check_writable)."""

import os
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from avec import io
from avec.app.cli import app, main

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ avec.io.check_writable
def test_check_writable_refuses_with_reasons(tmp_path):
    (tmp_path / "afile").write_text("x")
    cases = [(tmp_path, "is an existing folder"),
             (tmp_path / "afile" / "out.png", "'" + str(tmp_path / "afile") + "' is a file, not a folder"),
             (tmp_path / "afile" / "deeper" / "out.png", "is a file, not a folder"),
             (tmp_path / "out.txt", "has suffix '.txt'; allowed: .png, .pdf"),
             (tmp_path / "out", "has suffix '(none)'"),
             ("", "is empty")]
    for path, needle in cases:
        with pytest.raises(ValueError) as info:
            io.check_writable(path, io.FIGURE_SUFFIXES, what="--out")
        assert needle in str(info.value) and str(info.value).startswith("--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # refused paths create nothing


def test_check_writable_creates_missing_folders(tmp_path):
    p = io.check_writable(tmp_path / "a" / "b" / "fig.PNG", io.FIGURE_SUFFIXES)
    assert p.parent.is_dir() and not p.exists()
    d = io.check_writable_dir(tmp_path / "plots" / "x")
    assert d.is_dir()
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is an existing file"):
        io.check_writable_dir(tmp_path / "f")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_check_writable_unwritable_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ValueError, match="is not writable"):
            io.check_writable(ro / "sub" / "x.png")
    finally:
        ro.chmod(0o700)


def test_atomic_savefig_keeps_format_from_suffix(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    io.atomic_savefig(fig, tmp_path / "f.svg")
    io.atomic_savefig(fig, tmp_path / "sub" / "f.png")
    plt.close(fig)
    assert (tmp_path / "f.svg").read_text().lstrip().startswith("<?xml")
    assert (tmp_path / "sub" / "f.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["f.png", "f.svg", "sub"]  # no temp files left


# ------------------------------------------------------------------------------ one-line errors
def _run_main(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def test_errors_are_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("AVEC_DEBUG", raising=False)

    def bad(argv):
        raise ValueError("--thing must be >= 1, got 0")

    monkeypatch.setattr("avec.maze.train.main", bad)
    code, _, err = _run_main(["maze", "train"], capsys)
    assert code == 2 and err == "error: --thing must be >= 1, got 0\n"

    def key(argv):
        raise KeyError("unknown name 'x'; choose from ['a', 'b']")

    monkeypatch.setattr("avec.maze.train.main", key)
    code, _, err = _run_main(["maze", "train"], capsys)
    assert code == 2 and err == "error: unknown name 'x'; choose from ['a', 'b']\n"

    def crash(argv):
        raise RuntimeError("out of memory\nwhile doing things")

    monkeypatch.setattr("avec.maze.train.main", crash)
    code, _, err = _run_main(["maze", "train"], capsys)
    assert code == 1
    assert err == "error: RuntimeError: out of memory while doing things (set AVEC_DEBUG=1 for the traceback)\n"


def test_avec_debug_gives_the_traceback(monkeypatch):
    def bad(argv):
        raise ValueError("boom")

    monkeypatch.setattr("avec.maze.train.main", bad)
    monkeypatch.setenv("AVEC_DEBUG", "1")
    with pytest.raises(ValueError, match="boom"):
        main(["maze", "train"])


def test_success_and_usage_errors_keep_their_exit_codes(capsys, monkeypatch):
    monkeypatch.delenv("AVEC_DEBUG", raising=False)
    monkeypatch.setattr("avec.maze.train.main", lambda argv: 0)
    assert _run_main(["maze", "train"], capsys)[0] == 0
    code, _, err = _run_main(["maze", "sweep", "--no-such-option"], capsys)
    assert code == 2 and err.startswith("error: No such option: --no-such-option") and err.count("\n") == 1
    assert err.endswith("(see 'avec maze sweep --help')\n")
    code, _, err = _run_main(["maze", "sweep", "--out", "x.txt"], capsys)  # typer.BadParameter: one line too
    assert code == 2 and err.startswith("error: Invalid value: --out 'x.txt' has suffix '.txt'; allowed: .png")
    assert err.count("\n") == 1 and "╭" not in err


def test_no_pretty_traceback_box_and_console_script_is_main():
    assert app.pretty_exceptions_enable is False
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["avec"] == "avec.app.cli:main"


def test_python_dash_m_prints_one_line(tmp_path):
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "AVEC_DEBUG"}
    r = subprocess.run([sys.executable, "-m", "avec.app.cli", "tour", "--out", str(tmp_path / "x.txt")],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr == (f"error: Invalid value: --out '{tmp_path / 'x.txt'}' has suffix '.txt'; allowed: .html, .htm "
                        "(see 'avec tour --help')\n")


# ------------------------------------------------------------------------------ --out before the model
@pytest.fixture
def no_model(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr("avec.models.load", boom)
    monkeypatch.setattr("avec.app.tour.run_tour", boom)
    import importlib

    monkeypatch.setattr(importlib.import_module("avec.app.tour.reproduce"), "reproduce", boom)


COMMANDS = [
    (["tour"], "--out", "x.html"),
    (["steer-repro", "composition"], "--out", "x.html"),
    (["steer", "hi", "--plus", "Love", "--minus", "Hate"], "--save", "v.safetensors"),
    (["caa", "corrigible"], "--save", "v.gguf"),
    (["scan", "hi", "--plus", "a", "--minus", "b", "--target", " a", "--against", " b"], "--plot", "s.png"),
    (["scan", "hi", "--plus", "a", "--minus", "b", "--target", " a", "--against", " b"], "--csv", "s.csv"),
    (["lens", "hi"], "--out", "l.png"),
    (["dla", "hi", "--target", " a"], "--out", "d.png"),
    (["norms"], "--out", "n.png"),
    (["tuned-lens", "OUTDIR"], "--out", "t.png"),
    (["patch", "a b", "a c", "--answer", " b", "--wrong", " c"], "--out", "p.png"),
    (["probe", "truth/capitals"], "--out", "p.png"),
    (["probe", "truth/capitals"], "--save-vector", "v.safetensors"),
    (["ccs", "truth/capitals"], "--out", "c.png"),
]


@pytest.mark.parametrize("args, option, good", COMMANDS, ids=lambda v: v if isinstance(v, str) else None)
def test_output_paths_checked_before_the_model(tmp_path, no_model, args, option, good):
    runner = CliRunner()
    args = [str(tmp_path / "lens-dir") if a == "OUTDIR" else a for a in args]
    (tmp_path / "afile").write_text("x")
    bad_suffix = str(tmp_path / (Path(good).stem + ".bogus"))
    for value, needle in ((str(tmp_path / "afile" / good), "is a file, not a folder"),
                          (str(tmp_path), "is an existing folder"),
                          (bad_suffix, "has suffix '.bogus'; allowed: ")):
        result = runner.invoke(app, [*args, option, value])
        flat = " ".join(result.output.replace("│", " ").split())
        assert result.exit_code == 2 and needle in flat, (args, value, result.output, result.exception)


def test_tuned_lens_out_dir_must_be_a_folder(tmp_path, no_model):
    (tmp_path / "afile").write_text("x")
    result = CliRunner().invoke(app, ["tuned-lens", str(tmp_path / "afile")])
    flat = " ".join(result.output.replace("│", " ").split())  # typer's box wraps long messages
    assert result.exit_code == 2 and "is an existing file" in flat, result.output


def test_caa_bad_coeffs_before_the_model(no_model):
    result = CliRunner().invoke(app, ["caa", "corrigible", "--coeffs", "1,two"])
    assert result.exit_code == 2 and "--coeffs must be comma-separated numbers" in " ".join(
        result.output.replace("│", " ").split())
