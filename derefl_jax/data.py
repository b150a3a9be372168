"""Image reading and the standard reflection-removal dataset layouts.

Expected layout under a data root (the one DSRNet / DSIT use; see ``LAYOUT``)::

    <root>/train/VOCdevkit/VOC2012/PNGImages/*.png   synthetic training: T and R layers
    <root>/train/real/{blended,transmission_layer}/   89 real pairs (Zhang et al. 2018)
    <root>/train/nature/{blended,transmission_layer}/ 200 real pairs (Li et al. 2020)
    <root>/test/real20_420/{blended,transmission_layer}/
    <root>/test/SIR2/{SolidObjectDataset,PostcardDataset,WildSceneDataset}/
                     {blended,transmission_layer,reflection_layer}/
    <root>/test/Nature/{blended,transmission_layer}/

Pairs are matched by file name (same name in ``blended`` and ``transmission_layer``;
if the extensions differ, by stem). At evaluation both images are resized to the
largest multiple of 32 (``metrics.resize_to_multiple``, PIL bicubic on 8-bit data),
as DSRNet's ``align`` does.

Training batches are a pure function of ``(seed, step)`` (``TrainSampler.batch``):
resumed runs see the same data. Synthetic samples carry the raw T and R layers;
the reflection recipe (``synthesis.py``) runs on the device inside the train step.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from derefl_jax.metrics import resize_to_multiple

__all__ = [
    "IMAGE_EXTENSIONS",
    "LAYOUT",
    "TEST_SETS",
    "ImageReadError",
    "read_image",
    "load_image",
    "list_images",
    "PairedFolder",
    "paired_folder",
    "test_sets",
    "voc_images",
    "TrainSampler",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")

LAYOUT = """\
<data_root>/
  train/VOCdevkit/VOC2012/PNGImages/*.png        (synthetic T/R source; also accepted: train/VOC2012/PNGImages, VOC2012/PNGImages)
  train/real/{blended,transmission_layer}/
  train/nature/{blended,transmission_layer}/
  test/real20_420/{blended,transmission_layer}/
  test/SIR2/SolidObjectDataset/{blended,transmission_layer,reflection_layer}/
  test/SIR2/PostcardDataset/{blended,transmission_layer,reflection_layer}/
  test/SIR2/WildSceneDataset/{blended,transmission_layer,reflection_layer}/
  test/Nature/{blended,transmission_layer}/
(paired images share a file name across the sub-folders)"""

# Test-set names -> path under the data root (names as in the papers' tables).
TEST_SETS = {
    "real20": "test/real20_420",
    "objects": "test/SIR2/SolidObjectDataset",
    "postcard": "test/SIR2/PostcardDataset",
    "wild": "test/SIR2/WildSceneDataset",
    "nature": "test/Nature",
}

VOC_CANDIDATES = ("train/VOCdevkit/VOC2012/PNGImages", "train/VOC2012/PNGImages", "VOC2012/PNGImages")

# Pillow refuses images above ~179 Mpx as "decompression bombs"; photos that large are
# legitimate here (the predictor downscales or tiles them), so allow up to 1 Gpx.
MAX_DECODE_PIXELS = 1 << 30


class ImageReadError(ValueError):
    """A file that is not a readable image."""


def _to_float(a: np.ndarray, mode: str) -> np.ndarray:
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.uint16 or mode.startswith("I;16"):
        return a.astype(np.float32) / 65535.0
    if np.issubdtype(a.dtype, np.integer):  # PIL "I" (32-bit) from 16-bit PNG/TIFF
        hi = 65535.0 if a.max(initial=0) > 255 else 255.0
        return np.clip(a.astype(np.float32) / hi, 0.0, 1.0)
    if np.issubdtype(a.dtype, np.floating):  # PIL "F": assume [0, 1] if it fits, else scale by max
        a = a.astype(np.float32)
        m = float(np.nanmax(a)) if a.size else 1.0
        return np.clip(a / m if m > 1.0 else a, 0.0, 1.0)
    if a.dtype == bool:
        return a.astype(np.float32)
    raise ImageReadError(f"unsupported pixel type {a.dtype} (mode {mode})")


def _to_rgb(a: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1|2|3|4+) -> (H, W, 3); alpha is dropped (the photo's colours are kept)."""
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3:
        raise ImageReadError(f"unexpected image array of shape {a.shape}")
    c = a.shape[-1]
    if c in (1, 2):  # L or LA
        return np.repeat(a[..., :1], 3, axis=-1)
    return a[..., :3]


def read_image(path: str | os.PathLike, *, keep_uint8: bool = True) -> np.ndarray:
    """Reads any common image file as (H, W, 3): uint8 for 8-bit files (if keep_uint8), else float32 in [0, 1].

    Handles EXIF orientation, grayscale, palette, RGBA/LA (alpha dropped), CMYK,
    16-bit PNG/TIFF (16-bit TIFFs through tifffile, which keeps all bits) and
    multi-frame files (first frame). Raises ``FileNotFoundError`` for a missing
    path and ``ImageReadError`` (a ValueError) for anything that is not an image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No such image file: {path}")
    if path.is_dir():
        raise ImageReadError(f"{path} is a directory, not an image file.")
    old_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_DECODE_PIXELS
    try:
        with Image.open(path) as im:
            im.seek(0)
            im = ImageOps.exif_transpose(im)
            mode = im.mode
            if mode in ("P", "PA"):
                im = im.convert("RGBA")
            elif mode == "CMYK" or mode == "YCbCr" or mode == "LAB" or mode == "HSV":
                im = im.convert("RGB")
            elif mode == "1":
                im = im.convert("L")
            a = np.asarray(im)
            mode = im.mode
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
        if path.suffix.lower() in (".tif", ".tiff"):
            return _read_tiff(path, keep_uint8, e)
        raise ImageReadError(
            f"{path} is not a readable image ({type(e).__name__}: {e}). "
            f"Supported: {', '.join(IMAGE_EXTENSIONS)} (8/16-bit, gray, RGB, RGBA)."
        ) from None
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
    if path.suffix.lower() in (".tif", ".tiff") and a.dtype == np.uint8 and _tiff_is_16bit(path):
        return _read_tiff(path, keep_uint8, None)
    if a.size == 0:
        raise ImageReadError(f"{path} holds an empty image.")
    a = _to_rgb(a)
    if a.dtype == np.uint8 and keep_uint8:
        return np.ascontiguousarray(a)
    return np.ascontiguousarray(_to_float(a, mode))


def _tiff_is_16bit(path: Path) -> bool:
    try:
        import tifffile

        with tifffile.TiffFile(path) as tf:
            return tf.pages[0].dtype is not None and np.dtype(tf.pages[0].dtype).itemsize > 1
    except Exception:
        return False


def _read_tiff(path: Path, keep_uint8: bool, error: Exception | None) -> np.ndarray:
    try:
        import tifffile

        a = tifffile.imread(path)
    except Exception as e:  # noqa: BLE001 - any failure means "not an image"
        raise ImageReadError(f"{path} is not a readable image ({error or e}).") from None
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 2, 3, 4):
        a = np.moveaxis(a, 0, -1)  # planar TIFF
    a = _to_rgb(a)
    if a.dtype == np.uint8 and keep_uint8:
        return np.ascontiguousarray(a)
    return np.ascontiguousarray(_to_float(a, "tiff"))


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Reads an image as float32 (H, W, 3) in [0, 1] (see ``read_image``)."""
    return read_image(path, keep_uint8=False)


def as_float(image: np.ndarray) -> np.ndarray:
    """uint8 or float image -> float32 in [0, 1]."""
    return image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files (by extension) directly in ``folder``, sorted by name; hidden files skipped."""
    folder = Path(folder)
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _layout_error(what: str, path: Path, root: Path | None = None) -> FileNotFoundError:
    where = f" under data root {root}" if root is not None else ""
    return FileNotFoundError(f"{what} not found: {path}{where}. The expected layout is:\n{LAYOUT}")


@dataclasses.dataclass(frozen=True)
class PairedFolder:
    """A set of (blended, transmission[, reflection]) image files paired by name."""

    name: str
    root: Path
    blended: tuple[Path, ...]
    transmission: tuple[Path, ...]
    reflection: tuple[Path, ...] | None = None

    def __len__(self) -> int:
        return len(self.blended)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.blended]

    def load(self, index: int, *, multiple: int | None = 32) -> dict[str, np.ndarray | str]:
        """Pair ``index`` as float32 (H, W, 3) in [0, 1]: ``input``, ``T`` (and ``R``), resized to ``multiple``.

        With ``multiple`` (32 for the papers' protocol) every image is resized by
        ``metrics.resize_to_multiple`` to the blended image's aligned size; the
        ground truth is resized to the same size if its own size differs.
        """
        out: dict[str, np.ndarray | str] = {"name": self.blended[index].name}
        blended = read_image(self.blended[index])
        orig_hw = blended.shape[:2]
        if multiple:
            blended = resize_to_multiple(blended, multiple)
        out["input"] = as_float(blended)
        files = {"T": self.transmission[index]}
        if self.reflection is not None:
            files["R"] = self.reflection[index]
        for key, path in files.items():
            img = read_image(path)
            if img.shape[:2] == orig_hw and multiple:
                img = resize_to_multiple(img, multiple)  # the same operation as on the input
            elif img.shape[:2] != blended.shape[:2]:
                img = _resize(img, blended.shape[:2])
            out[key] = as_float(img)
        return out

    def __iter__(self):
        for i in range(len(self)):
            yield self.load(i)


def _resize(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if image.dtype == np.uint8:
        return np.asarray(Image.fromarray(image).resize((hw[1], hw[0]), Image.Resampling.BICUBIC))
    chans = [
        np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], np.float32)).resize(
            (hw[1], hw[0]), Image.Resampling.BICUBIC))
        for c in range(image.shape[-1])
    ]
    return np.clip(np.stack(chans, -1), 0.0, 1.0)


def _pair_files(blended_dir: Path, other_dir: Path) -> dict[str, Path]:
    """Maps each blended file name to its partner in ``other_dir`` (same name, else same stem)."""
    others = list_images(other_dir)
    by_name = {p.name: p for p in others}
    by_stem: dict[str, Path] = {}
    for p in others:
        by_stem.setdefault(p.stem, p)
    out = {}
    for b in list_images(blended_dir):
        match = by_name.get(b.name) or by_stem.get(b.stem)
        if match is not None:
            out[b.name] = match
    return out


def paired_folder(root: str | os.PathLike, *, name: str | None = None, reflection: bool = False) -> PairedFolder:
    """Pairs ``root/blended/X`` with ``root/transmission_layer/X`` (and ``reflection_layer/X``).

    Files without a partner are skipped with a warning; a missing folder, or no
    pair at all, raises ``FileNotFoundError`` that shows the expected layout.
    """
    root = Path(root)
    blended_dir, t_dir, r_dir = root / "blended", root / "transmission_layer", root / "reflection_layer"
    for d in (blended_dir, t_dir) + ((r_dir,) if reflection else ()):
        if not d.is_dir():
            raise _layout_error(f"Folder {d.name!r} of the {name or root.name} set", d)
    t_map = _pair_files(blended_dir, t_dir)
    r_map = _pair_files(blended_dir, r_dir) if reflection else None
    keep = [b for b in list_images(blended_dir) if b.name in t_map and (r_map is None or b.name in r_map)]
    n_blended = len(list_images(blended_dir))
    if not keep:
        raise FileNotFoundError(
            f"No image pairs in {root}: {n_blended} files in blended/, none with a partner of the same name "
            f"in transmission_layer/{'/reflection_layer/' if reflection else ''}. The expected layout is:\n{LAYOUT}"
        )
    if len(keep) < n_blended:
        warnings.warn(f"{root}: {n_blended - len(keep)} blended image(s) without a ground-truth partner skipped.")
    return PairedFolder(
        name=name or root.name,
        root=root,
        blended=tuple(keep),
        transmission=tuple(t_map[b.name] for b in keep),
        reflection=tuple(r_map[b.name] for b in keep) if r_map is not None else None,
    )


def test_sets(data_root: str | os.PathLike, names: Sequence[str] | None = None) -> dict[str, PairedFolder]:
    """The papers' test sets under ``data_root`` (default all of ``TEST_SETS``), keyed by short name."""
    root = Path(data_root)
    if not root.is_dir():
        raise _layout_error("Data root", root)
    names = list(TEST_SETS) if names is None else list(names)
    unknown = [n for n in names if n not in TEST_SETS]
    if unknown:
        raise ValueError(f"Unknown test set(s) {unknown}; valid names: {sorted(TEST_SETS)}.")
    return {n: paired_folder(root / TEST_SETS[n], name=n, reflection=n in ("objects", "postcard", "wild"))
            for n in names}


test_sets.__test__ = False  # not a pytest test despite its name


def voc_images(data_root: str | os.PathLike) -> list[Path]:
    """The VOC2012 PNGImages files used as synthetic T and R layers."""
    root = Path(data_root)
    for rel in VOC_CANDIDATES:
        d = root / rel
        if d.is_dir():
            files = list_images(d)
            if len(files) < 2:
                raise FileNotFoundError(f"{d} holds {len(files)} image(s); synthetic training needs at least 2.")
            return files
    raise _layout_error("VOC2012 PNGImages folder", root / VOC_CANDIDATES[0], root)


def _augment_crop(rng: np.random.Generator, images: Sequence[np.ndarray], crop: int,
                  scale_range: tuple[float, float]) -> list[np.ndarray]:
    """Same random rescale (shorter side -> crop * U(scale_range)), h-flip and crop for aligned images."""
    from PIL import Image

    h, w = images[0].shape[:2]
    target = max(crop, int(round(crop * rng.uniform(*scale_range))))
    s = target / min(h, w)
    nh, nw = max(crop, int(round(h * s))), max(crop, int(round(w * s)))
    flip = rng.random() < 0.5
    top, left = int(rng.integers(0, nh - crop + 1)), int(rng.integers(0, nw - crop + 1))
    out = []
    for img in images:
        if img.shape[:2] != (nh, nw):
            img = _resize(img, (nh, nw))
        img = img[top : top + crop, left : left + crop]
        if flip:
            img = img[:, ::-1]
        out.append(as_float(np.ascontiguousarray(img)))
    return out


class TrainSampler:
    """Training batches as a pure function of (seed, step): synthetic VOC layers and real pairs.

    ``batch(step)`` returns this host's numpy batch::

        t, r, blended : (B, crop, crop, 3) float32   (synthetic rows: raw T and R layers, blended = 0;
                                                      real rows: T, R = clip(I - T), blended = I)
        synthetic     : (B,) bool                    (True -> synthesise on the device)

    Sources are drawn per sample with probabilities ``weights`` (DSRNet: 0.6 synthetic,
    0.2 real, 0.2 nature); synthetic T comes from the first half of the sorted VOC list and R
    from the second half, as DSRNet's dataset splits them.
    """

    def __init__(self, *, voc: Sequence[Path] = (), real: Iterable[PairedFolder] = (),
                 weights: Mapping[str, float] | None = None, batch_size: int, crop: int = 224,
                 scale_range: tuple[float, float] = (1.0, 2.0), seed: int = 0, process_index: int = 0,
                 num_workers: int = 8):
        self.voc = list(voc)
        self.real = {f.name: f for f in real}
        sources = (["synthetic"] if len(self.voc) >= 2 else []) + list(self.real)
        if not sources:
            raise FileNotFoundError(f"TrainSampler has no training data. The expected layout is:\n{LAYOUT}")
        weights = dict(weights or {})
        w = np.array([float(weights.get(s, 1.0)) for s in sources])
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"source weights must be >= 0 with a positive sum, got {dict(zip(sources, w))}.")
        self.sources, self.probs = sources, w / w.sum()
        self.batch_size, self.crop, self.scale_range = batch_size, crop, scale_range
        self.seed, self.process_index = seed, process_index
        half = len(self.voc) // 2
        self.t_pool, self.r_pool = self.voc[:half], self.voc[half:]
        self._pool = ThreadPoolExecutor(max_workers=num_workers) if num_workers > 1 else None

    def _sample(self, step: int, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        rng = np.random.default_rng([self.seed, step, self.process_index, j])
        source = self.sources[int(rng.choice(len(self.sources), p=self.probs))]
        if source == "synthetic":
            t_img = read_image(self.t_pool[int(rng.integers(len(self.t_pool)))])
            r_img = read_image(self.r_pool[int(rng.integers(len(self.r_pool)))])
            (t,) = _augment_crop(rng, [t_img], self.crop, self.scale_range)
            (r,) = _augment_crop(rng, [r_img], self.crop, self.scale_range)
            return t, r, np.zeros_like(t), True
        folder = self.real[source]
        i = int(rng.integers(len(folder)))
        pair = [read_image(folder.blended[i]), read_image(folder.transmission[i])]
        if pair[1].shape[:2] != pair[0].shape[:2]:
            pair[1] = _resize(pair[1], pair[0].shape[:2])
        blended, t = _augment_crop(rng, pair, self.crop, self.scale_range)
        return t, np.clip(blended - t, 0.0, 1.0), blended, False

    def batch(self, step: int) -> dict[str, np.ndarray]:
        js = range(self.batch_size)
        if self._pool is not None:
            rows = list(self._pool.map(lambda j: self._sample(step, j), js))
        else:
            rows = [self._sample(step, j) for j in js]
        t, r, b, syn = zip(*rows)
        return {"t": np.stack(t), "r": np.stack(r), "blended": np.stack(b), "synthetic": np.array(syn)}

    __call__ = batch
