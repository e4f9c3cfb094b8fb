"""Bad input at the core gets a clear error (or a warning that says what happened), never a silent no-op."""

import warnings

import pytest
import torch

from _tiny import tiny_lm, tokens
from avec import AddVector, Apply, At, From, Front, Patch, Scale, SetValue, Span, Zero
from avec.core import Mask
from avec.core.notices import NonFiniteWarning, UnusedInterventionWarning

H = "blocks.1.resid_pre"


@pytest.fixture(scope="module")
def lm():
    return tiny_lm("llama")


@pytest.mark.parametrize("coeff", [float("inf"), float("-inf"), float("nan"), torch.tensor([1.0, float("inf")])])
def test_non_finite_coefficients_are_refused(lm, coeff):
    with pytest.raises(ValueError, match="NaN|inf"):
        AddVector(H, torch.ones(lm.d_model), coeff=coeff)


@pytest.mark.parametrize("factor", [float("nan"), float("inf")])
def test_non_finite_scale_is_refused(factor):
    with pytest.raises(ValueError, match="scale factor"):
        Scale(H, factor)


def test_non_finite_or_bool_values_are_refused(lm):
    bad = torch.zeros(lm.d_model)
    bad[3] = float("nan")
    with pytest.raises(ValueError, match="the value set at .* 1 NaN or inf"):
        SetValue(H, value=bad)
    with pytest.raises(ValueError, match="NaN or inf"):
        AddVector(H, bad)
    with pytest.raises(TypeError, match="bool tensor"):
        AddVector(H, torch.ones(lm.d_model, dtype=torch.bool))


def test_patch_from_a_nan_cache_is_refused(lm):
    x = tokens(lm, batch=1, seq=5)
    src = lm.run(x, cache=[H])
    src.cache[H][0, 2, 0] = float("nan")
    with pytest.raises(ValueError, match="patch source at 'blocks.1.resid_pre' holds 1 NaN"):
        lm.run(x, interventions=[Patch(H, source=src)])


def test_non_finite_logits_warn_and_name_the_intervention(lm):
    x = tokens(lm, batch=2, seq=5)
    with pytest.warns(NonFiniteWarning, match=r"row\(s\) \[0, 1\].*Apply at blocks.1.resid_pre"):
        lm.run(x, interventions=[Apply(H, fn=lambda v, ctx: v * float("nan"))])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lm.run(x)  # a healthy run says nothing


@pytest.mark.parametrize("positions", [At((50,)), From(100), "generated"])
def test_positions_that_select_nothing_raise_in_a_run(lm, positions):
    x = tokens(lm, batch=1, seq=9)
    with pytest.raises(ValueError, match=r"selects no token of any prompt \(prompt lengths \[9\]\)"):
        lm.run(x, interventions=[AddVector(H, torch.ones(lm.d_model), positions=positions)])


def test_an_explicit_mask_may_leave_rows_empty_but_not_all(lm):
    x = tokens(lm, batch=2, seq=4)
    some = torch.zeros(2, 4, dtype=torch.bool)
    some[0, 1] = True
    lm.run(x, interventions=[Zero(H, positions=Mask(some))])
    with pytest.raises(ValueError, match="selects no token"):
        lm.run(x, interventions=[Zero(H, positions=Mask(torch.zeros(2, 4, dtype=torch.bool)))])


def test_unused_intervention_in_an_intervene_block_warns(lm):
    x = tokens(lm, batch=1, seq=6)
    with pytest.warns(UnusedInterventionWarning, match=r"AddVector at blocks.1.resid_pre \(positions positions \[50\]\)"):
        with lm.intervene(AddVector(H, torch.ones(lm.d_model), positions=50)):
            lm.hf(input_ids=x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with lm.intervene(AddVector(H, torch.ones(lm.d_model), positions=2)):
            lm.hf(input_ids=x)


def test_patch_source_of_another_length_is_not_cut(lm):
    long = lm.run(tokens(lm, batch=1, seq=8), cache=[H])
    with pytest.raises(ValueError, match="covers 8 positions but this run has 5.*not cut"):
        lm.run(tokens(lm, batch=1, seq=5), interventions=[Patch(H, source=long)])


@pytest.mark.parametrize("heads", [[1.7], 1.0, [True], ["0"]])
def test_heads_must_be_integers(heads):
    with pytest.raises(TypeError, match="heads are integer indices"):
        Zero("blocks.0.attn.z", heads=heads)


def test_prompt_longer_than_the_context_is_refused(lm):
    limit = lm.context_length
    assert limit == 128
    lm.run(tokens(lm, batch=1, seq=limit))
    with pytest.raises(ValueError, match="129 tokens long but .* has a context of 128 tokens"):
        lm.run(tokens(lm, batch=1, seq=limit + 1))


def test_generate_checks_selection_and_leaves_padding_side_alone(smollm2):
    lm = smollm2
    side = lm.tokenizer.padding_side
    v = torch.ones(lm.d_model)
    with pytest.raises(ValueError, match=r"selects no token of any prompt \(prompt lengths \[\d+\], \+ 3 generated\)"):
        lm.generate("Hello there", max_new_tokens=3, steer=AddVector("blocks.2.resid_pre", v, positions=From(40)))
    lm.generate(["Hi", "A longer prompt here"], max_new_tokens=2)
    assert lm.tokenizer.padding_side == side
    with pytest.raises(ValueError, match="max_new_tokens must be a whole number"):
        lm.generate("Hi", max_new_tokens=0)


@pytest.mark.parametrize("make", [lambda: At((1.7,)), lambda: From(1.5), lambda: Front(2.0), lambda: Span(0, 2.5),
                                  lambda: AddVector(H, torch.ones(4), positions=[0, 1.7])])
def test_positions_must_be_integers(make):
    with pytest.raises(TypeError, match="integer index"):
        make()
