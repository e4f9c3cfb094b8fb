"""Patching and ablation: batched activation patching, attribution patching, zero / mean / directional
ablation and weight orthogonalization."""

from .ablation import (directional_ablation, mean_ablation, mean_activation, orthogonalize, orthogonalized,
                       zero_ablation)
from .activation import activation_patching
from .attribution import attribution_patching
from .metrics import answer_logprob, logit_diff
from .result import PatchingResult

__all__ = ["PatchingResult", "activation_patching", "answer_logprob", "attribution_patching", "directional_ablation",
           "logit_diff", "mean_ablation", "mean_activation", "orthogonalize", "orthogonalized", "zero_ablation"]
