"""Attacks on retrieval descriptors, called on (N, 3, H, W) float images in [0, 1]."""
from .base import SAVING_MODES, AttackStats, ImageAttack, PerturbationAttack
from .keypoints import KeypointAttack, KeypointStats
from .noise import GaussianNoise, NoiseStats
from .perceptual import CVPIRE, SDPIRE, MaskedPIRE
from .pire import PIRE, SSIMPIRE
from .robust import RandomEdits

__all__ = ["PIRE", "SSIMPIRE", "CVPIRE", "SDPIRE", "MaskedPIRE", "RandomEdits", "PerturbationAttack", "AttackStats", "SAVING_MODES",
           "ImageAttack", "KeypointAttack", "KeypointStats", "GaussianNoise", "NoiseStats"]
