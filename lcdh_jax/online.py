"""The online (streaming) protocol of LCDH, following DOCH, as pure functions that ``train.lcdh`` drives.

Protocol:

1. A held-out query set (``Split.query``); the database items arrive in chunks of ``chunk_size``
   (``make_stream``), in the order of the seeded split permutation; a remainder smaller than a
   chunk joins the last chunk unless ``merge_remainder=False``.
2. Round ``r`` trains the student on chunk ``r`` under teacher supervision, mixing in
   ``num_anchors`` anchors sampled (seeded by ``(seed, r)``) from the chunks of rounds ``< r``
   (``sample_anchors``, ``round_pool``). The anchors' raw images and BoW are read again from the
   dataset: the protocol keeps no copy of past data, it assumes the dataset can be re-read.
3. After the round the new chunk is encoded by the current student and appended to the database
   codes (``StreamState.add``); old codes are never re-encoded unless ``reencode=True``
   (``StreamState.reencode``).
4. Queries are encoded by the current student and mAP (image->text, text->image) is computed
   against the accumulated database after every round (``evaluate``; ``retrieval_report`` adds
   precision@N and the Hamming-radius PR curve of both directions).

The stream state (round, database indices and codes) is a few numpy arrays, saved as the
``extra`` of a checkpoint (``StreamState.to_extra`` / ``from_extra``) so a stream resumes after the
last completed round.

Losses of a student step (weights are config fields, see ``StudentLossConfig``)::

    L = w_distill  * [D(F_img, B_t, S_t) + D(F_txt, B_t, S_t)] / 2      (teacher distillation)
      + w_label    * [J(F_img, F_txt, S_l) + J(F_txt, F_img, S_l)] / 2  (label likelihood)
      + w_contrast * InfoNCE(F_img, F_txt; S_l)                         (cross-modal contrastive)
      + w_quant    * [Q(F_img, B) + Q(F_txt, B)] / 2,  B = sign(F_img + F_txt)
      + w_balance  * [bal(F_img) + bal(F_txt)] / 2

with ``B_t = sign(teacher fused features)``, ``S_t = teacher_similarity(teacher features)`` and
``S_l`` the label similarity of the batch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lcdh_jax import losses

__all__ = ["StudentLossConfig", "TeacherLossConfig", "make_stream", "sample_anchors", "round_pool",
           "StreamState", "student_loss", "teacher_loss", "train_step", "teacher_train_step",
           "binarize", "encode_in_batches", "evaluate", "precision_grid", "retrieval_report"]


# ----------------------------------------------------------------------------------- stream plan


def make_stream(database: np.ndarray, *, chunk_size: int, num_rounds: int | None = None,
                merge_remainder: bool = True) -> list[np.ndarray]:
  """Split database indices (in order) into chunks of ``chunk_size``.

  ``merge_remainder=True`` (default, as LEMON streams MIRFlickr): a remainder smaller than
  ``chunk_size`` joins the last chunk (18015 items in chunks of 2000 -> 8 x 2000 + 1 x 2015);
  ``False`` keeps it as a last, smaller chunk (9 x 2000 + 1 x 15). A database smaller than one
  chunk is one chunk. ``num_rounds`` keeps only the first chunks (after merging).
  """
  database = np.asarray(database, np.int64)
  if chunk_size <= 0:
    raise ValueError(f"chunk_size must be > 0; got {chunk_size}.")
  if database.size == 0:
    raise ValueError("the database is empty: there is nothing to stream.")
  chunks = [database[i:i + chunk_size] for i in range(0, database.size, chunk_size)]
  if merge_remainder and len(chunks) > 1 and chunks[-1].size < chunk_size:
    chunks = chunks[:-2] + [np.concatenate(chunks[-2:])]
  if num_rounds is not None:
    if num_rounds <= 0:
      raise ValueError(f"num_rounds must be > 0; got {num_rounds}.")
    chunks = chunks[:num_rounds]
  return chunks


def sample_anchors(*, seed: int, round_index: int, old_indices: np.ndarray,
                   num_anchors: int) -> np.ndarray:
  """``num_anchors`` indices drawn without replacement from ``old_indices`` (seeded by round)."""
  old_indices = np.asarray(old_indices, np.int64)
  if num_anchors <= 0 or old_indices.size == 0:
    return np.zeros((0,), np.int64)
  rng = np.random.default_rng([seed, round_index, 7])
  k = min(num_anchors, old_indices.size)
  return np.sort(rng.choice(old_indices, size=k, replace=False))


def round_pool(chunks: list[np.ndarray], round_index: int, *, seed: int,
               num_anchors: int) -> tuple[np.ndarray, np.ndarray]:
  """(new chunk indices, anchor indices from earlier chunks) for ``round_index``."""
  if not 0 <= round_index < len(chunks):
    raise ValueError(f"round_index {round_index} out of range for {len(chunks)} chunks.")
  old = (np.concatenate(chunks[:round_index]) if round_index > 0 else np.zeros((0,), np.int64))
  return chunks[round_index], sample_anchors(seed=seed, round_index=round_index,
                                             old_indices=old, num_anchors=num_anchors)


@dataclasses.dataclass(frozen=True)
class StreamState:
  """Database of an online run: ``rounds_done``, ``indices`` (N,), ``image_codes``/``text_codes`` (N, K) int8."""
  rounds_done: int
  indices: np.ndarray
  image_codes: np.ndarray
  text_codes: np.ndarray

  @classmethod
  def empty(cls, bits: int) -> "StreamState":
    return cls(0, np.zeros((0,), np.int64), np.zeros((0, bits), np.int8),
               np.zeros((0, bits), np.int8))

  @property
  def size(self) -> int:
    return int(self.indices.size)

  def add(self, indices: np.ndarray, image_codes: np.ndarray,
          text_codes: np.ndarray) -> "StreamState":
    """Append one chunk's codes (the old ones are copied unchanged) and count a round."""
    indices = np.asarray(indices, np.int64)
    image_codes, text_codes = binarize(image_codes), binarize(text_codes)
    if not image_codes.shape == text_codes.shape == (indices.size, self.image_codes.shape[1]):
      raise ValueError(f"codes must be ({indices.size}, {self.image_codes.shape[1]}); got "
                       f"{image_codes.shape} and {text_codes.shape}.")
    if np.intersect1d(indices, self.indices).size:
      raise ValueError("some indices of the new chunk are already in the database.")
    return StreamState(self.rounds_done + 1, np.concatenate([self.indices, indices]),
                       np.concatenate([self.image_codes, image_codes]),
                       np.concatenate([self.text_codes, text_codes]))

  def reencode(self, image_codes: np.ndarray, text_codes: np.ndarray) -> "StreamState":
    """Replace every database code (the ``reencode=True`` option), keeping indices and round."""
    image_codes, text_codes = binarize(image_codes), binarize(text_codes)
    if image_codes.shape != self.image_codes.shape or text_codes.shape != self.text_codes.shape:
      raise ValueError(f"re-encoded codes must have shape {self.image_codes.shape}; got "
                       f"{image_codes.shape} and {text_codes.shape}.")
    return dataclasses.replace(self, image_codes=image_codes, text_codes=text_codes)

  def to_extra(self) -> dict[str, np.ndarray]:
    return {"rounds_done": np.asarray(self.rounds_done, np.int64), "db_indices": self.indices,
            "db_image_codes": self.image_codes, "db_text_codes": self.text_codes}

  @classmethod
  def from_extra(cls, extra: Mapping[str, Any]) -> "StreamState":
    return cls(int(np.asarray(extra["rounds_done"])), np.asarray(extra["db_indices"], np.int64),
               np.asarray(extra["db_image_codes"], np.int8),
               np.asarray(extra["db_text_codes"], np.int8))


# ----------------------------------------------------------------------------------------- losses


@dataclasses.dataclass(frozen=True)
class StudentLossConfig:
  """Weights and options of the student loss (hashable: passed as a static argument)."""
  w_distill: float = 1.0
  w_label: float = 1.0
  w_contrast: float = 0.2
  w_quant: float = 0.1
  w_balance: float = 0.1
  distill_mode: str = "likelihood"      # or "mse"
  teacher_sim_mode: str = "threshold"   # or "soft"
  teacher_sim_threshold: float = 0.0
  likelihood_scale: float = 0.5         # c in Theta = c F B^T (DCMH: 1/2)
  temperature: float = 0.2


@dataclasses.dataclass(frozen=True)
class TeacherLossConfig:
  """Weights of the offline teacher loss."""
  w_label: float = 1.0
  w_contrast: float = 0.2
  w_quant: float = 0.1
  w_balance: float = 0.1
  likelihood_scale: float = 0.5
  temperature: float = 0.2


def _sign(x):
  return jax.lax.stop_gradient(jnp.where(x >= 0, 1.0, -1.0).astype(x.dtype))


def student_loss(*, image_features: jax.Array, text_features: jax.Array, labels: jax.Array,
                 teacher_features: jax.Array,
                 cfg: StudentLossConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Student objective (module docstring): (B, K), (B, K), (B, C), (B, K) -> (loss, terms)."""
  s_label = losses.label_similarity(labels_a=labels)
  b_t = _sign(teacher_features)
  s_t = losses.teacher_similarity(teacher_codes=teacher_features, mode=cfg.teacher_sim_mode,
                                  threshold=cfg.teacher_sim_threshold)
  kw = dict(teacher_codes=b_t, teacher_sim=s_t, mode=cfg.distill_mode, scale=cfg.likelihood_scale)
  distill = 0.5 * (losses.distillation_loss(student_features=image_features, **kw)
                   + losses.distillation_loss(student_features=text_features, **kw))
  label = 0.5 * (
      losses.pairwise_likelihood_loss(features=image_features, codes=text_features,
                                      similarity=s_label, scale=cfg.likelihood_scale)
      + losses.pairwise_likelihood_loss(features=text_features, codes=image_features,
                                        similarity=s_label.T, scale=cfg.likelihood_scale))
  contrast = losses.contrastive_loss(image_features=image_features, text_features=text_features,
                                     temperature=cfg.temperature, similarity=s_label)
  b = _sign(image_features + text_features)
  quant = 0.5 * (losses.quantization_loss(features=image_features, codes=b)
                 + losses.quantization_loss(features=text_features, codes=b))
  balance = 0.5 * (losses.bit_balance_loss(features=image_features)
                   + losses.bit_balance_loss(features=text_features))
  total = (cfg.w_distill * distill + cfg.w_label * label + cfg.w_contrast * contrast
           + cfg.w_quant * quant + cfg.w_balance * balance)
  return total, {"loss": total, "distill": distill, "label": label, "contrast": contrast,
                 "quant": quant, "balance": balance}


def teacher_loss(*, outputs: Mapping[str, jax.Array], labels: jax.Array,
                 cfg: TeacherLossConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Offline teacher objective on its three outputs (fused, image, text), each (B, K).

  Every output fits the label similarity against the unified codes ``B = sign(fused)`` (DCMH
  style); image and text features also fit it against each other and are contrasted.
  """
  s = losses.label_similarity(labels_a=labels)
  f, i, t = outputs["fused"], outputs["image"], outputs["text"]
  b = _sign(f)
  c = cfg.likelihood_scale
  label = (losses.pairwise_likelihood_loss(features=f, codes=b, similarity=s, scale=c)
           + losses.pairwise_likelihood_loss(features=i, codes=b, similarity=s, scale=c)
           + losses.pairwise_likelihood_loss(features=t, codes=b, similarity=s, scale=c)
           + losses.pairwise_likelihood_loss(features=i, codes=t, similarity=s, scale=c)) / 4
  contrast = losses.contrastive_loss(image_features=i, text_features=t,
                                     temperature=cfg.temperature, similarity=s)
  quant = (losses.quantization_loss(features=f, codes=b) + losses.quantization_loss(
      features=i, codes=b) + losses.quantization_loss(features=t, codes=b)) / 3
  balance = (losses.bit_balance_loss(features=f) + losses.bit_balance_loss(features=i)
             + losses.bit_balance_loss(features=t)) / 3
  total = (cfg.w_label * label + cfg.w_contrast * contrast + cfg.w_quant * quant
           + cfg.w_balance * balance)
  return total, {"loss": total, "label": label, "contrast": contrast, "quant": quant,
                 "balance": balance}


# ------------------------------------------------------------------------------------ train steps


def train_step(state, batch: Mapping[str, jax.Array], rng: jax.Array, *, student: nn.Module,
               cfg: StudentLossConfig):
  """One student step: ``(state, batch, rng) -> (state, metrics)``.

  ``batch``: ``image`` (B, H, W, 3) ImageNet-normalised, ``bow`` (B, V), ``labels`` (B, C),
  ``teacher`` (B, K) teacher fused features. ``state`` is a ``train.state.TrainState``-like
  struct (``params``, ``apply_gradients``). Bind ``student`` and ``cfg`` with ``functools.partial``.
  """
  def loss_fn(params):
    out = student.apply({"params": params}, batch["image"], batch["bow"], train=True)
    return student_loss(image_features=out["image"], text_features=out["text"],
                        labels=batch["labels"], teacher_features=batch["teacher"], cfg=cfg)

  grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
  metrics = dict(metrics)
  metrics["grad_norm"] = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree_util.tree_leaves(grads)))
  return state.apply_gradients(grads), metrics


def _dropout_key(rng: jax.Array) -> jax.Array:
  """A dropout key from the step key, on the ``rbg`` PRNG.

  Threefry-generated dropout masks made the teacher step compile ~4x slower on XLA:CPU; the key is
  still a pure function of the step key (rbg bits may differ across backends).
  """
  seed = jax.random.randint(rng, (), 0, jnp.iinfo(jnp.int32).max)
  return jax.random.key(seed, impl="rbg")


def teacher_train_step(state, batch: Mapping[str, jax.Array], rng: jax.Array, *,
                       teacher: nn.Module, cfg: TeacherLossConfig):
  """One teacher step on cached CLIP features: batch ``image_emb`` (B, D), ``text_emb`` (B, D), ``labels``."""
  drop = _dropout_key(rng)

  def loss_fn(params):
    out = teacher.apply({"params": params}, batch["image_emb"], batch["text_emb"], train=True,
                        rngs={"dropout": drop})
    return teacher_loss(outputs=out, labels=batch["labels"], cfg=cfg)

  grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
  return state.apply_gradients(grads), dict(metrics)


# ---------------------------------------------------------------------------------- encode / eval


def binarize(features) -> np.ndarray:
  """Continuous features -> int8 codes in {-1, +1} (0 maps to +1)."""
  f = np.asarray(features)
  return np.where(f >= 0, 1, -1).astype(np.int8)


def encode_in_batches(fn: Callable[..., jax.Array], arrays: Callable[[np.ndarray], tuple],
                      indices: np.ndarray, *, batch_size: int, desc: str | None = None) -> np.ndarray:
  """Apply ``fn(*arrays(idx))`` over ``indices`` in fixed-size batches (last one padded) -> codes.

  ``fn`` is typically a jitted ``apply`` of one encoder; padding keeps one compiled shape.
  """
  from tqdm.auto import tqdm
  indices = np.asarray(indices, np.int64)
  if indices.size == 0:
    raise ValueError("nothing to encode: indices is empty.")
  out = []
  starts = range(0, indices.size, batch_size)
  for s in tqdm(starts, desc=desc, disable=desc is None, leave=False):
    idx = indices[s:s + batch_size]
    pad = batch_size - idx.size
    if pad:
      idx = np.concatenate([idx, np.repeat(idx[-1:], pad)])
    res = np.asarray(fn(*arrays(idx)))
    out.append(res[:batch_size - pad] if pad else res)
  return binarize(np.concatenate(out))


def evaluate(*, query_image_codes: np.ndarray, query_text_codes: np.ndarray,
             query_labels: np.ndarray, db_image_codes: np.ndarray, db_text_codes: np.ndarray,
             db_labels: np.ndarray, map_fn: Callable[..., float],
             top_k: int | None = None) -> dict[str, float]:
  """Cross-modal mAP: image queries vs text database (i2t) and text queries vs image database (t2i).

  ``map_fn`` is ``lcdh_jax.retrieval.mean_average_precision`` (DCMH ``calc_map`` semantics).
  """
  if db_image_codes.shape[0] == 0:
    raise ValueError("the database is empty; run at least one round before evaluating.")
  i2t = map_fn(query_codes=query_image_codes, db_codes=db_text_codes, query_labels=query_labels,
               db_labels=db_labels, top_k=top_k)
  t2i = map_fn(query_codes=query_text_codes, db_codes=db_image_codes, query_labels=query_labels,
               db_labels=db_labels, top_k=top_k)
  return {"i2t": float(i2t), "t2i": float(t2i)}


def precision_grid(*, db_size: int, n_max: int = 1000, ns=()) -> np.ndarray:
  """The N of precision@N: ``ns`` when given, else every N in 1..``n_max``; only N <= ``db_size``.

  An N past the database would repeat precision@db_size; when every N is past it, ``[db_size]``.
  """
  grid = np.asarray(ns if len(ns) else np.arange(1, n_max + 1), np.int64)
  if grid.ndim != 1 or grid.size == 0 or np.any(grid < 1):
    raise ValueError(f"precision@N needs positive integers N; got {ns!r} / n_max={n_max}.")
  grid = np.unique(grid)
  kept = grid[grid <= db_size]
  return kept if kept.size else np.asarray([db_size], np.int64)


def retrieval_report(*, query_image_codes: np.ndarray, query_text_codes: np.ndarray,
                     query_labels: np.ndarray, db_image_codes: np.ndarray, db_text_codes: np.ndarray,
                     db_labels: np.ndarray, ns: np.ndarray, top_k: int | None = None,
                     digits: int = 6) -> dict[str, dict]:
  """mAP, precision@N and the Hamming-radius PR curve for both directions, as JSON-ready lists.

  -> ``{"i2t": {...}, "t2i": {...}}`` (i2t: image queries against the text database), each
  ``{"map": float, "precision_at_n": {"n": [...], "precision": [...]}, "pr": {"radius": [...],
  "precision": [...], "recall": [...]}}``. Semantics are ``lcdh_jax.retrieval``'s
  (``mean_average_precision`` = DCMH ``calc_map``; ``precision_at_n``; ``pr_curve_by_radius`` with
  DCHMT's per-query averaging). Floats are rounded to ``digits`` so a JSON round trip is exact.
  """
  from lcdh_jax import retrieval
  if db_image_codes.shape[0] == 0:
    raise ValueError("the database is empty; run at least one round before evaluating.")
  ns = np.asarray(ns, np.int64)
  rnd = lambda xs: [round(float(x), digits) for x in np.asarray(xs).reshape(-1)]
  out = {}
  for direction, qc, dc in (("i2t", query_image_codes, db_text_codes),
                            ("t2i", query_text_codes, db_image_codes)):
    args = (qc, dc, query_labels, db_labels)
    pr = retrieval.pr_curve_by_radius(*args)
    out[direction] = {
        "map": round(float(retrieval.mean_average_precision(*args, top_k=top_k)), digits),
        "precision_at_n": {"n": [int(n) for n in ns],
                           "precision": rnd(retrieval.precision_at_n(*args, ns=ns))},
        "pr": {"radius": [int(r) for r in pr.radius], "precision": rnd(pr.precision),
               "recall": rnd(pr.recall)}}
  return out
