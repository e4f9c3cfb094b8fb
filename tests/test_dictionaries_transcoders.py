"""Transcoders and cross-layer transcoders: the math each architecture states, training from the activation
store (MLP inputs and outputs of every layer in one pass) to a held-out FVU well below 1, exact resume,
per-layer metrics, saving with the normalisation folded in, circuit-tracer's folders (round trips, and
files written here by hand in its documented layout), and bad input."""

import itertools
import json
import random
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from _tiny import tiny_hf, tiny_lm, tokens
from avec import Zero
from avec.dictionaries import (
    SAE, CrossLayerTranscoder, TrainConfig, Transcoder, evaluate_transcoder, layer_points, load_transcoder, train,
)
from avec.dictionaries.circuit_tracer_io import CircuitTracerFormatError, load_circuit_tracer, save_circuit_tracer
from avec.dictionaries.store import ActivationStore
from avec.models import LanguageModel
from test_core import no_hooks_left
from test_dictionaries_store import CharTokenizer

PTS = layer_points(3)
HOOKS = PTS["reads"] + PTS["writes"]


def _docs(n, seed):
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 7))) for _ in range(200)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 40))) for _ in range(n)]


@pytest.fixture(scope="module")
def char_lm():
    return LanguageModel(tiny_hf("llama"), tokenizer=CharTokenizer(True), name="tiny")


@pytest.fixture(scope="module")
def acts(char_lm):
    """Training batches and held-out chunks {hook: [n, 64]} of every layer's MLP input and output, each
    from one pass per forward batch (held-out documents are other documents)."""
    docs = _docs(600, 0)
    kw = dict(context=32, batch_contexts=8, batch_tokens=256, buffer_tokens=2048, progress=False)
    train_batches = list(itertools.islice(iter(ActivationStore(char_lm, HOOKS, docs[:500], **kw)), 300))
    held = list(ActivationStore(char_lm, HOOKS, docs[500:], **kw).chunks())
    return train_batches, held


def _clt(arch="jumprelu", **kw):
    torch.manual_seed(0)
    base = dict(arch=arch, n_layers=3, d_in=64, d_sae=128, **PTS)
    if arch in ("topk", "batchtopk"):
        base["k"] = 8
    if arch == "jumprelu":
        base.update(sparsity_coeff=0.01, bandwidth=0.05, init_threshold=0.1)
    return CrossLayerTranscoder(**{**base, **kw})


CFG = TrainConfig(steps=200, lr=3e-3, warmup_steps=20, sparsity_warmup_steps=100, log_every=20, dead_tokens=256 * 20)


@pytest.mark.parametrize("arch", ["jumprelu", "topk"])
def test_a_clt_trained_a_few_hundred_steps_explains_held_out_mlp_outputs(acts, arch):
    batches, held = acts
    clt = _clt(arch)
    before = evaluate_transcoder(clt, held)
    res = train({"clt": clt}, batches, CFG, progress=False)
    after = evaluate_transcoder(clt, held)
    assert all(f > 0.5 for f in before.fvu)
    assert all(f < 0.3 for f in after.fvu), after.fvu  # measured ~0.1 per layer
    assert after.n_tokens > 1000 and len(after.fvu) == 3
    if arch == "topk":
        assert all(7.5 < l0 <= 8 for l0 in after.l0)  # the k largest, ReLU'd (a negative one is dropped)
    frame = res.per_layer_frame()
    assert sorted(frame["layer"].unique()) == [0, 1, 2] and {"fvu", "l0", "dead_fraction"} <= set(frame.columns)
    last = res.history[-1]
    assert len(last["fvu_per_layer"]) == 3 and last["fvu"] == pytest.approx(sum(last["fvu_per_layer"]) / 3)
    assert after.to_frame().shape[0] == 3 and after.plot() is not None


def test_losses_follow_their_definitions():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 40, 64, generator=g), torch.randn(3, 40, 64, generator=g) * 2
    clt = _clt("jumprelu", sparsity_coeff=0.5, tanh_scale=2.0).init_from_sample((x, y))
    out = clt.losses((x, y))
    with torch.no_grad():
        x_n, y_n = x * clt.in_scale[:, None, None], y * clt.out_scale[:, None, None]
        assert torch.allclose((x_n.pow(2).sum(-1).mean(-1)), torch.full((3,), 64.0), rtol=1e-4)  # expected norm
        pre = torch.stack([x_n[l] @ clt.W_enc[l] + clt.b_enc[l] for l in range(3)])
        z = pre * (pre > clt.threshold[:, None, :])
        assert torch.allclose(out.latents, z)
        # target l: the features of every layer i <= l through W_dec[i][:, l - i]
        y_hat = torch.stack([sum(z[i] @ clt.W_dec[i][:, l - i] for i in range(l + 1)) + clt.b_dec[l] for l in range(3)])
        assert torch.allclose(out.y_hat, y_hat, atol=1e-5)
        mse = (y_hat - y_n).pow(2).sum(-1).mean(-1).sum()
        dec = torch.stack([w.flatten(1).norm(dim=-1) for w in clt.W_dec])
        sparsity = torch.tanh(2.0 * z * dec[:, None, :]).sum(-1).mean(-1).sum()
        assert torch.allclose(out.mse, mse, rtol=1e-5) and torch.allclose(out.sparsity, sparsity, rtol=1e-5)
        assert torch.allclose(out.loss, mse + 0.5 * sparsity, rtol=1e-5)
        # in raw space, decode_layer + skip_layer of the encoded inputs give the same targets
        raw = clt(x)
        assert torch.allclose(raw * clt.out_scale[:, None, None], y_hat, atol=1e-4)
    # per-layer transcoders: each target from its own layer only
    plt = _clt("relu", cross_layer=False)
    assert [plt.sources(l) for l in range(3)] == [[0], [1], [2]] and plt.W_dec[0].shape == (128, 1, 64)
    with pytest.raises(ValueError, match="write to layers \\[0\\], not 1"):
        plt.decoder(0, 1)


@pytest.mark.parametrize("arch", ["relu", "jumprelu", "topk", "batchtopk"])
def test_saving_folds_the_scales_and_round_trips(arch, tmp_path):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(3, 64, 64, generator=g) * 5, torch.randn(3, 64, 64, generator=g) * 0.3
    clt = _clt(arch, skip=True).init_from_sample((x, y))
    with torch.no_grad():
        for p in clt.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        if arch == "jumprelu":
            clt.threshold.clamp_(min=0.01)
    clt.train()
    clt.losses((x, y))  # batchtopk: sets its inference thresholds
    clt.eval()
    path = clt.save(tmp_path / "c.safetensors")
    back = load_transcoder(path)
    assert isinstance(back, CrossLayerTranscoder) and back.cfg.folded
    assert back.cfg.arch == ("jumprelu" if arch == "batchtopk" else arch)
    assert float(back.in_scale.max()) == 1.0 and float(back.out_scale.max()) == 1.0
    with torch.no_grad():
        for l in range(3):
            z, zb = clt.encode_layer(x[l], l), back.encode_layer(x[l], l)
            same = (z != 0) == (zb != 0)
            assert same.float().mean() > 0.999  # folding may flip a pre-activation sitting at its threshold
            assert torch.allclose(z[same], zb[same], atol=1e-4)
        assert torch.allclose(clt(x), back(x), atol=1e-3)
        assert torch.allclose(clt.decoder(0, 2), back.decoder(0, 2), atol=1e-6)
    one = Transcoder(arch="topk", d_in=64, d_sae=32, k=4, reads="blocks.1.mlp_in", writes="blocks.1.mlp_out")
    one.save(tmp_path / "t.safetensors")
    t2 = load_transcoder(tmp_path / "t.safetensors")
    assert isinstance(t2, Transcoder) and t2.reads == "blocks.1.mlp_in" and t2.writes == "blocks.1.mlp_out"


def _dict_stream(batches, fail_at=None):
    def stream(start):
        for i, b in enumerate(batches[start:], start=start):
            if i == fail_at:
                raise RuntimeError("killed")
            yield b
    return stream


def _three():
    torch.manual_seed(5)
    return {"clt": _clt("topk", d_sae=32), "plt": _clt("jumprelu", d_sae=32, cross_layer=False, skip=True),
            "tc": Transcoder(arch="relu", d_in=64, d_sae=32, reads="blocks.1.mlp_in", writes="blocks.1.mlp_out",
                             sparsity_coeff=0.01),
            "sae": SAE(arch="topk", d_in=64, d_sae=32, k=4, hook="blocks.1.mlp_out")}


def test_kill_and_resume_equals_an_uninterrupted_run(char_lm, tmp_path):
    hooks = HOOKS + ["blocks.1.mlp_in"]
    store = ActivationStore(char_lm, hooks, _docs(60, 3), context=32, batch_contexts=8, batch_tokens=128,
                            buffer_tokens=1024, progress=False)
    batches = list(itertools.islice(iter(store), 40))
    cfg = TrainConfig(steps=40, lr=3e-3, warmup_steps=5, sparsity_warmup_steps=10, checkpoint_every=10, log_every=5,
                      dead_tokens=128 * 3)
    full = train(_three(), _dict_stream(batches), cfg, out=tmp_path / "full", progress=False)
    with pytest.raises(RuntimeError, match="killed"):
        train(_three(), _dict_stream(batches, fail_at=27), cfg, out=tmp_path / "cut", progress=False)
    assert not (tmp_path / "cut" / "clt.safetensors").exists()
    resumed = train(_three(), _dict_stream(batches), cfg, out=tmp_path / "cut", progress=False)
    for name, m in full.saes.items():
        for (k, v), (k2, v2) in zip(m.state_dict().items(), resumed.saes[name].state_dict().items()):
            assert k == k2 and torch.equal(v, v2), (name, k)
    lines = lambda d: (tmp_path / d / "metrics.jsonl").read_text().splitlines()  # noqa: E731
    assert lines("full") == lines("cut") and len(lines("full")) == 4 * 40 // 5
    row = json.loads(lines("full")[0])
    assert row["sae"] == "clt" and len(row["dead_per_layer"]) == 3 and len(row["l0_per_layer"]) == 3
    assert torch.equal(load_transcoder(tmp_path / "full" / "clt.safetensors").W_dec[1],
                       load_transcoder(tmp_path / "cut" / "clt.safetensors").W_dec[1])


def test_a_checkpoint_from_before_a_config_field_resumes_and_a_changed_field_is_refused(char_lm, tmp_path):
    """Checkpoints written before ``TranscoderConfig.bos`` existed lack the key: not a difference. A field
    both record with other values is."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from avec.dictionaries.train import CHECKPOINT

    store = ActivationStore(char_lm, HOOKS + ["blocks.1.mlp_in"], _docs(20, 3), context=32, batch_contexts=8,
                            batch_tokens=128, buffer_tokens=512, progress=False)
    batches = list(itertools.islice(iter(store), 12))
    cfg = TrainConfig(steps=12, lr=3e-3, warmup_steps=2, sparsity_warmup_steps=4, checkpoint_every=5, log_every=5)
    with pytest.raises(RuntimeError, match="killed"):
        train(_three(), _dict_stream(batches, fail_at=8), cfg, out=tmp_path / "cut", progress=False)
    path = tmp_path / "cut" / CHECKPOINT
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    state = json.loads(meta["state"])
    assert "bos" in state["saes"]["clt"]
    for name in ("clt", "plt", "tc"):
        del state["saes"][name]["bos"]  # as an older avec wrote it
    save_file(tensors, str(path), metadata={**meta, "state": json.dumps(state)})
    resumed = train(_three(), _dict_stream(batches), cfg, out=tmp_path / "cut", progress=False)
    assert resumed.saes["clt"].cfg.bos is None and (tmp_path / "cut" / "clt.safetensors").exists()

    with pytest.raises(RuntimeError, match="killed"):
        train(_three(), _dict_stream(batches, fail_at=8), cfg, out=tmp_path / "other", progress=False)
    changed = _three()
    changed["clt"].cfg = replace(changed["clt"].cfg, bos=1)
    with pytest.raises(ValueError, match="other configs than the ones given"):
        train(changed, _dict_stream(batches), cfg, out=tmp_path / "other", progress=False)


def test_attached_trained_clt_edits_and_model_metrics(char_lm, acts):
    batches, held = acts
    clt = _clt("topk")
    train({"clt": clt}, batches[:150], replace(CFG, steps=150), progress=False)
    ids = torch.stack([torch.tensor([1] + [3 + (7 * i + j) % 60 for j in range(23)]) for i in range(4)])
    ev = evaluate_transcoder(clt, lm=char_lm, tokens=ids, keep_tokens=[1])
    assert ev.ce_spliced is not None and 0 <= ev.top1_agreement <= 1
    assert ev.ce_loss_recovered > 0.5, ev.to_dict()  # a replacement model far better than no MLPs
    with char_lm.dictionary(clt) as d:
        assert d.name == "clt" and d.reads == tuple(PTS["reads"])
        run = char_lm.run(ids, cache=["blocks.0.resid_mid.clt.latents"])
        assert torch.equal(run.logits, char_lm.run(ids).logits)
        assert int((run.cache["blocks.0.resid_mid.clt.latents"] != 0).sum(-1).max()) == 8
        off = char_lm.run(ids, interventions=[Zero("blocks.0.resid_mid.clt.latents", positions=5)])
        assert not torch.allclose(off.logits[:, 5:], run.logits[:, 5:]) and torch.equal(off.logits[:, :5], run.logits[:, :5])
    assert no_hooks_left(char_lm.module)


# ----------------------------------------------------------------------------- circuit-tracer files
def _ct_reference(folder, kind, n, x):
    """circuit-tracer's documented math on its own files, read back with safetensors: features per layer
    (F.linear(x, W_enc, b_enc), then ReLU or x * (x > threshold)) and each target's reconstruction."""
    from safetensors.torch import load_file

    zs, outs = [], []
    for l in range(n):
        f = load_file(folder / (f"layer_{l}.safetensors" if kind == "set" else f"W_enc_{l}.safetensors"))
        key = "" if kind == "set" else f"_{l}"
        pre = torch.nn.functional.linear(x[l], f[f"W_enc{key}"], f[f"b_enc{key}"])
        th = f.get("activation_function.threshold" if kind == "set" else f"threshold_{l}")
        zs.append(pre * (pre > th) if th is not None else torch.relu(pre))
        if kind == "set":
            out = zs[l] @ f["W_dec"] + f["b_dec"]
            outs.append(out + x[l] @ f["W_skip"].T if "W_skip" in f else out)
        else:
            out = f[f"b_dec_{l}"]
            for i in range(l + 1):
                out = out + zs[i] @ load_file(folder / f"W_dec_{i}.safetensors")[f"W_dec_{i}"][:, l - i]
            outs.append(out)
    return zs, outs


def _write_ct_by_hand(folder, kind, n=3, d=64, s=16, seed=0, jump=True, skip=False, input_hook="hook_resid_mid"):
    """A folder in circuit-tracer's layout, written with safetensors and a YAML text alone."""
    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for l in range(n):
        if kind == "set":
            t = {"W_enc": torch.randn(s, d, generator=g) / d ** 0.5, "W_dec": torch.randn(s, d, generator=g) / s,
                 "b_enc": torch.randn(s, generator=g) * 0.1, "b_dec": torch.randn(d, generator=g) * 0.1}
            if jump:
                t["activation_function.threshold"] = torch.rand(s, generator=g) * 0.2 + 0.01
            if skip:
                t["W_skip"] = torch.randn(d, d, generator=g) * 0.02
            save_file(t, folder / f"layer_{l}.safetensors")
        else:
            t = {f"W_enc_{l}": torch.randn(s, d, generator=g) / d ** 0.5, f"b_enc_{l}": torch.randn(s, generator=g) * 0.1,
                 f"b_dec_{l}": torch.randn(d, generator=g) * 0.1}
            if jump:
                t[f"threshold_{l}"] = torch.rand(s, generator=g) * 0.2 + 0.01
            save_file(t, folder / f"W_enc_{l}.safetensors")
            save_file({f"W_dec_{l}": torch.randn(s, n - l, d, generator=g) / s}, folder / f"W_dec_{l}.safetensors")
    model_kind = "transcoder_set" if kind == "set" else "cross_layer_transcoder"
    (folder / "config.yaml").write_text(f'model_name: "tiny/llama"\nmodel_kind: {model_kind}\n'
                                        f'feature_input_hook: "{input_hook}"\nfeature_output_hook: "hook_mlp_out"\n')


@pytest.mark.parametrize("kind, jump, skip", [("set", True, True), ("set", False, False), ("clt", True, False),
                                              ("clt", False, False)])
def test_folders_in_circuit_tracers_layout_compute_the_same_features(tmp_path, kind, jump, skip):
    _write_ct_by_hand(tmp_path / "ct", kind, jump=jump, skip=skip)
    tc = load_circuit_tracer(tmp_path / "ct")
    assert isinstance(tc, CrossLayerTranscoder) and tc.cross_layer == (kind == "clt")
    assert tc.cfg.arch == ("jumprelu" if jump else "relu") and tc.cfg.skip == skip
    assert tc.reads == tuple(PTS["reads"]) and tc.writes == tuple(PTS["writes"])
    x = torch.randn(3, 10, 64, generator=torch.Generator().manual_seed(9))
    zs, outs = _ct_reference(tmp_path / "ct", kind, 3, x)
    with torch.no_grad():
        for l in range(3):
            z = tc.encode_layer(x[l], l)
            assert torch.allclose(z, zs[l], atol=1e-6) and (z != 0).any()
        assert torch.allclose(tc(x), torch.stack(outs), atol=1e-5)
    # and back out in the same layout: identical tensors under identical names
    save_circuit_tracer(tc, tmp_path / "again", model_name="tiny/llama")
    from safetensors.torch import load_file

    for f in sorted((tmp_path / "ct").glob("*.safetensors")):
        a, b = load_file(f), load_file(tmp_path / "again" / f.name)
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-7) for k in a), f.name
    import yaml

    conf = yaml.safe_load((tmp_path / "again" / "config.yaml").read_text())
    assert conf == {"model_name": "tiny/llama", "model_kind": "transcoder_set" if kind == "set" else "cross_layer_transcoder",
                    "feature_input_hook": "hook_resid_mid", "feature_output_hook": "hook_mlp_out"}


def test_trained_transcoders_round_trip_through_circuit_tracer_folders(tmp_path, acts):
    batches, _ = acts
    for name, tc in (("clt", _clt("jumprelu", d_sae=32)), ("plt", _clt("topk", d_sae=32, cross_layer=False, skip=True)),
                     ("mlpin", CrossLayerTranscoder(arch="relu", n_layers=3, d_in=64, d_sae=16,
                                                    **layer_points(3, reads="mlp_in")))):
        batch = batches[0] if name != "mlpin" else (torch.randn(3, 50, 64), torch.randn(3, 50, 64))
        tc.init_from_sample(batch)
        with torch.no_grad():
            for p in tc.parameters():
                p.add_(0.01 * torch.randn_like(p))
        folder = save_circuit_tracer(tc, tmp_path / name, model_name="tiny/llama", scan="tiny-scan")
        back = load_circuit_tracer(folder)
        assert back.source_config["scan"] == "tiny-scan"
        assert back.cfg.arch == tc.cfg.arch and back.cross_layer == tc.cross_layer and back.reads == tc.reads
        x = torch.randn(3, 20, 64, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            assert torch.allclose(back(x), tc(x), atol=1e-4), name
    import yaml

    assert yaml.safe_load((tmp_path / "mlpin" / "config.yaml").read_text())["feature_input_hook"] == "mlp.hook_in"
    assert yaml.safe_load((tmp_path / "plt" / "config.yaml").read_text())["k"] == 8


def test_inputs_read_before_the_norm_gain_are_folded_onto_mlp_in(tmp_path):
    """TransformerLens's ln2.hook_normalized is the pre-MLP norm before its gain: the same features read
    from avec's mlp_in once 1 / gain is folded into the encoder (and skip)."""
    lm = tiny_lm("llama")
    _write_ct_by_hand(tmp_path / "ct", "set", skip=True, input_hook="ln2.hook_normalized")
    with pytest.raises(ValueError, match="needs the model"):
        load_circuit_tracer(tmp_path / "ct")
    tc = load_circuit_tracer(tmp_path / "ct", lm=lm)
    assert tc.reads == tuple(layer_points(3, reads="mlp_in")["reads"]) and tc.cfg.model_id == lm.model_id
    x = tokens(lm, batch=2, seq=6)
    c = lm.run(x, cache=["blocks.*.resid_mid", "blocks.*.mlp_in"]).cache
    normalized = []
    for l in range(3):
        r = c[f"blocks.{l}.resid_mid"]
        normalized.append(r / r.pow(2).mean(-1, keepdim=True).add(lm.config.rms_norm_eps).sqrt())
    zs, outs = _ct_reference(tmp_path / "ct", "set", 3, torch.stack(normalized))
    with torch.no_grad():
        for l in range(3):
            assert torch.allclose(tc.encode_layer(c[f"blocks.{l}.mlp_in"], l), zs[l], atol=1e-4)
            recon = tc.decode_layer([tc.encode_layer(c[f"blocks.{l}.mlp_in"], l)], l) + tc.skip_layer(c[f"blocks.{l}.mlp_in"], l)
            assert torch.allclose(recon, outs[l], atol=1e-4)
    with lm.dictionary(tc):
        attached = lm.run(x, cache=["blocks.*.mlp_in.tc.latents"])
    assert torch.equal(attached.logits, lm.run(x).logits)
    assert torch.allclose(attached.cache["blocks.2.mlp_in.tc.latents"], zs[2], atol=1e-4)
    gemma = tiny_lm("gemma2")
    (tmp_path / "ct" / "config.yaml").write_text((tmp_path / "ct" / "config.yaml").read_text()
                                                 .replace("hook_mlp_out", "mlp.hook_out"))
    with pytest.raises(ValueError, match="before gemma's post-MLP norm"):
        load_circuit_tracer(tmp_path / "ct", lm=gemma)


# ----------------------------------------------------------------------------- bad input
def test_bad_configs_and_inputs_are_refused():
    with pytest.raises(ValueError, match="k=40; allowed: an int with 1 <= k <= d_sae=32"):
        CrossLayerTranscoder(arch="topk", n_layers=3, d_in=64, d_sae=32, k=40)
    with pytest.raises(ValueError, match="arch='gated' is unknown"):
        Transcoder(arch="gated", d_in=64, d_sae=32)
    with pytest.raises(ValueError, match="cross_layer=True needs n_layers > 1"):
        CrossLayerTranscoder(arch="relu", n_layers=1, d_in=64, d_sae=32, cross_layer=True)
    with pytest.raises(ValueError, match="reads=.*one hook point name per layer \\(3\\)"):
        CrossLayerTranscoder(arch="relu", n_layers=3, d_in=64, d_sae=32, reads=["blocks.0.resid_mid"])
    with pytest.raises(ValueError, match="sparsity='l0' needs arch='jumprelu'"):
        Transcoder(arch="relu", d_in=64, d_sae=32, sparsity="l0")
    with pytest.raises(ValueError, match="a Transcoder has one layer"):
        Transcoder(arch="relu", d_in=64, d_sae=32, n_layers=2)
    clt = _clt("relu")
    with pytest.raises(ValueError, match="layer 3 is out of range: this transcoder has 3 layer\\(s\\) \\(0..2\\)"):
        clt.encode_layer(torch.randn(2, 64), 3)
    with pytest.raises(ValueError, match="d_in is 64, got a tensor of shape \\(2, 32\\)"):
        clt.encode_layer(torch.randn(2, 32), 0)
    with pytest.raises(ValueError, match="target 2 is decoded from the features of layers \\[0, 1, 2\\]"):
        clt.decode_layer([torch.zeros(2, 128)], 2)
    with pytest.raises(ValueError, match="expected \\[n_layers=3, n, d_in\\]"):
        clt.losses((torch.randn(2, 5, 64), torch.randn(2, 5, 64)))
    with pytest.raises(KeyError, match="the batch has no"):
        clt.losses({"blocks.0.resid_mid": torch.randn(5, 64)})
    lm = tiny_lm("llama")
    with pytest.raises(ValueError, match="has 3 layers: give 3 read points"):
        lm.add_dictionary(clt, at="blocks.0.resid_mid", writes="blocks.0.mlp_out")
    with pytest.raises(ValueError, match="d_in=32 but hook point 'blocks.0.resid_mid' has width 64"):
        lm.add_dictionary(CrossLayerTranscoder(arch="relu", n_layers=3, d_in=32, d_sae=8, **PTS))


def test_bad_transcoder_files_are_refused(tmp_path):
    clt = _clt("relu")
    path = clt.save(tmp_path / "c.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.safetensors' is not a readable safetensors file"):
        load_transcoder(tmp_path / "cut.safetensors")
    SAE(arch="relu", d_in=8, d_sae=4).save(tmp_path / "sae.safetensors")
    with pytest.raises(ValueError, match="is not an avec transcoder file"):
        load_transcoder(tmp_path / "sae.safetensors")
    with pytest.raises(FileNotFoundError):
        load_transcoder(tmp_path / "none.safetensors")
    with pytest.raises(ValueError, match="a transcoder is saved as <name>.safetensors"):
        clt.save(tmp_path / "c.pt")


def test_bad_circuit_tracer_folders_are_refused(tmp_path):
    _write_ct_by_hand(tmp_path / "a", "set")
    (tmp_path / "a" / "config.yaml").unlink()
    with pytest.raises(FileNotFoundError, match="has no config.yaml"):
        load_circuit_tracer(tmp_path / "a")
    _write_ct_by_hand(tmp_path / "b", "set")
    (tmp_path / "b" / "layer_1.safetensors").unlink()
    with pytest.raises(CircuitTracerFormatError, match="missing \\['layer_1.safetensors'\\]"):
        load_circuit_tracer(tmp_path / "b")
    _write_ct_by_hand(tmp_path / "c", "clt")
    (tmp_path / "c" / "config.yaml").write_text("model_kind: cross_layer_transcoder\nfeature_input_hook: hook_resid_pre\n"
                                                "feature_output_hook: hook_mlp_out\n")
    with pytest.raises(CircuitTracerFormatError, match="feature_input_hook='hook_resid_pre'; avec maps"):
        load_circuit_tracer(tmp_path / "c")
    (tmp_path / "c" / "config.yaml").write_text("model_kind: sae\nfeature_input_hook: x\nfeature_output_hook: y\n")
    with pytest.raises(CircuitTracerFormatError, match="model_kind='sae'"):
        load_circuit_tracer(tmp_path / "c")
    (tmp_path / "c" / "config.yaml").write_text("model_kind: [unclosed\n")
    with pytest.raises(CircuitTracerFormatError, match="not readable YAML"):
        load_circuit_tracer(tmp_path / "c")
    _write_ct_by_hand(tmp_path / "d", "clt")
    save_file({"W_dec_1": torch.zeros(16, 3, 64)}, tmp_path / "d" / "W_dec_1.safetensors")
    with pytest.raises(CircuitTracerFormatError, match="W_dec_1 has shape \\(16, 3, 64\\), expected \\(16, 2, 64\\)"):
        load_circuit_tracer(tmp_path / "d")
    _write_ct_by_hand(tmp_path / "e", "set")
    raw = (tmp_path / "e" / "layer_2.safetensors").read_bytes()
    (tmp_path / "e" / "layer_2.safetensors").write_bytes(raw[:100])
    with pytest.raises(CircuitTracerFormatError, match="layer_2.safetensors' is not a readable safetensors file"):
        load_circuit_tracer(tmp_path / "e")
    _write_ct_by_hand(tmp_path / "f", "set", d=32)
    with pytest.raises(ValueError, match="reads width 32 and writes 32, but the model's d_model is 64"):
        load_circuit_tracer(tmp_path / "f", lm=tiny_lm("llama"))
    # writing: circuit-tracer cannot express these
    with pytest.raises(ValueError, match="no skip connection"):
        save_circuit_tracer(_clt("relu", skip=True), tmp_path / "g", model_name="m")
    with pytest.raises(ValueError, match="layers 0..n-1"):
        save_circuit_tracer(CrossLayerTranscoder(arch="relu", n_layers=2, d_in=64, d_sae=8,
                                                 **layer_points(2, first=1)), tmp_path / "h", model_name="m")
    with pytest.raises(ValueError, match="already holds transcoder files"):
        save_circuit_tracer(_clt("relu"), tmp_path / "d", model_name="m")


@pytest.mark.parametrize("arch", ["jumprelu", "topk", "relu"])
def test_sparse_decoding_gives_the_dense_values_and_gradients(arch, monkeypatch):
    """Decoding through the active features alone (embedding_bag) equals the dense matmul: the loss and
    every gradient, JumpReLU's threshold pseudo-gradient included (its window below threshold is decoded)."""
    import avec.dictionaries.transcoder as T

    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(3, 50, 64, generator=g), torch.randn(3, 50, 64, generator=g)
    results = []
    for below in (0.0, 1.1):  # never sparse, always sparse
        monkeypatch.setattr(T, "SPARSE_BELOW", below)
        clt = _clt(arch, bandwidth=0.5, init_threshold=0.3) if arch == "jumprelu" else _clt(arch)
        clt.init_from_sample((x, y))
        out = clt.losses((x, y))
        out.loss.backward()
        grads = {k: p.grad.clone() for k, p in clt.named_parameters()}
        with torch.no_grad():
            results.append((out.loss.detach(), grads, clt.decode_layer([clt.encode_layer(x[i], i) for i in range(3)], 2)))
    (l0, g0, d0), (l1, g1, d1) = results
    assert torch.allclose(l0, l1, rtol=1e-5)
    assert torch.allclose(d0, d1, atol=1e-5)
    for k in g0:
        assert torch.allclose(g0[k], g1[k], atol=1e-5, rtol=1e-4), k
    if arch == "jumprelu":
        assert g0["threshold"].abs().sum() > 0


def test_feature_helpers_work_on_a_transcoder():
    """ablate / steer / feature_activations take a transcoder as they take an SAE: its latents where it
    reads, its decoder rows added where it writes."""
    from avec.dictionaries import ablate, feature_activations, steer

    lm = tiny_lm("llama")
    tc = Transcoder(arch="relu", d_in=64, d_sae=32, reads="blocks.1.mlp_in", writes="blocks.1.mlp_out")
    with torch.no_grad():
        tc.W_enc.normal_()
        tc.W_dec[0].normal_(std=0.1)
    x = tokens(lm, batch=2, seq=6)
    acts = feature_activations(lm, tc, None, x)
    assert acts.shape == (2, 32)
    i = int(acts[0].argmax())
    with lm.dictionary(tc) as d:
        base = lm.run(x, cache=["blocks.1.mlp_out.tc.recon"])
        steered = lm.run(x, interventions=[steer(d, i, 2.0, positions=-1)], cache=["blocks.1.mlp_out.tc.recon"])
        off = lm.run(x, interventions=[ablate(d, i)])
    delta = steered.cache["blocks.1.mlp_out.tc.recon"] - base.cache["blocks.1.mlp_out.tc.recon"]
    assert torch.allclose(delta[:, -1], 2.0 * tc.decoder(0, 0)[i].detach().expand(2, -1), atol=1e-5)
    direct = lm.run(x, interventions=[steer(tc, i, 2.0, positions=-1)])  # nothing attached: at blocks.1.mlp_out
    assert torch.allclose(direct.logits, steered.logits, atol=1e-4)
    assert not torch.allclose(off.logits, base.logits)


@pytest.mark.parametrize("cross_layer", [True, False])
@pytest.mark.parametrize("active", [0.5, 0.01])  # the dense and the sparse (embedding_bag) products
def test_decoding_by_source_equals_decoding_by_target(cross_layer, active):
    from avec.dictionaries.clt import CrossLayerTranscoder

    clt = CrossLayerTranscoder(arch="relu", d_in=16, d_sae=400, n_layers=4, cross_layer=cross_layer)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for w in clt.W_dec:
            w.copy_(torch.randn(w.shape, generator=g))
        clt.b_dec.copy_(torch.randn(clt.b_dec.shape, generator=g))
        clt.out_scale.copy_(torch.rand(4, generator=g) + 0.5)
    zs = [torch.randn(3, 5, 400, generator=g).relu() * (torch.rand(3, 5, 400, generator=g) < active) for _ in range(4)]
    by_source = {i: clt.decode_targets(zs[i], i) for i in range(4)}
    for j in range(4):
        want = clt.decode_layer([zs[i] for i in clt.sources(j)], j)
        got = clt.decoder_bias(j) + sum(by_source[i][..., clt.targets(i).index(j), :] for i in clt.sources(j))
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("cross_layer", [True, False])
def test_decoder_vectors_and_chosen_pre_activations_are_the_matrices_rows_and_columns(cross_layer):
    """What attribution reads for a few features: decoder_vectors(i, f) are decoder(i, t)[f] for each target
    t (below a cut if asked); pre_activations(x, l, features) are the full pre-activations' columns."""
    from avec.dictionaries.clt import CrossLayerTranscoder, layer_points

    torch.manual_seed(0)
    t = CrossLayerTranscoder(arch="topk", k=3, d_in=16, d_sae=12, n_layers=4, cross_layer=cross_layer,
                             **layer_points(4))
    with torch.no_grad():
        t.out_scale.copy_(torch.tensor([0.5, 1.0, 2.0, 4.0]))
        t.in_scale.copy_(torch.tensor([3.0, 1.0, 0.5, 2.0]))
    feats = torch.tensor([7, 0, 7, 11])
    for i in range(4):
        targets = t.targets(i)
        v = t.decoder_vectors(i, feats)
        assert v.shape == (4, len(targets), 16)
        for k, j in enumerate(targets):
            torch.testing.assert_close(v[:, k], t.decoder(i, j)[feats])
        cut = t.decoder_vectors(i, feats, below=i + 1)
        torch.testing.assert_close(cut, v[:, :1])
        x = torch.randn(5, 16)
        torch.testing.assert_close(t.pre_activations(x, i, features=feats), t.pre_activations(x, i)[:, feats])
