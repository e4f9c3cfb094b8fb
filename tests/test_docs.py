"""The bad-input table in docs/bad-input.md names a real test for every row."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _functions(path: Path) -> set[str]:
    return {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)}


def test_every_row_names_an_existing_test():
    doc = (ROOT / "docs" / "bad-input.md").read_text()
    rows = [line for line in doc.splitlines() if line.startswith("|") and not line.startswith(("| bad input", "|---"))]
    assert len(rows) >= 40
    missing = []
    for row in rows:
        refs = re.findall(r"(tests/[\w/]+\.py)::(\w+)", row)
        assert refs, f"row without a test: {row}"
        for file, name in refs:
            path = ROOT / file
            if not path.exists() or name not in _functions(path):
                missing.append(f"{file}::{name}")
    assert not missing, missing
