"""Sentence scoring for the data pipelines: splitting responses into sentences and CLIP image-text
similarity. (ASPO's sentence weights, computed in the training step, are in :mod:`mmpo.methods.aspo`.)"""
