"""Benchmark lcdh_jax.retrieval against faiss-cpu ``IndexBinaryFlat`` (bench extra) on synthetic random codes.

  (a) full Hamming ranking + mAP: 2000 queries x 18015 database items (MIRFlickr-25K sizes), 64 bits,
      24-class random multi-hot labels. Baseline = faiss pairwise distances (``faiss.hammings``) + numpy stable
      argsort (radix, uint8 keys) + vectorised DCMH AP; ours = ``mean_average_precision``.
  (b) exact top-k over 1M codes, 64 and 128 bits: 100 queries x top-100 and 1000 queries x top-10, faiss
      ``IndexBinaryFlat.search`` vs ``HammingIndex`` (numba backend, the default; and its numpy backend),
      2 threads each (--threads); distances must equal faiss's, indices a stable argsort's (ties in insertion order).
  (c) the distance matrix of (a) alone: packed popcount (numpy, used) vs float matmul of +-1 codes
      (numpy BLAS and jax.jit), to justify the choice; (d) jnp.argsort(stable) vs numpy's counting sort.

(a), (c), (d): best of --repeats runs, the contenders interleaved (the host is shared, load varies).
(b): --repeats interleaved rounds; the table gives median times and the per-round ratios' median and range.

  python benchmarks/hamming_search.py [--repeats 5] [--skip-jax] [--only-topk] [--topk-bits 64,128]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from lcdh_jax import retrieval


def best_time(fn, repeats):
    """Best wall-clock and best CPU time (all threads of this process) over ``repeats`` calls."""
    wall, cpu, out = float("inf"), float("inf"), None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = min(wall, time.perf_counter() - w0), min(cpu, time.process_time() - c0)
    return wall, cpu, out


def interleaved(fns: dict, repeats: int):
    """Runs the contenders in turn, ``repeats`` rounds; returns {name: (best_wall, best_cpu, last_output)}."""
    res = {name: (float("inf"), float("inf"), None) for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            w, c, out = best_time(fn, 1)
            res[name] = (min(res[name][0], w), min(res[name][1], c), out)
    return res


def timed_rounds(fns: dict, repeats: int):
    """Runs the contenders in turn, ``repeats`` rounds; returns {name: [(wall, cpu, output) per round]}.

    Interleaving puts each round's contenders under about the same load, so per-round ratios are comparable.
    """
    res = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            out = fn()
            res[name].append((time.perf_counter() - w0, time.process_time() - c0, out))
    return res


def make_problem(rng, q, n, bits, classes, density):
    qc = np.where(rng.random((q, bits)) < 0.5, -1, 1).astype(np.int8)
    dc = np.where(rng.random((n, bits)) < 0.5, -1, 1).astype(np.int8)
    ql = (rng.random((q, classes)) < density).astype(np.float32)
    dl = (rng.random((n, classes)) < density).astype(np.float32)
    return qc, dc, ql, dl


def faiss_map(faiss, qc, dc, ql, dl, chunk=250):
    """faiss distances + numpy stable argsort + DCMH AP (vectorised per chunk of queries)."""
    qp, dp = np.packbits(qc > 0, axis=1), np.packbits(dc > 0, axis=1)
    q, n = qp.shape[0], dp.shape[0]
    dis = np.empty((q, n), np.int32)
    faiss.hammings(faiss.swig_ptr(qp), faiss.swig_ptr(dp), q, n, qp.shape[1], faiss.swig_ptr(dis))
    inv_rank = 1.0 / np.arange(1, n + 1)
    aps = []
    for lo in range(0, q, chunk):
        order = np.argsort(dis[lo : lo + chunk].astype(np.uint8), axis=1, kind="stable")
        rel = (ql[lo : lo + chunk] @ dl.T) > 0
        g = np.take_along_axis(rel, order, axis=1)
        hits = np.cumsum(g, axis=1, dtype=np.int32)
        n_rel = hits[:, -1]
        s = (np.where(g, hits, 0) * inv_rank).sum(axis=1)
        aps.append(np.where(n_rel > 0, s / np.maximum(n_rel, 1), 0.0))
    return float(np.mean(np.concatenate(aps)))


def faiss_dist_sort(faiss, qp, dp, chunk=250):
    """Only the ranking part of the baseline: faiss distances + numpy stable argsort (no relevance, no AP)."""
    q, n = qp.shape[0], dp.shape[0]
    dis = np.empty((q, n), np.int32)
    faiss.hammings(faiss.swig_ptr(qp), faiss.swig_ptr(dp), q, n, qp.shape[1], faiss.swig_ptr(dis))
    for lo in range(0, q, chunk):
        np.argsort(dis[lo : lo + chunk].astype(np.uint8), axis=1, kind="stable")
    return dis


def full_ranking(args, faiss, rng):
    """(a) full ranking + mAP, (c) distance matrix alone, (d) sorting in XLA; returns the table rows of (a)."""
    rows = []
    # (a) full ranking + mAP ------------------------------------------------------------------------------
    qc, dc, ql, dl = make_problem(rng, 2000, 18015, 64, 24, 0.15)
    qcp, dcp = np.packbits(qc > 0, axis=1), np.packbits(dc > 0, axis=1)
    res = interleaved({
        "faiss": lambda: faiss_map(faiss, qc, dc, ql, dl),
        "faiss_rank_only": lambda: faiss_dist_sort(faiss, qcp, dcp),
        "ours": lambda: retrieval.mean_average_precision(qc, dc, ql, dl),
        "ours_1thread": lambda: retrieval.mean_average_precision(qc, dc, ql, dl, num_threads=1),
    }, args.repeats)
    mf, mo, m1 = (res[k][2] for k in ("faiss", "ours", "ours_1thread"))
    assert abs(mo - mf) < 1e-12 and mo == m1, (mo, mf, m1)  # same ranks; only the float summation order differs
    print(f"(a) mAP 2000x18015 @64 bits: mAP={mo:.6f} (baseline differs by {abs(mo - mf):.1e})")
    rows.append(("(a) full ranking + mAP, 2000 x 18015, 64 bits", res))
    for name, (w, c, _) in res.items():
        print(f"    {name:16s} {w:.3f} s wall, {c:.3f} s CPU")
    w100, c100, m100 = best_time(lambda: retrieval.map_at_k(qc, dc, ql, dl, k=100), args.repeats)
    print(f"    mAP@100 = {m100:.6f} in {w100:.3f} s wall, {c100:.3f} s CPU")

    # (c) distance matrix alone -------------------------------------------------------------------------
    qp, dp = retrieval.pack_codes(qc), retrieval.pack_codes(dc)
    fns = {
        "packed popcount (numpy, used)": lambda: retrieval.hamming_distance_packed(qp, dp),
        "+-1 float32 matmul (numpy BLAS)": lambda: retrieval.hamming_distance(qc, dc),
    }
    if not args.skip_jax:
        import jax
        import jax.numpy as jnp

        qf, df = jnp.asarray(qc, jnp.float32), jnp.asarray(dc, jnp.float32)
        jdist = jax.jit(lambda a, b: ((64 - a @ b.T) * 0.5).astype(jnp.uint8))
        jdist(qf, df).block_until_ready()
        fns["+-1 float32 matmul (jax.jit, uint8 out)"] = lambda: np.asarray(jdist(qf, df))
    res = interleaved(fns, args.repeats)
    print("(c) 2000 x 18015 distance matrix @64 bits (wall / CPU seconds):")
    for name, (w, c, _) in res.items():
        print(f"    {name:42s} {w:.3f} / {c:.3f}")
    if not args.skip_jax:
        # (d) why the ranking is not done in XLA: its CPU sort is a comparison sort.
        d200 = retrieval.hamming_distance_packed(qp[:200], dp).astype(np.uint8)
        jd = jnp.asarray(d200)
        jsort = jax.jit(lambda x: jnp.argsort(x, axis=1, stable=True))
        jsort(jd).block_until_ready()
        wj, cj, oj = best_time(lambda: np.asarray(jsort(jd)), 2)
        wn, cn, on = best_time(lambda: np.argsort(d200, axis=1, kind="stable"), args.repeats)
        assert np.array_equal(oj, on)
        print(f"(d) stable argsort of 200 x 18015 uint8 distances (wall / CPU s): jnp.argsort {wj:.3f} / {cj:.3f}, "
              f"numpy counting sort {wn:.4f} / {cn:.4f}  ({wj / wn:.0f}x)")

    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-jax", action="store_true")
    ap.add_argument("--db-size", type=int, default=1_000_000)
    ap.add_argument("--topk-bits", default="64,128", help="code lengths for (b), comma-separated")
    ap.add_argument("--skip-numpy-topk", action="store_true", help="(b) without the numpy backend")
    ap.add_argument("--only-topk", action="store_true", help="only (b), the exact top-k search")
    ap.add_argument("--threads", type=int, default=2, help="(b): faiss OpenMP threads = HammingIndex threads")
    ap.add_argument("--omp-passive", action="store_true",
                    help="OMP_WAIT_POLICY=PASSIVE for faiss (idle OpenMP threads sleep instead of spinning)")
    args = ap.parse_args()
    args.topk_bits = [int(b) for b in args.topk_bits.split(",")]
    if args.omp_passive:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # read when the OpenMP runtime starts (faiss import)
    import faiss

    faiss.omp_set_num_threads(args.threads)  # the same for faiss's OpenMP and HammingIndex(num_threads=...)

    rng = np.random.default_rng(0)
    print(f"host: {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} CPUs usable, "
          f"load avg {os.getloadavg()[0]:.1f}; numpy {np.__version__}, faiss {faiss.__version__}, "
          f"faiss omp threads {faiss.omp_get_max_threads()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}")
    n = args.db_size
    rows = [] if args.only_topk else full_ranking(args, faiss, rng)

    # (b) exact top-k over 1M codes: faiss IndexBinaryFlat vs HammingIndex (numba and numpy backends) -------
    topk_rows = []
    for bits in args.topk_bits:
        db = rng.integers(0, 256, (n, bits // 8), dtype=np.uint8)
        findex = faiss.IndexBinaryFlat(bits)
        findex.add(db)
        indexes = {b: retrieval.HammingIndex(bits, num_threads=args.threads, backend=b) for b in ("numba", "numpy")}
        for index in indexes.values():
            index.add_packed(db)
        indexes["numba"].search_packed(db[:2], 5)  # compile (or load the cached kernel) outside the timing
        for nq, k in ((100, 100), (1000, 10)):
            qs = rng.integers(0, 256, (nq, bits // 8), dtype=np.uint8)
            fns = {"faiss": lambda: findex.search(qs, k), "ours": lambda: indexes["numba"].search_packed(qs, k)}
            if not args.skip_numpy_topk:
                fns["ours_numpy"] = lambda: indexes["numpy"].search_packed(qs, k)
            rounds = timed_rounds(fns, args.repeats)
            (fd, _), (od, oi) = rounds["faiss"][-1][2], rounds["ours"][-1][2]
            assert np.array_equal(fd, od), "distances differ from faiss"
            if "ours_numpy" in rounds:
                nd, ni = rounds["ours_numpy"][-1][2]
                assert np.array_equal(nd, od) and np.array_equal(ni, oi), "numba and numpy backends differ"
            for i in range(3):  # tie order: a stable argsort of all distances
                dist = retrieval.hamming_distance_packed(qs[i : i + 1], db)[0]
                assert np.array_equal(np.argsort(dist, kind="stable")[:k], oi[i])
            name = f"(b) top-{k}, {nq} queries x {n:,} codes, {bits} bits, {args.threads} thread(s)"
            print(f"{name}: distances equal faiss, indices equal a stable argsort")
            topk_rows.append((name, rounds))
            ratios = [o[0] / f[0] for o, f in zip(rounds["ours"], rounds["faiss"])]
            print(f"    ours/faiss wall per round: {' '.join(f'{r:.2f}' for r in ratios)}")

    if rows:
        print("\n| benchmark | faiss-cpu wall (CPU) s | ours wall (CPU) s | ours/faiss wall "
              "| ours 1 thread wall (CPU) s |")
        print("|---|---|---|---|---|")
        for name, r in rows:
            (fw, fc, _), (ow, oc, _), (w1, c1, _) = r["faiss"], r["ours"], r["ours_1thread"]
            print(f"| {name} | {fw:.3f} ({fc:.3f}) | {ow:.3f} ({oc:.3f}) | {ow / fw:.2f} | {w1:.3f} ({c1:.3f}) |")
    print(f"\n(b) {args.repeats} interleaved rounds; times are medians over rounds, ratios per round "
          "(median [min-max]); CPU = all threads of the process.")
    numpy_col = "" if args.skip_numpy_topk else " numpy backend wall s (/faiss) |"
    print(f"| task | faiss-cpu wall (CPU) s | ours wall (CPU) s | ours/faiss wall | ours/faiss CPU |{numpy_col}")
    print("|---|---:|---:|---:|---:|" + ("" if args.skip_numpy_topk else "---:|"))
    for name, r in topk_rows:
        fw, fc = (np.median([x[j] for x in r["faiss"]]) for j in (0, 1))
        ow, oc = (np.median([x[j] for x in r["ours"]]) for j in (0, 1))
        rw = [o[0] / f[0] for o, f in zip(r["ours"], r["faiss"])]
        rc = [o[1] / f[1] for o, f in zip(r["ours"], r["faiss"])]
        line = (f"| {name[4:]} | {fw:.4f} ({fc:.4f}) | {ow:.4f} ({oc:.4f}) | {np.median(rw):.2f} "
                f"[{min(rw):.2f}-{max(rw):.2f}] | {np.median(rc):.2f} [{min(rc):.2f}-{max(rc):.2f}] |")
        if "ours_numpy" in r:
            nw = np.median([x[0] for x in r["ours_numpy"]])
            line += f" {nw:.4f} ({np.median([x[0] / f[0] for x, f in zip(r['ours_numpy'], r['faiss'])]):.2f}) |"
        print(line)
    print(f"load avg at end: {os.getloadavg()[0]:.1f}")

if __name__ == "__main__":
    main()
