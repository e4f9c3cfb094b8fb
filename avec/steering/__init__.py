"""Steering language models: X-vectors (ActAdd contrast, CAA mean difference, PCA, logistic),
vector algebra, steered generation, the injection coefficient scan, and evaluation."""

from .caa import ABItem, ab_pairs, ab_prompt, behaviours, load_ab, match_norms, mean_difference
from .contrast import contrast
from .directions import logistic_direction, pca_direction
from .generation import Completions, generate_cells, side_by_side
from .scan import ScanResult, coefficient_scan
from .vector import ModelMismatch, SteerAdd, SteeringVector, Term

__all__ = [
    "ABItem", "Completions", "ModelMismatch", "ScanResult", "SteerAdd", "SteeringVector", "Term", "ab_pairs",
    "ab_prompt", "behaviours", "coefficient_scan", "contrast", "generate_cells", "load_ab", "logistic_direction", "match_norms",
    "mean_difference", "pca_direction", "side_by_side",
]
