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
    info = data["metadata"]["info"]
    assert summary["json_nodes"] == len(data["nodes"]) and summary["edges"] == info["n_edges"] > len(data["links"])
    line = out.strip().splitlines()[-1]
    # the printed line is the graph JSON's: its counts, scores and top answer
    assert f"{len(data['nodes'])} of {info['n_nodes']} nodes" in line
    assert f"replacement {summary['replacement_score']:.3f}" in line and repr(info["logits"][0][0]) in line


def test_graph_summary_line_renders_only_the_dict():
    from avec.app.render import graph_summary_line

    d = {"metadata": {"info": {"n_nodes": 90, "n_edges": 700, "replacement_score": 0.25, "completeness_score": 0.5,
                               "logits": [[" Paris", 0.75]]}},
         "nodes": [{}] * 3, "links": [{}] * 5}
    assert graph_summary_line(d) == ("3 of 90 nodes, 5 of 700 edges; replacement 0.250, completeness 0.500; "
                                     "top answer ' Paris' (0.750)")
    d["metadata"]["info"] = {}  # a graph JSON from elsewhere: what it has
    assert graph_summary_line(d) == "3 nodes, 5 edges"


@pytest.mark.parametrize("args, match", [
    (["--node-threshold", "1.5"], "a share of the influence"),
    (["--edge-threshold", "0"], "a share of the influence, in (0, 1]"),
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


def test_graph_page_holds_each_kept_feature_nodes_dashboard(fake_model, tmp_path, capsys):
    import html
    import re

    import avec.models
    from avec.dictionaries.features import logit_effects

    lm = avec.models.load("tiny")
    clt = random_clt(lm, seed=2)
    path = clt.save(tmp_path / "clt.safetensors")
    code, out, err = _run(["graph", "the fox", "--transcoders", str(path), "--model", "tiny", "--out",
                           str(tmp_path / "g"), "--dashboard-contexts", "8"], capsys)
    assert code == 0, err
    page = (tmp_path / "g" / "graph.html").read_text()
    data = json.loads(re.search(r'<script type="application/json" id="graph-data">(.*?)</script>', page, re.S)
                      .group(1).replace("<\\/", "</"))
    summary = json.loads((tmp_path / "g" / "summary.json").read_text())
    kept = {(int(n["layer"]), int(n["node_id"].split("_")[1])) for n in json.loads(
        (tmp_path / "g" / "graph.json").read_text())["nodes"] if n["feature_type"] == "cross layer transcoder"}
    keys = {tuple(int(x) for x in k.split("_")) for k in data["dashboards"]}
    assert kept <= keys and summary["dashboards"] == len(keys) > 0
    layer, f = sorted(keys)[0]
    dash = html.unescape(data["dashboards"][f"{layer}_{f}"])
    assert f"Feature {f} at blocks.{layer}.mlp_in (layer {layer})" in dash
    eff = logit_effects(lm, clt, f, k=8, layer=layer)
    assert all(f"{v:+.3f}" in dash for _, _, v in eff.top)
    assert "Top examples" in dash and "density" in dash


def test_graph_without_dashboards_and_bad_dashboard_contexts(fake_model, tmp_path, capsys):
    import avec.models

    lm = avec.models.load("tiny")
    path = random_clt(lm, seed=2).save(tmp_path / "clt.safetensors")
    code, out, err = _run(["graph", "the fox", "--transcoders", str(path), "--model", "tiny", "--out",
                           str(tmp_path / "g"), "--dashboard-contexts", "0"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "g" / "summary.json").read_text())["dashboards"] == 0
    fake_model.clear()
    code, out, err = _run(["graph", "the fox", "--transcoders", str(path), "--out", str(tmp_path / "h"),
                           "--dashboard-contexts", "-1"], capsys)
    assert code == 2 and "allowed 0 (no dashboards) .. 4096" in " ".join((out + err).replace("│", " ").split())
    assert not fake_model
