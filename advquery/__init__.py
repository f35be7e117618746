"""advquery: adversarial queries against content-based image retrieval.

Protect photos from retrieval-based location tracking, and measure how retrieval systems
hold up against image modifications.
"""
import os

__version__ = "0.2.0"

# Before torch allocates a tensor: PyTorch reads this once, at its first allocation (advquery.models.memory says why).
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from .attacks import PIRE, SSIMPIRE  # noqa: E402
from .models import load_model  # noqa: E402

__all__ = ["load_model", "PIRE", "SSIMPIRE", "__version__"]
