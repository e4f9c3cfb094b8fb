"""`avec transcoder train | eval | export | import` on a tiny random model with a character-level tokenizer
(``avec.models.load`` monkeypatched) and a small text corpus: files, per-layer held-out metrics, resume,
circuit-tracer round trip, bad input refused."""

import json

import pytest
import torch

from avec.dictionaries.transcoder import Transcoder, Transcoders, load_transcoder
from avec.app.cli.transcoders import parse_layers
from test_dictionaries_cli import _run, setup  # noqa: F401  (the fixture)


def _args(corpus, out, kind="clt", tokens=2048, extra=(), arch="batchtopk"):
    return ["transcoder", "train", "--model", "tiny", "--kind", kind, "--arch", arch, "--width", "32", "--k", "4",
            "--tokens", str(tokens), "--context", "32", "--batch-tokens", "256", "--buffer-tokens", "1024",
            "--corpus", corpus, "--holdout", "20", "--eval-tokens", "512", "--eval-contexts", "4",
            "--checkpoint-every", "2", "--warmup-steps", "2", "--out", str(out), *extra]


def test_train_eval_export_import(setup, capsys):  # noqa: F811
    tmp, corpus, loads = setup
    out = tmp / "run"
    code, stdout, err = _run(_args(corpus, out), capsys)
    assert code == 0, err
    assert {"clt.safetensors", "checkpoint.safetensors", "metrics.jsonl", "eval.json"} <= {p.name for p in out.iterdir()}
    report = json.loads((out / "eval.json").read_text())
    assert report["layers"] == [0, 1, 2] and report["train"]["steps"] == 2048 // 256
    m = report["metrics"]
    assert len(m["fvu"]) == 3 and len(m["l0"]) == 3 and len(m["dead_fraction"]) == 3
    assert all(0 < l0 < 32 for l0 in m["l0"]) and 0 <= m["top1_agreement"] <= 1
    assert "ce_loss_recovered" in m and "mean FVU" in stdout
    clt = load_transcoder(out / "clt.safetensors")
    assert clt.cfg.arch == "jumprelu" and clt.cfg.trained_as == "batchtopk"  # BatchTopK saves as JumpReLU
    assert clt.cross_layer and clt.reads == tuple(f"blocks.{l}.resid_mid" for l in range(3))
    code, _, err = _run(["transcoder", "eval", str(out / "clt.safetensors"), "--model", "tiny", "--corpus", corpus,
                         "--holdout", "20", "--context", "32", "--eval-tokens", "512", "--eval-contexts", "4",
                         "--out", str(tmp / "e.json")], capsys)
    assert code == 0, err
    again = json.loads((tmp / "e.json").read_text())["metrics"]
    assert again["fvu"] == pytest.approx(m["fvu"], rel=1e-4) and again["kl"] == pytest.approx(m["kl"], rel=1e-4)
    code, _, err = _run(["transcoder", "export", str(out / "clt.safetensors"), str(tmp / "ct"), "--model-name",
                         "tiny/llama"], capsys)
    assert code == 0, err
    assert {"config.yaml", "W_enc_0.safetensors", "W_dec_2.safetensors"} <= {p.name for p in (tmp / "ct").iterdir()}
    code, _, err = _run(["transcoder", "import", str(tmp / "ct"), str(tmp / "back.safetensors"), "--model", "tiny"],
                        capsys)
    assert code == 0, err
    back = load_transcoder(tmp / "back.safetensors")
    x = torch.randn(3, 7, 64)
    with torch.no_grad():
        assert torch.allclose(back(x), clt(x), atol=1e-5)


def test_one_layer_plt_and_resume(setup, capsys, monkeypatch):  # noqa: F811
    tmp, corpus, _ = setup
    one = dict(kind="plt", arch="topk", extra=("--layers", "1", "--reads", "mlp_in"))
    assert _run(_args(corpus, tmp / "a", **one), capsys)[0] == 0
    calls = {"n": 0}
    original = Transcoders.after_step

    def crash_after_5(self):
        original(self)
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("killed")

    monkeypatch.setattr(Transcoders, "after_step", crash_after_5)
    code, _, err = _run(_args(corpus, tmp / "b", **one), capsys)
    assert code == 1 and "killed" in err and not (tmp / "b" / "plt.safetensors").exists()
    monkeypatch.setattr(Transcoders, "after_step", original)
    assert _run(_args(corpus, tmp / "b", **one), capsys)[0] == 0
    a, b = load_transcoder(tmp / "a" / "plt.safetensors"), load_transcoder(tmp / "b" / "plt.safetensors")
    assert isinstance(a, Transcoder) and a.reads == "blocks.1.mlp_in" and a.writes == "blocks.1.mlp_out"
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(x, y, atol=1e-6), name


def test_bad_options_are_refused(setup, capsys):  # noqa: F811
    tmp, corpus, loads = setup
    for extra, words in ((("--kind", "sae"), "clt (cross-layer) or plt"), (("--arch", "gated"), "architecture"),
                         (("--k", "40"), "more than the features per layer"),
                         (("--buffer-tokens", "300"), "twice --batch-tokens")):
        code, _, err = _run(_args(corpus, tmp / "x", extra=extra), capsys)
        assert code == 2 and words in " ".join(err.split()), err
    assert loads == []
    code, _, err = _run(_args(corpus, tmp / "x", extra=("--layers", "5")), capsys)
    assert code == 2 and "out of range: the model has 3 layers" in " ".join(err.split())
    code, _, err = _run(["transcoder", "export", str(tmp / "none.safetensors"), str(tmp / "ct"), "--model-name", "m"],
                        capsys)
    assert code == 2 and "no such file" in err
    assert parse_layers("0-1,2", 3) == [0, 1, 2] and parse_layers("all", 2) == [0, 1]
