"""The activation store: contexts, special tokens, one pass for several hook points, the mixing
buffer, the on-disk cache (reuse, resume, refusal) and bad input. Tiny random models with a
character-level stand-in tokenizer; SmolLM2 once, for its real tokenizer."""

import json

import pytest
import torch
from _tiny import tiny_hf

from avec.core.hookpoints import UnknownHookPoint
from avec.dictionaries.contexts import context_rule, iter_contexts
from avec.dictionaries.mixing import mix
from avec.dictionaries.store import ActivationStore
from avec.models import LanguageModel

BOS, EOS, PAD = 1, 2, 0


class CharTokenizer:
    """One token per character (ids 3..92), BOS=1, EOS=2, pad=0; ``add_bos`` as Gemma/Llama 3 do."""

    bos_token_id, eos_token_id, pad_token_id = BOS, EOS, PAD
    all_special_ids = [PAD, BOS, EOS]

    def __init__(self, add_bos: bool = True):
        self.add_bos = add_bos

    def __call__(self, texts, add_special_tokens=True):
        one = isinstance(texts, str)
        out = [([BOS] if add_special_tokens and self.add_bos else []) + [3 + ord(c) % 90 for c in t]
               for t in ([texts] if one else texts)]
        return {"input_ids": out[0] if one else out}


def make_lm(seed=0, add_bos=True):
    return LanguageModel(tiny_hf("llama", seed=seed), tokenizer=CharTokenizer(add_bos), name="tiny")


DOCS = [f"doc {i}: " + "abcdefghij"[i % 10] * (3 + 7 * (i % 4)) for i in range(120)]
HOOK = "blocks.1.resid_post"


def store(lm, docs=DOCS, hooks=HOOK, **kw):
    kw = dict(dict(context=16, batch_contexts=4, batch_tokens=32, buffer_tokens=256, progress=False), **kw)
    return ActivationStore(lm, hooks, docs, **kw)


def cat(chunks, hook=HOOK):
    return torch.cat([c[hook] for c in chunks])


# -- contexts ---------------------------------------------------------------------------------
@pytest.mark.parametrize("add_bos", [True, False])
def test_contexts_follow_the_rule(add_bos):
    tok = CharTokenizer(add_bos)
    rule = context_rule(tok, 10)
    assert (rule.bos, rule.separator) == ((BOS if add_bos else None), EOS)
    docs = ["abc", "defghijk", "lmnopqrstuvwxyz", "ab"]
    ctxs = list(iter_contexts(docs, tok, rule))
    stream = [t for d in docs for t in tok(d, add_special_tokens=False)["input_ids"] + [EOS]]
    body = 9 if add_bos else 10
    assert all(c.shape == (10,) for c in ctxs)
    assert len(ctxs) == len(stream) // body  # the last partial context is dropped, not padded
    if add_bos:
        assert all(int(c[0]) == BOS for c in ctxs)
    got = [t for c in ctxs for t in c.tolist()[10 - body:]]
    assert got == stream[:len(got)]


def test_activations_equal_the_core_with_specials_dropped():
    lm = make_lm()
    st = store(lm, hooks=[HOOK, "blocks.0.attn.z"])
    ids = torch.stack(list(iter_contexts(DOCS[:10], lm.tokenizer, st.rule))[:4])
    acts = st.activations(ids)
    keep = ~torch.isin(ids, torch.tensor([PAD, BOS, EOS]))
    assert (ids == EOS).any() and (ids == BOS).any()
    ref = lm.run(ids, cache=[HOOK, "blocks.0.attn.z"])
    assert torch.equal(acts[HOOK], ref.cache[HOOK][keep])
    assert acts["blocks.0.attn.z"].shape == (int(keep.sum()), lm.n_heads * lm.d_head)
    assert torch.equal(acts["blocks.0.attn.z"], ref.cache["blocks.0.attn.z"][keep].flatten(1))


def test_several_hook_points_are_read_in_one_pass(monkeypatch):
    lm = make_lm()
    calls = []
    run = lm.run
    monkeypatch.setattr(lm, "run", lambda *a, **k: calls.append(k["cache"]) or run(*a, **k))
    st = store(lm, hooks=["blocks.0.resid_post", "blocks.2.mlp_out"], max_tokens=16 * 8)
    batches = list(st)
    assert len(calls) == 2 and all(c == ["blocks.0.resid_post", "blocks.2.mlp_out"] for c in calls)
    assert {b["blocks.0.resid_post"].shape[0] for b in batches[:-1]} == {32}
    ctxs = torch.stack(list(iter_contexts(DOCS, lm.tokenizer, st.rule))[:8])
    n_special = int(torch.isin(ctxs, torch.tensor([PAD, BOS, EOS])).sum())
    assert n_special > 8  # a BOS per context and some separators
    assert sum(b["blocks.2.mlp_out"].shape[0] for b in batches) == 8 * 16 - n_special


# -- mixing -----------------------------------------------------------------------------------
def _numbered(n_chunks=40, size=25):
    """Chunks whose rows are their own global index (so order and coverage can be read back)."""
    return [{"x": torch.arange(i * size, (i + 1) * size, dtype=torch.float32)[:, None].repeat(1, 3)}
            for i in range(n_chunks)]


def test_mixing_yields_every_token_once_shuffled_and_seeded():
    out = list(mix(_numbered(), buffer_tokens=200, batch_tokens=20, seed=3))
    rows = torch.cat([b["x"][:, 0] for b in out])
    assert sorted(rows.tolist()) == list(range(1000))
    assert all(b["x"].shape[0] == 20 for b in out)
    # the first batch draws on many of the first 200 tokens' chunks, not on one context
    first = out[0]["x"][:, 0]
    assert len(set((first // 25).tolist())) >= 5 and first.max() < 200
    again = torch.cat([b["x"][:, 0] for b in mix(_numbered(), 200, 20, seed=3)])
    other = torch.cat([b["x"][:, 0] for b in mix(_numbered(), 200, 20, seed=4)])
    assert torch.equal(rows, again) and not torch.equal(rows, other)


def test_mixing_last_batch_and_bad_sizes():
    out = list(mix(_numbered(3, 25), buffer_tokens=40, batch_tokens=20))
    assert [b["x"].shape[0] for b in out] == [20, 20, 20, 15]
    assert [b["x"].shape[0] for b in mix(_numbered(3, 25), 40, 20, drop_last=True)] == [20, 20, 20]
    with pytest.raises(ValueError, match="twice batch_tokens"):
        list(mix(_numbered(), buffer_tokens=30, batch_tokens=20))


# -- on-disk cache ----------------------------------------------------------------------------
def test_cache_is_written_then_reused_without_the_model(tmp_path, monkeypatch):
    lm = make_lm()
    ref = cat(store(lm, max_tokens=16 * 40).chunks())
    kw = dict(max_tokens=16 * 40, cache_dir=tmp_path, corpus="toy docs v1", tokens_per_shard=16 * 8)
    first = list(store(lm, **kw))
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["complete"] and len(index["shards"]) == 5
    assert index["settings"]["model_id"] == lm.model_id and index["settings"]["hooks"] == [HOOK]
    assert (tmp_path / "shard_00000.safetensors").exists()
    assert sum(s["tokens"] for s in index["shards"]) == ref.shape[0] == sum(b[HOOK].shape[0] for b in first)

    monkeypatch.setattr(lm, "run", lambda *a, **k: pytest.fail("the model ran although the cache is complete"))
    again = store(lm, None, **kw)  # no documents needed either
    assert torch.equal(cat(again.chunks()), ref)
    assert sorted(cat(list(again)).sum(1).tolist()) == sorted(ref.sum(1).tolist())


def test_interrupted_cache_resumes_at_the_next_shard(tmp_path, monkeypatch):
    lm = make_lm()
    kw = dict(max_tokens=16 * 40, cache_dir=tmp_path, corpus="toy docs v1", tokens_per_shard=16 * 8)
    ref = cat(store(lm, max_tokens=16 * 40).chunks())
    st = store(lm, **kw)
    real, calls = st.activations, []

    def crash_on_the_7th(ids):  # 2 forward batches per shard: dies inside shard 3
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return real(ids)

    monkeypatch.setattr(st, "activations", crash_on_the_7th)
    with pytest.raises(KeyboardInterrupt):
        list(st)
    index = json.loads((tmp_path / "index.json").read_text())
    assert len(index["shards"]) == 3 and not index["complete"]

    resumed = store(lm, **kw)
    real2, calls2 = resumed.activations, []
    monkeypatch.setattr(resumed, "activations", lambda ids: calls2.append(1) or real2(ids))
    assert torch.allclose(cat(resumed.chunks()), ref)
    assert len(calls2) == 4  # shards 3 and 4 only
    assert json.loads((tmp_path / "index.json").read_text())["complete"]


def test_cache_of_other_settings_is_refused_with_the_reason(tmp_path):
    lm = make_lm()
    kw = dict(max_tokens=16 * 8, cache_dir=tmp_path, corpus="toy docs v1", tokens_per_shard=16 * 8)
    list(store(lm, **kw))
    for change, key in [(dict(hooks="blocks.0.resid_post"), "hooks"), (dict(context=20), "context"),
                        (dict(corpus="other docs"), "corpus"), (dict(dtype=torch.bfloat16), "dtype")]:
        with pytest.raises(ValueError, match=f"other settings(.|\n)*{key}: cache has"):
            store(lm, **dict(kw, **change))
    with pytest.raises(ValueError, match="model_id: cache has"):
        store(make_lm(seed=1), **kw)


def test_resume_refuses_a_changed_corpus(tmp_path, monkeypatch):
    lm = make_lm()
    kw = dict(max_tokens=16 * 16, cache_dir=tmp_path, corpus="toy docs v1", tokens_per_shard=16 * 8)
    st = store(lm, **kw)
    it = iter(st.chunks())
    next(it), next(it)  # shard 0 written, then the consumer stops
    it.close()
    with pytest.raises(ValueError, match="shard 0 was built from other tokens"):
        list(store(lm, docs=DOCS[::-1], **kw))


def test_ranks_read_disjoint_shards_covering_the_cache(tmp_path):
    lm = make_lm()
    kw = dict(max_tokens=16 * 40, cache_dir=tmp_path, corpus="toy docs v1", tokens_per_shard=16 * 8)
    full = cat(store(lm, **kw).chunks())
    parts = [cat(store(lm, None, rank=r, world_size=2, **kw).chunks()) for r in range(2)]
    assert parts[0].shape[0] + parts[1].shape[0] == full.shape[0]
    assert sorted(torch.cat(parts).sum(1).tolist()) == sorted(full.sum(1).tolist())
    assert not torch.equal(parts[0][:5], parts[1][:5])


def test_no_cache_ranks_split_contexts():
    lm = make_lm()
    full = cat(store(lm, max_tokens=16 * 16).chunks())
    parts = [cat(store(lm, max_tokens=16 * 16, rank=r, world_size=2).chunks()) for r in range(2)]
    assert sorted(torch.cat(parts).sum(1).tolist()) == pytest.approx(sorted(full.sum(1).tolist()), abs=1e-4)


# -- bad input --------------------------------------------------------------------------------
def test_bad_input_is_refused_clearly(tmp_path):
    lm = make_lm()
    with pytest.raises(ValueError, match="not one context of 16 tokens"):
        list(store(lm, docs=[]))
    with pytest.raises(ValueError, match="not one context of 16 tokens"):
        list(store(lm, docs=["", "ab"]))
    with pytest.raises(TypeError, match="single string"):
        list(store(lm, docs="some text"))
    with pytest.raises(TypeError, match="document 1 is a int"):
        list(store(lm, docs=["abc", 5]))
    with pytest.raises(ValueError, match="context=200 is 200 tokens long but 'tiny' has a context of 128"):
        store(lm, context=200)
    with pytest.raises(UnknownHookPoint, match="unknown hook point .blocks.1.resid_postt.. Did you mean: blocks.1.resid_post"):
        store(lm, hooks="blocks.1.resid_postt")
    with pytest.raises(ValueError, match="one value per token"):
        store(lm, hooks="blocks.1.attn.pattern")
    with pytest.raises(ValueError, match="needs corpus="):
        store(lm, cache_dir=tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="no index.json: it is not an activation store"):
        store(lm, cache_dir=tmp_path / "b", corpus="toy")
    with pytest.raises(ValueError, match="no documents given"):
        store(lm, docs=None)
    with pytest.raises(ValueError, match="not complete: build it first in one process"):
        store(lm, cache_dir=tmp_path / "c", corpus="toy", rank=1, world_size=2)
    with pytest.raises(ValueError, match="rank must lie"):
        store(lm, rank=2, world_size=2)
    with pytest.raises(ValueError, match="no tokenizer"):
        ActivationStore(LanguageModel(tiny_hf("llama"), tokenizer=None), HOOK, DOCS)


# -- a real tokenizer -------------------------------------------------------------------------
def test_smollm2_rule_and_dropped_tokens(smollm2):
    lm = smollm2
    st = ActivationStore(lm, "blocks.3.resid_post", ["The cat sat on the mat. " * 4, "Paris is big. " * 6],
                         context=16, batch_tokens=8, buffer_tokens=32, progress=False)
    tok = lm.tokenizer
    # SmolLM2's tokenizer adds no BOS: contexts start mid-stream, documents end with its EOS
    assert st.rule.bos is None and st.rule.separator == tok.eos_token_id
    assert {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id} <= set(st.dropped_ids)
    n_ctx = len(list(iter_contexts(st.documents, tok, st.rule)))
    total = sum(b["blocks.3.resid_post"].shape[0] for b in st)
    assert total == n_ctx * 16 - 1  # one EOS falls inside the contexts and is dropped
