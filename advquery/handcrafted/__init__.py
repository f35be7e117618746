"""Hand-crafted (non-learned) image descriptors, numpy/scipy implementations from their papers.

Global descriptors: CEDD (:func:`cedd`, compared with :func:`tanimoto`) and GIST (:func:`gist`,
compared with :func:`l2_distances`). Local features: SIFT bag of words with Hamming Embedding
(:class:`SiftHE` with a :class:`Vocabulary`, module :mod:`.sift_he`).
"""
from .cedd import TEXTURE_CLASSES, cedd, tanimoto
from .gist import gist, l2_distances
from .sift_he import Bag, SiftHE, Vocabulary, VocabularyError, sift

__all__ = ["TEXTURE_CLASSES", "Bag", "SiftHE", "Vocabulary", "VocabularyError", "cedd", "gist", "l2_distances", "sift",
           "tanimoto"]
