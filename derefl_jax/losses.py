"""Losses of the inter-layer complementarity reflection-removal network (pure, keyword-only).

Images are NHWC float in [0, 1]. From DSRNet (ICCV 2023): pixel (0.3 MSE + 0.6 L1 on image
gradients) on T and R, VGG19 perceptual on T (taps relu1_1..relu5_1, weights 1/2.6, 1/4.8,
1/3.7, 1/5.6, 10/1.5, overall scale 0.01), exclusion (Zhang et al. 2018, 3 levels) between T
and R, reconstruction 0.2 L1(T + R + residual, I). From the paper's physical model
``I = T + R_low + R_high``: low-frequency loss on R_low (target ``M(I) - M(T)``, value and
gradient L2) and high-frequency loss on R_high (target ``I - T - (M(I) - M(T))``, L1), with
M a mean filter. :func:`total_loss` combines them with weights from a config mapping.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from derefl_jax.models import mean_filter

Array = jax.Array

VGG_TAPS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
VGG_TAP_WEIGHTS = (1.0 / 2.6, 1.0 / 4.8, 1.0 / 3.7, 1.0 / 5.6, 10.0 / 1.5)

DEFAULT_LOSS_CONFIG: dict[str, float | int | str] = {
    "t_pixel": 1.0,          # 0.3 MSE + 0.6 gradient L1 on T
    "r_pixel": 1.0,          # same on R = R_low + R_high (only where a reflection target exists)
    "vgg": 0.01,             # perceptual loss on T (DSRNet lambda_vgg)
    "exclusion": 1.0,        # exclusion between T and R
    "recons": 0.2,           # L1(T + R + residual, I)
    "low_freq": 1.0,         # R_low vs M(I) - M(T): value + gradient L2
    "high_freq": 1.0,        # R_high vs I - T - (M(I) - M(T)): L1
    "mean_kernel": 11,       # size of the mean filter M (odd)
    "exclusion_levels": 3,
    "low_freq_grad": 1.0,    # weight of the gradient term inside the low-frequency loss
    # Which T forms the frequency targets M(I) - M(T) and I - T - (M(I) - M(T)):
    # "prediction" (the paper, arXiv 2505.12641v1: from T_hat, gradients flow into T_hat through them)
    # or "ground_truth" (the ground-truth T, no gradient through the target; docs/derefl_model.md).
    "freq_target": "ground_truth",
}
FREQ_TARGETS = ("prediction", "ground_truth")


def _check_images(**arrays):
  shapes = {k: tuple(v.shape) for k, v in arrays.items() if v is not None}
  for k, s in shapes.items():
    if len(s) != 4:
      raise ValueError(f"{k} must be an NHWC batch (B, H, W, C), got shape {s}.")
  if len(set(shapes.values())) > 1:
    raise ValueError(f"image shapes differ: {shapes}.")


def image_gradients(x: Array) -> tuple[Array, Array]:
  """Forward differences of (B, H, W, C): (d/dH (B, H-1, W, C), d/dW (B, H, W-1, C))."""
  return x[:, 1:] - x[:, :-1], x[:, :, 1:] - x[:, :, :-1]


def _per_sample_mean(x: Array) -> Array:
  return jnp.mean(x.reshape(x.shape[0], -1), axis=1)


def _pixel_per_sample(pred, target, mse_weight, grad_weight):
  gpx, gpy = image_gradients(pred)
  gtx, gty = image_gradients(target)
  mse = _per_sample_mean((pred - target) ** 2)
  grad = _per_sample_mean(jnp.abs(gpx - gtx)) + _per_sample_mean(jnp.abs(gpy - gty))
  return mse_weight * mse + grad_weight * grad


def pixel_loss(*, pred: Array, target: Array, mse_weight: float = 0.3, grad_weight: float = 0.6,
               sample_weight: Array | None = None) -> Array:
  """mse_weight * MSE + grad_weight * (L1 of d/dH + L1 of d/dW differences); scalar.

  ``sample_weight`` (B,) in {0, 1} restricts the mean to samples that have a target.
  """
  _check_images(pred=pred, target=target)
  per = _pixel_per_sample(pred, target, mse_weight, grad_weight)
  if sample_weight is None:
    return jnp.mean(per)
  w = jnp.asarray(sample_weight, per.dtype).reshape(-1)
  return jnp.sum(w * per) / jnp.maximum(jnp.sum(w), 1.0)


def perceptual_loss(*, pred: Array, target: Array, vgg_apply: Callable[[Any, Array], Mapping[str, Array]],
                    vgg_params: Any, taps: Sequence[str] = VGG_TAPS,
                    tap_weights: Sequence[float] = VGG_TAP_WEIGHTS) -> Array:
  """sum_i w_i * mean|phi_i(pred) - phi_i(target)| over VGG taps (target features not differentiated).

  ``vgg_apply(vgg_params, images01) -> {tap: (B, h, w, c)}`` must normalise the [0, 1] images
  itself (e.g. ``derefl_jax.models.perceptual_vgg_apply(model)``).
  """
  _check_images(pred=pred, target=target)
  if len(taps) != len(tap_weights):
    raise ValueError(f"{len(taps)} taps but {len(tap_weights)} tap weights.")
  fp = vgg_apply(vgg_params, pred)
  ft = vgg_apply(vgg_params, jax.lax.stop_gradient(target))
  missing = [t for t in taps if t not in fp]
  if missing:
    raise ValueError(f"vgg_apply did not return taps {missing}; it returned {sorted(fp)}.")
  loss = 0.0
  for tap, w in zip(taps, tap_weights):
    loss = loss + w * jnp.mean(jnp.abs(fp[tap] - jax.lax.stop_gradient(ft[tap])))
  return loss


def _avg_pool2(x: Array) -> Array:
  b, h, w, c = x.shape
  h2, w2 = h // 2, w // 2
  x = x[:, :2 * h2, :2 * w2]
  return x.reshape(b, h2, 2, w2, 2, c).mean(axis=(2, 4))


def exclusion_loss(*, t: Array, r: Array, levels: int = 3, eps: float = 1e-6) -> Array:
  """Exclusion loss (Zhang et al. 2018), DSRNet form; scalar.

  Per level l: gx, gy = image gradients of T and R; lambda = 2 mean|g_T| / (mean|g_R| + eps);
  Psi = mean(tanh_s(g_T)^2 * tanh_s(lambda g_R)^2) over the whole batch, with tanh_s(z) =
  2 sigmoid(z) - 1; term (Psi + eps)^(1/4). Then both images are 2x2-average-pooled.
  Loss = (sum_l term_x / levels + sum_l term_y / levels) / 2.
  """
  _check_images(t=t, r=r)
  lx, ly = 0.0, 0.0
  for _ in range(levels):
    if min(t.shape[1], t.shape[2]) < 2:
      raise ValueError(f"exclusion loss with {levels} levels needs images of at least 2**{levels} px, got {t.shape[1:3]}.")
    tx, ty = image_gradients(t)
    rx, ry = image_gradients(r)
    ax = 2.0 * jnp.mean(jnp.abs(tx)) / (jnp.mean(jnp.abs(rx)) + eps)
    ay = 2.0 * jnp.mean(jnp.abs(ty)) / (jnp.mean(jnp.abs(ry)) + eps)
    tsx, tsy = 2 * jax.nn.sigmoid(tx) - 1, 2 * jax.nn.sigmoid(ty) - 1
    rsx, rsy = 2 * jax.nn.sigmoid(rx * ax) - 1, 2 * jax.nn.sigmoid(ry * ay) - 1
    lx = lx + (jnp.mean(tsx ** 2 * rsx ** 2) + eps) ** 0.25
    ly = ly + (jnp.mean(tsy ** 2 * rsy ** 2) + eps) ** 0.25
    t, r = _avg_pool2(t), _avg_pool2(r)
  return (lx / levels + ly / levels) / 2.0


def reconstruction_loss(*, t: Array, r: Array, inputs: Array, residual: Array | None = None) -> Array:
  """mean |T + R + residual - I| (the 0.2 weight is applied by total_loss)."""
  _check_images(t=t, r=r, inputs=inputs, residual=residual)
  recon = t + r if residual is None else t + r + residual
  return jnp.mean(jnp.abs(recon - inputs))


def low_frequency_target(*, inputs: Array, target_t: Array, kernel_size: int = 11) -> Array:
  """M(I) - M(T): the low-frequency reflection layer."""
  return mean_filter(inputs, kernel_size) - mean_filter(target_t, kernel_size)


def high_frequency_target(*, inputs: Array, target_t: Array, kernel_size: int = 11) -> Array:
  """I - T - (M(I) - M(T)): the high-frequency reflection layer."""
  return inputs - target_t - low_frequency_target(inputs=inputs, target_t=target_t, kernel_size=kernel_size)


def low_frequency_loss(*, r_low: Array, inputs: Array, target_t: Array, kernel_size: int = 11,
                       grad_weight: float = 1.0, differentiate_target: bool = False) -> Array:
  """MSE(R_low, M(I) - M(T)) + grad_weight * (MSE of d/dH + MSE of d/dW differences).

  ``differentiate_target``: keep the gradient through ``target_t`` (the paper's targets formed from
  the predicted T); else the target is a constant (stop_gradient).
  """
  _check_images(r_low=r_low, inputs=inputs, target_t=target_t)
  target = low_frequency_target(inputs=inputs, target_t=target_t, kernel_size=kernel_size)
  if not differentiate_target:
    target = jax.lax.stop_gradient(target)
  px, py = image_gradients(r_low)
  tx, ty = image_gradients(target)
  return jnp.mean((r_low - target) ** 2) + grad_weight * (jnp.mean((px - tx) ** 2) + jnp.mean((py - ty) ** 2))


def high_frequency_loss(*, r_high: Array, inputs: Array, target_t: Array, kernel_size: int = 11,
                        differentiate_target: bool = False) -> Array:
  """mean |R_high - (I - T - (M(I) - M(T)))| (``differentiate_target`` as in :func:`low_frequency_loss`)."""
  _check_images(r_high=r_high, inputs=inputs, target_t=target_t)
  target = high_frequency_target(inputs=inputs, target_t=target_t, kernel_size=kernel_size)
  if not differentiate_target:
    target = jax.lax.stop_gradient(target)
  return jnp.mean(jnp.abs(r_high - target))


def _resolve_config(config) -> dict:
  if config is None:
    return dict(DEFAULT_LOSS_CONFIG)
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  bad = sorted(set(config) - set(DEFAULT_LOSS_CONFIG))
  if bad:
    raise ValueError(f"Unknown loss config keys {bad}; valid keys: {sorted(DEFAULT_LOSS_CONFIG)}.")
  return {**DEFAULT_LOSS_CONFIG, **dict(config)}


def total_loss(*, out: Mapping[str, Array], inputs: Array, target_t: Array, target_r: Array | None = None,
               r_mask: Array | None = None, residual: Array | None = None,
               vgg_apply: Callable | None = None, vgg_params: Any = None,
               config: Mapping | None = None) -> tuple[Array, dict[str, Array]]:
  """Weighted sum of all losses -> (scalar, {component: unweighted value, 'loss': total}).

  ``out``: the model's dict with 'T', 'R', 'R_low', 'R_high'. ``target_r`` may be None (real
  pairs without a reflection layer: r_pixel is skipped); ``r_mask`` (B,) marks which samples have
  one. ``config`` overrides :data:`DEFAULT_LOSS_CONFIG` (unknown keys raise). A zero weight skips
  the term (the VGG is then not needed).
  """
  cfg = _resolve_config(config)
  missing = [k for k in ("T", "R", "R_low", "R_high") if k not in out]
  if missing:
    raise ValueError(f"model output lacks {missing}; expected keys T, R, R_low, R_high.")
  k = int(cfg["mean_kernel"])
  if cfg["freq_target"] not in FREQ_TARGETS:
    raise ValueError(f"config['freq_target'] must be one of {FREQ_TARGETS}, got {cfg['freq_target']!r}.")
  from_pred = cfg["freq_target"] == "prediction"
  freq_t = out["T"] if from_pred else target_t
  terms: dict[str, Array] = {}
  terms["t_pixel"] = pixel_loss(pred=out["T"], target=target_t)
  if target_r is not None and cfg["r_pixel"]:
    terms["r_pixel"] = pixel_loss(pred=out["R"], target=target_r, sample_weight=r_mask)
  if cfg["vgg"]:
    if vgg_apply is None or vgg_params is None:
      raise ValueError("config['vgg'] > 0 needs vgg_apply and vgg_params "
                       "(derefl_jax.models.perceptual_vgg_apply(model), frozen['vgg']); or set vgg=0.")
    terms["vgg"] = perceptual_loss(pred=out["T"], target=target_t, vgg_apply=vgg_apply, vgg_params=vgg_params)
  if cfg["exclusion"]:
    terms["exclusion"] = exclusion_loss(t=out["T"], r=out["R"], levels=int(cfg["exclusion_levels"]))
  if cfg["recons"]:
    terms["recons"] = reconstruction_loss(t=out["T"], r=out["R"], inputs=inputs, residual=residual)
  if cfg["low_freq"]:
    terms["low_freq"] = low_frequency_loss(r_low=out["R_low"], inputs=inputs, target_t=freq_t, kernel_size=k,
                                           grad_weight=cfg["low_freq_grad"], differentiate_target=from_pred)
  if cfg["high_freq"]:
    terms["high_freq"] = high_frequency_loss(r_high=out["R_high"], inputs=inputs, target_t=freq_t, kernel_size=k,
                                             differentiate_target=from_pred)
  loss = sum(float(cfg[name]) * value for name, value in terms.items())
  metrics = {f"loss_{name}": value for name, value in terms.items()}
  metrics["loss"] = loss
  return loss, metrics
