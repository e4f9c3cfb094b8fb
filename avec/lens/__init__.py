"""Looking inside: logit lens, tuned lens, direct logit attribution, residual decomposition, norms."""

from .decomposition import ResidualDecomposition, decompose
from .dla import DLA, dla
from .logit_lens import LogitLens, logit_lens
from .norms import ResidualNorms, WeightNorms, growth_rate, residual_norms, weight_norms

__all__ = ["DLA", "LogitLens", "ResidualDecomposition", "ResidualNorms", "WeightNorms", "decompose", "dla",
           "growth_rate", "logit_lens", "residual_norms", "weight_norms"]
