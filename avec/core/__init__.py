"""The core: hook points, runs with caches, interventions, and the one hooking mechanism."""

from .hookpoints import HookPointTable, Site, UnknownHookPoint
from .hooks import attach
from .interventions import (
    AddVector,
    Apply,
    Intervention,
    MeanAblate,
    Patch,
    ProjectOut,
    Scale,
    SetValue,
    StopGradient,
    Zero,
)
from .dictionary import AttachedDictionary
from .model import Cache, Model, Run
from .positions import ALL, GENERATED, PROMPT, At, From, Front, Mask, Positions, Span, TokenContext, as_positions

__all__ = [
    "ALL", "GENERATED", "PROMPT", "AddVector", "Apply", "At", "Cache", "From", "Front", "HookPointTable",
    "Intervention", "Mask", "MeanAblate", "Model", "Patch", "Positions", "ProjectOut", "Run", "Scale",
    "SetValue", "Site", "Span", "StopGradient", "TokenContext", "UnknownHookPoint", "Zero", "as_positions", "attach",
    "AttachedDictionary",
]
