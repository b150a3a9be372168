"""Where DSRNet-L's time goes: ours (XLA:CPU, per-thunk trace) vs the official (PyTorch profiler).

    python benchmarks/derefl_profile.py --size 224 --part train [--kinds ours official] [--json out.json]
    python benchmarks/derefl_profile.py --size 224 --part train --matmuls-alone [--remat 0] [--remat-max-stride 4]

For ``benchmarks/derefl_speed.py --vs-official`` (what it times, and why the ratios are what they
are). Each kind runs in its own subprocess, the same step that benchmark times (batch 1, random
weights, DSRNet's loss set, Adam; ours with ``remat``), one warm-up call, then ``--repeats`` calls
under the profiler:

* ours: ``jax.profiler`` records one event per XLA:CPU thunk (a fusion, a convolution, a custom
  call); each event is mapped to its HLO instruction in the compiled module, and from there to
  the kind of work (convolution forward / input gradient / filter gradient, matmul ("dot"), and
  the elementwise or reduction fusions) and to the jax op that made it (``metadata op_name``,
  which says ``transpose(jvp(...))`` for the backward and names the flax module);
* official: ``torch.profiler`` self CPU time per aten op (``mkldnn_convolution``,
  ``convolution_backward``, ``addmm`` ...).

``--matmuls-alone`` (ours) answers what the matmuls alone cost: every dot and convolution of the compiled step
is counted in its HLO (shapes, FLOPs, and whether XLA:CPU gave a dot to YNNPACK or to Eigen), and each is
compiled and timed on its own with the same shapes and path; the sum is the time the step would take if it did
nothing else (``hlo_matmuls``, ``time_matmuls``).

Times are the summed durations of the ops (self time, in seconds per call); on two cores an op's
own threads run inside its event, so the sum is close to the wall time of the call. Prints the
top categories and ops of each and writes JSON with ``--json``.
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _hlo_index(hlo_text: str) -> dict[str, dict]:
  """HLO instruction name -> {"op": opcode, "kind": fusion kind or conv role, "op_name": metadata op_name}."""
  out, comp_ops, comp = {}, collections.defaultdict(list), None
  for line in hlo_text.splitlines():
    c = re.match(r"\s*(?:ENTRY )?(%?[\w.\-]+) [^=]*\{\s*$", line)
    if c and "=" not in line.split("{")[0]:
      comp = c.group(1).lstrip("%")
      continue
    m = re.match(r"\s*(?:ROOT )?(%?[\w.\-]+) = [^=]*?\b([a-z][\w\-]*)\(", line)
    if not m:
      continue
    name, opcode = m.group(1).lstrip("%"), m.group(2)
    if comp is not None:
      comp_ops[comp].append((opcode, line.strip()))
    op_name = re.search(r'op_name="([^"]*)"', line)
    kind = re.search(r"kind=(k\w+)", line)
    calls = re.search(r"calls=(%?[\w.\-]+)", line)
    out[name] = {"op": opcode, "kind": kind.group(1) if kind else "",
                 "op_name": op_name.group(1) if op_name else "", "ynn": "__ynn_fusion" in line,
                 "calls": calls.group(1).lstrip("%") if calls else "", "line": line.strip()[:400]}
  for info in out.values():  # a fusion's heavy op (a convolution or dot inside it), with its line
    ops = comp_ops.get(info["calls"], [])
    inner = [(o, ln) for o, ln in ops if o in ("convolution", "dot")]
    if info["op"] == "fusion" and inner:
      info["inner"], info["inner_line"] = inner[0]
    info["reduces"] = sum(o == "reduce" for o, _ in ops)
  return out


def _role(info: dict) -> str:
  """A coarse category of one thunk's work: convolutions by their dimension labels, then the rest."""
  op, line = info.get("inner", info["op"]), info.get("inner_line", info["line"])
  backward = " (backward)" if "transpose(" in info["op_name"] else ""
  # XLA:CPU hands some fusions to YNNPACK (backend_config "__ynn_fusion"): a dot there may carry the
  # elementwise work and reductions around it (e.g. a LayerNorm), so it is not a plain matmul.
  ynn = "ynn " if info.get("ynn") else ""
  extra = " + reduce" if info.get("reduces") and op == "dot" else ""
  if op == "dot":
    return f"{ynn}dot{extra}{backward}"
  if ynn:
    return f"ynn fusion{' (reduce)' if info.get('reduces') else ''}{backward}"
  if op == "convolution":
    dl = re.search(r"dim_labels=([\w>-]+)", line)
    window = re.search(r"window=\{size=(\S+?)[\s}]", line)
    groups = re.search(r"feature_group_count=(\d+)", line)
    return f"conv {window.group(1) if window else ''}{' grouped' if groups else ''}{backward}"
  if op == "fusion":
    return f"fusion {info['kind']}{backward}"
  return op + backward


def _short_source(op_name: str) -> str:
  """``jit(step)/jvp(FeaturePyramidVGG)/dec_0/...`` -> the first module path words (trimmed)."""
  s = re.sub(r"^jit\([^)]*\)/", "", op_name)
  s = re.sub(r"(transpose|jvp|checkpoint|remat|custom_vjp_call|pjit|jit)\(([^)]*)\)", r"\2", s)
  parts = [p for p in s.split("/") if p and not p.startswith("while")]
  return "/".join(parts[:4])


def _speed_module():
  """``benchmarks/derefl_speed.py``: the steps it times are the steps profiled here (one definition)."""
  sys.path.insert(0, str(ROOT / "benchmarks"))
  import derefl_speed
  return derefl_speed


def profile_ours(size: int, part: str, repeats: int) -> dict:
  import jax
  step, compiled, _ = _speed_module().ours_call(part, size, remat=True)

  def call():
    return jax.block_until_ready(step())

  index = _hlo_index(compiled.as_text())
  call()
  trace_dir = tempfile.mkdtemp(prefix="derefl_prof_")
  t0 = time.perf_counter()
  jax.profiler.start_trace(trace_dir)
  for _ in range(repeats):
    call()
  jax.profiler.stop_trace()
  wall = (time.perf_counter() - t0) / repeats
  pd = jax.profiler.ProfileData.from_file(sorted(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True))[-1])
  # An asynchronous thunk (an Eigen dot) returns once its work is queued; an "end: <name>" event on the
  # worker thread marks when it finished, so its time runs from the launch to that marker.
  starts, ends = collections.defaultdict(list), collections.defaultdict(list)
  for plane in pd.planes:
    if plane.name != "/host:CPU":
      continue
    for line in plane.lines:
      if not line.name.startswith("tf_XLA"):
        continue
      for e in line.events:
        n = e.name
        if n.startswith(("ThreadpoolListener", "ThunkExecutor")):
          continue
        if n.startswith("end: "):
          ends[n[5:]].append(e.end_ns)
        else:
          starts[n].append((e.start_ns, e.end_ns))
  by_op = collections.Counter()
  for n, spans in starts.items():
    done = sorted(ends.get(n, []))
    if len(done) == len(spans):
      by_op[n] = sum(max(end, e) - s for (s, e), end in zip(sorted(spans), done)) / 1e9 / repeats
    else:
      by_op[n] = sum(e - s for s, e in spans) / 1e9 / repeats
  cats, srcs = collections.Counter(), collections.Counter()
  top = []
  for n, s in by_op.most_common():
    info = index.get(n)
    if info is None:
      cats["(not in HLO)"] += s
      continue
    cat = _role(info)
    cats[cat] += s
    srcs[(cat, _short_source(info["op_name"]))] += s
    if len(top) < 40:
      top.append({"thunk": n, "seconds": s, "category": cat, "op_name": info["op_name"][:200],
                  "hlo": info.get("inner_line", info["line"])[:300]})
  return {"kind": "ours", "part": part, "size": size, "wall_s": wall, "op_s": sum(by_op.values()),
          "categories": dict(cats.most_common()),
          "sources": [{"category": c, "source": src, "seconds": s} for (c, src), s in srcs.most_common(40)],
          "top": top}


def hlo_matmuls(hlo_text: str) -> list[dict]:
  """Every dot and convolution of a compiled HLO module: shapes, dimension numbers, FLOPs, XLA:CPU path.

  One dict per distinct op, with its ``count``: ``op`` 'dot' | 'convolution'; ``lhs``/``rhs`` shapes; for a dot,
  ``contract``/``batch`` = ((lhs dims), (rhs dims)) and ``ynn`` (inside a YNNPACK fusion, else Eigen); for a
  convolution, ``window`` (XLA's text: size, pad, stride, dilations), ``dim_labels`` and ``groups``. ``flops`` is
  2 x the multiply-adds of one call (a convolution's counted over its window, zero taps of a dilation included).
  """
  shapes, comp_of, ynn_comps, comp = {}, {}, set(), None
  lines = hlo_text.splitlines()
  for line in lines:
    c = re.match(r"\s*(?:ENTRY )?%?([\w.\-]+) [^=]*\{\s*$", line)
    if c and "=" not in line.split("{")[0]:
      comp = c.group(1)
      continue
    m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = \w+\[([\d,]*)\]", line)
    if m:
      shapes[m.group(1)] = tuple(int(v) for v in m.group(2).split(",") if v)
      comp_of[m.group(1)] = comp
    if "__ynn_fusion" in line:
      called = re.search(r"calls=%?([\w.\-]+)", line)
      if called:
        ynn_comps.add(called.group(1))

  def dims(line, key):
    m = re.search(key + r"=\{([\d,]*)\}", line)
    return tuple(int(v) for v in m.group(1).split(",") if v) if m else ()

  found = collections.Counter()
  for line in lines:
    m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = \w+\[([\d,]*)\]\S* (dot|convolution)\((.*?)\)", line)
    if not m:
      continue
    out = tuple(int(v) for v in m.group(2).split(",") if v)
    lhs, rhs = (shapes[o.strip().split(" ")[-1].lstrip("%")] for o in m.group(4).split(",")[:2])
    if m.group(3) == "dot":
      contract = (dims(line, "lhs_contracting_dims"), dims(line, "rhs_contracting_dims"))
      k = int(np.prod([lhs[i] for i in contract[0]]))
      key = ("dot", lhs, rhs, contract, (dims(line, "lhs_batch_dims"), dims(line, "rhs_batch_dims")),
             comp_of[m.group(1)] in ynn_comps, 2 * int(np.prod(out)) * k)
    else:
      window = re.search(r"window=\{([^}]*)\}", line).group(1)
      labels = re.search(r"dim_labels=(\S+?)[,\s]", line + " ").group(1)
      groups = re.search(r"feature_group_count=(\d+)", line)
      size = [int(v) for v in re.search(r"size=([\dx]+)", window).group(1).split("x")]
      cin = rhs[labels.split("_")[1].split("->")[0].index("i")]
      key = ("convolution", lhs, rhs, window, labels, int(groups.group(1)) if groups else 1,
             2 * int(np.prod(out)) * int(np.prod(size)) * cin)
    found[key] += 1
  rows = []
  for key, n in found.items():
    if key[0] == "dot":
      _, lhs, rhs, contract, batch, ynn, flops = key
      rows.append({"op": "dot", "lhs": lhs, "rhs": rhs, "contract": contract, "batch": batch, "ynn": ynn,
                   "flops": flops, "count": n})
    else:
      _, lhs, rhs, window, labels, groups, flops = key
      rows.append({"op": "convolution", "lhs": lhs, "rhs": rhs, "window": window, "dim_labels": labels,
                   "groups": groups, "flops": flops, "count": n})
  return sorted(rows, key=lambda r: -r["flops"] * r["count"])


def _conv_spec(labels: str) -> tuple[str, str, str]:
  """XLA ``dim_labels`` (e.g. ``b01f_01io->b01f``) -> jax ``dimension_numbers`` (``NHWC``, ``HWIO``, ``NHWC``)."""
  lhs, rest = labels.split("_", 1)
  rhs, out = rest.split("->")
  io = {"b": "N", "f": "C", "0": "H", "1": "W", "i": "I", "o": "O"}
  return tuple("".join(io[ch] for ch in spec) for spec in (lhs, rhs, out))


def time_matmuls(rows: list[dict], repeats: int = 3) -> dict:
  """Each op of :func:`hlo_matmuls` compiled and timed on its own (median of ``repeats`` calls, both cores) on
  the path the module gave it (a dot: YNNPACK or Eigen), and each dot on both paths too. Returns seconds per call
  of the module (count x time) for dots and convolutions, and the dots' total with the faster path for each."""
  import jax
  eigen = {"xla_cpu_experimental_ynn_fusion_type": ""}
  rng = np.random.default_rng(0)

  def timed(fn, args, options):
    f = jax.jit(fn, compiler_options=options) if options else jax.jit(fn)
    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(f(*args))
      ts.append(time.perf_counter() - t0)
    return float(np.median(ts))

  total = collections.Counter()
  for r in rows:
    a, b = (jax.numpy.asarray(rng.random(s, np.float32)) for s in (r["lhs"], r["rhs"]))
    if r["op"] == "dot":
      def fn(a, b, r=r):
        return jax.lax.dot_general(a, b, (r["contract"], r["batch"]))
      r["ynn_s"], r["eigen_s"] = timed(fn, (a, b), None), timed(fn, (a, b), eigen)
      r["seconds"] = r["ynn_s"] if r["ynn"] else r["eigen_s"]
      total["dot_s"] += r["count"] * r["seconds"]
      total["dot_best_s"] += r["count"] * min(r["ynn_s"], r["eigen_s"])
      total["dot_tflops"] += r["count"] * r["flops"] / 1e12
    else:
      w = dict(kv.split("=") for kv in r["window"].split())
      two = lambda key, d: [int(v) for v in w.get(key, d).split("x")]  # noqa: E731
      pad = [tuple(int(v) for v in p.split("_")) for p in w["pad"].split("x")] if "pad" in w else "VALID"
      def fn(a, b, r=r, pad=pad, two=two, w=w):
        if "rhs_reversal" in w:
          b = jax.numpy.flip(b, [i for i, ch in enumerate(_conv_spec(r["dim_labels"])[1]) if ch in "HW"])
        return jax.lax.conv_general_dilated(a, b, two("stride", "1x1"), pad, two("lhs_dilate", "1x1"),
                                            two("rhs_dilate", "1x1"), _conv_spec(r["dim_labels"]),
                                            feature_group_count=r["groups"])
      r["seconds"] = timed(fn, (a, b), None)
      total["conv_s"] += r["count"] * r["seconds"]
      total["conv_tflops"] += r["count"] * r["flops"] / 1e12
    r["gflop_per_s"] = r["flops"] / r["seconds"] / 1e9
  return dict(total)


def matmuls_alone(size: int, part: str, remat: bool, remat_max_stride: int, repeats: int) -> dict:
  """Ours' compiled step (or forward): its dots and convolutions counted in the HLO and timed one by one."""
  os.environ.setdefault("VPJ_NO_CPU_SPLIT", "1")  # batch 1 on one XLA device, as the timed runs
  _, compiled, info = _speed_module().ours_call(part, size, remat=remat, remat_max_stride=remat_max_stride)
  rows = hlo_matmuls(compiled.as_text())
  del compiled
  cost = {"xla_temp_gb": info["xla_temp_gb"], "n_dots": sum(r["count"] for r in rows if r["op"] == "dot"),
          "n_convolutions": sum(r["count"] for r in rows if r["op"] == "convolution")}
  totals = time_matmuls(rows, repeats)
  return {"kind": "ours", "part": part, "size": size, "remat": remat, "remat_max_stride": remat_max_stride,
          **cost, **totals, "ops": [{**r, "lhs": list(r["lhs"]), "rhs": list(r["rhs"])} for r in rows]}


def profile_official(size: int, part: str, repeats: int) -> dict:
  import torch
  call = _speed_module().official_call(part, size)
  call()
  t0 = time.perf_counter()
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(repeats):
      call()
  wall = (time.perf_counter() - t0) / repeats
  ops = collections.Counter()
  for ev in prof.key_averages():
    ops[ev.key] += ev.self_cpu_time_total / 1e6 / repeats
  return {"kind": "official", "part": part, "size": size, "wall_s": wall, "op_s": sum(ops.values()),
          "torch_threads": torch.get_num_threads(),
          "top": [{"op": k, "seconds": s} for k, s in ops.most_common(30)]}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--size", type=int, default=224)
  p.add_argument("--part", choices=["fwd", "train"], default="train")
  p.add_argument("--kinds", nargs="+", default=["ours", "official"], choices=["ours", "official"])
  p.add_argument("--repeats", type=int, default=1)
  p.add_argument("--json", default="")
  p.add_argument("--matmuls-alone", action="store_true",
                 help="ours: count the dots and convolutions of the compiled step (or forward) in its HLO and time "
                      "each on its own (what the matmuls alone cost)")
  p.add_argument("--remat", type=int, default=1, choices=[0, 1], help="with --matmuls-alone: ours' step recomputes")
  p.add_argument("--remat-max-stride", type=int, default=0, help="with --matmuls-alone: as derefl_speed.py's")
  p.add_argument("--child", default="", help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  if a.matmuls_alone:
    r = matmuls_alone(a.size, a.part, bool(a.remat), a.remat_max_stride, max(a.repeats, 3))
    print(f"ours {a.part} at {a.size}² (remat {a.remat}, remat_max_stride {a.remat_max_stride}): "
          f"{r['n_dots']} dots, {r['dot_tflops']:.3f} TFLOPs, alone {r['dot_s']:.2f} s "
          f"({r['dot_best_s']:.2f} s with the faster of YNNPACK / Eigen for each); "
          f"{r['n_convolutions']} convolutions, {r['conv_tflops']:.3f} TFLOPs, alone {r['conv_s']:.2f} s")
    for row in sorted(r["ops"], key=lambda o: -o["count"] * o["seconds"])[:15]:
      path = ("ynn" if row["ynn"] else "eigen") if row["op"] == "dot" else row["window"]
      print(f"  {row['count'] * row['seconds']:6.3f} s  x{row['count']:<4} {row['op']:<11} {tuple(row['lhs'])} . "
            f"{tuple(row['rhs'])}  {path}  {row['gflop_per_s']:.0f} GFLOP/s")
    if a.json:
      Path(a.json).write_text(json.dumps(r, indent=1))
    return r
  if a.child:
    fn = profile_ours if a.child == "ours" else profile_official
    print("RESULT " + json.dumps(fn(a.size, a.part, a.repeats)), flush=True)
    return None
  results = []
  for kind in a.kinds:
    if kind == "official" and not (ROOT.parent / "shared" / "peers" / "dsrnet").is_dir():
      print("official: ../shared/peers/dsrnet is absent; skipped")
      continue
    env = dict(os.environ, VPJ_NO_CPU_SPLIT="1")  # as derefl_speed's children: batch 1 on one XLA device
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, __file__, f"--child={kind}", f"--size={a.size}", f"--part={a.part}",
                          f"--repeats={a.repeats}"], capture_output=True, text=True, env=env)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode or not line:
      raise RuntimeError(f"{kind} child failed:\n{out.stderr[-3000:]}")
    r = json.loads(line[-1][7:])
    results.append(r)
    print(f"\n## {kind} {a.part} at {a.size}²: {r['wall_s']:.2f} s per call, ops sum {r['op_s']:.2f} s")
    if kind == "ours":
      for c, s in r["categories"].items():
        print(f"  {s:7.3f} s  {c}")
      print("  top thunks:")
      for row in r["top"][:12]:
        print(f"  {row['seconds']:7.3f} s  {row['category']:<24} {row['hlo'][:150]}")
      print("  by source:")
      for row in r["sources"][:25]:
        print(f"  {row['seconds']:7.3f} s  {row['category']:<28} {row['source']}")
    else:
      for row in r["top"][:20]:
        print(f"  {row['seconds']:7.3f} s  {row['op']}")
  if a.json:
    Path(a.json).write_text(json.dumps(results, indent=1))
  return results


if __name__ == "__main__":
  main()
