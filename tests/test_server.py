"""`avec serve`'s app, over real HTTP (uvicorn on a free port, in this process): every endpoint answers
what the Python API gives for the same request, bad input is answered 400 with the reason and the server
goes on, concurrent requests with different vectors each get their own result, and files are read only
from the data folder. A tiny random model with SmolLM2's tokenizer (and SmolLM2 itself once, at the end)."""

import json
import os
import threading
import urllib.request
from pathlib import Path

import pytest
import torch

from avec.app.server import BackgroundServer, create_app
from avec.lens import dla, logit_lens
from avec.steering import coefficient_scan, contrast, generate_cells

from _server import call
from _steering_tiny import tiny_lm_with_tokenizer

PROMPT = "I hate you because"
PAIR = {"plus": "Love", "minus": "Hate", "layer": 1}


@pytest.fixture(scope="module")
def lm(smollm2):
    return tiny_lm_with_tokenizer(smollm2.tokenizer)


@pytest.fixture(scope="module")
def data_dir(lm, tmp_path_factory):
    folder = tmp_path_factory.mktemp("vectors")
    (3 * contrast(lm, "Calm", "Angry", at=2)).save(folder / "calm.safetensors")
    (folder / "nested").mkdir()
    contrast(lm, "Paris", "Rome", at=0).save(folder / "nested" / "paris.safetensors")
    (folder / "notes.txt").write_text("not a vector")
    (folder / "model.pt").write_bytes(b"\x80\x04 a pickle would be refused before it is opened")
    (folder / "broken.safetensors").write_bytes(b"not safetensors at all")
    outside = tmp_path_factory.mktemp("outside")
    contrast(lm, "Love", "Hate", at=1).save(outside / "secret.safetensors")
    os.symlink(outside / "secret.safetensors", folder / "link.safetensors")
    return folder


@pytest.fixture(scope="module")
def server(lm, data_dir):
    with BackgroundServer(create_app(lm, data_dir=data_dir)) as s:
        yield s


def test_pages_and_static_files(server):
    import plotly

    for path in ("/", "/steering", "/lens", "/patching", "/features", "/feature", "/graph"):
        with urllib.request.urlopen(server.url + path) as r:
            page = r.read().decode()
            assert r.status == 200 and "/static/plotly.min.js" in page and "model: tiny-llama-tok" in page
    with urllib.request.urlopen(server.url + "/") as r:  # one feature's page is reached by links, not listed
        home = r.read().decode()
        assert 'href="/features"' in home and 'href="/graph"' in home and 'href="/feature"' not in home
    with urllib.request.urlopen(server.url + "/static/plotly.min.js") as r:
        shipped = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
        assert r.read() == shipped.read_bytes()  # the installed package's file, no CDN
    assert call(server.url + "/api/model") == (200, {"name": "tiny-llama-tok", "n_layers": 3, "d_model": 64,
                                                      "n_heads": 4, "vocab": 49152})


def test_generate_equals_the_python_api(server, lm):
    status, d = call(server.url + "/api/steering/generate", {"prompt": PROMPT, "coeff": 6.0, "max_new_tokens": 8, **PAIR})
    assert status == 200, d
    expected = generate_cells(lm, [PROMPT], [("u", None, 0.0), ("s", contrast(lm, "Love", "Hate", at=1), 6.0)], 8)
    c = d["completions"]
    assert c["unsteered"] == expected["u"] and c["steered"] == expected["s"] and c["steered"] != c["unsteered"]
    assert c["unsteered"] == lm.generate([PROMPT], 8)  # 0 * v: the unsteered row is the plain model's
    assert c["vector"] == "6 x (Love - Hate) @ layer 1" and d["hooks"] == ["blocks.1.resid_pre"]
    # another coefficient: the steered text moves, the unsteered one does not
    _, d2 = call(server.url + "/api/steering/generate", {"prompt": PROMPT, "coeff": -6.0, "max_new_tokens": 8, **PAIR})
    assert d2["completions"]["unsteered"] == c["unsteered"] and d2["completions"]["steered"] != c["steered"]


def test_sampling_is_seeded(server):
    body = {"prompt": PROMPT, "coeff": 4.0, "max_new_tokens": 8, "sample": True, "seed": 7, "temperature": 1.5, **PAIR}
    a, b = call(server.url + "/api/steering/generate", body), call(server.url + "/api/steering/generate", body)
    assert a[0] == 200 and a == b
    other = call(server.url + "/api/steering/generate", {**body, "seed": 8})[1]
    assert other["completions"]["steered"] != a[1]["completions"]["steered"]


def test_scan_equals_the_python_api(server, lm):
    status, d = call(server.url + "/api/steering/scan", {"prompt": PROMPT, "target": " love", "against": " hate",
                                                         "lo": -10, "hi": 10, "n": 9, **PAIR})
    assert status == 200, d
    r = coefficient_scan(lm, PROMPT, contrast(lm, "Love", "Hate", at=1), (" love", " hate"), n=9, lo=-10, hi=10)
    assert d["coeffs"] == r.to_dict()["coeffs"] and d["names"] == list(r.names)
    assert torch.allclose(torch.tensor(d["total"], dtype=torch.float64), r.total.double(), atol=1e-5)
    assert d["top"] == r.top(6) and d["metric"] == r.metric


def test_lens_equals_the_python_api(server, lm):
    prompt = "The Eiffel Tower is in the city of"
    status, d = call(server.url + "/api/lens/run", {"prompt": prompt})
    assert status == 200, d
    lens = logit_lens(lm, prompt)
    assert d["lens"] == json.loads(json.dumps(lens.to_dict()))
    answer = int(lens.tracked[0, -1, 0])  # no target given: the model's own prediction
    assert d["dla"] == json.loads(json.dumps(dla(lm, prompt, answer, heads=True).to_dict()))
    _, d2 = call(server.url + "/api/lens/run", {"prompt": prompt, "target": " Paris", "against": " Rome"})
    assert d2["dla"]["label"] == "logit(' Paris') - logit(' Rome')"
    assert d2["dla"]["logit"] == pytest.approx(dla(lm, prompt, " Paris", " Rome").logit.tolist(), abs=1e-6)


def test_concurrent_requests_each_get_their_own_vector(server):
    """Requests with different vectors in flight together (hooks are per call, calls are serialised per
    model): each answer equals the same request made alone."""
    bodies = [{"prompt": PROMPT, "coeff": c, "max_new_tokens": 16, **pair}
              for c, pair in [(8.0, PAIR), (-8.0, PAIR), (8.0, {"plus": "Calm", "minus": "Angry", "layer": 2}),
                              (3.0, {"vector": "calm.safetensors"}), (0.0, PAIR), (12.0, PAIR)]]
    alone = [call(server.url + "/api/steering/generate", b) for b in bodies]
    assert all(s == 200 for s, _ in alone)
    assert len({tuple(d["completions"]["steered"]) for _, d in alone}) >= 4  # different vectors, different text
    together = [None] * len(bodies)
    start = threading.Barrier(len(bodies))

    def fire(i):
        start.wait()
        together[i] = call(server.url + "/api/steering/generate", bodies[i])

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone


def test_saved_vectors_from_the_data_folder(server, lm, data_dir):
    assert call(server.url + "/api/steering/vectors") == \
        (200, {"files": ["broken.safetensors", "calm.safetensors", "nested/paris.safetensors"], "data_dir": True})
    status, d = call(server.url + "/api/steering/generate", {"prompt": PROMPT, "coeff": 2.0, "max_new_tokens": 8,
                                                              "vector": "calm.safetensors"})
    assert status == 200, d
    from avec.steering import SteeringVector

    v = SteeringVector.load(data_dir / "calm.safetensors", lm)
    assert d["completions"]["steered"] == lm.generate([PROMPT], 8, steer=2.0 * v)
    assert d["completions"]["vector"] == "2 x calm.safetensors"


BAD = [  # (endpoint, body, status, what the error says)
    ("generate", {"prompt": "", "coeff": 1, **PAIR}, 400, "prompt is empty"),
    ("generate", {"prompt": "x" * 501, "coeff": 1, **PAIR}, 400, "at most 500 are allowed"),
    ("generate", {"prompt": "word " * 90, "coeff": 1, **PAIR}, 400, "tokens; at most 64 are allowed"),
    ("generate", {"prompt": PROMPT, "coeff": 1e9, **PAIR}, 400, "coeff must be in [-200, 200]"),
    ("generate", {"prompt": PROMPT, "coeff": "5", **PAIR}, 400, "coeff must be a number"),
    ("generate", {"prompt": PROMPT, "coeff": 1, **PAIR, "layer": 3}, 400, "layer must be in 0..2, got 3"),
    ("generate", {"prompt": PROMPT, "coeff": 1, **PAIR, "layer": "1"}, 400, "layer must be a whole number"),
    ("generate", {"prompt": PROMPT, "coeff": 1, **PAIR, "max_new_tokens": 0}, 400, "max_new_tokens must be in 1..64"),
    ("generate", {"prompt": PROMPT, "coeff": 1, **PAIR, "max_new_tokens": 10000}, 400, "max_new_tokens must be in 1..64"),
    ("generate", {"prompt": PROMPT, "coeff": 1, **PAIR, "temperature": 0}, 400, "temperature must be in (0, 5]"),
    ("generate", {"prompt": PROMPT, "coeff": 1, **PAIR, "seed": -1}, 400, "seed must be in 0..2147483647"),
    ("generate", {"prompt": PROMPT, "coeff": 1, **PAIR, "sample": "yes"}, 400, "sample must be true or false"),
    ("generate", {"prompt": PROMPT, "coeff": 1, **PAIR, "eval": "1+1"}, 400, "unknown field(s) ['eval']"),
    ("generate", {"coeff": 1, **PAIR}, 400, "missing field(s) ['prompt']"),
    ("generate", [PROMPT], 400, "must be a JSON object"),
    ("generate", {"prompt": PROMPT, "coeff": 1}, 400, "give a prompt pair (plus and minus) or a saved vector"),
    ("generate", {"prompt": PROMPT, "coeff": 1, **PAIR, "vector": "calm.safetensors"}, 400, "not both"),
    ("generate", {"prompt": PROMPT, "coeff": 1, "vector": "../outside/secret.safetensors"}, 400, "outside the data folder"),
    ("generate", {"prompt": PROMPT, "coeff": 1, "vector": "link.safetensors"}, 400, "outside the data folder"),
    ("generate", {"prompt": PROMPT, "coeff": 1, "vector": "/etc/passwd"}, 400, "not an absolute path"),
    ("generate", {"prompt": PROMPT, "coeff": 1, "vector": "model.pt"}, 400, "allowed: .safetensors"),
    ("generate", {"prompt": PROMPT, "coeff": 1, "vector": "missing.safetensors"}, 400, "is not a file"),
    ("generate", {"prompt": PROMPT, "coeff": 1, "vector": "broken.safetensors"}, 400, "broken.safetensors"),
    ("scan", {"prompt": PROMPT, "target": " love", "against": " hate", "lo": 5, "hi": -5, **PAIR}, 400, "lo must be below hi"),
    ("scan", {"prompt": PROMPT, "target": " love", "against": " hate", "n": 1000, **PAIR}, 400, "n must be in 2..128"),
    ("scan", {"prompt": PROMPT, "target": " lovely day", "against": " hate", **PAIR}, 400, "target: ' lovely day' is"),
    ("lens/run", {"prompt": "Paris", "target": " Paris is"}, 400, "not one; pick a single-token string"),
    ("lens/run", {"prompt": "   "}, 400, "prompt is empty"),
]


@pytest.mark.parametrize("endpoint, body, status, says", BAD, ids=[f"{e}-{s}" for e, _, _, s in BAD])
def test_bad_input_is_answered_400_with_the_reason(server, endpoint, body, status, says):
    path = endpoint if "/" in endpoint else f"steering/{endpoint}"
    got, d = call(f"{server.url}/api/{path}", body)
    assert got == status and says in d["error"], d


def test_bad_requests_and_the_server_stays_up(server):
    url = server.url + "/api/steering/generate"
    assert call(url, raw=b'{"prompt": "I hate", "coeff": NaN, "plus": "a", "minus": "b", "layer": 1}')[1] == \
        {"error": "coeff must be a finite number, got nan"}
    status, d = call(url, raw=b"{not json")
    assert status == 400 and "not valid JSON" in d["error"]
    status, d = call(url, raw=b"prompt=x", headers={"content-type": "application/x-www-form-urlencoded"})
    assert status == 415 and "application/json" in d["error"]  # what a cross-site form could send
    status, d = call(url, raw=b'{"prompt": "' + b"x" * 20000 + b'"}')
    assert status == 413 and "at most 16384" in d["error"]
    status, _ = call(server.url + "/api/model", headers={"Host": "attacker.example"})
    assert status == 400  # DNS rebinding: only local Host names are answered
    assert call(url, {"prompt": PROMPT, "coeff": 1.0, "max_new_tokens": 4, **PAIR})[0] == 200


def test_an_internal_error_is_answered_500_and_the_server_goes_on(server, monkeypatch):
    import avec.app.server.pages.lens as page

    def boom(*a, **k):
        raise RuntimeError("the lens broke")

    monkeypatch.setattr(page, "logit_lens", boom)
    assert call(server.url + "/api/lens/run", {"prompt": "Hello"}) == \
        (500, {"error": "internal error: RuntimeError: the lens broke"})
    monkeypatch.undo()
    assert call(server.url + "/api/lens/run", {"prompt": "Hello"})[0] == 200


def test_without_a_data_folder_no_file_is_read(lm):
    with BackgroundServer(create_app(lm)) as s:
        assert call(s.url + "/api/steering/vectors") == (200, {"files": [], "data_dir": False})
        status, d = call(s.url + "/api/steering/generate", {"prompt": PROMPT, "coeff": 1, "vector": "calm.safetensors"})
        assert status == 400 and "--data-dir" in d["error"]


def test_create_app_checks_its_arguments(lm, tmp_path):
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        create_app(lm, data_dir=tmp_path / "missing")
    from avec.app.server.pages import default_pages

    with pytest.raises(ValueError, match="distinct"):
        create_app(lm, pages=default_pages() * 2)
    with pytest.raises(ValueError, match="feature_contexts must be a whole number in 1..4096, got 0"):
        create_app(lm, feature_contexts=0)
    with pytest.raises(ValueError, match="feature_context_tokens must be a whole number in 1..512"):
        create_app(lm, feature_context_tokens=1000)


def test_serve_command_checks_options_and_warns_off_localhost(monkeypatch, tmp_path, capsys):
    from avec.app.cli import main

    started = []
    monkeypatch.setattr("avec.app.server.serve", lambda *a, **k: started.append((a, k)))

    def avec(*argv):
        with pytest.raises(SystemExit) as e:
            main(list(argv))
        out = capsys.readouterr()
        return e.value.code, out.err

    code, err = avec("serve", "--port", "70000")
    assert code == 2 and "--port must be in 1..65535, got 70000" in err and not started
    code, err = avec("serve", "--data-dir", str(tmp_path / "nope"))
    assert code == 2 and "is not a folder" in err and not started
    code, err = avec("serve", "--feature-contexts", "5000")
    assert code == 2 and "--feature-contexts must be in 1..4096, got 5000" in err and not started
    code, err = avec("serve", "--model", "tiny", "--port", "8123", "--data-dir", str(tmp_path))
    assert code == 0 and err == ""
    args, kw = started[-1]
    assert args == ("tiny",) and (kw["host"], kw["port"], kw["data_dir"]) == ("127.0.0.1", 8123, str(tmp_path))
    assert kw["feature_contexts"] == 256
    code, err = avec("serve", "--host", "0.0.0.0")
    assert code == 0 and "warning: listening on 0.0.0.0, not localhost" in err and started[-1][1]["host"] == "0.0.0.0"


def test_smollm2_end_to_end(smollm2):
    """The real model: Love - Hate at layer 6 turns a hateful prompt's completion; the lens view's default
    answer is SmolLM2's own prediction, and DLA's parts add up to its logit."""
    with BackgroundServer(create_app(smollm2)) as s:
        status, d = call(s.url + "/api/steering/generate", {"prompt": PROMPT, "plus": "Love", "minus": "Hate",
                                                             "layer": 6, "coeff": 5.0, "max_new_tokens": 12})
        assert status == 200, d
        c = d["completions"]
        assert c["unsteered"] == smollm2.generate([PROMPT], 12) and c["steered"] != c["unsteered"]
        status, d = call(s.url + "/api/lens/run", {"prompt": "The Eiffel Tower is in the city of"})
        assert status == 200, d
        assert d["lens"]["top_labels"][-1][0][-1] == " Paris" and d["dla"]["target"] == [" Paris"]
        assert sum(d["dla"]["components"][0]) + d["dla"]["constant"][0] == pytest.approx(d["dla"]["logit"][0], abs=1e-2)


def _events(url: str, body, raw: bytes | None = None) -> list[tuple[str, dict]]:
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json",
                                                          "accept": "text/event-stream"})
    with urllib.request.urlopen(req, timeout=120) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_progress_streams_as_server_sent_events(server):
    body = {"prompt": PROMPT, "coeff": 6.0, "max_new_tokens": 8, **PAIR}
    events = _events(server.url + "/api/steering/generate", body)
    kinds = [k for k, _ in events]
    assert kinds[-1] == "result" and set(kinds[:-1]) == {"progress"}
    stages = [e for k, e in events if k == "progress"]
    assert stages[0]["stage"] == "queued" and stages[1] == {"stage": "running", "model": "tiny-llama-tok"}
    assert [(e["done"], e["total"]) for e in stages[2:]] == [(k, 8) for k in range(1, 9)]  # one per token
    assert events[-1][1] == call(server.url + "/api/steering/generate", body)[1]  # the same answer as plain JSON
    # refused input: an error event with the status and the reason; the lens answers in the same way
    assert _events(server.url + "/api/steering/generate", {**body, "layer": 7})[-1] == \
        ("error", {"status": 400, "error": "layer must be in 0..2, got 7"})
    lens = _events(server.url + "/api/lens/run", {"prompt": "Hello there"})
    assert [e.get("stage") for _, e in lens[:-1]] == ["queued", "running"] and lens[-1][0] == "result"


def test_queued_requests_hear_how_many_are_ahead(server):
    bodies = [{"prompt": PROMPT, "coeff": float(c), "max_new_tokens": 48, **PAIR} for c in range(4)]
    results = [None] * len(bodies)
    start = threading.Barrier(len(bodies))

    def fire(i):
        start.wait()
        results[i] = _events(server.url + "/api/steering/generate", bodies[i])

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ahead = sorted(r[0][1]["ahead"] for r in results)
    # one model, one worker: calls that arrive together queue, each told its place (exactly [0, 1, 2, 3]
    # unless a loaded machine delays an arrival past the end of an earlier call)
    assert ahead[0] == 0 and ahead[-1] >= 1 and all(a <= i for i, a in enumerate(ahead)), ahead
    assert all(r[-1][0] == "result" for r in results)


def test_maze_explorer_lists_only_policies_trained_on_avecs_world():
    """The explorer draws avec's pictures: a shipped policy trained on procgen's (config backend "procgen") is
    left out, every other shipped checkpoint is listed."""
    from avec.app.server.pages.maze import shipped_policies
    from avec.maze.policy import load_policy

    ckpts = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "avec" / "maze" / "checkpoints")
                   .glob("*.safetensors"))
    backends = {n: (load_policy(n).metadata.get("config") or {}).get("backend", "avec") for n in ckpts}
    assert "procgen" in backends.values() and "avec" in backends.values(), backends
    assert shipped_policies() == [n for n in ckpts if backends[n] == "avec"]


def test_maze_field_equals_the_python_api(server):
    from avec.maze.experiments import cheese_vector, top_right_vector
    from avec.maze.fields import vector_field
    from avec.maze.policy import load_policy
    from avec.maze.world import Maze

    assert call(server.url + "/api/maze/policies") == (200, {"policies": ["region15", "region5"]})
    status, d = call(server.url + "/api/maze/field", {"seed": 7, "size": 13, "policy": "region5", "cheese": -1.0,
                                                      "top_right": 2.0})
    assert status == 200, d
    policy, maze = load_policy("region5"), Maze.from_seed(7, size=13)
    base = vector_field(policy, maze)
    steered = vector_field(policy, maze, steer=-1.0 * cheese_vector(policy, maze) + 2.0 * top_right_vector(policy, maze))
    import numpy as np

    assert np.allclose(d["diff"]["b"]["probs"], base.probs, atol=1e-9)
    assert np.allclose(d["diff"]["a"]["probs"], steered.probs, atol=1e-9)
    assert not np.allclose(steered.probs, base.probs, atol=1e-3)  # the vectors did something
    assert d["diff"]["a"]["label"] == "-1 x cheese + 2 x top-right" and d["diff"]["b"]["maze"]["seed"] == 7
    assert d["decision"]["original"]["p_cheese"] == pytest.approx(base.decision()["p_cheese"])
    _, plain = call(server.url + "/api/maze/field", {"seed": 7, "size": 13, "policy": "region5"})
    assert plain["diff"]["a"]["label"] == "not steered" and not any(any(r) for r in plain["diff"]["probs"])


MAZE_BAD = [
    ({"seed": -1, "policy": "region5"}, "seed must be in 0..1000000000"),
    ({"seed": 1, "size": 12, "policy": "region5"}, "size must be odd"),
    ({"seed": 1, "size": 27, "policy": "region5"}, "size must be in 3..25"),
    ({"seed": 1, "policy": "../checkpoints/region5"}, "unknown policy '../checkpoints/region5'; shipped: ['region15', 'region5']"),
    ({"seed": 1, "policy": "region5", "cheese": 50}, "cheese must be in [-10, 10]"),
    ({"seed": 1, "policy": "region5", "top_right": "1"}, "top_right must be a number"),
]


@pytest.mark.parametrize("body, says", MAZE_BAD, ids=[s for _, s in MAZE_BAD])
def test_maze_bad_input(server, body, says):
    status, d = call(server.url + "/api/maze/field", body)
    assert status == 400 and says in d["error"], d
