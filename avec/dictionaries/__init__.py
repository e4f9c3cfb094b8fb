"""Dictionaries: sparse autoencoders (and, later, transcoders), the data and activations they are
trained on, training, evaluation and reading features.

They plug into the core as hook points of their own: ``lm.add_dictionary(sae, at=...)`` (see
``avec.core.dictionary``).

    corpus     default_corpus(), texts(source): the documents SAEs are trained on
    sae        SAE, SAEConfig: ReLU, JumpReLU, TopK and BatchTopK dictionaries, saved as safetensors
    train      train(...): Adam, schedules, resumable checkpoints, several SAEs from one stream
    evaluate   evaluate(...): MSE, FVU, L0, dead / dense, CE loss recovered, KL
"""

from .corpus import Corpus, CorpusNotInstalled, default_corpus, texts
from .evaluate import ReconstructionStats, SAEEvaluation, evaluate
from .sae import SAE, SAEConfig, geometric_median
from .train import TrainConfig, TrainResult, lr_at, train

__all__ = [
    "Corpus", "CorpusNotInstalled", "default_corpus", "texts", "ReconstructionStats", "SAEEvaluation", "evaluate",
    "SAE", "SAEConfig", "geometric_median", "TrainConfig", "TrainResult", "lr_at", "train",
]
