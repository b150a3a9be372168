"""Frozen CLIP features for the teacher, computed once and cached on disk.

Cache layout (one pair of files per (dataset, model, content)) under ``cache_dir``::

    <dataset>__<model-slug>__<key-hash>.npz   image (N, P) float32, text (N, P) float32
    <dataset>__<model-slug>__<key-hash>.json  the key: dataset, model, image_size, num_items,
                                              content fingerprint (sha1 of labels + captions)

A cache file is reused only if its JSON key equals the requested key, so changing the dataset
files, the CLIP model, the image size or the image preprocessing recomputes the features.

Image preprocessing for CLIP (``clip_preprocess``): ``"clip"`` (default) is OpenAI CLIP's own
``_transform``: resize the shorter side to the model's input size with PIL bicubic resampling
(longer side ``int(size * long / short)``, as torchvision's ``Resize(int)``), centre crop
(offsets ``round((H - size) / 2)``, as torchvision's ``CenterCrop``), then the CLIP mean/std
normalisation (``backbones_jax.clip.normalize``). ``"squash"`` is the earlier behaviour: a
bilinear resize of the whole image to a square, which distorts the aspect ratio.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

__all__ = ["fingerprint", "cache_key", "cache_paths", "compute_clip_features", "cached_clip_features",
           "standardize", "clip_preprocess", "PREPROCESS_MODES"]

PREPROCESS_MODES = ("clip", "squash")

Tokenize = Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]


def fingerprint(labels: np.ndarray, captions: Sequence[str]) -> str:
  """sha1 of the labels and captions: identifies the dataset content cheaply (no image hashing)."""
  h = hashlib.sha1()
  h.update(np.ascontiguousarray(np.asarray(labels, np.float32)).tobytes())
  for c in captions:
    h.update(c.encode("utf-8") + b"\0")
  return h.hexdigest()


def cache_key(*, dataset: str, model: str, image_size: int, num_items: int, content: str,
              preprocess: str = "clip") -> dict:
  return {"dataset": dataset, "model": model, "image_size": int(image_size),
          "num_items": int(num_items), "content": content, "preprocess": preprocess, "version": 2}


def clip_preprocess(image: np.ndarray, size: int, *, mode: str = "clip") -> np.ndarray:
  """uint8 (H, W, 3) -> uint8 (size, size, 3): CLIP's resize + centre crop, or the old squash.

  ``mode="clip"``: shorter side to ``size`` (PIL bicubic), longer side ``int(size * long /
  short)``, then the centred ``size`` x ``size`` crop (module docstring). ``mode="squash"``: PIL
  bilinear resize to ``size`` x ``size``. Normalise the result with ``backbones_jax.clip.normalize``.
  """
  from PIL import Image
  if mode not in PREPROCESS_MODES:
    raise ValueError(f"CLIP preprocessing must be one of {PREPROCESS_MODES}; got {mode!r}.")
  arr = np.asarray(image)
  if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
    raise ValueError(f"expected a uint8 (H, W, 3) image; got {arr.dtype} {arr.shape}.")
  im = Image.fromarray(np.ascontiguousarray(arr))
  w, h = im.size
  if mode == "squash":
    return np.asarray(im.resize((size, size), Image.BILINEAR)) if (w, h) != (size, size) else arr
  short, long = (w, h) if w <= h else (h, w)
  new_long = int(size * long / short)
  new_w, new_h = (size, new_long) if w <= h else (new_long, size)
  if (new_w, new_h) != (w, h):
    im = im.resize((new_w, new_h), Image.BICUBIC)
  top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
  if (new_w, new_h) != (size, size):
    im = im.crop((left, top, left + size, top + size))
  return np.asarray(im)


def cache_paths(cache_dir: str | os.PathLike, key: dict) -> tuple[Path, Path]:
  slug = re.sub(r"[^A-Za-z0-9._-]+", "-", key["model"]).strip("-")[-60:]
  digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
  stem = Path(cache_dir) / f"{key['dataset']}__{slug}__{digest}"
  return stem.with_suffix(".npz"), stem.with_suffix(".json")


def compute_clip_features(*, get_images: Callable[[np.ndarray], np.ndarray], captions: Sequence[str],
                          encode_image: Callable[[np.ndarray], np.ndarray],
                          encode_text: Callable[[np.ndarray, np.ndarray], np.ndarray],
                          tokenize: Tokenize, batch_size: int = 64,
                          desc: str = "CLIP features") -> dict[str, np.ndarray]:
  """Encode every item: ``get_images(idx)`` -> CLIP-normalised (B, S, S, 3) float32.

  ``encode_image(images) -> (B, P)``; ``encode_text(ids, mask) -> (B, P)``; ``tokenize(texts) ->
  (ids, mask)``. Batches are padded to ``batch_size`` so the encoders compile once.
  """
  from tqdm.auto import tqdm
  n = len(captions)
  if n == 0:
    raise ValueError("no items to encode.")
  img_out, txt_out = [], []
  for s in tqdm(range(0, n, batch_size), desc=desc, leave=False):
    idx = np.arange(s, min(s + batch_size, n))
    pad = batch_size - idx.size
    pidx = np.concatenate([idx, np.repeat(idx[-1:], pad)]) if pad else idx
    ims = get_images(pidx)
    ids, mask = tokenize([captions[i] for i in pidx])
    img_out.append(np.asarray(encode_image(ims), np.float32)[:idx.size])
    txt_out.append(np.asarray(encode_text(ids, mask), np.float32)[:idx.size])
  return {"image": np.concatenate(img_out), "text": np.concatenate(txt_out)}


def cached_clip_features(*, cache_dir: str | os.PathLike, dataset: str, model: str, image_size: int,
                         labels: np.ndarray, captions: Sequence[str],
                         compute: Callable[[], dict[str, np.ndarray]],
                         preprocess: str = "clip") -> dict[str, np.ndarray]:
  """Load the cached features for this key, or ``compute()`` them and write the cache.

  ``preprocess`` names the image preprocessing ``compute`` uses (``clip_preprocess`` mode): part
  of the key.
  """
  key = cache_key(dataset=dataset, model=model, image_size=image_size, num_items=len(captions),
                  content=fingerprint(labels, captions), preprocess=preprocess)
  npz, meta = cache_paths(cache_dir, key)
  if npz.exists() and meta.exists():
    try:
      if json.loads(meta.read_text()) == key:
        with np.load(npz) as f:
          out = {"image": f["image"], "text": f["text"]}
        if out["image"].shape[0] == len(captions) == out["text"].shape[0]:
          return out
    except (OSError, ValueError, KeyError):
      pass  # corrupt cache: recompute below
  out = compute()
  if out["image"].shape[0] != len(captions) or out["text"].shape[0] != len(captions):
    raise ValueError(f"compute() returned {out['image'].shape[0]} image and "
                     f"{out['text'].shape[0]} text features for {len(captions)} items.")
  Path(cache_dir).mkdir(parents=True, exist_ok=True)
  tmp = npz.with_suffix(".tmp.npz")
  np.savez(tmp, image=out["image"].astype(np.float32), text=out["text"].astype(np.float32))
  os.replace(tmp, npz)
  meta.write_text(json.dumps(key, indent=1, sort_keys=True))
  return out


def standardize(feats: dict[str, np.ndarray], reference: np.ndarray,
                eps: float = 1e-6) -> dict[str, np.ndarray]:
  """Z-score every feature dimension with the mean/std of the ``reference`` rows (the train split).

  CLIP embeddings share a large common direction (random towers: cosine ~0.999 between any two
  images), which a tanh hash layer cannot undo on its own; centring and scaling per dimension
  keeps only what distinguishes the items. ``{"image": (N, P), "text": (N, P)}`` -> same shapes.
  """
  reference = np.asarray(reference, np.int64)
  if reference.size < 2:
    raise ValueError("standardize needs at least 2 reference rows.")
  out = {}
  for k, x in feats.items():
    ref = x[reference]
    out[k] = ((x - ref.mean(0)) / (ref.std(0) + eps)).astype(np.float32)
  return out
