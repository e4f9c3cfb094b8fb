"""The per-layer transcoder set shipped for SmolLM2: it loads with its record, its error-kept splice is exact,
without the error term it recovers most of the next-token loss on text outside its corpus, and the tour's
two-hop study runs on a two-hop prompt the tour does not use (the method names no feature and no city)."""

import pytest
import torch

from avec.dictionaries.shipped import available, info, load_shipped

NAME = "smollm2-plt-mlp-batchtopk-512"
TEXT = ("The recipe calls for two cups of flour, a pinch of salt and three eggs. Whisk the eggs until they are "
        "pale, fold in the flour, and bake the batter for twenty minutes at a moderate heat.")

pytestmark = pytest.mark.skipif(NAME not in available(), reason="the transcoder set is not shipped")


class _Section:
    def __init__(self):
        self.texts, self.tables = [], []

    def text(self, t):
        self.texts.append(t)

    def table(self, frame):
        self.tables.append(frame)

    code = raw = text


def test_loads_with_its_record():
    tc = load_shipped(NAME)
    rec = info(NAME)
    assert tc.W_enc.dtype == torch.float32 and not tc.cross_layer and tc.n_layers == 30
    assert tc.cfg.reads[3] == "blocks.3.mlp_in" and tc.cfg.writes[3] == "blocks.3.mlp_out"
    assert tc.cfg.bos is not None and rec["data"]["bos"] == tc.cfg.bos
    assert rec["command"].startswith("avec transcoder train") and len(rec["metrics_held_out"]["fvu"]) == 30


def test_splice_is_exact_with_errors_and_close_without(smollm2):
    lm = smollm2
    tc = load_shipped(NAME)
    ids = torch.tensor([[tc.cfg.bos] + lm.tokenizer(TEXT, add_special_tokens=False)["input_ids"]])
    clean = lm.run(ids).logits
    with lm.dictionary(tc):
        spliced = lm.run(ids).logits
    assert torch.equal(spliced, clean)
    with lm.dictionary(tc, splice="recon"):
        replaced = lm.run(ids).logits
    logp, logq = torch.log_softmax(clean[0, :-1].float(), -1), torch.log_softmax(replaced[0, :-1].float(), -1)
    target = ids[0, 1:]
    ce_clean = -logp.gather(1, target[:, None]).mean()
    ce_replaced = -logq.gather(1, target[:, None]).mean()
    uniform = torch.log(torch.tensor(float(clean.shape[-1])))
    # the replacement model (every MLP replaced) is far better than a uniform guess, though worse than the model
    assert ce_clean < ce_replaced < ce_clean + 0.6 * (uniform - ce_clean), (float(ce_clean), float(ce_replaced))


def test_two_hop_study_on_another_prompt(smollm2):
    from avec.app.tour.circuits import next_tokens, prompt_ids, two_hop

    lm = smollm2
    tc = load_shipped(NAME)
    s = _Section()
    out = two_hop(lm, tc, s, quick=True, prompt="Fact: the capital of the state containing Chicago is",
                  one_hop="Fact: Chicago is a city in the state of", n_edited=3)
    assert out["inter"] == next_tokens(lm, "Fact: Chicago is a city in the state of", bos=True)[0][1]
    g = out["graph"]
    assert int(g.token_ids[0]) == tc.cfg.bos
    if "table" not in out:  # the intermediate answer is not a logit node: the section says so
        assert any("is not among the graph's logit nodes" in t for t in s.texts)
        return
    clean, off, up = out["table"][:3]
    # the clean row is the model's own distribution (transcoders spliced with their error terms: exact)
    ids = prompt_ids(lm, "Fact: the capital of the state containing Chicago is", True)
    p = torch.softmax(lm.run(ids).logits[0, -1].float(), -1)
    inter_id = int(lm.tokenizer(out["inter"], add_special_tokens=False)["input_ids"][0])
    assert clean[f"P({out['inter']!r})"] == pytest.approx(float(p[inter_id]), abs=1e-5)
    # the listed features are active graph nodes, in decreasing influence specific to the intermediate answer
    # (on its logit, beyond the mean over the graph's other logits)
    spec = [f["beyond the other logits' mean"] for f in out["features"]]
    assert spec == sorted(spec, reverse=True) and len(spec) == 3
    i = g.logit_ids.tolist().index(inter_id)
    others = torch.stack([g.influence(j)[:g.n_features] for j in range(g.n_logits) if j != i]).mean(0)
    for f, v in zip(out["features"], spec):
        n = g.feature_node(f["layer"], f["position"], f["feature"])
        assert v == pytest.approx(float(g.influence(i)[n] - others[n]), abs=1e-6)
        assert v > 0 and f[f"influence on {out['inter']!r}"] == pytest.approx(float(g.influence(i)[n]), abs=1e-6)
    for f in out["features"]:
        assert f["activation"] > 0 and g.feature_node(f["layer"], f["position"], f["feature"]) >= 0
    assert off["KL from clean (nats)"] > 0 and up["KL from clean (nats)"] > 0
