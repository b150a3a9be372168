"""Synthetic defect dataset in the MVTec-FS layout (offline demo and tests).

``make_dataset(root)`` writes

    <root>/CONFIG/<category>_config1/{train,valid}.csv   (the 16 MVTec-FS columns, one row per defect)
    <root>/image/<category>/{training,testing}/<defect>/<nnn>.png
    <root>/synthetic.json                                 (the generation settings)

so ``mvrec_jax.data.load_category(root, category, data_root=root)`` reads it like the real data.

Images are procedural and seeded (numpy + PIL): two textures (``weave``: a coloured woven
pattern; ``speckle``: smoothed grey noise) and one object (``disc``: a metal-nut-like ring on a
dark background). Each image carries one defect instance of one of these kinds, and its polygon:

* ``scratch``: a long thin bright rotated bar;
* ``crack``: a dark jagged line (a polygon around a random zig-zag);
* ``hole``: a dark roundish blob with a jittered outline;
* ``stain``: a large irregular translucent brown/green blob;
* ``missing_part`` (disc only): a bite out of the ring's rim filled with background.

The defect pixels are exactly the pixels of the rasterised polygon
(``views.polygon_to_mask``), so the annotation is pixel-exact. Labels within a category are the
defect kinds, sorted (the order ``data.class_names_for`` gives a non-official category).
Generation at 128 px takes about 2 ms per image. With images of side ``image_size`` use crop sizes
``views.scaled_crop_sizes(image_size)`` (128 px -> 32/48/64 px, the official 256/384/512 on 1024).
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageFilter

from mvrec_jax import data as data_lib
from mvrec_jax import views as views_lib

__all__ = ["CATEGORIES", "DEFECT_KINDS", "make_dataset", "make_image", "crop_sizes_for"]

DEFECT_KINDS = ("crack", "hole", "missing_part", "scratch", "stain")
CATEGORIES: dict[str, tuple[str, ...]] = {
    "weave": ("crack", "hole", "scratch", "stain"),
    "speckle": ("crack", "hole", "scratch", "stain"),
    "disc": ("crack", "hole", "missing_part", "scratch", "stain"),
}
_SPLIT_DIRS = {"train": "training", "valid": "testing"}


def crop_sizes_for(image_size: int) -> tuple[int, ...]:
  """Official crop sizes scaled from 1024 px images to ``image_size``."""
  return views_lib.scaled_crop_sizes(image_size)


# --------------------------------------------------------------------------------------------- textures
def _weave(rng: np.random.Generator, n: int) -> tuple[np.ndarray, None]:
  y, x = np.mgrid[0:n, 0:n].astype(np.float32)
  period = rng.uniform(6, 10)
  phase = rng.uniform(0, 2 * np.pi, 2)
  wx = np.sin(2 * np.pi * x / period + phase[0])
  wy = np.sin(2 * np.pi * y / period + phase[1])
  pattern = 0.5 + 0.25 * np.where((np.floor(x / period) + np.floor(y / period)) % 2 == 0, wx, wy)
  base = np.array([0.55, 0.45, 0.35]) + rng.uniform(-0.08, 0.08, 3)
  img = base[None, None] * (0.6 + 0.6 * pattern[..., None]) + rng.normal(0, 0.02, (n, n, 1))
  return np.clip(img * 255, 0, 255).astype(np.uint8), None


def _speckle(rng: np.random.Generator, n: int) -> tuple[np.ndarray, None]:
  noise = Image.fromarray(rng.integers(0, 256, (n, n), dtype=np.uint8))
  smooth = np.asarray(noise.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 2.0))), np.float32)
  smooth = (smooth - smooth.mean()) / (smooth.std() + 1e-6)
  level = rng.uniform(130, 160)
  g = np.clip(level + 18 * smooth, 0, 255).astype(np.uint8)
  return np.repeat(g[..., None], 3, axis=-1), None


def _disc(rng: np.random.Generator, n: int) -> tuple[np.ndarray, tuple[float, float, float, float]]:
  y, x = np.mgrid[0:n, 0:n].astype(np.float32)
  c = n / 2 + rng.uniform(-0.04, 0.04, 2) * n
  r_out, r_in = n * rng.uniform(0.36, 0.42), n * rng.uniform(0.12, 0.16)
  d = np.hypot(x - c[0], y - c[1])
  ring = (d <= r_out) & (d >= r_in)
  shade = 150 + 50 * np.cos(np.arctan2(y - c[1], x - c[0]) - rng.uniform(0, 2 * np.pi))
  img = np.where(ring, shade, 25.0)[..., None] * np.array([1.0, 0.97, 0.9]) + rng.normal(0, 3, (n, n, 1))
  return np.clip(img, 0, 255).astype(np.uint8), (float(c[0]), float(c[1]), float(r_out), float(r_in))


_BACKGROUNDS = {"weave": _weave, "speckle": _speckle, "disc": _disc}


# ---------------------------------------------------------------------------------------------- defects
def _rot(pts: np.ndarray, angle: float) -> np.ndarray:
  c, s = math.cos(angle), math.sin(angle)
  return pts @ np.array([[c, s], [-s, c]])


def _blob(rng, center, radius, jitter, k=20) -> np.ndarray:
  t = np.sort(rng.uniform(0, 2 * np.pi, k))
  r = radius * (1 + rng.uniform(-jitter, jitter, k))
  return np.stack([center[0] + r * np.cos(t), center[1] + r * np.sin(t)], -1)


def _center(rng, n, geom, margin) -> np.ndarray:
  if geom is None:
    return rng.uniform(margin, n - margin, 2)
  cx, cy, r_out, r_in = geom  # a point on the ring
  t = rng.uniform(0, 2 * np.pi)
  r = rng.uniform(r_in + 0.25 * (r_out - r_in), r_out - 0.25 * (r_out - r_in))
  return np.array([cx + r * math.cos(t), cy + r * math.sin(t)])


def _defect_polygon(kind: str, rng: np.random.Generator, n: int, geom) -> np.ndarray:
  if kind == "scratch":
    length, width = n * rng.uniform(0.22, 0.38), rng.uniform(1.5, 2.5)
    rect = np.array([[-length / 2, -width / 2], [length / 2, -width / 2], [length / 2, width / 2],
                     [-length / 2, width / 2]])
    return _rot(rect, rng.uniform(0, np.pi)) + _center(rng, n, geom, length / 2 + 2)
  if kind == "crack":
    steps = int(rng.integers(5, 8))
    seg = n * rng.uniform(0.04, 0.06)
    ang = rng.uniform(0, 2 * np.pi)
    pts = [np.zeros(2)]
    for _ in range(steps):
      ang += rng.uniform(-0.9, 0.9)
      pts.append(pts[-1] + seg * np.array([math.cos(ang), math.sin(ang)]))
    line = np.asarray(pts)
    line = line - line.mean(0) + _center(rng, n, geom, 0.2 * n)
    normal = np.zeros_like(line)
    d = np.gradient(line, axis=0)
    normal[:, 0], normal[:, 1] = -d[:, 1], d[:, 0]
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-6
    half = rng.uniform(0.8, 1.4)
    return np.concatenate([line + half * normal, (line - half * normal)[::-1]])
  if kind == "hole":
    return _blob(rng, _center(rng, n, geom, 0.12 * n), n * rng.uniform(0.035, 0.06), 0.15, 16)
  if kind == "stain":
    return _blob(rng, _center(rng, n, geom, 0.18 * n), n * rng.uniform(0.08, 0.13), 0.35, 24)
  if kind == "missing_part":
    if geom is None:
      raise ValueError("missing_part needs an object category (disc).")
    cx, cy, r_out, _ = geom
    t = rng.uniform(0, 2 * np.pi)
    rb = n * rng.uniform(0.08, 0.12)
    bx, by = cx + r_out * math.cos(t), cy + r_out * math.sin(t)
    # intersection of the bite disc and the ring's outer disc: a convex lens
    a = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    on_bite = np.stack([bx + rb * np.cos(a), by + rb * np.sin(a)], -1)
    on_bite = on_bite[np.hypot(on_bite[:, 0] - cx, on_bite[:, 1] - cy) <= r_out]
    fine = np.linspace(t - 0.6, t + 0.6, 48)
    on_rim = np.stack([cx + r_out * np.cos(fine), cy + r_out * np.sin(fine)], -1)
    on_rim = on_rim[np.hypot(on_rim[:, 0] - bx, on_rim[:, 1] - by) <= rb]
    pts = np.concatenate([on_bite, on_rim])
    m = pts.mean(0)
    return pts[np.argsort(np.arctan2(pts[:, 1] - m[1], pts[:, 0] - m[0]))]
  raise ValueError(f"Unknown defect kind {kind!r}; choose from {DEFECT_KINDS}.")


def _paint(kind: str, img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  out = img.astype(np.float32)
  m = mask > 0
  if kind == "scratch":
    out[m] = 0.25 * out[m] + 0.75 * rng.uniform(215, 250)
  elif kind == "crack":
    out[m] = 0.2 * out[m] + 0.8 * rng.uniform(10, 35)
  elif kind == "hole":
    out[m] = rng.uniform(0, 15)
  elif kind == "stain":
    tint = np.array([110, 70, 30], np.float32) if rng.random() < 0.5 else np.array([70, 100, 40], np.float32)
    out[m] = 0.45 * out[m] + 0.55 * tint
  elif kind == "missing_part":
    out[m] = 25 + rng.normal(0, 3, (int(m.sum()), 1))
  return np.clip(out, 0, 255).astype(np.uint8)


def make_image(category: str, kind: str, rng: np.random.Generator,
               image_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
  """One image ``(S, S, 3)`` uint8 with one defect of ``kind``, and its polygon ``(P, 2)`` int."""
  if category not in _BACKGROUNDS:
    raise ValueError(f"Unknown synthetic category {category!r}; choose from {sorted(CATEGORIES)}.")
  if image_size < 32:
    raise ValueError(f"image_size={image_size} is too small for visible defects; use >= 32.")
  img, geom = _BACKGROUNDS[category](rng, image_size)
  for _ in range(20):
    poly = np.rint(_defect_polygon(kind, rng, image_size, geom)).astype(np.int64)
    poly = np.clip(poly, 0, image_size - 1)
    # drop consecutive duplicates left by rounding
    keep = np.ones(len(poly), bool)
    keep[1:] = np.any(poly[1:] != poly[:-1], axis=1)
    poly = poly[keep]
    mask = views_lib.polygon_to_mask(poly, image_size, image_size)
    if len(poly) >= 3 and (mask > 0).sum() >= 6:
      return _paint(kind, img, mask, rng), poly
  raise RuntimeError(f"Could not place a {kind} defect on a {image_size} px {category} image.")


def make_dataset(root: str | os.PathLike, *, categories: Sequence[str] = tuple(CATEGORIES),
                 image_size: int = 128, n_train: int = 6, n_valid: int = 5, seed: int = 0,
                 overwrite: bool = False) -> Path:
  """Writes the dataset (``n_train``/``n_valid`` instances per class and category); returns ``root``.

  Re-running with the same settings returns at once (``synthetic.json`` records them); other
  settings need ``overwrite=True`` (the old ``CONFIG`` and ``image`` folders are then deleted).
  """
  root = Path(root).expanduser()
  unknown = [c for c in categories if c not in CATEGORIES]
  if unknown:
    raise ValueError(f"Unknown synthetic categories {unknown}; choose from {sorted(CATEGORIES)}.")
  if n_train < 1 or n_valid < 1:
    raise ValueError(f"n_train and n_valid must be >= 1 (got {n_train}, {n_valid}).")
  settings = dict(categories=list(categories), image_size=int(image_size), n_train=int(n_train),
                  n_valid=int(n_valid), seed=int(seed), version=1)
  meta = root / "synthetic.json"
  if meta.is_file():
    old = json.loads(meta.read_text())
    if old == settings:
      return root
    if not overwrite:
      raise FileExistsError(f"{root} holds a synthetic dataset made with {old}, not {settings}; "
                            "pass overwrite=True or choose another directory.")
    for sub in ("CONFIG", "image"):
      shutil.rmtree(root / sub, ignore_errors=True)
  elif (root / "CONFIG").exists() or (root / "image").exists():
    if not overwrite:
      raise FileExistsError(f"{root} already has CONFIG/ or image/ folders that are not a synthetic dataset; "
                            "choose an empty directory.")
  uid = 0
  for ci, cat in enumerate(categories):
    cfg = root / "CONFIG" / f"{cat}_config1"
    cfg.mkdir(parents=True, exist_ok=True)
    for si, (split, count) in enumerate((("train", n_train), ("valid", n_valid))):
      rows = []
      for ki, kind in enumerate(CATEGORIES[cat]):
        for j in range(count):
          rng = np.random.default_rng([seed, ci, si, ki, j])
          img, poly = make_image(cat, kind, rng, image_size)
          name = f"{j:03d}.png"
          rel = f"{_SPLIT_DIRS[split]}/{kind}/{name}"
          path = root / "image" / cat / rel
          path.parent.mkdir(parents=True, exist_ok=True)
          Image.fromarray(img).save(path, compress_level=1)
          x1, y1, x2, y2 = (int(v) for v in views_lib.bbox_of_polygon(poly))
          rows.append(dict(imageName=name, imageData="", imageHeight=image_size, imageWidth=image_size,
                           img_id=uid, part=cat, id=uid, img_rel_path=rel, classification_rank="",
                           x1=x1, x2=x2, y1=y1, y2=y2, label=kind, rank=-1,
                           points=json.dumps(poly.tolist())))
          uid += 1
      with open(cfg / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(data_lib.CSV_COLUMNS))
        w.writeheader()
        w.writerows(rows)
  meta.write_text(json.dumps(settings, indent=1))
  return root
