"""train.data_pipeline: disjoint per-process shards, seeded per-epoch shuffles, resumable iterators,
no TensorFlow, and a real 2-process (jax.distributed, gloo) read of a prepared dataset."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from train import data_pipeline as dp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "train"))
import fakes  # noqa: E402


def _epochs(ds, per, n_epochs):
  items = [int(x) for x in (ds[i] for i in range(per * n_epochs))]
  return [items[e * per:(e + 1) * per] for e in range(n_epochs)]


def test_shards_disjoint_cover_each_epoch_and_reshuffle():
  n, procs = 23, 3
  src = np.arange(100, 100 + n)
  runs = [dp.make_dataset(src, transform=lambda rec, pos: pos, seed=5, process_index=p, process_count=procs)
          for p in range(procs)]
  per = n // procs
  eps = [_epochs(ds, per, 3) for ds in runs]
  for e in range(3):
    seen = [x for p in range(procs) for x in eps[p][e]]
    assert len(seen) == len(set(seen)) == per * procs  # disjoint; N mod P = 2 records left out
  for p in range(procs):  # a process keeps its shard, in a new order every epoch
    assert set(eps[p][0]) == set(eps[p][1]) == set(eps[p][2])
    assert eps[p][0] != eps[p][1] and eps[p][1] != eps[p][2]
  again = dp.make_dataset(src, transform=lambda rec, pos: pos, seed=5, process_index=1, process_count=procs)
  assert _epochs(again, per, 3) == eps[1]
  other = dp.make_dataset(src, transform=lambda rec, pos: pos, seed=6, process_index=1, process_count=procs)
  assert _epochs(other, per, 1) != eps[1][:1]
  # without drop_remainder every record is read once an epoch
  full = [x for p in range(procs) for x in dp.make_dataset(src, transform=lambda r, i: i, seed=5, num_epochs=1,
                                                            process_index=p, process_count=procs, drop_remainder=False)]
  assert sorted(int(x) for x in full) == list(range(n))
  # batches: ds[step] is the step's batch; indices restrict the records read
  b = dp.make_dataset(src, batch_size=4, seed=1, indices=[3, 4, 5, 6, 7, 8, 9, 10], process_index=0, process_count=1)
  got = np.concatenate([b[0]["index"], b[1]["index"]])
  assert sorted(got.tolist()) == list(range(3, 11))


def test_iterator_state_saved_in_orbax_checkpoint_resumes(tmp_path):
  from train.checkpoint import Checkpointer
  ds = dp.make_dataset(np.arange(40), transform=lambda rec, pos: np.int64(rec), batch_size=4, seed=2,
                       process_index=0, process_count=1)
  it = dp.make_iterator(ds, num_threads=2)
  for _ in range(5):
    next(it)
  ck = Checkpointer(str(tmp_path))
  ck.save(5, {"w": np.zeros(2, np.float32)}, extra=dp.iterator_extra(it), force=True)
  ck.close()
  expected = [next(it).tolist() for _ in range(4)]  # crosses the epoch boundary (10 batches an epoch)
  ck = Checkpointer(str(tmp_path))
  _, extra = ck.restore({"w": np.zeros(2, np.float32)})
  ck.close()
  fresh = dp.make_iterator(ds, num_threads=2)
  assert dp.restore_iterator(fresh, extra)
  assert [next(fresh).tolist() for _ in range(4)] == expected
  assert [ds[s].tolist() for s in range(5, 9)] == expected  # random access agrees with the iterator
  assert not dp.restore_iterator(fresh, {})


class _CountingSource:
  """A random-access source that counts its reads (one-by-one and batched)."""

  def __init__(self, values):
    self.values, self.single, self.batched = np.asarray(values), 0, 0

  def __len__(self):
    return len(self.values)

  def __getitem__(self, i):
    self.single += 1
    return self.values[i]

  def __getitems__(self, keys):
    self.batched += 1
    return [self.values[k] for k in keys]


def test_batch_transform_and_cache_give_the_same_batches_and_resume():
  n, kw = 23, dict(batch_size=4, seed=5, process_index=1, process_count=2)
  src = _CountingSource(np.arange(100, 100 + n))
  per_item = dp.make_dataset(src, transform=lambda rec, pos: {"v": np.int64(rec), "i": np.int64(pos)}, **kw)
  batched = dp.make_dataset(src, batch_transform=lambda recs, pos: {"v": np.asarray(recs, np.int64), "i": pos},
                            **kw)
  decoded = []

  def decode(rec, pos):
    decoded.append(pos)
    return {"v": np.int64(rec) * 10}

  cached = dp.make_dataset(src, cache=decode, **kw,
                           batch_transform=lambda recs, pos: {"v": np.array([r["v"] // 10 for r in recs]), "i": pos})
  steps = 3 * (n // 2 // 4)  # three epochs of the shard
  src.single = src.batched = 0
  for step in range(steps):
    want = per_item[step]
    for ds in (batched, cached):
      got = ds[step]
      np.testing.assert_array_equal(got["v"], want["v"])
      np.testing.assert_array_equal(got["i"], want["i"])
  assert src.batched > 0 and src.single == steps * 4  # batched: one __getitems__ call a batch
  shard = dp.shard_indices(n, seed=5, process_index=1, process_count=2)
  assert sorted(decoded) == sorted(shard.tolist())  # each record of this shard decoded once, no other
  # the iterator over batch_transform + cache resumes from its state
  it = dp.make_iterator(cached, num_threads=2)
  for _ in range(3):
    next(it)
  extra = dp.iterator_extra(it)
  expected = [next(it)["v"].tolist() for _ in range(6)]
  fresh = dp.make_iterator(cached, num_threads=2)
  assert dp.restore_iterator(fresh, extra) and [next(fresh)["v"].tolist() for _ in range(6)] == expected
  with pytest.raises(ValueError, match="not both"):
    dp.make_dataset(src, transform=lambda r, i: r, batch_transform=lambda r, i: r, batch_size=2)
  with pytest.raises(ValueError, match="needs batch_size"):
    dp.make_dataset(src, batch_transform=lambda r, i: r)


def test_data_loader_shards_and_state():
  import grain
  src = np.arange(10)
  per_proc = []
  for p in range(2):
    loader = dp.make_data_loader(src, seed=3, num_epochs=1, process_index=p, process_count=2)
    per_proc.append([int(x) for x in loader])
  assert sorted(per_proc[0] + per_proc[1]) == list(range(10)) and not set(per_proc[0]) & set(per_proc[1])
  loader = dp.make_data_loader(src, operations=[grain.transforms.Batch(2)], seed=3, num_epochs=2,
                               process_index=0, process_count=1)
  it = iter(loader)
  next(it)
  extra = dp.iterator_extra(it)
  rest = [b.tolist() for b in it]
  it2 = iter(loader)
  dp.restore_iterator(it2, extra)
  assert [b.tolist() for b in it2] == rest and len(rest) == 9


def test_open_source_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="no prepared tfds dataset"):
    dp.open_source(tmp_path, "lcdh_cross_modal/mirflickr", "query")


@pytest.mark.timeout(240)
def test_prepare_and_read_never_import_tensorflow(tmp_path):
  """All three builders prepare their fake layouts and every split is read through grain, in a fresh
  process (other tests' imports cannot interfere): TensorFlow is never imported."""
  r = subprocess.run([sys.executable, str(HERE / "fakes.py"), str(tmp_path)], capture_output=True, text=True,
                     timeout=220, cwd=str(HERE.parents[1]))
  assert r.returncode == 0, r.stderr[-3000:]
  out = json.loads(r.stdout.strip().splitlines()[-1])
  assert out["tensorflow"] is False and out["tf_modules"] == []
  assert out["counts"] == {"lcdh_cross_modal/synthetic:query": 4, "lcdh_cross_modal/synthetic:database": 20,
                           "mvrec_mvtec_fs/weave:train": 8, "mvrec_mvtec_fs/weave:valid": 4,
                           "derefl_reflection/voc2012:train": 4, "derefl_reflection/train_pairs:real": 3,
                           "derefl_reflection/sir2:wild": 2, "test_sets": 12, "mvrec_images": 8}


@pytest.mark.timeout(300)
def test_two_processes_read_disjoint_shards_covering_each_epoch(tmp_path):
  import portpicker
  from lcdh_jax import tfds_builder
  from test_machinery import _worker_env  # the 2-process pattern of tests/train
  tfds_builder.prepare(fakes.make_lcdh_raw(tmp_path / "raw", "arrays"), tmp_path / "prep", dataset="synthetic",
                       num_query=4, num_train=8)
  port = portpicker.pick_unused_port()
  procs = [subprocess.Popen([sys.executable, str(HERE / "shard_worker.py"), str(tmp_path / "prep"),
                             str(tmp_path / f"p{i}.json"), f"127.0.0.1:{port}", "2", str(i)], env=_worker_env(2),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=240) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  res = [json.loads((tmp_path / f"p{i}.json").read_text()) for i in range(2)]
  assert [r["index"] for r in res] == [0, 1] and all(r["nproc"] == 2 and r["ndev"] == 4 for r in res)
  from lcdh_jax import data as data_lib
  database = set(data_lib.split_indices(24, num_query=4, num_train=8, seed=0).database.tolist())
  for e in range(2):
    a, b = res[0]["epochs"][e], res[1]["epochs"][e]
    assert len(a) == len(b) == 10 and not set(a) & set(b) and set(a) | set(b) == database
  assert res[0]["epochs"][0] != res[0]["epochs"][1]  # reshuffled
  want = float(sum(res[0]["epochs"][0][:10]) + sum(res[1]["epochs"][0][:10]))
  assert res[0]["global_sum"] == res[1]["global_sum"] == want
