"""Reading concepts from activations: linear probes per layer (binary, multi-class, continuous) with a
mean-difference baseline, and CCS (unsupervised, on contrast pairs) with its confound experiment."""

from .activations import Activations, collect
from .ccs import CCSResult, ccs, ccs_loss, confound_experiment, confound_pairs, contrast_pairs, fit_ccs
from .linear import ProbeResult, fit_probes, probe, split

__all__ = [
    "Activations", "CCSResult", "ProbeResult", "ccs", "ccs_loss", "collect", "confound_experiment", "confound_pairs",
    "contrast_pairs", "fit_ccs", "fit_probes", "probe", "split",
]
