"""Cross-modal retrieval datasets in the DCMH / DCHMT ``.mat`` layouts, splits, and the grain pipeline.

Two on-disk layouts are read (auto-detected under a dataset ``root``):

1. **arrays** (DCMH style), one file ``<root>/<file>.mat`` where ``<file>`` is one of
   ``DATASETS[name].mat_names`` (e.g. ``mirflickr25k.mat``), scipy/MATLAB v5 format:

   ========== ================================ =========================================
   key        shape / dtype                    meaning
   ========== ================================ =========================================
   ``IAll``   (N, H, W, 3) uint8               RGB images (``images`` is accepted too)
   ``YAll``   (N, V) float                     tag bag-of-words (MIRFlickr V = 1386)
   ``LAll``   (N, C) {0, 1}                    multi-hot labels (MIRFlickr C = 24)
   ``caption`` (N,) cell of str, optional      captions / tag strings for the CLIP text tower
   ``tag_vocab`` (V,) cell of str, optional    the word of each BoW dimension (column of YAll)
   ========== ================================ =========================================

   The CLIP teacher needs text. It is, in this order: ``caption``; else the tag words of each item
   (the non-zero columns of ``YAll`` named by ``tag_vocab``, from the file's key or from a tag
   vocabulary file, one word per line, given as ``tag_vocab=`` or found as ``<root>/tag_vocab.txt``);
   else a ``DatasetError`` says what is missing. No text is ever made up. The student's text input
   is ``YAll`` itself.

   DCMH's own release is MATLAB v7.3 (HDF5, keys ``images`` (224, 224, 3, N) in MATLAB order,
   ``YAll``, ``LAll``): it is read when ``h5py`` is installed (axes reversed to MATLAB order, then
   images moved to NHWC), otherwise a clear error says so. MATLAB-order (H, W, 3, N) and NCHW
   image arrays are moved to NHWC in every case.

2. **paths** (DCHMT / MITH style; also the "raw image folder" reader): images on disk, and

   ================ ========================= ====================================================
   file             key: shape                meaning
   ================ ========================= ====================================================
   ``index.mat``    ``index``: (N,) cell str  image paths, relative to ``root`` (or absolute; paths
                                              of another machine are looked up under ``root`` by
                                              their last components, as DCHMT writes them)
   ``label.mat``    ``category``: (N, C)      multi-hot labels
   ``caption.mat``  ``caption``: (N,) cell    captions / tag strings (or ``caption.txt``, 1 a line)
   ``tag.mat``      ``YAll``: (N, V), opt.    the dataset's own tag BoW (key ``YAll``, ``tags`` or
                                              ``tag``), used as the student's text input as is
   ================ ========================= ====================================================

   Without ``tag.mat`` a binary BoW is built from the captions: over the tag vocabulary file when
   one is given (so its dimensions are the dataset's tags), else over the ``max_vocab`` most
   frequent caption words. ``CrossModalData.bow_source`` says which (the run prints it). Without
   a caption file the text comes from ``tag.mat`` and the tag vocabulary, as for layout 1.

Splits (DCMH protocol): a fixed-seed permutation; the first ``num_query`` items are the queries,
the rest is the retrieval database, and the first ``num_train`` database items are the (offline)
training set. In the online protocol the database arrives in chunks (``lcdh_jax.online``).
"""
from __future__ import annotations

import collections
import dataclasses
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.io

__all__ = ["DatasetSpec", "DATASETS", "CrossModalData", "Split", "DatasetError", "load_dataset",
           "read_arrays_mat", "read_paths_layout", "read_image_folder", "read_tag_vocab",
           "captions_from_tags", "split_indices", "bow_from_captions", "load_image",
           "image_dataset", "imagenet_normalize", "TAG_VOCAB_FILE"]

TAG_VOCAB_FILE = "tag_vocab.txt"  # looked for in the dataset root when no tag_vocab is given


class DatasetError(ValueError):
  """The dataset files are inconsistent or lack something the run needs (a user error)."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Known facts of one benchmark (sizes from DCMH / DCHMT / MITH papers)."""
  name: str
  num_query: int
  num_train: int
  num_labels: int | None
  tag_dim: int | None
  num_items: int | None
  mat_names: tuple[str, ...]
  url_hint: str


DATASETS = {
    "mirflickr": DatasetSpec(
        "mirflickr", 2000, 10000, 24, 1386, 20015,
        ("mirflickr25k.mat", "mirflickr.mat", "FLICKR-25K.mat", "flickr25k.mat"),
        "MIRFlickr-25K (https://press.liacs.nl/mirflickr/) preprocessed as in DCMH "
        "(github jiangqy/DCMH-CVPR2017) or DCHMT (github kalenforn/DCHMT)"),
    "nuswide": DatasetSpec(
        "nuswide", 2100, 10500, 21, 1000, 195834,
        ("nuswide.mat", "nus-wide.mat", "NUS-WIDE.mat", "nus-wide-tc21.mat", "nus-wide-tc10.mat"),
        "NUS-WIDE top-21 (or top-10) concepts, preprocessed as in DCMH / DCHMT"),
    "iapr": DatasetSpec(
        "iapr", 2000, 10000, 255, 2912, 20000,
        ("iapr.mat", "iapr-tc12.mat", "IAPR-TC12.mat"),
        "IAPR TC-12 (https://www.imageclef.org/photodata) preprocessed as in DCMH-style releases"),
    "coco": DatasetSpec(
        "coco", 5000, 10000, 80, None, 122218,
        ("coco.mat", "mscoco.mat", "MS-COCO.mat"),
        "MS-COCO 2014 (https://cocodataset.org) preprocessed as in DCHMT / MITH"),
    "synthetic": DatasetSpec(
        "synthetic", 200, 600, 16, None, None, ("synthetic.mat",),
        "lcdh_jax.synthetic.write_mat (generated by the demo)"),
}


@dataclasses.dataclass
class CrossModalData:
  """A loaded dataset. Exactly one of ``images`` (N,H,W,3) uint8 / ``image_paths`` (N,) is set.

  ``tags`` (N, V) float32 BoW (the student's text input); ``labels`` (N, C) float32 multi-hot;
  ``captions`` (N,) str (the CLIP teacher's text). ``text_source`` / ``bow_source`` say where the
  captions and the BoW came from (files and keys, or how they were built), for the run's log.
  """
  name: str
  tags: np.ndarray
  labels: np.ndarray
  captions: list[str]
  images: np.ndarray | None = None
  image_paths: list[str] | None = None
  text_source: str = ""
  bow_source: str = ""
  tag_vocab: list[str] | None = None

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  def image(self, i: int, image_size: int | None = None) -> np.ndarray:
    """Image ``i`` as uint8 (H, W, 3), resized to ``image_size`` when given."""
    if self.images is not None:
      im = self.images[i]
      if image_size is not None and im.shape[:2] != (image_size, image_size):
        from PIL import Image
        im = np.asarray(Image.fromarray(im).resize((image_size, image_size), Image.BILINEAR))
      return im
    return load_image(self.image_paths[i], image_size)


@dataclasses.dataclass(frozen=True)
class Split:
  """Index arrays (int64) into a dataset: queries, database (all non-queries), train (in database)."""
  query: np.ndarray
  database: np.ndarray
  train: np.ndarray


def _strings(x) -> list[str]:
  """A MATLAB cell / char array loaded by scipy -> list of python str (stripped)."""
  arr = np.asarray(x)
  if arr.dtype == object:
    out = []
    for v in arr.reshape(-1):
      v = np.asarray(v)
      out.append(str(v.reshape(-1)[0]).strip() if v.size else "")
    return out
  if arr.dtype.kind in "US":
    return [str(v).strip() for v in arr.reshape(-1)]
  raise DatasetError(f"expected a cell array or char array of strings; got dtype {arr.dtype}.")


def _missing_message(name: str, root: Path) -> str:
  root = Path(root).absolute()
  spec = DATASETS.get(name)
  names = ", ".join(spec.mat_names) if spec else f"{name}.mat"
  hint = f" Source: {spec.url_hint}." if spec else ""
  return (f"No {name!r} dataset found under {root}. Put EITHER one DCMH-style file "
          f"{root}/<one of: {names}> with keys IAll (N,H,W,3) uint8, YAll (N,V) tag BoW, "
          f"LAll (N,C) labels and either caption (N,) str or the tag words (key tag_vocab, or "
          f"{root}/{TAG_VOCAB_FILE} with one word per BoW column), OR the DCHMT/MITH layout {root}/index.mat "
          f"(key 'index': image paths relative to {root}), {root}/label.mat (key 'category': "
          f"(N,C)), {root}/caption.mat (key 'caption') or caption.txt [, {root}/tag.mat (key "
          f"'YAll')], OR a raw image folder {root}/images/ with {root}/annotations.csv (columns "
          f"image,labels,caption; labels ';'-separated) [and {root}/classes.txt].{hint} See docs/lcdh.md.")


def _loadmat(path: Path) -> dict:
  try:
    return scipy.io.loadmat(path)
  except NotImplementedError:  # MATLAB v7.3 = HDF5
    try:
      import h5py
    except ImportError as e:
      raise DatasetError(
          f"{path} is a MATLAB v7.3 (HDF5) file; reading it needs h5py (`pip install h5py`), "
          f"or re-save it in v5 format (MATLAB: save(f, '-v7'); python: scipy.io.savemat).") from e
    out = {}
    with h5py.File(path, "r") as f:
      for k in f.keys():
        if isinstance(f[k], h5py.Dataset):
          # MATLAB stores column-major: reverse the axes to get row-major (N, ...).
          out[k] = np.asarray(f[k]).transpose(tuple(range(f[k].ndim))[::-1])
    return out
  except Exception as e:  # noqa: BLE001 - scipy raises ValueError/MatReadError/... on a corrupt file
    raise DatasetError(f"{path} is not a readable MATLAB .mat file ({type(e).__name__}: {e}); it is "
                       "truncated, corrupt or of another format: download or convert it again.") from None


def bow_from_captions(captions: Sequence[str], vocab: Sequence[str] | None = None,
                      max_vocab: int = 2000) -> tuple[np.ndarray, list[str]]:
  """Binary bag of words (N, V) float32 over ``vocab`` (default: the ``max_vocab`` most frequent words).

  Words are lower-cased ``[a-z0-9]+`` runs. A given ``vocab`` entry (lower-cased) also matches a
  whole whitespace-separated token, so tags such as ``new_york`` or ``b&w`` are found as written.
  """
  tok = [re.findall(r"[a-z0-9]+", c.lower()) for c in captions]
  if vocab is None:
    counts = collections.Counter(w for t in tok for w in set(t))
    vocab = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_vocab]]
  else:
    tok = [t + c.lower().split() for t, c in zip(tok, captions)]
  index = {}
  for i, w in enumerate(vocab):
    index.setdefault(str(w).lower(), i)
  bow = np.zeros((len(captions), len(vocab)), np.float32)
  for i, t in enumerate(tok):
    for w in t:
      if w in index:
        bow[i, index[w]] = 1.0
  return bow, list(vocab)


def read_tag_vocab(path: str | os.PathLike, dim: int | None = None) -> list[str]:
  """A tag vocabulary file: one word per line, line j names BoW dimension j (``dim`` lines)."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"tag vocabulary file {path.absolute()} does not exist; it must hold "
                            f"one tag word per line, line j naming column j of the tag BoW.")
  words = [l.strip() for l in path.read_text(encoding="utf-8").splitlines()]
  while words and not words[-1]:
    words.pop()  # trailing empty lines
  empty = [i + 1 for i, w in enumerate(words) if not w]
  if empty:
    raise DatasetError(f"{path}: line(s) {empty[:5]} are empty; every line must name one BoW "
                       f"dimension.")
  if dim is not None and len(words) != dim:
    raise DatasetError(f"{path} has {len(words)} words but the tag BoW has {dim} dimensions; the "
                       f"file must list exactly one word per dimension, in column order.")
  return words


def captions_from_tags(tags: np.ndarray, vocab: Sequence[str]) -> list[str]:
  """The text of each item: the words of its non-zero BoW dimensions, in dimension order."""
  tags = np.asarray(tags)
  if tags.shape[1] != len(vocab):
    raise DatasetError(f"tag vocabulary has {len(vocab)} words but the tag BoW has "
                       f"{tags.shape[1]} dimensions.")
  return [" ".join(vocab[j] for j in np.flatnonzero(row)) for row in tags]


def _no_text_message(where: str, dim: int, root: Path, name: str) -> str:
  spec = DATASETS.get(name)
  example = (f" (for {name}: {spec.tag_dim} lines)" if spec is not None and spec.tag_dim else "")
  return (f"{where} has no captions, and no tag vocabulary names its {dim} BoW dimensions, so the "
          f"CLIP teacher would have no text to read. Supply the tag words: a text file with one "
          f"word per line, line j naming BoW column j{example}, as {root.absolute() / TAG_VOCAB_FILE} "
          f"or passed as tag_vocab= (train: --config.tag_vocab=PATH); or add the captions "
          f"(key 'caption' in the .mat, or caption.mat / caption.txt).")


def _resolve_vocab(tag_vocab, root: Path) -> Path | None:
  if tag_vocab:
    return Path(tag_vocab)
  return root / TAG_VOCAB_FILE if (root / TAG_VOCAB_FILE).is_file() else None


def _validate(name, tags, labels, captions, n_images) -> None:
  n = labels.shape[0]
  if labels.ndim != 2:
    raise DatasetError(f"{name}: labels must be (N, C); got shape {labels.shape}.")
  if tags.ndim != 2:
    raise DatasetError(f"{name}: the tag BoW must be (N, V); got shape {tags.shape}.")
  for what, m in (("tags", tags.shape[0]), ("captions", n if captions is None else len(captions)),
                  ("images", n_images)):
    if m != n:
      raise DatasetError(f"{name}: {what} has {m} items but labels has {n}; the files do not "
                         f"describe the same samples.")


def read_arrays_mat(path: str | os.PathLike, name: str = "dataset",
                    tag_vocab: str | os.PathLike | None = None) -> CrossModalData:
  """Read the DCMH-style single ``.mat`` file (keys and the text rule in the module docstring)."""
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist. " + _missing_message(name, path.parent))
  m = _loadmat(path)
  img_key = "IAll" if "IAll" in m else "images" if "images" in m else None
  missing = [k for k, ok in (("IAll", img_key), ("YAll", "YAll" in m), ("LAll", "LAll" in m))
             if not ok]
  if missing:
    raise DatasetError(f"{path} lacks keys {missing}; found {sorted(k for k in m if k[0] != '_')}. "
                       f"Expected IAll (N,H,W,3) uint8, YAll (N,V), LAll (N,C).")
  images = np.asarray(m[img_key])
  labels = np.asarray(m["LAll"], np.float32)
  tags = np.asarray(m["YAll"], np.float32)
  if images.ndim == 4 and images.shape[-1] != 3 and images.shape[2] == 3:
    images = images.transpose(3, 0, 1, 2)  # MATLAB H x W x 3 x N (DCMH's own files) -> NHWC
  elif images.ndim == 4 and images.shape[-1] != 3 and images.shape[1] == 3:
    images = images.transpose(0, 2, 3, 1)  # NCHW -> NHWC
  if images.ndim != 4 or images.shape[-1] != 3:
    raise DatasetError(f"{path}: {img_key} must be (N, H, W, 3); got {images.shape}.")
  if images.dtype != np.uint8:
    images = np.clip(images, 0, 255).astype(np.uint8)
  # scipy.io.loadmat returns Fortran order: one C-contiguous copy now, instead of a strided gather per item
  images = np.ascontiguousarray(images)
  if tags.ndim != 2:
    raise DatasetError(f"{path}: YAll must be (N, V); got {tags.shape}.")
  _validate(name, tags, labels, None, images.shape[0])
  vocab, vocab_from = None, ""
  vocab_file = _resolve_vocab(tag_vocab, path.parent)
  if vocab_file is not None:
    vocab, vocab_from = read_tag_vocab(vocab_file, tags.shape[1]), str(vocab_file)
  elif "tag_vocab" in m:
    vocab, vocab_from = _strings(m["tag_vocab"]), f"{path.name} key 'tag_vocab'"
    if len(vocab) != tags.shape[1]:
      raise DatasetError(f"{path}: tag_vocab has {len(vocab)} words but YAll has {tags.shape[1]} "
                         f"columns.")
  if "caption" in m:
    captions = _strings(m["caption"])
    text_source = f"captions from {path.name} key 'caption'"
  elif vocab is not None:
    captions = captions_from_tags(tags, vocab)
    text_source = f"tag words of each item (YAll columns named by {vocab_from})"
  else:
    raise DatasetError(_no_text_message(str(path), tags.shape[1], path.parent, name))
  _validate(name, tags, labels, captions, images.shape[0])
  return CrossModalData(name=name, images=images, tags=tags, labels=labels, captions=captions,
                        text_source=text_source, tag_vocab=vocab,
                        bow_source=f"the dataset's own: {path.name} key 'YAll', "
                                   f"{tags.shape[1]}-d")


def _built_bow(captions, vocab, max_vocab, why: str) -> tuple[np.ndarray, str]:
  if vocab is not None:
    tags, _ = bow_from_captions(captions, vocab=vocab)
    return tags, (f"BUILT ({why}): binary {tags.shape[1]}-d BoW of the captions over the tag "
                  f"vocabulary")
  tags, words = bow_from_captions(captions, max_vocab=max_vocab)
  return tags, (f"BUILT ({why}): binary {tags.shape[1]}-d BoW over the {len(words)} most "
                f"frequent caption words (max_vocab={max_vocab})")


def read_paths_layout(root: str | os.PathLike, name: str = "dataset", max_vocab: int = 2000,
                      tag_vocab: str | os.PathLike | None = None) -> CrossModalData:
  """Read the DCHMT/MITH layout (``index.mat``, ``label.mat``, ``caption.mat``, opt. ``tag.mat``)."""
  root = Path(root)
  need = [root / "index.mat", root / "label.mat"]
  cap_mat, cap_txt, tag_mat = root / "caption.mat", root / "caption.txt", root / "tag.mat"
  has_caps = cap_mat.exists() or cap_txt.exists()
  if not all(p.exists() for p in need) or not (has_caps or tag_mat.exists()):
    raise FileNotFoundError(_missing_message(name, root))
  paths = _strings(_loadmat(root / "index.mat")["index"])
  lab = _loadmat(root / "label.mat")
  key = "category" if "category" in lab else "LAll" if "LAll" in lab else None
  if key is None:
    raise DatasetError(f"{root / 'label.mat'} has no 'category' (or 'LAll') key.")
  labels = np.asarray(lab[key], np.float32)
  tags = bow_source = None
  if tag_mat.exists():
    tm = _loadmat(tag_mat)
    tkey = next((k for k in ("YAll", "tags", "tag") if k in tm), None)
    if tkey is None:
      raise DatasetError(f"{tag_mat} has none of the keys 'YAll', 'tags', 'tag' (the tag BoW, "
                         f"(N, V)); found {sorted(k for k in tm if k[0] != '_')}.")
    tags = np.asarray(tm[tkey], np.float32)
    if tags.ndim != 2:
      raise DatasetError(f"{tag_mat}: {tkey} must be (N, V); got {tags.shape}.")
    bow_source = f"the dataset's own: tag.mat key {tkey!r}, {tags.shape[1]}-d"
  vocab_file = _resolve_vocab(tag_vocab, root)
  vocab = read_tag_vocab(vocab_file, None if tags is None else tags.shape[1]) if vocab_file else None
  if cap_mat.exists():
    captions = _strings(_loadmat(cap_mat)["caption"])
    text_source = "captions from caption.mat key 'caption'"
  elif cap_txt.exists():
    captions = [l.rstrip("\n") for l in cap_txt.read_text(encoding="utf-8").splitlines()]
    text_source = "captions from caption.txt (one per line)"
  elif vocab is not None:
    captions = captions_from_tags(tags, vocab)
    text_source = f"tag words of each item (tag.mat columns named by {vocab_file})"
  else:
    raise DatasetError(_no_text_message(f"{root} (no caption.mat / caption.txt)", tags.shape[1],
                                        root, name))
  if tags is None:
    tags, bow_source = _built_bow(captions, vocab, max_vocab, "no tag.mat")
  full = _locate_images(paths, root)
  _validate(name, tags, labels, captions, len(full))
  return CrossModalData(name=name, image_paths=full, tags=tags, labels=labels, captions=captions,
                        text_source=text_source, bow_source=bow_source, tag_vocab=vocab)


def _locate_images(paths: list[str], root: Path) -> list[str]:
  """Image paths of ``index.mat``: as listed (relative to ``root``, or absolute), or, when the
  listed place does not exist (DCHMT's ``make_*.py`` stores paths of the machine that ran it, e.g.
  ``/data/flickr25k/mirflickr/im1.jpg``), the same trailing path components under ``root``
  (``root/mirflickr/im1.jpg``, else ``root/im1.jpg``), chosen once from the first image."""
  full = [p if os.path.isabs(p) else str(root / p) for p in paths]
  if not full or Path(full[0]).exists():
    return full
  parts = [Path(p.replace("\\", "/")).parts for p in paths]
  for k in (3, 2, 1):
    if len(parts[0]) >= k and (root.joinpath(*parts[0][-k:])).exists():
      return [str(root.joinpath(*pp[-k:])) for pp in parts]
  raise FileNotFoundError(f"image {full[0]} listed in {root / 'index.mat'} does not exist, nor "
                          f"under {root} by its last path components; put the images at the "
                          f"listed paths (relative to {root}), or under {root} keeping the "
                          f"listed file names (e.g. {root}/{Path(parts[0][-1])}).")


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def read_image_folder(root: str | os.PathLike, name: str = "dataset", max_vocab: int = 2000,
                      tag_vocab: str | os.PathLike | None = None) -> CrossModalData:
  """Read a raw image folder: ``images/`` plus ``annotations.csv`` (opt. ``classes.txt``).

  ``annotations.csv`` has a header and the columns ``image`` (path relative to ``images/``),
  ``labels`` (class names separated by ``;``) and ``caption`` (free text). Classes are the lines
  of ``classes.txt`` in that order when it exists, else the sorted set of names in the CSV; the
  tag BoW is built from the captions (``bow_from_captions``), over the tag vocabulary when one is
  given, else over the ``max_vocab`` most frequent words.
  """
  import csv
  root = Path(root)
  ann, img_dir = root / "annotations.csv", root / "images"
  if not ann.exists() or not img_dir.is_dir():
    raise FileNotFoundError(f"An image-folder dataset needs {img_dir}/ and {ann} (columns image,labels,caption).")
  with open(ann, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  if not rows or not {"image", "labels", "caption"} <= set(rows[0]):
    raise DatasetError(f"{ann} must have a header with the columns image,labels,caption and at least one row.")
  names = [[c.strip() for c in r["labels"].split(";") if c.strip()] for r in rows]
  if (root / "classes.txt").exists():
    classes = [l.strip() for l in (root / "classes.txt").read_text(encoding="utf-8").splitlines() if l.strip()]
  else:
    classes = sorted({c for row in names for c in row})
  index = {c: j for j, c in enumerate(classes)}
  labels = np.zeros((len(rows), len(classes)), np.float32)
  for i, row in enumerate(names):
    for c in row:
      if c not in index:
        raise DatasetError(f"{ann} row {i + 2}: class {c!r} is not in {root / 'classes.txt'}.")
      labels[i, index[c]] = 1.0
  paths = [str(img_dir / r["image"]) for r in rows]
  for p in paths:
    if not Path(p).is_file() or Path(p).suffix.lower() not in IMAGE_SUFFIXES:
      raise FileNotFoundError(f"image {p} listed in {ann} is missing or not an image file "
                              f"({', '.join(IMAGE_SUFFIXES)}).")
  captions = [r["caption"] for r in rows]
  vocab_file = _resolve_vocab(tag_vocab, root)
  vocab = read_tag_vocab(vocab_file) if vocab_file else None
  tags, bow_source = _built_bow(captions, vocab, max_vocab, "an image folder has no tag vectors")
  _validate(name, tags, labels, captions, len(paths))
  return CrossModalData(name=name, image_paths=paths, tags=tags, labels=labels, captions=captions,
                        text_source="captions from annotations.csv column 'caption'",
                        bow_source=bow_source, tag_vocab=vocab)


def load_dataset(name: str, root: str | os.PathLike,
                 tag_vocab: str | os.PathLike | None = None) -> CrossModalData:
  """Load dataset ``name`` (a key of ``DATASETS``) from ``root``, auto-detecting the layout.

  ``tag_vocab``: a text file naming the BoW dimensions, one word per line (default:
  ``<root>/tag_vocab.txt`` when it exists); see the module docstring for when it is needed.
  """
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}.")
  root = Path(root)
  if tag_vocab and not Path(tag_vocab).is_file():
    raise FileNotFoundError(f"tag_vocab={str(tag_vocab)!r} does not exist; give a text file with "
                            f"one tag word per line (line j = BoW column j), or leave it empty.")
  if root.is_file():
    return read_arrays_mat(root, name, tag_vocab=tag_vocab)
  for fname in DATASETS[name].mat_names:
    if (root / fname).exists():
      return read_arrays_mat(root / fname, name, tag_vocab=tag_vocab)
  if (root / "index.mat").exists():
    return read_paths_layout(root, name, tag_vocab=tag_vocab)
  if (root / "annotations.csv").exists():
    return read_image_folder(root, name, tag_vocab=tag_vocab)
  raise FileNotFoundError(_missing_message(name, root))


def split_indices(num_items: int, *, num_query: int, num_train: int, seed: int = 0) -> Split:
  """DCMH-protocol split drawn with a fixed seed (see module docstring)."""
  if num_query <= 0 or num_train <= 0:
    raise ValueError(f"num_query and num_train must be > 0; got {num_query}, {num_train}.")
  if num_query + num_train > num_items:
    raise ValueError(f"num_query + num_train = {num_query + num_train} exceeds the {num_items} "
                     f"items of the dataset.")
  perm = np.random.default_rng(seed).permutation(num_items)
  query, database = np.sort(perm[:num_query]), perm[num_query:]
  return Split(query=query, database=database, train=database[:num_train])


def load_image(path: str, image_size: int | None = None) -> np.ndarray:
  """Read an image file as RGB uint8 (H, W, 3), optionally resized to a square."""
  from PIL import Image
  with Image.open(path) as im:
    im = im.convert("RGB")
    if image_size is not None:
      im = im.resize((image_size, image_size), Image.BILINEAR)
    return np.asarray(im)


_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _imagenet_formula(images: np.ndarray) -> np.ndarray:
  return (images.astype(np.float32) / 255.0 - _IMAGENET_MEAN) / _IMAGENET_STD


# (3, 256): the formula's float32 value of every uint8 level in every channel (elementwise, so a
# table look-up gives bit-identical results, ~2x faster than the two divisions per element)
_IMAGENET_LUT = np.ascontiguousarray(_imagenet_formula(np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, 1)).T)


def imagenet_normalize(images_uint8: np.ndarray) -> np.ndarray:
  """uint8 (..., 3) -> float32 ImageNet-normalised: ``(x / 255 - mean) / std`` in float32.

  uint8 input is normalised by a per-channel look-up table of that formula's values (the same
  bits); other dtypes by the formula.
  """
  x = np.asarray(images_uint8)
  if x.dtype != np.uint8 or x.ndim == 0 or x.shape[-1] != 3:
    return _imagenet_formula(x)
  out = np.empty(x.shape, np.float32)
  for c in range(3):
    out[..., c] = _IMAGENET_LUT[c][x[..., c]]
  return out


def image_dataset(data: CrossModalData, indices: np.ndarray, *, batch_size: int, seed: int,
                  image_size: int, shuffle: bool = True, repeat: bool = True,
                  flip: bool = False):
  """The student's image-text pipeline as a ``grain.MapDataset`` of batches.

  Each element is ``{"index": (B,) int64, "image": (B, S, S, 3) float32 ImageNet-normalised,
  "bow": (B, V) float32, "labels": (B, C) float32}``. Random access (``ds[step]``) makes a batch a
  pure function of ``(seed, step)``, so a resumed run sees the same batches. ``flip`` adds a random
  horizontal flip seeded by ``(seed, index position)``.
  """
  import grain
  indices = np.asarray(indices, np.int64)
  if indices.size == 0:
    raise ValueError("image_dataset got no indices.")
  if batch_size <= 0:
    raise ValueError(f"batch_size must be > 0; got {batch_size}.")
  ds = grain.MapDataset.source(indices)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  if repeat:
    ds = ds.repeat()

  def load(i):
    im = data.image(int(i), image_size)
    if flip and np.random.default_rng([seed, int(i)]).random() < 0.5:
      im = im[:, ::-1]
    return {"index": np.int64(i), "image": imagenet_normalize(np.ascontiguousarray(im)),
            "bow": data.tags[i], "labels": data.labels[i]}

  return ds.map(load).batch(batch_size, drop_remainder=repeat)
