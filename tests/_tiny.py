"""Tiny randomly initialised transformers of every supported family, for fast exact tests."""

import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(1)  # tests run in parallel workers on 2 cores

TINY_KW = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
               num_key_value_heads=2, head_dim=16, vocab_size=101, max_position_embeddings=128)

TINY_CONFIGS = {
    "llama": TINY_KW,
    "mistral": TINY_KW,
    "qwen2": TINY_KW,
    "qwen3": TINY_KW,
    "gemma2": dict(TINY_KW, query_pre_attn_scalar=16, sliding_window=8),
    "gemma3_text": dict(TINY_KW, query_pre_attn_scalar=16, sliding_window=8),
    "gpt2": dict(n_embd=64, n_layer=3, n_head=4, vocab_size=101, n_positions=128, bos_token_id=0, eos_token_id=0),
}
ARCHS = list(TINY_CONFIGS)


def tiny_hf(model_type: str, dtype=torch.float32, seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, **TINY_CONFIGS[model_type])
    model = AutoModelForCausalLM.from_config(config).to(dtype).eval()
    # random init leaves norms at 1 and small weights; perturb norms so post-norms matter
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def tiny_lm(model_type: str, dtype=torch.float32, seed: int = 0):
    from avec.models import LanguageModel

    return LanguageModel(tiny_hf(model_type, dtype, seed), tokenizer=None, name=f"tiny-{model_type}")




def tokens(lm, batch=2, seq=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, lm.dims.vocab, (batch, seq), generator=g)
