"""Which absolute columns an intervention touches during real cached generation, checked against the
selectors' definitions (written out here independently of avec.core.positions).

This is what broke silently when transformers 5.24 renamed the KV-cache argument: every decoding
step was taken for a fresh prompt, so left-padded rows stopped being steered.
"""

from dataclasses import dataclass, field

import pytest
import torch

from _tiny import tiny_lm
from avec import At, From, Front
from avec.core.interventions import Intervention
from avec.core.positions import column_of, columns

PAD = 0


@dataclass(frozen=True)
class Record(Intervention):
    """Logs (row, absolute column) of every column it is applied to; leaves the value unchanged."""

    log: list = field(default_factory=list)

    def edit(self, value, where, ctx, site):
        sel = torch.ones(value.shape[:2], dtype=torch.bool) if where is None else where.reshape(where.shape[:2]).expand(value.shape[:2])
        for b, c in sel.nonzero().tolist():
            self.log.append((b, ctx.offset + c))
        return value


def expected(name, pad, length, total):
    """Absolute columns of one left-padded row: prompt position p sits at column pad + p."""
    prompt = range(pad, pad + length)
    generated = range(pad + length, total)
    if name == "front2":
        return set(prompt[:2])
    if name == "from-1":
        return {pad + length - 1} | set(generated)
    if name == "from1":
        return set(range(pad + 1, total))
    if name == "at-2":
        return {pad + length - 2}
    if name == "prompt":
        return set(prompt)
    if name == "generated":
        return set(generated)
    raise AssertionError(name)


SELECTORS = {"front2": Front(2), "from-1": From(-1), "from1": From(1), "at-2": At((-2,)),
             "prompt": "prompt", "generated": "generated"}


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("name", list(SELECTORS))
def test_generation_touches_the_columns_the_selector_defines(name, use_cache):
    lm = tiny_lm("llama")
    lengths = [5, 3, 4]
    T, new = max(lengths), 4
    ids = torch.full((3, T), PAD)
    mask = torch.zeros(3, T, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    for b, n in enumerate(lengths):  # left padding, as generate needs
        ids[b, T - n:] = torch.randint(1, lm.dims.vocab, (n,), generator=g)
        mask[b, T - n:] = 1
    rec = Record("blocks.1.resid_pre", positions=SELECTORS[name])
    with lm.intervene(rec):
        out = lm.hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, use_cache=use_cache, pad_token_id=PAD)
    total = out.shape[1]
    assert total == T + new
    # without the cache every pass recomputes all columns: count each column once
    got = {b: sorted({c for r, c in rec.log if r == b}) for b in range(3)}
    for b, n in enumerate(lengths):
        # the last generated token is never fed back in, so the forward passes cover total - 1 columns
        want = {c for c in expected(name, T - n, n, total) if c < total - 1}
        assert got[b] == sorted(want), f"row {b} (pad {T - n}, length {n}), {name}, use_cache={use_cache}"
    if use_cache:  # and each column exactly once: a cached pass never revisits a column
        assert len(rec.log) == len(set(rec.log))


def test_pass_offset_reads_any_cache_name_and_refuses_inconsistent_inputs():
    from transformers import DynamicCache

    from avec.core.hooks import pass_offset

    lm = tiny_lm("llama")
    cache = DynamicCache(config=lm.hf.config)
    ids = torch.randint(1, lm.dims.vocab, (2, 6))
    lm.hf(input_ids=ids, past_key_values=cache, use_cache=True)
    assert cache.get_seq_length() == 6
    one = torch.ones(2, 1, dtype=torch.long)
    for name in ("past_key_values", "cache", "some_future_name"):
        assert pass_offset({name: cache}, 1) == 6
        assert pass_offset({name: cache, "attention_mask": torch.ones(2, 7)}, 1) == 6
    assert pass_offset({"cache_position": torch.tensor([9])}, 1) == 9
    assert pass_offset({"position_ids": torch.tensor([[4], [4]])}, 1) == 4
    assert pass_offset({"input_ids": one}, 1) == 0  # nothing cached, nothing before
    with pytest.raises(ValueError, match="attention mask over the cached tokens"):
        pass_offset({"cache": cache, "attention_mask": torch.ones(2, 1)}, 1)
    with pytest.raises(RuntimeError, match="cannot read how many tokens"):
        pass_offset({"past_key_values": object()}, 1)


def test_columns_and_column_of_follow_the_selector_rule():
    # right padding: prompts of 3 and 5 tokens in 5 columns
    assert columns(From(-2), [3, 5]).tolist() == [[0, 1, 1, 0, 0], [0, 0, 0, 1, 1]]
    assert columns(Front(2), [3, 5], padding="left").tolist() == [[0, 0, 1, 1, 0], [1, 1, 0, 0, 0]]
    assert column_of(-1, [3, 5]).tolist() == [2, 4]
    assert column_of(0, [3, 5], padding="left").tolist() == [2, 0]
    with pytest.raises(ValueError, match=r"position 4 is outside prompt\(s\) \[0\]"):
        column_of(4, [3, 5])
    with pytest.raises(ValueError, match="outside"):
        column_of(-4, [3, 5])
