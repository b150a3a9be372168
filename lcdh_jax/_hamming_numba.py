"""numba kernel of ``HammingIndex.search``: exact, stable Hamming top-k by one threshold scan.

Imported lazily by ``lcdh_jax.retrieval`` (numba is optional there: without it the numpy scan is used).
Measured in benchmarks/hamming_search.py and docs/lcdh_retrieval.md.

Algorithm, per query (database codes = 64-bit words, rows padded with zero words):

* The database is scanned in index order, in tiles of ~64 KiB shared by all queries of the call (cache
  reuse), and each tile in sub-blocks of ``sub`` codes. For a sub-block the minimum distance is computed
  first; LLVM vectorises that loop (XOR, ``llvm.ctpop`` = AVX-512 VPOPCNTQ where the CPU has it, min).
  Only a sub-block whose minimum beats the query's threshold is rescanned code by code.
* A code is accepted iff its distance is *strictly* below the threshold ``t``: the distance of the current
  k-th best. A later code at distance ``t`` loses the tie to the earlier ones, so ties stay in insertion
  order. Accepted (distance, index) pairs are appended to a buffer and counted in a histogram over
  distances; ``c`` = number accepted with distance < t. After an acceptance, while ``c >= k`` the
  threshold drops (``t -= 1; c -= hist[t]``). Codes evicted by better ones are never deleted from the
  histogram; that does not change the answer: the histogram is exact below ``t``, which is all the
  threshold update reads. When the buffer is full it is compacted (all distances < t plus the first
  ``k - c`` at distance t, in index order; histogram recounted).
* The final buffer holds the top k in index order; a counting sort by distance (stable) orders it.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

__all__ = ["topk_scan"]


@intrinsic
def _popcount64(typingctx, x):
    """llvm.ctpop on a uint64 (vectorised by LLVM to VPOPCNTQ with AVX-512 VPOPCNTDQ)."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return sig, codegen


# The block loops index a slice from 0: numba's negative-index wraparound then folds away; with
# ``db[j]`` for j in range(lo, hi) LLVM kept it and vectorised the loads as gathers (3-4x slower).


@numba.njit(nogil=True, boundscheck=False, inline="always", cache=True)
def _block_min_w1(q0, blk):
    m = np.uint64(1 << 30)
    for j in range(blk.shape[0]):
        m = min(m, _popcount64(q0 ^ blk[j]))
    return np.int64(m)


@numba.njit(nogil=True, boundscheck=False, inline="always", cache=True)
def _block_min_w2(q0, q1, blk):
    m = np.uint64(1 << 30)
    for j in range(blk.shape[0] // 2):
        m = min(m, _popcount64(q0 ^ blk[2 * j]) + _popcount64(q1 ^ blk[2 * j + 1]))
    return np.int64(m)


@numba.njit(nogil=True, boundscheck=False, inline="always", cache=True)
def _block_min(qrow, blk, nw):
    m = np.uint64(1 << 30)
    for j in range(blk.shape[0] // nw):
        d = np.uint64(0)
        for w in range(nw):
            d += _popcount64(qrow[w] ^ blk[nw * j + w])
        m = min(m, d)
    return np.int64(m)


@numba.njit(nogil=True, boundscheck=False, inline="always", cache=True)
def _distance(qrow, db, nw, j):
    d = np.uint64(0)
    for w in range(nw):
        d += _popcount64(qrow[w] ^ db[nw * j + w])
    return np.int64(d)


@numba.njit(nogil=True, boundscheck=False, cache=True)
def _compact(buf_d, buf_i, q, f, hist, t, c, k):
    """Keeps buffer entries with distance < t and the first k - c at distance t; recounts hist[q]."""
    room = k - c
    g = 0
    for b in range(hist.shape[1]):
        hist[q, b] = 0
    for a in range(f):
        d = buf_d[q, a]
        keep = d < t
        if d == t and room > 0:
            keep = True
            room -= 1
        if keep:
            buf_d[q, g] = d
            buf_i[q, g] = buf_i[q, a]
            hist[q, d] += 1
            g += 1
    return g


@numba.njit(nogil=True, boundscheck=False, cache=True)
def topk_scan(qw, db, nw, k, max_dist, tile, sub, out_d, out_i):
    """Exact stable top-k. qw (Q, nw) uint64 queries; db (N * nw,) uint64 codes (row-major, flattened);
    k <= N; max_dist >= every distance; writes out_d (Q, k) int32 distances and out_i (Q, k) int64 indices."""
    nq = qw.shape[0]
    n = db.shape[0] // nw
    cap = 2 * k + sub
    buf_d = np.empty((nq, cap), np.int64)
    buf_i = np.empty((nq, cap), np.int64)
    fill = np.zeros(nq, np.int64)
    hist = np.zeros((nq, max_dist + 2), np.int64)
    thr = np.full(nq, max_dist + 1, np.int64)  # accept everything until k codes are in
    cnt = np.zeros(nq, np.int64)
    for lo in range(0, n, tile):
        hi = min(n, lo + tile)
        for q in range(nq):
            t = thr[q]
            q0 = qw[q, 0]
            q1 = qw[q, 1] if nw > 1 else np.uint64(0)
            for slo in range(lo, hi, sub):
                shi = min(hi, slo + sub)
                blk = db[nw * slo : nw * shi]
                if nw == 1:
                    m = _block_min_w1(q0, blk)
                elif nw == 2:
                    m = _block_min_w2(q0, q1, blk)
                else:
                    m = _block_min(qw[q], blk, nw)
                if m >= t:
                    continue
                f = fill[q]
                if f + (shi - slo) > cap:
                    f = _compact(buf_d, buf_i, q, f, hist, t, cnt[q], k)
                c = cnt[q]
                for j in range(slo, shi):
                    d = _distance(qw[q], db, nw, j)
                    if d < t:
                        buf_d[q, f] = d
                        buf_i[q, f] = j
                        f += 1
                        hist[q, d] += 1
                        c += 1
                        while c >= k:
                            t -= 1
                            c -= hist[q, t]
                cnt[q] = c
                fill[q] = f
            thr[q] = t
    start = np.empty(max_dist + 2, np.int64)
    for q in range(nq):
        f = _compact(buf_d, buf_i, q, fill[q], hist, thr[q], cnt[q], k)
        start[:] = 0
        for a in range(f):
            start[buf_d[q, a] + 1] += 1
        for b in range(1, max_dist + 2):
            start[b] += start[b - 1]
        for a in range(f):
            d = buf_d[q, a]
            p = start[d]
            out_d[q, p] = d
            out_i[q, p] = buf_i[q, a]
            start[d] = p + 1
