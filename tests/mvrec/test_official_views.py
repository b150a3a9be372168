"""Views side by side with the official MVREC preprocessing (../shared/peers/mvrec; skipped when absent).

The official package ``modules`` is assembled in ``sys.modules`` from the four files the view
pipeline needs (its ``__init__`` imports the training stack). torchvision does not import beside
this torch, so ``torchvision.transforms`` is a stand-in with torchvision's semantics for what the
view code calls: ``ToTensor`` (uint8 PIL -> float CHW / 255), ``Normalize`` (``(x - mean) / std``),
``Compose``; the rest raises if called.

Synthetic MVTec-FS folder: odd-sized RGB and grayscale images, instances at every border and
corner, odd and even box sides, 1-3 px boxes, a 240-vertex concave polygon, float vertices and a
polygon partly outside the image; every ``mv_method`` of ``MultiviewRoiData``. Compared per view:
the crop box, the bbox in the view (after each resize), the uint8 image and mask (identical) and
the normalised tensors (<= 1e-5).
"""
from __future__ import annotations

import csv
import json

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mvrec_jax import data as D
from mvrec_jax import views as V


def peers_dir() -> Path | None:
  here = Path(__file__).resolve()
  for base in (here.parents[2] / ".." / "shared" / "peers", here.parents[3] / "shared" / "peers"):
    if (base / "mvrec" / "modules" / "multi_view_data.py").is_file():
      return (base / "mvrec").resolve()
  return None


def _torchvision_stub():
  import torch  # pylint: disable=import-outside-toplevel

  class Compose:
    def __init__(self, transforms):
      self.transforms = transforms

    def __call__(self, x):
      for t in self.transforms:
        x = t(x)
      return x

  class ToTensor:
    def __call__(self, pic):
      a = np.array(pic, copy=True)
      if a.ndim == 2:
        a = a[:, :, None]
      t = torch.from_numpy(a).permute(2, 0, 1).contiguous()
      assert t.dtype == torch.uint8
      return t.to(torch.get_default_dtype()).div(255)

  class Normalize:
    def __init__(self, mean, std):
      self.mean, self.std = mean, std

    def __call__(self, t):
      mean = torch.as_tensor(self.mean, dtype=t.dtype).reshape(-1, 1, 1)
      std = torch.as_tensor(self.std, dtype=t.dtype).reshape(-1, 1, 1)
      return t.sub(mean).div(std)

  class _Unused:
    def __init__(self, *a, **k):
      pass

    def __call__(self, *a, **k):
      raise NotImplementedError("torchvision stand-in: not used by the view code")

  tv = types.ModuleType("torchvision")
  tr = types.ModuleType("torchvision.transforms")
  tr.Compose, tr.ToTensor, tr.Normalize = Compose, ToTensor, Normalize
  tr.Resize = tr.CenterCrop = tr.ColorJitter = _Unused
  tv.transforms = tr
  return tv, tr


def load():
  """The official ``modules`` package (utils, fabric_data, multi_view_data, clip_preprocess) or None."""
  root = peers_dir()
  if root is None:
    return None
  if "modules.multi_view_data" in sys.modules and getattr(sys.modules["modules"], "_mvrec_peer", False):
    return sys.modules["modules"]
  tv, tr = _torchvision_stub()
  saved = {k: sys.modules.get(k) for k in ("torchvision", "torchvision.transforms")}
  sys.modules["torchvision"], sys.modules["torchvision.transforms"] = tv, tr
  try:
    pkg = types.ModuleType("modules")
    pkg.__path__ = [str(root / "modules")]
    pkg._mvrec_peer = True
    sys.modules["modules"] = pkg
    for name in ("utils", "fabric_data", "multi_view_data", "clip_preprocess"):
      spec = importlib.util.spec_from_file_location(f"modules.{name}", root / "modules" / f"{name}.py")
      mod = importlib.util.module_from_spec(spec)
      sys.modules[f"modules.{name}"] = mod
      spec.loader.exec_module(mod)
      setattr(pkg, name, mod)
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v
  return pkg


ALL_METHODS = ("none", "ms", "mo", "mr", "mf", "mso", "msf", "msr", "mor", "mso_bbox")
CROPS = (24, 37, 48)  # odd and even absolute sizes
T1, T2 = 40, 21        # MultiviewRoiData target_size, then ClipPreprocess target_size


@pytest.fixture(scope="module")
def official():
  mods = load()
  if mods is None:
    pytest.skip("official MVREC code (../shared/peers/mvrec) not present")
  return mods


def _instances(w, h, rng):
  """(polygon, note) pairs: every border/corner, odd/even sides, tiny boxes, many vertices."""
  out = []
  def rect(x1, y1, x2, y2):
    return [[x1, y1], [x2, y1], [x2, y2], [x1, y2]]
  out += [rect(0, 30, 5, 37), rect(w - 6, 20, w - 1, 26), rect(40, 0, 47, 4), rect(30, h - 5, 38, h - 1)]  # borders
  out += [rect(0, 0, 3, 3), rect(w - 4, h - 3, w - 1, h - 1), rect(0, h - 7, 6, h - 1), rect(w - 9, 0, w - 1, 8)]  # corners
  out += [rect(50, 40, 51, 41), rect(20, 50, 22, 51), rect(61, 11, 64, 13)]  # 1-3 px boxes
  out += [[[33.7, 25.2], [45.9, 28.8], [39.1, 40.6], [30.5, 33.3]]]  # float vertices (truncated)
  out += [[[-3, 50], [10, 45], [12, 60], [2, 66]]]  # partly outside the image (x1 < 0)
  t = np.linspace(0, 2 * np.pi, 240, endpoint=False)
  r = 14 + 6 * np.sin(7 * t) + rng.uniform(-2, 2, t.shape)
  out += [np.stack([w / 2 + r * np.cos(t), h / 2 + 0.8 * r * np.sin(t)], 1).round().astype(int).tolist()]
  # a concave, self-touching polygon with a one-pixel-thin spike
  out += [[[60, 50], [75, 50], [68, 58], [75, 66], [60, 66], [68, 58], [68, 42], [69, 42], [68, 58]]]
  return out


def _write_dataset(root: Path, rng):
  """MVTec-FS layout: <root>/CONFIG/syn_config1/train.csv and <root>/syn/<img_rel_path>."""
  cfg = root / "CONFIG" / "syn_config1"
  cfg.mkdir(parents=True)
  rows = []
  for k, (w, h, mode) in enumerate([(97, 80, "RGB"), (80, 97, "L")]):
    rel = f"testing/blob/{k:03d}.png"
    (root / "syn" / rel).parent.mkdir(parents=True, exist_ok=True)
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    Image.fromarray(rng.integers(1, 256, shape, dtype=np.uint8), mode).save(root / "syn" / rel)
    for j, poly in enumerate(_instances(w, h, rng)):
      p = np.asarray(poly, float)
      x1, y1 = p.min(0)
      x2, y2 = p.max(0)
      rows.append(dict(imageName=f"{k:03d}.png", imageData="-", imageHeight=h, imageWidth=w, img_id=k, part="syn",
                       id=len(rows), img_rel_path=rel, classification_rank=0, x1=int(x1), x2=int(x2),
                       y1=int(y1), y2=int(y2), label=("a", "b")[j % 2], rank=-1, points=json.dumps(poly)))
  with open(cfg / "train.csv", "w", newline="") as f:
    wr = csv.DictWriter(f, fieldnames=list(D.CSV_COLUMNS))
    wr.writeheader()
    wr.writerows(rows)
  return cfg


def _official_views(mods, ds, index, t2):
  """Crop boxes, bboxes after T1 and T2, uint8 image/mask after T2, normalised tensors (official code)."""
  u = mods.utils
  pre = mods.clip_preprocess.ClipPreprocess(["a", "b"], target_size=(t2, t2), device="cpu")
  samples = ds.roi_process(ds.sample_by_instance[index])
  boxes, b1, b2, imgs, masks, x, a = [], [], [], [], [], [], []
  for s in samples:
    boxes.append(tuple(int(v) for v in s["roi_bbox"]))
    b1.append(list(s["bboxes"][0].get()))
    img2, bb2 = u.resize_img_and_bbox(s["roi_img"], s["bboxes"][0].get(), (t2, t2))
    b2.append(list(bb2))
    imgs.append(np.array(img2.convert("RGB")))
    masks.append(np.array(u.resize_img(s["masks"][0], (t2, t2))))
    out = pre(s)
    assert out["box_list"].tolist() == [list(bb2)]
    x.append(out["image"].numpy().transpose(1, 2, 0))
    a.append(out["masks"].numpy().transpose(1, 2, 0))
  return boxes, b1, b2, np.stack(imgs), np.stack(masks), np.stack(x), np.stack(a)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_views_equal_official_multiview_roi_data(official, tmp_path, method):
  rng = np.random.default_rng(0)
  cfg = _write_dataset(tmp_path, rng)
  ds = official.multi_view_data.MultiviewRoiData(str(tmp_path), "train", roi_size_list=list(CROPS),
                                                 mv_method=method, config_dir=str(cfg), target_size=T1)
  insts = D.read_split(tmp_path, "syn", "train", data_root=tmp_path)
  assert len(insts) == len(ds) == 30
  specs = V.view_specs(method, CROPS)
  compared = 0
  for i, inst in enumerate(insts):
    img = D.load_image(inst.image_path)
    h, w = inst.image_size
    try:
      o_boxes, o_b1, o_b2, o_img, o_mask, o_x, o_a = _official_views(official, ds, i, T2)
    except ZeroDivisionError:
      # bbox-relative crop of a 1 px side is empty; the official resize divides by zero, we refuse it
      assert method == "mso_bbox" and min(inst.bbox[2] - inst.bbox[0], inst.bbox[3] - inst.bbox[1]) <= 1
      with pytest.raises(ValueError, match="empty crop"):
        D.instance_inputs(inst, method=method, crop_sizes=CROPS, resize=(T1, T2))
      continue
    except ValueError as e:
      # PIL refuses a crop that misses the (flipped / rotated, hence possibly transposed) image
      # entirely; only flips and rotations can move the image off a box. We give zero views there.
      assert "less than" in str(e) and (specs[-1].flip or specs[-1].angle), (method, i, e)
      u_img, u_mask = V.render_views(img, V.polygon_to_mask(inst.polygon, w, h), inst.bbox, specs, (T1, T2))
      assert any(not u.any() and not m.any() for u, m in zip(u_img, u_mask)), (method, i)
      continue
    compared += 1
    assert len(o_boxes) == len(specs), (method, i)
    boxes = [V.crop_box(inst.bbox, s) for s in specs]
    assert boxes == o_boxes, (method, i)
    assert [V.bbox_in_view(inst.bbox, b, (T1,)) for b in boxes] == o_b1, (method, i)
    assert [V.bbox_in_view(inst.bbox, b, (T1, T2)) for b in boxes] == o_b2, (method, i)
    u_img, u_mask = V.render_views(img, V.polygon_to_mask(inst.polygon, w, h), inst.bbox, specs, (T1, T2))
    np.testing.assert_array_equal(u_img, o_img, err_msg=f"{method} instance {i} image")
    np.testing.assert_array_equal(u_mask, o_mask, err_msg=f"{method} instance {i} mask")
    x, a = D.instance_inputs(inst, method=method, crop_sizes=CROPS, resize=(T1, T2))
    np.testing.assert_allclose(x, o_x, atol=1e-5, rtol=0, err_msg=f"{method} instance {i}")
    np.testing.assert_allclose(a, o_a, atol=1e-5, rtol=0, err_msg=f"{method} instance {i}")
  assert compared >= 20, (method, compared)


def test_full_size_mso_equals_official(official, tmp_path):
  """The published setting: 1024 px (grayscale, as grid/screw/zipper) image, crops 256/384/512, 512 -> 224."""
  rng = np.random.default_rng(1)
  cfg = tmp_path / "CONFIG" / "big_config1"
  cfg.mkdir(parents=True)
  rel = "testing/x/000.png"
  (tmp_path / "big" / rel).parent.mkdir(parents=True)
  base = rng.integers(0, 256, (64, 64), dtype=np.uint8)
  Image.fromarray(base).resize((1024, 1024), Image.BICUBIC).save(tmp_path / "big" / rel)
  poly = [[901, 37], [1010, 60], [985, 151], [930, 120]]
  row = dict(imageName="000.png", imageData="-", imageHeight=1024, imageWidth=1024, img_id=0, part="big", id=0,
             img_rel_path=rel, classification_rank=0, x1=901, x2=1010, y1=37, y2=151, label="a", rank=-1,
             points=json.dumps(poly))
  with open(cfg / "train.csv", "w", newline="") as f:
    wr = csv.DictWriter(f, fieldnames=list(D.CSV_COLUMNS))
    wr.writeheader()
    wr.writerow(row)
  ds = official.multi_view_data.MultiviewRoiData(str(tmp_path), "train", roi_size_list=[256, 384, 512],
                                                 mv_method="mso", config_dir=str(cfg), target_size=512)
  inst = D.read_split(tmp_path, "big", "train", data_root=tmp_path, class_names=("a", "b"))[0]
  o_boxes, _, o_b2, o_img, o_mask, o_x, o_a = _official_views(official, ds, 0, 224)
  specs = V.view_specs("mso")
  assert [V.crop_box(inst.bbox, s) for s in specs] == o_boxes
  assert o_boxes[0] == (955 - 128 - 86, 94 - 128 - 86, 955 + 128 - 86, 94 + 128 - 86)  # floor centre (955, 94)
  assert [V.bbox_in_view(inst.bbox, b) for b in o_boxes] == o_b2
  x, a = D.instance_inputs(inst)
  u_img, u_mask = V.denormalize(x, a)
  np.testing.assert_array_equal(u_img, o_img)
  np.testing.assert_array_equal(u_mask, o_mask)
  np.testing.assert_allclose(x, o_x, atol=1e-5, rtol=0)
  np.testing.assert_allclose(a, o_a, atol=1e-5, rtol=0)


def test_rgba_image_equals_official(official, tmp_path):
  """An RGBA PNG stays RGBA through crop and resize (PIL premultiplies alpha), RGB at the end, as officially."""
  rng = np.random.default_rng(2)
  cfg = tmp_path / "CONFIG" / "rgba_config1"
  cfg.mkdir(parents=True)
  rel = "testing/x/000.png"
  (tmp_path / "rgba" / rel).parent.mkdir(parents=True)
  a = rng.integers(0, 256, (50, 61, 4), dtype=np.uint8)
  a[..., 3] = np.where(rng.random((50, 61)) < 0.3, 0, a[..., 3])  # transparent and half-transparent pixels
  Image.fromarray(a, "RGBA").save(tmp_path / "rgba" / rel)
  poly = [[3, 5], [20, 4], [17, 19], [2, 15]]
  row = dict(imageName="000.png", imageData="-", imageHeight=50, imageWidth=61, img_id=0, part="rgba", id=0,
             img_rel_path=rel, classification_rank=0, x1=2, x2=20, y1=4, y2=19, label="a", rank=-1,
             points=json.dumps(poly))
  with open(cfg / "train.csv", "w", newline="") as f:
    wr = csv.DictWriter(f, fieldnames=list(D.CSV_COLUMNS))
    wr.writeheader()
    wr.writerow(row)
  ds = official.multi_view_data.MultiviewRoiData(str(tmp_path), "train", roi_size_list=list(CROPS),
                                                 mv_method="mso", config_dir=str(cfg), target_size=T1)
  inst = D.read_split(tmp_path, "rgba", "train", data_root=tmp_path, class_names=("a", "b"))[0]
  assert D.load_image(inst.image_path).mode == "RGBA"
  _, _, _, o_img, o_mask, o_x, o_a = _official_views(official, ds, 0, T2)
  x, al = D.instance_inputs(inst, method="mso", crop_sizes=CROPS, resize=(T1, T2))
  u_img, u_mask = V.denormalize(x, al)
  np.testing.assert_array_equal(u_img, o_img)
  np.testing.assert_array_equal(u_mask, o_mask)
  np.testing.assert_allclose(x, o_x, atol=1e-5, rtol=0)
  # converting to RGB first would differ (alpha-weighted resize): the mode matters
  rgb = D.load_image(inst.image_path).convert("RGB")
  r_img, _ = V.render_views(rgb, V.polygon_to_mask(inst.polygon, 61, 50), inst.bbox, V.view_specs("mso", CROPS),
                            (T1, T2))
  assert not np.array_equal(r_img, o_img)
