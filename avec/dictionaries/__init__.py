"""Dictionaries: sparse autoencoders, transcoders and cross-layer transcoders, the data and activations
they are trained on, training, evaluation and reading features.

They plug into the core as hook points of their own: ``lm.add_dictionary(sae, at=...)``,
``lm.add_dictionary(transcoder)`` (latents at the point read, recon / error at the point written; see
``avec.core.dictionary``).

    corpus     default_corpus(), texts(source): the documents SAEs are trained on
    sae        SAE, SAEConfig: ReLU, JumpReLU, TopK and BatchTopK dictionaries, saved as safetensors
    transcoder Transcoder, TranscoderConfig: MLP input -> MLP output (optional skip connection), same
               activations; the shared math, loss and files of
    clt        CrossLayerTranscoder: one encoder per layer, features decoding to their own and every later
               layer (cross_layer=False: a set of per-layer transcoders)
    circuit_tracer_io  load_circuit_tracer / save_circuit_tracer: circuit-tracer's transcoder folders
    train      train(...): Adam, schedules, resumable checkpoints, several SAEs from one stream
    evaluate   evaluate(...): MSE, FVU, L0, dead / dense, CE loss recovered, KL;
               evaluate_transcoder(...): the same per layer, CE / KL / top-1 agreement with every target spliced
    features   ablate / clamp / steer a feature, logit_effects, filter_features, top_examples
    latents    collect_latents: a dictionary's positive latents over texts, kept sparse (any feature's
               top examples without another pass); prompt_features: the strongest latents per position
    dashboard  one HTML page per feature and an index
    saelens_io load_saelens / save_saelens: SAELens folders (cfg.json + sae_weights.safetensors)
    cli        `avec sae train | eval | dashboard` (held-out documents split by a hash of their text)
    shipped    load_shipped(name): SAEs shipped with avec (fp16 safetensors + a JSON record of how they were made)
    store      ActivationStore: contexts -> activations at hook points (one pass, stopped early), special
               tokens dropped, a token-level mixing buffer, an optional sharded on-disk cache
"""

from .corpus import Corpus, CorpusNotInstalled, default_corpus, texts
from .dashboard import dashboard, write_dashboard
from .evaluate import ReconstructionStats, SAEEvaluation, TranscoderEvaluation, evaluate, evaluate_transcoder
from .features import (
    FeatureEdit, ablate, clamp, decoder_direction, feature_activations, filter_features, logit_effects, steer,
    top_examples,
)
from .latents import LatentIndex, PromptFeatures, collect_latents, prompt_features
from .saelens_io import SAELensFormatError, load_saelens, save_saelens
from .store import ActivationStore
from .sae import SAE, SAEConfig, geometric_median
from .transcoder import Transcoder, TranscoderConfig, load_transcoder
from .clt import CrossLayerTranscoder, layer_points
from .train import TrainConfig, TrainResult, lr_at, train

__all__ = [
    "Corpus", "CorpusNotInstalled", "default_corpus", "texts", "ReconstructionStats", "SAEEvaluation", "evaluate",
    "SAE", "SAEConfig", "geometric_median", "TrainConfig", "TrainResult", "lr_at", "train",
    "dashboard", "write_dashboard", "FeatureEdit", "ablate", "clamp", "decoder_direction", "feature_activations",
    "filter_features", "logit_effects", "steer", "top_examples", "SAELensFormatError", "load_saelens", "save_saelens",
    "ActivationStore", "Transcoder", "TranscoderConfig", "load_transcoder", "CrossLayerTranscoder", "layer_points",
    "TranscoderEvaluation", "evaluate_transcoder", "LatentIndex", "PromptFeatures", "collect_latents", "prompt_features",
]
