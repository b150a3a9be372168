"""Shapes and properties of the LCDH teacher and student."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcdh_jax import models


def test_teacher_shapes_and_modality_codes():
  t = models.Teacher(bits=16, width=32, num_heads=2, dropout=0.0)
  r = np.random.default_rng(0)
  img = jnp.asarray(r.normal(size=(5, 24)), jnp.float32)
  txt = jnp.asarray(r.normal(size=(5, 20)), jnp.float32)
  params = jax.jit(t.init)(jax.random.key(0, impl="rbg"), img, txt)
  out = jax.jit(t.apply)(params, img, txt)
  assert set(out) == {"fused", "image", "text"}
  for v in out.values():
    assert v.shape == (5, 16)
    assert float(jnp.max(jnp.abs(v))) < 1.0
  # The per-modality codes depend on one modality only, and equal the dedicated encoders.
  out2 = jax.jit(t.apply)(params, img, txt[::-1])
  np.testing.assert_allclose(out["image"], out2["image"], atol=1e-6)
  assert not np.allclose(out["fused"], out2["fused"])
  enc_i = jax.jit(lambda p, x: t.apply(p, x, method=t.encode_image))
  enc_t = jax.jit(lambda p, x: t.apply(p, x, method=t.encode_text))
  np.testing.assert_allclose(enc_i(params, img), out["image"], atol=1e-6)
  np.testing.assert_allclose(enc_t(params, txt), out["text"], atol=1e-6)
  with pytest.raises(ValueError, match="same batch size"):
    t.apply(params, img, txt[:3])


def test_student_shapes():
  s = models.Student(bits=32, cnn_widths=(8, 16), text_hidden=16, image_hidden=16)
  imgs = jnp.zeros((3, 32, 32, 3))
  bow = jnp.ones((3, 40))
  params = jax.jit(s.init)(jax.random.key(1, impl="rbg"), imgs, bow)
  out = jax.jit(s.apply)(params, imgs, bow)
  assert out["image"].shape == (3, 32) and out["text"].shape == (3, 32)
  with pytest.raises(ValueError, match="NHWC"):
    s.apply(params, jnp.zeros((3, 32, 32)), bow)
  with pytest.raises(ValueError, match="image_backbone"):
    jax.eval_shape(models.Student(bits=8, image_backbone="resnet").init,
                   jax.random.key(0, impl="rbg"), imgs, bow)


def test_student_vgg16_option_loads_backbone_params():
  """VGG16 params from backbones_jax.vgg slot into the student tree with the shapes it expects."""
  from backbones_jax import vgg as vgg_lib
  s = models.Student(bits=16, image_backbone="vgg16", vgg_width_divisor=16, text_hidden=8,
                     image_hidden=8)
  imgs = jnp.zeros((2, 32, 32, 3), jnp.float32)
  bow = jnp.ones((2, 10))
  abstract = jax.eval_shape(s.init, jax.random.key(0, impl="rbg"), imgs, bow)["params"]
  params = jax.tree_util.tree_map(lambda a: np.zeros(a.shape, a.dtype), abstract)
  _, vgg_params = vgg_lib.init_vgg(16, seed=3, width_divisor=16)
  new = models.load_vgg_into_student(params, vgg_params)
  np.testing.assert_array_equal(new["image_net"]["vgg"]["conv1_1"]["kernel"],
                                vgg_params["conv1_1"]["kernel"])
  got = jax.tree_util.tree_map(lambda a: (tuple(a.shape), str(a.dtype)), new)
  want = jax.tree_util.tree_map(lambda a: (tuple(a.shape), str(a.dtype)), abstract)
  assert got == want
  out = jax.eval_shape(s.apply, {"params": new}, imgs, bow)
  assert out["image"].shape == (2, 16)
  small = jax.eval_shape(models.Student(bits=16).init, jax.random.key(0, impl="rbg"), imgs,
                         bow)["params"]
  with pytest.raises(ValueError, match="image_backbone='vgg16'"):
    models.load_vgg_into_student(small, vgg_params)
