"""LCDH losses against plain numpy versions of the formulas, plus numerical gradient checks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from lcdh_jax import losses



def _np_softplus(x):
  return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


def _data(seed=0, n=6, m=5, k=8, c=4):
  r = np.random.default_rng(seed)
  f = np.tanh(r.normal(size=(n, k))).astype(np.float32)
  b = np.sign(r.normal(size=(m, k))).astype(np.float32)
  la = (r.random((n, c)) < 0.4).astype(np.float32)
  lb = (r.random((m, c)) < 0.4).astype(np.float32)
  return f, b, la, lb


def test_label_similarity_exact():
  la = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]], np.float32)
  lb = np.array([[1, 1, 0], [0, 0, 1]], np.float32)
  s = losses.label_similarity(labels_a=la, labels_b=lb)
  np.testing.assert_array_equal(np.asarray(s), [[1, 0], [1, 1], [0, 0]])
  s_self = losses.label_similarity(labels_a=la)
  np.testing.assert_array_equal(np.asarray(s_self), [[1, 0, 0], [0, 1, 0], [0, 0, 0]])


def test_pairwise_likelihood_matches_numpy():
  f, b, la, lb = _data()
  s = ((la @ lb.T) > 0).astype(np.float32)
  theta = 0.5 * f @ b.T
  ref = -np.sum(s * theta - np.log(1 + np.exp(theta))) / s.size
  got = losses.pairwise_likelihood_loss(features=f, codes=b, similarity=s, scale=0.5)
  np.testing.assert_allclose(float(got), ref, rtol=1e-5)


def test_pairwise_likelihood_is_stable_for_large_theta():
  f = np.full((2, 4), 100.0, np.float32)
  b = np.ones((2, 4), np.float32)
  s = np.array([[1, 0], [0, 1]], np.float32)
  got = float(losses.pairwise_likelihood_loss(features=f, codes=b, similarity=s, scale=1.0))
  theta = 400.0
  ref = np.mean([_np_softplus(theta) - theta, _np_softplus(theta)] * 2)
  assert np.isfinite(got)
  np.testing.assert_allclose(got, ref, rtol=1e-5)


def _np_contrastive(x, y, t, s=None):
  x = x / np.linalg.norm(x, axis=1, keepdims=True)
  y = y / np.linalg.norm(y, axis=1, keepdims=True)
  logits = x @ y.T / t
  n = len(x)
  def rows(m):
    out = np.eye(n)
    for i in range(n):
      if m[i].sum() > 0:
        out[i] = m[i] / m[i].sum()
    return out
  tgt = np.eye(n) if s is None else rows(s)
  tgt_t = np.eye(n) if s is None else rows(s.T)
  def lsm(z):
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))
  return 0.5 * (np.mean(-(tgt * lsm(logits)).sum(1)) + np.mean(-(tgt_t * lsm(logits.T)).sum(1)))


@pytest.mark.parametrize("multi", [False, True])
def test_contrastive_matches_numpy(multi):
  r = np.random.default_rng(1)
  x = r.normal(size=(5, 7)).astype(np.float32)
  y = r.normal(size=(5, 7)).astype(np.float32)
  s = None
  if multi:
    s = (r.random((5, 5)) < 0.4).astype(np.float32)
    s[3] = 0  # a row with no positive falls back to the diagonal
  got = losses.contrastive_loss(image_features=x, text_features=y, temperature=0.2, similarity=s)
  np.testing.assert_allclose(float(got), _np_contrastive(x, y, 0.2, s), rtol=1e-5)


def test_contrastive_lower_for_aligned_pairs():
  r = np.random.default_rng(2)
  x = r.normal(size=(8, 16)).astype(np.float32)
  aligned = float(losses.contrastive_loss(image_features=x, text_features=x, temperature=0.1))
  shuffled = float(losses.contrastive_loss(image_features=x, text_features=x[::-1],
                                           temperature=0.1))
  assert aligned < shuffled


def test_quantization_and_balance_match_numpy():
  f, _, _, _ = _data()
  b = np.where(f >= 0, 1.0, -1.0)
  np.testing.assert_allclose(float(losses.quantization_loss(features=f)),
                             np.sum((b - f) ** 2) / f.size, rtol=1e-5)
  ones = np.ones((f.shape[0], 1))
  ref = float(np.sum((f.T @ ones) ** 2)) / (f.shape[0] ** 2 * f.shape[1])
  np.testing.assert_allclose(float(losses.bit_balance_loss(features=f)), ref, rtol=1e-5)


def test_teacher_similarity_modes():
  t = np.array([[1, 1, 1, 1], [1, 1, 1, -1], [-1, -1, -1, 1]], np.float32)
  cos = (t @ t.T) / 4.0
  hard = losses.teacher_similarity(teacher_codes=t, mode="threshold", threshold=0.0)
  np.testing.assert_array_equal(np.asarray(hard), (cos > 0).astype(np.float32))
  soft = losses.teacher_similarity(teacher_codes=t, mode="soft")
  np.testing.assert_allclose(np.asarray(soft), (1 + cos) / 2, atol=1e-6)


def test_distillation_modes_match_numpy():
  f, b, _, _ = _data(3, n=5, m=5)
  tb = np.sign(np.random.default_rng(4).normal(size=(5, 8))).astype(np.float32)
  s = np.asarray(losses.teacher_similarity(teacher_codes=tb, mode="soft"))
  theta = 0.5 * f @ tb.T
  ref = np.mean(_np_softplus(theta) - s * theta)
  got = losses.distillation_loss(student_features=f, teacher_codes=tb, teacher_sim=s,
                                 mode="likelihood", scale=0.5)
  np.testing.assert_allclose(float(got), ref, rtol=1e-5)
  ref_mse = np.mean((f @ tb.T / 8 - (2 * s - 1)) ** 2)
  got_mse = losses.distillation_loss(student_features=f, teacher_codes=tb, teacher_sim=s,
                                     mode="mse")
  np.testing.assert_allclose(float(got_mse), ref_mse, rtol=1e-5)


def test_gradients_numerically():
  f, b, la, lb = _data(5, n=4, m=3, k=4, c=3)
  s = ((la @ lb.T) > 0).astype(np.float32)
  f64 = jnp.asarray(f)  # float32; tolerances sized for it
  kw = dict(modes=("rev",), order=1, atol=2e-2, rtol=2e-2, eps=1e-2)
  check_grads(lambda x: losses.pairwise_likelihood_loss(features=x, codes=b, similarity=s),
              (f64,), **kw)
  y = np.random.default_rng(6).normal(size=f.shape).astype(np.float32)
  ss = ((la @ la.T) > 0).astype(np.float32)
  check_grads(lambda x: losses.contrastive_loss(image_features=x, text_features=y,
                                                temperature=0.5, similarity=ss), (f64,), **kw)
  check_grads(lambda x: losses.quantization_loss(features=x, codes=jnp.sign(f64)), (f64,), **kw)
  check_grads(lambda x: losses.bit_balance_loss(features=x), (f64,), **kw)
  ts = np.asarray(losses.teacher_similarity(teacher_codes=b, mode="soft"))
  for mode in ("likelihood", "mse"):
    check_grads(lambda x: losses.distillation_loss(student_features=x, teacher_codes=b,
                                                   teacher_sim=np.asarray(ts[:1].repeat(4, 0)),
                                                   mode=mode), (f64,), **kw)


def test_likelihood_gradient_descent_decreases_loss():
  f, b, la, lb = _data(7, n=8, m=8, k=16)
  s = ((la @ lb.T) > 0).astype(np.float32)
  loss_fn = lambda x: losses.pairwise_likelihood_loss(features=jnp.tanh(x), codes=b, similarity=s)
  x = jnp.asarray(np.arctanh(np.clip(f, -0.99, 0.99)))
  l0 = float(loss_fn(x))
  for _ in range(50):
    x = x - 1.0 * jax.grad(loss_fn)(x)
  assert float(loss_fn(x)) < 0.7 * l0


def test_bad_inputs_raise_clear_errors():
  f, b, la, lb = _data()
  with pytest.raises(ValueError, match="same code length"):
    losses.pairwise_likelihood_loss(features=f, codes=b[:, :4], similarity=np.zeros((6, 5)))
  with pytest.raises(ValueError, match="similarity must have shape"):
    losses.pairwise_likelihood_loss(features=f, codes=b, similarity=np.zeros((5, 6)))
  with pytest.raises(ValueError, match="same number of classes"):
    losses.label_similarity(labels_a=la, labels_b=lb[:, :2])
  with pytest.raises(ValueError, match="temperature"):
    losses.contrastive_loss(image_features=f, text_features=f, temperature=0.0)
  with pytest.raises(ValueError, match="mode"):
    losses.distillation_loss(student_features=f, teacher_codes=b, teacher_sim=np.zeros((6, 5)),
                             mode="kl")
