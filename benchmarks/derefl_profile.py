"""Where DSRNet-L's time goes: ours (XLA:CPU, per-thunk trace) vs the official (PyTorch profiler).

    python benchmarks/derefl_profile.py --size 224 --part train [--kinds ours official] [--json out.json]

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
  p.add_argument("--child", default="", help=argparse.SUPPRESS)
  a = p.parse_args(argv)
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
