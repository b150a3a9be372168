"""MVTec-FS as tfds datasets (array_record, no TensorFlow), prepared from the annotation CSVs and images.

``prepare(data_root, data_dir, category="bottle", config_root=None)`` reads one category with
:func:`mvrec_jax.data.load_category` (the official ``<category>_config1/{train,valid}.csv`` and
the images in any layout that reader resolves; nothing is downloaded) and writes
``<data_dir>/mvrec_mvtec_fs/<category>/1.0.0/`` with tfds's ``download_and_prepare``
(``file_format="array_record"``, the image root passed as ``manual_dir``). Splits ``train`` (the
support pool) and ``valid`` (the queries), one record per defect instance in CSV row order:

============== ========================== ================================================
feature        tfds feature               value
============== ========================== ================================================
image          Image, encoded             the image file's own bytes (PNG; mode kept)
polygon        float64 (P, 2)             the instance polygon, ``[x, y]`` pixels
bbox           float64 (4,)               ``(x1, y1, x2, y2)`` as the reader gives it
label          ClassLabel                 index into the category's class list (official order)
class_name     Text                       the CSV ``label``
image_size     int64 (2,)                 ``(height, width)`` from the CSV
row            int64                      0-based CSV row
instance_id    Text                       CSV ``id``
img_rel_path   Text                       CSV ``img_rel_path``
============== ========================== ================================================

An image with several instances is stored once per instance (records are self-contained for
random access; MVTec-FS has 1-2 instances per image on average). Read back with
:func:`load_prepared` (the :class:`mvrec_jax.data.CategoryData` of the category, instances without
an ``image_path``) and :func:`record_views` (the ``(V, S, S, 3)`` / ``(V, S, S, 1)`` views of a
record, computed by the same ``views.instance_views`` as ``data.instance_inputs``);
:func:`image_loader` hands the records' images to ``features.extract_features(load_image=...)``
(the ``train.mvrec`` route with ``--config.data_dir``). Images are
decoded by :func:`decode_image` with the reader's rule (modes L / RGB / RGBA kept): read with
``decoders={"image": tfds.decode.SkipDecoding()}``; tfds's own OpenCV decoding would drop that.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from backbones_jax import tfds_records
from mvrec_jax import data as data_lib
from mvrec_jax import views as views_lib

__all__ = ["BUILDER_NAME", "VERSION", "MvrecMvtecFs", "prepare", "is_prepared", "prepared_categories",
           "dataset_dir", "open_split", "load_prepared", "decode_image", "record_image", "record_views",
           "record_instance", "image_loader", "views_transform", "LICENSE"]

BUILDER_NAME = "mvrec_mvtec_fs"
VERSION = "1.0.0"
LICENSE = ("MVTec-FS annotations (https://github.com/ShuaiLYU/MVTec-FS) and the MVTec AD images they use "
           "(https://www.mvtec.com/company/research/datasets/mvtec-ad): CC BY-NC-SA 4.0, non-commercial use.")


def decode_image(data: bytes) -> Image.Image:
  """Stored bytes -> a PIL image with the mode rule of :func:`mvrec_jax.data.load_image`."""
  try:
    return data_lib.decode(io.BytesIO(bytes(data)))
  except data_lib.DECODE_ERRORS as e:
    raise ValueError(f"a stored image cannot be decoded ({type(e).__name__}: {e}); the prepared dataset "
                     "is corrupt: delete it and prepare it again.") from None


class MvrecMvtecFs(tfds.core.GeneratorBasedBuilder):
  """MVTec-FS defect instances of one category (config = category), splits train / valid."""

  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = {str(VERSION): "Instances of mvrec_jax.data.load_category, CSV row order."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=c, description=f"MVTec-FS category {c}")
                     for c in data_lib.MVTEC_FS_CATEGORIES]
  MANUAL_DOWNLOAD_INSTRUCTIONS = data_lib.DATA_HELP
  # tfds 4.9.10 locates a builder's source file with `importlib_resources` (not installed) when the
  # class lives in a package; it only needs it for a checksums file, and nothing is downloaded.
  code_path = tfds.core.utils.classproperty(classmethod(lambda cls: None))

  def __init__(self, *, config_root: str | None = None, data_root: str | None = None, **kwargs):
    config = kwargs.get("config")
    category = config.name if isinstance(config, tfds.core.BuilderConfig) else str(config)
    self._category_data = None
    if config_root is not None:
      self._category_data = data_lib.load_category(config_root, category, data_root=data_root)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    cat = self._category_data
    names = list(cat.class_names) if cat is not None else list(
        data_lib.OFFICIAL_CLASS_NAMES.get(self.builder_config.name, ()))
    return tfds.core.DatasetInfo(
        builder=self,
        description=(f"MVTec-FS category {self.builder_config.name}: defect instances (image, polygon, "
                     f"bbox, class) of the official split CSVs, read by mvrec_jax.data.load_category."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, None)),
            "polygon": tfds.features.Tensor(shape=(None, 2), dtype=np.float64),
            "bbox": tfds.features.Tensor(shape=(4,), dtype=np.float64),
            "label": tfds.features.ClassLabel(names=names) if names else tfds.features.Scalar(np.int64),
            "class_name": tfds.features.Text(),
            "image_size": tfds.features.Tensor(shape=(2,), dtype=np.int64),
            "row": tfds.features.Scalar(dtype=np.int64),
            "instance_id": tfds.features.Text(),
            "img_rel_path": tfds.features.Text(),
        }),
        homepage="https://github.com/ShuaiLYU/MVTec-FS",
        license=LICENSE,
        metadata=tfds.core.MetadataDict(class_names=names, category=self.builder_config.name,
                                        views_preprocessing=views_lib.PREPROCESSING_VERSION),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    if self._category_data is None:
      raise ValueError("MvrecMvtecFs needs config_root=... (the folder of <category>_config1/) to prepare.")
    return {s: self._generate_examples(self._category_data.split(s)) for s in data_lib.SPLITS}

  def _generate_examples(self, instances: Sequence[data_lib.Instance]):
    for inst in instances:
      yield inst.row, {
          "image": Path(inst.image_path).read_bytes(), "polygon": np.asarray(inst.polygon, np.float64),
          "bbox": np.asarray(inst.bbox, np.float64), "label": int(inst.label), "class_name": inst.class_name,
          "image_size": np.asarray(inst.image_size, np.int64), "row": int(inst.row),
          "instance_id": str(inst.instance_id), "img_rel_path": inst.img_rel_path}


def dataset_dir(data_dir: str | os.PathLike, category: str) -> Path:
  """``<data_dir>/mvrec_mvtec_fs/<category>/<version>``."""
  return Path(data_dir) / BUILDER_NAME / category / VERSION


def is_prepared(data_dir: str | os.PathLike, category: str) -> bool:
  return (dataset_dir(data_dir, category) / "dataset_info.json").is_file()


def prepared_categories(data_dir: str | os.PathLike) -> list[str]:
  """Categories prepared in ``data_dir``: the official ones in MVTec-FS order, then others sorted."""
  root = Path(data_dir).expanduser() / BUILDER_NAME
  found = sorted(d.name for d in root.iterdir() if is_prepared(data_dir, d.name)) if root.is_dir() else []
  return [c for c in data_lib.MVTEC_FS_CATEGORIES if c in found] + [
      c for c in found if c not in data_lib.MVTEC_FS_CATEGORIES]


def prepare(data_root: str | os.PathLike, data_dir: str | os.PathLike, *, category: str,
            config_root: str | os.PathLike | None = None) -> Path:
  """Prepares ``category`` (images under ``data_root``, CSVs under ``config_root`` or ``data_root``) once."""
  data_root = Path(data_root).expanduser()
  config_root = Path(config_root).expanduser() if config_root else data_root
  config = category if category in data_lib.OFFICIAL_CLASS_NAMES else tfds.core.BuilderConfig(
      name=category, description=f"category {category} (not an official MVTec-FS category)")
  builder = MvrecMvtecFs(config=config, data_dir=str(data_dir), file_format="array_record",
                         config_root=str(config_root), data_root=str(data_root))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(data_root), try_download_gcs=False))
  return dataset_dir(data_dir, category)


def open_split(data_dir: str | os.PathLike, category: str, split: str):
  """The tfds data source of one split, images as their stored bytes (see :func:`decode_image`)."""
  d = dataset_dir(data_dir, category)
  if not (d / "dataset_info.json").is_file():
    raise FileNotFoundError(f"no prepared MVTec-FS category {category!r} at {d.absolute()}: prepare it once "
                            f"with mvrec_jax.tfds_builder.prepare(data_root, {str(data_dir)!r}, "
                            f"category={category!r}).")
  if split not in data_lib.SPLITS:
    raise ValueError(f"Unknown split {split!r}; MVTec-FS has {data_lib.SPLITS}.")
  return tfds.builder_from_directory(str(d)).as_data_source(
      split=split, decoders={"image": tfds.decode.SkipDecoding()})


def _text(v) -> str:
  return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def record_instance(rec: dict[str, Any], *, category: str, split: str,
                    class_names: Sequence[str]) -> data_lib.Instance:
  """The :class:`mvrec_jax.data.Instance` of a record (``image_path`` None: the image is in the record)."""
  return data_lib.Instance(
      image_path=None, polygon=np.asarray(rec["polygon"], np.float64),
      bbox=tuple(float(v) for v in rec["bbox"]), label=int(rec["label"]),
      class_name=_text(rec["class_name"]), image_size=tuple(int(v) for v in rec["image_size"]),
      category=category, split=split, row=int(rec["row"]), instance_id=_text(rec["instance_id"]),
      img_rel_path=_text(rec["img_rel_path"]))


def load_prepared(data_dir: str | os.PathLike, category: str) -> data_lib.CategoryData:
  """The prepared category's :class:`CategoryData` (annotations; images stay in the records)."""
  meta_file = dataset_dir(data_dir, category) / "metadata.json"
  names = tuple(json.loads(meta_file.read_text())["class_names"]) if meta_file.is_file() else ()
  splits = {}
  for s in data_lib.SPLITS:
    src = open_split(data_dir, category, s)
    recs = src.__getitems__(list(range(len(src))))
    splits[s] = [record_instance(r, category=category, split=s, class_names=names) for r in recs]
  return data_lib.CategoryData(category=category, class_names=names, train=splits["train"],
                               valid=splits["valid"])


def record_image(rec: dict[str, Any]) -> Image.Image:
  """A record's decoded image (as ``data.load_image`` decodes the file), checked against ``image_size``."""
  img = decode_image(rec["image"])
  h, w = (int(v) for v in rec["image_size"])
  if img.size != (w, h):
    raise ValueError(f"stored image of instance row {int(rec['row'])} is {img.size[0]}x{img.size[1]} (WxH) "
                     f"but its annotation says {w}x{h}.")
  return img


def image_loader(data_dir: str | os.PathLike, category: str, cat: data_lib.CategoryData | None = None):
  """``load_image(inst) -> PIL image`` reading the prepared records of ``category`` (thread-safe reads).

  The instance's ``key`` locates its record (the keys of the stored records are read once, here);
  only the record's image bytes are read and decoded per call (``backbones_jax.tfds_records``), so
  a call costs what decoding the raw file costs. An instance whose key is not among the prepared
  records is refused (``KeyError``). ``cat`` is accepted for compatibility and not needed. For
  ``features.extract_features(..., load_image=image_loader(data_dir, category))``.
  """
  del cat  # the records' own keys are read instead: a foreign CategoryData must not pick records by position
  stored = load_prepared(data_dir, category)
  # key -> (split, record, stored (H, W))
  where = {inst.key: (s, k, inst.image_size) for s in data_lib.SPLITS for k, inst in enumerate(stored.split(s))}
  sources = {s: open_split(data_dir, category, s) for s in data_lib.SPLITS}

  def load_image(inst: data_lib.Instance) -> Image.Image:
    pos = where.get(inst.key)
    if pos is None:
      raise KeyError(f"instance {inst.key} is not in the prepared category {category!r} in {data_dir}: the "
                     f"instances do not come from it.")
    split, record, (h, w) = pos
    img = decode_image(tfds_records.feature_bytes(sources[split], record, "image"))
    if img.size != (w, h):
      raise ValueError(f"stored image of instance {inst.key} is {img.size[0]}x{img.size[1]} (WxH) but its "
                       f"annotation says {w}x{h}.")
    return img

  return load_image


def record_views(rec: dict[str, Any], *, method: str = "mso",
                 crop_sizes: Sequence[float] = views_lib.OFFICIAL_CROP_SIZES,
                 resize: Sequence[int] = views_lib.OFFICIAL_RESIZE) -> tuple[np.ndarray, np.ndarray]:
  """A record -> ``(V, S, S, 3)`` image and ``(V, S, S, 1)`` alpha views, as ``data.instance_inputs``."""
  img = record_image(rec)
  bbox = tuple(float(v) for v in rec["bbox"])
  return views_lib.instance_views(img, np.asarray(rec["polygon"], np.float64), bbox, method=method,
                                  crop_sizes=crop_sizes, resize=resize)


def views_transform(*, method: str = "mso", crop_sizes: Sequence[float] = views_lib.OFFICIAL_CROP_SIZES,
                    resize: Sequence[int] = views_lib.OFFICIAL_RESIZE):
  """``(record, index) -> {"index", "image" (V,S,S,3), "alpha" (V,S,S,1), "label"}`` for grain pipelines."""
  def fn(rec, pos):
    img, alpha = record_views(rec, method=method, crop_sizes=crop_sizes, resize=resize)
    return {"index": np.int64(pos), "image": img, "alpha": alpha, "label": np.int64(rec["label"])}
  return fn
