"""The CLIP feature cache: computed once, keyed by dataset, model and content."""
import numpy as np
import pytest

from lcdh_jax import features


def test_cache_computes_once_and_keys_on_model_and_content(tmp_path):
  calls = []
  labels = np.eye(3, dtype=np.float32)
  caps = ["a", "b", "c"]

  def compute():
    calls.append(1)
    return {"image": np.full((3, 4), len(calls), np.float32), "text": np.zeros((3, 4), np.float32)}

  kw = dict(cache_dir=tmp_path, dataset="synthetic", image_size=32, labels=labels, captions=caps,
            compute=compute)
  a = features.cached_clip_features(model="tiny-clip-seed0", **kw)
  b = features.cached_clip_features(model="tiny-clip-seed0", **kw)
  assert len(calls) == 1
  np.testing.assert_array_equal(a["image"], b["image"])
  features.cached_clip_features(model="openai/clip-vit-base-patch32", **kw)
  assert len(calls) == 2
  features.cached_clip_features(model="tiny-clip-seed0", preprocess="squash", **kw)
  assert len(calls) == 3  # another image preprocessing is another cache entry
  kw["captions"] = ["a", "b", "d"]
  features.cached_clip_features(model="tiny-clip-seed0", **kw)
  assert len(calls) == 4
  assert len(list(tmp_path.glob("*.json"))) == 4


def test_compute_clip_features_pads_batches():
  shapes = []
  def enc_img(x):
    shapes.append(x.shape)
    return x.reshape(len(x), -1)[:, :2]
  def enc_txt(ids, mask):
    return ids[:, :2].astype(np.float32)
  tok = lambda texts: (np.array([[len(t), 1, 0] for t in texts]), np.ones((len(texts), 3)))
  out = features.compute_clip_features(
      get_images=lambda idx: np.repeat(idx[:, None, None, None], 3, -1).astype(np.float32),
      captions=["x", "yy", "zzz", "w", "vv"], encode_image=enc_img, encode_text=enc_txt,
      tokenize=tok, batch_size=2)
  assert out["image"].shape == (5, 2) and all(s[0] == 2 for s in shapes)
  np.testing.assert_array_equal(out["image"][:, 0], np.arange(5))
  np.testing.assert_array_equal(out["text"][:, 0], [1, 2, 3, 1, 2])
  with pytest.raises(ValueError, match="no items"):
    features.compute_clip_features(get_images=None, captions=[], encode_image=None,
                                   encode_text=None, tokenize=None)


def _openai_transform_reference(img: np.ndarray, n_px: int) -> np.ndarray:
  """OpenAI CLIP's `_transform` on a PIL image (Resize(n_px, BICUBIC) -> CenterCrop(n_px)), written
  out with torchvision's size arithmetic (torchvision itself does not import here)."""
  from PIL import Image
  im = Image.fromarray(img)
  w, h = im.size
  if w <= h:
    ow, oh = n_px, int(n_px * h / w)
  else:
    oh, ow = n_px, int(n_px * w / h)
  im = im.resize((ow, oh), Image.BICUBIC)
  top, left = int(round((oh - n_px) / 2.0)), int(round((ow - n_px) / 2.0))
  return np.asarray(im)[top:top + n_px, left:left + n_px]


def _photo_like(h, w, seed):
  from PIL import Image
  r = np.random.default_rng(seed)
  base = Image.fromarray(r.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8))
  img = np.asarray(base.resize((w, h), Image.BILINEAR)).astype(np.int16)
  return np.clip(img + r.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("h,w", [(300, 500), (640, 427), (375, 500), (230, 229), (100, 150),
                                 (224, 224), (301, 224)])
def test_clip_preprocess_equals_openai_transform(h, w):
  import torch
  img = _photo_like(h, w, seed=h * w)
  ours = features.clip_preprocess(img, 224)
  ref = _openai_transform_reference(img, 224)
  assert ours.shape == ref.shape == (224, 224, 3) and ours.dtype == np.uint8
  assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1  # within one uint8 level
  # An independent resampler: torch's antialiased bicubic on uint8 (PIL's kernel), then the
  # same centre crop. It matches PIL within one level when shrinking (upscaling differs by 2).
  if min(h, w) >= 224:
    short = min(h, w)
    oh, ow = (224, int(224 * w / h)) if h == short else (int(224 * h / w), 224)
    t = torch.nn.functional.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None], size=(oh, ow),
                                        mode="bicubic", antialias=True, align_corners=False)
    t = t[0].permute(1, 2, 0).numpy()
    top, left = int(round((oh - 224) / 2.0)), int(round((ow - 224) / 2.0))
    t = t[top:top + 224, left:left + 224]
    assert np.abs(ours.astype(int) - t.astype(int)).max() <= 1
  # The whole CLIP input, normalised, within one uint8 level / std of the reference.
  from backbones_jax import clip as clip_lib
  a = np.asarray(clip_lib.normalize(ours.astype(np.float32) / 255.0))
  b = (ref.astype(np.float32) / 255.0 - np.array(clip_lib.CLIP_MEAN)) / np.array(clip_lib.CLIP_STD)
  assert np.abs(a - b).max() <= 1 / 255 / min(clip_lib.CLIP_STD) + 1e-5


def test_clip_preprocess_keeps_the_old_squash_and_differs_from_it():
  from PIL import Image
  img = _photo_like(120, 200, seed=1)
  squash = features.clip_preprocess(img, 64, mode="squash")
  np.testing.assert_array_equal(squash, np.asarray(Image.fromarray(img).resize((64, 64), Image.BILINEAR)))
  crop = features.clip_preprocess(img, 64)
  assert crop.shape == squash.shape and np.abs(crop.astype(int) - squash.astype(int)).mean() > 5
  with pytest.raises(ValueError, match="preprocessing must be one of"):
    features.clip_preprocess(img, 64, mode="stretch")
