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
  kw["captions"] = ["a", "b", "d"]
  features.cached_clip_features(model="tiny-clip-seed0", **kw)
  assert len(calls) == 3
  assert len(list(tmp_path.glob("*.json"))) == 3


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
