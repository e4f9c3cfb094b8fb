"""`avec serve`'s patching, SAE feature and attribution-graph pages over real HTTP: each endpoint answers what
the library gives for the same call made directly, long work streams progress, bad input is answered 400 with
the reason (the server goes on), and dictionaries are read only from the data folder (or shipped with avec).
A tiny random model with SmolLM2's tokenizer, a random SAE and a random cross-layer transcoder; SmolLM2 with its
shipped SAE once, at the end."""

import json
import os
import urllib.request

import pytest
import torch

from avec.app.server import BackgroundServer, create_app
from avec.circuits import attribute
from avec.dictionaries.circuit_tracer_io import save_circuit_tracer
from avec.dictionaries.features import logit_effects, steer
from avec.dictionaries.heldout import heldout_contexts
from avec.dictionaries.latents import collect_latents, prompt_features
from avec.dictionaries.sae import SAE
from avec.dictionaries.transcoder import load_transcoder
from avec.patching import activation_patching
from avec.steering import contrast

from _server import call
from _steering_tiny import tiny_lm_with_tokenizer
from test_circuits_attribution import random_clt
from test_dictionaries_features import random_sae
from test_server import _events

CONTEXTS = 24  # held-out contexts of 32 tokens the feature pages read (small: tests)
CLEAN, CORRUPT = "The capital of France is", "The capital of Germany is"
SAE_AT = "blocks.1.resid_post"
WORDS = " ".join(["word"] * 40)  # 40 tokens


def _json(x):
    return json.loads(json.dumps(x, allow_nan=False))


@pytest.fixture(scope="module")
def lm(smollm2):
    return tiny_lm_with_tokenizer(smollm2.tokenizer)


@pytest.fixture(scope="module")
def data_dir(lm, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dictionaries")
    random_sae(d_in=64, d_sae=96, hook=SAE_AT).save(folder / "sae.safetensors")
    random_clt(lm, reads="resid_mid").save(folder / "clt.safetensors")
    save_circuit_tracer(random_clt(lm, seed=1, reads="resid_mid"), folder / "ct", model_name="tiny")
    contrast(lm, "Love", "Hate", at=1).save(folder / "love.safetensors")  # a steering vector: not a dictionary
    (folder / "broken.safetensors").write_bytes(b"not safetensors")
    outside = tmp_path_factory.mktemp("outside")
    random_sae(d_in=64, d_sae=96, hook=SAE_AT).save(outside / "secret.safetensors")
    os.symlink(outside / "secret.safetensors", folder / "link.safetensors")
    (folder / "leaky").mkdir()  # a circuit-tracer config listing a file outside the data folder
    (folder / "leaky" / "config.yaml").write_text("model_kind: transcoder_set\nfeature_input_hook: hook_resid_mid\n"
                                                  f"feature_output_hook: hook_mlp_out\ntranscoders: [{outside}/secret.safetensors]\n")
    return folder


@pytest.fixture(scope="module")
def server(lm, data_dir):
    with BackgroundServer(create_app(lm, data_dir=data_dir, feature_contexts=CONTEXTS)) as s:
        yield s


@pytest.fixture(scope="module")
def contexts(lm):
    return heldout_contexts(lm.tokenizer, CONTEXTS, 32)


# ============================================================================ patching
def test_patching_equals_the_library_and_streams_progress(server, lm):
    body = {"clean": CLEAN, "corrupted": CORRUPT, "answer": " Paris", "wrong": " Berlin", "points": ["resid_pre", "mlp_out"],
            "first_layer": 1, "last_layer": 2}
    events = _events(server.url + "/api/patching/run", body)
    kind, d = events[-1]
    assert kind == "result" and d["points"] == ["resid_pre", "mlp_out"]
    for point in ("resid_pre", "mlp_out"):
        want = activation_patching(lm, CLEAN, CORRUPT, point, "position", answer=" Paris", wrong=" Berlin",
                                   layers=[1, 2]).to_dict()
        got = d["results"][point]
        assert got.pop("seconds") > 0 and want.pop("seconds") > 0
        assert got == _json(want)
    assert len(d["results"]["resid_pre"]["values"]) == 2 and d["results"]["mlp_out"]["labels"][0] == ["1", "2"]
    cells = 2 * len(lm.to_tokens(CLEAN))  # 2 layers x the positions, per point
    done = [(e["stage"], e["done"], e["total"]) for k, e in events if k == "progress" and "done" in e]
    assert done[-1] == ("patching mlp_out (2 of 2)", cells, cells)
    assert [x for x in done if x[0].startswith("patching resid_pre")][-1][1:] == (cells, cells)
    # defaults: every layer, the three points
    status, full = call(server.url + "/api/patching/run", {k: body[k] for k in ("clean", "corrupted", "answer", "wrong")})
    assert status == 200 and full["points"] == ["resid_pre", "attn_out", "mlp_out"]
    assert len(full["results"]["attn_out"]["values"]) == 3 and full["results"]["attn_out"]["direction"] == "denoise"


PATCH = {"clean": CLEAN, "corrupted": CORRUPT, "answer": " Paris", "wrong": " Berlin"}
PATCH_BAD = [
    ({**PATCH, "corrupted": "The capital of the Federal Republic of Germany is"}, "must have the same token length"),
    ({**PATCH, "clean": WORDS, "corrupted": WORDS}, "clean is 40 tokens; at most 32 are allowed"),
    ({**PATCH, "answer": " Paris is"}, "answer: ' Paris is' is"),
    ({**PATCH, "points": ["resid_post"]}, "points must be a non-empty list of distinct names from"),
    ({**PATCH, "points": []}, "points must be a non-empty list"),
    ({**PATCH, "first_layer": 2, "last_layer": 1}, "last_layer (1) is below first_layer (2)"),
    ({**PATCH, "last_layer": 3}, "last_layer must be in 0..2, got 3"),
    ({**PATCH, "first_layer": "0"}, "first_layer must be a whole number"),
    ({**PATCH, "direction": "sideways"}, "direction must be one of ['denoise', 'noise']"),
    ({**PATCH, "answer": " Paris", "wrong": " Paris"}, "the metric is the same on the clean and corrupted prompts"),
]


@pytest.mark.parametrize("body, says", PATCH_BAD, ids=[s for _, s in PATCH_BAD])
def test_patching_bad_input(server, body, says):
    status, d = call(server.url + "/api/patching/run", body)
    assert status == 400 and says in d["error"], d


# ============================================================================ features
def test_dictionaries_listed_from_the_data_folder_only(server):
    status, d = call(server.url + "/api/features/dictionaries")
    assert status == 200 and d["contexts"] == CONTEXTS and d["context_tokens"] == 32
    names = {s["name"]: s for s in d["dictionaries"]}
    # no shipped SAE (SmolLM2's does not fit this model), no steering vector, no broken file, no link out, no
    # folder whose config lists files outside
    assert sorted(names) == ["clt.safetensors", "ct", "sae.safetensors"]
    assert names["sae.safetensors"] == {"name": "sae.safetensors", "kind": "sae", "layers": 1, "reads": [SAE_AT],
                                        "d_sae": 96}
    assert names["clt.safetensors"]["layers"] == 3 and names["ct"]["reads"][2] == "blocks.2.resid_mid"
    assert [t["name"] for t in call(server.url + "/api/graph/transcoders")[1]["transcoders"]] == ["clt.safetensors", "ct"]


def test_prompt_features_equal_the_library(server, lm, data_dir):
    prompt = "The cat sat on the mat by the door."
    status, d = call(server.url + "/api/features/prompt", {"dictionary": "sae.safetensors", "prompt": prompt, "k": 4})
    assert status == 200, d
    sae = SAE.load(data_dir / "sae.safetensors")
    ids = torch.tensor([lm.tokenizer.bos_token_id] + lm.to_tokens(prompt))  # read as the contexts are: BOS first
    assert d["features"] == _json(prompt_features(lm, sae, SAE_AT, ids, k=4).to_dict())
    assert d["d_sae"] == 96 and len(d["features"]["top_ids"]) == len(ids)
    assert d["features"]["read"][0] is False and d["features"]["top_ids"][0] == [-1] * 4  # the BOS is not read
    clt = load_transcoder(data_dir / "clt.safetensors")
    status, d = call(server.url + "/api/features/prompt", {"dictionary": "clt.safetensors", "layer": 1, "prompt": prompt})
    assert status == 200 and d["features"] == _json(prompt_features(lm, clt, None, ids, layer=1).to_dict())
    assert d["features"]["at"] == "blocks.1.resid_mid"


def test_feature_page_equals_the_library_and_reads_the_contexts_once(server, lm, data_dir, contexts):
    sae = SAE.load(data_dir / "sae.safetensors")
    index = collect_latents(lm, sae, SAE_AT, contexts)
    counts = index.counts()
    f = int((counts - counts.median()).abs().argmin())  # a feature of middling density
    first = _events(server.url + "/api/features/feature", {"dictionary": "sae.safetensors", "feature": f, "k": 6})
    kind, d = first[-1]
    assert kind == "result"
    assert d["examples"] == _json(index.examples([f], k=6)[f].to_dict())
    assert 0 < d["examples"]["density"] < 1 and len(d["examples"]["examples"]) == 6
    assert d["effects"] == _json(logit_effects(lm, sae, f, k=10).to_dict())
    assert d["contexts"]["n_texts"] == CONTEXTS and d["at"] == SAE_AT
    reads = [e for k, e in first if k == "progress" and e.get("stage", "").startswith("reading sae.safetensors")]
    assert reads[-1]["done"] == reads[-1]["total"] == CONTEXTS
    # another feature of the same dictionary: read from memory, no pass over the contexts
    other = (f + 1) % 96
    again = _events(server.url + "/api/features/feature", {"dictionary": "sae.safetensors", "feature": other})
    assert not [e for k, e in again if k == "progress" and "reading" in e.get("stage", "")]
    assert again[-1][1]["examples"] == _json(index.examples([other], k=10)[other].to_dict())
    # a cross-layer transcoder's feature at a layer: its own latents there; logit effects of its decoders to
    # this and every later layer, summed
    clt = load_transcoder(data_dir / "clt.safetensors")
    cindex = collect_latents(lm, clt, None, contexts, layer=1)
    g = int(cindex.counts().argmax())
    status, d = call(server.url + "/api/features/feature", {"dictionary": "clt.safetensors", "layer": 1, "feature": g})
    assert status == 200 and d["at"] == "blocks.1.resid_mid"
    assert d["effects"] == _json(logit_effects(lm, clt, g, k=10, layer=1).to_dict()) and d["effects"]["layer"] == 1
    assert "every later MLP output, summed" in d["effects_path"]
    assert d["examples"] == _json(cindex.examples([g], k=10)[g].to_dict()) and d["examples"]["n_active"] > 0


def test_feature_density_equals_the_library(server, lm, data_dir, contexts):
    """The density list: every feature's firing frequency over the contexts the feature pages read."""
    sae = SAE.load(data_dir / "sae.safetensors")
    index = collect_latents(lm, sae, SAE_AT, contexts)
    status, d = call(server.url + "/api/features/density", {"dictionary": "sae.safetensors"})
    assert status == 200, d
    D = d["density"]
    assert D == _json(index.density(0.1).to_dict()) and D["type"] == "FeatureDensity"
    assert len(D["density"]) == 96 and D["n_read"] == index.n_read
    assert D["density"] == pytest.approx((index.counts().double() / index.n_read).tolist())
    assert D["n_dead"] == int((index.counts() == 0).sum()) and D["at"] == SAE_AT
    # the feature page of a feature says the same density
    f = int(torch.tensor(D["counts"]).argmax())
    status, page = call(server.url + "/api/features/feature", {"dictionary": "sae.safetensors", "feature": f})
    assert page["examples"]["density"] == pytest.approx(D["density"][f])
    # a cross-layer transcoder: its own layer's latents
    clt = load_transcoder(data_dir / "clt.safetensors")
    status, d = call(server.url + "/api/features/density", {"dictionary": "clt.safetensors", "layer": 1})
    assert status == 200 and d["layer"] == 1 and d["density"]["at"] == "blocks.1.resid_mid"
    assert d["density"]["counts"] == collect_latents(lm, clt, None, contexts, layer=1).counts().tolist()


def test_steering_with_a_feature_equals_the_library(server, lm, data_dir):
    sae = SAE.load(data_dir / "sae.safetensors")
    body = {"dictionary": "sae.safetensors", "feature": 7, "prompt": "I think that", "coeff": 25.0, "max_new_tokens": 8}
    status, d = call(server.url + "/api/features/steer", body)
    assert status == 200, d
    with lm.dictionary(sae, SAE_AT) as att:
        want = lm.generate(["I think that"], 8, interventions=[steer(att, 7, 25.0)])
    assert [d["steered"]] == want and [d["unsteered"]] == lm.generate(["I think that"], 8)
    assert d["steered"] != d["unsteered"] and d["hook"] == "blocks.1.resid_post.sae.latents"
    assert not lm.dictionaries  # attached for the call only


def test_concurrent_feature_steering_and_vector_steering_keep_to_themselves(server, lm):
    """Feature edits (a dictionary attached for the call) and vector steering in flight together: each answer
    equals the same request made alone, and no dictionary stays attached."""
    import threading

    reqs = [("/api/features/steer", {"dictionary": "sae.safetensors", "feature": f, "prompt": "I think that",
                                     "coeff": c, "max_new_tokens": 12}) for f, c in ((7, 25.0), (7, -25.0), (40, 30.0))]
    reqs += [("/api/steering/generate", {"prompt": "I think that", "coeff": 8.0, "max_new_tokens": 12, "plus": "Love",
                                         "minus": "Hate", "layer": 1}),
             ("/api/features/prompt", {"dictionary": "clt.safetensors", "layer": 2, "prompt": "I think that"})]
    alone = [call(server.url + path, body) for path, body in reqs]
    assert all(s == 200 for s, _ in alone)
    assert len({d["steered"] for _, d in alone[:3]}) == 3
    together = [None] * len(reqs)
    start = threading.Barrier(len(reqs))

    def fire(i):
        start.wait()
        together[i] = call(server.url + reqs[i][0], reqs[i][1])

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone and not lm.dictionaries


FEATURE_BAD = [
    ("feature", {"dictionary": "sae.safetensors", "feature": 96}, "feature must be in 0..95, got 96"),
    ("feature", {"dictionary": "sae.safetensors", "feature": "3"}, "feature must be a whole number"),
    ("feature", {"dictionary": "sae.safetensors", "feature": 1, "layer": 1}, "layer must be in 0..0, got 1"),
    ("feature", {"dictionary": "clt.safetensors", "feature": 1, "layer": 3}, "layer must be in 0..2, got 3"),
    ("feature", {"dictionary": "sae.safetensors", "feature": 1, "k": 500}, "k must be in 1..50"),
    ("feature", {"dictionary": "love.safetensors", "feature": 1}, "is not an avec SAE or transcoder file"),
    ("feature", {"dictionary": "broken.safetensors", "feature": 1}, "is not an avec SAE or transcoder file"),
    ("feature", {"dictionary": "../outside/secret.safetensors", "feature": 1}, "outside the data folder"),
    ("feature", {"dictionary": "link.safetensors", "feature": 1}, "outside the data folder"),
    ("feature", {"dictionary": "/etc/passwd", "feature": 1}, "not an absolute path"),
    ("feature", {"dictionary": "leaky", "feature": 1}, "which is not a .safetensors file in the data folder"),
    ("feature", {"dictionary": "shipped:smollm2-blocks.12.resid_post-topk-4608", "feature": 1},
     "is not a shipped SAE or transcoder set of this model; shipped for it: none"),
    ("density", {"dictionary": "clt.safetensors", "layer": 3}, "layer must be in 0..2"),
    ("density", {"dictionary": "love.safetensors"}, "is not an avec SAE or transcoder file"),
    ("density", {"dictionary": "sae.safetensors", "density": 1}, "unknown field(s) ['density']"),
    ("prompt", {"dictionary": "sae.safetensors", "prompt": "word " * 90}, "tokens; at most 64 are allowed"),
    ("prompt", {"dictionary": "sae.safetensors", "prompt": "Hi", "k": 0}, "k must be in 1..20"),
    ("steer", {"dictionary": "sae.safetensors", "feature": 1, "prompt": "Hi", "coeff": 1e6}, "coeff must be in [-1000, 1000]"),
    ("steer", {"dictionary": "sae.safetensors", "feature": 1, "prompt": "Hi", "coeff": 1, "max_new_tokens": 65},
     "max_new_tokens must be in 1..64"),
]


@pytest.mark.parametrize("endpoint, body, says", FEATURE_BAD, ids=[s for _, _, s in FEATURE_BAD])
def test_features_bad_input(server, endpoint, body, says):
    status, d = call(f"{server.url}/api/features/{endpoint}", body)
    assert status == 400 and says in d["error"], d


# ============================================================================ attribution graphs
def test_graph_equals_the_library_and_links_feature_pages(server, lm, data_dir):
    prompt = "The capital of France is"
    body = {"prompt": prompt, "transcoder": "clt.safetensors", "node_threshold": 0.7, "edge_threshold": 0.9,
            "max_feature_nodes": 40, "max_n_logits": 3}
    events = _events(server.url + "/api/graph/run", body)
    kind, d = events[-1]
    assert kind == "result", d
    g = attribute(lm, load_transcoder(data_dir / "clt.safetensors"), prompt, max_feature_nodes=40, max_n_logits=3,
                  progress=False)
    want = g.to_dict(0.7, 0.9, slug=f"avec-{d['id']}")
    got = d["graph"]
    assert got["metadata"]["info"].pop("seconds") > 0 and want["metadata"]["info"].pop("seconds") > 0
    assert got == _json(want)
    p = g.prune(0.7, 0.9)
    assert d["summary"]["nodes"] == int(p.nodes.sum()) and d["summary"]["edges"] == int(p.edges.sum())
    bar = [e for k, e in events if k == "progress" and e.get("stage") == "attribution"]
    assert bar[-1]["done"] == bar[-1]["total"] == 40 + 3  # the attribution bar, streamed: every node attributed
    # the viewer: Plotly from this server, each feature node linked to its page on the same transcoder
    with urllib.request.urlopen(server.url + d["view"]) as r:
        page = r.read().decode()
    assert '<script src="/static/plotly.min.js">' in page and "cdn" not in page
    data = json.loads(page.split('id="graph-data">')[1].split("</script>")[0])
    l, _, f = g.features[0].tolist()
    assert data["dashboards"][f"{l}_{f}"] == f"/feature?dictionary=clt.safetensors&layer={l}&id={f}"
    # the same graph at other thresholds, without attributing again
    status, again = call(server.url + "/api/graph/prune", {"id": d["id"], "node_threshold": 0.5, "edge_threshold": 0.8})
    assert status == 200 and again["graph"]["nodes"] == _json(g.to_dict(0.5, 0.8))["nodes"]
    assert again["view"].endswith("node_threshold=0.5&edge_threshold=0.8")


def test_graph_from_a_circuit_tracer_folder(server, lm, data_dir):
    from avec.dictionaries.circuit_tracer_io import load_circuit_tracer

    status, d = call(server.url + "/api/graph/run", {"prompt": "Hello there", "transcoder": "ct", "max_feature_nodes": 10})
    assert status == 200, d
    g = attribute(lm, load_circuit_tracer(data_dir / "ct", lm=lm).float(), "Hello there", max_feature_nodes=10,
                  max_n_logits=5, progress=False)
    assert d["graph"]["nodes"] == _json(g.to_dict())["nodes"]


GRAPH_BAD = [
    ({"prompt": "Hi", "transcoder": "sae.safetensors"}, "is an SAE; this page reads transcoders"),
    ({"prompt": "Hi", "transcoder": "shipped:smollm2-blocks.12.resid_post-topk-4608"}, "this page reads transcoders"),
    ({"prompt": WORDS, "transcoder": "clt.safetensors"}, "prompt is 40 tokens; at most 32 are allowed"),
    ({"prompt": "Hi", "transcoder": "clt.safetensors", "node_threshold": 1.5}, "node_threshold must be in (0, 1]"),
    ({"prompt": "Hi", "transcoder": "clt.safetensors", "edge_threshold": 0}, "edge_threshold must be in (0, 1]"),
    ({"prompt": "Hi", "transcoder": "clt.safetensors", "max_feature_nodes": 5000}, "max_feature_nodes must be in 0..2000"),
    ({"prompt": "Hi", "transcoder": "clt.safetensors", "max_n_logits": 0}, "max_n_logits must be in 1..20"),
    ({"prompt": "Hi", "transcoder": "missing"}, "has suffix ''; allowed: .safetensors or a folder"),
]


@pytest.mark.parametrize("body, says", GRAPH_BAD, ids=[s for _, s in GRAPH_BAD])
def test_graph_bad_input(server, body, says):
    status, d = call(server.url + "/api/graph/run", body)
    assert status == 400 and says in d["error"], d


def test_graph_view_and_prune_refuse_unknown_graphs(server, lm, tmp_path):
    assert call(server.url + "/api/graph/prune", {"id": "../etc"})[0] == 400
    status, d = call(server.url + "/api/graph/prune", {"id": "0" * 16})
    assert status == 400 and "no graph '0000000000000000' on this server" in d["error"]
    assert call(server.url + "/graph/view/" + "0" * 16)[0] == 400
    status, d = call(server.url + "/graph/view/" + "0" * 16 + "?node_threshold=abc")
    assert status == 400 and "node_threshold must be a number" in d["error"]
    # a transcoder that does not replace every MLP of this model
    partial = random_clt(tiny_lm_with_tokenizer(lm.tokenizer, n_layers=2), reads="resid_mid")
    partial.save(tmp_path / "two.safetensors")
    with BackgroundServer(create_app(lm, data_dir=tmp_path)) as s:
        status, d = call(s.url + "/api/graph/run", {"prompt": "Hi", "transcoder": "two.safetensors"})
        assert status == 400 and "every MLP replaced" in d["error"], d
        assert call(s.url + "/api/model")[0] == 200


def test_smollm2_shipped_sae_pages(smollm2):
    """The shipped SAE is listed for SmolLM2; its prompt features and a feature page equal the library's."""
    from avec.dictionaries.shipped import available, load_shipped

    name = "smollm2-blocks.12.resid_post-topk-4608"
    sae = load_shipped(name)
    with BackgroundServer(create_app(smollm2, feature_contexts=4)) as s:
        d = call(s.url + "/api/features/dictionaries")[1]
        listed = {x["name"]: x for x in d["dictionaries"]}
        assert set(listed) == {f"shipped:{n}" for n in available()}  # every shipped dictionary for this model
        assert listed[f"shipped:{name}"]["d_sae"] == 4608
        prompt = "The Eiffel Tower is in Paris"
        status, p = call(s.url + "/api/features/prompt", {"dictionary": f"shipped:{name}", "prompt": prompt})
        assert status == 200
        ids = torch.tensor([smollm2.tokenizer.bos_token_id] + smollm2.to_tokens(prompt))
        assert p["features"] == _json(prompt_features(smollm2, sae, sae.cfg.hook, ids).to_dict())
        # after the BOS no position is an attention sink: every position's strongest latent is of the same order
        tops = [v[0] for v in p["features"]["top_values"][1:]]
        assert max(tops) < 20 * min(tops), tops
        f = p["features"]["top_ids"][-1][0]
        status, fd = call(s.url + "/api/features/feature", {"dictionary": f"shipped:{name}", "feature": f})
        assert status == 200 and fd["at"] == "blocks.12.resid_post"
        index = collect_latents(smollm2, sae, sae.cfg.hook, heldout_contexts(smollm2.tokenizer, 4, 32), batch_size=16)
        assert fd["examples"] == _json(index.examples([f])[f].to_dict())
