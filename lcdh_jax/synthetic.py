"""Synthetic multi-label image-text data in the DCMH/DCHMT ``.mat`` layouts (drives the demo and tests).

Each sample is a small RGB image with 1-``max_objects`` shapes (circle, square, triangle, cross)
in 4 colours (red, green, blue, yellow) on a nuisance background texture (plain, stripes, dots).
The label space has ``C = 16`` concepts, one per (colour, shape) pair, multi-hot; so two samples are
relevant when they show a same-coloured same shape (about 13% of pairs with the defaults; the relevance
rate is kept low so that random codes score a low mAP). The text side is
Flickr-like *tags*: the colour, shape and texture words, each dropped with probability
``tag_drop`` or replaced by a synonym, plus ``noise_tags`` random distractor words; the tag
bag-of-words ``YAll`` is over a fixed vocabulary of ``V = len(TAG_VOCAB)`` words. Like real tags,
the bag loses which colour goes with which shape. A caption string (``"red circle blue square on stripes"`` plus
the noise words) is what the CLIP text tower encodes; every caption word is in ``CAPTION_WORDS``
(a fixed vocabulary, so a word tokenizer built on it is the same for every draw of the data).

``seed`` may be an int or a sequence of ints (``numpy.random.default_rng`` semantics): ``seed=s``
(the demo's data) and ``seed=(s, PRETRAIN_STREAM)`` (the corpus the demo's tiny CLIP is pretrained
on, ``lcdh_jax.pretrain``) are independent random streams, so the two sets are different draws.

Two on-disk layouts (both read back by ``lcdh_jax.data``):

* ``layout="arrays"`` (DCMH style, one file ``<root>/<name>.mat``, scipy v5 format):
  ``IAll`` uint8 (N, H, W, 3) images; ``YAll`` float32 (N, V) tag BoW; ``LAll`` uint8 (N, C)
  multi-hot labels; ``caption`` (N,) cell array of str; ``tag_vocab`` (V,) and ``label_names``
  (C,) cell arrays of str.
* ``layout="paths"`` (DCHMT / MITH style): ``<root>/images/<i>.png`` plus ``index.mat``
  (key ``index``: (N,) cell of image paths relative to ``root``), ``caption.mat`` (``caption``:
  (N,) cell of str), ``label.mat`` (``category``: uint8 (N, C)) and ``tag.mat`` (``YAll``:
  float32 (N, V)).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

__all__ = ["SHAPES", "COLOURS", "TEXTURES", "LABEL_NAMES", "TAG_VOCAB", "CAPTION_WORDS",
           "PRETRAIN_STREAM", "SyntheticData", "make_synthetic", "write_mat"]

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 220),
           "yellow": (230, 210, 40)}
TEXTURES = ("plain", "stripes", "dots")
LABEL_NAMES = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
_WORDS = tuple(SHAPES) + tuple(COLOURS) + tuple(TEXTURES)
_SYNONYMS = {"circle": "round", "square": "box", "triangle": "pyramid", "cross": "plus",
             "red": "crimson", "green": "lime", "blue": "navy", "yellow": "gold",
             "plain": "flat", "stripes": "lines", "dots": "spots"}
_NOISE = ("photo", "nikon", "canon", "sky", "2008", "me", "friends", "art", "light", "night",
          "travel", "city", "macro", "flickr", "bw", "nature", "cute", "love", "summer", "winter",
          "trip", "old", "new", "happy", "sun", "tree", "water", "street", "family", "dog")
TAG_VOCAB = _WORDS + tuple(_SYNONYMS[k] for k in _WORDS) + _NOISE
CAPTION_WORDS = TAG_VOCAB + ("on",)  # every word a caption can contain
PRETRAIN_STREAM = 1  # make_synthetic(seed=(s, PRETRAIN_STREAM)): the CLIP pretraining corpus


@dataclasses.dataclass
class SyntheticData:
  """In-memory synthetic dataset: images (N,H,W,3) uint8, tags (N,V) f32, labels (N,C) u8, captions."""
  images: np.ndarray
  tags: np.ndarray
  labels: np.ndarray
  captions: list[str]


def _texture(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
  base = rng.integers(90, 170, size=3)
  img = np.broadcast_to(base, (size, size, 3)).astype(np.int32).copy()
  yy, xx = np.mgrid[:size, :size]
  if kind == "stripes":
    period = max(4, size // 6)
    phase = rng.integers(period)
    band = ((xx + yy * rng.integers(0, 2) + phase) // (period // 2)) % 2 == 0
    img[band] -= 60
  elif kind == "dots":
    period = max(4, size // 6)
    dots = ((xx % period) < period // 3) & ((yy % period) < period // 3)
    img[dots] += 70
  img += rng.integers(-12, 13, size=img.shape)
  return np.clip(img, 0, 255).astype(np.uint8)


def _draw(draw: ImageDraw.ImageDraw, shape: str, box, colour) -> None:
  x0, y0, x1, y1 = box
  if shape == "circle":
    draw.ellipse(box, fill=colour)
  elif shape == "square":
    draw.rectangle(box, fill=colour)
  elif shape == "triangle":
    draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)
  else:  # cross
    w = (x1 - x0) / 3
    draw.rectangle((x0 + w, y0, x1 - w, y1), fill=colour)
    draw.rectangle((x0, y0 + w, x1, y1 - w), fill=colour)


def make_synthetic(*, num_samples: int, image_size: int = 32, seed: int | tuple[int, ...] = 0,
                   max_objects: int = 2, tag_drop: float = 0.2, noise_tags: int = 2,
                   synonym_prob: float = 0.3, object_size: tuple[float, float] = (0.25, 0.5),
                   show_progress: bool = True) -> SyntheticData:
  """Render ``num_samples`` image-tag-label triples (deterministic in ``seed``, an int or ints)."""
  if num_samples <= 0:
    raise ValueError(f"num_samples must be > 0; got {num_samples}.")
  if image_size < 16:
    raise ValueError(f"image_size must be >= 16 pixels; got {image_size}.")
  rng = np.random.default_rng(list(seed) if isinstance(seed, (tuple, list)) else seed)
  colour_names = list(COLOURS)
  vocab_index = {w: i for i, w in enumerate(TAG_VOCAB)}
  lab_index = {w: i for i, w in enumerate(LABEL_NAMES)}
  images = np.zeros((num_samples, image_size, image_size, 3), np.uint8)
  tags = np.zeros((num_samples, len(TAG_VOCAB)), np.float32)
  labels = np.zeros((num_samples, len(LABEL_NAMES)), np.uint8)
  captions = []
  for n in tqdm(range(num_samples), desc="synthetic data", disable=not show_progress):
    texture = TEXTURES[rng.integers(len(TEXTURES))]
    img = Image.fromarray(_texture(rng, texture, image_size))
    draw = ImageDraw.Draw(img)
    objects = []
    for _ in range(rng.integers(1, max_objects + 1)):
      shape = SHAPES[rng.integers(len(SHAPES))]
      colour = colour_names[rng.integers(len(colour_names))]
      s = rng.integers(int(image_size * object_size[0]), int(image_size * object_size[1]) + 1)
      x0, y0 = rng.integers(0, image_size - s, size=2)
      _draw(draw, shape, (int(x0), int(y0), int(x0 + s), int(y0 + s)), COLOURS[colour])
      objects.append((colour, shape))
    images[n] = np.asarray(img)
    for colour, shape in objects:
      labels[n, lab_index[f"{colour} {shape}"]] = 1
    words = [w for obj in objects for w in obj] + [texture]
    tag_words = []
    for w in dict.fromkeys(words):
      if rng.random() < tag_drop:
        continue
      tag_words.append(_SYNONYMS[w] if rng.random() < synonym_prob else w)
    tag_words += [_NOISE[i] for i in rng.choice(len(_NOISE), size=noise_tags, replace=False)]
    for w in tag_words:
      tags[n, vocab_index[w]] = 1.0
    caption = " ".join(f"{c} {s}" for c, s in objects) + f" on {texture}"
    captions.append(caption + " " + " ".join(tag_words[-noise_tags:]) if noise_tags else caption)
  return SyntheticData(images=images, tags=tags, labels=labels, captions=captions)


def _cell(strings) -> np.ndarray:
  arr = np.empty((len(strings),), dtype=object)
  arr[:] = list(strings)
  return arr


def write_mat(data: SyntheticData, root: str | os.PathLike, *, name: str = "synthetic",
              layout: str = "arrays") -> Path:
  """Write ``data`` under ``root`` in the given layout (see module docstring); returns ``root``."""
  root = Path(root)
  root.mkdir(parents=True, exist_ok=True)
  if layout == "arrays":
    scipy.io.savemat(root / f"{name}.mat", {
        "IAll": data.images, "YAll": data.tags, "LAll": data.labels,
        "caption": _cell(data.captions), "tag_vocab": _cell(TAG_VOCAB),
        "label_names": _cell(LABEL_NAMES)}, do_compression=True)
  elif layout == "paths":
    (root / "images").mkdir(exist_ok=True)
    paths = []
    for i, im in enumerate(data.images):
      rel = f"images/{i:06d}.png"
      Image.fromarray(im).save(root / rel)
      paths.append(rel)
    scipy.io.savemat(root / "index.mat", {"index": _cell(paths)})
    scipy.io.savemat(root / "caption.mat", {"caption": _cell(data.captions)})
    scipy.io.savemat(root / "label.mat", {"category": data.labels})
    scipy.io.savemat(root / "tag.mat", {"YAll": data.tags})
  else:
    raise ValueError(f"layout must be 'arrays' or 'paths'; got {layout!r}.")
  return root
