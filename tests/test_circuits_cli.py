"""`avec graph`: an attribution graph written as the frontends' JSON, a page and a summary; bad options
refused before the model loads."""

import json

import pytest
from _tiny import tiny_hf
from test_circuits_attribution import random_clt
from test_dictionaries_cli import CharTokenizer, _run

from avec.models import LanguageModel


@pytest.fixture
def fake_model(monkeypatch):
    loads = []

    def fake_load(name, *a, **kw):
        loads.append(name)
        return LanguageModel(tiny_hf("llama"), tokenizer=CharTokenizer(), name="tiny")

    import avec.models

    monkeypatch.setattr(avec.models, "load", fake_load)
    return loads


def test_graph_command_writes_json_page_and_summary(fake_model, tmp_path, capsys):
    import avec.models

    lm = avec.models.load("tiny")
    clt = random_clt(lm, seed=2)
    path = clt.save(tmp_path / "clt.safetensors")
    code, out, err = _run(["graph", "the fox", "--transcoders", str(path), "--model", "tiny", "--out",
                           str(tmp_path / "g"), "--batch-size", "8"], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "g" / "graph.json").read_text())
    assert data["metadata"]["prompt"] == "the fox" and data["nodes"] and data["links"]
    summary = json.loads((tmp_path / "g" / "summary.json").read_text())
    assert summary["kept_nodes"] >= len(data["nodes"]) > 0  # the JSON leaves out kept nodes without kept edges
    assert 0 <= summary["replacement_score"] <= 1 and 0 <= summary["completeness_score"] <= 1
    assert "<html" in (tmp_path / "g" / "graph.html").read_text()[:200]
    assert "replacement" in out


@pytest.mark.parametrize("args, match", [
    (["--node-threshold", "1.5"], "a share of the influence"),
    (["--transcoders", "/nonexistent/clt.safetensors"], "no such file or folder"),
    (["--max-memory-gb", "0"], "a positive number of gigabytes"),
])
def test_bad_options_are_refused_before_loading(fake_model, tmp_path, capsys, args, match):
    base = {"--transcoders": str(tmp_path), "--out": str(tmp_path / "g")}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    flat = [x for kv in base.items() for x in kv]
    code, out, err = _run(["graph", "the fox", *flat], capsys)
    assert code == 2 and match in " ".join((out + err).replace("│", " ").split())
    assert not fake_model
