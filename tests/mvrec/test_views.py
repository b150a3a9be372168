"""Views: polygon masks, crop boxes, zero padding, ordering, ablation modes, resize chain, normalisation.

Hand-computed cases of the official arithmetic; the side-by-side comparison with the official code
is tests/mvrec/test_official_views.py.
"""
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
  # odd coordinate sum: bbox2rect floors the centre, (0 + 1) // 2 = 0 (a float centre 0.5 gave (-1, -1, 2, 2))
  assert V.bbox2rect((0, 0, 1, 1)) == (0, 0, 1, 1)
  assert V.bbox2rect((3, 4, 10, 9)) == (6, 6, 7, 5)
  assert V.bbox2rect((3.0, 4.0, 10.0, 9.0)) == (6.0, 6.0, 7.0, 5.0)
  assert V.crop_box((0, 0, 1, 1), V.ViewSpec(size=4)) == (-2, -2, 2, 2)
  # odd size: 37 // 2 = 18 -> box spans centre - 18 .. centre + 19
  assert V.crop_box((10, 20, 13, 25), V.ViewSpec(size=37)) == (11 - 18, 22 - 18, 11 + 19, 22 + 19)
  # bbox-relative: sx = 40 * 1.5 = 60, sy = 60 * 1.5 = 90; centre shift 1*60//3 = 20
  assert V.crop_box(bbox, V.ViewSpec(size=1.5, x_step=1)) == (int(140 - 30), int(130 - 45), int(140 + 30), int(130 + 45))
  # bbox-relative with float floor division: sx = 7 * 0.999 = 6.993, sx // 2 = 3.0, (-1 * 6.993) // 3 = -3.0
  # cx = (3 + 10) // 2 = 6 -> int(6 - 3 - 3) = 0, int(0 + 6.993) = 6
  assert V.crop_box((3, 4, 10, 9), V.ViewSpec(size=0.999, x_step=-1))[::2] == (0, 6)
  # the instance bbox in the view: clipped to the crop, then int(v * new / old) per resize step
  assert V.bbox_in_view((3, 4, 10, 9), (0, 0, 8, 8), resize=()) == [3, 4, 8, 8]
  assert V.bbox_in_view((3, 4, 10, 9), (0, 0, 8, 8), resize=(16, 6)) == [int(int(3 * 2.0) * 0.375), 3, 6, 6]


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
  # centre (0 + 1) // 2 = 0, + (-6)//3 = -2 -> box (-5, -5, 1, 1): 6 px, rows/cols -5..0
  assert box == (-5, -5, 1, 1)
  assert ci.shape == (1, 6, 6, 3)
  np.testing.assert_array_equal(ci[0], _crop_ref(img, box))
  assert (ci[0][:5] == 0).all() and (ci[0][:, :5] == 0).all() and (cmm[0][:5] == 0).all()
  np.testing.assert_array_equal(ci[0][5, 5], img[0, 0])
  assert cmm[0][5, 5] == 255


def _rot_ref(a, quarter_turns, cx, cy):
  """Counter-clockwise quarter turns about integer pixel (cx, cy) by hand, zero outside (cv2 convention)."""
  out = a
  for _ in range(quarter_turns % 4):
    src, out = out, np.zeros_like(a)
    for y in range(a.shape[0]):
      for x in range(a.shape[1]):
        xs, ys = cx + cy - y, x - cx + cy  # 90 deg CCW: dst(x, y) = src(cx + cy - y, x - cx + cy)
        if 0 <= xs < a.shape[1] and 0 <= ys < a.shape[0]:
          out[y, x] = src[ys, xs]
  return out


def test_flips_and_rotations_accumulate_like_the_official_loop():
  rng = np.random.default_rng(1)
  img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
  mask = np.zeros((16, 16), np.uint8)
  mask[6:9, 5:11] = 255
  bbox = (5, 6, 10, 8)
  box = V.crop_box(bbox, V.ViewSpec(8))
  assert box == (3, 3, 11, 11)  # centre (7, 7)
  # flips act on the WHOLE image before the crop, and each view starts from the previous view's image
  flips = {0: lambda a: a, 1: lambda a: a[:, ::-1], 2: lambda a: a[::-1],
           3: lambda a: np.swapaxes(a[::-1, ::-1], 0, 1), 4: lambda a: np.swapaxes(a, 0, 1)}
  f_i, f_m = V.render_views(img, mask, bbox, V.view_specs("mf", crop_sizes=(8,)), resize=())
  cur_i, cur_m = img, mask
  for k in range(5):
    cur_i, cur_m = flips[k](cur_i), flips[k](cur_m)
    np.testing.assert_array_equal(f_i[k], _crop_ref(cur_i, box), err_msg=f"flip view {k}")
    np.testing.assert_array_equal(f_m[k], _crop_ref(cur_m, box), err_msg=f"flip view {k}")
  n_i, _ = V.render_views(img, mask, bbox, V.view_specs("mf", crop_sizes=(8,)), resize=(), accumulate=False)
  np.testing.assert_array_equal(n_i[2], _crop_ref(img[::-1], box))
  # "mr": angles 0, 90, 180, 270 accumulate -> 0, 90, 270, 540 (= 180) degrees in total about (7, 7)
  r_i, r_m = V.render_views(img, mask, bbox, V.view_specs("mr", crop_sizes=(8,)), resize=())
  for k, quarters in enumerate((0, 1, 3, 6)):
    np.testing.assert_array_equal(r_i[k], _crop_ref(_rot_ref(img, quarters, 7, 7), box), err_msg=f"view {k}")
    np.testing.assert_array_equal(r_m[k], _crop_ref(_rot_ref(mask, quarters, 7, 7), box), err_msg=f"view {k}")
  n_i, _ = V.render_views(img, mask, bbox, V.view_specs("mr", crop_sizes=(8,)), resize=(), accumulate=False)
  np.testing.assert_array_equal(n_i[2], _crop_ref(_rot_ref(img, 2, 7, 7), box))
  with pytest.raises(ValueError, match="flip code"):
    V.render_views(img, mask, bbox, [V.ViewSpec(8, flip=7)], resize=())


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
  # the chain is PIL: crop -> resize(64, BICUBIC) -> resize(32, BICUBIC), image and mask alike (PIL's default)
  pil = Image.fromarray(img).crop(V.crop_box((10, 10, 30, 30), V.view_specs("mso", (16, 24, 32))[20]))
  ref = np.asarray(pil.resize((64, 64), Image.BICUBIC).resize((32, 32), Image.BICUBIC))
  np.testing.assert_allclose(x[20], V.normalize_image(ref), atol=1e-6)
  m = Image.fromarray(V.polygon_to_mask(poly, 40, 40)).crop(V.crop_box((10, 10, 30, 30), V.view_specs("mso", (16, 24, 32))[20]))
  mref = np.asarray(m.resize((64, 64), Image.BICUBIC).resize((32, 32), Image.BICUBIC))
  assert mref.min() < 255 and 0 < mref.max()  # the polygon edge lies in this crop
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
