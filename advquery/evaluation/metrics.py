"""Retrieval scores with the revisitop/cirtorch conventions: AP with junk removed, mAP, mP@k.

Conventions: a ranking is a column of database indices, best first; ``ranks`` has shape
(n_db, n_queries), as revisitop's ``compute_map``. Ground truth per query is a dict with
index lists ``'ok'`` (positives) and ``'junk'`` (ignored); :func:`protocol_gnd` builds it from
the datasets' raw keys. Scores are fractions in [0, 1] (multiply by 100 for the usual tables).
"""
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PROTOCOLS = ("easy", "medium", "hard", "classic")
_PROTOCOL_KEYS = {
    # protocol: (keys whose union is 'ok', keys whose union is 'junk')
    "easy": (("easy",), ("junk", "hard")),
    "medium": (("easy", "hard"), ("junk",)),
    "hard": (("hard",), ("junk", "easy")),
    "classic": (("good", "ok"), ("junk",)),
}


@dataclass(frozen=True)
class MapResult:
    """Outcome of :func:`compute_map`.

    Attributes:
        map: mean AP over the ``n_evaluated`` queries that have positives (nan if none has).
        aps: (n_queries,) AP per query, nan for skipped queries.
        mp_at_k: mean precision at k for each kappa, over the same queries.
        n_evaluated: queries with at least one positive.
        n_skipped: queries without positives, left out of every mean.
    """

    map: float
    aps: np.ndarray
    mp_at_k: dict[int, float]
    n_evaluated: int
    n_skipped: int


def average_precision(positive_ranks: np.ndarray, n_positives: int) -> float:
    """AP of one query by the trapezoidal rule of revisitop/cirtorch ``compute_ap``.

    Args:
        positive_ranks: (n_found,) 0-based ranks of the retrieved positives, ascending, junk
            already removed (a rank counts only the non-junk items before it).
        n_positives: number of positives in the ground truth (the recall denominator).

    Examples:
        >>> average_precision(np.array([0, 2]), 2)  # hits at ranks 1 and 3 (1-based)
        0.7916666666666666
    """
    r = np.asarray(positive_ranks, dtype=np.float64)
    if r.ndim != 1:
        raise ValueError(f"expected 1-D positive ranks, got shape {r.shape}")
    if n_positives <= 0:
        raise ValueError(f"n_positives must be positive, got {n_positives}")
    if r.size and (r[0] < 0 or np.any(np.diff(r) < 0)):
        raise ValueError(f"positive ranks must be non-negative and ascending, got {r.tolist()}")
    j = np.arange(r.size, dtype=np.float64)
    precision_0 = np.divide(j, r, out=np.ones_like(r), where=r > 0)
    precision_1 = (j + 1) / (r + 1)
    return float(np.sum((precision_0 + precision_1) / 2) / n_positives)


def ranks_from_scores(scores: np.ndarray) -> np.ndarray:
    """Database indices best first per query.

    Args:
        scores: (n_db, n_queries) similarities, higher is better (e.g. ``db @ queries.T``).

    Returns:
        (n_db, n_queries) int64 ranking; ties keep database order (stable sort).
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"expected (n_db, n_queries) scores, got shape {scores.shape}")
    return np.argsort(-scores, axis=0, kind="stable").astype(np.int64, copy=False)


def _corrected_positions(ranking: np.ndarray, ok: np.ndarray, junk: np.ndarray) -> np.ndarray:
    """0-based positions of positives in ``ranking`` minus the junk items strictly before each.

    This is revisitop's k/ij loop: an item that is both positive and junk stays a positive at
    its own position but shifts every later positive up by one.
    """
    pos = np.flatnonzero(np.isin(ranking, ok))
    junk_pos = np.flatnonzero(np.isin(ranking, junk))
    return pos - np.searchsorted(junk_pos, pos, side="left")


def compute_map(ranks: np.ndarray, gnd: Sequence[dict], kappas: Sequence[int] = (1, 5, 10)) -> MapResult:
    """mAP and mP@k exactly as revisitop ``compute_map``, except that queries without
    positives are counted in ``n_skipped`` instead of relying on a nan in the average.

    Args:
        ranks: (n_ranked, n_queries) database indices best first; usually the full database
            (n_ranked = n_db). A positive absent from a truncated ranking counts as never found.
        gnd: per query ``{'ok': [...], 'junk': [...]}`` (``'junk'`` optional), e.g. from
            :func:`protocol_gnd`.
        kappas: cut-offs k for mP@k. As in revisitop, P@k of a query divides by
            ``min(k, last positive's 1-based rank)``, after junk removal.

    Note:
        An item listed both as positive and as junk is handled as the reference loop does: it
        counts as a positive at its own position and also shifts every later positive up by
        one, so AP can exceed 1 (e.g. such an item first, another positive second: AP 1.25).
    """
    ranks = np.asarray(ranks)
    if ranks.ndim != 2 or ranks.shape[1] != len(gnd):
        raise ValueError(f"expected ranks of shape (n_db, n_queries={len(gnd)}), got {ranks.shape}")
    kappas = tuple(int(k) for k in kappas)
    if any(k < 1 for k in kappas):
        raise ValueError(f"kappas must be >= 1, got {kappas}")
    aps = np.full(len(gnd), np.nan)
    prs = np.full((len(gnd), len(kappas)), np.nan)
    for i, g in enumerate(gnd):
        ok = np.asarray(g["ok"])
        if ok.size == 0:
            continue
        pos = _corrected_positions(ranks[:, i], ok, np.asarray(g.get("junk", [])))
        aps[i] = average_precision(pos, ok.size)
        if pos.size == 0:  # only possible with a truncated ranking
            prs[i] = 0.0
            continue
        pos = pos + 1
        for j, k in enumerate(kappas):
            kq = min(pos.max(), k)
            prs[i, j] = (pos <= kq).sum() / kq
    evaluated = ~np.isnan(aps)
    n_evaluated = int(evaluated.sum())
    if n_evaluated == 0:
        return MapResult(map=float("nan"), aps=aps, mp_at_k={k: float("nan") for k in kappas},
                         n_evaluated=0, n_skipped=len(gnd))
    mp = prs[evaluated].mean(axis=0)
    return MapResult(map=float(aps[evaluated].mean()), aps=aps,
                     mp_at_k={k: float(mp[j]) for j, k in enumerate(kappas)},
                     n_evaluated=n_evaluated, n_skipped=len(gnd) - n_evaluated)


def protocol_gnd(gnd: Sequence[dict], protocol: str) -> list[dict]:
    """Per-query ``{'ok', 'junk'}`` lists for a protocol.

    Revisited datasets (keys easy/hard/junk): 'easy' (ok = easy, junk = junk + hard), 'medium'
    (ok = easy + hard, junk = junk), 'hard' (ok = hard, junk = junk + easy). Classic Oxford5k
    (keys good/ok/junk): 'classic' (ok = good + ok, junk = junk).
    """
    if protocol not in _PROTOCOL_KEYS:
        raise ValueError(f"unknown protocol {protocol!r}; valid protocols: {', '.join(PROTOCOLS)}")
    ok_keys, junk_keys = _PROTOCOL_KEYS[protocol]
    out = []
    for i, g in enumerate(gnd):
        missing = [k for k in ok_keys + junk_keys if k not in g]
        if missing:
            raise ValueError(f"protocol {protocol!r} needs keys {missing} missing from the ground truth "
                             f"of query {i} (it has {sorted(g)})")
        out.append({"ok": [int(x) for k in ok_keys for x in g[k]],
                    "junk": [int(x) for k in junk_keys for x in g[k]]})
    return out


def random_map(gnd: Sequence[dict], n_db: int, trials: int = 100, seed: int = 0) -> float:
    """Expected mAP of a random ranking (mean over ``trials`` random permutations per query).

    This is the floor that a perfect protection would bring retrieval down to.

    Args:
        gnd: per query ``{'ok', 'junk'}`` as for :func:`compute_map`.
        n_db: database size; every index in ``gnd`` must be below it.
    """
    if n_db < 1 or trials < 1:
        raise ValueError(f"need n_db >= 1 and trials >= 1, got n_db={n_db}, trials={trials}")
    top = max((int(x) for g in gnd for k in ("ok", "junk") for x in g.get(k, [])), default=-1)
    if top >= n_db:
        raise ValueError(f"ground truth refers to database index {top}, but n_db={n_db}")
    rng = np.random.default_rng(seed)
    base = np.broadcast_to(np.arange(n_db)[:, None], (n_db, len(gnd)))
    return float(np.mean([compute_map(rng.permuted(base, axis=0), gnd, kappas=()).map
                          for _ in range(trials)]))
