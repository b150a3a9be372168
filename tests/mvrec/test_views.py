"""Views: polygon masks, crop boxes, zero padding, ordering, ablation modes, resize chain, normalisation."""
import numpy as np
import pytest
from PIL import Image

from mvrec_jax import views as V


def _crop_ref(a, box):
  """Zero-padded crop by hand: rows box[1]..box[3]-1, cols box[0]..box[2]-1."""
  l, t, r, b = box
  out = np.zeros((b - t, r - l) + a.shape[2:], a.dtype)
  for yy in range(t, b):
    for xx in range(l, r):
      if 0 <= yy < a.shape[0] and 0 <= xx < a.shape[1]:
        out[yy - t, xx - l] = a[yy, xx]
  return out


def test_polygon_mask_hand_cases():
  sq = V.polygon_to_mask([[1, 1], [4, 1], [4, 4], [1, 4]], 8, 6)
  exp = np.zeros((6, 8), np.uint8)
  exp[1:5, 1:5] = 255
  np.testing.assert_array_equal(sq, exp)
  tri = V.polygon_to_mask([[1, 1], [6, 1], [1, 6]], 8, 8) > 0
  exp = np.zeros((8, 8), bool)
  for y in range(1, 7):
    exp[y, 1:8 - y] = True  # x + y <= 7 and x, y >= 1
  np.testing.assert_array_equal(tri, exp)
  # float vertices are truncated to int32 like the official np.array(points, dtype=np.int32)
  np.testing.assert_array_equal(V.polygon_to_mask([[1.9, 1.2], [4.7, 1.0], [4.99, 4.5], [1.0, 4.9]], 8, 6), sq)
  # a single point and a segment still mark pixels
  assert V.polygon_to_mask([[3, 2]], 5, 5).sum() == 255
  assert (V.polygon_to_mask([[0, 0], [3, 0]], 5, 5) > 0).sum() == 4
  with pytest.raises(ValueError, match="polygon"):
    V.polygon_to_mask([], 5, 5)


def test_crop_box_official_arithmetic():
  bbox = (100, 100, 140, 160)  # centre (120, 130)
  spec = V.ViewSpec(size=256, x_step=-1, y_step=1)
  # x: 120 + (-256)//3 = 120 - 86 = 34 -> [34-128, 34+128); y: 130 + 256//3 = 215 -> [87, 343)
  assert V.crop_box(bbox, spec) == (-94, 87, 162, 343)
  assert V.crop_box(bbox, V.ViewSpec(size=384)) == (120 - 192, 130 - 192, 120 + 192, 130 + 192)
  # odd centre: cx = 0.5 -> int(-1.5) = -1 (truncation toward zero), int(2.5) = 2
  assert V.crop_box((0, 0, 1, 1), V.ViewSpec(size=4)) == (-1, -1, 2, 2)
  # bbox-relative: sx = 40 * 1.5 = 60, sy = 60 * 1.5 = 90; centre shift 1*60//3 = 20
  assert V.crop_box(bbox, V.ViewSpec(size=1.5, x_step=1)) == (int(140 - 30), int(130 - 45), int(140 + 30), int(130 + 45))


def test_mso_has_27_views_in_official_order():
  specs = V.view_specs("mso")
  assert len(specs) == 27
  assert [(s.size, s.y_step, s.x_step) for s in specs[:4]] == [(256, -1, -1), (256, -1, 0), (256, -1, 1), (256, 0, -1)]
  assert [s.size for s in specs] == [256] * 9 + [384] * 9 + [512] * 9
  assert specs[13] == V.ViewSpec(384, 0, 0)
  assert len(V.view_specs("none")) == 1 and len(V.view_specs("mr")) == 4 and len(V.view_specs("mf")) == 5
  assert len(V.view_specs("mor")) == 36 and len(V.view_specs("mso_bbox")) == 27
  assert V.view_specs("mso_bbox")[0].size == 0.999
  assert V.scaled_crop_sizes(128) == (32, 48, 64)
  with pytest.raises(ValueError, match="mso"):
    V.view_specs("nope")
  with pytest.raises(ValueError, match="integer"):
    V.view_specs("mso", crop_sizes=(3.5,))


def test_crops_by_hand_with_zero_padding():
  rng = np.random.default_rng(0)
  img = rng.integers(1, 256, (10, 12, 3), dtype=np.uint8)  # no zeros so padding is visible
  poly = [[5, 4], [7, 4], [7, 6], [5, 6]]
  mask = V.polygon_to_mask(poly, 12, 10)
  bbox = (5, 4, 7, 6)  # centre (6, 5)
  specs = V.view_specs("mso", crop_sizes=(4,))
  ims, ms = V.render_views(img, mask, bbox, specs, resize=())
  assert ims.shape == (9, 4, 4, 3) and ms.shape == (9, 4, 4)
  # size 4, step (-1, -1): shift (-4)//3 = -2 -> centre (4, 3) -> box (2, 1, 6, 5)
  assert V.crop_box(bbox, specs[0]) == (2, 1, 6, 5)
  np.testing.assert_array_equal(ims[0], img[1:5, 2:6])
  np.testing.assert_array_equal(ms[0], mask[1:5, 2:6])
  # size 6 views: centre shift +-2 (6//3 = 2, -6//3 = -2); step (+1, +1) -> centre (8, 7) -> box (5, 4, 11, 10)
  big_ims, big_ms = V.render_views(img, mask, bbox, V.view_specs("mso", crop_sizes=(6,)), resize=())
  for k, spec in enumerate(V.view_specs("mso", crop_sizes=(6,))):
    box = V.crop_box(bbox, spec)
    np.testing.assert_array_equal(big_ims[k], _crop_ref(img, box))
    np.testing.assert_array_equal(big_ms[k], _crop_ref(mask, box))
  # a crop hanging off the top-left corner is zero there, in image and mask alike
  corner = (0, 0, 1, 1)
  cm = V.polygon_to_mask([[0, 0], [1, 0], [1, 1], [0, 1]], 12, 10)
  ci, cmm = V.render_views(img, cm, corner, [V.ViewSpec(size=6, x_step=-1, y_step=-1)], resize=())
  box = V.crop_box(corner, V.ViewSpec(size=6, x_step=-1, y_step=-1))
  # centre 0.5 + (-6)//3 = -1.5 -> int(-1.5 - 3) = int(-4.5) = -4 and int(-4.5 + 6) = int(1.5) = 1:
  # truncation toward zero makes this crop 5 px wide, exactly as the official arithmetic does
  assert box == (-4, -4, 1, 1)
  assert ci.shape == (1, 5, 5, 3)
  np.testing.assert_array_equal(ci[0], _crop_ref(img, box))
  assert (ci[0][:4] == 0).all() and (ci[0][:, :4] == 0).all() and (cmm[0][:4] == 0).all()
  np.testing.assert_array_equal(ci[0][4, 4], img[0, 0])
  assert cmm[0][4, 4] == 255


def test_flips_and_rotation():
  rng = np.random.default_rng(1)
  img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
  mask = np.zeros((16, 16), np.uint8)
  mask[6:9, 5:11] = 255
  bbox = (5, 6, 10, 8)
  base_i, base_m = V.render_views(img, mask, bbox, [V.ViewSpec(8)], resize=())
  f_i, f_m = V.render_views(img, mask, bbox, V.view_specs("mf", crop_sizes=(8,)), resize=())
  np.testing.assert_array_equal(f_i[0], base_i[0])
  np.testing.assert_array_equal(f_i[1], base_i[0][:, ::-1])
  np.testing.assert_array_equal(f_m[2], base_m[0][::-1])
  np.testing.assert_array_equal(f_i[4], base_i[0].transpose(1, 0, 2))
  np.testing.assert_array_equal(f_i[3], base_i[0][::-1, ::-1].transpose(1, 0, 2))
  # 90 deg CCW about integer centre (cx, cy) in cv2 convention: dst(x, y) = src(cx + cy - y, x - cx + cy)
  spec = V.ViewSpec(8, angle=90)
  box = V.crop_box(bbox, spec)
  cx, cy = (box[0] + box[2]) // 2, (box[1] + box[3]) // 2
  rot = np.zeros_like(img)
  for y in range(16):
    for x in range(16):
      xs, ys = cx + cy - y, x - cx + cy
      if 0 <= xs < 16 and 0 <= ys < 16:
        rot[y, x] = img[ys, xs]
  r_i, _ = V.render_views(img, mask, bbox, [spec], resize=())
  np.testing.assert_array_equal(r_i[0], _crop_ref(rot, box))


def test_resize_chain_and_normalisation():
  img = np.full((40, 40, 3), 200, np.uint8)
  img[..., 1] = 100
  poly = [[10, 10], [30, 10], [30, 30], [10, 30]]
  x, a = V.instance_views(img, poly, method="mso", crop_sizes=(16, 24, 32), resize=(64, 32))
  assert x.shape == (27, 32, 32, 3) and a.shape == (27, 32, 32, 1)
  assert x.dtype == np.float32 and a.dtype == np.float32
  # centre view of the 16-px crop lies inside the image: constant colour survives bicubic exactly
  exp = (np.array([200, 100, 200]) / 255 - np.array(V.CLIP_MEAN)) / np.array(V.CLIP_STD)
  np.testing.assert_allclose(x[4], np.broadcast_to(exp, (32, 32, 3)), atol=1e-6)
  # its mask is all inside the polygon -> (1 - 0.5) / 0.26
  np.testing.assert_allclose(a[4], (1 - 0.5) / 0.26, atol=1e-6)
  # 32-px crop hangs off the image: zero pixels normalise to -mean/std, zero mask to -0.5/0.26
  np.testing.assert_allclose(x[18, 0, 0], -np.array(V.CLIP_MEAN) / np.array(V.CLIP_STD), atol=1e-6)
  np.testing.assert_allclose(a[18, 0, 0, 0], -0.5 / 0.26, atol=1e-6)
  # the chain is PIL: crop -> resize(64, BICUBIC) -> resize(32, BICUBIC) for the image, BILINEAR for the mask
  pil = Image.fromarray(img).crop(V.crop_box((10, 10, 30, 30), V.view_specs("mso", (16, 24, 32))[20]))
  ref = np.asarray(pil.resize((64, 64), Image.BICUBIC).resize((32, 32), Image.BICUBIC))
  np.testing.assert_allclose(x[20], V.normalize_image(ref), atol=1e-6)
  m = Image.fromarray(V.polygon_to_mask(poly, 40, 40)).crop(V.crop_box((10, 10, 30, 30), V.view_specs("mso", (16, 24, 32))[20]))
  mref = np.asarray(m.resize((64, 64), Image.BILINEAR).resize((32, 32), Image.BILINEAR))
  np.testing.assert_allclose(a[20, ..., 0], (mref / 255 - 0.5) / 0.26, atol=1e-6)


def test_grayscale_image_and_errors():
  g = np.arange(64, dtype=np.uint8).reshape(8, 8)
  x, a = V.instance_views(g, [[2, 2], [5, 2], [5, 5]], crop_sizes=(4,), method="none", resize=(8,))
  assert x.shape == (1, 8, 8, 3)
  np.testing.assert_allclose(x[0, ..., 0] * V.CLIP_STD[0] + V.CLIP_MEAN[0],
                             x[0, ..., 1] * V.CLIP_STD[1] + V.CLIP_MEAN[1], atol=1e-6)  # gray -> equal RGB
  with pytest.raises(ValueError, match="uint8"):
    V.instance_views(g.astype(np.float32), [[1, 1], [2, 2], [1, 2]])
  with pytest.raises(ValueError, match="differ"):
    V.render_views(g, np.zeros((4, 4), np.uint8), (1, 1, 2, 2), [V.ViewSpec(2)], resize=())


def test_normalisation_tables_equal_formula():
  x = np.arange(256, dtype=np.uint8)
  rgb = np.stack([x, x[::-1], np.roll(x, 7)], -1)
  exp = (rgb.astype(np.float32) / np.float32(255) - np.asarray(V.CLIP_MEAN, np.float32)) / np.asarray(V.CLIP_STD, np.float32)
  np.testing.assert_array_equal(V.normalize_image(rgb), exp)
  np.testing.assert_allclose(V.normalize_image(rgb), (rgb / 255.0 - V.CLIP_MEAN) / V.CLIP_STD, atol=1e-6)
  np.testing.assert_allclose(V.normalize_alpha(x)[:, 0], (x / 255.0 - 0.5) / 0.26, atol=1e-6)
  assert V.normalize_alpha(np.zeros((2, 3), np.uint8)).shape == (2, 3, 1)
  with pytest.raises(ValueError, match="uint8"):
    V.normalize_image(rgb.astype(np.float32))


def test_denormalize_roundtrip_and_png(tmp_path):
  rng = np.random.default_rng(2)
  img = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
  x, a = V.instance_views(img, [[10, 10], [30, 12], [20, 35]], crop_sizes=(16, 24, 32), resize=(16,))
  u8, m = V.denormalize(x, a)
  np.testing.assert_array_equal(u8[4], np.asarray(Image.fromarray(img).crop(
      V.crop_box(V.bbox_of_polygon([[10, 10], [30, 12], [20, 35]]), V.ViewSpec(16))).convert("RGB")))
  assert m.shape == (27, 16, 16) and m.max() == 255 and m.min() == 0
  path = V.save_views_png(x, a, tmp_path / "views.png", title="mso")
  with Image.open(path) as im:
    assert im.size[0] > 200 and im.size[1] > 50
