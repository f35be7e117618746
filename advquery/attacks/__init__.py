"""Attacks on retrieval descriptors, called on (N, 3, H, W) float images in [0, 1]."""
from .base import SAVING_MODES, AttackStats, PerturbationAttack
from .perceptual import CVPIRE, SDPIRE
from .pire import PIRE

__all__ = ["PIRE", "CVPIRE", "SDPIRE", "PerturbationAttack", "AttackStats", "SAVING_MODES"]
