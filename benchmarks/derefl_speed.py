"""Reflection-removal speed per model preset: inference ms per megapixel and train-step time.

    python benchmarks/derefl_speed.py                                 # tiny and base, 128 px
    python benchmarks/derefl_speed.py --presets tiny base paper --size 224 --train-presets tiny base

For each preset it reports the trainable parameters, XLA's forward FLOPs at the benchmark size
(``derefl_jax.models.count_params_and_flops``), the jitted forward time (ms per image and per
megapixel) and the time of one full training step (device-side synthesis + forward + all
losses, with the perceptual VGG loss, + Adam), as `python -m train.derefl` runs it. The batch
is one image per local device, split over them with the `data` mesh; on a CPU-only host the
cores are exposed as devices (train/__init__.py) so the split uses them all. Times are the
median of ``--repeats`` calls after one warm-up (compile) call. Prints a markdown table and
writes JSON with ``--json``.

Side by side with the official DSRNet-L (PyTorch, CPU; ../shared/peers/dsrnet, torchvision stand-in
from tests/derefl/dsrnet_ref.py):

    python benchmarks/derefl_speed.py --vs-official --size 224 [--official-parts fwd train]

runs each of {ours, official} x {forward, training step} in its own subprocess (batch 1, random
weights, all parameters trained, Adam 1e-4, DSRNet's loss set: 0.3 MSE + 0.6 gradient L1 on T and
R, VGG perceptual x0.01, exclusion, reconstruction 0.2 * L1(T + R + RR, I)), and reports images/s,
CPU seconds per call (user + sys of the process: still meaningful on a loaded machine), the peak
resident memory of each process (``ru_maxrss``, compilation included) and the steady-state peak
(VmHWM reset after the first call: the memory the repeated calls need), as ratios ours / official.
Ours' forward is ``derefl_jax.predict``'s, compiled on CPU without XLA's YNNPACK fusions
(``backbones_jax.xla_cpu.inference_compiler_options``, recorded in the row's ``compiler_options``).
Ours' training step recomputes every block in the backward pass (``--remat 1``, the default;
``derefl_jax.models.remat_call``): without it DSRNet-L's step at 224² does not fit in 24 GB here;
after its first (compiling) call it hands the compiler's freed heap back to the OS, as
``train.loop.fit`` does. Where the time goes: ``benchmarks/derefl_profile.py``.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train  # noqa: E402,F401  (exposes CPU cores as devices before jax is imported)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from backbones_jax import host_memory, xla_cpu  # noqa: E402
from derefl_jax import models  # noqa: E402
from derefl_jax import predict as predict_lib  # noqa: E402


def _train_libs():
  """(parallel, train.derefl, its config module, train.state): imported only where a training step is built, so
  that a forward-only measurement holds what a ``derefl_jax.predict`` user's process holds (train.derefl brings
  optax and orbax: +40 MB of resident memory, measured)."""
  from train import derefl as train_derefl
  from train import parallel, state
  from train.configs import derefl as derefl_config
  return parallel, train_derefl, derefl_config, state


def _rusage() -> tuple[float, float, int]:
  """(user CPU s, system CPU s, minor page faults) of this process so far."""
  import resource
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime, r.ru_stime, r.ru_minflt


def _reset_peak_rss() -> None:
  """Linux: reset this process's resident-set high-water mark (VmHWM) to its current RSS."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
  except OSError:
    pass


def _proc_gb(path: str, key: str, default: float) -> float:
  """The ``key:`` line of a /proc file given in kB, as GB (``default`` where it cannot be read)."""
  try:
    with open(path) as f:
      for line in f:
        if line.startswith(key + ":"):
          return int(line.split()[1]) / 1024 ** 2
  except OSError:
    pass
  return default


def _hwm_gb() -> float:
  """VmHWM (GB): the peak RSS since the last _reset_peak_rss (or the process start)."""
  return _proc_gb("/proc/self/status", "VmHWM", float("nan"))


def _median_time(fn, repeats: int, cpu: dict | None = None, sync=jax.block_until_ready,
                 after_first=None) -> tuple[float, float]:
  """(median seconds of ``repeats`` calls after a first one, first-call seconds); ``cpu['per_call']``
  gets this process's user+sys CPU seconds per timed call (interpretable on a loaded machine) and
  ``cpu['steady_peak_gb']`` the peak RSS during the timed calls only (compilation and the first call
  excluded), ``cpu['user_s']`` / ``cpu['sys_s']`` / ``cpu['minflt']`` the user and system CPU seconds and the
  minor page faults per timed call (first touches of freshly mapped memory: system time). ``sync`` waits for a call's result (torch's CPU calls return finished: ``lambda r: r``)."""
  t0 = time.perf_counter()
  sync(fn())
  compile_s = time.perf_counter() - t0
  if cpu is not None:
    cpu["rss_before_trim_gb"] = _proc_gb("/proc/self/status", "VmRSS", float("nan"))
  if after_first is not None:
    after_first()
  if cpu is not None:
    cpu["rss_after_trim_gb"] = _proc_gb("/proc/self/status", "VmRSS", float("nan"))
  _reset_peak_rss()
  times, r0 = [], _rusage()
  for _ in range(repeats):
    t0 = time.perf_counter()
    sync(fn())
    times.append(time.perf_counter() - t0)
  if cpu is not None:
    cpu["user_s"], cpu["sys_s"], cpu["minflt"] = ((b - a) / repeats for a, b in zip(r0, _rusage()))
    cpu["per_call"] = cpu["user_s"] + cpu["sys_s"]
    cpu["steady_peak_gb"] = _hwm_gb()
  return float(np.median(times)), compile_s


def bench_preset(preset: str, *, size: int, batch: int, repeats: int, train: bool, flops: bool) -> dict:
  parallel, train_derefl, derefl_config, train_state = _train_libs()
  TrainState, compile_train_step = train_state.TrainState, train_state.compile_train_step
  mesh = parallel.make_mesh()
  model = models.build_model(preset)
  trainable, frozen = models.init_params(model, 0)
  row = {"preset": preset, "size": size, "batch": batch, "devices": len(mesh.devices.flat),
         "trainable_params": models.param_count(trainable), "frozen_params": models.param_count(frozen)}
  if flops:
    info = models.count_params_and_flops(preset, size, size, compile=False)
    row["gflops_per_image"] = info["gflops"]
  params = parallel.replicate(models.merge_params(trainable, frozen), mesh)
  x = parallel.shard_batch(np.random.default_rng(0).random((batch, size, size, 3), np.float32), mesh)

  @jax.jit
  def fwd(p, x):
    out, _ = model.apply({"params": p}, x)
    return out["T"], out["R"]

  sec, comp = _median_time(lambda: fwd(params, x), repeats)
  mp = batch * size * size / 1e6
  row.update(infer_ms_per_image=1e3 * sec / batch, infer_ms_per_mp=1e3 * sec / mp, infer_compile_s=comp)
  del params
  if train:
    cfg = derefl_config.get_config("paper")
    loss_config = cfg.loss.to_dict()
    step = functools.partial(train_derefl.train_step, model=model, loss_config=loss_config,
                             vgg_apply=models.perceptual_vgg_apply(model),
                             syn_kwargs=train_derefl._synthesis_kwargs(cfg))
    with cfg.unlocked():
      cfg.num_steps = 1000
    state = parallel.replicate(TrainState.create(params=trainable, tx=train_derefl.make_optimizer(cfg),
                                                 rng=jax.random.PRNGKey(0), frozen=frozen), mesh)
    rng = np.random.default_rng(1)
    batch_np = {"t": rng.random((batch, size, size, 3), np.float32), "r": rng.random((batch, size, size, 3), np.float32),
                "blended": np.zeros((batch, size, size, 3), np.float32), "synthetic": np.ones(batch, bool)}
    b = parallel.shard_batch(batch_np, mesh)
    compiled = compile_train_step(step, mesh)
    holder = {"state": state}

    def one():
      holder["state"], metrics = compiled(holder["state"], b, jax.random.PRNGKey(2))
      return metrics["loss"]

    sec, comp = _median_time(one, repeats)
    row.update(train_step_s=sec, train_img_per_s=batch / sec, train_compile_s=comp)
  return row


# ------------------------------------------------------------------ side by side with the official DSRNet-L
def _peak_rss_gb() -> float:
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # KB on Linux


def _inputs(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(blended x, T, R) random NHWC float32 images of one batch, the same in every measurement."""
  rng = np.random.default_rng(0)
  x = rng.random((1, size, size, 3), np.float32)
  return x, rng.random((1, size, size, 3), np.float32), rng.random((1, size, size, 3), np.float32) * 0.3


def official_call(part: str, size: int):
  """The official DSRNet-L (torch, CPU) forward or training step as a no-argument call (returns finished)."""
  import torch
  sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "derefl"))
  import dsrnet_ref
  arch, vgg_mod, losses = dsrnet_ref.import_official()
  torch.manual_seed(0)
  x, t_img, r_img = _inputs(size)
  nchw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()  # noqa: E731
  net, vgg = arch.dsrnet_l(), vgg_mod.Vgg19().eval()
  xi = nchw(x)
  if part == "fwd":
    net.eval()

    def fn():
      with torch.no_grad():
        return net(xi, vgg(xi))
    return fn
  net.train()
  tt, tr = nchw(t_img), nchw(r_img)
  ld = losses.init_loss(None)
  vgg_loss = losses.VGGLoss(vgg, normalize=False)  # its normalize=True calls .cuda(): set it on the CPU
  vgg_loss.normalize = losses.MeanShift([0.485, 0.456, 0.406], [0.229, 0.224, 0.225], norm=True)
  opt = torch.optim.Adam(net.parameters(), lr=1e-4, betas=(0.9, 0.999))

  def fn():  # dsrnet_model_sirs.py optimize_parameters, lambda_vgg 0.01, lambda_rec 0.2
    out_t, out_r, out_rr = net(xi, vgg(xi))
    loss = (ld["t_pixel"](out_t, tt) + ld["r_pixel"](out_r, tr) + vgg_loss(out_t, tt) * 0.01
            + ld["exclu"](out_t, out_r) + ld["recons"](out_t, out_r, out_rr, xi) * 0.2)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss
  return fn


def ours_call(part: str, size: int, remat: bool = True, remat_max_stride: int = 0):
  """``(call, compiled, extra)``: ours' DSRNet-L forward (``derefl_jax.predict``'s jitted forward: T, R, RR)
  or training step (``train.derefl.train_step``, ``dsrnet_l`` config, Adam; ``remat`` recomputes the
  blocks in the backward, those on feature maps at most ``remat_max_stride`` times smaller than the input
  when it is > 0) as a no-argument call (asynchronous), its compiled executable, and
  ``{"compile_s", "xla_temp_gb", "compiler_options"[, "xla_args_gb"]}``."""
  x, t_img, r_img = _inputs(size)
  model = models.build_model("dsrnet_l", remat=(part == "train" and remat), remat_max_stride=remat_max_stride)
  trainable, frozen = models.init_params(model, 0)
  t0 = time.perf_counter()
  if part == "fwd":
    params = models.merge_params(trainable, frozen)
    compiled = predict_lib.make_forward_layers(model).lower(params, x).compile()

    def call():
      return compiled(params, x)
  else:
    _, train_derefl, derefl_config, train_state = _train_libs()
    TrainState = train_state.TrainState
    cfg = derefl_config.get_config("dsrnet_l")
    step = functools.partial(train_derefl.train_step, model=model, loss_config=cfg.loss.to_dict(),
                             vgg_apply=models.perceptual_vgg_apply(model),
                             syn_kwargs=train_derefl._synthesis_kwargs(cfg))
    state = TrainState.create(params=trainable, tx=train_derefl.make_optimizer(cfg), rng=jax.random.PRNGKey(0),
                              frozen=frozen)
    batch = {"t": t_img, "r": r_img, "blended": np.clip(t_img + r_img, 0, 1), "synthetic": np.zeros(1, bool)}
    compiled = jax.jit(step, donate_argnums=(0,)).lower(state, batch, jax.random.PRNGKey(2)).compile()
    holder = {"state": state}

    def call():
      holder["state"], m = compiled(holder["state"], batch, jax.random.PRNGKey(2))
      return m["loss"]
  mem = compiled.memory_analysis()
  extra = {"compile_s": time.perf_counter() - t0, "xla_temp_gb": mem.temp_size_in_bytes / 1e9,
           "compiler_options": xla_cpu.inference_compiler_options() if part == "fwd" else None}
  if part == "train":
    extra["xla_args_gb"] = mem.argument_size_in_bytes / 1e9
  return call, compiled, extra


def _child(kind: str, part: str, size: int, repeats: int, remat: bool = True, remat_max_stride: int = 0) -> dict:
  """One measurement in this (fresh) process: kind 'ours' | 'official', part 'fwd' | 'train'."""
  cpu = {}
  if kind == "official":
    import torch
    sec, first = _median_time(official_call(part, size), repeats, cpu, sync=lambda r: r)
    extra = {"torch_threads": torch.get_num_threads()}
  else:
    call, _, compiled_info = ours_call(part, size, remat, remat_max_stride)
    # as train.loop.fit (after its first, compiling, step) and derefl_jax.predict (after a new shape's first
    # call) do: the compiler's freed heap back to the OS
    sec, first = _median_time(call, repeats, cpu, after_first=host_memory.release_free_heap)
    if part == "fwd":  # the forward's first call as before: compilation included
      first += compiled_info["compile_s"]
    extra = {"remat": bool(part == "train" and remat),
             "remat_max_stride": remat_max_stride if part == "train" and remat else None,
             "devices": jax.device_count(), **compiled_info}
  return {"kind": kind, "part": part, "size": size, "seconds": sec, "first_call_s": first,
          "cpu_s_per_call": cpu["per_call"], "user_s_per_call": cpu["user_s"], "sys_s_per_call": cpu["sys_s"],
          "minflt_per_call": cpu["minflt"], "peak_rss_gb": _peak_rss_gb(), "steady_peak_gb": cpu["steady_peak_gb"],
          "rss_after_first_gb": cpu["rss_before_trim_gb"], "rss_after_trim_gb": cpu["rss_after_trim_gb"], **extra}


def _mem_available_gb() -> float:
  return _proc_gb("/proc/meminfo", "MemAvailable", float("inf"))


def vs_official(size: int, parts: list[str], repeats: int, min_free_gb: float = 18.0, remat: bool = True,
                remat_max_stride: int = 0) -> list[dict]:
  import subprocess
  rows = []
  for part in parts:
    for kind in ("official", "ours"):
      env = dict(os.environ, VPJ_NO_CPU_SPLIT="1")  # batch 1: one device (XLA uses its intra-op threads)
      env.pop("XLA_FLAGS", None)  # this process's device split must not reach the child
      if part == "train" and _mem_available_gb() < min_free_gb:
        row = {"kind": kind, "part": part, "size": size,
               "error": f"skipped: {_mem_available_gb():.1f} GB available < {min_free_gb} GB (--min-free-gb)"}
        rows.append(row)
        print(json.dumps(row), flush=True)
        continue
      cmd = [sys.executable, __file__, "--_child", kind, part, "--size", str(size), "--repeats", str(repeats),
             "--remat", str(int(remat)), "--remat-max-stride", str(remat_max_stride)]
      t0 = time.perf_counter()
      res = subprocess.run(cmd, env=env, capture_output=True, text=True)
      line = [l for l in res.stdout.splitlines() if l.startswith("{")]
      if res.returncode or not line:
        row = {"kind": kind, "part": part, "size": size, "error": (res.stderr or res.stdout)[-400:]}
      else:
        row = json.loads(line[-1])
      row["wall_s"] = time.perf_counter() - t0
      row["glibc_tunables"] = os.environ.get("GLIBC_TUNABLES", "")
      rows.append(row)
      print(json.dumps(row), flush=True)
  lines = ["| part | official s/img | ours s/img | speed (ours img/s / official) | official CPU-s/img | ours CPU-s/img "
           "| CPU ratio (official / ours) | official peak GB | ours peak GB | memory ratio (ours / official) "
           "| official steady peak GB | ours steady peak GB | steady ratio |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for part in parts:
    o = next(r for r in rows if r["kind"] == "official" and r["part"] == part)
    u = next(r for r in rows if r["kind"] == "ours" and r["part"] == part)
    if "seconds" in o and "seconds" in u:
      lines.append(f"| {part} {size}² | {o['seconds']:.2f} | {u['seconds']:.2f} | {o['seconds'] / u['seconds']:.2f}x "
                   f"| {o['cpu_s_per_call']:.1f} | {u['cpu_s_per_call']:.1f} | {o['cpu_s_per_call'] / u['cpu_s_per_call']:.2f}x "
                   f"| {o['peak_rss_gb']:.1f} | {u['peak_rss_gb']:.1f} | {u['peak_rss_gb'] / o['peak_rss_gb']:.2f} "
                   f"| {o['steady_peak_gb']:.1f} | {u['steady_peak_gb']:.1f} | {u['steady_peak_gb'] / o['steady_peak_gb']:.2f} |")
    else:
      lines.append(f"| {part} {size}² | {o.get('seconds', 'failed')} | {u.get('seconds', 'failed')} "
                   "| - | - | - | - | - | - | - | - | - | - |")
  print("\n".join(lines))
  return rows


def to_markdown(rows: list[dict]) -> str:
  head = ("| preset | trainable params | GFLOPs/img | size | batch (devices) | infer ms/img | infer ms/MP "
          "| train step s | train img/s |")
  lines = [head, "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    g = f"{r['gflops_per_image']:.2f}" if "gflops_per_image" in r else "-"
    ts = f"{r['train_step_s']:.3f}" if "train_step_s" in r else "-"
    ti = f"{r['train_img_per_s']:.2f}" if "train_img_per_s" in r else "-"
    lines.append(f"| {r['preset']} | {r['trainable_params'] / 1e6:.3f}M | {g} | {r['size']}² | {r['batch']} "
                 f"({r['devices']}) | {r['infer_ms_per_image']:.1f} | {r['infer_ms_per_mp']:.0f} | {ts} | {ti} |")
  return "\n".join(lines)


def main(argv=None) -> list[dict]:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--presets", nargs="+", default=["tiny", "base"], choices=sorted(models.PRESETS))
  p.add_argument("--train-presets", nargs="*", default=None,
                 help="presets whose train step is timed (default: all of --presets)")
  p.add_argument("--size", type=int, default=128, help="square image side (multiple of 32)")
  p.add_argument("--batch", type=int, default=0, help="global batch (default: one image per local device)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--no-flops", action="store_true", help="skip XLA's FLOP count (saves a lowering)")
  p.add_argument("--json", default="", help="write the rows to this JSON file")
  p.add_argument("--vs-official", action="store_true", help="DSRNet-L side by side with the official PyTorch code")
  p.add_argument("--official-parts", nargs="+", default=["fwd", "train"], choices=["fwd", "train"])
  p.add_argument("--min-free-gb", type=float, default=18.0,
                 help="skip a training-step child when less memory is available (official DSRNet-L at 224: ~17 GB)")
  p.add_argument("--remat", type=int, default=1, choices=[0, 1],
                 help="ours, training step: recompute block activations in the backward (models.remat_call)")
  p.add_argument("--remat-max-stride", type=int, default=0,
                 help="ours, training step, with --remat 1: recompute only blocks on feature maps at most this many "
                      "times smaller than the input (models.ReflectionRemovalNet.remat_max_stride; 0 = every block)")
  p.add_argument("--_child", nargs=2, default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args._child:
    print(json.dumps(_child(args._child[0], args._child[1], args.size, args.repeats, bool(args.remat),
                            args.remat_max_stride)), flush=True)
    return []
  if args.vs_official:
    rows = vs_official(args.size, args.official_parts, args.repeats, args.min_free_gb, bool(args.remat),
                       args.remat_max_stride)
    if args.json:
      Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows
  batch = args.batch or jax.local_device_count()
  train_presets = args.presets if args.train_presets is None else args.train_presets
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} device(s) "
        f"[{jax.devices()[0].device_kind}], host {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU(s)", flush=True)
  rows = []
  for preset in args.presets:
    row = bench_preset(preset, size=args.size, batch=batch, repeats=args.repeats, train=preset in train_presets,
                       flops=not args.no_flops)
    rows.append(row)
    print(json.dumps(row), flush=True)
  print(to_markdown(rows))
  if args.json:
    Path(args.json).write_text(json.dumps(rows, indent=2))
  return rows


if __name__ == "__main__":
  main()
