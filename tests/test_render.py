"""One rendering path (``avec.app.render``): the CLI's tables and the report's fragments are drawn from a
result's ``to_dict()`` only, for every result type; a dict that says something else renders that."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from avec.app import render
from avec.app.report import Report

from _steering_tiny import tiny_lm_with_tokenizer


@pytest.fixture(scope="module")
def lm(smollm2):
    return tiny_lm_with_tokenizer(smollm2.tokenizer)


def _results(lm):
    """One instance of every result type, keyed by type name."""
    from avec.circuits.interventions import FeatureIntervention
    from avec.data.labelled import load as load_labelled
    from avec.dictionaries.evaluate import evaluate, evaluate_transcoder
    from avec.dictionaries import features as F
    from avec.dictionaries.latents import collect_latents, prompt_features
    from avec.dictionaries.sae import SAE
    from avec.dictionaries.train import TrainResult
    from avec.dictionaries import CrossLayerTranscoder, layer_points
    from avec.lens import dla, logit_lens, residual_norms, weight_norms
    from avec.lens.decomposition import decompose
    from avec.lens.tuned_lens import LensComparison
    from avec.maze.fields import VectorField
    from avec.maze.world import Maze
    from avec.patching import activation_patching
    from avec.probes.ccs import ccs
    from avec.probes.linear import probe
    from avec.steering import coefficient_scan, contrast, side_by_side
    from avec.steering.caa import load_ab
    from avec.steering.evaluate import ab_eval, effectiveness, perplexity_ratio
    from test_circuits_graph import random_graph

    g = torch.Generator().manual_seed(0)
    v = contrast(lm, "Love", "Hate", at=1)
    out = {}
    out["Completions"] = side_by_side(lm, ["I hate you because"], 4 * v, 3)
    out["ScanResult"] = coefficient_scan(lm, "I hate you because", v, (" love", " hate"), n=5)
    out["LogitLens"] = logit_lens(lm, ["The Eiffel Tower is in"], [" Paris"])
    out["DLA"] = dla(lm, "The Eiffel Tower is in", " Paris", " Rome", heads=True)
    out["ResidualDecomposition"] = decompose(lm, "The Eiffel Tower is in")
    out["ResidualNorms"] = residual_norms(lm, ["The cat sat.", "Paris is big."])
    out["WeightNorms"] = weight_norms(lm)
    out["LensComparison"] = LensComparison(torch.rand(4, generator=g), torch.rand(4, generator=g), "tiny")
    out["PatchingResult"] = activation_patching(lm, "The capital of France is", "The capital of Spain is",
                                                answer=" Paris", wrong=" Madrid")
    data = load_labelled("sentiment").sample(24)
    out["ProbeResult"] = probe(lm, data, [0, 2], folds=2)
    out["CCSResult"] = ccs(lm, load_labelled("truth/capitals").sample(24), layers=[1], n_restarts=1, pca=4)
    texts = ["I went to the party and", "The committee met to"]
    out["Effect"] = effectiveness(lm, texts, 4 * v, ["love"])
    out["Perplexity"] = perplexity_ratio(lm, texts, 4 * v)
    out["ABScores"] = ab_eval(lm, load_ab("corrigible", "test")[:3])
    sae = SAE(arch="relu", d_in=64, d_sae=32, hook="blocks.1.resid_post", normalise="none")
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(64, 32, generator=g) / 8)
        sae.W_dec.copy_(torch.randn(32, 64, generator=g) / 6)
        sae.b_enc.fill_(0.02)
    x = torch.randn(300, 64, generator=g) * 0.3
    out["SAEEvaluation"] = evaluate(sae, [x])
    g2 = torch.Generator().manual_seed(1)
    ids = torch.randint(100, 4000, (2, 9), generator=g2)
    out["LogitEffects"] = F.logit_effects(lm, sae, 3, k=4)
    out["FeatureFilter"] = F.filter_features(lm, sae, sae.cfg.hook, ids[:1], ids[1:])
    out["TopExamples"] = F.top_examples(lm, sae, sae.cfg.hook, ids, [0, 5], k=2)
    out["PromptFeatures"] = prompt_features(lm, sae, sae.cfg.hook, ids[0], k=3)
    out["FeatureDensity"] = collect_latents(lm, sae, sae.cfg.hook, ids).density()
    pts = layer_points(2)
    clt = CrossLayerTranscoder(arch="relu", d_in=64, d_sae=16, n_layers=2, **pts)
    out["TranscoderEvaluation"] = evaluate_transcoder(
        clt, [dict(zip(pts["reads"] + pts["writes"], (x, 2 * x, -x, x.flip(1))))])
    out["TrainResult"] = TrainResult({"s": None}, [{"sae": "s", "step": s, "fvu": 1 / (s + 1), "l0": 3.0}
                                                   for s in range(3)], 3, None)
    out["AttributionGraph"] = random_graph(seed=2)
    out["FeatureIntervention"] = FeatureIntervention(
        "x", ((1, 2, 3, 0.0),), torch.tensor([1.5]), torch.randn(12, generator=g), torch.randn(12, generator=g),
        {i: f"t{i}" for i in range(6)}, k=4)
    maze = Maze.from_seed(0)
    cells = np.array([c for c in zip(*np.nonzero(maze.grid)) if tuple(c) != maze.cheese][:12])
    probs = np.random.default_rng(0).dirichlet(np.ones(5), len(cells))
    out["VectorField"] = VectorField(maze, cells, probs, "a")
    out["FieldDiff"] = VectorField(maze, cells, probs[::-1].copy(), "b").diff(out["VectorField"])
    out.update(_maze_results())
    return out


def _maze_results():
    """The maze's statistics, on made-up numbers (their computation is tested in tests/maze)."""
    import pandas as pd

    from avec.maze.behaviour import FEATURES, BehaviourStats
    from avec.maze.evaluate import Motivation
    from avec.maze.experiments import CoefficientSweep, SteeringStats
    from avec.maze.retarget import CheeseChannels, RetargetResult

    rng = np.random.default_rng(3)
    n = 40
    p_ch, p_tr = rng.uniform(0, 0.6, n), rng.uniform(0, 0.4, n)
    frame = pd.DataFrame({"seed": np.arange(n), "size": rng.choice([9, 11, 15], n), "got_cheese": rng.integers(0, 2, n),
                          "steps": rng.integers(5, 60, n), "p_cheese": p_ch, "p_top_right": p_tr,
                          **{f: rng.uniform(0, 20, n) for f in FEATURES}})
    channels = CheeseChannels("embedder.block2.res1.resadd_out", np.array([3, 7]), np.array([[0, 1], [1, 0]]),
                              np.array([0.9, 0.5]), np.array([0.3, 0.2]), rng.normal(size=16), 12)
    return {
        "BehaviourStats": BehaviourStats(frame, {f: 0.1 * i for i, f in enumerate(FEATURES)}, -0.2, 0.7,
                                         {f: 0.6 for f in FEATURES}, 0.55),
        "Motivation": Motivation(p_ch, p_tr, frame["size"].to_numpy()),
        "CoefficientSweep": CoefficientSweep("cheese", np.linspace(-2, 2, 5), rng.uniform(0, 1, 5), rng.uniform(0, 0.5, 5),
                                             rng.uniform(0, 1, 5), rng.uniform(0, 0.5, 5), rng.uniform(0, 1, 5)),
        "SteeringStats": SteeringStats("cheese vector", np.arange(n), p_ch, p_ch / 2, p_tr, p_tr * 1.5, {"coeff": 1.0}),
        "CheeseChannels": channels,
        "RetargetResult": RetargetResult(channels, "signal", 2.0, None, False, [[1, 2]] * n, rng.integers(1, 9, n),
                                         rng.uniform(0.01, 0.5, n), rng.uniform(0.01, 0.9, n), None, None),
    }


@pytest.fixture(scope="module")
def results(lm):
    import matplotlib

    matplotlib.use("Agg")
    return _results(lm)


def test_every_result_type_is_covered(results):
    """A new result type with to_dict fails here until it renders (and is added to ``_results``)."""
    assert set(render.result_types()) == set(results)


def test_every_result_renders_in_the_cli_and_the_report(results):
    import matplotlib.pyplot as plt

    for name, r in results.items():
        d = render.as_dict(r)
        assert render.kind(d) == name
        assert json.loads(json.dumps(d, allow_nan=False)) == d
        shown = render.text(r)
        assert shown.strip(), name
        assert render.text(d) == shown, name  # the dict alone renders the same
        fragment = render.html(r)
        assert fragment.count("<img") == 1 and "<table" in fragment, name
        plt.close("all")


@pytest.mark.parametrize("name", ["Completions", "ScanResult", "LogitLens", "DLA", "ResidualDecomposition",
                                  "ResidualNorms", "WeightNorms", "PatchingResult", "ProbeResult", "CCSResult",
                                  "Effect", "Perplexity", "ABScores", "TopExamples", "PromptFeatures", "FeatureDensity",
                                  "TranscoderEvaluation", "LogitEffects", "TrainResult", "VectorField", "FieldDiff",
                                  "BehaviourStats", "Motivation", "CoefficientSweep", "SteeringStats", "CheeseChannels",
                                  "RetargetResult"])
def test_rebuilt_results_say_what_their_dict_says(results, name):
    """Types rebuilt from their dict: the rebuilt object's dict is the dict (nothing lost on the way)."""
    d = render.as_dict(results[name])
    assert render.as_dict(render.view(d)) == d


def _altered(r, change):
    d = render.as_dict(r)
    change(d)

    class Altered:
        def to_dict(self):
            return d

    return Altered()


def test_an_altered_dict_renders_the_altered_values(results):
    """The CLI text and the report fragment follow the dict, not the object."""
    def scale_norms(d):
        d["norms"] = [[x * 1000 for x in row] for row in d["norms"]]

    norms = results["ResidualNorms"]
    before, after = render.table(norms), render.table(_altered(norms, scale_norms))
    assert np.allclose(after["mean_norm"], before["mean_norm"] * 1000, rtol=1e-5)

    def rename(d):
        d["names"] = [n.upper() + "!" for n in d["names"]]

    dla = results["DLA"]
    text = render.text(_altered(dla, rename))
    assert "EMBED!" in text and "EMBED!" not in render.text(dla)
    assert "EMBED!" in Report("t").section("s").raw(render.html(_altered(dla, rename))).parts[0]

    def swap(d):
        d["top"][0][1] = "zebra-token"

    assert "zebra-token" in render.text(_altered(results["LogitEffects"], swap))

    def ev(d):
        d["fvu"] = 123.5

    assert "123.5" in render.text(_altered(results["SAEEvaluation"], ev))

    def graph(d):
        d["nodes"][0]["clerp"] = "my-label"

    assert "my-label" in render.text(_altered(results["AttributionGraph"].to_dict(), graph))


def test_unknown_dicts_are_refused():
    with pytest.raises(ValueError, match="names no result type"):
        render.view({"a": 1})
    with pytest.raises(ValueError, match="no renderer for a 'Nope' dict"):
        render.view({"type": "Nope"})
    with pytest.raises(ValueError, match="has no 'probs'"):
        render.view({"type": "LogitLens"})


def test_cli_output_is_built_from_to_dict(tmp_path, lm, monkeypatch):
    """`avec norms` prints what the result's dict says: a to_dict that changes the values changes the output."""
    from avec.app.cli import app
    from avec.lens.norms import ResidualNorms

    folder = tmp_path / "tiny"
    lm.hf.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    plain = CliRunner().invoke(app, ["norms", "--model", str(folder)])
    assert plain.exit_code == 0, plain.output
    original = ResidualNorms.to_dict

    def loud(self):
        d = original(self)
        d["point_names"] = [f"POINT-{i}" for i in range(len(d["point_names"]))]
        return d

    monkeypatch.setattr(ResidualNorms, "to_dict", loud)
    altered = CliRunner().invoke(app, ["norms", "--model", str(folder)])
    assert altered.exit_code == 0, altered.output
    assert "POINT-0" in altered.output and "POINT-0" not in plain.output
    assert "blocks.0.resid_pre" in plain.output and "blocks.0.resid_pre" not in altered.output.split("mean growth")[0]
