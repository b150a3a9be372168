"""CLIP ViT-B/16 image encoding: backbones_jax (jit, batch split over CPU devices) vs PyTorch.

Random weights (the same for both), batch of random 224x224 images. Prints images/s for
transformers' ``CLIPVisionModelWithProjection`` (PyTorch, all cores), our Flax CLIP jitted on one
device and with the batch sharded over every local device, and the ratio best-ours / torch.
The XLA host device count is set to the number of cores before jax is imported, because one
XLA:CPU device computes on about one core.

``encode_image`` runs the last transformer block for the class token only (nothing else reaches
the embedding; PyTorch computes it for all 197 tokens). For transparency the script also times
the sharded encoder with the full last block (``jax_Ndev_full``); the ratio uses ``encode_image``.

  python benchmarks/clip_encode.py [--batch 8] [--repeats 3] [--preset ViT-B/16]
"""
from __future__ import annotations

import argparse
import os
import platform
import time

NCORES = os.cpu_count() or 1
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count={NCORES}").strip()

import jax  # noqa: E402  pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

from backbones_jax import clip, convert  # noqa: E402


def _timeit(fn, repeats: int) -> float:
  """Best wall time of ``repeats`` calls after one warm-up call."""
  fn()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="ViT-B/16")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(NCORES)

  spec = clip.clip_spec(args.preset)
  cfg = spec.to_hf_config()
  cfg.vision_config.projection_dim = spec.projection_dim
  torch.manual_seed(0)
  tmodel = transformers.CLIPVisionModelWithProjection(cfg.vision_config).eval()
  sd = {k: v.detach().numpy() for k, v in tmodel.state_dict().items()}

  model = clip.CLIP(spec)
  expected = {k: v for k, v in convert.flatten(clip.abstract_params(model)).items()
              if k.startswith(("vision_model/", "visual_projection/"))}
  flat = convert.convert_state_dict(sd, convert.HF_CLIP_TABLE, expected,
                                    ignore=convert.HF_IGNORED, source="random torch model")
  # encode_image only touches the vision tower, its projection (and logit_scale in setup).
  params = convert.unflatten({**{k: jnp.asarray(v) for k, v in flat.items()},
                              "logit_scale": jnp.asarray(spec.logit_scale_init_value)})

  images = np.random.RandomState(0).randn(args.batch, spec.vision.image_size,
                                          spec.vision.image_size, 3).astype(np.float32)
  timgs = torch.tensor(images.transpose(0, 3, 1, 2))

  def run_torch():
    with torch.inference_mode():
      return tmodel(pixel_values=timgs).image_embeds.numpy()

  def run_one():
    return np.asarray(clip.encode_image(model, params, images))

  devices = jax.local_devices()
  mesh = Mesh(np.array(devices), ("data",))
  rep_params = jax.device_put(params, NamedSharding(mesh, P()))

  full_fn = jax.jit(lambda p, x: model.apply(
      {"params": p}, x, method=lambda m, x: m.visual_projection(m.vision_model(x)[0])))

  def sharded(encode):
    return lambda: np.asarray(encode(rep_params,
                                     jax.device_put(images, NamedSharding(mesh, P("data")))))

  nd = len(devices)
  ours = {"jax_1dev": run_one,
          f"jax_{nd}dev": sharded(lambda p, x: clip.encode_image(model, p, x)),
          f"jax_{nd}dev_full": sharded(full_fn)}  # full last block, as PyTorch computes it

  want = run_torch()
  for name, fn in ours.items():
    err = np.abs(fn() - want).max()
    assert err < 1e-3, f"{name} disagrees with torch by {err}"

  results = {}
  # Interleave them so that load changes on a shared machine hit all of them.
  for _ in range(2):
    for name, fn in (("torch", run_torch), *ours.items()):
      t = _timeit(fn, args.repeats)
      results[name] = min(results.get(name, float("inf")), t)

  print(f"CLIP {args.preset} image encoding, batch {args.batch}, fp32, random weights")
  print(f"host: {platform.processor() or platform.machine()}, {NCORES} cores, "
        f"load average {os.getloadavg()[0]:.1f}; jax {jax.__version__}, torch {torch.__version__},"
        f" transformers {transformers.__version__}")
  ips = {k: args.batch / v for k, v in results.items()}
  for k, v in ips.items():
    print(f"  {k:>10s}: {v:6.2f} images/s")
  best = max((v, k) for k, v in ips.items() if k.startswith("jax") and not k.endswith("_full"))
  print(f"ratio best-jax ({best[1]}) / torch: {best[0] / ips['torch']:.2f}")


if __name__ == "__main__":
  main()
