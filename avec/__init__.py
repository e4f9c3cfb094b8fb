"""avec: algebraic value editing and mechanistic interpretability.

    import avec
    lm = avec.load("smollm2")
    run = lm.run("The Eiffel Tower is in", cache=["blocks.*.resid_post"])
"""

from .core import (
    ALL, GENERATED, PROMPT, AddVector, Apply, At, Cache, From, Front, Intervention, MeanAblate, Model, Patch,
    Mask, ProjectOut, Run, Scale, SetValue, Span, StopGradient, UnknownHookPoint, Zero,
)
from .core.notices import NonFiniteWarning, UnusedInterventionWarning
from . import lens, patching, probes, steering
from .models import LanguageModel, load
from .steering import SteeringVector, coefficient_scan, contrast, mean_difference

__version__ = "0.1.0"

__all__ = [
    "ALL", "GENERATED", "PROMPT", "AddVector", "Apply", "At", "Cache", "From", "Front", "Intervention",
    "LanguageModel", "MeanAblate", "Model", "Patch", "ProjectOut", "Run", "Scale", "SetValue", "Span",
    "UnknownHookPoint", "Zero", "load", "lens", "patching", "probes", "steering", "SteeringVector",
    "coefficient_scan", "contrast", "mean_difference", "Mask", "NonFiniteWarning", "UnusedInterventionWarning",
    "StopGradient",
    "maze", "data",
]


def __getattr__(name: str):
    """``avec.maze`` and ``avec.data`` load on first use (the maze world is not needed for language models)."""
    if name in ("maze", "data"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'avec' has no attribute {name!r}")
