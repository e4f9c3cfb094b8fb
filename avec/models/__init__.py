"""Models: loading (bundled names, HF ids/dirs, GGUF files) and architecture adapters."""

from .architectures import Architecture, architecture_for, register_architecture, supported_model_types
from .lm import LanguageModel
from .load import BUNDLED, bundled_models, cache_root, load

__all__ = ["Architecture", "BUNDLED", "LanguageModel", "architecture_for", "bundled_models", "cache_root", "load",
           "register_architecture", "supported_model_types"]
