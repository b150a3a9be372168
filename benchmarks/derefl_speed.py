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

from derefl_jax import models  # noqa: E402
from train import derefl as train_derefl  # noqa: E402
from train import parallel  # noqa: E402
from train.configs import derefl as derefl_config  # noqa: E402
from train.state import TrainState, compile_train_step  # noqa: E402


def _median_time(fn, repeats: int) -> tuple[float, float]:
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), compile_s


def bench_preset(preset: str, *, size: int, batch: int, repeats: int, train: bool, flops: bool) -> dict:
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
  args = p.parse_args(argv)
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
