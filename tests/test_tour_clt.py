"""The tour's small cross-layer transcoder (none ships): trained on SmolLM2's MLP inputs and outputs, it is a real
CLT (each layer's features write to that layer and every later one), records its BOS, reconstructs held-out MLP
outputs better the longer it trains, and spliced in with its error terms leaves the model's output unchanged."""

import torch

from avec.app.tour.circuits import train_small_clt
from avec.dictionaries.heldout import evaluate_transcoder_heldout


def test_the_tours_small_clt_trains_and_splices_exactly(smollm2):
    lm = smollm2
    torch.manual_seed(1)
    clt, steps, seconds = train_small_clt(lm, width=16, k=4, tokens=4 * 512, batch_tokens=512, progress=False)
    assert steps == 4 and seconds > 0
    assert clt.cfg.is_cross_layer and clt.n_layers == lm.n_layers and clt.cfg.bos == lm.tokenizer.bos_token_id
    assert [clt.n_targets(i) for i in (0, lm.n_layers - 1)] == [lm.n_layers, 1]
    trained, _ = evaluate_transcoder_heldout(lm, clt, eval_tokens=1024, eval_contexts=1, prepend_bos=True)
    one_step = train_small_clt(lm, width=16, k=4, tokens=512, batch_tokens=512, progress=False)[0]
    before, _ = evaluate_transcoder_heldout(lm, one_step, eval_tokens=1024, eval_contexts=1, prepend_bos=True)
    mean = lambda r: sum(r.to_dict()["fvu"]) / lm.n_layers  # noqa: E731
    assert mean(trained) < mean(before), (mean(trained), mean(before))
    ids = lm.tokenize("The river flows past the old mill")[0]
    with lm.dictionary(clt, splice="error"):
        spliced = lm.run(ids).logits
    torch.testing.assert_close(spliced, lm.run(ids).logits, atol=1e-4, rtol=1e-4)
