"""The bundled Gemma 3 270M: assembled from its chunk packages, dequantized once, cached."""

import pytest

import avec
from avec.models import BUNDLED

pytestmark = pytest.mark.skipif(not BUNDLED["gemma3-270m"].available(), reason="gemma3-270m packages not installed")


@pytest.fixture(scope="module")
def gemma():
    return avec.load("gemma3-270m")


def test_gemma_loads_with_sandwich_norm_adapter(gemma):
    assert gemma.config.model_type == "gemma3_text" and gemma.arch.family == "gemma"
    assert (gemma.n_layers, gemma.d_model) == (18, 640)
    ids, _ = gemma.tokenize("Hello")
    assert ids[0, 0].item() == gemma.tokenizer.bos_token_id  # Gemma expects its BOS


def test_gemma_decomposes_and_knows_a_fact(gemma):
    run = gemma.run("The capital of France is", cache=["embed", "blocks.*.attn_out", "blocks.*.mlp_out", "blocks.17.resid_post"])
    total = run.cache["embed"] + run.cache.stack("attn_out").sum(0) + run.cache.stack("mlp_out").sum(0)
    final = run.cache["blocks.17.resid_post"]
    assert (total - final).abs().max() <= 1e-5 * final.abs().max()
    top = run.last_logits()[0].topk(5).indices.tolist()
    assert gemma.token_id(" Paris") in top
