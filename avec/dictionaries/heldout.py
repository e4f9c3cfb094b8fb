"""The held-out split of a corpus, and evaluating a dictionary on it.

Documents are split by a hash of their text (``zlib.crc32(text) % 100 < holdout``: about ``holdout``
percent of the documents, whatever their order or source), so training and evaluation never share a
document and the split is the same on every machine and in every process.
"""

from __future__ import annotations

import itertools
import zlib
from typing import Any, Iterator


def prepend_bos_default(lm: Any, prepend_bos: bool | None) -> bool:
    """--prepend-bos unset: yes when the tokenizer has a BOS token (the first position's attention-sink
    activation then sits on a token the store drops)."""
    return prepend_bos if prepend_bos is not None else getattr(lm.tokenizer, "bos_token_id", None) is not None


def held_out(text: str, holdout: int) -> bool:
    """Whether a document is in the held-out split (``holdout`` percent of documents, by a hash of the text)."""
    return zlib.crc32(text.encode("utf-8")) % 100 < holdout


def split_documents(corpus: str, part: str, holdout: int, shuffle: bool = False, seed: int = 0) -> list[str] | Iterator[str]:
    """The ``part`` ("train" or "heldout") documents of ``corpus`` (``texts(corpus)``)."""
    from .corpus import texts

    want = part == "heldout"
    docs = (d for d in texts(corpus) if held_out(d, holdout) == want)
    if not shuffle:
        return docs
    import random

    docs = list(docs)
    random.Random(seed).shuffle(docs)
    return docs


def heldout_contexts(tokenizer: Any, n: int, context: int = 64, *, corpus: str = "default", holdout: int = 2,
                     seed: int = 0, prepend_bos: bool | None = True) -> Any:
    """``[n, context]`` token ids (int64) cut from the held-out documents of ``corpus`` (shuffled with
    ``seed``), the way training cuts them (``context_rule``: BOS first when ``prepend_bos``): text the
    dictionary never trained on, e.g. to read its features' top examples. Raises if the held-out split
    yields fewer than ``n`` contexts."""
    import torch

    from .contexts import context_rule, iter_contexts

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a whole number of contexts >= 1, got {n!r}")
    rule = context_rule(tokenizer, context, prepend_bos=prepend_bos)
    docs = split_documents(corpus, "heldout", holdout, shuffle=True, seed=seed)
    got = list(itertools.islice(iter_contexts(docs, tokenizer, rule), n))
    if len(got) < n:
        raise ValueError(f"the held-out split of {corpus!r} (holdout {holdout}%) gives {len(got)} contexts of "
                         f"{context} tokens, fewer than the {n} asked")
    return torch.stack(got)


def describe_split(corpus: str, part: str, holdout: int, shuffle: bool, seed: int) -> str:
    what = f"{corpus} {part} (crc32 % 100 {'<' if part == 'heldout' else '>='} {holdout})"
    return what + (f", shuffled seed {seed}" if shuffle else "")


def evaluate_heldout(lm: Any, sae: Any, at: str, corpus: str, holdout: int, context: int, eval_tokens: int,
                  eval_contexts: int, prepend_bos: bool | None = None, keep_special: bool = True) -> tuple[Any, dict]:
    """``evaluate`` on the held-out documents of ``corpus``: reconstruction metrics on ``eval_tokens`` tokens
    from an activation store (special tokens dropped, as in training), CE / KL with ``sae`` spliced in at
    ``at`` on the first ``eval_contexts`` contexts of ``context`` tokens. Returns the ``SAEEvaluation`` and
    a record of what was measured (JSON-ready)."""
    import torch

    from .contexts import iter_contexts
    from .evaluate import evaluate
    from .store import ActivationStore

    prepend_bos = prepend_bos_default(lm, prepend_bos)
    store = ActivationStore(lm, at, split_documents(corpus, "heldout", holdout), context=context,
                            max_tokens=eval_tokens, batch_tokens=2048, buffer_tokens=4096, progress=True,
                            prepend_bos=prepend_bos)
    acts = [b[at] for b in store.chunks()]
    ctxs = list(itertools.islice(iter_contexts(split_documents(corpus, "heldout", holdout), lm.tokenizer, store.rule),
                                 eval_contexts))
    tokens = [torch.stack(ctxs[i:i + 8]).to(lm.device) for i in range(0, len(ctxs), 8)]
    # the special tokens the store drops (BOS / EOS: outliers the SAE never saw) keep the model's own value
    res = evaluate(sae, acts, lm=lm, tokens=tokens, at=at, keep_tokens=store.dropped_ids if keep_special else None)
    data = {"corpus": corpus, "split": describe_split(corpus, "heldout", holdout, False, 0),
            "reconstruction_tokens": res.n_tokens, "ce_tokens": sum(t.numel() for t in tokens),
            "context": context, "bos": store.rule.bos,
            "splice": ("recon at every position but the special tokens " f"{store.dropped_ids} (the model's own "
                       "value there, in the zero-ablation baseline too)") if keep_special else "recon at every position"}
    return res, data


def evaluate_transcoder_heldout(lm: Any, tc: Any, corpus: str = "default", holdout: int = 2, context: int = 128,
                                eval_tokens: int = 16_384, eval_contexts: int = 16,
                                prepend_bos: bool | None = None) -> tuple[Any, dict]:
    """``evaluate_transcoder`` on the held-out documents of ``corpus``: per-layer FVU / L0 / dead on
    ``eval_tokens`` tokens of every read and written point (special tokens dropped, as in training), and the
    replacement model's CE loss recovered / KL / top-1 agreement (every written point replaced by its
    reconstruction, special tokens keeping the model's own value) on ``eval_contexts`` contexts of ``context``
    tokens. Returns the ``TranscoderEvaluation`` and a record of what was measured (JSON-ready)."""
    import torch

    from .contexts import iter_contexts
    from .evaluate import evaluate_transcoder
    from .store import ActivationStore

    prepend_bos = prepend_bos_default(lm, prepend_bos)
    hooks = list(tc.cfg.reads) + list(tc.cfg.writes)
    store = ActivationStore(lm, hooks, split_documents(corpus, "heldout", holdout), context=context,
                            max_tokens=eval_tokens, batch_tokens=2048, buffer_tokens=4096, prepend_bos=prepend_bos)
    chunks = list(store.chunks())
    ctxs = list(itertools.islice(iter_contexts(split_documents(corpus, "heldout", holdout), lm.tokenizer, store.rule),
                                 eval_contexts))
    tokens = [torch.stack(ctxs[i:i + 8]).to(lm.device) for i in range(0, len(ctxs), 8)]
    res = evaluate_transcoder(tc, chunks, lm=lm, tokens=tokens, keep_tokens=store.dropped_ids)
    data = {"corpus": corpus, "split": describe_split(corpus, "heldout", holdout, False, 0),
            "reconstruction_tokens": res.n_tokens, "ce_tokens": sum(t.numel() for t in tokens), "context": context,
            "bos": store.rule.bos,
            "splice": f"recon at every written point and position but the special tokens {store.dropped_ids}"}
    return res, data
