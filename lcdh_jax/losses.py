"""Losses of LCDH as pure functions (keyword arguments only).

Shapes: ``N``/``M`` are batch sizes, ``K`` the code length, ``C`` the number of labels.
Continuous hash outputs are called *features* ``F`` (tanh outputs in (-1, 1)); binary codes are
``B`` in {-1, +1}. All losses are *mean-normalised* (averaged over the pairs / elements they sum)
so that their scale does not depend on the batch size or code length; the paper's and DCMH's
formulas are sums, which only differ by a constant factor absorbed in the loss weights.

Formulas (numpy references live in ``tests/lcdh/test_losses.py``):

* label similarity ``S_ij = 1[l_i . l_j > 0]`` for multi-hot labels.
* pairwise negative log-likelihood (DCMH): ``Theta = c F B^T``,
  ``J = -mean_ij [S_ij Theta_ij - log(1 + exp(Theta_ij))]``; ``log(1+exp(x))`` is computed with the
  stable ``softplus``. ``S`` may be soft (in [0, 1]); ``J`` is then the logistic cross-entropy.
* cross-modal contrastive loss (InfoNCE): cosine logits / temperature, symmetric cross-entropy;
  positives are the diagonal (paired samples) or, when a similarity matrix is given, every ``j``
  with ``S_ij > 0`` weighted by ``S_ij / sum_j S_ij``.
* quantization ``mean((B - F)^2)`` and bit balance ``mean_k((1/N) sum_i F_ik)^2`` (= ``||F^T 1||^2 /
  (N^2 K)``).
* distillation: the teacher's similarity ``S^T`` (from teacher codes) is approximated by the
  student's similarity through the same logistic likelihood, ``Theta = c F_student B_teacher^T``
  (``mode="likelihood"``), or by an MSE between ``F_student B_teacher^T / K`` and ``2 S^T - 1``
  (``mode="mse"``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "label_similarity",
    "pairwise_likelihood_loss",
    "contrastive_loss",
    "quantization_loss",
    "bit_balance_loss",
    "teacher_similarity",
    "distillation_loss",
]


def _check_2d(name: str, x) -> None:
  if x.ndim != 2:
    raise ValueError(f"{name} must be 2-D (N, D); got shape {tuple(x.shape)}.")


def label_similarity(*, labels_a: jax.Array, labels_b: jax.Array | None = None) -> jax.Array:
  """``S_ij = 1[l_i . l_j > 0]``: multi-hot labels (N, C), (M, C) -> (N, M) float32 in {0, 1}."""
  labels_b = labels_a if labels_b is None else labels_b
  _check_2d("labels_a", labels_a)
  _check_2d("labels_b", labels_b)
  if labels_a.shape[1] != labels_b.shape[1]:
    raise ValueError(
        f"labels_a and labels_b must have the same number of classes; got {labels_a.shape[1]} "
        f"and {labels_b.shape[1]}.")
  dots = jnp.asarray(labels_a, jnp.float32) @ jnp.asarray(labels_b, jnp.float32).T
  return (dots > 0).astype(jnp.float32)


def pairwise_likelihood_loss(*, features: jax.Array, codes: jax.Array, similarity: jax.Array,
                             scale: float = 0.5) -> jax.Array:
  """Negative log-likelihood of ``similarity`` under ``sigmoid(scale F B^T)``: (N,K),(M,K),(N,M) -> ().

  ``J = mean_ij [softplus(Theta_ij) - S_ij Theta_ij]`` with ``Theta = scale * F @ B.T``; equal to
  DCMH's ``-sum[S Theta - log(1 + exp(Theta))] / (N M)``. ``codes`` may be continuous (e.g. the
  other modality's features) or binary.
  """
  _check_2d("features", features)
  _check_2d("codes", codes)
  if features.shape[1] != codes.shape[1]:
    raise ValueError(f"features and codes must have the same code length; got {features.shape[1]} "
                     f"and {codes.shape[1]}.")
  if similarity.shape != (features.shape[0], codes.shape[0]):
    raise ValueError(f"similarity must have shape {(features.shape[0], codes.shape[0])} "
                     f"(len(features), len(codes)); got {tuple(similarity.shape)}.")
  theta = scale * (features @ codes.T)
  return jnp.mean(jax.nn.softplus(theta) - similarity * theta)


def contrastive_loss(*, image_features: jax.Array, text_features: jax.Array,
                     temperature: float = 0.1, similarity: jax.Array | None = None) -> jax.Array:
  """Symmetric cross-modal InfoNCE on cosine similarities: (N, D), (N, D) -> ().

  ``logits = cos(x_i, y_j) / temperature``; loss = (CE(image->text) + CE(text->image)) / 2.
  Targets are the paired items (diagonal) or, with ``similarity`` (N, N) given, the rows of
  ``S / sum_j S`` (multi-positive; rows with no positive fall back to the diagonal).
  """
  _check_2d("image_features", image_features)
  _check_2d("text_features", text_features)
  if image_features.shape != text_features.shape:
    raise ValueError(f"image_features and text_features must have the same shape; got "
                     f"{tuple(image_features.shape)} and {tuple(text_features.shape)}.")
  if temperature <= 0:
    raise ValueError(f"temperature must be > 0; got {temperature}.")
  n = image_features.shape[0]
  eps = 1e-8
  x = image_features / jnp.sqrt(jnp.sum(image_features**2, -1, keepdims=True) + eps)
  y = text_features / jnp.sqrt(jnp.sum(text_features**2, -1, keepdims=True) + eps)
  logits = (x @ y.T) / temperature
  if similarity is None:
    targets = jnp.eye(n, dtype=logits.dtype)
    targets_t = targets
  else:
    if similarity.shape != (n, n):
      raise ValueError(f"similarity must have shape {(n, n)}; got {tuple(similarity.shape)}.")
    s = jnp.asarray(similarity, logits.dtype)
    def _rows(m):
      rs = jnp.sum(m, -1, keepdims=True)
      return jnp.where(rs > 0, m / jnp.maximum(rs, eps), jnp.eye(n, dtype=m.dtype))
    targets, targets_t = _rows(s), _rows(s.T)
  ce_i2t = -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), -1)
  ce_t2i = -jnp.sum(targets_t * jax.nn.log_softmax(logits.T, axis=-1), -1)
  return 0.5 * (jnp.mean(ce_i2t) + jnp.mean(ce_t2i))


def quantization_loss(*, features: jax.Array, codes: jax.Array | None = None) -> jax.Array:
  """``mean((B - F)^2)`` with ``B = sign(F)`` (stop-gradient) unless codes given: (N, K) -> ()."""
  _check_2d("features", features)
  if codes is None:
    codes = jax.lax.stop_gradient(jnp.where(features >= 0, 1.0, -1.0).astype(features.dtype))
  if codes.shape != features.shape:
    raise ValueError(f"codes must have the shape of features {tuple(features.shape)}; got "
                     f"{tuple(codes.shape)}.")
  return jnp.mean((codes - features) ** 2)


def bit_balance_loss(*, features: jax.Array) -> jax.Array:
  """``||F^T 1||^2 / (N^2 K)`` = mean over bits of the squared bit mean: (N, K) -> ()."""
  _check_2d("features", features)
  return jnp.mean(jnp.mean(features, axis=0) ** 2)


def teacher_similarity(*, teacher_codes: jax.Array, teacher_codes_b: jax.Array | None = None,
                       mode: str = "threshold", threshold: float = 0.0) -> jax.Array:
  """Teacher similarity from teacher codes/features: (N, K), (M, K) -> (N, M) in [0, 1].

  ``cos_ij = <t_i, t_j> / (|t_i| |t_j|)``. ``mode="threshold"``: ``S = 1[cos > threshold]`` (a hard
  similarity like the label similarity); ``mode="soft"``: ``S = (1 + cos) / 2``. Gradients are
  stopped: the teacher is frozen during distillation.
  """
  b = teacher_codes if teacher_codes_b is None else teacher_codes_b
  _check_2d("teacher_codes", teacher_codes)
  _check_2d("teacher_codes_b", b)
  eps = 1e-8
  ta = teacher_codes / jnp.sqrt(jnp.sum(teacher_codes**2, -1, keepdims=True) + eps)
  tb = b / jnp.sqrt(jnp.sum(b**2, -1, keepdims=True) + eps)
  cos = ta @ tb.T
  if mode == "threshold":
    s = (cos > threshold).astype(jnp.float32)
  elif mode == "soft":
    s = 0.5 * (1.0 + cos)
  else:
    raise ValueError(f"mode must be 'threshold' or 'soft'; got {mode!r}.")
  return jax.lax.stop_gradient(s)


def distillation_loss(*, student_features: jax.Array, teacher_codes: jax.Array,
                      teacher_sim: jax.Array, mode: str = "likelihood",
                      scale: float = 0.5) -> jax.Array:
  """Student similarity fitted to the teacher's: (N, K), (M, K), (N, M) -> ().

  ``mode="likelihood"``: ``pairwise_likelihood_loss(F_s, B_t, S^T)`` with
  ``Theta = scale * F_s B_t^T``. ``mode="mse"``: ``mean((F_s B_t^T / K - (2 S^T - 1))^2)``.
  ``teacher_codes`` are treated as constants (stop-gradient).
  """
  teacher_codes = jax.lax.stop_gradient(teacher_codes)
  if mode == "likelihood":
    return pairwise_likelihood_loss(features=student_features, codes=teacher_codes,
                                    similarity=teacher_sim, scale=scale)
  if mode == "mse":
    _check_2d("student_features", student_features)
    _check_2d("teacher_codes", teacher_codes)
    if student_features.shape[1] != teacher_codes.shape[1]:
      raise ValueError("student_features and teacher_codes must have the same code length; got "
                       f"{student_features.shape[1]} and {teacher_codes.shape[1]}.")
    if teacher_sim.shape != (student_features.shape[0], teacher_codes.shape[0]):
      raise ValueError(f"teacher_sim must have shape "
                       f"{(student_features.shape[0], teacher_codes.shape[0])}; got "
                       f"{tuple(teacher_sim.shape)}.")
    k = student_features.shape[1]
    inner = student_features @ teacher_codes.T / k
    return jnp.mean((inner - (2.0 * teacher_sim - 1.0)) ** 2)
  raise ValueError(f"mode must be 'likelihood' or 'mse'; got {mode!r}.")
