"""Contrastive pretraining of the demo's tiny CLIP (lcdh_jax.pretrain): the loss against numpy,
the space-to-depth fold, retrieval far above random after a short pretraining, the disk cache,
and bitwise repeatability."""
import jax
import numpy as np
import pytest

from lcdh_jax import pretrain, synthetic


def _np_clip_loss(img, txt, t):
  img = img / np.linalg.norm(img, axis=1, keepdims=True)
  txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
  logits = np.exp(t) * img @ txt.T

  def ce(lg):  # rows are the queries, the positive is the diagonal
    lg = lg - lg.max(1, keepdims=True)
    return np.mean(np.log(np.exp(lg).sum(1)) - np.diag(lg))
  return 0.5 * (ce(logits) + ce(logits.T))


def test_clip_loss_matches_numpy_and_rewards_aligned_pairs():
  r = np.random.default_rng(0)
  img, txt = r.normal(size=(6, 8)).astype(np.float32), r.normal(size=(6, 8)).astype(np.float32)
  got = float(pretrain.clip_loss(image_embeds=img, text_embeds=txt, logit_scale=np.float32(2.0)))
  np.testing.assert_allclose(got, _np_clip_loss(img, txt, 2.0), rtol=1e-5)
  # Identical orthogonal pairs at a large scale: the loss goes to 0; shuffled pairs: large.
  eye = np.eye(6, 8, dtype=np.float32)
  assert float(pretrain.clip_loss(image_embeds=eye, text_embeds=eye,
                                  logit_scale=np.float32(np.log(100)))) < 1e-10 + 1e-6
  assert float(pretrain.clip_loss(image_embeds=eye, text_embeds=eye[::-1],
                                  logit_scale=np.float32(np.log(100)))) > 50
  with pytest.raises(ValueError, match="both be"):
    pretrain.clip_loss(image_embeds=img, text_embeds=txt[:3], logit_scale=np.float32(1.0))


def test_retrieval_accuracy_exact_on_hand_built_case():
  e = np.eye(4, dtype=np.float32)
  assert pretrain.retrieval_accuracy(e, e) == {"i2t": 1.0, "t2i": 1.0}
  swapped = e[[1, 0, 2, 3]]  # pairs 0 and 1 point at each other's partner
  assert pretrain.retrieval_accuracy(e, swapped) == {"i2t": 0.5, "t2i": 0.5}
  assert pretrain.retrieval_accuracy(e, swapped, k=2) == {"i2t": 0.5, "t2i": 0.5}
  assert pretrain.retrieval_accuracy(np.ones((4, 2)), np.ones((4, 2)), k=3) == {"i2t": 0.0,
                                                                                "t2i": 0.0}


def _tiny_spec():
  from backbones_jax import clip as clip_lib
  tok = pretrain.caption_tokenizer(16)
  return clip_lib.tiny_clip_spec(width=32, layers=1, heads=2, image_size=32, patch_size=8,
                                 vocab_size=tok.vocab_size, context_length=16, projection_dim=32,
                                 eos_token_id=tok.eos_token_id)


# A warmup shorter than ~40 steps collapsed the embeddings (loss stuck at log(batch)).
CFG = pretrain.PretrainConfig(steps=140, batch_size=64, lr=3e-3, warmup_steps=40,
                              num_samples=1000, space_to_depth=2, seed=0)
CNN = (16, 32)  # the demo's conv image tower (2x2 space-to-depth, then (32, 64)), thinner


def test_space_to_depth_is_a_lossless_fold_of_pixel_blocks():
  x = np.arange(2 * 4 * 6 * 3, dtype=np.float32).reshape(2, 4, 6, 3)
  y = np.asarray(pretrain.space_to_depth(x, 2))
  assert y.shape == (2, 2, 3, 12)
  # Output pixel (i, j) holds the 2x2 block at rows 2i..2i+1, cols 2j..2j+1, row-major, RGB inner.
  np.testing.assert_array_equal(y[1, 1, 2], x[1, 2:4, 4:6].reshape(-1))
  assert sorted(y.ravel().tolist()) == sorted(x.ravel().tolist())
  assert pretrain.space_to_depth(x, 1) is x
  with pytest.raises(ValueError, match="multiple of 4"):
    pretrain.space_to_depth(x, 4)


def test_pretrained_towers_retrieve_far_above_random_and_cache(tmp_path):
  spec = _tiny_spec()
  model, params, info = pretrain.pretrained_tiny_clip(spec, CFG, cache_dir=tmp_path,
                                                      show_progress=False, cnn_widths=CNN)
  assert not info["cached"]
  assert info["loss_last"] < info["loss_first"] - 0.6, info
  # Held-out pairs the pretraining never saw: a fresh draw of the *demo* data stream (seed 5).
  test = synthetic.make_synthetic(num_samples=200, seed=5, show_progress=False)
  ids, mask = pretrain.caption_tokenizer(16)(test.captions)
  img, txt = pretrain.encode_corpus(model, params, images=test.images, input_ids=ids,
                                    attention_mask=mask)
  acc = pretrain.retrieval_accuracy(img, txt, k=5)
  _, random_params = pretrain.init_model(spec, seed=0, cnn_widths=CNN,
                                         space_to_depth=CFG.space_to_depth)
  acc0 = pretrain.retrieval_accuracy(*pretrain.encode_corpus(
      model, random_params, images=test.images, input_ids=ids, attention_mask=mask), k=5)
  chance = 5 / 200  # 5 expected hits of 200; binomial sd ~2.2
  assert min(acc.values()) > 2 * chance, (acc, acc0)       # pretrained: well above chance
  assert min(acc.values()) > max(acc0.values()), (acc, acc0)  # and above random weights
  # A second call with the same settings loads the cached weights instead of training.
  _, again, info2 = pretrain.pretrained_tiny_clip(spec, CFG, cache_dir=tmp_path,
                                                  show_progress=False, cnn_widths=CNN)
  assert info2["cached"]
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(again)):
    np.testing.assert_array_equal(a, b)
  # Any other setting is another cache entry.
  other = pretrain.PretrainConfig(**{**CFG.__dict__, "steps": CFG.steps + 1})
  key = info["key"]
  assert (pretrain.pretrain_cache_paths(tmp_path, key)
          != pretrain.pretrain_cache_paths(tmp_path, {**key, "pretrain": other.__dict__}))


def test_pretraining_repeats_bitwise_with_the_same_seed():
  """Same machine, same seed: the same weights to the bit (the demo's reproducibility claim)."""
  spec = _tiny_spec()
  model, p0 = pretrain.init_model(spec, seed=0, cnn_widths=CNN, space_to_depth=2)
  data = synthetic.make_synthetic(num_samples=128, seed=(0, synthetic.PRETRAIN_STREAM),
                                  show_progress=False)
  ids, mask = pretrain.caption_tokenizer(16)(data.captions)
  kw = dict(images=data.images, input_ids=ids, attention_mask=mask, steps=4, batch_size=64,
            show_progress=False)
  a, la = pretrain.pretrain_clip(model, p0, seed=0, **kw)
  b, lb = pretrain.pretrain_clip(model, p0, seed=0, **kw)
  c, lc = pretrain.pretrain_clip(model, p0, seed=1, **kw)
  assert la == lb and la != lc
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_pretraining_corpus_is_disjoint_from_the_demo_data():
  demo = synthetic.make_synthetic(num_samples=300, seed=0, show_progress=False)
  corpus = synthetic.make_synthetic(num_samples=300, seed=(0, synthetic.PRETRAIN_STREAM),
                                    show_progress=False)
  demo_images = {im.tobytes() for im in demo.images}
  assert not any(im.tobytes() in demo_images for im in corpus.images)
  assert set(w for c in demo.captions + corpus.captions for w in c.split()) <= set(
      synthetic.CAPTION_WORDS)


def test_bad_inputs_fail_clearly():
  spec = _tiny_spec()
  with pytest.raises(ValueError, match="image_size"):
    pretrain.pretrained_tiny_clip(spec, pretrain.PretrainConfig(image_size=64), cache_dir=None)
  with pytest.raises(ValueError, match="space_to_depth=3"):  # 32 px is not a multiple of 3
    pretrain.pretrained_tiny_clip(spec, pretrain.PretrainConfig(space_to_depth=3),
                                  cache_dir=None, cnn_widths=CNN)
  with pytest.raises(ValueError, match="conv image tower"):  # the ViT tower takes pixels
    pretrain.pretrained_tiny_clip(spec, CFG, cache_dir=None)
  from backbones_jax import clip as clip_lib
  bad = clip_lib.tiny_clip_spec(width=32, layers=1, heads=2, vocab_size=10)
  with pytest.raises(ValueError, match="vocabulary"):
    pretrain.pretrained_tiny_clip(bad, CFG, cache_dir=None)
