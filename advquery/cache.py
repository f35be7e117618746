"""Where advquery keeps what it can compute again (descriptors, vocabularies, the measured precision choice),
and the one rule for writing there: a cache that cannot be written warns, it never stops the work."""
import os
import warnings
from collections.abc import Callable
from pathlib import Path

from .io import remove_stale_temporaries


class CacheWarning(UserWarning):
    """A cache entry (database descriptors, a trained SIFT-HE vocabulary) that is damaged (made again) or cannot be
    written (not cached)."""


def default_cache_dir() -> Path:
    """``$ADVQUERY_CACHE`` or ``~/.cache/advquery``."""
    return Path(os.environ.get("ADVQUERY_CACHE", Path.home() / ".cache" / "advquery"))


def save_to_cache(path: Path, save: Callable[[Path], None], kind: str) -> bool:
    """Write the cache entry ``path`` with ``save`` (which writes the whole file, through
    :func:`~advquery.io.atomic_write`), after removing what killed runs left beside it; the one rule of every
    cache (descriptors, vocabularies, precision). A cache that cannot be written (read-only, full, a file in a
    folder's place) is a :class:`CacheWarning` naming the ``kind`` of cache, not an error: what was computed is
    used, not cached. Returns whether the entry was written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent)  # what killed earlier runs left
        save(path)
    except OSError as exc:
        warnings.warn(f"{path}: cannot write the {kind} cache ({exc.strerror or exc}); not cached", CacheWarning,
                      stacklevel=3)  # at the caller of the function that caches
        return False
    return True
