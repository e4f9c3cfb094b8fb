"""Clean/corrupted prompt pairs: tokenised once, checked to align, with baseline metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..core.model import Cache, Run
from ..models.lm import LanguageModel
from .metrics import Metric, evaluate, logit_diff


def tokenize(lm: LanguageModel, inputs: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [batch, pos], mask [batch, pos])`` via ``lm.encode``, errors prefixed with which input."""
    try:
        ids, mask, _ = lm.encode(inputs)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{what}: {err}") from None
    return ids, mask


@dataclass
class Pair:  # clean_metric / corrupted_metric are set by ``measure``
    """Aligned clean and corrupted inputs and the metric on each."""

    clean_ids: torch.Tensor
    clean_mask: torch.Tensor
    corrupt_ids: torch.Tensor
    corrupt_mask: torch.Tensor
    metric: Metric
    clean_metric: float
    corrupted_metric: float
    labels: tuple[str, ...]

    @property
    def batch(self) -> int:
        return int(self.clean_ids.shape[0])

    @property
    def seq(self) -> int:
        return int(self.clean_ids.shape[1])

    def forward_kwargs(self) -> dict:
        """``logits_to_keep`` when the metric reads only each prompt's last token: on a small model the
        unembedding of every position is a large share of the forward pass (right padding: the last
        columns cover every prompt's last token)."""
        if not getattr(self.metric, "last_position_only", False):
            return {}
        return {"logits_to_keep": self.seq - int(self.clean_mask.sum(1).min()) + 1}

    def normalise(self, value: torch.Tensor) -> torch.Tensor:
        """0 = the corrupted run's metric, 1 = the clean run's."""
        return (value - self.corrupted_metric) / (self.clean_metric - self.corrupted_metric)


def choose_metric(lm: LanguageModel, metric: Metric | None, answer: Any, wrong: Any) -> Metric:
    if metric is not None:
        if answer is not None or wrong is not None:
            raise ValueError("give either metric= or answer=/wrong= (a logit difference), not both")
        return metric
    if answer is None or wrong is None:
        raise ValueError("give a metric (a function of a Run returning a scalar tensor) or both answer= and wrong= "
                         "tokens for the default logit-difference metric")
    return logit_diff(lm, answer, wrong)


def logits_view(lm: LanguageModel, logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> Run:
    """A Run holding only logits (what a metric reads) for a slice of a batched forward pass."""
    return Run(output=logits, cache=Cache({}, lm.model_id, lm.table), tokens=ids, attention_mask=mask, model_id=lm.model_id)


def prepare(lm: LanguageModel, clean: Any, corrupted: Any, metric: Metric | None, answer: Any = None,
            wrong: Any = None) -> Pair:
    """Tokenise and check a clean/corrupted pair; ``measure`` then runs both and sets the baselines."""
    metric = choose_metric(lm, metric, answer, wrong)
    c_ids, c_mask = tokenize(lm, clean, "clean")
    x_ids, x_mask = tokenize(lm, corrupted, "corrupted")
    if c_ids.shape[0] != x_ids.shape[0]:
        raise ValueError(f"{c_ids.shape[0]} clean prompts but {x_ids.shape[0]} corrupted ones; give them in pairs")
    c_len, x_len = c_mask.sum(1).tolist(), x_mask.sum(1).tolist()
    if c_ids.shape != x_ids.shape or c_len != x_len:
        raise ValueError(
            f"clean and corrupted prompts must have the same token length to be patched position by position; "
            f"clean lengths {c_len}, corrupted lengths {x_len}. Rephrase so that they align (e.g. swap one "
            "single-token name for another), or tokenise and align them yourself and pass token ids"
        )
    if lm.tokenizer is not None:
        labels = tuple(f"{i}:{lm.tokenizer.decode([int(t)])}" for i, t in enumerate(c_ids[0]))
    else:
        labels = tuple(str(i) for i in range(c_ids.shape[1]))
    return Pair(c_ids, c_mask, x_ids, x_mask, metric, float("nan"), float("nan"), labels)


def measure(lm: LanguageModel, pair: Pair, cache: list[str] = (), grad_on: str | None = None) -> tuple[Run, Run]:
    """Run the clean and the corrupted prompts once each, caching ``cache`` (these runs double as the
    sweeps' sources), and set the pair's baseline metrics. ``grad_on`` ("clean" / "corrupted") also
    takes d metric / d cached activations on that run (attribution patching)."""
    runs = {}
    keep = pair.forward_kwargs()
    for name, ids, mask in (("clean", pair.clean_ids, pair.clean_mask), ("corrupted", pair.corrupt_ids, pair.corrupt_mask)):
        inputs = {"input_ids": ids, "attention_mask": mask}
        if grad_on == name:
            run = lm.run(inputs, cache=list(cache), grad=True, metric=pair.metric, **keep)
            value = run.metric
        else:
            with torch.no_grad():
                run = lm.run(inputs, cache=list(cache) or None, **keep)
                value = float(evaluate(pair.metric, run))
        runs[name] = (run, value)
    (clean_run, m_clean), (corrupt_run, m_corr) = runs["clean"], runs["corrupted"]
    if abs(m_clean - m_corr) < 1e-6 * max(1.0, abs(m_clean)):
        raise ValueError(
            f"the metric is the same on the clean and corrupted prompts ({m_clean:.4g}), so the normalised "
            "score (0 = corrupted, 1 = clean) is undefined; pick prompts or answers that the model tells apart"
        )
    pair.clean_metric, pair.corrupted_metric = m_clean, m_corr
    return clean_run, corrupt_run
