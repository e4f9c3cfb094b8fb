"""`avec sae train | eval | dashboard` on a tiny random model with a character-level tokenizer (``avec.models.load``
monkeypatched) and a small text-file corpus: files written, held-out split, resume, bad input refused early."""

import json

import pytest
import torch
from _tiny import tiny_hf

from avec.app.cli import main
from avec.app.cli.dictionaries import held_out, split_documents
from avec.dictionaries.sae import SAE
from avec.models import LanguageModel

BOS, EOS, PAD = 1, 2, 0


class CharTokenizer:
    bos_token_id, eos_token_id, pad_token_id = BOS, EOS, PAD
    all_special_ids = [PAD, BOS, EOS]
    padding_side = "right"

    def __call__(self, texts, add_special_tokens=True, return_tensors=None, padding=False):
        one = isinstance(texts, str)
        out = [([BOS] if add_special_tokens else []) + [3 + ord(c) % 90 for c in t] for t in ([texts] if one else texts)]
        if return_tensors != "pt":
            return {"input_ids": out[0] if one else out}
        n = max(map(len, out))
        pad = [[PAD] * (n - len(o)) for o in out]
        left = self.padding_side == "left"
        ids = [p + o if left else o + p for o, p in zip(out, pad)]
        mask = [[0] * len(p) + [1] * len(o) if left else [1] * len(o) + [0] * len(p) for o, p in zip(out, pad)]
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}

    def decode(self, ids, **kw):
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        return "".join(chr(32 + (i - 3) % 90) if i >= 3 else "" for i in ([ids] if isinstance(ids, int) else ids))

    def convert_ids_to_tokens(self, ids):
        return [self.decode([i]) for i in ids]


@pytest.fixture
def setup(tmp_path, monkeypatch):
    loads = []

    def fake_load(name, *a, **kw):
        loads.append(name)
        return LanguageModel(tiny_hf("llama"), tokenizer=CharTokenizer(), name="tiny")

    import avec.models

    monkeypatch.setattr(avec.models, "load", fake_load)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"document {i}: " + "the quick brown fox jumps over the lazy dog " * (1 + i % 3)
                                  for i in range(150)), encoding="utf-8")
    return tmp_path, str(corpus), loads


def _run(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def _train_args(corpus, out, tokens=4096, extra=()):
    return ["sae", "train", "--model", "tiny", "--at", "blocks.1.resid_post", "--arch", "topk", "--width", "32",
            "--k", "4", "--tokens", str(tokens), "--context", "32", "--batch-tokens", "256", "--corpus", corpus,
            "--holdout", "20", "--eval-tokens", "512", "--eval-contexts", "4", "--checkpoint-every", "2",
            "--out", str(out), *extra]


def test_split_is_disjoint_and_by_hash(setup):
    _, corpus, _ = setup
    train, held = list(split_documents(corpus, "train", 20)), list(split_documents(corpus, "heldout", 20))
    assert train and held and not set(train) & set(held) and len(train) + len(held) == 150
    assert all(held_out(d, 20) for d in held)
    assert sorted(split_documents(corpus, "train", 20, shuffle=True, seed=1)) == sorted(train)


def test_train_writes_files_and_eval(setup, capsys):
    tmp, corpus, loads = setup
    out = tmp / "run"
    code, stdout, err = _run(_train_args(corpus, out), capsys)
    assert code == 0, err
    assert {"sae.safetensors", "checkpoint.safetensors", "metrics.jsonl", "eval.json"} <= {p.name for p in out.iterdir()}
    report = json.loads((out / "eval.json").read_text())
    assert report["train"]["steps"] == 4096 // 256
    m = report["metrics"]
    for key in ("fvu", "l0", "dead_fraction", "ce_loss_recovered", "kl"):
        assert key in m
    assert m["l0"] <= 4 + 1e-6
    assert "heldout" in report["eval"]["split"]
    assert "CE loss recovered" in stdout
    sae = SAE.load(out / "sae.safetensors")
    assert sae.cfg.hook == "blocks.1.resid_post" and sae.d_sae == 32
    # eval and dashboard on the saved file
    code, stdout, err = _run(["sae", "eval", str(out / "sae.safetensors"), "--model", "tiny", "--corpus", corpus,
                              "--holdout", "20", "--context", "32", "--eval-tokens", "512", "--eval-contexts", "4",
                              "--out", str(tmp / "e.json")], capsys)
    assert code == 0, err
    assert json.loads((tmp / "e.json").read_text())["metrics"]["fvu"] == pytest.approx(m["fvu"], rel=1e-4)


def test_dashboard(setup, capsys):
    tmp, corpus, _ = setup
    _run(_train_args(corpus, tmp / "run", tokens=1024), capsys)
    code, stdout, err = _run(["sae", "dashboard", str(tmp / "run" / "sae.safetensors"), "--model", "tiny",
                              "--corpus", corpus, "--holdout", "20", "--features", "0,1", "--contexts", "16", "--context", "32",
                              "--out", str(tmp / "dash")], capsys)
    assert code == 0, err
    assert (tmp / "dash").is_dir() and any(p.suffix == ".html" for p in (tmp / "dash").iterdir())


def test_resume_gives_the_uninterrupted_result(setup, capsys, monkeypatch):
    tmp, corpus, _ = setup
    assert _run(_train_args(corpus, tmp / "a"), capsys)[0] == 0
    calls = {"n": 0}
    original = SAE.after_step

    def crash_after_5(self):
        original(self)
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("killed")

    monkeypatch.setattr(SAE, "after_step", crash_after_5)
    code, _, err = _run(_train_args(corpus, tmp / "b"), capsys)
    assert code == 1 and "killed" in err
    assert (tmp / "b" / "checkpoint.safetensors").exists() and not (tmp / "b" / "sae.safetensors").exists()
    monkeypatch.setattr(SAE, "after_step", original)
    assert _run(_train_args(corpus, tmp / "b"), capsys)[0] == 0
    a, b = SAE.load(tmp / "a" / "sae.safetensors"), SAE.load(tmp / "b" / "sae.safetensors")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(x, y, atol=1e-6), name


def test_bad_out_refused_before_loading(setup, capsys):
    tmp, corpus, loads = setup
    blocker = tmp / "file.txt"
    blocker.write_text("x")
    code, _, err = _run(_train_args(corpus, blocker / "run"), capsys)
    assert code == 2 and err.startswith("error:") and loads == []
    code, _, err = _run(_train_args(corpus, tmp / "ok", extra=("--arch", "nope")), capsys)
    assert code == 2 and "architecture" in err and loads == []
    code, _, err = _run(["sae", "eval", str(tmp / "missing.safetensors"), "--out", str(blocker / "x.json")], capsys)
    assert code == 2 and loads == []


def test_evaluate_keep_tokens(setup):
    """keep_tokens: no kept token = the plain splice; every token kept = the clean model."""
    from avec.dictionaries.evaluate import evaluate

    lm = LanguageModel(tiny_hf("llama"), tokenizer=CharTokenizer(), name="tiny")
    torch.manual_seed(0)
    sae = SAE(arch="topk", d_in=64, d_sae=32, k=4, hook="blocks.1.resid_post")
    ids = torch.randint(3, 90, (3, 12))
    ids[:, 0] = BOS
    plain = evaluate(sae, lm=lm, tokens=ids)
    none_kept = evaluate(sae, lm=lm, tokens=ids, keep_tokens=[])
    assert none_kept.ce_spliced == pytest.approx(plain.ce_spliced, rel=1e-6)
    assert none_kept.ce_zero_ablation == pytest.approx(plain.ce_zero_ablation, rel=1e-6)
    all_kept = evaluate(sae, [torch.randn(10, 64)], lm=lm, tokens=ids, keep_tokens=range(101))
    assert all_kept.ce_spliced == pytest.approx(all_kept.ce_clean, rel=1e-6) and all_kept.kl < 1e-9
    bos_kept = evaluate(sae, lm=lm, tokens=ids, keep_tokens=[BOS])
    assert bos_kept.n_tokens == 3 * 11  # BOS activations left out of the reconstruction metrics
    assert bos_kept.ce_spliced != pytest.approx(plain.ce_spliced, rel=1e-6)
