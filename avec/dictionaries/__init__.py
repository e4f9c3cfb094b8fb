"""Dictionaries: sparse autoencoders (and, later, transcoders), the data and activations they are
trained on, training, evaluation and reading features.

They plug into the core as hook points of their own: ``lm.add_dictionary(sae, at=...)`` (see
``avec.core.dictionary``).

    corpus     default_corpus(), texts(source): the documents SAEs are trained on
    sae        SAE, SAEConfig: ReLU, JumpReLU, TopK and BatchTopK dictionaries, saved as safetensors
    train      train(...): Adam, schedules, resumable checkpoints, several SAEs from one stream
    evaluate   evaluate(...): MSE, FVU, L0, dead / dense, CE loss recovered, KL
    features   ablate / clamp / steer a feature, logit_effects, filter_features, top_examples
    dashboard  one HTML page per feature and an index
    saelens_io load_saelens / save_saelens: SAELens folders (cfg.json + sae_weights.safetensors)
    cli        `avec sae train | eval | dashboard` (held-out documents split by a hash of their text)
    shipped    load_shipped(name): SAEs shipped with avec (fp16 safetensors + a JSON record of how they were made)
    store      ActivationStore: contexts -> activations at hook points (one pass, stopped early), special
               tokens dropped, a token-level mixing buffer, an optional sharded on-disk cache
"""

from .corpus import Corpus, CorpusNotInstalled, default_corpus, texts
from .dashboard import dashboard, write_dashboard
from .evaluate import ReconstructionStats, SAEEvaluation, evaluate
from .features import (
    FeatureEdit, ablate, clamp, decoder_direction, feature_activations, filter_features, logit_effects, steer,
    top_examples,
)
from .saelens_io import SAELensFormatError, load_saelens, save_saelens
from .store import ActivationStore
from .sae import SAE, SAEConfig, geometric_median
from .train import TrainConfig, TrainResult, lr_at, train

__all__ = [
    "Corpus", "CorpusNotInstalled", "default_corpus", "texts", "ReconstructionStats", "SAEEvaluation", "evaluate",
    "SAE", "SAEConfig", "geometric_median", "TrainConfig", "TrainResult", "lr_at", "train",
    "dashboard", "write_dashboard", "FeatureEdit", "ablate", "clamp", "decoder_direction", "feature_activations",
    "filter_features", "logit_effects", "steer", "top_examples", "SAELensFormatError", "load_saelens", "save_saelens",
    "ActivationStore",
]
