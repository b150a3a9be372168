"""An offline demo set: crops of the natural photos scikit-image ships, plus procedural images.

No download: ``skimage.data`` bundles a few colour photos (astronaut, coffee, chelsea,
rocket, immunohistochemistry, hubble_deep_field, retina, the stereo motorcycle pair,
colorwheel) and grayscale textures (camera, brick, grass, gravel, moon, coins,
clock). Photos are split by *source image* between training and evaluation, so
the evaluation mixes are held out: coffee, chelsea and rocket are evaluation-only.

Crops: each photo is rescaled so its shorter side is U(96, 288) px, then a random
``crop`` x ``crop`` window (64 px by default) is cut and flipped with p 0.5; a
quarter of the pool (``procedural_fraction``) are procedural images (gradients,
shapes, stripes, checkerboards, sinusoid textures) that give sharp edges and flat
regions photos lack at this size. Batches come in ``TrainSampler``'s format
(raw T and R layers; the reflection recipe runs on the device).
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

__all__ = [
    "TRAIN_PHOTOS",
    "EVAL_PHOTOS",
    "available_photos",
    "procedural_image",
    "make_pool",
    "DemoSampler",
    "demo_eval_set",
]

TRAIN_PHOTOS = (
    "astronaut", "immunohistochemistry", "hubble_deep_field", "retina", "motorcycle_left",
    "motorcycle_right", "colorwheel", "camera", "brick", "grass", "gravel", "moon", "coins", "clock",
)
EVAL_PHOTOS = ("coffee", "chelsea", "rocket")


def _load_photo(name: str) -> np.ndarray | None:
    """An skimage.data photo as uint8 (H, W, 3), or None if this install lacks it."""
    from skimage import data as skdata

    try:
        if name.startswith("motorcycle_"):
            left, right, _ = skdata.stereo_motorcycle()
            img = left if name.endswith("left") else right
        else:
            img = getattr(skdata, name)()
    except Exception:  # noqa: BLE001 - missing optional file, no network, ...
        return None
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = (np.clip(img.astype(np.float64) / max(float(img.max()), 1.0), 0, 1) * 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    return np.ascontiguousarray(img[..., :3])


def available_photos(names: Sequence[str]) -> dict[str, np.ndarray]:
    """The photos among ``names`` this scikit-image install can load offline."""
    out = {}
    for n in names:
        img = _load_photo(n)
        if img is not None:
            out[n] = img
    return out


def procedural_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random synthetic scene, () -> (size, size, 3) float32 in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    kind = int(rng.integers(4))
    c0, c1 = rng.random(3), rng.random(3)
    ang = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(ang) * xx + np.sin(ang) * yy)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    img = c0 + (c1 - c0) * ramp[..., None]  # colour gradient background
    if kind == 0:  # shapes: ellipses and rectangles
        for _ in range(int(rng.integers(3, 9))):
            col = rng.random(3)
            cy, cx, ry, rx = rng.random(4) * [1, 1, 0.3, 0.3] + [0, 0, 0.05, 0.05]
            if rng.random() < 0.5:
                m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
            else:
                m = (np.abs(yy - cy) < ry) & (np.abs(xx - cx) < rx)
            img[m] = col
    elif kind == 1:  # stripes
        f = rng.uniform(3, 12)
        s = (np.sin(2 * np.pi * f * (np.cos(ang + 1) * xx + np.sin(ang + 1) * yy)) > 0)
        img = np.where(s[..., None], img, rng.random(3))
    elif kind == 2:  # checkerboard
        n = int(rng.integers(2, 9))
        s = ((np.floor(yy * n) + np.floor(xx * n)) % 2).astype(bool)
        img = np.where(s[..., None], img, img * rng.uniform(0.2, 0.8))
    else:  # smooth sinusoid texture
        tex = sum(np.sin(2 * np.pi * (rng.uniform(1, 6) * xx + rng.uniform(1, 6) * yy) + rng.uniform(0, 6))
                  for _ in range(3)) / 6 + 0.5
        img = img * (0.5 + 0.5 * tex[..., None])
    return np.clip(img, 0, 1).astype(np.float32)


def _shrink(photo: np.ndarray, short: int) -> np.ndarray:
    """Downscales (never up) so the shorter side is ``short`` px: crops later only shrink further."""
    from PIL import Image

    h, w = photo.shape[:2]
    if min(h, w) <= short:
        return photo
    s = short / min(h, w)
    return np.asarray(Image.fromarray(photo).resize((round(w * s), round(h * s)), Image.Resampling.LANCZOS))


def _photo_crop(rng: np.random.Generator, photo: np.ndarray, crop: int) -> np.ndarray:
    from PIL import Image

    h, w = photo.shape[:2]
    short = int(rng.integers(max(crop + 32, 96), 289))
    s = short / min(h, w)
    nh, nw = max(crop, int(round(h * s))), max(crop, int(round(w * s)))
    small = np.asarray(Image.fromarray(photo).resize((nw, nh), Image.Resampling.BICUBIC))
    top, left = int(rng.integers(0, nh - crop + 1)), int(rng.integers(0, nw - crop + 1))
    out = small[top : top + crop, left : left + crop].astype(np.float32) / 255.0
    return out[:, ::-1] if rng.random() < 0.5 else out


def make_pool(split: str, *, num_images: int, crop: int = 64, seed: int = 0,
              procedural_fraction: float = 0.25) -> np.ndarray:
    """``num_images`` demo images of one split, () -> (N, crop, crop, 3) float32 in [0, 1].

    ``split`` is "train" or "eval"; the two use disjoint photos and different seeds.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}.")
    names = TRAIN_PHOTOS if split == "train" else EVAL_PHOTOS
    photos = [_shrink(p, 288) for p in available_photos(names).values()]
    if not photos:
        warnings.warn(f"No scikit-image sample photos available for the {split} split; using procedural images only.")
        procedural_fraction = 1.0
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    out = np.empty((num_images, crop, crop, 3), np.float32)
    for i in range(num_images):
        if rng.random() < procedural_fraction:
            out[i] = procedural_image(rng, crop)
        else:
            out[i] = _photo_crop(rng, photos[int(rng.integers(len(photos)))], crop)
    return out


class DemoSampler:
    """Demo training batches, a pure function of (seed, step), in ``data.TrainSampler``'s format."""

    def __init__(self, *, batch_size: int, crop: int = 64, pool_size: int = 512, seed: int = 0,
                 process_index: int = 0):
        self.pool = make_pool("train", num_images=pool_size, crop=crop, seed=seed)
        self.batch_size, self.seed, self.process_index = batch_size, seed, process_index

    def batch(self, step: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, step, self.process_index, 7])
        n = len(self.pool)
        ti = rng.integers(n, size=self.batch_size)
        ri = (ti + rng.integers(1, n, size=self.batch_size)) % n  # never the same image as T
        t, r = self.pool[ti].copy(), self.pool[ri].copy()
        flip = rng.random(self.batch_size) < 0.5
        r[flip] = r[flip, ::-1]  # extra vertical-flip augmentation of the reflection layer
        return {"t": t, "r": r, "blended": np.zeros_like(t), "synthetic": np.ones(self.batch_size, bool)}

    __call__ = batch


def demo_eval_set(*, num_pairs: int = 32, crop: int = 64, seed: int = 0, recipe: str = "dsrnet") -> dict[str, np.ndarray]:
    """Held-out synthetic mixes of the eval photos: ``input``, ``T``, ``R`` (N, crop, crop, 3) float32.

    T and R come from disjoint halves of an eval pool; the mix uses ``recipe``
    with a fixed key, so the set is identical across runs.
    """
    import jax

    from derefl_jax import synthesis

    pool = make_pool("eval", num_images=2 * num_pairs, crop=crop, seed=seed + 1000)
    out = jax.jit(lambda k, t, r: synthesis.synthesize_batch(k, t, r, recipe=recipe))(
        jax.random.key(seed + 1000), pool[:num_pairs], pool[num_pairs:])
    return {"input": np.asarray(out["blended"]), "T": np.asarray(out["transmission"]),
            "R": np.asarray(out["reflection"])}
