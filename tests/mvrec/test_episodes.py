"""MVTec-FS sampling (official Python-random recipe), the N-way K-shot sampler and the protocol runner."""
import random

import jax
import numpy as np
import pytest

from mvrec_jax import episodes as E


def _official_reference(labels, k, seed):
  # Written out from the official PartDatasetTool.get_suport_query_data (dict in first-appearance order).
  groups = {}
  for i, y in enumerate(labels):
    groups.setdefault(y, []).append(i)
  out = []
  for idx in groups.values():
    idx = idx[:]
    random.seed(seed)
    random.shuffle(idx)
    out += idx[:k]
  return out


TRANSISTOR_TRAIN = [0] * 5 + [1] * 6 + [2] * 6 + [3] * 5  # class sizes of the real transistor train split


def test_matches_official_recipe_and_restores_random_state():
  labels = [2, 0, 1, 0, 2, 2, 1, 0, 1, 1, 0, 2]
  for k in (1, 3, 5):
    for s in range(5):
      got = E.mvtec_fs_support(labels, k, s)
      assert got == _official_reference(labels, k, s)
      assert len(got) == 3 * min(k, 4)
  random.seed(123)
  before = random.random()
  random.seed(123)
  E.mvtec_fs_support(labels, 3, 4)
  assert random.random() == before  # global state untouched


def test_hand_checked_values():
  # random.seed(0); random.shuffle(list(range(5))) -> [2, 1, 0, 4, 3] on CPython 3.
  random.seed(0)
  perm = list(range(5))
  random.shuffle(perm)
  assert E.mvtec_fs_support([7] * 5, 2, 0) == perm[:2]
  # A class smaller than K contributes all its instances; classes keep first-appearance order.
  sup = E.mvtec_fs_support([1, 0, 0, 0], 3, 0)
  assert sup[0] == 0 and sorted(sup[1:]) == [1, 2, 3]


def test_episode_table_shapes_and_class_balance():
  eps = E.mvtec_fs_episodes(np.asarray(TRANSISTOR_TRAIN))
  assert sorted(eps) == [1, 3, 5]
  for k, idx in eps.items():
    assert idx.shape == (5, 4 * k)
    for row in idx:
      counts = np.bincount(np.asarray(TRANSISTOR_TRAIN)[row], minlength=4)
      assert (counts == k).all()
      assert len(set(row.tolist())) == len(row)


def test_general_sampler():
  labels = np.repeat(np.arange(6), 7)
  rng = np.random.default_rng(0)
  sup, qry, classes = E.sample_episode(labels, n_way=4, k_shot=2, n_query=3, rng=rng)
  assert sup.shape == (8,) and qry.shape == (12,) and len(set(classes.tolist())) == 4
  assert not set(sup.tolist()) & set(qry.tolist())
  assert (labels[sup].reshape(4, 2) == classes[:, None]).all()
  with pytest.raises(ValueError, match="cannot sample"):
    E.sample_episode(labels, n_way=7, k_shot=2, n_query=3, rng=rng)


def test_bad_inputs():
  with pytest.raises(ValueError, match="k_shot"):
    E.mvtec_fs_support([0, 1], 0, 0)
  with pytest.raises(ValueError, match="1-D"):
    E.mvtec_fs_support(np.zeros((2, 2), int), 1, 0)
  with pytest.raises(ValueError, match="empty"):
    E.mvtec_fs_support([], 1, 0)


def test_lpt_balances_costs():
  costs = [540] * 5 + [324] * 5 + [108] * 5
  bins = E._lpt(costs, 2)
  loads = [sum(costs[j] for j in b) for b in bins]
  assert sorted(j for b in bins for j in b) == list(range(15))
  assert max(loads) - min(loads) <= 108


def test_protocol_on_separable_features():
  rng = np.random.default_rng(0)
  c, v, d = 3, 4, 16
  centers = rng.normal(size=(c, d)) * 3
  s_lab = np.repeat(np.arange(c), 6)
  q_lab = np.repeat(np.arange(c), 3)
  s = centers[s_lab][:, None] + rng.normal(size=(len(s_lab), v, d))
  q = centers[q_lab][:, None] + rng.normal(size=(len(q_lab), v, d))
  text = centers + 0.1 * rng.normal(size=centers.shape)
  res = E.evaluate_protocol(s.astype(np.float16), s_lab, q.astype(np.float16), q_lab, c,
                            classifiers=E.CLASSIFIERS, shots=(2,), seeds=(0, 1), text_embeddings=text,
                            zip_f=dict(steps=20), tip_f=dict(steps=10), progress=False,
                            devices=jax.local_devices()[:1])
  assert set(res) == set(E.CLASSIFIERS)
  for clf, per_k in res.items():
    assert sorted(per_k) == [2]
    for k, e in per_k.items():
      assert len(e["multi_view"]) == 2 and len(e["view0"]) == 2
      assert e["confusion"].sum() == 2 * len(q_lab)
      assert min(e["multi_view"]) >= 0.75, (clf, k, e)
  assert "final_loss" in res["zip_adapter_f"][2]
  with pytest.raises(ValueError, match="text_embeddings"):
    E.evaluate_protocol(s, s_lab, q, q_lab, c, classifiers=("zero_shot",), progress=False)
  with pytest.raises(ValueError, match="labels must be in"):
    E.evaluate_protocol(s, s_lab + 5, q, q_lab, c, progress=False)
  with pytest.raises(ValueError, match="Unknown classifiers"):
    E.evaluate_protocol(s, s_lab, q, q_lab, c, classifiers=("svm",), progress=False)


def test_summarize():
  out = E.summarize([0.5, 1.0])
  assert out == {"mean": 0.75, "std": 0.25, "values": [0.5, 1.0]}


def test_short_support_pool_is_warned_and_shots_used_recorded(caplog):
  labels = [0, 0, 1, 1, 1, 2]  # class 0: 2 items, class 1: 3, class 2: 1
  assert E.shots_used(labels, 1) == {0: 1, 1: 1, 2: 1}
  assert E.shots_used(labels, 3) == {0: 2, 1: 3, 2: 1}
  msgs = E.support_shortfalls(labels, (1, 3), class_names=("dent", "scratch", "hole"))
  assert msgs == ["dent has 2 support item(s) < K=3: the K=3 samplings use 2 shot(s) of it (the same items in every "
                  "sampling)", "hole has 1 support item(s) < K=3: the K=3 samplings use 1 shot(s) of it (the same "
                  "items in every sampling)"]
  assert E.support_shortfalls(TRANSISTOR_TRAIN, (1, 3, 5)) == []
  # the sampler indeed takes all items of a short class: 2 + 3 + 1 support items at K = 3
  assert sorted(E.mvtec_fs_support(labels, 3, 0)) == list(range(6))
  rng = np.random.default_rng(0)
  s = rng.normal(size=(6, 2, 8)).astype(np.float32)
  q = rng.normal(size=(3, 2, 8)).astype(np.float32)
  with caplog.at_level("WARNING", logger="mvrec_jax.episodes"):
    res = E.evaluate_protocol(s, np.asarray(labels), q, np.asarray([0, 1, 2]), 3, classifiers=("zip_adapter",),
                              shots=(1, 3), seeds=(0,), progress=False)
  assert res["zip_adapter"][3]["shots_used"] == {0: 2, 1: 3, 2: 1}
  assert res["zip_adapter"][1]["shots_used"] == {0: 1, 1: 1, 2: 1}
  warned = [r.getMessage() for r in caplog.records if r.name == "mvrec_jax.episodes"]
  assert warned == E.support_shortfalls(labels, (1, 3))
