"""The presentation layer sits above the techniques: no technique imports ``avec.app`` (the CLI, the
tour, the report, the server), and the old homes of those modules are gone."""

import ast
from pathlib import Path

import avec

AVEC = Path(avec.__file__).resolve().parent


def _app_imports(path: Path) -> list[str]:
    """Every import in ``path`` that reaches ``avec.app`` (absolute, or relative from where the file sits)."""
    module = ".".join(path.relative_to(AVEC.parent).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module.removesuffix(".__init__")
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        else:
            continue
        found += [f"{path.relative_to(AVEC.parent)}:{node.lineno} imports {n}" for n in names
                  if n == "avec.app" or n.startswith("avec.app.")]
    return found


def test_no_technique_imports_the_app():
    sources = [p for p in AVEC.rglob("*.py") if p.relative_to(AVEC).parts[0] != "app" and p != AVEC / "cli.py"]
    assert len(sources) > 50 and any(p.parts[-2:] == ("steering", "scan.py") for p in sources)
    bad = [hit for p in sources for hit in _app_imports(p)]
    assert not bad, bad


def test_the_checker_sees_relative_and_absolute_imports(monkeypatch):
    """The walker above must catch ``from ..app import x`` as well as ``import avec.app.cli``."""
    fake = AVEC / "steering" / "_layer_probe_example.py"  # never written: read_text is replaced
    for code in ("from ..app.tour import steering\n", "import avec.app.cli\n", "from avec.app import server\n",
                 "def f():\n    from .. import app\n"):
        monkeypatch.setattr(Path, "read_text", lambda self, encoding=None, _t=code: _t)
        assert _app_imports(fake), code
    monkeypatch.undo()
    assert not _app_imports(AVEC / "steering" / "scan.py")


def test_the_presentation_modules_left_the_technique_packages():
    # (a checkout updated in place may keep an empty avec/report/__pycache__: only sources count)
    assert not list((AVEC / "report").rglob("*.py")), "avec/report moved to avec/app/report and avec/app/tour"
    for technique in ("circuits", "dictionaries", "lens", "maze", "patching", "probes", "steering"):
        assert not (AVEC / technique / "cli.py").exists(), technique
        assert not (AVEC / technique / "tour_sections.py").exists(), technique
    assert not (AVEC / "dictionaries" / "transcoder_cli.py").exists()
    assert not (AVEC / "steering" / "reproduce.py").exists()


def test_the_old_cli_module_is_a_thin_alias():
    """``avec.cli`` stays importable for console scripts installed before the move; it defines nothing."""
    import avec.app.cli
    import avec.cli

    assert avec.cli.main is avec.app.cli.main and avec.cli.app is avec.app.cli.app
    tree = ast.parse((AVEC / "cli.py").read_text(encoding="utf-8"))
    assert not [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
