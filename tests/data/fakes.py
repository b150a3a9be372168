"""Tiny fake raw layouts of the three methods' datasets (written by the tests; no downloads).

Run as a script it is the TensorFlow-free worker: ``python fakes.py WORKDIR`` writes the three
layouts, prepares them with the tfds builders, reads every split through tfds.data_source + grain,
and prints one JSON line (record counts and whether ``tensorflow`` is in ``sys.modules``).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def _save(path: Path, arr: np.ndarray, **kw) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(arr).save(path, **kw)


def make_lcdh_raw(root: Path, layout: str, num_samples: int = 24) -> Path:
  """The synthetic LCDH set in the DCMH ``arrays`` or DCHMT ``paths`` layout; in ``paths`` two
  images are re-saved as JPEG (one grayscale) so decoding is exercised beyond PNG."""
  import scipy.io
  from lcdh_jax import synthetic
  syn = synthetic.make_synthetic(num_samples=num_samples, image_size=24, seed=3)
  synthetic.write_mat(syn, root, name="synthetic", layout=layout)
  if layout == "paths":
    index = [f"images/{i:06d}.png" for i in range(num_samples)]
    for i, mode in ((1, "RGB"), (2, "L")):
      im = Image.fromarray(syn.images[i]).convert(mode)
      im.save(root / "images" / f"{i:06d}.jpg", quality=80)
      index[i] = f"images/{i:06d}.jpg"
    cell = np.empty((num_samples,), dtype=object)
    cell[:] = index
    scipy.io.savemat(root / "index.mat", {"index": cell})
  return root


def make_mvrec_raw(root: Path) -> Path:
  """Synthetic MVTec-FS (2 categories, 64 px) with one RGBA and one grayscale image."""
  from mvrec_jax import synthetic
  synthetic.make_dataset(root, categories=("weave", "disc"), image_size=64, n_train=2, n_valid=1, seed=1)
  imgs = sorted((root / "image" / "weave").rglob("*.png"))
  Image.open(imgs[0]).convert("RGBA").save(imgs[0])
  Image.open(imgs[1]).convert("L").save(imgs[1])
  return root


def make_derefl_raw(root: Path) -> Path:
  """The DSRNet layout in miniature: every set, odd sizes, a JPEG pair, a GT of another size."""
  rng = np.random.default_rng(5)
  u8 = lambda h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # noqa: E731
  sets = {"test/real20_420": False, "test/SIR2/SolidObjectDataset": True, "test/SIR2/PostcardDataset": True,
          "test/SIR2/WildSceneDataset": True, "test/Nature": False, "train/real": False, "train/nature": False}
  for rel, has_r in sets.items():
    for i in range(2):
      h, w = 40 + 3 * i, 57
      _save(root / rel / "blended" / f"{i}.png", u8(h, w))
      _save(root / rel / "transmission_layer" / f"{i}.png", u8(h, w))
      if has_r:
        _save(root / rel / "reflection_layer" / f"{i}.png", u8(h, w))
  _save(root / "test/Nature/blended/x.jpg", u8(36, 50), quality=90)
  _save(root / "test/Nature/transmission_layer/x.jpg", u8(36, 50), quality=90)
  _save(root / "train/real/blended/y.png", u8(40, 48))
  _save(root / "train/real/transmission_layer/y.png", u8(44, 52))  # another size: resized by the readers
  for i in range(4):
    _save(root / "train/VOCdevkit/VOC2012/PNGImages" / f"{i:04d}.png", u8(40 + i, 48))
  # files PIL alone would decode otherwise than read_image: stored as PNGs of read_image's array
  exif = Image.Exif()
  exif[0x0112] = 6  # rotated 90 degrees
  Image.fromarray(u8(40, 70)).save(root / "test/Nature/blended/r.jpg", quality=90, exif=exif.tobytes())
  _save(root / "test/Nature/transmission_layer/r.jpg", u8(70, 40), quality=90)
  return root


def _no_tf_worker(work: Path) -> dict:
  from derefl_jax import tfds_builder as derefl_tfds
  from lcdh_jax import tfds_builder as lcdh_tfds
  from mvrec_jax import tfds_builder as mvrec_tfds
  from train import data_pipeline
  data_dir = work / "prepared"
  lcdh_tfds.prepare(make_lcdh_raw(work / "lcdh", "paths"), data_dir, dataset="synthetic", num_query=4,
                    num_train=8)
  mv_root = make_mvrec_raw(work / "mvrec")
  mvrec_tfds.prepare(mv_root, data_dir, category="weave")
  derefl_tfds.prepare(make_derefl_raw(work / "derefl"), data_dir)
  counts = {}
  reads = [("lcdh_cross_modal/synthetic", s, lcdh_tfds.record_transform(image_size=16)) for s in ("query", "database")]
  reads += [("mvrec_mvtec_fs/weave", s, mvrec_tfds.views_transform(method="ms", crop_sizes=(32, 48), resize=(32,)))
            for s in ("train", "valid")]
  reads += [(f"derefl_reflection/{c}", s, None) for c, s in (("voc2012", "train"), ("train_pairs", "real"),
                                                            ("sir2", "wild"))]
  for name, split, fn in reads:
    src = data_pipeline.open_source(data_dir, name, split)
    ds = data_pipeline.make_dataset(src, transform=fn, seed=0, num_epochs=1, process_index=0, process_count=1)
    counts[f"{name}:{split}"] = sum(1 for _ in data_pipeline.make_iterator(ds, num_threads=2))
  lcdh_tfds.load_prepared(data_dir, "synthetic").image(0, 16)
  weave = mvrec_tfds.load_prepared(data_dir, "weave")  # the train.mvrec --config.data_dir route
  counts["mvrec_images"] = sum(1 for i in weave.train if mvrec_tfds.image_loader(data_dir, "weave", weave)(i).size)
  counts["test_sets"] = sum(len(v) for v in derefl_tfds.test_sets(data_dir).values())
  return {"counts": counts, "tensorflow": "tensorflow" in sys.modules,
          "tf_modules": sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))}


if __name__ == "__main__":
  print(json.dumps(_no_tf_worker(Path(sys.argv[1]))))
