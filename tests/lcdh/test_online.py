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
  assert [len(c) for c in chunks] == [12, 12, 12, 4]
  all_idx = np.concatenate(chunks)
  np.testing.assert_array_equal(all_idx, split.database)
  assert not set(all_idx) & set(split.query)
  assert len(online.make_stream(split.database, chunk_size=12, num_rounds=2)) == 2
  with pytest.raises(ValueError, match="empty"):
    online.make_stream(np.zeros((0,), int), chunk_size=4)
  with pytest.raises(ValueError, match="chunk_size"):
    online.make_stream(split.database, chunk_size=0)


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
