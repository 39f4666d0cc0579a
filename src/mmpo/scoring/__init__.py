"""Sentence scoring: splitting, CLIP similarity, perplexity and ASPO's sentence weights."""

from mmpo.scoring.weights import aspo_sentence_weights

__all__ = ["aspo_sentence_weights"]
