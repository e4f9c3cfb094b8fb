"""Looking inside: residual norms (more lenses arrive with the lens issue)."""

from .norms import ResidualNorms, residual_norms

__all__ = ["ResidualNorms", "residual_norms"]
