"""``to_dict()``: the JSON form of result objects that the CLI, the report and the web app render. Each is
plain JSON (``json.dumps(..., allow_nan=False)`` round trip) and holds the object's own numbers."""

import json

import pytest
import torch

from avec.lens import dla, logit_lens
from avec.patching import activation_patching
from avec.results import jsonable
from avec.steering import coefficient_scan, contrast, side_by_side

from _steering_tiny import tiny_lm_with_tokenizer


@pytest.fixture(scope="module")
def lm(smollm2):
    return tiny_lm_with_tokenizer(smollm2.tokenizer)


def _round_trip(d: dict) -> dict:
    back = json.loads(json.dumps(d, allow_nan=False))
    assert back == d
    return back


def test_jsonable_plain_data_and_refusals():
    assert jsonable({"a": torch.tensor([1.5, float("nan")]), 2: (1, "x", None, float("inf"))}) == \
        {"a": [1.5, None], "2": [1, "x", None, None]}
    assert jsonable(torch.tensor([[True, False]])) == [[True, False]]
    import numpy as np

    assert jsonable(np.float32(0.25)) == 0.25 and jsonable(np.arange(3)) == [0, 1, 2]
    with pytest.raises(TypeError, match="cannot put a object into JSON"):
        jsonable(object())


def test_completions(lm):
    v = contrast(lm, "Love", "Hate", at=1)
    r = side_by_side(lm, ["I hate you because", "Today"], 6 * v, 5)
    d = _round_trip(r.to_dict())
    assert d["type"] == "Completions"
    assert d["prompts"] == list(r.prompts) and d["steered"] == list(r.steered) and d["unsteered"] == list(r.unsteered)
    assert d["steered"] == r.to_frame()["steered"].tolist() and d["settings"] == r.settings


def test_coefficient_scan(lm):
    v = contrast(lm, "Love", "Hate", at=1)
    r = coefficient_scan(lm, "I hate you because", v, (" love", " hate"), n=7, heads=True)
    d = _round_trip(r.to_dict())
    assert d["type"] == "ScanResult" and d["names"] == list(r.names) and d["metric"] == r.metric
    assert torch.equal(torch.tensor(d["coeffs"]), r.coeffs.double())
    assert torch.equal(torch.tensor(d["contributions"]), r.contributions.double())
    assert torch.equal(torch.tensor(d["total"]), torch.tensor(r.to_frame()["total"].to_numpy()).double())
    assert d["clusters"] == list(r.clusters) and d["info"]["answer position"] == r.info["answer position"]


def test_logit_lens(lm):
    r = logit_lens(lm, ["The Eiffel Tower is in", "Hi"], [" Paris", " the"])
    d = _round_trip(r.to_dict())
    assert d["type"] == "LogitLens" and d["point_labels"] == list(r.point_labels)
    for key in ("probs", "logits", "top_probs", "kl"):
        assert torch.equal(torch.tensor(d[key]), getattr(r, key).double()), key
    assert torch.equal(torch.tensor(d["ranks"]), r.ranks) and torch.equal(torch.tensor(d["valid"]), r.valid)
    assert d["top_labels"][2][0][1] == r.top_labels[2][0][1] and d["tracked_labels"] == list(r.tracked_labels)
    frame = r.to_frame()
    row = frame[(frame.prompt == 0) & (frame.position == 1)].iloc[3]
    assert d["top_probs"][3][0][1] == pytest.approx(row["top1_prob"])


def test_dla(lm):
    r = dla(lm, "The Eiffel Tower is in", " Paris", " Rome", heads=True)
    d = _round_trip(r.to_dict())
    assert d["type"] == "DLA" and d["names"] == list(r.names) and d["label"] == r.label
    assert torch.equal(torch.tensor(d["components"]), r.components.double())
    assert torch.equal(torch.tensor(d["heads"]), r.heads.double())
    assert torch.allclose(torch.tensor(d["total"]), torch.tensor(d["logit"]), atol=1e-4)
    assert d["neurons"] is None and d["frozen_post_norm"] is False
    assert d["components"][0][1] == pytest.approx(float(r.to_frame()["contribution"][1]))


def test_activation_patching(lm):
    r = activation_patching(lm, "The capital of France is", "The capital of Spain is", answer=" Paris", wrong=" Madrid")
    d = _round_trip(r.to_dict())
    assert d["type"] == "PatchingResult" and d["axes"] == list(r.axes) and d["labels"] == [list(x) for x in r.labels]
    assert torch.equal(torch.tensor(d["values"]), r.values.double())
    assert torch.equal(torch.tensor(d["raw"]), r.raw.double())
    assert d["clean_metric"] == r.clean_metric and d["point"] == r.point
    assert d["values"][1][2] == pytest.approx(float(r.to_frame()["score"][1 * r.values.shape[1] + 2]))


def test_nan_fields_become_null(lm):
    r = activation_patching(lm, "The capital of France is", "The capital of Spain is", answer=" Paris", wrong=" Madrid")
    import dataclasses

    r2 = dataclasses.replace(r, seconds=float("nan"))
    assert _round_trip(r2.to_dict())["seconds"] is None
