"""The DSRNet reflection-removal data as tfds datasets (array_record, no TensorFlow), prepared from the raw layout.

``prepare(data_root, data_dir)`` reads the layout of :mod:`derefl_jax.data` (``LAYOUT``; nothing
is downloaded) with its own readers (``voc_images``, ``paired_folder``, ``read_image``) and writes
one tfds dataset per kind of set under ``<data_dir>/derefl_reflection/<config>/1.0.0/`` with
tfds's ``download_and_prepare`` (``file_format="array_record"``, ``data_root`` as ``manual_dir``):

=============== ======================================= ===========================================
config          splits (present folders only)           features
=============== ======================================= ===========================================
``voc2012``     ``train`` (VOC2012 PNGImages, sorted)   ``image``, ``name``
``train_pairs`` ``real`` (89, Zhang et al. 2018),        ``blended``, ``transmission``, ``name``
                ``nature`` (200, Li et al. 2020)
``test_pairs``  ``real20`` (Real20), ``nature``          ``blended``, ``transmission``, ``name``
``sir2``        ``objects``, ``postcard``, ``wild``       ``blended``, ``transmission``,
                                                         ``reflection``, ``name``
=============== ======================================= ===========================================

Every image decodes (:func:`decode_image`, PIL) to exactly what :func:`derefl_jax.data.read_image`
returns for the raw file (8-bit RGB after EXIF orientation, alpha dropped): the file's own bytes
are stored when PIL decodes them to that (checked for each image while preparing: plain RGB JPEG /
PNG files, the usual case, and as fast to decode as the raw files), otherwise a lossless PNG of
``read_image``'s array (EXIF-rotated, grayscale, RGBA, palette, TIFF...). Images of more than 8 bits
are stored rounded to 8 bits (the benchmark sets are 8-bit). ``metadata.json`` counts each case.
Read the images with ``decoders=SkipDecoding`` and :func:`decode_image` (tfds's own decoding uses
OpenCV, whose JPEG output can differ from PIL's). Pairs keep the reader's pairing and order
(sorted blended file names).

Reading: :func:`open_pairs` gives a :class:`PreparedPairs` whose ``load(i, multiple=32)`` equals
``PairedFolder.load``; :func:`test_sets` mirrors ``data.test_sets``; :class:`PreparedTrainSampler`
is ``data.TrainSampler`` drawing from the prepared records (the same batches for the same seed).
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from backbones_jax import tfds_records
from derefl_jax import data as data_lib
from derefl_jax.metrics import resize_to_multiple

__all__ = ["BUILDER_NAME", "VERSION", "CONFIGS", "TEST_SPLITS", "DereflReflection", "prepare",
           "is_prepared", "dataset_dir", "open_split", "open_pairs", "PreparedPairs", "test_sets",
           "PreparedTrainSampler", "LICENSES"]

BUILDER_NAME = "derefl_reflection"
VERSION = "1.0.0"

# config -> {split: (path under the data root, has reflection_layer)}; voc2012 is handled apart.
CONFIGS: dict[str, dict[str, tuple[str, bool]]] = {
    "voc2012": {},
    "train_pairs": {"real": ("train/real", False), "nature": ("train/nature", False)},
    "test_pairs": {"real20": (data_lib.TEST_SETS["real20"], False), "nature": (data_lib.TEST_SETS["nature"], False)},
    "sir2": {n: (data_lib.TEST_SETS[n], True) for n in ("objects", "postcard", "wild")},
}
# data.TEST_SETS names -> (config, split)
TEST_SPLITS = {"real20": ("test_pairs", "real20"), "nature": ("test_pairs", "nature"),
               "objects": ("sir2", "objects"), "postcard": ("sir2", "postcard"), "wild": ("sir2", "wild")}

LICENSES = {
    "voc2012": "PASCAL VOC2012 images (http://host.robots.ox.ac.uk/pascal/VOC/voc2012/): Flickr images under "
               "the Flickr terms of use; the VOC licence allows research use.",
    "train_pairs": "Real pairs of Zhang et al. 2018 (github ceciliavision/perceptual-reflection-removal) and "
                   "Li et al. 2020 (Nature, github JHL-HUST/IBCLN): research use, as distributed by the authors.",
    "test_pairs": "Real20 (Zhang et al. 2018) and Nature (Li et al. 2020) test pairs: research use, as "
                  "distributed by the authors.",
    "sir2": "SIR^2 benchmark (Wan et al. 2017, https://sir2data.github.io/): research use; request from the "
            "authors.",
}


def _png(image: np.ndarray) -> bytes:
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=1)
  return buf.getvalue()


def decode_image(data: bytes) -> np.ndarray:
  """Stored PNG bytes -> uint8 (H, W, 3) (what ``data.read_image`` gave for the raw file)."""
  from PIL import Image
  with Image.open(io.BytesIO(bytes(data))) as im:
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))  # (convert would copy an RGB image)


class DereflReflection(tfds.core.GeneratorBasedBuilder):
  """Reflection-removal training and test sets of the DSRNet layout (config = kind of set)."""

  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = {str(VERSION): "Images as read by derefl_jax.data.read_image, lossless PNG."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n) for n in CONFIGS]
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Nothing is downloaded; the data root must have the layout:\n" + data_lib.LAYOUT
  # tfds 4.9.10 locates a builder's source file with `importlib_resources` (not installed) when the
  # class lives in a package; it only needs it for a checksums file, and nothing is downloaded.
  code_path = tfds.core.utils.classproperty(classmethod(lambda cls: None))

  def _info(self) -> tfds.core.DatasetInfo:
    name = self.builder_config.name
    img = lambda: tfds.features.Image(shape=(None, None, 3))  # noqa: E731
    if name == "voc2012":
      feats = {"image": img(), "name": tfds.features.Text()}
    else:
      feats = {"blended": img(), "transmission": img(), "name": tfds.features.Text()}
      if name == "sir2":
        feats["reflection"] = img()
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"Reflection removal, {name}: images of the DSRNet data layout read by derefl_jax.data.",
        features=tfds.features.FeaturesDict(feats), homepage="https://arxiv.org/abs/2505.12641v1",
        license=LICENSES[name], metadata=tfds.core.MetadataDict(), disable_shuffling=True)

  def _encoded(self, path) -> bytes:
    """The file's own bytes when PIL decodes them to what ``read_image`` gives, else a lossless PNG."""
    a = data_lib.read_image(path)
    if a.dtype != np.uint8:
      self._counts["quantized_to_8bit"] += 1
      a = np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8)
    else:
      raw = Path(path).read_bytes()
      try:
        same = np.array_equal(decode_image(raw), a)
      except Exception:  # noqa: BLE001 - a format PIL reads only from a path: store the PNG
        same = False
      if same:
        self._counts["stored_as_file"] += 1
        return raw
    self._counts["stored_as_png"] += 1
    return _png(a)

  def _split_generators(self, dl_manager):
    root = Path(dl_manager.manual_dir)
    name = self.builder_config.name
    self._counts = {"stored_as_file": 0, "stored_as_png": 0, "quantized_to_8bit": 0}
    if name == "voc2012":
      files = data_lib.voc_images(root)
      self.info.metadata.update({"source": str(root), "sets": {"train": len(files)}})
      return {"train": self._generate_examples("voc", files)}
    out, sets = {}, {}
    for split, (rel, refl) in CONFIGS[name].items():
      if (root / rel / "blended").is_dir():
        folder = data_lib.paired_folder(root / rel, name=split, reflection=refl)
        sets[split] = len(folder)
        out[split] = self._generate_examples("pairs", folder)
    if not out:
      raise FileNotFoundError(f"none of the {name} sets ({[r for r, _ in CONFIGS[name].values()]}) is under "
                              f"{root}. The expected layout is:\n{data_lib.LAYOUT}")
    self.info.metadata.update({"source": str(root), "sets": sets})
    return out

  def _generate_examples(self, kind: str, what):
    return self._voc_examples(what) if kind == "voc" else self._pair_examples(what)

  def _voc_examples(self, files):
    for k, p in enumerate(files):
      yield k, {"image": self._encoded(p), "name": p.name}
    self.info.metadata["images"] = dict(self._counts)

  def _pair_examples(self, folder: data_lib.PairedFolder):
    for k in range(len(folder)):
      ex = {"blended": self._encoded(folder.blended[k]),
            "transmission": self._encoded(folder.transmission[k]), "name": folder.blended[k].name}
      if folder.reflection is not None:
        ex["reflection"] = self._encoded(folder.reflection[k])
      yield k, ex
    self.info.metadata["images"] = dict(self._counts)


def dataset_dir(data_dir: str | os.PathLike, config: str) -> Path:
  """``<data_dir>/derefl_reflection/<config>/<version>``."""
  return Path(data_dir) / BUILDER_NAME / config / VERSION


def is_prepared(data_dir: str | os.PathLike, config: str) -> bool:
  return (dataset_dir(data_dir, config) / "dataset_info.json").is_file()


def _present(root: Path, config: str) -> bool:
  if config == "voc2012":
    return any((root / rel).is_dir() for rel in data_lib.VOC_CANDIDATES)
  return any((root / rel / "blended").is_dir() for rel, _ in CONFIGS[config].values())


def prepare(data_root: str | os.PathLike, data_dir: str | os.PathLike,
            configs: Sequence[str] | None = None) -> dict[str, Path]:
  """Prepares each config (default: every one whose folders are under ``data_root``) once."""
  root = Path(data_root).expanduser()
  if not root.is_dir():
    raise FileNotFoundError(f"data root {root} does not exist. The expected layout is:\n{data_lib.LAYOUT}")
  wanted = [c for c in CONFIGS if _present(root, c)] if configs is None else list(configs)
  unknown = [c for c in wanted if c not in CONFIGS]
  if unknown:
    raise ValueError(f"unknown config(s) {unknown}; choose from {list(CONFIGS)}.")
  if not wanted:
    raise FileNotFoundError(f"no reflection-removal set under {root}. The expected layout is:\n{data_lib.LAYOUT}")
  out = {}
  for c in wanted:
    b = DereflReflection(config=c, data_dir=str(data_dir), file_format="array_record")
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root),
                                                                        try_download_gcs=False))
    out[c] = dataset_dir(data_dir, c)
  return out


def open_split(data_dir: str | os.PathLike, config: str, split: str):
  """The tfds data source of ``config``/``split`` (images decoded to uint8 arrays by tfds)."""
  d = dataset_dir(data_dir, config)
  if not (d / "dataset_info.json").is_file():
    raise FileNotFoundError(f"no prepared {config!r} sets at {d.absolute()}: prepare them once with "
                            f"derefl_jax.tfds_builder.prepare(data_root, {str(data_dir)!r}).")
  builder = tfds.builder_from_directory(str(d))
  if split not in builder.info.splits:
    raise FileNotFoundError(f"{config!r} at {d} has no split {split!r} (its raw folder was absent when it was "
                            f"prepared); it has {sorted(builder.info.splits)}.")
  return builder.as_data_source(split=split, decoders={
      k: tfds.decode.SkipDecoding() for k in ("image", "blended", "transmission", "reflection")
      if k in builder.info.features})


class PreparedPairs:
  """A prepared set of pairs with the interface of :class:`derefl_jax.data.PairedFolder` that readers use."""

  def __init__(self, source, name: str):
    self.source, self.name = source, name
    self._names: list[str] | None = None
    self._has_reflection = len(source) > 0 and "reflection" in source[0]

  def __len__(self) -> int:
    return len(self.source)

  @property
  def names(self) -> list[str]:
    if self._names is None:
      self._names = [r["name"].decode() if isinstance(r["name"], bytes) else str(r["name"])
                     for r in self.source.__getitems__(list(range(len(self))))]
    return self._names

  def images(self, index: int) -> dict[str, np.ndarray]:
    """Record ``index`` as uint8 arrays: ``blended``, ``transmission`` (and ``reflection``)."""
    out = {k: decode_image(tfds_records.feature_bytes(self.source, index, k)) for k in ("blended", "transmission")}
    if self._has_reflection:
      out["reflection"] = decode_image(tfds_records.feature_bytes(self.source, index, "reflection"))
    return out

  def load(self, index: int, *, multiple: int | None = 32) -> dict[str, Any]:
    """As ``PairedFolder.load``: float32 ``input``, ``T`` (and ``R``), aligned to ``multiple``."""
    rec = self.source[int(index)]
    out: dict[str, Any] = {"name": rec["name"].decode() if isinstance(rec["name"], bytes) else str(rec["name"])}
    blended = decode_image(rec["blended"])
    orig_hw = blended.shape[:2]
    if multiple:
      blended = resize_to_multiple(blended, multiple)
    out["input"] = data_lib.as_float(blended)
    for key, field in (("T", "transmission"), ("R", "reflection")):
      if field not in rec:
        continue
      img = decode_image(rec[field])
      if img.shape[:2] == orig_hw and multiple:
        img = resize_to_multiple(img, multiple)
      elif img.shape[:2] != blended.shape[:2]:
        img = data_lib._resize(img, blended.shape[:2])  # pylint: disable=protected-access
      out[key] = data_lib.as_float(img)
    return out

  def __iter__(self):
    for i in range(len(self)):
      yield self.load(i)


def open_pairs(data_dir: str | os.PathLike, config: str, split: str, name: str | None = None) -> PreparedPairs:
  return PreparedPairs(open_split(data_dir, config, split), name or split)


def test_sets(data_dir: str | os.PathLike, names: Sequence[str] | None = None) -> dict[str, PreparedPairs]:
  """The prepared test sets keyed by ``data.TEST_SETS`` names (default all), like ``data.test_sets``."""
  names = list(data_lib.TEST_SETS) if names is None else list(names)
  unknown = [n for n in names if n not in TEST_SPLITS]
  if unknown:
    raise ValueError(f"Unknown test set(s) {unknown}; valid names: {sorted(TEST_SPLITS)}.")
  return {n: open_pairs(data_dir, *TEST_SPLITS[n], name=n) for n in names}


class PreparedTrainSampler(data_lib.TrainSampler):
  """``data.TrainSampler`` over prepared records: the same draws, so the same batches as on raw files."""

  def __init__(self, *, data_dir: str | os.PathLike, use_voc: bool = True,
               real: Sequence[str] = ("real", "nature"), weights: Mapping[str, float] | None = None, **kwargs):
    self._voc_source = open_split(data_dir, "voc2012", "train") if use_voc else None
    folders = [open_pairs(data_dir, "train_pairs", r) for r in real]
    voc = list(range(len(self._voc_source))) if self._voc_source is not None else []
    super().__init__(voc=voc, real=folders, weights=weights, **kwargs)

  def _voc(self, k: int) -> np.ndarray:
    return decode_image(tfds_records.feature_bytes(self._voc_source, k, "image"))

  def _sample(self, step: int, j: int):
    # the draws of data.TrainSampler._sample, in the same order, on decoded records
    rng = np.random.default_rng([self.seed, step, self.process_index, j])
    source = self.sources[int(rng.choice(len(self.sources), p=self.probs))]
    if source == "synthetic":
      t_img = self._voc(self.t_pool[int(rng.integers(len(self.t_pool)))])
      r_img = self._voc(self.r_pool[int(rng.integers(len(self.r_pool)))])
      (t,) = data_lib._augment_crop(rng, [t_img], self.crop, self.scale_range)  # pylint: disable=protected-access
      (r,) = data_lib._augment_crop(rng, [r_img], self.crop, self.scale_range)  # pylint: disable=protected-access
      return t, r, np.zeros_like(t), True
    folder = self.real[source]
    i = int(rng.integers(len(folder)))
    ims = folder.images(i)
    pair = [ims["blended"], ims["transmission"]]
    if pair[1].shape[:2] != pair[0].shape[:2]:
      pair[1] = data_lib._resize(pair[1], pair[0].shape[:2])  # pylint: disable=protected-access
    blended, t = data_lib._augment_crop(rng, pair, self.crop, self.scale_range)  # pylint: disable=protected-access
    return t, np.clip(blended - t, 0.0, 1.0), blended, False
