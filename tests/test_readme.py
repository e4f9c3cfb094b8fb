"""Every snippet in the README runs as written: the Python blocks, the make targets, the CLI commands."""

import re
import shlex
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README, flags=re.S)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]


def test_the_readme_has_snippets():
    assert len(PYTHON) >= 2 and any(lang == "bash" for lang, _ in BLOCKS)


@pytest.mark.parametrize("index", range(len(PYTHON)))
def test_python_snippet_runs(index, smollm2, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import avec

    if "procgen_backend" in PYTHON[index]:
        from avec.maze.procgen_backend import available

        if not available():
            pytest.skip("procgen 0.10.7 (the optional procgen backend) is not installed; `make setup` installs it")
    monkeypatch.setattr(avec, "load", lambda name, *a, **k: smollm2 if name == "smollm2" else avec.models.load(name, *a, **k))
    scope: dict = {}
    exec(compile(PYTHON[index], f"README.md python block {index}", "exec"), scope)  # noqa: S102
    if "steered" in scope:  # the first look's ActAdd example steers, and not into a run of newlines
        base = smollm2.generate("I hate you because")
        text = scope["steered"][0]
        assert text.strip() and text != base[0] and "\n\n\n" not in text


def test_make_targets_exist():
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, flags=re.M))
    named = set(re.findall(r"(?:^|`)make ([\w-]+)", README, flags=re.M))
    assert named and named <= targets, named - targets


def _commands():
    block = next(code for lang, code in BLOCKS if lang == "" and "avec models" in code)
    out = []
    for line in block.splitlines():
        words = shlex.split(line.split("#")[0].replace("|", " | ").replace("[", " ").replace("]", " "))
        if not words or words[0] != "avec":
            continue
        # "avec scan | caa | lens" names several commands; "avec maze train | field" several maze commands
        head, rest = ([words[1]], words[2:]) if words[1] == "maze" else ([], words[1:])
        names, i = [rest[0]], 1
        while i + 1 < len(rest) and rest[i] == "|":  # alternatives right after the command name
            names.append(rest[i + 1])
            i += 2
        out += [head + [n] for n in names]
    return out


@pytest.mark.parametrize("command", _commands(), ids=" ".join)
def test_cli_command_in_the_readme_exists(command):
    from typer.testing import CliRunner

    from avec.app.cli import app

    result = CliRunner().invoke(app, command + ["--help"])
    assert result.exit_code == 0, result.output
