"""LanguageModel: a Hugging Face causal LM with canonical hook points, tokenizer-aware runs and
steerable generation. The HF model is wrapped, never reimplemented: its own forward runs."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from ..core.hooks import check_selection
from ..core.interventions import Patch, StopGradient
from ..core.positions import TokenContext
from ..core.model import Model, Run
from .architectures import Architecture, architecture_for, dims_of, hook_table


def weights_fingerprint(hf_model: nn.Module) -> str:
    """A short hash of a few weight rows: the same weights give the same id whatever name or path
    they were loaded under, so caches and saved vectors move between loads of one model."""
    import hashlib

    h = hashlib.sha1()
    for tensor in (hf_model.get_input_embeddings().weight, hf_model.get_output_embeddings().weight):
        if tensor.device.type == "meta":
            continue
        h.update(tensor[:8, :64].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:10]


class LanguageModel(Model):
    """A decoder-only transformer from Hugging Face transformers.

    Runs take strings (batched with right padding: position i of a row is that prompt's token i,
    and ``run.lengths`` gives each prompt's length) or token ids ``[batch, pos]``.
    """

    def __init__(self, hf_model: nn.Module, tokenizer: Any, name: str | None = None, arch: Architecture | None = None):
        self.hf = hf_model
        self.tokenizer = tokenizer
        self.arch = arch or architecture_for(hf_model.config)
        self.dims = dims_of(hf_model.config)
        super().__init__(hf_model, name=name or getattr(hf_model.config, "_name_or_path", None) or self.arch.family,
                         table=hook_table(self.arch, self.dims), tracker=self.arch.base)
        d = self.dims
        self.model_id = (f"{hf_model.config.model_type}:{self.arch.family}:L{d.n_layers}:d{d.d_model}:v{d.vocab}:"
                         f"{weights_fingerprint(hf_model)}")
        if tokenizer is not None and tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def config(self):
        return self.hf.config

    @property
    def n_layers(self) -> int:
        return self.dims.n_layers

    @property
    def d_model(self) -> int:
        return self.dims.d_model

    @property
    def n_heads(self) -> int:
        return self.dims.n_heads

    @property
    def d_head(self) -> int:
        return self.dims.d_head

    @property
    def d_mlp(self) -> int:
        return self.dims.d_mlp

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    def get_module(self, path: str) -> nn.Module:
        return self.hf.get_submodule(path)

    @property
    def W_U(self) -> torch.Tensor:
        """Unembedding ``[d_model, vocab]``."""
        return self.get_module(self.arch.unembed).weight.T

    # -- tokens --------------------------------------------------------------------------------
    def tokenize(self, prompts: str | Sequence[str], padding_side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids [batch, pos], attention_mask [batch, pos])``, with the tokenizer's own
        special tokens (e.g. Gemma's BOS) as the model expects."""
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise ValueError("empty input: no prompts given")
        empty = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p]
        if empty:
            raise ValueError(f"empty input: prompt(s) {empty} are empty strings or not strings")
        before = self.tokenizer.padding_side
        self.tokenizer.padding_side = padding_side
        try:
            enc = self.tokenizer(prompts, return_tensors="pt", padding=True)
        finally:  # the tokenizer is the user's object too: leave it as it was
            self.tokenizer.padding_side = before
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        self.check_context(ids.shape[1])
        return ids, mask

    @property
    def context_length(self) -> int | None:
        """The longest sequence the model was trained on (``max_position_embeddings``), if it says."""
        n = getattr(self.config, "max_position_embeddings", None)
        return int(n) if isinstance(n, int) and n > 0 else None

    def check_context(self, n_tokens: int, what: str = "the input") -> None:
        """Refuse sequences longer than the model's context: positions past it are untrained and the
        run would take minutes (attention is quadratic) to produce meaningless values."""
        limit = self.context_length
        if limit is not None and n_tokens > limit:
            raise ValueError(f"{what} is {n_tokens} tokens long but {self.name!r} has a context of {limit} tokens; "
                             f"shorten it (or split it into pieces of at most {limit} tokens)")

    def to_tokens(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def to_str_tokens(self, text: str | torch.Tensor) -> list[str]:
        ids = self.to_tokens(text) if isinstance(text, str) else text.tolist()
        return [self.tokenizer.decode([i]) for i in ids]

    def token_id(self, token: str | int) -> int:
        """The id of a string that must be exactly one token (e.g. ``" Paris"``)."""
        if isinstance(token, int):
            return token
        ids = self.to_tokens(token)
        if len(ids) != 1:
            pieces = [self.tokenizer.decode([i]) for i in ids]
            raise ValueError(f"{token!r} is {len(ids)} tokens ({pieces}), not one; pick a single-token string")
        return ids[0]

    def encode(self, inputs: Any) -> tuple[torch.Tensor, torch.Tensor, list[str] | None]:
        """``(ids [batch, pos], mask [batch, pos], prompts or None)`` from a string, a list of strings
        (right-padded), token ids ``[batch, pos]`` / ``[pos]``, or a dict with ``input_ids``."""
        prompts = None
        if isinstance(inputs, (str, list, tuple)) and (isinstance(inputs, str) or all(isinstance(p, str) for p in inputs)):
            prompts = [inputs] if isinstance(inputs, str) else list(inputs)
            ids, mask = self.tokenize(prompts)
        elif isinstance(inputs, torch.Tensor):
            ids = inputs if inputs.dim() == 2 else inputs[None]
            if ids.numel() == 0:
                raise ValueError(f"empty input: token tensor of shape {list(inputs.shape)}")
            ids = ids.to(self.device)
            mask = torch.ones_like(ids)
        elif isinstance(inputs, dict) and "input_ids" in inputs:
            ids = inputs["input_ids"].to(self.device)
            mask = inputs.get("attention_mask", torch.ones_like(ids)).to(self.device)
            if ids.numel() == 0:
                raise ValueError("empty input: input_ids is empty")
        else:
            raise TypeError(f"a language model runs on a string, a list of strings or token ids [batch, pos]; got {type(inputs).__name__}")
        if ids.dtype not in (torch.long, torch.int, torch.int32):
            raise TypeError(f"token ids must be integers, got {ids.dtype}")
        if int(ids.max()) >= self.dims.vocab or int(ids.min()) < 0:
            raise ValueError(f"token ids must lie in 0..{self.dims.vocab - 1}")
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask has shape {list(mask.shape)} but input_ids has {list(ids.shape)}")
        self.check_context(ids.shape[1])
        return ids, mask, prompts

    def _prepare(self, inputs: Any, **forward_kwargs: Any):
        ids, mask, prompts = self.encode(inputs)

        def call():
            return self.hf(input_ids=ids, attention_mask=mask, use_cache=False, **forward_kwargs)

        return call, {"tokens": ids, "attention_mask": mask, "prompts": prompts}

    @contextmanager
    def _runtime(self, sites):
        """Attention patterns exist only with eager attention: switch to it for that call only."""
        needs_eager = any(s.eager for s in sites)
        before = self.hf.config._attn_implementation
        if needs_eager and before != "eager":
            self.hf.set_attn_implementation("eager")
            try:
                yield
            finally:
                self.hf.set_attn_implementation(before)
        else:
            yield

    # -- freezing for gradients ------------------------------------------------------------------
    def _freezable(self) -> tuple[str, ...]:
        return ("norms", "attention")

    def _freeze_edits(self, freeze) -> list:
        if "attention" not in freeze:
            return []
        if self.arch.attn_q is None or self.arch.attn_k is None:
            raise ValueError(f"freezing attention stops gradients at attn.q and attn.k, which {self.arch.family} "
                             "does not have as separate modules (fused qkv); freeze 'norms' only")
        return [StopGradient(f"blocks.{l}.attn.{x}") for l in range(self.n_layers) for x in ("q", "k")]

    # -- starting a run part-way ----------------------------------------------------------------
    def run(self, inputs: Any, cache: Any = None, interventions: Any = (), *, start_at_layer: int | None = None,
            start_resid: torch.Tensor | None = None, **kwargs: Any) -> Run:
        """``Model.run`` (see there), plus an optional start part-way through the network.

        start_at_layer, start_resid: begin at decoder layer ``l`` with ``start_resid``
            ``[batch, pos, d_model]`` as its input residual (``blocks.l.resid_pre``); layers ``0..l-1``
            are not computed (TransformerLens's ``start_at_layer``). The tokens are still given: they
            set the attention mask, positions and rotary phases, so the run equals a full run whose
            ``blocks.l.resid_pre`` was replaced by ``start_resid``. Hook points before
            ``blocks.l.resid_pre`` cannot be read or edited in such a run.
        """
        if start_at_layer is None:
            if start_resid is not None:
                raise ValueError("start_resid is the input of layer start_at_layer; give start_at_layer too")
            return super().run(inputs, cache, interventions, **kwargs)
        layer = int(start_at_layer)
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"start_at_layer={start_at_layer} is out of range: {self.n_layers} layers (0..{self.n_layers - 1})")
        if not isinstance(start_resid, torch.Tensor):
            raise TypeError(f"start_at_layer needs start_resid, a tensor [batch, pos, {self.d_model}]")
        first = f"blocks.{layer}.resid_pre"
        names = self.resolve(cache) if cache else []
        order = {n: i for i, n in enumerate(self.table.names)}
        skipped = [n for n in names + [s.name for s, _ in self._bind([interventions])] if order[n] < order[first]]
        if skipped:
            raise ValueError(f"hook point(s) {sorted(set(skipped))} come before {first}, where this run starts "
                             f"(start_at_layer={layer}): layers 0..{layer - 1} are not computed")
        ids, _, _ = self.encode(inputs)
        want = (ids.shape[0], ids.shape[1], self.d_model)
        if tuple(start_resid.shape) != want:
            raise ValueError(f"start_resid has shape {list(start_resid.shape)}; the run needs [batch, pos, d_model] = "
                             f"{list(want)} for these inputs")
        start = Patch(first, source=start_resid)
        with self._skipping_layers(layer):
            return super().run(inputs, cache, [start, interventions], **kwargs)

    @contextmanager
    def _skipping_layers(self, n: int):
        """Stand-ins for decoder layers ``0..n-1`` that pass the residual through, for this block only.

        The model's own forward still runs (embedding, masks, rotary phases, layer types by index);
        the stand-ins keep every layer index in place, so per-layer settings (Gemma's sliding and
        global layers) stay with their layers. Layer ``n``'s input is then set by a Patch.
        """
        layers = self.get_module(self.arch.layers)
        saved = [layers[i] for i in range(n)]
        try:
            for i in range(n):
                layers[i] = _PassThrough()
            yield
        finally:
            for i, module in enumerate(saved):
                layers[i] = module

    # -- generation ----------------------------------------------------------------------------
    def generate(
        self,
        prompts: str | Sequence[str],
        max_new_tokens: int = 30,
        *,
        steer: Any = None,
        interventions: Iterable[Any] = (),
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float | None = None,
        seed: int | None = None,
        use_cache: bool = True,
        chat: bool = False,
        progress: Callable[[int, int], Any] | None = None,
    ) -> list[str]:
        """Complete each prompt; returns the new text only, one string per prompt.

        steer / interventions apply to every forward pass (prompt and each generated token) with the
        same prompt-relative positions whether or not the KV cache is on. ``chat`` wraps each prompt
        in the tokenizer's chat template. ``seed`` makes sampling reproducible. ``progress(done, total)``
        is called once per generated token (``total`` = ``max_new_tokens``; fewer calls if every row stops
        at EOS first), e.g. to show progress in a page.
        """
        single = isinstance(prompts, str)
        prompts = [prompts] if single else list(prompts)
        if chat:
            prompts = [
                self.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                for p in prompts
            ]
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a whole number >= 1, got {max_new_tokens!r}")
        ids, mask = self.tokenize(prompts, padding_side="left")
        self.check_context(ids.shape[1] + max_new_tokens, f"the longest prompt plus max_new_tokens={max_new_tokens}")
        edits = [x for x in ([steer] if steer is not None else []) + list(interventions)]
        prompt_pass = TokenContext.from_mask(mask.cpu())
        new_tokens = TokenContext(prompt_pass.pad_left, prompt_pass.prompt_len, ids.shape[1], max_new_tokens)
        check_selection(self._bind(edits), [prompt_pass, new_tokens], lengths_hint=f", + {max_new_tokens} generated")
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, use_cache=use_cache,
                                      pad_token_id=self.tokenizer.pad_token_id)
        if do_sample:
            kwargs["temperature"] = temperature
            if top_p is not None and top_p < 1.0:
                # transformers' top-p sorts the whole vocabulary every step (slow for Gemma's 262k tokens);
                # the same temperature / top-k / nucleus, with the nucleus found among the top tokens first
                from transformers import LogitsProcessorList

                from .sampling import NucleusFilter

                top_k = self.hf.generation_config.top_k
                if top_k is None:  # what transformers fills in at generate time
                    from transformers import GenerationConfig

                    defaults = getattr(GenerationConfig, "_get_default_generation_params", lambda: {"top_k": 50})
                    top_k = defaults().get("top_k")
                kwargs.update(temperature=1.0, top_k=0, top_p=1.0, logits_processor=LogitsProcessorList(
                    [NucleusFilter(top_p, temperature=temperature, top_k=top_k)]))
        else:  # silence "temperature is set but do_sample=False" from generation configs
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if progress is not None:  # a logits processor sees each step's scores once: count, change nothing
            from transformers import LogitsProcessorList

            kwargs["logits_processor"] = LogitsProcessorList([*kwargs.get("logits_processor", []),
                                                              _StepCounter(progress, max_new_tokens)])
        if seed is not None:
            torch.manual_seed(seed)
        with torch.no_grad(), self.intervene(*edits):
            out = self.hf.generate(input_ids=ids, attention_mask=mask, **kwargs)
        texts = self.tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
        return texts

    def __repr__(self) -> str:
        d = self.dims
        return (f"LanguageModel({self.name!r}, {self.arch.family}, layers={d.n_layers}, d_model={d.d_model}, "
                f"heads={d.n_heads}x{d.d_head}, d_mlp={d.d_mlp}, vocab={d.vocab})")


class _StepCounter:
    """A logits processor that reports each generation step to ``callback(done, total)``; scores pass unchanged."""

    def __init__(self, callback: Callable[[int, int], Any], total: int):
        self.callback, self.total, self.done = callback, total, 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.done += 1
        self.callback(self.done, self.total)
        return scores


class _PassThrough(nn.Module):
    """A skipped decoder layer: returns its input residual (transformers decoder layers take the
    hidden states first and return them)."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states
