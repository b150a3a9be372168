"""Reflection-removal losses against plain numpy versions of the formulas; gradients; one train step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from derefl_jax import losses, models


def _imgs(seed, n=3, shape=(2, 16, 12, 3)):
  rng = np.random.default_rng(seed)
  return [rng.uniform(size=shape).astype(np.float32) for _ in range(n)]


# ------------------------------------------------------------------ numpy references
def np_grad(x):
  return x[:, 1:] - x[:, :-1], x[:, :, 1:] - x[:, :, :-1]


def np_pixel(p, t):
  (px, py), (tx, ty) = np_grad(p), np_grad(t)
  return 0.3 * np.mean((p - t) ** 2) + 0.6 * (np.mean(np.abs(px - tx)) + np.mean(np.abs(py - ty)))


def np_mean_filter(x, k):
  p = k // 2
  xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
  out = np.zeros_like(x, dtype=np.float64)
  for i in range(k):
    for j in range(k):
      out += xp[:, i:i + x.shape[1], j:j + x.shape[2]]
  return out / k ** 2


def np_sig(z):
  return 1 / (1 + np.exp(-z))


def np_exclusion(t, r, levels=3, eps=1e-6):
  t, r = t.astype(np.float64), r.astype(np.float64)
  lx = ly = 0.0
  for _ in range(levels):
    (tx, ty), (rx, ry) = np_grad(t), np_grad(r)
    ax = 2 * np.mean(np.abs(tx)) / (np.mean(np.abs(rx)) + eps)
    ay = 2 * np.mean(np.abs(ty)) / (np.mean(np.abs(ry)) + eps)
    lx += (np.mean((2 * np_sig(tx) - 1) ** 2 * (2 * np_sig(rx * ax) - 1) ** 2) + eps) ** 0.25
    ly += (np.mean((2 * np_sig(ty) - 1) ** 2 * (2 * np_sig(ry * ay) - 1) ** 2) + eps) ** 0.25
    b, h, w, c = t.shape
    t = t[:, :h // 2 * 2, :w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c).mean((2, 4))
    r = r[:, :h // 2 * 2, :w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c).mean((2, 4))
  return (lx / levels + ly / levels) / 2


def np_low(r_low, i, t, k):
  target = np_mean_filter(i, k) - np_mean_filter(t, k)
  (px, py), (tx, ty) = np_grad(r_low), np_grad(target)
  return np.mean((r_low - target) ** 2) + np.mean((px - tx) ** 2) + np.mean((py - ty) ** 2)


def np_high(r_high, i, t, k):
  target = i - t - (np_mean_filter(i, k) - np_mean_filter(t, k))
  return np.mean(np.abs(r_high - target))


# ------------------------------------------------------------------ single losses
def test_pixel_loss_matches_numpy_and_mask():
  p, t, p2 = _imgs(0)
  np.testing.assert_allclose(losses.pixel_loss(pred=p, target=t), np_pixel(p, t), rtol=1e-5)
  # sample_weight keeps only the marked samples.
  got = losses.pixel_loss(pred=p, target=t, sample_weight=jnp.array([0.0, 1.0]))
  np.testing.assert_allclose(got, np_pixel(p[1:], t[1:]), rtol=1e-5)
  np.testing.assert_allclose(losses.pixel_loss(pred=t, target=t), 0.0, atol=1e-7)
  with pytest.raises(ValueError, match="shapes differ"):
    losses.pixel_loss(pred=p, target=t[:, :8])
  with pytest.raises(ValueError, match="NHWC"):
    losses.pixel_loss(pred=p[0], target=t[0])


def test_reconstruction_low_high_frequency_match_numpy():
  i, t, r, res = _imgs(1, 4)
  np.testing.assert_allclose(losses.reconstruction_loss(t=t, r=r, inputs=i), np.mean(np.abs(t + r - i)), rtol=1e-5)
  np.testing.assert_allclose(losses.reconstruction_loss(t=t, r=r, inputs=i, residual=res),
                             np.mean(np.abs(t + r + res - i)), rtol=1e-5)
  for k in (3, 5):
    np.testing.assert_allclose(losses.low_frequency_loss(r_low=r, inputs=i, target_t=t, kernel_size=k),
                               np_low(r, i, t, k), rtol=1e-5)
    np.testing.assert_allclose(losses.high_frequency_loss(r_high=r, inputs=i, target_t=t, kernel_size=k),
                               np_high(r, i, t, k), rtol=1e-5)
  # Exact physical model: R_low, R_high equal to their targets give zero loss, and they sum to I - T.
  lo = losses.low_frequency_target(inputs=i, target_t=t, kernel_size=5)
  hi = losses.high_frequency_target(inputs=i, target_t=t, kernel_size=5)
  np.testing.assert_allclose(lo + hi, i - t, atol=1e-6)
  assert float(losses.low_frequency_loss(r_low=lo, inputs=i, target_t=t, kernel_size=5)) < 1e-12
  assert float(losses.high_frequency_loss(r_high=hi, inputs=i, target_t=t, kernel_size=5)) < 1e-7


def test_exclusion_matches_numpy_and_pooling_equals_torch_bilinear_half():
  t, r, _ = _imgs(2, shape=(2, 32, 24, 3))
  excl = jax.jit(lambda t, r: losses.exclusion_loss(t=t, r=r))
  np.testing.assert_allclose(excl(t, r), np_exclusion(t, r), rtol=1e-5)
  np.testing.assert_allclose(losses.exclusion_loss(t=t[:, :8], r=r[:, :8], levels=1), np_exclusion(t[:, :8], r[:, :8], 1),
                             rtol=1e-5)
  # Disjoint edges (T varies along H only, R along W only) give a much smaller loss than shared ones.
  ramp_h = np.broadcast_to(np.sin(np.arange(32) * 1.3)[None, :, None, None], (1, 32, 24, 3)).astype(np.float32)
  ramp_w = np.broadcast_to(np.sin(np.arange(24) * 1.7)[None, None, :, None], (1, 32, 24, 3)).astype(np.float32)
  assert float(excl(ramp_h, ramp_w)) < 0.2 * float(excl(ramp_h + ramp_w, ramp_h + ramp_w))
  # DSRNet downsamples with bilinear x0.5 (align_corners=False): on even sizes that is a 2x2 mean.
  torch = pytest.importorskip("torch")
  x = torch.from_numpy(t).permute(0, 3, 1, 2)
  ref = torch.nn.functional.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
  np.testing.assert_allclose(losses._avg_pool2(jnp.asarray(t)), ref.permute(0, 2, 3, 1).numpy(), atol=1e-6)


def test_perceptual_loss_matches_numpy_and_stops_target_gradient():
  model = models.build_model("tiny")
  from backbones_jax import vgg as vgg_lib
  _, vgg_params = vgg_lib.init_vgg(19, seed=0, width_divisor=8)
  vgg_apply = models.perceptual_vgg_apply(model)
  p, t = _imgs(3, 2, shape=(2, 16, 16, 3))
  fp, ft = vgg_apply(vgg_params, p), vgg_apply(vgg_params, t)
  ref = sum(w * np.mean(np.abs(np.asarray(fp[k]) - np.asarray(ft[k])))
            for k, w in zip(losses.VGG_TAPS, losses.VGG_TAP_WEIGHTS))
  loss_fn = jax.jit(lambda p, t: losses.perceptual_loss(pred=p, target=t, vgg_apply=vgg_apply, vgg_params=vgg_params))
  np.testing.assert_allclose(loss_fn(p, t), ref, rtol=1e-5)
  gp, gt = jax.jit(jax.grad(lambda p, t: loss_fn(p, t), argnums=(0, 1)))(p, t)
  assert float(jnp.abs(gp).sum()) > 0 and float(jnp.abs(gt).sum()) == 0.0
  np.testing.assert_allclose(losses.VGG_TAP_WEIGHTS, [1 / 2.6, 1 / 4.8, 1 / 3.7, 1 / 5.6, 10 / 1.5])
  with pytest.raises(ValueError, match="did not return taps"):
    losses.perceptual_loss(pred=p, target=t, vgg_apply=lambda prm, x: {"relu1_1": x}, vgg_params=None)


# ------------------------------------------------------------------ total loss
def test_total_loss_is_weighted_sum_and_gradients_finite():
  i, t, r, rl, rh, tgt_r = _imgs(4, 6)
  out = {"T": t, "R": rl + rh, "R_low": rl, "R_high": rh}
  cfg = {"vgg": 0.0, "t_pixel": 2.0, "mean_kernel": 5, "recons": 0.5}
  total = jax.jit(lambda o, i, t, tr: losses.total_loss(out=o, inputs=i, target_t=t, target_r=tr, config=cfg))
  loss, m = total(out, i, r, tgt_r)
  expected = (2.0 * np_pixel(t, r) + 1.0 * np_pixel(rl + rh, tgt_r) + np_exclusion(t, rl + rh)
              + 0.5 * np.mean(np.abs(t + rl + rh - i)) + np_low(rl, i, r, 5) + np_high(rh, i, r, 5))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(m["loss"], loss)
  assert set(m) == {"loss", "loss_t_pixel", "loss_r_pixel", "loss_exclusion", "loss_recons", "loss_low_freq",
                    "loss_high_freq"}
  # No reflection target (real pairs): r_pixel is skipped.
  loss2, m2 = jax.jit(lambda o, i, t: losses.total_loss(out=o, inputs=i, target_t=t, config=cfg))(out, i, r)
  np.testing.assert_allclose(loss2, expected - np_pixel(rl + rh, tgt_r), rtol=1e-5)
  assert "loss_r_pixel" not in m2
  # Gradients are finite, even with R = 0 (exclusion's eps) and identical T and I.
  zero = {"T": i, "R": np.zeros_like(i), "R_low": np.zeros_like(i), "R_high": np.zeros_like(i)}
  g = jax.jit(jax.grad(lambda o: total(o, i, t, tgt_r)[0]))(zero)
  assert all(bool(jnp.isfinite(v).all()) for v in g.values())
  assert float(jnp.abs(g["R_low"]).sum()) > 0 and float(jnp.abs(g["R_high"]).sum()) > 0
  with pytest.raises(ValueError, match="valid keys"):
    losses.total_loss(out=out, inputs=i, target_t=r, config={"vgg_weight": 1.0})
  with pytest.raises(ValueError, match="vgg_apply"):
    losses.total_loss(out=out, inputs=i, target_t=r)
  with pytest.raises(ValueError, match="lacks"):
    losses.total_loss(out={"T": t}, inputs=i, target_t=r, config=cfg)


@pytest.mark.slow
def test_tiny_model_train_steps_decrease_loss():
  """Tiny model + all losses: Adam steps lower the loss.

  One level and no complementarity attention keep the XLA compile short (its gradient is checked
  in test_models); the full tiny preset trains in the train.derefl demo.
  """
  import optax
  model = models.build_model("tiny", enc_blocks=(1,), dec_blocks=(1,), attention=False)
  trainable, frozen = models.init_params(model, 0)
  vgg_apply = models.perceptual_vgg_apply(model)
  t, r, _ = _imgs(5, shape=(2, 16, 16, 3))
  i = np.clip(t + 0.5 * r, 0, 1).astype(np.float32)
  tx = optax.adam(2e-3)

  def loss_fn(p):
    out, _ = model.apply({"params": models.merge_params(p, frozen)}, i)
    return losses.total_loss(out=out, inputs=i, target_t=t, target_r=0.5 * r, vgg_apply=vgg_apply,
                             vgg_params=frozen["vgg"])[0]

  @jax.jit
  def step(p, o):
    loss, g = jax.value_and_grad(loss_fn)(p)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, loss, g

  opt = tx.init(trainable)
  hist = []
  for _ in range(8):
    trainable, opt, loss, g = step(trainable, opt)
    hist.append(float(loss))
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(g))
  # Step 0 has R == 0 (zero-init heads), where the exclusion term sits at its degenerate value
  # eps**0.25; it jumps once R != 0 (it is invariant to R's scale), so compare with step 1.
  assert hist[-1] < hist[1], hist
