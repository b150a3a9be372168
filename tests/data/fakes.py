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


# ------------------------------------------------------------------ known values in each real layout
# (tests/data/test_readers_values.py: every reader must return exactly what these wrote)

def lcdh_values(n: int = 6, h: int = 9, w: int = 11, seed: int = 0) -> dict:
  """Known LCDH items: ``images`` (n,h,w,3) uint8, ``tags`` (n,V) float32 counts, ``labels`` (n,C)
  multi-hot, ``captions`` (words of ``vocab`` plus non-ASCII text), ``vocab`` (V,), ``classes`` (C,)."""
  rng = np.random.default_rng(seed)
  vocab = ["sky", "tree", "new_york", "b&w", "dog", "water", "x9"]
  classes = ["animals", "city", "nature"]
  images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
  images[0, 0, 0], images[0, -1, -1] = (0, 0, 0), (255, 255, 255)
  tags = rng.integers(0, 3, (n, len(vocab))).astype(np.float32)  # counts, not only 0/1
  labels = (rng.random((n, len(classes))) < 0.5).astype(np.float32)
  labels[0] = 0.0  # an item with no label
  captions = [" ".join(vocab[j] for j in np.flatnonzero(tags[i])) + f" caf\u00e9 n\u00b0{i}" for i in range(n)]
  return {"images": images, "tags": tags, "labels": labels, "captions": captions, "vocab": vocab,
          "classes": classes}


def _cell(strings) -> np.ndarray:
  out = np.empty((len(strings),), dtype=object)
  out[:] = list(strings)
  return out


def write_lcdh_arrays(root: Path, v: dict, *, order: str = "nhwc", key: str = "IAll",
                      with_caption: bool = True) -> Path:
  """The DCMH single-.mat layout (``synthetic.mat``): ``IAll`` in ``order`` (nhwc, MATLAB hwcn or
  nchw), ``YAll``, ``LAll``, ``caption`` (else ``tag_vocab`` in the file)."""
  import scipy.io
  root.mkdir(parents=True, exist_ok=True)
  images = {"nhwc": v["images"], "hwcn": v["images"].transpose(1, 2, 3, 0),
            "nchw": v["images"].transpose(0, 3, 1, 2)}[order]
  m = {key: images, "YAll": v["tags"], "LAll": v["labels"]}
  if with_caption:
    m["caption"] = _cell(v["captions"])
  else:
    m["tag_vocab"] = _cell(v["vocab"])
  scipy.io.savemat(root / "synthetic.mat", m)
  return root


def write_lcdh_paths(root: Path, v: dict, *, captions: str = "mat", with_tags: bool = True) -> Path:
  """The DCHMT layout: PNG images (item 1 saved grayscale: read back as RGB gray), ``index.mat``,
  ``label.mat`` (``category``), ``caption.mat`` or ``caption.txt``, ``tag.mat`` (``YAll``) and
  ``tag_vocab.txt``."""
  import scipy.io
  (root / "images").mkdir(parents=True, exist_ok=True)
  index = []
  for i, im in enumerate(v["images"]):
    rel = f"images/{i:03d}.png"
    Image.fromarray(im[..., 0] if i == 1 else im).save(root / rel)
    index.append(rel)
  scipy.io.savemat(root / "index.mat", {"index": _cell(index)})
  scipy.io.savemat(root / "label.mat", {"category": v["labels"]})
  if captions == "mat":
    scipy.io.savemat(root / "caption.mat", {"caption": _cell(v["captions"])})
  else:
    (root / "caption.txt").write_text("\n".join(v["captions"]) + "\n", encoding="utf-8")
  if with_tags:
    scipy.io.savemat(root / "tag.mat", {"YAll": v["tags"]})
  (root / "tag_vocab.txt").write_text("\n".join(v["vocab"]) + "\n", encoding="utf-8")
  return root


def write_lcdh_folder(root: Path, v: dict) -> Path:
  """The raw image folder: ``images/`` (PNG, in a sub-folder), ``annotations.csv`` (image, labels
  as ``a;b``, caption), ``classes.txt``, ``tag_vocab.txt``."""
  import csv
  (root / "images" / "sub").mkdir(parents=True, exist_ok=True)
  with open(root / "annotations.csv", "w", newline="", encoding="utf-8") as f:
    wr = csv.writer(f)
    wr.writerow(["image", "labels", "caption"])
    for i, im in enumerate(v["images"]):
      rel = f"sub/{i:03d}.png"
      Image.fromarray(im).save(root / "images" / rel)
      wr.writerow([rel, ";".join(c for c, on in zip(v["classes"], v["labels"][i]) if on), v["captions"][i]])
  (root / "classes.txt").write_text("\n".join(v["classes"]) + "\n", encoding="utf-8")
  (root / "tag_vocab.txt").write_text("\n".join(v["vocab"]) + "\n", encoding="utf-8")
  return root


MVTEC_COLUMNS = ("imageName", "imageData", "imageHeight", "imageWidth", "img_id", "part", "id", "img_rel_path",
                 "classification_rank", "x1", "x2", "y1", "y2", "label", "rank", "points")


def write_mvtec_fs(root: Path, category: str, rows: dict, *, image_layout: str = "image") -> Path:
  """MVTec-FS: ``<root>/CONFIG/<category>_config1/{train,valid}.csv`` from ``rows[split]`` (dicts with
  ``image`` (H,W[,C]) uint8, ``points``, ``label``, ``id``, ``defect``, ``name``, optional ``bbox``
  (x1, y1, x2, y2; else the columns are left empty)) and each image as a PNG under ``image_layout``:
  ``image`` (``<root>/image/<part>/<rel>``), ``part`` (``<root>/<part>/<rel>``) or ``mvtec_ad``
  (``<root>/<part>/test/<defect>/<name>``)."""
  import csv
  import json as json_
  cfg = root / "CONFIG" / f"{category}_config1"
  cfg.mkdir(parents=True, exist_ok=True)
  for split, items in rows.items():
    with open(cfg / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
      wr = csv.DictWriter(f, fieldnames=MVTEC_COLUMNS)
      wr.writeheader()
      for k, it in enumerate(items):
        rel = f"{'training' if split == 'train' else 'testing'}/{it['defect']}/{it['name']}"
        path = {"image": root / "image" / category / rel, "part": root / category / rel,
                "mvtec_ad": root / category / "test" / it["defect"] / it["name"]}[image_layout]
        if not path.exists():
          _save(path, it["image"])
        bbox = it.get("bbox")
        wr.writerow({"imageName": it["name"], "imageData": "", "imageHeight": it["image"].shape[0],
                     "imageWidth": it["image"].shape[1], "img_id": k, "part": category, "id": it["id"],
                     "img_rel_path": rel, "classification_rank": 0,
                     "x1": "" if bbox is None else bbox[0], "y1": "" if bbox is None else bbox[1],
                     "x2": "" if bbox is None else bbox[2], "y2": "" if bbox is None else bbox[3],
                     "label": it["label"], "rank": 0, "points": json_.dumps(it["points"])})
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
