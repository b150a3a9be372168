"""MVREC protocol speed: 3 K x 5 samplings x (Zip-Adapter + Zip-Adapter-F, 500 steps) on one category.

Uses the official transistor feature buffers (22 support / 21 query instances, 27 views x 768,
4 classes) when found (``--features_dir``, default ../shared/fixtures/mvrec_official), otherwise
random fp16 features of the same shape. Reports wall time and process CPU time (user+sys: the
honest cost on a shared machine) for each precision and device count, the accuracies, and the
multi-view feature-extraction throughput of a random AlphaCLIP (``--extract``: tiny, ViT-B/16,
ViT-L/14 at 224 px, 27 views per instance). The XLA host device count is set to the number of
cores before jax is imported (one XLA:CPU device computes on about one core).

  python benchmarks/mvrec_protocol.py [--precisions float32,official] [--devices 1,2]
      [--extract tiny,ViT-B/16] [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

NCORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={NCORES}").strip()

import jax  # noqa: E402  pylint: disable=g-import-not-at-top
import numpy as np  # noqa: E402

from mvrec_jax import episodes  # noqa: E402

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "mvrec_official"


def _cpu() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def _load(features_dir: Path):
  if (features_dir / "transistor_support.pt").is_file():
    from mvrec_jax import features  # pylint: disable=import-outside-toplevel
    s = features.load_official_features(features_dir / "transistor_support.pt", cls_only=True)
    q = features.load_official_features(features_dir / "transistor_query.pt", cls_only=True)
    return "official transistor buffers", s.features, s.labels, q.features, q.labels
  rng = np.random.default_rng(0)
  s_lab = np.repeat(np.arange(4), [5, 6, 6, 5])
  q_lab = np.repeat(np.arange(4), [6, 5, 5, 5])
  centers = rng.normal(size=(4, 768))
  s = (centers[s_lab][:, None] + rng.normal(size=(22, 27, 768))).astype(np.float16)
  q = (centers[q_lab][:, None] + rng.normal(size=(21, 27, 768))).astype(np.float16)
  return "random features (official buffers not found)", s, s_lab, q, q_lab


def bench_protocol(data, precision: str, num_devices: int, steps: int) -> dict:
  _, s, s_lab, q, q_lab = data
  devices = jax.local_devices()[:num_devices]
  c0, t0 = _cpu(), time.perf_counter()
  res = episodes.evaluate_protocol(s, s_lab, q, q_lab, 4, classifiers=("zip_adapter", "zip_adapter_f"),
                                   precision=precision, devices=devices, zip_f=dict(steps=steps),
                                   progress=False)
  wall, cpu = time.perf_counter() - t0, _cpu() - c0
  acc = {f"{c} K={k}": {"multi_view": round(float(np.mean(e["multi_view"])), 4),
                        "view0": round(float(np.mean(e["view0"])), 4)}
         for c, per_k in res.items() for k, e in per_k.items()}
  return {"precision": precision, "devices": len(devices), "steps": steps, "wall_s": round(wall, 1),
          "cpu_s": round(cpu, 1), "accuracy": acc}


def bench_extract(preset: str, instances: int) -> dict:
  from backbones_jax import alpha_clip  # pylint: disable=import-outside-toplevel
  from mvrec_jax import features  # pylint: disable=import-outside-toplevel
  if preset == "tiny":
    spec, size = alpha_clip.tiny_alpha_clip_spec(), 32
  else:
    spec = alpha_clip.alpha_clip_spec(preset)
    size = spec.vision.image_size
  model, params = alpha_clip.init_alpha_clip(spec, seed=0)
  enc = features.make_view_encoder(features.alpha_clip_encode_fn(model))
  rng = np.random.default_rng(0)
  imgs = rng.normal(size=(instances, 27, size, size, 3)).astype(np.float32)
  alps = rng.normal(size=(instances, 27, size, size, 1)).astype(np.float32)
  features.encode_views(enc, params, imgs, alps)  # compile
  c0, t0 = _cpu(), time.perf_counter()
  features.encode_views(enc, params, imgs, alps)
  wall, cpu = time.perf_counter() - t0, _cpu() - c0
  return {"backbone": preset, "image_size": size, "instances": instances, "views": instances * 27,
          "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "instances_per_s": round(instances / wall, 3),
          "views_per_s": round(instances * 27 / wall, 2)}


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--features_dir", default=str(DEFAULT_DIR))
  ap.add_argument("--precisions", default="float32,official")
  ap.add_argument("--devices", default=f"1,{min(NCORES, jax.local_device_count())}")
  ap.add_argument("--steps", type=int, default=500)
  ap.add_argument("--extract", default="tiny,ViT-B/16", help="AlphaCLIP presets to time ('' = skip)")
  ap.add_argument("--extract_instances", type=int, default=2)
  ap.add_argument("--out", default="")
  args = ap.parse_args()
  data = _load(Path(args.features_dir))
  report = {"host": f"{platform.processor() or platform.machine()}, {NCORES} cores, "
                    f"jax {jax.__version__}, {jax.local_device_count()} XLA devices",
            "data": data[0], "protocol": [], "extract": []}
  print(report["host"], "|", data[0], flush=True)
  for ndev in sorted({int(x) for x in args.devices.split(",") if x}):
    for prec in [p for p in args.precisions.split(",") if p]:
      r = bench_protocol(data, prec, ndev, args.steps)
      report["protocol"].append(r)
      print(f"protocol precision={prec:9s} devices={r['devices']}: wall {r['wall_s']:6.1f} s, cpu {r['cpu_s']:6.1f} s;"
            f" Zip-Adapter-F fused acc K=1/3/5: "
            + " / ".join(f"{r['accuracy'][f'zip_adapter_f K={k}']['multi_view']:.4f}" for k in (1, 3, 5)),
            flush=True)
  for preset in [p for p in args.extract.split(",") if p]:
    r = bench_extract(preset, args.extract_instances)
    report["extract"].append(r)
    print(f"extract {preset:9s} {r['image_size']} px: {r['views_per_s']:.1f} views/s "
          f"({r['instances_per_s']:.3f} instances/s of 27 views; cpu {r['cpu_s']} s)", flush=True)
  if args.out:
    Path(args.out).write_text(json.dumps(report, indent=2))
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  main()
