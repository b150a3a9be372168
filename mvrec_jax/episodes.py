"""Few-shot episodes: the MVTec-FS protocol of the official MVREC code and a general N-way K-shot sampler.

MVTec-FS (official `PartDatasetTool.get_suport_query_data`): the support pool is the train
split, grouped by class in order of first appearance; for each class the list of its indices
is shuffled with Python's `random` after `random.seed(seed)` (re-seeded for every class) and
the first K kept. Seeds 0..4, K in {1, 3, 5}; the queries are the whole valid split.
"""
from __future__ import annotations

import random
from typing import Iterable, Sequence

import numpy as np

__all__ = ["MVTEC_FS_SHOTS", "MVTEC_FS_SEEDS", "class_indices", "mvtec_fs_support", "mvtec_fs_episodes",
           "sample_episode"]

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
