"""The shipped SmolLM2 SAE: it loads, and spliced into SmolLM2 on text that is not in the training corpus it
recovers most of the next-token loss (floor: the value measured when it was shipped, minus a margin)."""

import pytest
import torch

from avec.dictionaries.evaluate import evaluate
from avec.dictionaries.shipped import available, info, load_shipped

NAME = "smollm2-blocks.12.resid_post-topk-4608"
# not from the corpus (State of the Union addresses, the King James Bible)
TEXT = ("The recipe calls for two cups of flour, a pinch of salt and three eggs. Whisk the eggs until they are "
        "pale, fold in the flour, and bake the batter for twenty minutes at a moderate heat. Meanwhile, the "
        "children played football in the garden and the dog chased a red ball across the wet grass.")
# measured when shipped (torch 2.13, CPU, fp32): CE loss recovered 0.922, FVU 0.409 on TEXT; margins for other versions
CE_FLOOR = 0.85
FVU_CEILING = 0.5


pytestmark = pytest.mark.skipif(NAME not in available(), reason="the SAE is not shipped")


def test_loads_with_its_record():
    sae = load_shipped(NAME)
    assert sae.cfg.hook == "blocks.12.resid_post" and sae.cfg.arch == "topk" and sae.cfg.k == 32
    assert (sae.d_in, sae.d_sae) == (576, 4608) and sae.W_enc.dtype == torch.float32
    rec = info(NAME)
    assert rec["command"].startswith("avec sae train") and rec["metrics_held_out"]["ce_loss_recovered"] > 0
    with pytest.raises(ValueError, match="no shipped SAE"):
        load_shipped("nope")


def test_splice_recovers_the_loss_on_new_text(smollm2):
    lm = smollm2
    sae = load_shipped(NAME)
    bos = lm.tokenizer.bos_token_id
    ids = torch.tensor([[bos] + lm.tokenizer(TEXT, add_special_tokens=False)["input_ids"]])
    res = evaluate(sae, lm=lm, tokens=ids, keep_tokens=[bos])
    assert res.l0 <= 32 + 1e-6
    assert res.ce_loss_recovered > CE_FLOOR, res.to_dict()
    assert res.fvu < FVU_CEILING, res.to_dict()


class _Section:
    """What a tour section writes into, kept as plain text (the report's Section, without the page)."""

    def __init__(self):
        self.texts = []

    def text(self, t):
        self.texts.append(t)

    code = table = raw = text

    def figure(self, fig):
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_tour_sections_run_on_the_shipped_sae(smollm2):
    from avec.app.tour import dictionaries as tour_sections
    from avec.app.tour.context import TourContext
    from avec.app.tour import SECTIONS

    assert all(entry in SECTIONS for entry in tour_sections.SECTIONS)
    ctx = TourContext(quick=True, _models={"smollm2": smollm2})
    s = _Section()
    tour_sections.sae_section(ctx, s)
    said = " ".join(map(str, s.texts))
    assert "unchanged: max |difference| = 0.0e+00" in said  # the error term makes the splice exact


def test_tour_sections_refuse_another_model():
    from _tiny import tiny_lm

    from avec.app.tour import dictionaries as tour_sections
    from avec.app.tour.context import TourContext

    with pytest.raises(RuntimeError, match="--model smollm2"):
        tour_sections.sae_section(TourContext(model_name="tiny", _models={"tiny": tiny_lm("llama")}), _Section())


def test_the_tour_refuses_a_shipped_dictionary_made_for_another_model():
    from _tiny import tiny_lm

    from avec.app.tour.context import TourContext, shipped_on_tour_model

    ctx = TourContext(model_name="tiny", _models={"tiny": tiny_lm("llama")})
    with pytest.raises(RuntimeError, match=f"{NAME!r} reads smollm2 .*run the tour with --model smollm2"):
        shipped_on_tour_model(ctx, NAME)
