"""Few-shot episodes: the MVTec-FS protocol of the official MVREC code and a general N-way K-shot sampler.

MVTec-FS (official `PartDatasetTool.get_suport_query_data`): the support pool is the train
split, grouped by class in order of first appearance; for each class the list of its indices
is shuffled with Python's `random` after `random.seed(seed)` (re-seeded for every class) and
the first K kept. Seeds 0..4, K in {1, 3, 5}; the queries are the whole valid split.
"""
from __future__ import annotations

import logging
import random
from typing import Iterable, Sequence

import numpy as np

__all__ = ["MVTEC_FS_SHOTS", "MVTEC_FS_SEEDS", "CLASSIFIERS", "class_indices", "mvtec_fs_support", "mvtec_fs_episodes",
           "shots_used", "support_shortfalls", "evaluate_protocol", "summarize", "sample_episode"]

_LOG = logging.getLogger(__name__)

MVTEC_FS_SHOTS = (1, 3, 5)
MVTEC_FS_SEEDS = (0, 1, 2, 3, 4)


def _labels_list(labels: Sequence[int] | np.ndarray) -> list[int]:
  arr = np.asarray(labels)
  if arr.ndim != 1:
    raise ValueError(f"labels must be a 1-D sequence of class indices, got shape {arr.shape}.")
  if arr.size and not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"labels must be integers, got dtype {arr.dtype}.")
  return [int(x) for x in arr]


def class_indices(labels: Sequence[int] | np.ndarray) -> dict[int, list[int]]:
  """{label: [positions]} with classes in order of first appearance (as the official dict)."""
  out: dict[int, list[int]] = {}
  for i, lab in enumerate(_labels_list(labels)):
    out.setdefault(lab, []).append(i)
  return out


def mvtec_fs_support(labels: Sequence[int] | np.ndarray, k_shot: int, seed: int) -> list[int]:
  """Indices (into `labels`, the train split) of the K-shot support set of sampling `seed`.

  Exactly the official sampling: per class, `random.seed(seed); random.shuffle(indices)`, first
  K (all of them when a class has fewer than K). Python's global `random` state is saved and
  restored around the call.
  """
  if int(k_shot) < 1:
    raise ValueError(f"k_shot must be >= 1, got {k_shot}.")
  groups = class_indices(labels)
  if not groups:
    raise ValueError("labels is empty: no support pool to sample from.")
  state = random.getstate()
  try:
    support: list[int] = []
    for idx in groups.values():
      shuffled = idx[:]
      random.seed(seed)
      random.shuffle(shuffled)
      support.extend(shuffled[:k_shot])
  finally:
    random.setstate(state)
  return support


def shots_used(labels: Sequence[int] | np.ndarray, k_shot: int) -> dict[int, int]:
  """{class: support items a K-shot sampling really uses} = min(K, items of the class in the pool)."""
  return {c: min(int(k_shot), len(idx)) for c, idx in class_indices(labels).items()}


def support_shortfalls(labels: Sequence[int] | np.ndarray, shots: Iterable[int] = MVTEC_FS_SHOTS,
                       class_names: Sequence[str] | None = None) -> list[str]:
  """One message per (K, class) whose support pool has fewer than K items (then every sampling uses them all)."""
  out = []
  for k in shots:
    for c, n in shots_used(labels, k).items():
      if n < int(k):
        name = class_names[c] if class_names is not None and 0 <= c < len(class_names) else f"class {c}"
        out.append(f"{name} has {n} support item(s) < K={int(k)}: the K={int(k)} samplings use {n} shot(s) "
                   "of it (the same items in every sampling)")
  return out


def mvtec_fs_episodes(labels: Sequence[int] | np.ndarray, shots: Iterable[int] = MVTEC_FS_SHOTS,
                      seeds: Iterable[int] = MVTEC_FS_SEEDS) -> dict[int, np.ndarray]:
  """{K: (num_seeds, N) int array of support indices}. Every sampling of one K has the same N."""
  return {int(k): np.asarray([mvtec_fs_support(labels, k, s) for s in seeds], np.int64) for k in shots}


def sample_episode(labels: Sequence[int] | np.ndarray, n_way: int, k_shot: int, n_query: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """General N-way K-shot episode from one labelled pool.

  Returns (support indices (n_way*k_shot,), query indices (n_way*n_query,), classes (n_way,)),
  class-major, with episode labels `position of the class in classes`. Classes with fewer than
  k_shot + n_query examples are not eligible.
  """
  groups = class_indices(labels)
  eligible = sorted(c for c, idx in groups.items() if len(idx) >= k_shot + n_query)
  if n_way < 1 or k_shot < 1 or n_query < 0:
    raise ValueError(f"need n_way >= 1, k_shot >= 1, n_query >= 0; got {n_way}, {k_shot}, {n_query}.")
  if len(eligible) < n_way:
    raise ValueError(f"only {len(eligible)} classes have >= k_shot + n_query = {k_shot + n_query} examples; "
                     f"cannot sample a {n_way}-way episode.")
  classes = rng.choice(np.asarray(eligible), size=n_way, replace=False)
  support, query = [], []
  for c in classes:
    picked = rng.permutation(np.asarray(groups[int(c)]))[:k_shot + n_query]
    support.extend(picked[:k_shot])
    query.extend(picked[k_shot:])
  return np.asarray(support, np.int64), np.asarray(query, np.int64), np.asarray(classes, np.int64)


# ---------------------------------------------------------------------------------------- protocol
CLASSIFIERS = ("zero_shot", "tip_adapter", "tip_adapter_f", "zip_adapter", "zip_adapter_f")
_TRAINED = ("tip_adapter_f", "zip_adapter_f")


def _lpt(costs: Sequence[float], num_bins: int) -> list[list[int]]:
  """Longest-processing-time-first assignment of jobs to `num_bins` workers (balanced total cost)."""
  bins: list[list[int]] = [[] for _ in range(num_bins)]
  load = [0.0] * num_bins
  for j in sorted(range(len(costs)), key=lambda j: -costs[j]):
    b = min(range(num_bins), key=lambda i: load[i])
    bins[b].append(j)
    load[b] += costs[j]
  return bins


def _confusion(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (labels, pred), 1)
  return cm


def evaluate_protocol(support_features: np.ndarray, support_labels: np.ndarray, query_features: np.ndarray,
                      query_labels: np.ndarray, num_classes: int, *,
                      classifiers: Sequence[str] = ("zip_adapter", "zip_adapter_f"),
                      shots: Sequence[int] = MVTEC_FS_SHOTS, seeds: Sequence[int] = MVTEC_FS_SEEDS,
                      precision: str = "float32", text_embeddings: np.ndarray | None = None,
                      zip_f: dict | None = None, tip_f: dict | None = None, devices=None,
                      progress: bool = True) -> dict:
  """Runs the MVTec-FS few-shot protocol on precomputed multi-view features of one category.

  support_features: (Ns, V, D) train split; query_features: (Nq, V, D) valid split (any float
  dtype; the official buffers are fp16). For every K in `shots` and seed in `seeds` the support
  set is :func:`mvtec_fs_support`; every classifier is evaluated on all queries with the
  uncertainty-weighted fusion of the V views ("multi_view") and on view 0 alone ("view0").

  The trained classifiers (Zip-Adapter-F, Tip-Adapter-F) of all (K, seed) samplings are spread
  over `devices` (default: all local devices; on CPU at most one per core) with a balanced assignment; the samplings of one
  K on one device train together in one vmapped, jitted call, and the devices run concurrently.

  Returns {classifier: {K: {"multi_view": [acc per seed], "view0": [...], "confusion": (C, C)
  multi-view confusion summed over seeds, "shots_used": {class: items used}, "final_loss": [...]
  (trained ones)}}}. A class with fewer than K support items is logged as a warning
  (:func:`support_shortfalls`; ``logging`` logger ``mvrec_jax.episodes``) and its real shot count
  is in ``shots_used``.
  """
  import concurrent.futures  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel
  from mvrec_jax import adapters as A  # pylint: disable=import-outside-toplevel

  unknown = [c for c in classifiers if c not in CLASSIFIERS]
  if unknown:
    raise ValueError(f"Unknown classifiers {unknown}; choose from {CLASSIFIERS}.")
  if "zero_shot" in classifiers and text_embeddings is None:
    raise ValueError("classifier 'zero_shot' needs text_embeddings (C, D) of the class-name prompts.")
  s_feat, q_feat = np.asarray(support_features), np.asarray(query_features)
  s_lab, q_lab = np.asarray(support_labels, np.int64), np.asarray(query_labels, np.int64)
  if s_feat.ndim != 3 or q_feat.ndim != 3 or s_feat.shape[1:] != q_feat.shape[1:]:
    raise ValueError(f"support/query features must be (N, V, D) with the same V and D; got {s_feat.shape} and "
                     f"{q_feat.shape}. (Official buffers: take token 0, e.g. load_official_features(cls_only=True).)")
  if len(s_lab) != len(s_feat) or len(q_lab) != len(q_feat):
    raise ValueError(f"labels must match features: {len(s_lab)} vs {len(s_feat)} support, {len(q_lab)} vs "
                     f"{len(q_feat)} query.")
  for name, lab in (("support", s_lab), ("query", q_lab)):
    if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
      raise ValueError(f"{name} labels must be in [0, {num_classes}); got range [{lab.min()}, {lab.max()}].")
  A._check_precision(precision)  # pylint: disable=protected-access
  zip_kw = {**A.ZIP_F_DEFAULTS, **(zip_f or {})}
  tip_kw = {**A.TIP_F_DEFAULTS, **(tip_f or {})}
  text = None if text_embeddings is None else np.asarray(text_embeddings, np.float32)
  episodes = mvtec_fs_episodes(s_lab, shots, seeds)
  for msg in support_shortfalls(s_lab, shots):
    _LOG.warning(msg)
  used = {int(k): {int(c): n for c, n in shots_used(s_lab, k).items()} for k in shots}
  if devices is None:
    devices = jax.local_devices()
    if devices[0].platform == "cpu":  # fake CPU devices beyond the core count only add compiles
      import os  # pylint: disable=import-outside-toplevel
      devices = devices[:max(1, min(len(devices), os.cpu_count() or 1))]
  devices = list(devices)
  # Features enter in their own dtype; fp16 buffers stay fp16 until the adapters cast them.
  out: dict = {c: {} for c in classifiers}

  def record(clf, k, logits, losses=None):
    mv, v0 = (np.asarray(a) for a in A.predict_both(logits))  # (S, Q) each
    entry = {"multi_view": [float(np.mean(p == q_lab)) for p in mv],
             "view0": [float(np.mean(p == q_lab)) for p in v0],
             "confusion": sum(_confusion(p, q_lab, num_classes) for p in mv), "shots_used": used[int(k)]}
    if losses is not None:
      entry["final_loss"] = [float(x) for x in np.asarray(losses)[:, -1]]
    out[clf][k] = entry

  d = s_feat.shape[-1]
  text_or_zero = np.zeros((num_classes, d), np.float32) if text is None else text
  tip_eval = {x: float(tip_kw[x]) for x in ("alpha", "beta", "logit_scale")}
  zip_train = {x: zip_kw[x] for x in ("steps", "lr", "end_lr", "eps", "weight_decay", "beta", "tau")}
  zip_train = {x: (int(v) if x == "steps" else float(v)) for x, v in zip_train.items()}
  tip_train = {x: tip_kw[x] for x in ("steps", "lr", "end_lr", "eps", "weight_decay", "alpha", "beta", "logit_scale")}
  tip_train = {x: (int(v) if x == "steps" else float(v)) for x, v in tip_train.items()}
  for k, idx in episodes.items():  # cheap, training-free classifiers
    views, labs = s_feat[idx], s_lab[idx].astype(np.int32)
    if "zip_adapter" in classifiers:
      record("zip_adapter", k, A.zip_adapter_predict(views, labs, q_feat, num_classes=num_classes,
                                                     precision=precision))
    if "tip_adapter" in classifiers:
      record("tip_adapter", k, A.tip_adapter_predict(views, labs, q_feat, text_or_zero, num_classes=num_classes,
                                                     **tip_eval))
    if "zero_shot" in classifiers:
      zs = np.asarray(A.zero_shot_logits(q_feat, text))
      record("zero_shot", k, np.broadcast_to(zs, (len(idx),) + zs.shape))

  trained = [c for c in classifiers if c in _TRAINED]
  jobs = [(c, k, si) for c in trained for k, idx in episodes.items() for si in range(len(idx))]
  costs = [episodes[k].shape[1] * s_feat.shape[1] * (1.0 if c == "zip_adapter_f" else 0.05) for c, k, _ in jobs]
  assignment = _lpt(costs, len(devices))

  def run_device(dev_index):
    dev = devices[dev_index]
    groups: dict = {}
    for j in assignment[dev_index]:
      c, k, si = jobs[j]
      groups.setdefault((c, k), []).append(si)
    results = []
    q_local = jax.device_put(q_feat, dev)
    for (c, k), sis in sorted(groups.items()):
      sis = sorted(sis)
      idx = episodes[k][sis]
      views = jax.device_put(s_feat[idx], dev)
      labs = jax.device_put(s_lab[idx].astype(np.int32), dev)
      if c == "zip_adapter_f":
        logits, losses = A.zip_adapter_f_predict(views, labs, q_local, num_classes=num_classes,
                                                 precision=precision, **zip_train)
      else:
        logits, losses = A.tip_adapter_f_predict(views, labs, q_local, jax.device_put(text_or_zero, dev),
                                                 num_classes=num_classes, **tip_train)
      results.append((c, k, sis, logits, losses))
    return [(c, k, sis, np.asarray(lg), np.asarray(ls)) for c, k, sis, lg, ls in results]

  if jobs:
    try:
      from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
      bar = tqdm(total=len(jobs), desc="trained adapters (K x seed)", unit="sampling", disable=not progress)
    except ImportError:  # pragma: no cover
      bar = None
    gathered: dict = {}
    with concurrent.futures.ThreadPoolExecutor(len(devices)) as pool:
      for fut in concurrent.futures.as_completed([pool.submit(run_device, d) for d in range(len(devices))]):
        for c, k, sis, lg, ls in fut.result():
          for row, si in enumerate(sis):
            gathered[(c, k, si)] = (lg[row], ls[row])
          if bar is not None:
            bar.update(len(sis))
    if bar is not None:
      bar.close()
    for c in trained:
      for k, idx in episodes.items():
        lg = np.stack([gathered[(c, k, si)][0] for si in range(len(idx))])
        ls = np.stack([gathered[(c, k, si)][1] for si in range(len(idx))])
        record(c, k, lg, ls)
  return out


def summarize(values: Sequence[float]) -> dict:
  """{'mean', 'std' (population, as the official code), 'values'} of per-sampling accuracies."""
  v = np.asarray(values, np.float64)
  return {"mean": float(v.mean()), "std": float(v.std()), "values": [float(x) for x in v]}
