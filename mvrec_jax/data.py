"""MVTec-FS reader: annotation CSVs -> defect instances (image path, polygon, bbox, label).

Layout (the MVTec-FS release, github ShuaiLYU/MVTec-FS):

    <config_root>/<category>_config1/train.csv     support pool
    <config_root>/<category>_config1/valid.csv     queries
    (or <config_root>/CONFIG/<category>_config1/...)

CSV columns: imageName, imageData, imageHeight, imageWidth, img_id, part, id, img_rel_path,
classification_rank, x1, x2, y1, y2, label, rank, points. One row per defect instance;
``points`` is the instance polygon as a JSON list of ``[x, y]`` (pixels), ``x1..y2`` its bounding
box (min/max of the polygon), ``label`` its defect class, ``part`` the MVTec AD category and
``img_rel_path`` = ``{training|testing}/<MVTec AD defect folder>/<imageName>``.

Images are looked up under ``data_root`` in this order:

1. ``<data_root>/image/<part>/<img_rel_path>``   (the MVTec-FS image archive, unpacked)
2. ``<data_root>/<part>/<img_rel_path>``         (``data_root`` is that ``image/`` folder)
3. ``<data_root>/<part>/test/<defect folder>/<imageName>``  (plain MVTec AD: every MVTec-FS image
   is an MVTec AD *test* image with the same folder and file name; checked on all 14 categories:
   names are unique within each category across both splits, and image sizes agree)

Label ids: ``class_names.index(label)`` with the per-category ``class_names`` lists of the
official MVREC code (its data options; some are not alphabetical, e.g. capsule starts with
``squeeze`` and cable with ``poke_insulation``), so ids match the official feature buffers. A
category without an official list (e.g. synthetic data) uses the sorted set of labels found in
``train.csv`` and ``valid.csv``. Instances keep the CSV row order (the official buffers do too).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from mvrec_jax import views as views_lib

__all__ = [
    "CSV_COLUMNS", "OFFICIAL_CLASS_NAMES", "MVTEC_FS_CATEGORIES", "OFFICIAL_DATA_NAMES", "SPLITS",
    "Instance", "CategoryData", "config_dir", "read_rows", "class_names_for", "resolve_image_path",
    "read_split", "load_category", "load_image", "instance_inputs", "DATA_HELP",
]

CSV_COLUMNS = ("imageName", "imageData", "imageHeight", "imageWidth", "img_id", "part", "id",
               "img_rel_path", "classification_rank", "x1", "x2", "y1", "y2", "label", "rank", "points")
_REQUIRED = ("imageHeight", "imageWidth", "part", "img_rel_path", "label", "points")
SPLITS = ("train", "valid")

# The class lists (= label order) of the official MVREC data options, per category.
OFFICIAL_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "bottle": ("broken_large", "broken_small", "contamination"),
    "cable": ("poke_insulation", "bent_wire", "missing_cable", "cable_swap", "cut_inner_insulation",
              "missing_wire", "cut_outer_insulation"),
    "capsule": ("squeeze", "crack", "faulty_imprint", "poke", "scratch"),
    "carpet": ("color", "cut", "hole", "metal_contamination", "thread"),
    "grid": ("bent", "broken", "glue", "metal_contamination", "thread"),
    "hazelnut": ("crack", "cut", "hole", "print"),
    "leather": ("color", "cut", "fold", "glue", "poke"),
    "metal_nut": ("bent", "color", "flip", "scratch"),
    "pill": ("color", "crack", "faulty_imprint", "pill_type", "contamination", "scratch"),
    "screw": ("manipulated_front", "scratch_head", "scratch_neck", "thread_side", "thread_top"),
    "tile": ("crack", "glue_strip", "gray_stroke", "oil", "rough"),
    "transistor": ("bent_lead", "cut_lead", "damaged_case", "misplaced"),
    "wood": ("color", "hole", "liquid", "scratch"),
    "zipper": ("broken_teeth", "split_teeth", "rough", "squeezed_teeth", "fabric_border", "fabric_interior"),
}
# The 14 benchmark categories (toothbrush has a config but is not part of the benchmark).
MVTEC_FS_CATEGORIES = tuple(sorted(OFFICIAL_CLASS_NAMES))
# `data_name` of the official data options (names of its feature buffers
# buffer/mso/AlphaClip_ViT-L/14_<data_name>_{support,query}.pt).
OFFICIAL_DATA_NAMES = {c: f"mvtec_{c}_data" for c in MVTEC_FS_CATEGORIES}
OFFICIAL_DATA_NAMES.update(pill="mvtec_pill", leather="mvtec_leather")

DATA_HELP = (
    "MVTec-FS needs (a) the annotation CSVs: the CONFIG folder of https://github.com/ShuaiLYU/MVTec-FS "
    "(<category>_config1/{train,valid}.csv), and (b) the images: the MVTec-FS image archive "
    "(<root>/image/<category>/{training,testing}/<defect>/<name>.png) or the MVTec AD dataset "
    "(https://www.mvtec.com/company/research/datasets/mvtec-ad, <root>/<category>/test/<defect>/<name>.png), "
    "which is where the MVTec-FS images come from. Neither can be downloaded by this library "
    "(licence CC BY-NC-SA 4.0); for an offline run use mvrec_jax.synthetic.make_dataset.")


@dataclasses.dataclass(frozen=True, eq=False)
class Instance:
  """One defect instance of an MVTec-FS split (``polygon`` ``(P, 2)`` float64 ``[x, y]`` pixels)."""
  image_path: str | None
  polygon: np.ndarray
  bbox: tuple[float, float, float, float]  # (x1, y1, x2, y2)
  label: int
  class_name: str
  image_size: tuple[int, int]  # (height, width) from the CSV
  category: str
  split: str
  row: int  # 0-based row in the CSV
  instance_id: str  # CSV `id`
  img_rel_path: str

  @property
  def key(self) -> str:
    """Stable identity of the instance (for feature caches)."""
    return f"{self.category}/{self.split}/{self.row}/{self.img_rel_path}/{self.instance_id}/{self.label}"


@dataclasses.dataclass(frozen=True, eq=False)
class CategoryData:
  """A category: its class names (label order), the support pool (train) and the queries (valid)."""
  category: str
  class_names: tuple[str, ...]
  train: list[Instance]
  valid: list[Instance]

  def split(self, name: str) -> list[Instance]:
    if name not in SPLITS:
      raise ValueError(f"Unknown split {name!r}; MVTec-FS has {SPLITS}.")
    return self.train if name == "train" else self.valid


def config_dir(config_root: str | os.PathLike, category: str) -> Path:
  """``<config_root>/<category>_config1`` (or under ``CONFIG/``); clear error when absent."""
  root = Path(config_root).expanduser()
  if not root.exists():
    raise FileNotFoundError(f"MVTec-FS annotation root {root} does not exist. {DATA_HELP}")
  for cand in (root / f"{category}_config1", root / "CONFIG" / f"{category}_config1"):
    if cand.is_dir():
      return cand
  found = sorted(p.name[:-len("_config1")] for base in (root, root / "CONFIG") if base.is_dir()
                 for p in base.glob("*_config1"))
  raise FileNotFoundError(
      f"No annotations for category {category!r}: neither {root / (category + '_config1')} nor "
      f"{root / 'CONFIG' / (category + '_config1')} exists. Categories found there: {found or 'none'}. {DATA_HELP}")


def read_rows(path: str | os.PathLike) -> list[dict[str, str]]:
  """The rows of one MVTec-FS CSV as dicts; checks the columns this reader needs."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"Annotation file {path} is missing. {DATA_HELP}")
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    missing = [c for c in _REQUIRED if c not in (reader.fieldnames or [])]
    if missing:
      raise ValueError(f"{path} lacks the MVTec-FS column(s) {missing}; expected columns {list(CSV_COLUMNS)}.")
    return list(reader)


def class_names_for(category: str, labels: Sequence[str] = ()) -> tuple[str, ...]:
  """Label order: the official list for an MVTec-FS category, else the sorted set of ``labels``."""
  if category in OFFICIAL_CLASS_NAMES:
    return OFFICIAL_CLASS_NAMES[category]
  names = tuple(sorted(set(labels)))
  if not names:
    raise ValueError(f"Category {category!r} has no official class list and no labels were given.")
  return names


def resolve_image_path(data_root: str | os.PathLike, part: str, img_rel_path: str) -> Path | None:
  """First existing candidate among the three layouts of the module docstring, or None."""
  root = Path(data_root).expanduser()
  rel = Path(img_rel_path)
  cands = [root / "image" / part / rel, root / part / rel]
  if len(rel.parts) >= 2:
    cands.append(root / part / "test" / rel.parts[-2] / rel.name)
  for c in cands:
    if c.is_file():
      return c
  return None


def _parse_polygon(text: str, where: str) -> np.ndarray:
  try:
    pts = np.asarray(json.loads(text), dtype=np.float64)
  except (json.JSONDecodeError, TypeError, ValueError) as e:
    raise ValueError(f"{where}: cannot parse `points` as a JSON list of [x, y] ({e}).") from None
  if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
    raise ValueError(f"{where}: `points` must be a non-empty list of [x, y] pairs, got shape {pts.shape}.")
  return pts


def _bbox(row: dict[str, str], pts: np.ndarray) -> tuple[float, float, float, float]:
  vals = [row.get(k, "") for k in ("x1", "y1", "x2", "y2")]
  if all(v not in ("", None) for v in vals):
    return tuple(float(v) for v in vals)  # type: ignore[return-value]
  return views_lib.bbox_of_polygon(pts)


def read_split(config_root: str | os.PathLike, category: str, split: str, *,
               data_root: str | os.PathLike | None = None, class_names: Sequence[str] | None = None,
               check_images: bool = True) -> list[Instance]:
  """Instances of ``<category>_config1/<split>.csv`` in row order.

  ``data_root=None`` reads annotations only (``image_path`` None). With a ``data_root`` every image
  is resolved (FileNotFoundError listing what is missing otherwise, when ``check_images``).
  """
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; MVTec-FS has {SPLITS}.")
  path = config_dir(config_root, category) / f"{split}.csv"
  rows = read_rows(path)
  if class_names is None:
    labels = [r["label"] for r in rows]
    other = config_dir(config_root, category) / f"{'valid' if split == 'train' else 'train'}.csv"
    if category not in OFFICIAL_CLASS_NAMES and other.is_file():
      labels += [r["label"] for r in read_rows(other)]
    class_names = class_names_for(category, labels)
  class_names = tuple(class_names)
  unknown = sorted({r["label"] for r in rows} - set(class_names))
  if unknown:
    raise ValueError(f"{path}: labels {unknown} are not in the class list {list(class_names)}; "
                     "pass class_names= including them.")
  out, missing = [], []
  for i, r in enumerate(rows):
    where = f"{path} row {i + 2}"
    pts = _parse_polygon(r["points"], where)
    try:
      size = (int(float(r["imageHeight"])), int(float(r["imageWidth"])))
    except ValueError:
      raise ValueError(f"{where}: bad imageHeight/imageWidth {r['imageHeight']!r}/{r['imageWidth']!r}.") from None
    image_path = None
    if data_root is not None:
      p = resolve_image_path(data_root, r["part"], r["img_rel_path"])
      if p is None:
        missing.append(r)
      image_path = str(p) if p is not None else None
    out.append(Instance(image_path=image_path, polygon=pts, bbox=_bbox(r, pts),
                        label=class_names.index(r["label"]), class_name=r["label"], image_size=size,
                        category=category, split=split, row=i, instance_id=r.get("id", str(i)),
                        img_rel_path=r["img_rel_path"]))
  if missing and check_images:
    root = Path(data_root).expanduser()
    r = missing[0]
    tried = [root / "image" / r["part"] / r["img_rel_path"], root / r["part"] / r["img_rel_path"],
             root / r["part"] / "test" / Path(r["img_rel_path"]).parts[-2] / r["imageName"]]
    raise FileNotFoundError(
        f"{len(missing)} of {len(rows)} images of {category}/{split} are missing under data root {root} "
        f"(first: {r['img_rel_path']}; looked for {', '.join(map(str, tried))}). {DATA_HELP}")
  return out


def load_category(config_root: str | os.PathLike, category: str, *,
                  data_root: str | os.PathLike | None = None, class_names: Sequence[str] | None = None,
                  check_images: bool = True) -> CategoryData:
  """Both splits of a category with one shared class list (see the module docstring for the order)."""
  if class_names is None:
    labels = [r["label"] for s in SPLITS for r in read_rows(config_dir(config_root, category) / f"{s}.csv")]
    class_names = class_names_for(category, labels)
  class_names = tuple(class_names)
  kw = dict(data_root=data_root, class_names=class_names, check_images=check_images)
  return CategoryData(category=category, class_names=class_names,
                      train=read_split(config_root, category, "train", **kw),
                      valid=read_split(config_root, category, "valid", **kw))


# What PIL raises for a file that is not a readable image.
DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError)


def decode(src) -> Image.Image:
  """Fully decodes ``src`` (a path or a binary file object): modes ``L``, ``RGB`` and ``RGBA`` are kept, as
  the official code uses them; other modes -> RGB (RGBA when they carry alpha). Raises ``DECODE_ERRORS``."""
  with Image.open(src) as im:
    im.load()
    img = im if im.mode in ("L", "RGB", "RGBA") else im.convert("RGBA" if "A" in im.getbands() else "RGB")
    return img.copy()

def load_image(path: str | os.PathLike) -> Image.Image:
  """Decodes an image fully (mode ``L``, ``RGB`` or ``RGBA``, as the official code uses it; other modes -> RGB)."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"Image {path} is missing. {DATA_HELP}")
  try:
    return decode(path)
  except DECODE_ERRORS as e:
    raise ValueError(f"Cannot decode image {path} ({type(e).__name__}: {e}); the file is corrupt or "
                     "truncated: re-extract or re-download it.") from None


def instance_inputs(inst: Instance, *, method: str = "mso",
                    crop_sizes: Sequence[float] = views_lib.OFFICIAL_CROP_SIZES,
                    resize: Sequence[int] = views_lib.OFFICIAL_RESIZE) -> tuple[np.ndarray, np.ndarray]:
  """Loads the instance's image -> ``(V, S, S, 3)`` image and ``(V, S, S, 1)`` alpha views (float32)."""
  if inst.image_path is None:
    raise ValueError(f"Instance {inst.key} has no image path: read the split with data_root=... . {DATA_HELP}")
  return views_of_image(inst, load_image(inst.image_path), what=f"Image {inst.image_path}", method=method,
                        crop_sizes=crop_sizes, resize=resize)


def views_of_image(inst: Instance, img: Image.Image, *, what: str, method: str = "mso",
                   crop_sizes: Sequence[float] = views_lib.OFFICIAL_CROP_SIZES,
                   resize: Sequence[int] = views_lib.OFFICIAL_RESIZE) -> tuple[np.ndarray, np.ndarray]:
  """The instance's views rendered from its decoded image ``img`` (``what`` names it in the size error)."""
  h, w = inst.image_size
  if img.size != (w, h):
    raise ValueError(f"{what} is {img.size[0]}x{img.size[1]} (WxH) but its annotation says "
                     f"{w}x{h}; the polygon would not line up. Is it the right image?")
  return views_lib.instance_views(img, inst.polygon, inst.bbox, method=method, crop_sizes=crop_sizes,
                                  resize=resize)
