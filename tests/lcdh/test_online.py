"""Invariants of the online (DOCH) protocol and the student/teacher train steps."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lcdh_jax import data, models, online


def test_stream_chunks_partition_database_and_exclude_queries():
  split = data.split_indices(50, num_query=10, num_train=20, seed=0)
  chunks = online.make_stream(split.database, chunk_size=12)
  assert [len(c) for c in chunks] == [12, 12, 16]  # the remainder of 4 joins the last chunk
  all_idx = np.concatenate(chunks)
  np.testing.assert_array_equal(all_idx, split.database)
  assert not set(all_idx) & set(split.query)
  kept = online.make_stream(split.database, chunk_size=12, merge_remainder=False)
  assert [len(c) for c in kept] == [12, 12, 12, 4]
  np.testing.assert_array_equal(np.concatenate(kept), split.database)
  assert len(online.make_stream(split.database, chunk_size=12, num_rounds=2)) == 2
  assert [len(c) for c in online.make_stream(split.database, chunk_size=100)] == [40]
  with pytest.raises(ValueError, match="empty"):
    online.make_stream(np.zeros((0,), int), chunk_size=4)
  with pytest.raises(ValueError, match="chunk_size"):
    online.make_stream(split.database, chunk_size=0)


def test_stream_on_mirflickr_sizes():
  """MIRFlickr-25K: 20015 items, 2000 queries -> 18015 database items in chunks of 2000."""
  split = data.split_indices(20015, num_query=2000, num_train=10000, seed=0)
  assert split.database.size == 18015
  chunks = online.make_stream(split.database, chunk_size=2000)
  assert len(chunks) == 9 and [len(c) for c in chunks] == [2000] * 8 + [2015]
  np.testing.assert_array_equal(np.concatenate(chunks), split.database)
  kept = online.make_stream(split.database, chunk_size=2000, merge_remainder=False)
  assert [len(c) for c in kept] == [2000] * 9 + [15]
  exact = online.make_stream(np.arange(18000), chunk_size=2000)  # no remainder: nothing merged
  assert [len(c) for c in exact] == [2000] * 9


def test_anchors_come_from_old_chunks_only_and_are_seeded():
  chunks = online.make_stream(np.arange(100, 160), chunk_size=20)
  new, anchors = online.round_pool(chunks, 0, seed=1, num_anchors=8)
  assert anchors.size == 0 and np.array_equal(new, chunks[0])
  new, anchors = online.round_pool(chunks, 2, seed=1, num_anchors=8)
  assert anchors.size == 8 and len(set(anchors)) == 8
  assert set(anchors) <= set(np.concatenate(chunks[:2]))
  assert not set(anchors) & set(new)
  _, again = online.round_pool(chunks, 2, seed=1, num_anchors=8)
  np.testing.assert_array_equal(anchors, again)
  _, other = online.round_pool(chunks, 2, seed=2, num_anchors=8)
  assert not np.array_equal(anchors, other)


def test_stream_state_grows_by_chunk_and_keeps_old_codes():
  r = np.random.default_rng(0)
  st = online.StreamState.empty(16)
  chunks = online.make_stream(np.arange(30), chunk_size=10)
  snapshots = []
  for c in chunks:
    before = st.size
    st = st.add(c, r.normal(size=(len(c), 16)), r.normal(size=(len(c), 16)))
    assert st.size == before + len(c)
    snapshots.append(st.image_codes.copy())
  assert st.rounds_done == 3
  for snap in snapshots:  # old codes unchanged when not re-encoding
    np.testing.assert_array_equal(st.image_codes[:len(snap)], snap)
  assert set(np.unique(st.image_codes)) <= {-1, 1} and st.image_codes.dtype == np.int8
  back = online.StreamState.from_extra(st.to_extra())
  np.testing.assert_array_equal(back.text_codes, st.text_codes)
  assert back.rounds_done == 3
  re = st.reencode(-st.image_codes, st.text_codes)
  np.testing.assert_array_equal(re.image_codes, -st.image_codes)
  with pytest.raises(ValueError, match="already in the database"):
    st.add(chunks[0], np.ones((10, 16)), np.ones((10, 16)))
  with pytest.raises(ValueError, match="codes must be"):
    st.add(np.arange(100, 105), np.ones((5, 8)), np.ones((5, 8)))


def test_evaluate_rejects_empty_database():
  st = online.StreamState.empty(16)
  with pytest.raises(ValueError, match="empty"):
    online.evaluate(query_image_codes=np.ones((2, 16)), query_text_codes=np.ones((2, 16)),
                    query_labels=np.ones((2, 3)), db_image_codes=st.image_codes,
                    db_text_codes=st.text_codes, db_labels=np.zeros((0, 3)), map_fn=None)


def _State(params, tx):
  from train.state import TrainState
  return TrainState.create(params=params, tx=tx, rng=jax.random.PRNGKey(0))


def test_student_train_step_decreases_loss():
  r = np.random.default_rng(0)
  b, k = 16, 16
  labels = (r.random((b, 5)) < 0.3).astype(np.float32)
  batch = {"image": jnp.asarray(r.normal(size=(b, 16, 16, 3)), jnp.float32),
           "bow": jnp.asarray(labels @ r.random((5, 12)) > 0.5, jnp.float32),
           "labels": jnp.asarray(labels),
           "teacher": jnp.asarray(np.tanh(r.normal(size=(b, k))), jnp.float32)}
  student = models.Student(bits=k, cnn_widths=(8, 8), text_hidden=16, image_hidden=16)
  key = jax.random.key(0, impl="rbg")
  params = jax.jit(student.init)(key, batch["image"], batch["bow"])["params"]
  cfg = online.StudentLossConfig(distill_mode="mse")  # "likelihood" runs in the end-to-end test
  step = jax.jit(functools.partial(online.train_step, student=student, cfg=cfg))
  st = _State(params, optax.adam(1e-2))
  _, m0 = step(st, batch, jax.random.key(1))
  for i in range(30):
    st, m = step(st, batch, jax.random.key(i))
  assert float(m["loss"]) < 0.85 * float(m0["loss"])
  assert np.isfinite(float(m["grad_norm"]))


def test_teacher_train_step_decreases_loss():
  r = np.random.default_rng(1)
  labels = (r.random((16, 4)) < 0.3).astype(np.float32)
  batch = {"image_emb": jnp.asarray(labels @ r.normal(size=(4, 12)) + 0.1 * r.normal(size=(16, 12)),
                                    jnp.float32),
           "text_emb": jnp.asarray(labels @ r.normal(size=(4, 10)), jnp.float32),
           "labels": jnp.asarray(labels)}
  teacher = models.Teacher(bits=16, width=16, num_heads=2, dropout=0.0)
  key = jax.random.key(0, impl="rbg")
  params = jax.jit(teacher.init)(key, batch["image_emb"], batch["text_emb"])["params"]
  step = jax.jit(functools.partial(online.teacher_train_step, teacher=teacher,
                                   cfg=online.TeacherLossConfig()))
  st = _State(params, optax.adam(1e-2))
  _, m0 = step(st, batch, jax.random.key(1))
  for i in range(20):
    st, m = step(st, batch, jax.random.key(i))
  assert float(m["loss"]) < 0.8 * float(m0["loss"])


def test_encode_in_batches_pads_and_binarizes():
  calls = []
  def fn(x):
    calls.append(x.shape)
    return x - 0.5
  arr = np.linspace(0, 1, 10)[:, None].repeat(4, 1)
  codes = online.encode_in_batches(fn, lambda idx: (arr[idx],), np.arange(10), batch_size=4)
  assert codes.shape == (10, 4) and codes.dtype == np.int8
  assert all(s == (4, 4) for s in calls)  # one compiled shape
  np.testing.assert_array_equal(codes[:, 0], np.where(arr[:, 0] - 0.5 >= 0, 1, -1))


def test_precision_grid():
  np.testing.assert_array_equal(online.precision_grid(db_size=5000), np.arange(1, 1001))
  np.testing.assert_array_equal(online.precision_grid(db_size=300), np.arange(1, 301))
  np.testing.assert_array_equal(online.precision_grid(db_size=3000, ns=(5000, 200, 1000)),
                                [200, 1000])
  np.testing.assert_array_equal(online.precision_grid(db_size=100, ns=(200, 500)), [100])
  with pytest.raises(ValueError, match="positive"):
    online.precision_grid(db_size=10, ns=(0, 5))


def test_retrieval_report_both_directions_on_a_hand_built_case():
  """4 bits, 1 query, 4 database items; image and text codes differ so the directions differ."""
  q_img = np.array([[1, 1, 1, 1]])
  q_txt = np.array([[-1, -1, -1, -1]])
  db_txt = np.array([[1, 1, 1, 1], [1, 1, 1, -1], [-1, -1, 1, 1], [-1, -1, -1, -1]])
  db_img = -db_txt                       # distances from q_txt to db_img = those from q_img to db_txt
  db_img[1] = [1, 1, 1, 1]               # ... except item 1, now at distance 4 from q_txt
  ql = np.array([[1, 0]])
  dbl = np.array([[1, 0], [0, 1], [1, 1], [0, 1]])  # relevant: items 0 and 2
  rep = online.retrieval_report(query_image_codes=q_img, query_text_codes=q_txt, query_labels=ql,
                                db_image_codes=db_img, db_text_codes=db_txt, db_labels=dbl,
                                ns=np.array([1, 2, 3, 4]))
  # i2t: distances 0, 1, 2, 4 -> ranks 0, 1, 2, 3; relevant at ranks 1 and 3 -> AP = (1 + 2/3) / 2.
  i2t = rep["i2t"]
  assert i2t["map"] == pytest.approx((1 + 2 / 3) / 2, abs=1e-6)
  assert i2t["precision_at_n"] == {"n": [1, 2, 3, 4], "precision": [1.0, 0.5, 0.666667, 0.5]}
  assert i2t["pr"]["radius"] == [0, 1, 2, 3, 4]
  assert i2t["pr"]["precision"] == [1.0, 0.5, 0.666667, 0.666667, 0.5]
  assert i2t["pr"]["recall"] == [0.5, 0.5, 1.0, 1.0, 1.0]
  # t2i: distances 0, 4, 2, 4 -> order 0, 2, 1, 3: both relevant first -> AP 1.
  t2i = rep["t2i"]
  assert t2i["map"] == 1.0
  assert t2i["precision_at_n"]["precision"] == [1.0, 1.0, 0.666667, 0.5]
  assert t2i["pr"]["precision"] == [1.0, 1.0, 1.0, 1.0, 0.5]
  assert t2i["pr"]["recall"] == [0.5, 0.5, 1.0, 1.0, 1.0]
  import json
  assert json.loads(json.dumps(rep)) == rep  # JSON-ready, and a round trip is exact
