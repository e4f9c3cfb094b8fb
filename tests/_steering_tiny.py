"""A tiny random model with a real tokenizer (SmolLM2's), for text-level steering tests."""

import torch

from _tiny import TINY_CONFIGS


def tiny_lm_with_tokenizer(tokenizer, model_type: str = "llama", seed: int = 0, n_layers: int | None = None):
    from transformers import AutoConfig, AutoModelForCausalLM

    from avec.models import LanguageModel

    torch.manual_seed(seed)
    kw = dict(TINY_CONFIGS[model_type], vocab_size=len(tokenizer))
    kw.pop("bos_token_id", None), kw.pop("eos_token_id", None)
    if n_layers is not None:
        kw["num_hidden_layers"] = n_layers
    config = AutoConfig.for_model(model_type, **kw)
    model = AutoModelForCausalLM.from_config(config).eval()
    return LanguageModel(model, tokenizer=tokenizer, name=f"tiny-{model_type}-tok")
