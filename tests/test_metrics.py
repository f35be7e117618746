"""AP / mAP / mP@k against hand-computed values and a slow obvious reference (revisitop convention)."""
import itertools

import numpy as np
import pytest

from advquery.evaluation.metrics import (MapResult, average_precision, compute_map, protocol_gnd, random_map,
                                         ranks_from_scores)


def ranking(order: list[int], n_db: int | None = None) -> np.ndarray:
    """(n_db, 1) ranks for one query: ``order`` first, then the remaining indices ascending."""
    n_db = n_db or len(order)
    rest = [i for i in range(n_db) if i not in order]
    return np.array(order + rest)[:, None]


def slow_ap_and_precisions(order, ok, junk, kappas):
    """Obvious reference: drop junk from the ranked list, then trapezoidal AP and revisitop P@k."""
    kept = [x for x in order if x not in set(junk)]
    hits = [r for r, x in enumerate(kept) if x in set(ok)]
    ap = 0.0
    for j, r in enumerate(hits):
        precision_0 = j / r if r > 0 else 1.0
        precision_1 = (j + 1) / (r + 1)
        ap += (precision_0 + precision_1) / 2 / len(ok)
    precisions = []
    for k in kappas:
        kq = min(hits[-1] + 1, k)
        precisions.append(sum(1 for x in kept[:kq] if x in set(ok)) / kq)
    return ap, precisions


# --- AP on hand-made rankings -------------------------------------------------------------------

def test_all_positives_first_gives_ap_one():
    result = compute_map(ranking([3, 1, 4], n_db=8), [{"ok": [1, 3, 4], "junk": []}])
    assert result.map == pytest.approx(1.0)
    assert result.mp_at_k == {1: 1.0, 5: 1.0, 10: 1.0}


def test_hand_computed_ap():
    # Ranking P N P N N P, 3 positives, 0-based ranks 0, 2, 5:
    #   j=0, r=0: (1 + 1/1) / 2       = 1
    #   j=1, r=2: (1/2 + 2/3) / 2     = 7/12
    #   j=2, r=5: (2/5 + 3/6) / 2     = 9/20
    #   AP = (1 + 7/12 + 9/20) / 3    = 61/90 = 0.6777...
    expected = 61 / 90
    assert average_precision(np.array([0, 2, 5]), 3) == pytest.approx(expected)
    result = compute_map(ranking([10, 0, 11, 1, 2, 12]), [{"ok": [10, 11, 12], "junk": []}])
    assert result.map == pytest.approx(expected)


@pytest.mark.parametrize("order, expected", [
    ([9, 0, 1, 2, 3], 1.0),                # J P P N N: junk before the positives
    ([0, 9, 1, 2, 3], 1.0),                # P J P: junk between closes the gap
    ([0, 2, 9, 1, 3], (1 + 7 / 12) / 2),   # P N J P: hits at ranks 0 and 2 after junk removal
    ([0, 2, 1, 9, 3], (1 + 7 / 12) / 2),   # P N P J: junk after changes nothing
])
def test_junk_is_removed_from_the_ranking(order, expected):
    result = compute_map(ranking(order), [{"ok": [0, 1], "junk": [9]}])
    assert result.aps[0] == pytest.approx(expected)


def test_query_without_positives_is_skipped_and_counted():
    gnd = [{"ok": [0], "junk": []}, {"ok": [], "junk": [1]}, {"ok": [2], "junk": []}]
    ranks = np.tile(np.arange(4)[:, None], (1, 3))  # query 0: AP 1; query 2: hit at 0-based rank 2, AP 1/6
    result = compute_map(ranks, gnd)
    assert isinstance(result, MapResult)
    assert (result.n_evaluated, result.n_skipped) == (2, 1)
    assert np.isnan(result.aps[1])
    assert result.map == pytest.approx((1 + (0 + 1 / 3) / 2) / 2)
    assert np.isnan(compute_map(ranks[:, 1:2], gnd[1:2]).map)


def test_positive_missing_from_truncated_ranking_counts_as_not_found():
    result = compute_map(np.array([[0], [5]]), [{"ok": [0, 7], "junk": []}])
    assert result.map == pytest.approx(0.5)


def test_positive_that_is_also_junk_follows_the_reference_loop():
    # Item 0 is positive and junk: it stays a hit at rank 0 and shifts item 1 to rank 0 too.
    # Reference: (1 + 1)/2 + (1 + 2/1)/2 = 2.5, over 2 positives -> 1.25.
    assert compute_map(ranking([0, 1, 2]), [{"ok": [0, 1], "junk": [0]}]).map == pytest.approx(1.25)


def test_precision_at_k_hand_case():
    # N P J N P: positives at 1-based ranks 2 and 4 after removing the junk item.
    # revisitop divides by min(k, last positive rank): P@1 = 0/1, P@5 = P@10 = 2/4 (not 2/5).
    result = compute_map(ranking([5, 0, 9, 6, 1], n_db=10), [{"ok": [0, 1], "junk": [9]}], kappas=(1, 5, 10))
    assert result.mp_at_k == {1: 0.0, 5: 0.5, 10: 0.5}


def test_agrees_with_slow_reference_on_random_rankings():
    rng = np.random.default_rng(0)
    kappas = (1, 3, 5, 10)
    for _ in range(200):
        n_db = int(rng.integers(5, 60))
        labelled = rng.permutation(n_db)
        n_ok = int(rng.integers(1, min(10, n_db) + 1))
        n_junk = int(rng.integers(0, min(10, n_db - n_ok) + 1))
        ok, junk = labelled[:n_ok].tolist(), labelled[n_ok:n_ok + n_junk].tolist()
        order = rng.permutation(n_db)
        result = compute_map(order[:, None], [{"ok": ok, "junk": junk}], kappas=kappas)
        ap, precisions = slow_ap_and_precisions(order.tolist(), ok, junk, kappas)
        assert result.map == pytest.approx(ap, abs=1e-12)
        assert [result.mp_at_k[k] for k in kappas] == pytest.approx(precisions, abs=1e-12)


def test_map_is_mean_over_queries_of_slow_reference():
    rng = np.random.default_rng(1)
    n_db, n_q = 30, 12
    gnd = [{"ok": rng.choice(n_db, 4, replace=False).tolist(), "junk": []} for _ in range(n_q)]
    for g in gnd:
        g["junk"] = [x for x in rng.choice(n_db, 3, replace=False).tolist() if x not in g["ok"]]
    ranks = ranks_from_scores(rng.normal(size=(n_db, n_q)))
    expected = [slow_ap_and_precisions(ranks[:, i].tolist(), g["ok"], g["junk"], ())[0] for i, g in enumerate(gnd)]
    assert compute_map(ranks, gnd).map == pytest.approx(np.mean(expected), abs=1e-12)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"n_queries=2"):
        compute_map(np.zeros((2, 5), dtype=int), [{"ok": [0]}] * 2)
    with pytest.raises(ValueError, match="n_positives"):
        average_precision(np.array([0]), 0)
    with pytest.raises(ValueError, match="ascending"):
        average_precision(np.array([3, 1]), 2)
    with pytest.raises(ValueError, match="kappas"):
        compute_map(ranking([0]), [{"ok": [0]}], kappas=(0,))


# --- ranks_from_scores --------------------------------------------------------------------------

def test_ranks_from_scores_best_first_stable():
    scores = np.array([[0.1, 0.5], [0.9, 0.5], [0.1, 0.7]])
    ranks = ranks_from_scores(scores)
    assert ranks.dtype == np.int64
    np.testing.assert_array_equal(ranks, [[1, 2], [0, 0], [2, 1]])
    with pytest.raises(ValueError, match="n_db, n_queries"):
        ranks_from_scores(np.zeros(3))


# --- protocol_gnd -------------------------------------------------------------------------------

REVISITED = [{"easy": [1, 2], "hard": [3], "junk": [4], "bbx": (0, 0, 1, 1)}]


@pytest.mark.parametrize("protocol, ok, junk", [
    ("easy", [1, 2], [4, 3]),
    ("medium", [1, 2, 3], [4]),
    ("hard", [3], [4, 1, 2]),
])
def test_protocol_gnd_revisited(protocol, ok, junk):
    assert protocol_gnd(REVISITED, protocol) == [{"ok": ok, "junk": junk}]


def test_protocol_gnd_classic_and_errors():
    assert protocol_gnd([{"good": [0], "ok": [5], "junk": [6]}], "classic") == [{"ok": [0, 5], "junk": [6]}]
    with pytest.raises(ValueError, match="easy, medium, hard, classic"):
        protocol_gnd(REVISITED, "difficult")
    with pytest.raises(ValueError, match=r"\['good', 'ok'\] missing"):
        protocol_gnd(REVISITED, "classic")


# --- random_map ---------------------------------------------------------------------------------

def test_random_map_matches_exhaustive_expectation():
    ok, junk, n_db = [0, 1], [2], 6
    exact = np.mean([slow_ap_and_precisions(list(p), ok, junk, ())[0]
                     for p in itertools.permutations(range(n_db))])
    estimate = random_map([{"ok": ok, "junk": junk}] * 50, n_db, trials=100, seed=0)
    assert estimate == pytest.approx(exact, abs=0.015)


def test_random_map_is_a_low_floor():
    rng = np.random.default_rng(0)
    gnd = [{"ok": rng.choice(1000, 5, replace=False).tolist(), "junk": []} for _ in range(20)]
    value = random_map(gnd, 1000, trials=5)
    assert 0 < value < 0.05
    with pytest.raises(ValueError, match="n_db=10"):
        random_map([{"ok": [12], "junk": []}], 10)
