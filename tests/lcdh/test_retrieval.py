"""Tests for lcdh_jax.retrieval: hand-computed metric values, parity with plain brute-force numpy, errors."""

from fractions import Fraction as F

import numpy as np
import pytest

from lcdh_jax import retrieval as R

# ---------------------------------------------------------------------------------------------------------
# Plain brute-force references (DCMH calc_map written out: stable argsort, python loops).
# ---------------------------------------------------------------------------------------------------------


def brute_distances(qc, dc):
    k = qc.shape[1]
    out = np.zeros((len(qc), len(dc)), np.int64)
    for i in range(len(qc)):
        for j in range(len(dc)):
            out[i, j] = int(np.sum(qc[i] != dc[j]))
    assert np.array_equal(out, (k - qc.astype(np.int64) @ dc.T.astype(np.int64)) // 2)
    return out


def brute_ranked_relevance(qc, dc, ql, dl):
    dist = brute_distances(qc, dc)
    rows = []
    for i in range(len(qc)):
        order = np.argsort(dist[i], kind="stable")
        relevant = (ql[i] @ dl.T) > 0
        rows.append(relevant[order])
    return rows


def brute_ap(qc, dc, ql, dl, top_k=None):
    """Per-query AP as DCMH calc_map computes it (count / tindex), on the top_k list."""
    aps = []
    for g in brute_ranked_relevance(qc, dc, ql, dl):
        g = g[:top_k] if top_k is not None else g
        tsum = int(g.sum())
        if tsum == 0:
            aps.append(0.0)
            continue
        count = np.linspace(1, tsum, tsum)
        tindex = np.asarray(np.where(g == 1))[0] + 1.0
        aps.append(np.mean(count / tindex))
    return np.array(aps)


def brute_ap_loop(qc, dc, ql, dl, top_k=None):
    """The same AP written as a loop over the ranked list (precision at each relevant rank)."""
    aps = []
    for g in brute_ranked_relevance(qc, dc, ql, dl):
        g = g[:top_k] if top_k is not None else g
        hits, total = 0, 0.0
        for pos, rel in enumerate(g):
            if rel:
                hits += 1
                total += hits / (pos + 1)
        aps.append(total / hits if hits else 0.0)
    return np.array(aps)


def brute_ap_first_relevant(qc, dc, ql, dl, k):
    """MITH/DCHMT calc_map_k(k): AP over the first min(k, R) relevant items of the full (stable) ranking."""
    aps = []
    for g in brute_ranked_relevance(qc, dc, ql, dl):
        ranks = [pos + 1 for pos, rel in enumerate(g) if rel][:k]
        aps.append(np.mean([(j + 1) / r for j, r in enumerate(ranks)]) if ranks else 0.0)
    return np.array(aps)


def brute_precision_at_n(qc, dc, ql, dl, ns):
    out = []
    for g in brute_ranked_relevance(qc, dc, ql, dl):
        out.append([g[: min(n, len(g))].sum() / min(n, len(g)) for n in ns])
    return np.mean(out, axis=0)


def brute_pr(qc, dc, ql, dl):
    k = qc.shape[1]
    dist = brute_distances(qc, dc)
    precision = np.zeros((len(qc), k + 1))
    recall = np.zeros((len(qc), k + 1))
    for i in range(len(qc)):
        relevant = (ql[i] @ dl.T) > 0
        for r in range(k + 1):
            retrieved = dist[i] <= r
            hits = np.sum(retrieved & relevant)
            precision[i, r] = hits / retrieved.sum() if retrieved.sum() else 0.0
            recall[i, r] = hits / relevant.sum() if relevant.sum() else 0.0
    return precision.mean(0), recall.mean(0)


def random_problem(seed, k, q=40, n=600, c=24, density=0.08):
    rng = np.random.default_rng(seed)
    qc = rng.choice(np.array([-1, 1], np.int8), (q, k))
    dc = rng.choice(np.array([-1, 1], np.int8), (n, k))
    # Duplicate some database codes so that equal distances (ties) are frequent even at 64 bits.
    dc[n // 2 :: 3] = dc[n // 2 - 1 :: 3][: len(dc[n // 2 :: 3])]
    ql = (rng.random((q, c)) < density).astype(np.float32)
    dl = (rng.random((n, c)) < density).astype(np.float32)
    ql[0] = 0  # a query with no relevant item
    return qc, dc, ql, dl


# ---------------------------------------------------------------------------------------------------------
# Hand-built case (K = 4).
#   query 0 = [+1 +1 +1 +1], labels {class 0}; query 1 = [-1 -1 -1 -1], labels {class 3} (nothing has class 3)
#   db  code            dist to q0  labels     relevant to q0
#   0   [+1 +1 +1 +1]   0           {0, 2}     yes
#   1   [-1 +1 +1 +1]   1           {1}        no
#   2   [+1 -1 +1 +1]   1           {0, 1}     yes
#   3   [-1 -1 -1 -1]   4           {0}        yes
#   4   [+1 +1 -1 +1]   1           {2}        no
# Stable ranking for q0: 0 (d0), then the tie at d1 in index order 1, 2, 4, then 3 (d4).
# Relevant ranks 1, 3, 5 -> AP = (1/1 + 2/3 + 3/5) / 3 = (15 + 10 + 9) / 45 = 34/45.
# (Ranking the relevant item 2 first inside the tie would give ranks 1, 2, 5 and AP 13/15 instead.)
# q1 has no relevant item -> AP 0, and it still counts: mAP = (34/45 + 0) / 2 = 17/45.
# ---------------------------------------------------------------------------------------------------------

Q_CODES = np.array([[1, 1, 1, 1], [-1, -1, -1, -1]])
DB_CODES = np.array([[1, 1, 1, 1], [-1, 1, 1, 1], [1, -1, 1, 1], [-1, -1, -1, -1], [1, 1, -1, 1]])
Q_LABELS = np.array([[1, 0, 0, 0], [0, 0, 0, 1]])
DB_LABELS = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]])
HAND = (Q_CODES, DB_CODES, Q_LABELS, DB_LABELS)


def test_map_hand_built_with_ties_and_empty_query():
    aps = R.average_precisions(*HAND)
    np.testing.assert_allclose(aps, [float(F(34, 45)), 0.0], rtol=0, atol=1e-15)
    assert R.mean_average_precision(*HAND) == pytest.approx(float(F(17, 45)), abs=1e-15)


def test_map_tie_order_follows_database_index():
    # Swap db items 1 and 2: the tie at distance 1 is now ordered 2 (relevant), 1, 4 -> ranks 1, 2, 5:
    # AP = (1/1 + 2/2 + 3/5) / 3 = 13/15.
    perm = [0, 2, 1, 3, 4]
    aps = R.average_precisions(Q_CODES, DB_CODES[perm], Q_LABELS, DB_LABELS[perm])
    np.testing.assert_allclose(aps, [float(F(13, 15)), 0.0], rtol=0, atol=1e-15)


def test_map_at_k_hand_built():
    # Top 3 of q0: items 0 (rel), 1, 2 (rel) -> R = 2, AP@3 = (1/1 + 2/3) / 2 = 5/6; mAP@3 = (5/6 + 0) / 2 = 5/12.
    assert R.map_at_k(*HAND, k=3) == pytest.approx(5 / 12, abs=1e-15)
    # Top 1: item 0 is relevant -> AP 1 -> mAP@1 = 1/2. Top 2: (1/1)/1 = 1 -> 1/2 as well.
    assert R.map_at_k(*HAND, k=1) == pytest.approx(0.5, abs=1e-15)
    assert R.map_at_k(*HAND, k=2) == pytest.approx(0.5, abs=1e-15)
    # k beyond the database is the full ranking.
    assert R.map_at_k(*HAND, k=50) == pytest.approx(17 / 45, abs=1e-15)
    # cutoff="relevant" (MITH/DCHMT calc_map_k): the first 2 relevant items of q0 wherever they rank, at ranks
    # 1 and 3 -> (1/1 + 2/3) / 2 = 5/6 as well; with k=3 all three: 34/45, unlike the top-3 list (5/6).
    assert R.map_at_k(*HAND, k=2, cutoff="relevant") == pytest.approx(5 / 12, abs=1e-15)
    assert R.map_at_k(*HAND, k=3, cutoff="relevant") == pytest.approx(17 / 45, abs=1e-15)


def test_precision_at_n_hand_built():
    # q0 ranked relevance: 1 0 1 0 1 -> p@1 = 1, p@2 = 1/2, p@3 = 2/3, p@5 = 3/5, p@10 -> all 5 items = 3/5.
    # q1 has no relevant item: 0. Mean over the 2 queries halves q0's values.
    got = R.precision_at_n(*HAND, ns=(1, 2, 3, 5, 10))
    np.testing.assert_allclose(got, np.array([1, 1 / 2, 2 / 3, 3 / 5, 3 / 5]) / 2, rtol=0, atol=1e-15)


def test_pr_curve_hand_built():
    # q0 distances 0 1 1 4 1, relevant {0, 2, 3}:
    #   r=0: retrieved {0}        P 1    R 1/3;  r=1..3: {0,1,2,4} P 2/4  R 2/3;  r=4: all  P 3/5  R 1.
    # q1 = [-1 -1 -1 -1]: distances 4 3 3 0 3, nothing relevant -> P 0 and R 0 at every radius.
    # q2 = [+1 +1 +1 -1], labels {0}: distances 1 2 2 3 2, relevant {0, 2, 3}:
    #   r=0: nothing retrieved -> P 0 (by definition), R 0;  r=1: {0} P 1 R 1/3;
    #   r=2: {0,1,2,4} P 2/4 R 2/3;  r=3, 4: all P 3/5 R 1.
    qc = np.vstack([Q_CODES, [[1, 1, 1, -1]]])
    ql = np.vstack([Q_LABELS, [[1, 0, 0, 0]]])
    curve = R.pr_curve_by_radius(qc, DB_CODES, ql, DB_LABELS)
    p0, r0 = [1, 1 / 2, 1 / 2, 1 / 2, 3 / 5], [1 / 3, 2 / 3, 2 / 3, 2 / 3, 1]
    p2, r2 = [0, 1, 1 / 2, 3 / 5, 3 / 5], [0, 1 / 3, 2 / 3, 1, 1]
    np.testing.assert_array_equal(curve.radius, np.arange(5))
    np.testing.assert_allclose(curve.precision, (np.array(p0) + np.array(p2)) / 3, rtol=0, atol=1e-15)
    np.testing.assert_allclose(curve.recall, (np.array(r0) + np.array(r2)) / 3, rtol=0, atol=1e-15)
    # Pooled over the 3 queries: hits 1,2,2,2,3 (q0) + 0 (q1) + 0,1,2,3,3 (q2); retrieved 1,4,4,4,5 (q0)
    # + 1,1,1,4,5 (q1) + 0,1,4,5,5 (q2); relevant 3 + 0 + 3 = 6.
    pooled = R.pr_curve_by_radius(qc, DB_CODES, ql, DB_LABELS, average="pooled")
    hits, retrieved = np.array([1, 3, 4, 5, 6]), np.array([2, 6, 9, 13, 15])
    np.testing.assert_allclose(pooled.precision, hits / retrieved, rtol=0, atol=1e-15)
    np.testing.assert_allclose(pooled.recall, hits / 6, rtol=0, atol=1e-15)


def test_index_hand_built():
    index = R.HammingIndex(8)
    pad = -np.ones((5, 4), np.int64)  # pad the 4-bit codes with 4 identical bits
    index.add(np.hstack([DB_CODES, pad]))
    dist, idx = index.search(np.hstack([Q_CODES[:1], pad[:1]]), top_k=4)
    np.testing.assert_array_equal(idx, [[0, 1, 2, 4]])
    np.testing.assert_array_equal(dist, [[0, 1, 1, 1]])


# ---------------------------------------------------------------------------------------------------------
# Random data against the brute-force references.
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [16, 32, 64])
@pytest.mark.parametrize("top_k", [None, 1, 37, 10_000])
def test_average_precision_matches_brute_force(k, top_k):
    qc, dc, ql, dl = random_problem(k, k)
    ref = brute_ap(qc, dc, ql, dl, top_k)
    got = R.average_precisions(qc, dc, ql, dl, top_k=top_k)
    np.testing.assert_array_equal(got, ref)  # same ranks and same float operations: bit-identical
    np.testing.assert_allclose(got, brute_ap_loop(qc, dc, ql, dl, top_k), rtol=1e-12, atol=1e-15)
    assert got[0] == 0.0  # the query without relevant items
    assert R.mean_average_precision(qc, dc, ql, dl, top_k=top_k) == ref.mean()
    if top_k is not None:
        assert R.map_at_k(qc, dc, ql, dl, k=top_k) == pytest.approx(ref.mean(), rel=1e-12)
        ref_rel = brute_ap_first_relevant(qc, dc, ql, dl, top_k)
        got_rel = R.average_precisions(qc, dc, ql, dl, top_k=top_k, cutoff="relevant")
        np.testing.assert_allclose(got_rel, ref_rel, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("k", [16, 32, 64])
def test_precision_and_pr_curve_match_brute_force(k):
    qc, dc, ql, dl = random_problem(100 + k, k)
    ns = (1, 5, 50, 200, 600, 1000)
    np.testing.assert_allclose(R.precision_at_n(qc, dc, ql, dl, ns=ns), brute_precision_at_n(qc, dc, ql, dl, ns),
                               rtol=1e-12, atol=1e-15)
    curve = R.pr_curve_by_radius(qc, dc, ql, dl)
    p_ref, r_ref = brute_pr(qc, dc, ql, dl)
    np.testing.assert_allclose(curve.precision, p_ref, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(curve.recall, r_ref, rtol=1e-12, atol=1e-15)
    assert curve.recall[-1] == pytest.approx(np.mean([(ql[i] @ dl.T > 0).any() for i in range(len(ql))]))
    dist, relevant = brute_distances(qc, dc), (ql @ dl.T) > 0
    hits = np.array([np.sum((dist <= r) & relevant) for r in range(k + 1)])
    retrieved = np.array([np.sum(dist <= r) for r in range(k + 1)])
    pooled = R.pr_curve_by_radius(qc, dc, ql, dl, average="pooled")
    np.testing.assert_allclose(pooled.precision, np.where(retrieved > 0, hits / np.maximum(retrieved, 1), 0.0),
                               rtol=1e-12)
    np.testing.assert_allclose(pooled.recall, hits / relevant.sum(), rtol=1e-12)


def test_map_other_code_lengths_many_classes_weighted_labels_and_threads():
    # K not a multiple of 8 and K = 128 (two words); 100 classes (two label words); real-valued >= 0 labels.
    for k in (12, 128, 264):
        qc, dc, ql, dl = random_problem(7 * k, k, q=25, n=300, c=100, density=0.03)
        rng = np.random.default_rng(k)
        ql, dl = ql * rng.uniform(0.1, 2, ql.shape), dl * rng.uniform(0.1, 2, dl.shape)
        ref = brute_ap(qc, dc, ql, dl)
        for threads in (1, 2):
            np.testing.assert_allclose(R.average_precisions(qc, dc, ql, dl, num_threads=threads), ref, rtol=1e-12)


def test_distances_and_stable_rank_match_brute_force():
    qc, dc, _, _ = random_problem(3, 32, q=10, n=200)
    ref = brute_distances(qc, dc)
    np.testing.assert_array_equal(R.hamming_distance(qc, dc), ref)
    np.testing.assert_array_equal(R.hamming_distance_packed(R.pack_codes(qc), R.pack_codes(dc)), ref)
    np.testing.assert_array_equal(R.stable_rank(ref, num_bits=32), np.argsort(ref, axis=1, kind="stable"))


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("k", [16, 64, 128, 264])
def test_index_search_matches_brute_force_including_ties(k, backend, monkeypatch):
    qc, dc, _, _ = random_problem(11 * k, k, q=17, n=3000)
    ref_d = brute_distances(qc, dc) if backend == "numba" else (k - qc.astype(np.int64) @ dc.T) // 2
    ref_i = np.argsort(ref_d, axis=1, kind="stable")
    # Tiny tiles force many database blocks and candidate merges / buffer compactions.
    monkeypatch.setattr(R.HammingIndex, "_TILE", 512)
    monkeypatch.setattr(R.HammingIndex, "_NUMBA_TILE_BYTES", 2048)
    monkeypatch.setattr(R.HammingIndex, "_NUMBA_SUB", 16)
    for threads in (1, 2):
        index = R.HammingIndex(k, num_threads=threads, backend=backend)
        assert index.backend == backend
        for lo in range(0, 3000, 700):  # several add() calls: indices continue across them
            index.add(dc[lo : lo + 700])
        assert len(index) == 3000
        for top_k in (1, 10, 100):
            dist, idx = index.search(qc, top_k=top_k)
            np.testing.assert_array_equal(idx, ref_i[:, :top_k])
            np.testing.assert_array_equal(dist, np.take_along_axis(ref_d, ref_i[:, :top_k], axis=1))
            assert dist.dtype == np.int32 and idx.dtype == np.int64
    # top_k larger than the database returns everything, fully ranked.
    small = R.HammingIndex(k, backend=backend)
    small.add(dc[:20])
    dist, idx = small.search(qc, top_k=50)
    np.testing.assert_array_equal(idx, np.argsort(ref_d[:, :20], axis=1, kind="stable"))


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_index_top_k_equals_stable_argsort_with_many_ties(backend, monkeypatch):
    """Exact equality with a brute-force stable argsort when most distances tie (few distinct codes)."""
    rng = np.random.default_rng(7)
    monkeypatch.setattr(R.HammingIndex, "_NUMBA_SUB", 8)  # many sub-blocks hit: buffer compactions
    for bits, n_distinct, n in ((8, 256, 5000), (64, 12, 4000), (128, 3, 2500), (24, 40, 3000)):
        pool = rng.integers(0, 256, (n_distinct, bits // 8), dtype=np.uint8)
        db = pool[rng.integers(0, n_distinct, n)]
        queries = np.concatenate([pool[:3], rng.integers(0, 256, (9, bits // 8), dtype=np.uint8)])
        dist = np.bitwise_count(queries[:, None, :] ^ db[None, :, :]).sum(-1)
        ref = np.argsort(dist, axis=1, kind="stable")
        index = R.HammingIndex(bits, num_threads=2, backend=backend)
        index.add_packed(db[: n // 3])
        index.add_packed(db[n // 3 :])
        for top_k in (1, 7, 100, 999, n, n + 5):
            d, i = index.search_packed(queries, top_k)
            k = min(top_k, n)
            np.testing.assert_array_equal(i, ref[:, :k], err_msg=f"{bits} bits, top_k={top_k}")
            np.testing.assert_array_equal(d, np.take_along_axis(dist, ref[:, :k], axis=1))
        np.testing.assert_array_equal(index.packed_codes, db)


def test_index_backends_agree_and_bad_backend():
    rng = np.random.default_rng(3)
    db = rng.choice(np.array([-1, 1], np.int8), (2000, 32))
    q = db[::97]
    out = {}
    for backend in ("numba", "numpy"):
        index = R.HammingIndex(32, backend=backend)
        index.add(db)
        out[backend] = index.search(q, top_k=50)
    np.testing.assert_array_equal(out["numba"][0], out["numpy"][0])
    np.testing.assert_array_equal(out["numba"][1], out["numpy"][1])
    assert np.all(out["numba"][0][:, 0] == 0)  # each query is in the database
    with pytest.raises(ValueError, match="backend must be one of"):
        R.HammingIndex(32, backend="faiss")


def test_packing_round_trip():
    rng = np.random.default_rng(0)
    pm1 = rng.choice([-1, 1], (9, 24))
    packed = R.pack_codes(pm1)
    assert packed.shape == (9, 3) and packed.dtype == np.uint8
    np.testing.assert_array_equal(R.unpack_codes(packed), pm1)
    np.testing.assert_array_equal(R.pack_codes((pm1 > 0).astype(np.float32)), packed)  # {0, 1} codes
    np.testing.assert_array_equal(R.pack_codes(pm1 > 0), packed)  # boolean codes
    np.testing.assert_array_equal(R.unpack_codes(packed, signed=False), (pm1 > 0).astype(np.int8))
    np.testing.assert_array_equal(R.unpack_codes(packed, num_bits=20), pm1[:, :20])
    # The first code bit is the most significant bit of the first byte.
    assert R.pack_codes(np.array([[1] + [-1] * 7]))[0, 0] == 128


# ---------------------------------------------------------------------------------------------------------
# Clear errors.
# ---------------------------------------------------------------------------------------------------------


def test_errors():
    qc, dc, ql, dl = HAND
    with pytest.raises(ValueError, match="multiple of 8"):
        R.pack_codes(np.ones((2, 12)))
    with pytest.raises(ValueError, match=r"query_codes has 2 rows but query_labels has 1"):
        R.mean_average_precision(qc, dc, ql[:1], dl)
    with pytest.raises(ValueError, match=r"db_codes has 5 rows but db_labels has 4"):
        R.mean_average_precision(qc, dc, ql, dl[:4])
    with pytest.raises(ValueError, match=r"\{-1, \+1\}"):
        R.mean_average_precision((qc > 0).astype(int), dc, ql, dl)  # {0, 1} codes
    with pytest.raises(ValueError, match=r"\{-1, \+1\}"):
        R.mean_average_precision(qc * 0.5, dc, ql, dl)
    with pytest.raises(ValueError, match="different lengths: K=4 vs K=3"):
        R.mean_average_precision(qc, dc[:, :3], ql, dl)
    with pytest.raises(ValueError, match="database is empty"):
        R.mean_average_precision(qc, dc[:0], ql, dl[:0])
    with pytest.raises(ValueError, match="non-negative"):
        R.mean_average_precision(qc, dc, -ql, dl)
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        R.mean_average_precision(qc, dc, ql, dl, top_k=0)
    with pytest.raises(ValueError, match="cutoff must be one of"):
        R.mean_average_precision(qc, dc, ql, dl, top_k=3, cutoff="list")
    with pytest.raises(ValueError, match="average must be"):
        R.pr_curve_by_radius(qc, dc, ql, dl, average="micro")
    with pytest.raises(ValueError, match="ns must be"):
        R.precision_at_n(qc, dc, ql, dl, ns=(0, 5))
    with pytest.raises(ValueError, match="multiple of 8"):
        R.HammingIndex(12)
    index = R.HammingIndex(8)
    with pytest.raises(ValueError, match="index is empty"):
        index.search(np.ones((1, 8)), top_k=1)
    with pytest.raises(ValueError, match="K=4 bits but this index holds 8-bit codes"):
        index.add(qc)
    with pytest.raises(ValueError, match=r"\{-1, \+1\} or \{0, 1\}"):
        index.add(np.full((1, 8), 2))


def test_jax_inputs_and_pr_png(tmp_path):
    import jax.numpy as jnp

    qc, dc, ql, dl = random_problem(5, 16, q=6, n=50)
    ref = R.mean_average_precision(qc, dc, ql, dl)
    assert R.mean_average_precision(jnp.asarray(qc), jnp.asarray(dc, jnp.float32), jnp.asarray(ql),
                                    jnp.asarray(dl)) == ref
    path = tmp_path / "pr.png"
    R.save_pr_curve_png({"random 16 bits": R.pr_curve_by_radius(qc, dc, ql, dl)}, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
