"""MVREC region-context views: polygon -> alpha mask, multi-view crops, resize chain, normalisation.

One defect instance (an image, its polygon and its bounding box) becomes ``V`` views, computed
exactly as the official preprocessing (github ShuaiLYU/MVREC: ``MultiviewRoiData`` in
``modules/multi_view_data.py``, ``RoiGenerator.bbox2rect`` / ``super_crop`` / ``resize_img`` in
``modules/utils.py``, ``ClipPreprocess`` in ``modules/clip_preprocess.py``): the uint8 views before
normalisation are identical, the normalised ones agree to float32 rounding (tested side by side
with the official code, ``tests/mvrec/test_official_views.py``). :data:`PREPROCESSING_VERSION`
names this preprocessing; feature caches key on it.

The default ``"mso"`` recipe gives 27 views: crop sizes ``(256, 384, 512)`` px x centre shifts
``(step * size) // 3`` for ``step in (-1, 0, 1)`` in y and in x, ordered size -> y -> x, around the
bbox centre. Pixels outside the image are zero, in the image and in the mask.

Exact arithmetic of one crop box (Python numbers, as the official code):

    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2         # bbox2rect: floor division
    sx = sy = size                                  # integer size: absolute pixels
    sx, sy = |x2 - x1| * size, |y2 - y1| * size     # non-integer size: bbox-relative (mso_bbox)
    ccx, ccy = cx + (x_step * sx) // 3, cy + (y_step * sy) // 3   # floor division: -256//3 = -86
    box = (int(ccx - sx // 2), int(ccy - sy // 2),
           int(ccx - sx // 2 + sx), int(ccy - sy // 2 + sy))     # int() truncates toward zero

and the crop is ``PIL.Image.crop(box)`` (rows ``box[1]..box[3]-1``, columns ``box[0]..box[2]-1``,
zero outside the image). Each crop (image and mask) is resized along ``resize`` (official:
``512 -> 224``) with PIL's default filter for 'L'/'RGB' images, ``BICUBIC``, each step rounded to
uint8; the image is converted to RGB last.

Mask rasterisation (:func:`polygon_to_mask`): vertices are cast to int32 (truncation toward zero,
``np.array(points, dtype=np.int32)``), then ``cv2.fillPoly(mask, [pts], 255)`` on a zero
``(H, W)`` uint8 image (OpenCV's own rasteriser, so the edge pixels are OpenCV's).

Flips and rotations (``mr``, ``mf``, ``msf``, ``msr``, ``mor``) follow the official loop
(``MultiScaleRoiGenerator.gen_one``): for each view in order, the *whole* current image and mask
are flipped (``cv2.flip`` / ``cv2.transpose`` codes 0-4) and then rotated about the crop-box centre
``((l + r) // 2, (t + b) // 2)`` (``cv2.getRotationMatrix2D`` + ``cv2.warpAffine``, bilinear,
zero border), and the crop box (computed on the unflipped bbox) is cut from the result. The
official loop re-assigns the image, so these transforms *accumulate* from one view to the next
(the 4 ``mr`` views are rotated by 0, 90, 270 and 540 degrees in total); ``accumulate=False``
starts every view from the original image instead (not the official behaviour).
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import cv2
import numpy as np
from PIL import Image

__all__ = [
    "CLIP_MEAN", "CLIP_STD", "ALPHA_MEAN", "ALPHA_STD", "OFFICIAL_CROP_SIZES", "OFFICIAL_RESIZE",
    "MV_METHODS", "PREPROCESSING_VERSION", "ViewSpec", "view_specs", "scaled_crop_sizes", "polygon_to_mask",
    "bbox_of_polygon", "bbox2rect", "crop_box", "bbox_in_view", "render_views", "normalize_image",
    "normalize_alpha", "instance_views", "denormalize", "save_views_png",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ALPHA_MEAN = 0.5
ALPHA_STD = 0.26
OFFICIAL_CROP_SIZES = (256, 384, 512)
OFFICIAL_RESIZE = (512, 224)
# Names the view preprocessing; feature caches key on it. "official-2": floor-division bbox centre,
# BICUBIC masks, cv2.fillPoly, accumulated flips/rotations (version 1 had a float centre, BILINEAR
# masks, PIL ImageDraw polygons and per-crop flips).
PREPROCESSING_VERSION = "official-2"
# Sizes of the official "mso_bbox" ablation: crop = bbox side x factor (non-integer -> relative).
BBOX_RELATIVE_FACTORS = (0.999, 1.4999, 1.999)

# method -> (which sizes, x/y steps, angles, flips); mirrors the official mv_method map.
_STEPS3 = (-1, 0, 1)
MV_METHODS = {
    "none": dict(sizes="first", steps=(0,), angles=(0,), flips=(0,)),
    "ms": dict(sizes="all", steps=(0,), angles=(0,), flips=(0,)),
    "mo": dict(sizes="first", steps=_STEPS3, angles=(0,), flips=(0,)),
    "mr": dict(sizes="first", steps=(0,), angles=(0, 90, 180, 270), flips=(0,)),
    "mf": dict(sizes="first", steps=(0,), angles=(0,), flips=(0, 1, 2, 3, 4)),
    "mso": dict(sizes="all", steps=_STEPS3, angles=(0,), flips=(0,)),
    "msf": dict(sizes="all", steps=(0,), angles=(0,), flips=(0, 1, 2, 3, 4)),
    "msr": dict(sizes="all", steps=(0,), angles=(0, 90, 180, 270), flips=(0,)),
    "mor": dict(sizes="first", steps=_STEPS3, angles=(0, 90, 180, 270), flips=(0,)),
    "mso_bbox": dict(sizes="bbox", steps=_STEPS3, angles=(0,), flips=(0,)),
}


@dataclasses.dataclass(frozen=True)
class ViewSpec:
  """One view: crop ``size`` (int: absolute px; float: x bbox side), centre steps, rotation, flip.

  ``angle``: degrees counter-clockwise, the whole image rotated about the crop centre before the
  crop (cv2 bilinear, zero fill). ``flip``: 0 none, 1 left-right, 2 up-down, 3 anti-transpose,
  4 transpose (the codes of the official ``MvParam.flip_img``), applied to the whole image before
  the crop. In :func:`render_views` both accumulate over the views, as in the official loop.
  """
  size: float
  x_step: int = 0
  y_step: int = 0
  angle: float = 0
  flip: int = 0


def view_specs(method: str = "mso", crop_sizes: Sequence[float] = OFFICIAL_CROP_SIZES) -> list[ViewSpec]:
  """The views of a multi-view method, ordered size -> y step -> x step -> angle -> flip.

  ``crop_sizes`` are absolute pixel sizes (the official 256/384/512 for ~1024 px images; scale them
  for small images, see :func:`scaled_crop_sizes`). ``"mso_bbox"`` ignores them and uses the
  bbox-relative factors (0.999, 1.4999, 1.999).
  """
  if method not in MV_METHODS:
    raise ValueError(f"Unknown multi-view method {method!r}; choose one of {sorted(MV_METHODS)}.")
  cfg = MV_METHODS[method]
  crop_sizes = tuple(crop_sizes)
  if cfg["sizes"] == "bbox":
    sizes = BBOX_RELATIVE_FACTORS
  else:
    if not crop_sizes:
      raise ValueError("crop_sizes is empty; give at least one crop size in pixels.")
    for s in crop_sizes:
      if not float(s).is_integer() or s <= 0:
        raise ValueError(f"Absolute crop sizes must be positive integers, got {s!r} in {crop_sizes}.")
    sizes = tuple(int(s) for s in crop_sizes)
    if cfg["sizes"] == "first":
      sizes = sizes[:1]
  return [ViewSpec(size=s, x_step=i, y_step=j, angle=a, flip=f)
          for s in sizes for j in cfg["steps"] for i in cfg["steps"]
          for a in cfg["angles"] for f in cfg["flips"]]


def scaled_crop_sizes(image_size: int, reference_size: int = 1024,
                      crop_sizes: Sequence[int] = OFFICIAL_CROP_SIZES) -> tuple[int, ...]:
  """Official crop sizes scaled to an image side: 1024 -> (256, 384, 512); 128 -> (32, 48, 64)."""
  return tuple(max(1, int(round(s * image_size / reference_size))) for s in crop_sizes)


_INT32 = 2 ** 31


def polygon_to_mask(points, width: int, height: int) -> np.ndarray:
  """Polygon ``[[x, y], ...]`` -> ``(height, width)`` uint8 mask: ``cv2.fillPoly`` (255) of the int32 vertices."""
  pts = np.asarray(points, dtype=np.float64)
  if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
    raise ValueError(f"A polygon must be a non-empty list of [x, y] pairs; got shape {pts.shape}.")
  if not np.all(np.isfinite(pts)):
    raise ValueError("The polygon has non-finite coordinates.")
  if np.abs(pts).max() >= _INT32:
    raise ValueError(f"Polygon coordinates must fit in int32, got a vertex at {np.abs(pts).max():g}.")
  if width <= 0 or height <= 0:
    raise ValueError(f"Mask size must be positive, got width={width}, height={height}.")
  ipts = pts.astype(np.int32).reshape(-1, 1, 2)  # truncation toward zero, as np.array(points, dtype=np.int32)
  mask = np.zeros((int(height), int(width)), np.uint8)
  cv2.fillPoly(mask, [ipts], color=255)
  return mask


def bbox_of_polygon(points) -> tuple[float, float, float, float]:
  """``(x1, y1, x2, y2)`` = min/max of the polygon vertices (as the MVTec-FS CSV columns)."""
  pts = np.asarray(points, dtype=np.float64)
  return (float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max()))


def _check_bbox(bbox: Sequence[float]) -> tuple:
  vals = tuple(bbox)
  if len(vals) != 4:
    raise ValueError(f"Bad bbox {vals}: expected (x1, y1, x2, y2).")
  x1, y1, x2, y2 = vals
  if not all(np.isfinite(float(v)) for v in vals):
    raise ValueError(f"Bad bbox {vals}: coordinates must be finite.")
  if x2 < x1 or y2 < y1:
    raise ValueError(f"Bad bbox {vals}: expected (x1, y1, x2, y2) with x1 <= x2 and y1 <= y2.")
  # Python numbers (ints stay ints): the official arithmetic runs on the CSV values as read.
  return tuple(v.item() if isinstance(v, np.generic) else v for v in vals)


def bbox2rect(bbox: Sequence[float]) -> tuple:
  """``(x1, y1, x2, y2)`` -> ``(cx, cy, w, h)`` with the official floor-division centre ``(x1 + x2) // 2``."""
  x1, y1, x2, y2 = _check_bbox(bbox)
  return (x1 + x2) // 2, (y1 + y2) // 2, abs(x2 - x1), abs(y2 - y1)


def crop_box(bbox: Sequence[float], spec: ViewSpec) -> tuple[int, int, int, int]:
  """Crop box ``(left, top, right, bottom)`` of one view, with the official arithmetic (module doc)."""
  cx, cy, bw, bh = bbox2rect(bbox)
  size = spec.size
  if float(size).is_integer():
    sx = sy = size
  else:
    sx, sy = bw * float(size), bh * float(size)
  ccx = cx + spec.x_step * sx // 3
  ccy = cy + spec.y_step * sy // 3
  box = (int(ccx - sx // 2), int(ccy - sy // 2), int(ccx - sx // 2 + sx), int(ccy - sy // 2 + sy))
  if box[2] <= box[0] or box[3] <= box[1]:
    raise ValueError(f"View {spec} of bbox {tuple(bbox)} gives an empty crop {box}; "
                     "bbox-relative sizes need a bbox of at least 1 px per side.")
  return box


def bbox_in_view(bbox: Sequence[float], box: Sequence[int], resize: Sequence[int] = OFFICIAL_RESIZE) -> list:
  """The instance bbox in view coordinates, as the official ``roi_bbox`` -> ``resize_img_and_bbox`` chain.

  In the crop: ``(max(x1 - l, 0), max(y1 - t, 0), min(x2 - l, w), min(y2 - t, h))``; then per
  resize step ``int(v * (new / old))`` (the official AlphaCLIP ``box_list``; not used by the model).
  """
  x1, y1, x2, y2 = _check_bbox(bbox)
  l, t, r, b = (int(v) for v in box)
  w, h = r - l, b - t
  out = [max(x1 - l, 0), max(y1 - t, 0), min(x2 - l, w), min(y2 - t, h)]
  for s in resize:
    sw, sh = int(s) / w, int(s) / h
    out = [int(out[0] * sw), int(out[1] * sh), int(out[2] * sw), int(out[3] * sh)]
    w = h = int(s)
  return out


def _flip(a: np.ndarray, code: int) -> np.ndarray:
  """The official ``MvParam.flip_img`` codes on a whole (H, W[, C]) array (cv2.flip / cv2.transpose)."""
  if code == 0:
    return a
  if code == 1:
    return a[:, ::-1]
  if code == 2:
    return a[::-1]
  if code == 3:
    return np.swapaxes(a[::-1, ::-1], 0, 1)
  if code == 4:
    return np.swapaxes(a, 0, 1)
  raise ValueError(f"Invalid flip code {code}; use 0 (none), 1 (left-right), 2 (up-down), "
                   "3 (anti-transpose) or 4 (transpose).")


def _rotate(a: np.ndarray, angle: float, center: tuple[int, int]) -> np.ndarray:
  """``cv2.warpAffine`` of the whole array by ``getRotationMatrix2D(center, angle, 1)`` (bilinear, zero border)."""
  m = cv2.getRotationMatrix2D((center[0], center[1]), angle, 1.0)
  return cv2.warpAffine(np.ascontiguousarray(a), m, (a.shape[1], a.shape[0]))


def _as_pil(image) -> Image.Image:
  if isinstance(image, Image.Image):
    if image.mode in _MODES:
      return image
    # The official code reads a palette ('P') image as its index array (np.array(img)); we use colours.
    return image.convert("RGBA" if "A" in image.getbands() else "RGB")
  a = np.asarray(image)
  if a.dtype != np.uint8:
    raise ValueError(f"Images must be uint8 (0..255), got dtype {a.dtype}.")
  if a.ndim == 3 and a.shape[-1] == 1:
    a = a[..., 0]
  if a.ndim == 2:
    return Image.fromarray(a, mode="L")
  if a.ndim == 3 and a.shape[-1] in (3, 4):
    return Image.fromarray(np.ascontiguousarray(a), mode="RGB" if a.shape[-1] == 3 else "RGBA")
  raise ValueError(f"Images must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8; got shape {a.shape}.")


_MODES = ("L", "RGB", "RGBA")


def render_views(image, mask, bbox: Sequence[float], specs: Iterable[ViewSpec],
                 resize: Sequence[int] = OFFICIAL_RESIZE, *,
                 accumulate: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Crops and resizes: image ``(H, W[, 3])`` uint8 + mask ``(H, W)`` -> ``(V, S, S, 3)``, ``(V, S, S)`` uint8.

  The official loop (module doc): per view, flip and rotate the whole current image and mask (the
  transforms accumulate over views unless ``accumulate=False``), crop with zero padding, then
  ``Image.resize`` along ``resize`` with ``BICUBIC`` (PIL's default for 'L'/'RGB'/'RGBA', the
  official filter, for image and mask alike); the image is converted to RGB last;
  ``S = resize[-1]``. An empty chain keeps the crop size (all crops must then have the same size).
  """
  img = _as_pil(image)
  m = _as_pil(np.asarray(mask, dtype=np.uint8))
  if m.mode != "L":
    raise ValueError("The mask must be single-channel (H, W).")
  if img.size != m.size:
    raise ValueError(f"Image size {img.size} and mask size {m.size} (width, height) differ.")
  resize = tuple(int(s) for s in resize)
  if any(s <= 0 for s in resize):
    raise ValueError(f"Resize sizes must be positive, got {resize}.")
  out_img, out_mask = [], []
  cur_img, cur_mask = img, m
  for spec in specs:
    box = crop_box(bbox, spec)
    if not accumulate:
      cur_img, cur_mask = img, m
    if spec.flip not in (0, 1, 2, 3, 4):
      _flip(np.zeros((1, 1)), spec.flip)  # raises the clear error
    if spec.flip or spec.angle:
      ai, am = np.asarray(cur_img), np.asarray(cur_mask)
      ai, am = _flip(ai, spec.flip), _flip(am, spec.flip)
      if spec.angle:
        center = ((box[0] + box[2]) // 2, (box[1] + box[3]) // 2)
        ai, am = _rotate(ai, spec.angle, center), _rotate(am, spec.angle, center)
      cur_img = Image.fromarray(np.ascontiguousarray(ai), mode=cur_img.mode)
      cur_mask = Image.fromarray(np.ascontiguousarray(am), mode="L")
    ci, cm = cur_img.crop(box), cur_mask.crop(box)
    for s in resize:
      ci = ci.resize((s, s), Image.BICUBIC)
      cm = cm.resize((s, s), Image.BICUBIC)
    out_img.append(np.asarray(ci.convert("RGB")))
    out_mask.append(np.asarray(cm))
  if not out_img:
    raise ValueError("No views requested.")
  shapes = {a.shape for a in out_img}
  if len(shapes) != 1:
    raise ValueError(f"Views have different sizes {sorted(shapes)}; give a resize chain to make them equal.")
  return np.stack(out_img), np.stack(out_mask)


# Exact per-value tables (float32 arithmetic of the formula), 2-3x faster than broadcasting.
_IMAGE_LUT = ((np.arange(256, dtype=np.float32)[:, None] / np.float32(255.0) - np.asarray(CLIP_MEAN, np.float32))
              / np.asarray(CLIP_STD, np.float32)).astype(np.float32)  # (256, 3)
_ALPHA_LUT = ((np.arange(256, dtype=np.float32) / np.float32(255.0) - np.float32(ALPHA_MEAN))
              / np.float32(ALPHA_STD)).astype(np.float32)  # (256,)


def normalize_image(images_u8: np.ndarray) -> np.ndarray:
  """uint8 RGB ``(..., 3)`` -> float32 ``(x / 255 - CLIP_MEAN) / CLIP_STD``."""
  x = np.asarray(images_u8)
  if x.dtype != np.uint8 or x.shape[-1:] != (3,):
    raise ValueError(f"normalize_image expects uint8 (..., 3) images, got {x.dtype} {x.shape}.")
  out = np.empty(x.shape, np.float32)
  for c in range(3):
    out[..., c] = _IMAGE_LUT[:, c][x[..., c]]
  return out


def normalize_alpha(masks_u8: np.ndarray) -> np.ndarray:
  """uint8 mask ``(...)`` -> float32 ``(m / 255 - 0.5) / 0.26`` with a trailing channel axis."""
  m = np.asarray(masks_u8)
  if m.dtype != np.uint8:
    raise ValueError(f"normalize_alpha expects uint8 masks, got {m.dtype}.")
  return _ALPHA_LUT[m][..., None]


def instance_views(image, polygon, bbox: Sequence[float] | None = None, *, method: str = "mso",
                   crop_sizes: Sequence[float] = OFFICIAL_CROP_SIZES,
                   resize: Sequence[int] = OFFICIAL_RESIZE,
                   specs: Sequence[ViewSpec] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """One defect instance -> AlphaCLIP inputs ``(V, S, S, 3)`` image and ``(V, S, S, 1)`` alpha, float32 NHWC.

  ``image``: PIL image or uint8 array ``(H, W[, 3])``; ``polygon``: ``[[x, y], ...]`` in image pixels;
  ``bbox``: ``(x1, y1, x2, y2)`` (default: the polygon's min/max, as in the MVTec-FS CSVs).
  ``specs`` overrides ``method``/``crop_sizes``. Default: the 27 official "mso" views at 224 px.
  """
  img = _as_pil(image)
  width, height = img.size
  mask = polygon_to_mask(polygon, width, height)
  if bbox is None:
    bbox = bbox_of_polygon(polygon)
  if specs is None:
    specs = view_specs(method, crop_sizes)
  imgs, masks = render_views(img, mask, bbox, specs, resize)
  return normalize_image(imgs), normalize_alpha(masks)


def denormalize(images: np.ndarray, alphas: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
  """Inverse of the normalisation: float views -> uint8 images ``(..., 3)`` and uint8 masks ``(...)``."""
  x = np.asarray(images, np.float32) * np.asarray(CLIP_STD, np.float32) + np.asarray(CLIP_MEAN, np.float32)
  img = np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)
  if alphas is None:
    return img, None
  m = (np.asarray(alphas, np.float32)[..., 0] * ALPHA_STD + ALPHA_MEAN) * 255
  return img, np.clip(np.rint(m), 0, 255).astype(np.uint8)


def save_views_png(images: np.ndarray, alphas: np.ndarray, path, *, columns: int = 9,
                   title: str | None = None) -> str:
  """Grid of the views ``(V, S, S, 3)`` with the alpha region tinted red; saved as PNG (matplotlib Agg)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  img, m = denormalize(images, alphas)
  v = len(img)
  rows = -(-v // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.3 * rows + (0.4 if title else 0)),
                           squeeze=False)
  for k, ax in enumerate(axes.flat):
    ax.axis("off")
    if k < v:
      over = img[k].astype(np.float32)
      w = (m[k].astype(np.float32) / 255.0)[..., None] * 0.45
      over = over * (1 - w) + np.array([255.0, 0, 0]) * w
      ax.imshow(over.astype(np.uint8))
      ax.set_title(str(k), fontsize=6)
  if title:
    fig.suptitle(title, fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return str(path)
