"""Documents -> fixed-length token contexts, the way a dictionary's training data is cut.

The rule (``ContextRule``), stated once so that the on-disk cache can record it:

* documents are tokenised without special tokens and joined into one stream, each document followed
  by one ``separator`` token (default: the tokenizer's EOS, else its BOS): the end-of-document
  marker the model saw between documents in pre-training;
* the stream is cut into contexts of ``context`` tokens; when the model's tokenizer puts a BOS in
  front of every text it encodes (Gemma, Llama 3: ``prepend_bos``), each context starts with BOS
  and holds ``context - 1`` stream tokens, as every input the model was trained on did;
* a document longer than a context continues in the next one; the stream's last partial context
  is dropped (no padding, so every position is a real token).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch


@dataclass(frozen=True)
class ContextRule:
    """How documents become contexts; see the module docstring.

    context:     tokens per context (BOS included)
    bos:         token id each context starts with, or None
    separator:   token id appended after each document, or None (documents simply concatenated)
    """

    context: int
    bos: int | None
    separator: int | None

    def describe(self) -> dict[str, Any]:
        return {"context": self.context, "bos": self.bos, "separator": self.separator}


def _adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts its BOS in front of a text by itself (what the model expects)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def context_rule(tokenizer: Any, context: int, *, prepend_bos: bool | None = None,
                 separator: int | None | str = "eos") -> ContextRule:
    """The rule for ``tokenizer``: ``prepend_bos=None`` follows the tokenizer; ``separator="eos"``
    takes its EOS id (its BOS if it has no EOS), an int is used as is, None joins documents bare."""
    if isinstance(context, bool) or not isinstance(context, int) or context < 2:
        raise ValueError(f"context must be a whole number of tokens >= 2, got {context!r}")
    if tokenizer is None:
        raise ValueError("this model has no tokenizer: give the store a tokenizer (or token contexts)")
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if prepend_bos is None:
        prepend_bos = _adds_bos(tokenizer)
    if prepend_bos and bos_id is None:
        raise ValueError("prepend_bos=True but the tokenizer has no BOS token")
    if separator == "eos":
        separator = getattr(tokenizer, "eos_token_id", None)
        if separator is None:
            separator = bos_id
    elif separator is not None and (isinstance(separator, bool) or not isinstance(separator, int)):
        raise TypeError(f"separator must be a token id, None or 'eos', got {separator!r}")
    return ContextRule(context, bos_id if prepend_bos else None, separator)


def special_ids(tokenizer: Any, rule: ContextRule, extra: Iterable[int] = ()) -> list[int]:
    """Token ids whose activations the store drops: the tokenizer's special tokens (BOS, EOS, pad,
    ``all_special_ids``), the rule's BOS and separator, and ``extra``; sorted."""
    ids = set(int(i) for i in extra)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            ids.add(value)
    ids.update(int(i) for i in (getattr(tokenizer, "all_special_ids", None) or ()))
    ids.update(i for i in (rule.bos, rule.separator) if i is not None)
    return sorted(ids)


def _documents(docs: Iterable[str], batch: int) -> Iterator[list[str]]:
    """The documents in lists of ``batch`` (fast tokenizers encode a list in one call)."""
    if isinstance(docs, (str, bytes)):
        raise TypeError("documents must be an iterable of strings, got a single string; wrap it in a list")
    chunk: list[str] = []
    for i, doc in enumerate(docs):
        if not isinstance(doc, str):
            raise TypeError(f"document {i} is a {type(doc).__name__}, not a string")
        if doc:
            chunk.append(doc)
        if len(chunk) == batch:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def iter_contexts(docs: Iterable[str], tokenizer: Any, rule: ContextRule, *, doc_batch: int = 64) -> Iterator[torch.Tensor]:
    """Contexts ``[context]`` (int64) cut from ``docs`` by ``rule``; raises if there is not even one."""
    body = rule.context - (rule.bos is not None)
    stream: list[int] = []
    n = 0
    total = 0
    for chunk in _documents(docs, doc_batch):
        for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
            if rule.separator is not None:
                stream.append(rule.separator)
            total += len(ids)
        start = 0
        while len(stream) - start >= body:
            piece = stream[start:start + body]
            start += body
            n += 1
            yield torch.tensor(([rule.bos] if rule.bos is not None else []) + piece, dtype=torch.long)
        del stream[:start]
    if n == 0:
        raise ValueError(f"the corpus holds {total} tokens: not one context of {rule.context} tokens; "
                         "give more (or longer) documents or a shorter context")


def batch_contexts(contexts: Iterable[torch.Tensor], size: int) -> Iterator[torch.Tensor]:
    """Contexts stacked ``[size, context]`` (the last batch may be smaller)."""
    chunk: list[torch.Tensor] = []
    for c in contexts:
        chunk.append(c)
        if len(chunk) == size:
            yield torch.stack(chunk)
            chunk = []
    if chunk:
        yield torch.stack(chunk)
