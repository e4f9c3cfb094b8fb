"""Metrics for patching: functions of a Run (``run.logits [batch, pos, vocab]``) returning a scalar tensor.

The same metric serves activation patching (evaluated on each patched configuration's rows) and
attribution patching (differentiated through ``Model.run(grad=True)``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..core.model import Run
from ..models.lm import LanguageModel

Metric = Callable[[Run], torch.Tensor]


def _ids(lm: LanguageModel, tokens: Any) -> torch.Tensor:
    if isinstance(tokens, (str, int)):
        return torch.tensor([lm.token_id(tokens)])
    ids = [lm.token_id(t) for t in tokens]
    if not ids:
        raise ValueError("no tokens given")
    return torch.tensor(ids)


def logit_diff(lm: LanguageModel, answer: Any, wrong: Any) -> Metric:
    """``mean over prompts of logit(answer) - logit(wrong)`` at each prompt's last token.

    answer / wrong: a single-token string or id, or one per prompt.
    """
    a, w = _ids(lm, answer), _ids(lm, wrong)

    def metric(run: Run) -> torch.Tensor:
        last = run.last_logits()  # [batch, vocab]
        n = last.shape[0]
        for ids, what in ((a, "answer"), (w, "wrong")):
            if ids.shape[0] not in (1, n):
                raise ValueError(f"{ids.shape[0]} {what} tokens for {n} prompts; give one, or one per prompt")
        rows = torch.arange(n, device=last.device)
        return (last[rows, a.to(last.device).expand(n)] - last[rows, w.to(last.device).expand(n)]).mean()

    metric.__name__ = "logit_diff"
    metric.last_position_only = True  # lets sweeps skip the unembedding of earlier positions
    return metric


def answer_logprob(lm: LanguageModel, answer: Any) -> Metric:
    """Mean log-probability of ``answer`` at each prompt's last token."""
    a = _ids(lm, answer)

    def metric(run: Run) -> torch.Tensor:
        logp = run.last_logits().log_softmax(-1)
        n = logp.shape[0]
        return logp[torch.arange(n, device=logp.device), a.to(logp.device).expand(n)].mean()

    metric.__name__ = "answer_logprob"
    metric.last_position_only = True
    return metric


def evaluate(metric: Metric, run: Run) -> torch.Tensor:
    """``metric(run)`` checked to be a scalar tensor (the error says what came back)."""
    value = metric(run)
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(
            f"the metric must return a scalar tensor (one number for the whole batch, e.g. a mean over prompts), "
            f"got {shape}"
        )
    return value.reshape(())
