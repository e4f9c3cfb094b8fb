"""avec: algebraic value editing and mechanistic interpretability.

    import avec
    lm = avec.load("smollm2")
    run = lm.run("The Eiffel Tower is in", cache=["blocks.*.resid_post"])
"""

from .core import (
    ALL, GENERATED, PROMPT, AddVector, Apply, At, Cache, From, Front, Intervention, MeanAblate, Model, Patch,
    ProjectOut, Run, Scale, SetValue, Span, UnknownHookPoint, Zero,
)
from . import lens, patching, probes, steering
from .models import LanguageModel, load
from .steering import SteeringVector, coefficient_scan, contrast, mean_difference

__version__ = "0.1.0"

__all__ = [
    "ALL", "GENERATED", "PROMPT", "AddVector", "Apply", "At", "Cache", "From", "Front", "Intervention",
    "LanguageModel", "MeanAblate", "Model", "Patch", "ProjectOut", "Run", "Scale", "SetValue", "Span",
    "UnknownHookPoint", "Zero", "load", "lens", "patching", "probes", "steering", "SteeringVector",
    "coefficient_scan", "contrast", "mean_difference",
]
