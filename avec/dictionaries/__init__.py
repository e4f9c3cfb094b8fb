"""Dictionaries: sparse autoencoders (and, later, transcoders), the data and activations they are
trained on, training, evaluation and reading features.

They plug into the core as hook points of their own: ``lm.add_dictionary(sae, at=...)`` (see
``avec.core.dictionary``).
"""
