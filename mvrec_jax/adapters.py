"""Few-shot classifiers on frozen (Alpha)CLIP features, as pure JAX functions.

Shapes: ``D`` feature dim, ``C`` classes, ``N`` support instances, ``V`` views per
instance (27 "mso" context views in MVREC), ``Q`` query instances, ``S`` samplings.

* Zip-Adapter (MVREC, training-free): ``ZIP(x) = x + SiLU(x W + b)`` with ``W, b = 0`` (so
  ZIP is the identity), keys ``K = ZIP(mean of the V view features of each support
  instance)``, ``logits = exp(-beta (1 - zq . zK^T)) @ onehot(y) / tau`` with ``z`` the
  L2-normalised ZIP outputs, ``beta = 32``, ``tau = 0.11``.
* Zip-Adapter-F: the keys and the ZIP layer are trained (``beta = 1``) with cross-entropy on
  all V views of every support instance as one full batch; AdamW(lr 1e-4, eps 1e-6,
  weight decay 0.01), 500 steps, cosine decay to 1e-5. :func:`zip_adapter_f_train` is jitted
  and vmapped over a leading samplings axis, so all samplings of an episode set train at once.
* Tip-Adapter / Tip-Adapter-F (Zhang et al., ECCV 2022): ``logits = 100 f T^T + alpha
  exp(-beta (1 - f K^T)) onehot(y)``, defaults ``alpha = 1``, ``beta = 5.5`` (the paper's
  ImageNet values); -F trains the cache keys (AdamW lr 1e-3, eps 1e-4, cosine).
* Zero-shot CLIP: ``100 * f . t^T`` with class-name prompt embeddings ``t`` given as input.
* Uncertainty-weighted view fusion: ``w_v ~ 1 - H(p_v) / log C`` normalised over views.

``precision`` selects the arithmetic of the Zip-Adapter maths:

* ``"float32"``: plain fp32.
* ``"bfloat16"``: the two big matmuls of Zip-Adapter-F (``x W`` and its weight gradient) take
  bf16 inputs with fp32 accumulation; everything else fp32 (a speed option for CPUs/TPUs).
* ``"official"``: emulates the official PyTorch run (fp16 feature buffers, ``autocast`` on a
  GPU, an fp16 support-key parameter whose AdamW state is fp16 too): values are rounded to fp16
  at the points where the official code holds fp16 tensors. With it the training-free
  Zip-Adapter and Zip-Adapter-F reproduce the official per-sampling accuracies exactly on the
  official transistor features (see docs/mvrec.md).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "BETA_TRAINING_FREE", "BETA_FINETUNE", "TAU", "TIP_ALPHA", "TIP_BETA", "CLIP_LOGIT_SCALE",
    "PRECISIONS", "l2_normalize", "support_keys", "one_hot", "zip_init", "zip_apply",
    "zip_adapter_init", "zip_adapter_logits", "zip_adapter_loss", "zip_adapter_f_train",
    "tip_adapter_init", "tip_adapter_logits", "tip_adapter_f_train", "zero_shot_logits",
    "view_uncertainty_weights", "fuse_views", "classify_views", "ZIP_F_DEFAULTS",
    "TIP_F_DEFAULTS",
]

BETA_TRAINING_FREE = 32.0   # MVREC acti_beta for the training-free Zip-Adapter.
BETA_FINETUNE = 1.0         # MVREC acti_beta for Zip-Adapter-F.
TAU = 0.11                  # MVREC temperature (a buffer 0.11, logits / (tau + 1e-9)).
TIP_ALPHA = 1.0             # Tip-Adapter residual ratio (paper default, ImageNet).
TIP_BETA = 5.5              # Tip-Adapter sharpness (paper default, ImageNet).
CLIP_LOGIT_SCALE = 100.0    # exp(logit_scale) of the released CLIP models.
PRECISIONS = ("float32", "bfloat16", "official")

# Zip-Adapter-F optimiser, as in the official `train_compact`.
ZIP_F_DEFAULTS = dict(steps=500, lr=1e-4, end_lr=1e-5, eps=1e-6, weight_decay=0.01, beta=BETA_FINETUNE,
                      tau=TAU)
# Tip-Adapter-F optimiser (the paper's AdamW lr 1e-3, eps 1e-4, cosine; full batch here).
TIP_F_DEFAULTS = dict(steps=200, lr=1e-3, end_lr=0.0, eps=1e-4, weight_decay=0.01, alpha=TIP_ALPHA,
                      beta=TIP_BETA, logit_scale=CLIP_LOGIT_SCALE)


def _check_precision(precision: str) -> None:
  if precision not in PRECISIONS:
    raise ValueError(f"precision={precision!r} is not one of {PRECISIONS}.")


def _f16(x: jax.Array, on: bool) -> jax.Array:
  """Rounds to fp16 and back when `on` (emulates a tensor held in fp16); gradients pass, rounded too."""
  if not on:
    return x
  return x.astype(jnp.float16).astype(jnp.float32)


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """`x / max(||x||, eps)` along `axis` (torch.nn.functional.normalize semantics)."""
  x = jnp.asarray(x, jnp.float32)
  n = jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True))
  return x / jnp.maximum(n, eps)


def one_hot(labels: jax.Array, num_classes: int) -> jax.Array:
  """(...,) int -> (..., C) float32."""
  return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)


def support_keys(support_views: jax.Array, precision: str = "float32") -> jax.Array:
  """Support key per instance = mean of its view features: (..., N, V, D) -> (..., N, D).

  The mean is taken in fp32; `precision="official"` rounds it to fp16 like the official
  `cache_keys.mean(dim=1)` on fp16 CUDA tensors.
  """
  _check_precision(precision)
  support_views = jnp.asarray(support_views)
  if support_views.ndim < 3:
    raise ValueError(f"support_views must be (..., N, V, D), got shape {support_views.shape}.")
  keys = jnp.mean(support_views.astype(jnp.float32), axis=-2)
  return _f16(keys, precision == "official")


# ----------------------------------------------------------------------------- ZIP layer
def zip_init(dim: int) -> dict[str, jax.Array]:
  """Zero-initialised ZIP layer (identity map): {'w': (D, D) (in, out), 'b': (D,)}."""
  return {"w": jnp.zeros((dim, dim), jnp.float32), "b": jnp.zeros((dim,), jnp.float32)}


def zip_apply(params: Mapping[str, jax.Array], x: jax.Array, precision: str = "float32") -> jax.Array:
  """ZIP(x) = x + SiLU(x W + b): (..., D) -> (..., D). (torch's Linear weight is `W.T`.)"""
  x = jnp.asarray(x, jnp.float32)
  if precision == "bfloat16":
    h = jnp.matmul(x.astype(jnp.bfloat16), params["w"].astype(jnp.bfloat16),
                   preferred_element_type=jnp.float32) + params["b"]
    return x + jax.nn.silu(h)
  amp = precision == "official"
  # autocast: the Linear runs in fp16 (inputs and output rounded), SiLU and the residual in fp16.
  h = _f16(jnp.matmul(_f16(x, amp), _f16(params["w"], amp)) + _f16(params["b"], amp), amp)
  return _f16(x + _f16(jax.nn.silu(h), amp), amp)


# ----------------------------------------------------------------------------- Zip-Adapter
def zip_adapter_init(support_views: jax.Array, labels: jax.Array, num_classes: int,
                     precision: str = "float32") -> dict[str, Any]:
  """Training-free Zip-Adapter state: {'keys': (N, D), 'values': (N, C), 'zip': identity ZIP}.

  support_views: (N, V, D) view features of the support instances; labels: (N,) ints.
  Extra leading (samplings) axes are allowed on both.
  """
  support_views = jnp.asarray(support_views)
  labels = jnp.asarray(labels)
  if support_views.shape[:-2] != labels.shape:
    raise ValueError(f"support_views {support_views.shape} must be (..., N, V, D) with labels (..., N); "
                     f"got labels {labels.shape}.")
  keys = support_keys(support_views, precision)
  zp = zip_init(support_views.shape[-1])
  zp = jax.tree.map(lambda a: jnp.broadcast_to(a, labels.shape[:-1] + a.shape), zp)
  return {"keys": keys, "values": one_hot(labels, num_classes), "zip": zp}


def zip_adapter_logits(params: Mapping[str, Any], query: jax.Array, *, beta: float = BETA_TRAINING_FREE,
                       tau: float = TAU, precision: str = "float32") -> jax.Array:
  """Zip-Adapter logits: (..., D) query features -> (..., C).

  `logits = exp(-beta (1 - zq . zK^T)) @ V / tau` with z = L2-normalised ZIP outputs of the
  query and of the keys. `params` as returned by :func:`zip_adapter_init` (or trained).
  """
  _check_precision(precision)
  amp = precision == "official"
  zq = zip_apply(params["zip"], query, precision)
  zk = zip_apply(params["zip"], params["keys"], precision)
  # F.normalize runs in fp32 under autocast; the following matmuls take fp16 inputs.
  qn = _f16(l2_normalize(zq), amp)
  kn = _f16(l2_normalize(zk), amp)
  cos = _f16(jnp.matmul(qn, jnp.swapaxes(kn, -1, -2)), amp)
  expo = _f16(beta - _f16(beta * cos, amp), amp)
  affinity = _f16(jnp.exp(-expo), amp)
  logits = _f16(jnp.matmul(affinity, params["values"]), amp)
  return _f16(logits / jnp.float32(tau + 1e-9), amp)


def zip_adapter_loss(params: Mapping[str, Any], features: jax.Array, labels: jax.Array, *,
                     beta: float = BETA_FINETUNE, tau: float = TAU, precision: str = "float32") -> jax.Array:
  """Mean cross-entropy of the Zip-Adapter logits of `features` (R, D) against `labels` (R,)."""
  logits = zip_adapter_logits(params, features, beta=beta, tau=tau, precision=precision)
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()


def _adamw(steps: int, lr: float, end_lr: float, eps: float, weight_decay: float) -> optax.GradientTransformation:
  # torch CosineAnnealingLR(T_max=steps, eta_min=end_lr) stepped after each update == optax cosine.
  schedule = optax.cosine_decay_schedule(lr, decay_steps=steps, alpha=end_lr / lr if lr else 0.0)
  return optax.adamw(schedule, b1=0.9, b2=0.999, eps=eps, weight_decay=weight_decay)


def _cosine_lr(step, steps, lr, end_lr):
  """lr of update `step` (0-based): torch CosineAnnealingLR(T_max=steps, eta_min=end_lr)."""
  frac = jnp.minimum(step, steps).astype(jnp.float32) / steps
  return end_lr + (lr - end_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))


def _fused_adamw_step(p, g, m, v, step, *, steps, lr, end_lr, eps, weight_decay, b1=0.9, b2=0.999):
  """One torch-AdamW update (decoupled decay, bias correction) as a single elementwise expression per leaf."""
  t = (step + 1).astype(jnp.float32)
  lr_t = _cosine_lr(step, steps, lr, end_lr)
  bc1 = 1.0 - b1 ** t
  bc2 = 1.0 - b2 ** t

  def leaf(p, g, m, v):
    m = b1 * m + (1.0 - b1) * g
    v = b2 * v + (1.0 - b2) * g * g
    p = p * (1.0 - lr_t * weight_decay) - lr_t * (m / bc1) / (jnp.sqrt(v / bc2) + eps)
    return p, m, v

  out = jax.tree.map(leaf, p, g, m, v)
  pick = lambda i: jax.tree.map(lambda o: o[i], out, is_leaf=lambda o: isinstance(o, tuple))
  return pick(0), pick(1), pick(2)


def _fp16_adamw_step(p, g, m, v, step, *, steps, lr, end_lr, eps, weight_decay, b1=0.9, b2=0.999):
  """torch `_multi_tensor_adamw` on an fp16 parameter: fp16 state, every foreach op rounded to fp16."""
  r = lambda x: _f16(x, True)
  t = (step + 1).astype(jnp.float32)
  lr_t = _cosine_lr(step, steps, lr, end_lr)
  # torch computes the bias corrections 1 - beta**t in Python doubles; 1 - b2**t in float32 loses
  # ~1e-5 relative (cancellation), enough to flip fp16 roundings: -expm1(t log b) is float32-exact.
  bc1 = -jnp.expm1(t * jnp.float32(math.log(b1)))
  bc2 = -jnp.expm1(t * jnp.float32(math.log(b2)))
  g = r(g)
  p = r(p * (1.0 - lr_t * weight_decay))
  m = r(m + (1.0 - b1) * (g - m))                      # exp_avg.lerp_(grad, 1 - beta1)
  v = r(r(v * b2) + (1.0 - b2) * g * g)                # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2)
  denom = r(r(r(jnp.sqrt(v)) / jnp.sqrt(bc2)) + eps)
  p = r(p - (lr_t / bc1) * m / denom)                  # addcdiv_(exp_avg, denom, -step_size)
  return p, m, v


def _zip_f_single(views, labels, *, num_classes, steps, lr, end_lr, eps, weight_decay, beta, tau, precision):
  n, v, d = views.shape
  params = zip_adapter_init(views, labels, num_classes, precision)
  values = params.pop("values")
  feats = views.reshape(n * v, d).astype(jnp.float32)
  feats = _f16(feats, precision == "official")
  feat_labels = jnp.repeat(labels, v)
  zeros = jax.tree.map(jnp.zeros_like, params)

  def loss_fn(p):
    return zip_adapter_loss({**p, "values": values}, feats, feat_labels, beta=beta, tau=tau, precision=precision)

  def step(carry, i):
    p, m, v = carry
    loss, g = jax.value_and_grad(loss_fn)(p)
    kw = dict(steps=steps, lr=lr, end_lr=end_lr, eps=eps, weight_decay=weight_decay)
    if precision == "official":
      # The official support key is an fp16 nn.Parameter: torch's foreach AdamW keeps its moments in
      # fp16 and rounds after every op; the ZIP layer (fp32 parameters) updates in fp32.
      zp, zm, zv = _fused_adamw_step(p["zip"], g["zip"], m["zip"], v["zip"], i, **kw)
      kp, km, kv = _fp16_adamw_step(p["keys"], g["keys"], m["keys"], v["keys"], i, **kw)
      p, m, v = {"keys": kp, "zip": zp}, {"keys": km, "zip": zm}, {"keys": kv, "zip": zv}
    else:
      p, m, v = _fused_adamw_step(p, g, m, v, i, **kw)
    return (p, m, v), loss

  (params, _, _), losses = jax.lax.scan(step, (params, zeros, zeros), jnp.arange(steps))
  return {**params, "values": values}, losses


@functools.partial(jax.jit, static_argnames=("num_classes", "steps", "lr", "end_lr", "eps", "weight_decay",
                                             "beta", "tau", "precision"))
def _zip_f_batched(views, labels, *, num_classes, steps, lr, end_lr, eps, weight_decay, beta, tau, precision):
  fn = functools.partial(_zip_f_single, num_classes=num_classes, steps=steps, lr=lr, end_lr=end_lr, eps=eps,
                         weight_decay=weight_decay, beta=beta, tau=tau, precision=precision)
  return jax.vmap(fn)(views, labels)


def _as_sampling_batch(support_views, labels) -> tuple[jax.Array, jax.Array, bool]:
  """(N, V, D)/(N,) or (S, N, V, D)/(S, N) -> batched arrays and whether the input was one sampling."""
  support_views = jnp.asarray(support_views)
  labels = jnp.asarray(labels, jnp.int32)
  single = support_views.ndim == 3
  if single:
    support_views, labels = support_views[None], labels[None]
  if support_views.ndim != 4 or labels.shape != support_views.shape[:2]:
    raise ValueError(f"support_views must be (S, N, V, D) and labels (S, N); got {support_views.shape} and "
                     f"{labels.shape}.")
  return support_views, labels, single


def zip_adapter_f_train(support_views: jax.Array, labels: jax.Array, num_classes: int, *,
                        steps: int = 500, lr: float = 1e-4, end_lr: float = 1e-5, eps: float = 1e-6,
                        weight_decay: float = 0.01, beta: float = BETA_FINETUNE, tau: float = TAU,
                        precision: str = "float32") -> tuple[dict[str, Any], jax.Array]:
  """Trains Zip-Adapter-F for a batch of samplings at once.

  support_views: (S, N, V, D) (or (N, V, D) for one sampling); labels: (S, N) ints.
  Returns (params with leading S axis, losses (S, steps)). One jitted call; the samplings are
  vmapped, the steps are a `lax.scan`. Arrays placed on a device run there.
  """
  _check_precision(precision)
  support_views, labels, single = _as_sampling_batch(support_views, labels)
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}.")
  params, losses = _zip_f_batched(support_views, labels, num_classes=int(num_classes), steps=int(steps),
                                  lr=float(lr), end_lr=float(end_lr), eps=float(eps),
                                  weight_decay=float(weight_decay), beta=float(beta), tau=float(tau),
                                  precision=precision)
  if single:
    params, losses = jax.tree.map(lambda a: a[0], (params, losses))
  return params, losses


# ----------------------------------------------------------------------------- Tip-Adapter
def zero_shot_logits(query: jax.Array, text_embeddings: jax.Array, *,
                     logit_scale: float = CLIP_LOGIT_SCALE) -> jax.Array:
  """Zero-shot CLIP: (..., D) image features, (C, D) class-prompt embeddings -> (..., C)."""
  return logit_scale * jnp.matmul(l2_normalize(query), l2_normalize(text_embeddings).T)


def tip_adapter_init(support_views: jax.Array, labels: jax.Array, num_classes: int,
                     text_embeddings: jax.Array | None = None) -> dict[str, Any]:
  """Tip-Adapter cache: {'keys': normalised mean view feature (N, D), 'values': (N, C), 'text': (C, D)}."""
  keys = l2_normalize(support_keys(support_views))
  d = keys.shape[-1]
  text = (jnp.zeros((num_classes, d), jnp.float32) if text_embeddings is None
          else l2_normalize(jnp.asarray(text_embeddings)))
  if text.shape != (num_classes, d):
    raise ValueError(f"text_embeddings must be (C={num_classes}, D={d}), got {text.shape}.")
  return {"keys": keys, "values": one_hot(jnp.asarray(labels), num_classes), "text": text}


def tip_adapter_logits(params: Mapping[str, Any], query: jax.Array, *, alpha: float = TIP_ALPHA,
                       beta: float = TIP_BETA, logit_scale: float = CLIP_LOGIT_SCALE) -> jax.Array:
  """Tip-Adapter: (..., D) -> (..., C) = `logit_scale f T^T + alpha exp(-beta (1 - f K^T)) V`.

  With all-zero text embeddings (no prompts available) only the cache term remains.
  """
  f = l2_normalize(query)
  affinity = jnp.exp(-beta * (1.0 - jnp.matmul(f, jnp.swapaxes(params["keys"], -1, -2))))
  cache = jnp.matmul(affinity, params["values"])
  clip = logit_scale * jnp.matmul(f, jnp.swapaxes(params["text"], -1, -2))
  return clip + alpha * cache


def _tip_f_single(views, labels, text, *, num_classes, steps, lr, end_lr, eps, weight_decay, alpha, beta,
                  logit_scale):
  n, v, d = views.shape
  params = tip_adapter_init(views, labels, num_classes, text)
  feats = views.reshape(n * v, d).astype(jnp.float32)
  feat_labels = jnp.repeat(labels, v)
  tx = _adamw(steps, lr, end_lr, eps, weight_decay)
  keys = params["keys"]
  opt_state = tx.init(keys)

  def loss_fn(k):
    logits = tip_adapter_logits({**params, "keys": k}, feats, alpha=alpha, beta=beta, logit_scale=logit_scale)
    return optax.softmax_cross_entropy_with_integer_labels(logits, feat_labels).mean()

  def step(carry, _):
    k, s = carry
    loss, g = jax.value_and_grad(loss_fn)(k)
    updates, s = tx.update(g, s, k)
    return (optax.apply_updates(k, updates), s), loss

  (keys, _), losses = jax.lax.scan(step, (keys, opt_state), None, length=steps)
  return {**params, "keys": keys}, losses


@functools.partial(jax.jit, static_argnames=("num_classes", "steps", "lr", "end_lr", "eps", "weight_decay",
                                             "alpha", "beta", "logit_scale"))
def _tip_f_batched(views, labels, text, **kw):
  return jax.vmap(functools.partial(_tip_f_single, **kw), in_axes=(0, 0, None))(views, labels, text)


def tip_adapter_f_train(support_views: jax.Array, labels: jax.Array, num_classes: int,
                        text_embeddings: jax.Array | None = None, *, steps: int = 200, lr: float = 1e-3,
                        end_lr: float = 0.0, eps: float = 1e-4, weight_decay: float = 0.01,
                        alpha: float = TIP_ALPHA, beta: float = TIP_BETA,
                        logit_scale: float = CLIP_LOGIT_SCALE) -> tuple[dict[str, Any], jax.Array]:
  """Tip-Adapter-F: trains the cache keys on all views (full batch). (S, N, V, D), (S, N) -> params, losses."""
  support_views, labels, single = _as_sampling_batch(support_views, labels)
  d = support_views.shape[-1]
  text = jnp.zeros((num_classes, d), jnp.float32) if text_embeddings is None else jnp.asarray(text_embeddings)
  params, losses = _tip_f_batched(support_views, labels, text, num_classes=int(num_classes), steps=int(steps),
                                  lr=float(lr), end_lr=float(end_lr), eps=float(eps),
                                  weight_decay=float(weight_decay), alpha=float(alpha), beta=float(beta),
                                  logit_scale=float(logit_scale))
  if single:
    params, losses = jax.tree.map(lambda a: a[0], (params, losses))
  return params, losses


# ----------------------------------------------------------------------------- view fusion
def view_uncertainty_weights(probs: jax.Array) -> jax.Array:
  """(..., V, C) per-view probabilities -> (..., V) weights `1 - H(p_v)/log C`, summing to 1.

  As the official code: p clamped to [1e-9, 1], H = -sum p log(p + 1e-9). If every view is
  maximally uncertain (all weights 0) the views are weighted equally instead of dividing by 0.
  """
  probs = jnp.asarray(probs, jnp.float32)
  c = probs.shape[-1]
  p = jnp.clip(probs, 1e-9, 1.0)
  h = -jnp.sum(p * jnp.log(p + 1e-9), axis=-1) / math.log(c) if c > 1 else jnp.zeros(p.shape[:-1])
  w = 1.0 - h
  total = jnp.sum(w, axis=-1, keepdims=True)
  uniform = jnp.full_like(w, 1.0 / w.shape[-1])
  return jnp.where(total > 0, w / jnp.where(total > 0, total, 1.0), uniform)


def fuse_views(probs: jax.Array) -> jax.Array:
  """Uncertainty-weighted mean of per-view probabilities: (..., V, C) -> (..., C).

  (The official code applies one more softmax to this; it does not change the argmax.)
  """
  probs = jnp.asarray(probs, jnp.float32)
  w = view_uncertainty_weights(probs)
  return jnp.sum(probs * w[..., None], axis=-2)


def classify_views(logits: jax.Array, multi_view: bool = True) -> jax.Array:
  """Per-view logits (..., V, C) -> predicted class (...,): fused over views, or view 0 only."""
  probs = jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  if not multi_view:
    probs = probs[..., :1, :]
  return jnp.argmax(fuse_views(probs), axis=-1)


# ----------------------------------------------------------------------------- jitted batch predictors
# One compiled program per (classifier, shapes): support (S, N, V, D), labels (S, N), queries (Q, V, D)
# -> per-view logits (S, Q, V, C) (and the training losses (S, steps) for the -F variants).
@functools.partial(jax.jit, static_argnames=("num_classes", "beta", "tau", "precision"))
def zip_adapter_predict(support_views, labels, query_views, *, num_classes: int, beta: float = BETA_TRAINING_FREE,
                        tau: float = TAU, precision: str = "float32"):
  """Training-free Zip-Adapter for S samplings: -> logits (S, Q, V, C)."""
  params = zip_adapter_init(support_views, labels, num_classes, precision)
  return jax.vmap(lambda p: zip_adapter_logits(p, query_views, beta=beta, tau=tau, precision=precision))(params)


@functools.partial(jax.jit, static_argnames=("num_classes", "steps", "lr", "end_lr", "eps", "weight_decay",
                                             "beta", "tau", "precision"))
def zip_adapter_f_predict(support_views, labels, query_views, *, num_classes: int, steps: int = 500,
                          lr: float = 1e-4, end_lr: float = 1e-5, eps: float = 1e-6, weight_decay: float = 0.01,
                          beta: float = BETA_FINETUNE, tau: float = TAU, precision: str = "float32"):
  """Zip-Adapter-F trained and applied for S samplings in one program: -> (logits (S, Q, V, C), losses (S, steps))."""
  params, losses = _zip_f_batched(support_views, labels, num_classes=num_classes, steps=steps, lr=lr,
                                  end_lr=end_lr, eps=eps, weight_decay=weight_decay, beta=beta, tau=tau,
                                  precision=precision)
  logits = jax.vmap(lambda p: zip_adapter_logits(p, query_views, beta=beta, tau=tau, precision=precision))(params)
  return logits, losses


@functools.partial(jax.jit, static_argnames=("num_classes", "alpha", "beta", "logit_scale"))
def tip_adapter_predict(support_views, labels, query_views, text, *, num_classes: int, alpha: float = TIP_ALPHA,
                        beta: float = TIP_BETA, logit_scale: float = CLIP_LOGIT_SCALE):
  """Tip-Adapter for S samplings (text (C, D); zeros = cache only): -> logits (S, Q, V, C)."""
  params = jax.vmap(lambda v, l: tip_adapter_init(v, l, num_classes, text))(support_views, labels)
  return jax.vmap(lambda p: tip_adapter_logits(p, query_views, alpha=alpha, beta=beta,
                                               logit_scale=logit_scale))(params)


@functools.partial(jax.jit, static_argnames=("num_classes", "steps", "lr", "end_lr", "eps", "weight_decay",
                                             "alpha", "beta", "logit_scale"))
def tip_adapter_f_predict(support_views, labels, query_views, text, *, num_classes: int, steps: int = 200,
                          lr: float = 1e-3, end_lr: float = 0.0, eps: float = 1e-4, weight_decay: float = 0.01,
                          alpha: float = TIP_ALPHA, beta: float = TIP_BETA, logit_scale: float = CLIP_LOGIT_SCALE):
  """Tip-Adapter-F trained and applied for S samplings: -> (logits (S, Q, V, C), losses (S, steps))."""
  kw = dict(alpha=alpha, beta=beta, logit_scale=logit_scale)
  params, losses = _tip_f_batched(support_views, labels, text, num_classes=num_classes, steps=steps, lr=lr,
                                  end_lr=end_lr, eps=eps, weight_decay=weight_decay, **kw)
  return jax.vmap(lambda p: tip_adapter_logits(p, query_views, **kw))(params), losses


@jax.jit
def predict_both(logits):
  """Per-view logits (..., V, C) -> (multi-view fused prediction, view-0 prediction), each (...,)."""
  return classify_views(logits, True), classify_views(logits, False)
