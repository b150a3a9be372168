"""Hamming-space retrieval: bit packing, exact stable ranking, mAP / precision@N / PR curves, exact k-NN index.

All functions are pure, take keyword arguments after the data arrays, and work on numpy arrays (jax arrays
are accepted and converted). Choices measured on a 2-core CPU (benchmarks/hamming_search.py,
docs/lcdh_retrieval.md):

* Distances use packed codes: XOR of 8/16/32/64-bit words + ``np.bitwise_count`` (numpy >= 2) into uint8,
  computed in cache-sized tiles. A float matmul of +-1 codes is fast itself, but converting its result to
  small integers made numpy BLAS 1.5x slower overall; a jitted jax matmul with uint8 output tied with the
  popcount, so numpy is used (no compilation per shape, no BLAS threads fighting our threads).
* Ranking: Hamming distances take only K + 1 values, so the stable ranking is a counting sort.
  numpy's ``argsort(kind="stable")`` on uint8/uint16 keys *is* a radix (for uint8: counting) sort, O(N),
  so it is used on uint8 keys; ties keep database order, exactly like ``np.argsort(distances,
  kind="stable")``. XLA's CPU sort (``jnp.argsort(stable=True)``) was ~60x slower on the same keys.
* Top-k search (``HammingIndex``) scans the database with a per-query distance threshold (no full sort):
  a numba kernel (``lcdh_jax._hamming_numba``: vectorised popcount, one pass over the codes) when numba is
  installed (3-9x faster than faiss-cpu ``IndexBinaryFlat`` with 1 thread each, 64/128-bit codes); else tiled numpy.
* Work is split into chunks of queries run on a thread pool (numpy releases the GIL inside these loops).

Metric semantics follow DCMH ``calc_map`` (see ``mean_average_precision``).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, NamedTuple, Sequence

import numpy as np

__all__ = [
    "pack_codes",
    "unpack_codes",
    "hamming_distance_packed",
    "hamming_distance",
    "stable_rank",
    "average_precisions",
    "mean_average_precision",
    "map_at_k",
    "precision_at_n",
    "PRCurve",
    "pr_curve_by_radius",
    "save_pr_curve_png",
    "HammingIndex",
]

DEFAULT_PRECISION_NS = (200, 500, 1000, 2000, 5000, 10000)
_QUERY_CHUNK = 8  # queries per task for ranking metrics: an (8, N) uint8/int64 tile stays in L2 for N ~ 20k.


# ----------------------------------------------------------------------------------------------------------
# Input checks and packing
# ----------------------------------------------------------------------------------------------------------


def _as_2d(x, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (num_items, num_bits); got shape {x.shape}.")
    return x


def _code_bits(codes: np.ndarray, name: str, *, allow_binary: bool) -> np.ndarray:
    """Returns the boolean bit array (code > 0) after checking the values are +-1 (or {0,1} if allowed)."""
    if codes.dtype == np.bool_:
        if not allow_binary:
            raise ValueError(f"{name} must hold codes in {{-1, +1}}; got a boolean array. Convert with 2 * b - 1.")
        return codes
    if not (np.issubdtype(codes.dtype, np.integer) or np.issubdtype(codes.dtype, np.floating)):
        raise ValueError(f"{name} must be a numeric array of codes; got dtype {codes.dtype}.")
    pos = codes == 1
    if allow_binary:
        ok = np.all(pos | (codes == -1)) or np.all(pos | (codes == 0))
        what = "{-1, +1} or {0, 1}"
    else:
        ok = np.all(pos | (codes == -1))
        what = "{-1, +1}"
    if not ok:
        allowed = pos | (codes == -1) | (codes == 0) if allow_binary else pos | (codes == -1)
        bad = codes[~allowed]
        example = bad.flat[0] if bad.size else "a mix of -1 and 0"
        raise ValueError(
            f"{name} must hold binary codes in {what} (one convention per array); found {example!r}. "
            "Binarise real-valued outputs first, e.g. np.where(h >= 0, 1, -1)"
            + ("" if allow_binary else ", and map {0, 1} codes with 2 * b - 1")
            + "."
        )
    return pos


def pack_codes(codes) -> np.ndarray:
    """Packs binary codes (N, K) in {-1,+1} or {0,1} (or bool) into bits: (N, K) -> (N, K // 8) uint8.

    Bit order is numpy's ``packbits`` big-endian order; +1 (or 1/True) maps to bit 1. K must be a multiple
    of 8 (pad your codes or choose K in {8, 16, 32, 64, 128, ...}).
    """
    codes = _as_2d(codes, "codes")
    if codes.shape[1] == 0 or codes.shape[1] % 8:
        raise ValueError(
            f"pack_codes needs a code length that is a positive multiple of 8; got K={codes.shape[1]}. "
            "Use K in {8, 16, 32, 64, 128, ...} or pad every code with the same constant bits."
        )
    return np.packbits(_code_bits(codes, "codes", allow_binary=True), axis=1)


def unpack_codes(packed, *, num_bits: int | None = None, signed: bool = True) -> np.ndarray:
    """Inverse of ``pack_codes``: (N, K // 8) uint8 -> (N, K) int8 codes in {-1,+1} (``signed``) or {0,1}."""
    packed = _as_2d(packed, "packed")
    if packed.dtype != np.uint8:
        raise ValueError(f"packed codes must be uint8 (from pack_codes); got dtype {packed.dtype}.")
    full = packed.shape[1] * 8
    num_bits = full if num_bits is None else int(num_bits)
    if not 0 < num_bits <= full:
        raise ValueError(
            f"num_bits must be in [1, {full}] for packed codes of {packed.shape[1]} bytes; got {num_bits}."
        )
    bits = np.unpackbits(packed, axis=1, count=num_bits).astype(np.int8)
    return 2 * bits - 1 if signed else bits


def _word_view(packed: np.ndarray) -> np.ndarray:
    """(N, B) uint8 -> (N, W) view in the widest unsigned word dtype dividing B (u64/u32/u16/u8)."""
    nbytes = packed.shape[1]
    for size, dt in ((8, np.uint64), (4, np.uint32), (2, np.uint16), (1, np.uint8)):
        if nbytes % size == 0:
            return np.ascontiguousarray(packed).view(dt)
    raise AssertionError("unreachable")


def _pack_pm1(codes: np.ndarray, name: str) -> np.ndarray:
    """+-1 codes of any length K -> packed bytes (zero padded: the pad bits never differ)."""
    return np.packbits(_code_bits(codes, name, allow_binary=False), axis=1)


def _dist_dtype(num_bits: int):
    return np.uint8 if num_bits <= 255 else np.uint16


def _distances_into(qw: np.ndarray, dbw: np.ndarray, out: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """Hamming distances between word arrays qw (q, W) and dbw (n, W) into out (q, n) using tmp (q, n)."""
    n = dbw.shape[0]
    for w in range(qw.shape[1]):
        np.bitwise_xor(qw[:, None, w], dbw[None, :, w], out=tmp[:, :n])
        if w == 0:
            np.bitwise_count(tmp[:, :n], out=out[:, :n], casting="unsafe")
        else:
            out[:, :n] += np.bitwise_count(tmp[:, :n])
    return out[:, :n]


def _pairwise(qw: np.ndarray, dbw: np.ndarray, num_bits: int) -> np.ndarray:
    out = np.empty((qw.shape[0], dbw.shape[0]), _dist_dtype(num_bits))
    tmp = np.empty(out.shape, qw.dtype)
    return _distances_into(qw, dbw, out, tmp)


def hamming_distance_packed(query_packed, db_packed) -> np.ndarray:
    """Hamming distances between packed codes: (Q, B), (N, B) uint8 -> (Q, N) int32."""
    q = _as_2d(query_packed, "query_packed")
    d = _as_2d(db_packed, "db_packed")
    if q.dtype != np.uint8 or d.dtype != np.uint8:
        raise ValueError(f"packed codes must be uint8 (from pack_codes); got {q.dtype} and {d.dtype}.")
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"query and database codes have different lengths: {q.shape[1]} vs {d.shape[1]} bytes.")
    return _pairwise(_word_view(q), _word_view(d), 8 * q.shape[1]).astype(np.int32)


def hamming_distance(query_codes, db_codes) -> np.ndarray:
    """Hamming distances between +-1 codes, ``(K - q . b) / 2``: (Q, K), (N, K) -> (Q, N) int32."""
    q = _as_2d(query_codes, "query_codes")
    d = _as_2d(db_codes, "db_codes")
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"query and database codes have different lengths: K={q.shape[1]} vs K={d.shape[1]}.")
    _code_bits(q, "query_codes", allow_binary=False)
    _code_bits(d, "db_codes", allow_binary=False)
    k = q.shape[1]
    # +-1 products sum exactly in float32 for K < 2**24.
    ip = q.astype(np.float32) @ d.astype(np.float32).T
    return ((k - ip) * 0.5).astype(np.int32)


def stable_rank(distances, *, num_bits: int | None = None) -> np.ndarray:
    """Stable ranking of integer distances in [0, num_bits] per row: (Q, N) -> (Q, N) int64 database indices.

    Identical to ``np.argsort(distances, axis=1, kind="stable")`` (ties in database order), computed as a
    counting sort: numpy's stable sort on uint8/uint16 keys is a radix sort, a single counting pass for uint8.
    """
    d = _as_2d(distances, "distances")
    if not np.issubdtype(d.dtype, np.integer):
        raise ValueError(f"distances must be integers (Hamming distances); got dtype {d.dtype}.")
    lo, hi = (int(d.min()), int(d.max())) if d.size else (0, 0)
    limit = hi if num_bits is None else int(num_bits)
    if lo < 0 or hi > limit or limit > 65535:
        raise ValueError(f"distances must lie in [0, num_bits={limit}] with num_bits <= 65535; got range [{lo}, {hi}].")
    return np.argsort(d.astype(_dist_dtype(limit), copy=False), axis=1, kind="stable")


# ----------------------------------------------------------------------------------------------------------
# Retrieval problems (validated codes + labels) and the chunked engine
# ----------------------------------------------------------------------------------------------------------


class _Problem(NamedTuple):
    qw: np.ndarray  # (Q, W) packed query words
    dbw: np.ndarray  # (N, W) packed database words
    qm: np.ndarray  # (Q, M) label bit masks (uint)
    dbm: np.ndarray  # (N, M)
    num_bits: int


def _label_masks(labels: np.ndarray) -> np.ndarray:
    """(N, C) labels >= 0 -> (N, M) bit masks of the classes present (label > 0)."""
    present = labels > 0
    c = present.shape[1]
    if c <= 64:
        dt = np.uint8 if c <= 8 else np.uint16 if c <= 16 else np.uint32 if c <= 32 else np.uint64
        packed = np.packbits(present, axis=1, bitorder="little")
        padded = np.zeros((present.shape[0], np.dtype(dt).itemsize), np.uint8)
        padded[:, : packed.shape[1]] = packed
        return padded.view(dt)
    packed = np.packbits(present, axis=1, bitorder="little")
    padded = np.zeros((present.shape[0], 8 * math.ceil(packed.shape[1] / 8)), np.uint8)
    padded[:, : packed.shape[1]] = packed
    return padded.view(np.uint64)


def _prepare(query_codes, db_codes, query_labels, db_labels) -> _Problem:
    qc = _as_2d(query_codes, "query_codes")
    dc = _as_2d(db_codes, "db_codes")
    ql = np.asarray(query_labels)
    dl = np.asarray(db_labels)
    if ql.ndim != 2 or dl.ndim != 2:
        raise ValueError(
            f"labels must be 2-D multi-hot arrays (num_items, num_classes); got shapes {ql.shape} and {dl.shape}. "
            "For single-label data pass one-hot labels."
        )
    if dc.shape[0] == 0:
        raise ValueError("the database is empty (db_codes has 0 rows); add database items before evaluating.")
    if qc.shape[0] == 0:
        raise ValueError("there are no queries (query_codes has 0 rows).")
    if qc.shape[0] != ql.shape[0]:
        raise ValueError(f"query_codes has {qc.shape[0]} rows but query_labels has {ql.shape[0]}; they must match.")
    if dc.shape[0] != dl.shape[0]:
        raise ValueError(f"db_codes has {dc.shape[0]} rows but db_labels has {dl.shape[0]}; they must match.")
    if qc.shape[1] != dc.shape[1]:
        raise ValueError(f"query and database codes have different lengths: K={qc.shape[1]} vs K={dc.shape[1]}.")
    if qc.shape[1] == 0:
        raise ValueError("codes have length K=0.")
    if ql.shape[1] != dl.shape[1]:
        raise ValueError(
            f"query and database labels have different numbers of classes: {ql.shape[1]} vs {dl.shape[1]}."
        )
    for name, lab in (("query_labels", ql), ("db_labels", dl)):
        if not (np.issubdtype(lab.dtype, np.number) or lab.dtype == np.bool_):
            raise ValueError(f"{name} must be numeric (multi-hot); got dtype {lab.dtype}.")
        if lab.dtype != np.bool_ and (not np.all(np.isfinite(lab)) or np.any(lab < 0)):
            raise ValueError(
                f"{name} must be finite and non-negative (multi-hot, relevance = labels share a class); "
                "got negative or non-finite values."
            )
    qp = _pack_pm1(qc, "query_codes")
    dp = _pack_pm1(dc, "db_codes")
    return _Problem(_word_view(qp), _word_view(dp), _label_masks(ql), _label_masks(dl), qc.shape[1])


def _relevance(qm: np.ndarray, dbm: np.ndarray) -> np.ndarray:
    """(q, M), (N, M) label masks -> (q, N) bool, True where the labels share a class."""
    rel = np.bitwise_and(qm[:, None, 0], dbm[None, :, 0]) != 0
    for w in range(1, qm.shape[1]):
        rel |= np.bitwise_and(qm[:, None, w], dbm[None, :, w]) != 0
    return rel


def _num_threads(num_threads: int | None) -> int:
    if num_threads is not None:
        if int(num_threads) < 1:
            raise ValueError(f"num_threads must be >= 1; got {num_threads}.")
        return int(num_threads)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def _map_chunks(fn: Callable[[int, int], np.ndarray], total: int, chunk: int, num_threads: int) -> np.ndarray:
    """Concatenates fn(lo, hi) over [0, total) in chunks, on a thread pool when num_threads > 1."""
    bounds = [(lo, min(total, lo + chunk)) for lo in range(0, total, chunk)]
    if num_threads == 1 or len(bounds) == 1:
        parts = [fn(lo, hi) for lo, hi in bounds]
    else:
        with ThreadPoolExecutor(num_threads) as ex:
            parts = list(ex.map(lambda b: fn(*b), bounds))
    return np.concatenate(parts)


def _sorted_relevance_rows(p: _Problem, lo: int, hi: int, length: int):
    """Yields, per query in [lo, hi), the relevance of the first ``length`` items in stable distance order."""
    d = _pairwise(p.qw[lo:hi], p.dbw, p.num_bits)
    order = np.argsort(d, axis=1, kind="stable")  # counting sort on uint8/uint16 keys
    rel = _relevance(p.qm[lo:hi], p.dbm)
    for i in range(hi - lo):
        yield rel[i].take(order[i, :length])


# ----------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------


def _check_top_k(top_k, n: int, name: str = "top_k") -> int:
    if top_k is None:
        return n
    if isinstance(top_k, bool) or int(top_k) != top_k or int(top_k) < 1:
        raise ValueError(f"{name} must be a positive integer or None; got {top_k!r}.")
    return min(int(top_k), n)


_CUTOFFS = ("rank", "relevant")


def average_precisions(query_codes, db_codes, query_labels, db_labels, *, top_k: int | None = None,
                       cutoff: str = "rank", num_threads: int | None = None) -> np.ndarray:
    """Per-query average precision (Q,) with the semantics of ``mean_average_precision``."""
    if cutoff not in _CUTOFFS:
        raise ValueError(f"cutoff must be one of {_CUTOFFS}; got {cutoff!r}.")
    p = _prepare(query_codes, db_codes, query_labels, db_labels)
    n_db = p.dbw.shape[0]
    k = _check_top_k(top_k, n_db)
    length = k if cutoff == "rank" else n_db  # "relevant": rank everything, keep the first k relevant items
    hit_number = np.arange(1, n_db + 1, dtype=np.float64)  # j, the j-th relevant item of the list

    def chunk(lo: int, hi: int) -> np.ndarray:
        ap = np.zeros(hi - lo, np.float64)
        for i, g in enumerate(_sorted_relevance_rows(p, lo, hi, length)):
            pos = np.flatnonzero(g)[:k]  # 0-based positions of the relevant items in the ranked list
            if pos.size:  # AP = (1/R) sum_j j / rank_j, the same float operations as DCMH's np.mean(count / tindex)
                ap[i] = np.add.reduce(hit_number[: pos.size] / (pos + 1.0)) / pos.size  # == np.mean, less overhead
        return ap

    return _map_chunks(chunk, p.qw.shape[0], _QUERY_CHUNK, _num_threads(num_threads))


def mean_average_precision(query_codes, db_codes, query_labels, db_labels, *, top_k: int | None = None,
                           cutoff: str = "rank", num_threads: int | None = None) -> float:
    """Mean average precision of Hamming ranking, DCMH ``calc_map`` semantics.

    Args:
      query_codes: (Q, K) codes in {-1, +1}.
      db_codes: (N, K) codes in {-1, +1}, N >= 1.
      query_labels: (Q, C) multi-hot (non-negative) labels; db_labels: (N, C).
      top_k: cut-off (mAP@k); None ranks the whole database. Values above N mean N.
      cutoff: "rank" (default): AP of the top_k ranked list, R = relevant items within the first top_k
        ranks. "relevant": AP over the first min(top_k, #relevant) relevant items wherever they are ranked
        (``calc_map_k(k)`` of the DCHMT/MITH code). Both equal DCMH ``calc_map`` when top_k is None.
      num_threads: worker threads (default: the CPUs this process may use).

    Semantics: an item is relevant to a query iff their labels share a class (``l_q . l_d > 0``). The database
    is sorted by Hamming distance ``(K - q . b) / 2``, ties by database index (a stable sort). With the
    kept relevant items at 1-based ranks r_1 < ... < r_R, ``AP = (1/R) sum_j j / r_j``; a query with R = 0
    has AP 0 and still counts in the mean over ALL queries. Exact (no approximation). Returns a float.
    """
    return float(np.mean(average_precisions(query_codes, db_codes, query_labels, db_labels, top_k=top_k,
                                            cutoff=cutoff, num_threads=num_threads)))


def map_at_k(query_codes, db_codes, query_labels, db_labels, *, k: int, cutoff: str = "rank",
             num_threads: int | None = None) -> float:
    """mAP@k: ``mean_average_precision`` with ``top_k=k`` (default: the top-k ranked list, R counted in it)."""
    if k is None:
        raise ValueError("map_at_k needs an integer k; use mean_average_precision for the full ranking.")
    return mean_average_precision(query_codes, db_codes, query_labels, db_labels, top_k=k, cutoff=cutoff,
                                  num_threads=num_threads)


def precision_at_n(query_codes, db_codes, query_labels, db_labels, *, ns: Sequence[int] = DEFAULT_PRECISION_NS,
                   num_threads: int | None = None) -> np.ndarray:
    """Mean precision of the top-n Hamming ranked list for each n in ``ns``: -> (len(ns),) float64.

    precision@n of one query = (# relevant among its first min(n, N) ranked items) / min(n, N), ranking as in
    ``mean_average_precision`` (stable by database index on ties); averaged over all queries.
    """
    ns_arr = np.asarray(ns)
    if ns_arr.ndim != 1 or ns_arr.size == 0 or not np.issubdtype(ns_arr.dtype, np.integer) or np.any(ns_arr < 1):
        raise ValueError(f"ns must be a non-empty sequence of positive integers; got {ns!r}.")
    p = _prepare(query_codes, db_codes, query_labels, db_labels)
    n_db = p.dbw.shape[0]
    cut = np.minimum(ns_arr, n_db)
    length = int(cut.max())

    def chunk(lo: int, hi: int) -> np.ndarray:
        out = np.zeros((hi - lo, cut.size), np.float64)
        for i, g in enumerate(_sorted_relevance_rows(p, lo, hi, length)):
            out[i] = np.cumsum(g, dtype=np.int64)[cut - 1] / cut
        return out

    return _map_chunks(chunk, p.qw.shape[0], _QUERY_CHUNK, _num_threads(num_threads)).mean(axis=0)


class PRCurve(NamedTuple):
    """Precision and recall of Hamming-ball retrieval for radius 0..K (each (K + 1,))."""

    radius: np.ndarray
    precision: np.ndarray
    recall: np.ndarray


def pr_curve_by_radius(query_codes, db_codes, query_labels, db_labels, *, average: str = "query",
                       num_threads: int | None = None) -> PRCurve:
    """Precision/recall of retrieving every item within Hamming radius r, for r = 0..K (DCMH/DCHMT style).

    Per query and radius: retrieved = items with distance <= r; precision = relevant retrieved / retrieved,
    defined as 0 when nothing is retrieved; recall = relevant retrieved / relevant in the database, 0 for a
    query with no relevant item.
    average="query" (default): both are averaged over ALL queries (DCHMT ``calc_precisions_hamming_radius``).
    average="pooled": counts are summed over queries first (precision = sum hits / sum retrieved, 0 if nothing
    is retrieved by any query; recall = sum hits / sum relevant), as DCHMT's ``calc_precisions_hash`` pools.
    """
    if average not in ("query", "pooled"):
        raise ValueError(f"average must be 'query' or 'pooled'; got {average!r}.")
    p = _prepare(query_codes, db_codes, query_labels, db_labels)
    k = p.num_bits
    n_db = p.dbw.shape[0]

    def chunk(lo: int, hi: int) -> np.ndarray:
        q = hi - lo
        d = _pairwise(p.qw[lo:hi], p.dbw, k).astype(np.int64)
        d += (np.arange(q) * (k + 1))[:, None]
        rel = _relevance(p.qm[lo:hi], p.dbm)
        hist_all = np.bincount(d.ravel(), minlength=q * (k + 1)).reshape(q, k + 1)
        hist_rel = np.bincount(d[rel], minlength=q * (k + 1)).reshape(q, k + 1)
        retrieved = np.cumsum(hist_all, axis=1)
        hits = np.cumsum(hist_rel, axis=1)
        return np.stack([hits, retrieved], axis=1)  # (q, 2, K + 1) counts

    chunk_rows = max(1, min(256, (1 << 22) // max(1, n_db)))
    counts = _map_chunks(chunk, p.qw.shape[0], chunk_rows, _num_threads(num_threads)).astype(np.float64)
    hits, retrieved = counts[:, 0], counts[:, 1]
    n_rel = hits[:, -1:]
    if average == "pooled":
        hits, retrieved, n_rel = hits.sum(0), retrieved.sum(0), n_rel.sum()
        precision = np.divide(hits, retrieved, out=np.zeros(hits.shape), where=retrieved > 0)
        recall = hits / n_rel if n_rel > 0 else np.zeros(hits.shape)
    else:
        precision = np.divide(hits, retrieved, out=np.zeros(hits.shape), where=retrieved > 0).mean(0)
        recall = np.divide(hits, n_rel, out=np.zeros(hits.shape), where=n_rel > 0).mean(0)
    return PRCurve(radius=np.arange(k + 1), precision=precision, recall=recall)


def save_pr_curve_png(curves: dict[str, PRCurve], path, *, title: str = "Hamming-radius PR curve") -> None:
    """Plots named PR curves (recall on x, precision on y) into a PNG file at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4))
    for name, c in curves.items():
        ax.plot(c.recall, c.precision, marker=".", label=name)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------
# Exact Hamming k-NN index
# ----------------------------------------------------------------------------------------------------------


class HammingIndex:
    """Exact Hamming k-NN over packed binary codes (flat scan), ties broken by insertion order.

    ``index = HammingIndex(64); index.add(codes); distances, indices = index.search(queries, top_k=100)``.
    Codes are stored packed (K / 8 bytes each, rows padded with zero bytes to whole 64-bit words) in a
    growing buffer. ``backend``: "numba" (a compiled threshold scan with vectorised popcount,
    ``lcdh_jax._hamming_numba``), "numpy" (tiled numpy scan), or "auto" (numba when it imports, else numpy).
    Both are exact and return the same results; memory is O(Q * top_k + tile), independent of the database
    size. Queries are split over ``num_threads`` threads (default: the CPUs this process may use).
    """

    _TILE = 1 << 18  # numpy backend: query x database elements per tile (a 2 MiB uint64 scratch buffer)
    _NUMBA_TILE_BYTES = 1 << 16  # numba backend: database bytes per tile (L2-resident, shared by the queries)
    _NUMBA_SUB = 64  # numba backend: codes per sub-block (min distance first, rescan only on a hit)

    def __init__(self, num_bits: int, *, num_threads: int | None = None, backend: str = "auto"):
        if isinstance(num_bits, bool) or int(num_bits) != num_bits or num_bits <= 0 or num_bits % 8:
            raise ValueError(f"num_bits must be a positive multiple of 8; got {num_bits!r}.")
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}; got {backend!r}.")
        self.num_bits = int(num_bits)
        self.num_bytes = self.num_bits // 8
        self._row_bytes = 8 * math.ceil(self.num_bytes / 8)
        self.num_threads = _num_threads(num_threads)
        self._backend = backend
        self._buf = np.zeros((0, self._row_bytes), np.uint8)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    @property
    def backend(self) -> str:
        """The backend searches use: "numba" or "numpy" ("auto" resolved)."""
        if self._backend == "auto":
            return "numba" if _numba_kernel() is not None else "numpy"
        return self._backend

    @property
    def packed_codes(self) -> np.ndarray:
        """(len, K / 8) uint8 packed codes in insertion order (a read-only view)."""
        view = self._buf[: self._n, : self.num_bytes]
        view.flags.writeable = False
        return view

    def _check_codes(self, codes, name: str) -> np.ndarray:
        codes = _as_2d(codes, name)
        if codes.shape[1] != self.num_bits:
            raise ValueError(f"{name} have K={codes.shape[1]} bits but this index holds {self.num_bits}-bit codes.")
        return pack_codes(codes)

    def _check_packed(self, packed, name: str) -> np.ndarray:
        packed = _as_2d(packed, name)
        if packed.dtype != np.uint8 or packed.shape[1] != self.num_bytes:
            raise ValueError(
                f"{name} must be uint8 of shape (n, {self.num_bytes}) (pack_codes of {self.num_bits}-bit codes); "
                f"got {packed.dtype} {packed.shape}."
            )
        return packed

    def add(self, codes) -> None:
        """Appends (n, K) codes in {-1,+1} or {0,1}; they get indices len(self) .. len(self) + n - 1."""
        self.add_packed(self._check_codes(codes, "codes"))

    def add_packed(self, packed) -> None:
        """Appends (n, K / 8) uint8 packed codes (from ``pack_codes``)."""
        packed = self._check_packed(packed, "packed codes")
        n_new = self._n + packed.shape[0]
        if n_new > self._buf.shape[0]:
            grown = np.zeros((max(n_new, 2 * self._buf.shape[0], 1024), self._row_bytes), np.uint8)
            grown[: self._n] = self._buf[: self._n]
            self._buf = grown
        self._buf[self._n : n_new, : self.num_bytes] = packed
        self._n = n_new

    def search(self, queries, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k: (Q, K) +-1/{0,1} queries -> distances (Q, k) int32, indices (Q, k) int64, k = min(top_k, len).

        Rows are sorted by distance, equal distances by insertion index (like a stable argsort of all distances).
        """
        return self.search_packed(self._check_codes(queries, "queries"), top_k)

    def search_packed(self, queries_packed, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        """Like ``search`` for (Q, K / 8) uint8 packed queries."""
        qp = self._check_packed(queries_packed, "queries")
        if self._n == 0:
            raise ValueError("the index is empty; call add(codes) before search.")
        k = _check_top_k(top_k, self._n)
        nq = qp.shape[0]
        if nq == 0:
            return np.zeros((0, k), np.int32), np.zeros((0, k), np.int64)
        q_rows = np.zeros((nq, self._row_bytes), np.uint8)
        q_rows[:, : self.num_bytes] = qp  # zero padding: the pad bits never differ
        qw = q_rows.view(np.uint64)
        dbw = self._buf[: self._n].view(np.uint64)  # (N, W): padded rows are whole 64-bit words
        kernel = _numba_kernel() if self.backend == "numba" else None
        if self._backend == "numba" and kernel is None:
            raise ImportError("HammingIndex(backend='numba') needs numba (pip install numba); use backend='auto'.")
        if kernel is not None:
            # At most ~2^22 buffered candidates per group (64 MiB), at least one group per thread.
            per = max(1, min(math.ceil(nq / self.num_threads), (1 << 22) // (2 * k + self._NUMBA_SUB)))
            nw = dbw.shape[1]
            tile = max(self._NUMBA_SUB, self._NUMBA_TILE_BYTES // (8 * nw))
            flat = dbw.reshape(-1)
            dist = np.empty((nq, k), np.int32)
            idx = np.empty((nq, k), np.int64)

            def run(lo):
                hi = min(nq, lo + per)
                kernel(qw[lo:hi], flat, nw, k, self.num_bits, tile, self._NUMBA_SUB, dist[lo:hi], idx[lo:hi])

            starts = range(0, nq, per)
            if len(starts) == 1 or self.num_threads == 1:
                for lo in starts:
                    run(lo)
            else:
                with ThreadPoolExecutor(min(self.num_threads, len(starts))) as ex:
                    list(ex.map(run, starts))
            return dist, idx
        # Query groups of at most 256 (bounded scratch memory; fewer for huge top_k, whose first tile is ranked
        # in full), at least one group per thread.
        per = max(1, min(256, math.ceil(nq / self.num_threads), (1 << 22) // k))
        bounds = [(lo, min(nq, lo + per)) for lo in range(0, nq, per)]
        run = lambda b: _topk_scan(qw[b[0] : b[1]], dbw, k, self.num_bits, self._TILE)  # noqa: E731
        if len(bounds) == 1 or self.num_threads == 1:
            parts = [run(b) for b in bounds]
        else:
            with ThreadPoolExecutor(min(self.num_threads, len(bounds))) as ex:
                parts = list(ex.map(run, bounds))
        dist = np.concatenate([d for d, _ in parts]).astype(np.int32)
        idx = np.concatenate([i for _, i in parts])
        return dist, idx


_BACKENDS = ("auto", "numba", "numpy")
_NUMBA = []  # [kernel or None], filled on first use


def _numba_kernel():
    """The compiled top-k kernel (``lcdh_jax._hamming_numba.topk_scan``), or None when numba is not installed."""
    if not _NUMBA:
        try:
            from lcdh_jax._hamming_numba import topk_scan
        except ImportError:
            topk_scan = None
        _NUMBA.append(topk_scan)
    return _NUMBA[0]

def _merge_topk(top_d, top_i, cand_r, cand_d, cand_i, k, n, num_bits):
    """Per row, the k smallest (distance, index) pairs among the current top-k rows and the candidates."""
    nq = top_d.shape[0]
    # One int64 key per pair, ordered by (row, distance, index); keys are unique, so any sort is exact.
    span = np.int64(n) * (num_bits + 1)
    key = np.concatenate([
        (np.arange(nq, dtype=np.int64)[:, None] * span + top_d.astype(np.int64) * n + top_i).ravel(),
        cand_r.astype(np.int64) * span + cand_d.astype(np.int64) * n + cand_i,
    ])
    key.sort()
    counts = k + np.bincount(cand_r, minlength=nq)
    starts = np.cumsum(counts) - counts
    best = key[starts[:, None] + np.arange(k)] % span
    return (best // n).astype(top_d.dtype), best % n


def _topk_scan(qw: np.ndarray, dbw: np.ndarray, k: int, num_bits: int, tile: int):
    """Exact stable top-k of Hamming distances for queries qw (q, W) over dbw (N, W)."""
    nq, n = qw.shape[0], dbw.shape[0]
    dt = _dist_dtype(num_bits)
    # The first block must hold at least k items: its stable top-k (counting sort) seeds the lists.
    block = max(256, tile // nq)
    first = min(n, max(block, k))
    d0 = _pairwise(qw, dbw[:first], num_bits)
    order = np.argsort(d0, axis=1, kind="stable")[:, :k]
    top_d = np.take_along_axis(d0, order, axis=1)
    top_i = order.astype(np.int64)
    # A later item (larger index) enters a full list only if strictly closer than its current k-th item.
    thr = top_d[:, -1:].copy()
    out = np.empty((nq, block), dt)
    tmp = np.empty((nq, block), qw.dtype)
    mask = np.empty((nq, block), np.bool_)
    cand_r, cand_d, cand_i, n_cand = [], [], [], 0
    for lo in range(first, n, block):
        hi = min(n, lo + block)
        d = _distances_into(qw, dbw[lo:hi], out, tmp)
        m = np.less(d, thr, out=mask[:, : hi - lo])
        if not m.any():  # the common case once the thresholds are tight
            continue
        flat = np.flatnonzero(m)  # 1-D nonzero: ~10x faster than the 2-D np.nonzero
        r, c = np.divmod(flat, hi - lo)
        cand_r.append(r)
        cand_d.append(d[r, c])
        cand_i.append(c + lo)
        n_cand += r.size
        if n_cand >= nq * k:  # amortised: merge when candidates outnumber the kept lists
            top_d, top_i = _merge_topk(top_d, top_i, np.concatenate(cand_r), np.concatenate(cand_d),
                                       np.concatenate(cand_i), k, n, num_bits)
            thr = top_d[:, -1:].copy()
            cand_r, cand_d, cand_i, n_cand = [], [], [], 0
    if n_cand:
        top_d, top_i = _merge_topk(top_d, top_i, np.concatenate(cand_r), np.concatenate(cand_d),
                                   np.concatenate(cand_i), k, n, num_bits)
    return top_d, top_i
