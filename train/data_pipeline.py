"""Reading prepared tfds datasets with grain: per-process shards, seeded shuffling, resumable iterators.

The three method packages prepare their raw layouts once into tfds datasets stored as
``array_record`` files (``lcdh_jax.tfds_builder``, ``mvrec_jax.tfds_builder``,
``derefl_jax.tfds_builder``). This module reads them *without TensorFlow*:

    source = open_source(data_dir, "lcdh_cross_modal/mirflickr", "database")   # tfds.data_source
    ds = make_dataset(source, transform=fn, batch_size=32, seed=0)           # grain.MapDataset
    batch = ds[step]                     # random access: a batch is a pure function of (seed, step)
    it = make_iterator(ds)               # or iterate with read-ahead threads; its state is
    extra = iterator_extra(it)           # saved in the Orbax checkpoint's `extra` item and
    restore_iterator(it, extra)          # restored on resume

Order of records (``make_dataset``): the record indices of the split (or ``indices``) are first
dealt to the processes -- a permutation drawn with ``seed`` (the same on every process), then
process ``p`` of ``P`` takes positions ``p, p + P, ...`` -- so the shards are disjoint and together
cover the split (``N mod P`` records are left out when ``drop_remainder``, so that every process
has the same number of steps). Each process then shuffles its shard again at every epoch (grain's
``MapDataset.shuffle``: epoch ``e`` uses seed ``seed + e``), repeats, applies ``transform`` to each
record and batches. Every step of every process is therefore a pure function of
``(seed, process_index, process_count, step)``: `train.loop.fit`'s ``batch_fn(step)`` contract, so
a resumed run sees the same batches without saving anything but the step. Iterators (read-ahead
threads, or grain's ``DataLoader`` with worker processes, ``make_data_loader``) have a state that
``iterator_extra`` turns into an array for ``train.checkpoint.Checkpointer.save(extra=...)``.

Speed (``make_dataset``): ``batch_transform(records, indices)`` reads a whole batch with one
``source.__getitems__`` call and transforms it at once (one vectorised normalisation instead of one
per item and a stack of float arrays); ``cache=decode`` keeps each record decoded once per process
(``CachedSource``: only this process's shard is ever decoded), the counterpart of a raw reader
that holds its images in memory (the DCMH ``.mat`` layout).
"""
from __future__ import annotations

import json
from typing import Any, Callable, Mapping, Sequence

import numpy as np

__all__ = ["open_source", "shard_indices", "make_dataset", "batch_fn", "make_iterator",
           "iterator_extra", "restore_iterator", "make_data_loader", "ITERATOR_STATE_KEY",
           "process_info", "no_tensorflow", "CachedSource", "read_records"]

ITERATOR_STATE_KEY = "data_iterator_state"  # the key in the checkpoint's `extra` dict


def no_tensorflow() -> bool:
  """True when TensorFlow has not been imported by anything in this process."""
  import sys
  return "tensorflow" not in sys.modules


def process_info(process_index: int | None = None, process_count: int | None = None) -> tuple[int, int]:
  """(index, count) of this process: the given values, else ``jax.process_index()/process_count()``."""
  if process_index is None or process_count is None:
    import jax
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, {process_count}).")
  return int(process_index), int(process_count)


def open_source(data_dir: str, name: str, split: str, *, decoders: Mapping[str, Any] | None = None,
                decode_images: bool = False):
  """``tfds.data_source(name, split=split, data_dir=data_dir)`` of a prepared dataset (no download).

  ``name`` is ``<builder>/<config>`` (e.g. ``lcdh_cross_modal/mirflickr``). The dataset must have
  been prepared (``<method>_jax.tfds_builder.prepare``); a missing one is a FileNotFoundError that
  says so. Image features come back as their stored bytes (tfds's ``SkipDecoding``) unless
  ``decode_images``: the method packages decode them with their readers' own PIL code (tfds decodes
  with OpenCV, whose JPEG output and channel handling differ). ``decoders`` as in tfds, for other
  features.
  """
  import os

  import tensorflow_datasets as tfds
  builder_name, _, config = name.partition("/")
  root = os.path.join(str(data_dir), builder_name, config) if config else os.path.join(str(data_dir), name)
  if not os.path.isdir(root) or not any(
      os.path.isfile(os.path.join(root, v, "dataset_info.json")) for v in os.listdir(root)):
    raise FileNotFoundError(
        f"no prepared tfds dataset {name!r} under data_dir {os.path.abspath(str(data_dir))} (looked for "
        f"{root}/<version>/dataset_info.json). Prepare it once from the raw files with the method's "
        f"tfds_builder.prepare(raw_root, data_dir) (see docs/data.md), or point --config.data_dir at the "
        f"folder that holds it.")
  versions = sorted((v for v in os.listdir(root) if os.path.isfile(os.path.join(root, v, "dataset_info.json"))),
                    key=lambda v: tuple(int(x) for x in v.split(".") if x.isdigit()))
  builder = tfds.builder_from_directory(os.path.join(root, versions[-1]))
  if split not in builder.info.splits:
    raise ValueError(f"dataset {name!r} has no split {split!r}; it has {sorted(builder.info.splits)}.")
  decoders = dict(decoders or {})
  if not decode_images:
    for key, feature in builder.info.features.items():
      if isinstance(feature, tfds.features.Image):
        decoders.setdefault(key, tfds.decode.SkipDecoding())
  return tfds.data_source(f"{builder_name}/{config}:{versions[-1]}" if config else f"{name}:{versions[-1]}",
                          split=split, data_dir=str(data_dir), download=False, decoders=decoders or None)


def shard_indices(indices: np.ndarray | int, *, seed: int, process_index: int | None = None,
                  process_count: int | None = None, drop_remainder: bool = True) -> np.ndarray:
  """This process's disjoint share of ``indices`` (or of ``range(indices)``), dealt after a seeded shuffle."""
  idx = np.arange(indices, dtype=np.int64) if np.isscalar(indices) else np.asarray(indices, np.int64)
  p, n = process_info(process_index, process_count)
  dealt = idx[np.random.default_rng([int(seed), 0x5EED]).permutation(len(idx))]
  if drop_remainder:
    dealt = dealt[:len(dealt) - len(dealt) % n]
  return dealt[p::n]


class CachedSource:
  """``source`` with each record replaced by ``decode(record, index)``, computed once per process.

  Random access like the source (``len``, ``[i]``, ``__getitems__``); a record is read and decoded
  the first time it is asked for and kept (a dict; reads from several threads at once may decode a
  record twice, never return a wrong one). Memory: the decoded values of the records this process
  reads, i.e. its shard.
  """

  def __init__(self, source: Sequence[Any], decode: Callable[[Any, int], Any]):
    self.source = source
    self.decode = decode
    self._cache: dict[int, Any] = {}

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int):
    i = int(i)
    value = self._cache.get(i)
    if value is None:
      value = self._cache[i] = self.decode(self.source[i], i)
    return value

  def __getitems__(self, keys: Sequence[int]) -> list[Any]:
    keys = [int(k) for k in keys]
    missing = sorted({k for k in keys if k not in self._cache})
    if missing:
      for k, rec in zip(missing, read_records(self.source, missing)):
        self._cache[k] = self.decode(rec, k)
    return [self._cache[k] for k in keys]

  def __repr__(self) -> str:
    return f"CachedSource({self.source!r}, {len(self._cache)} of {len(self)} decoded)"


def read_records(source: Sequence[Any], keys: Sequence[int]) -> list[Any]:
  """``[source[k] for k in keys]``, as one ``source.__getitems__(keys)`` call when the source has it."""
  keys = [int(k) for k in keys]
  if hasattr(source, "__getitems__"):
    return list(source.__getitems__(keys))
  return [source[k] for k in keys]


def make_dataset(source: Sequence[Any], *, transform: Callable[[Any, int], Any] | None = None,
                 batch_size: int | None = None, seed: int = 0, shuffle: bool = True,
                 num_epochs: int | None = None, indices: np.ndarray | None = None,
                 process_index: int | None = None, process_count: int | None = None,
                 drop_remainder: bool = True,
                 batch_transform: Callable[[list[Any], np.ndarray], Any] | None = None,
                 cache: Callable[[Any, int], Any] | None = None):
  """A ``grain.MapDataset`` over this process's shard of ``source`` (see the module docstring).

  ``transform(record, index) -> element`` (default: the record dict with ``"index"`` added; a
  record that is not a dict comes as ``{"record": record, "index": index}``) runs on
  each record; ``index`` is the record's position in ``source``. ``indices`` restricts the dataset
  to those records (e.g. a train split stored inside a larger one). ``num_epochs=None`` repeats
  forever (index the result by step); ``batch_size`` batches with ``drop_remainder``.

  ``batch_transform(records, indices) -> batch`` (instead of ``transform``; needs ``batch_size``):
  the ``batch_size`` records of a step, read with one ``__getitems__`` call, and their (B,) int64
  positions in ``source``; it returns the batch (e.g. the stacked elements of ``transform``).
  The batch of every step holds the same records in the same order as with ``transform``.
  ``cache(record, index) -> value``: each record is decoded once per process (``CachedSource``)
  and the transforms receive the decoded value instead of the record. The cache lives with the
  returned dataset (all its epochs); to share it between datasets (e.g. one per epoch), pass them
  the same ``CachedSource(source, decode)`` as ``source`` instead.
  """
  import grain
  if batch_transform is not None and transform is not None:
    raise ValueError("give transform or batch_transform, not both.")
  if batch_transform is not None and batch_size is None:
    raise ValueError("batch_transform needs batch_size.")
  if cache is not None:
    source = CachedSource(source, cache)
  n = len(source)
  base = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices, np.int64)
  if base.size and (base.min() < 0 or base.max() >= n):
    raise ValueError(f"indices must lie in [0, {n}); got values in [{base.min()}, {base.max()}].")
  shard = shard_indices(base, seed=seed, process_index=process_index, process_count=process_count,
                        drop_remainder=drop_remainder)
  if shard.size == 0:
    raise ValueError(f"this process's shard is empty ({base.size} records over "
                     f"{process_info(process_index, process_count)[1]} processes).")
  ds = grain.MapDataset.source(shard)
  if shuffle:
    ds = ds.shuffle(seed=int(seed) % 2**32)
  if num_epochs != 1:
    ds = ds.repeat(num_epochs)

  if batch_transform is not None:
    if batch_size <= 0:
      raise ValueError(f"batch_size must be > 0; got {batch_size}.")

    def read_batch(idx):
      idx = np.asarray(idx, np.int64)
      return batch_transform(read_records(source, idx.tolist()), idx)

    return ds.batch(int(batch_size), drop_remainder=True).map(read_batch)

  if transform is None:
    def read(i):
      i = int(i)
      rec = source[i]
      rec = dict(rec) if isinstance(rec, Mapping) else {"record": rec}
      rec["index"] = np.int64(i)
      return rec
  else:
    def read(i):
      return transform(source[int(i)], int(i))

  ds = ds.map(read)
  if batch_size is not None:
    if batch_size <= 0:
      raise ValueError(f"batch_size must be > 0; got {batch_size}.")
    ds = ds.batch(int(batch_size), drop_remainder=True)
  return ds


def batch_fn(ds) -> Callable[[int], Any]:
  """``step -> ds[step]``: the ``batch_fn`` of ``train.loop.fit`` (pure in the step; resumable)."""
  def fn(step: int):
    return ds[int(step)]
  return fn


def make_iterator(ds, *, num_threads: int = 4, prefetch: int = 16):
  """An iterator over ``ds`` with read-ahead threads; ``get_state``/``set_state`` resume it."""
  import grain
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)))


def iterator_extra(iterator) -> dict[str, np.ndarray]:
  """The iterator's state as ``{ITERATOR_STATE_KEY: uint8 array}`` for ``Checkpointer.save(extra=...)``."""
  state = iterator.get_state()
  raw = state if isinstance(state, (bytes, bytearray)) else json.dumps(state, sort_keys=True).encode()
  return {ITERATOR_STATE_KEY: np.frombuffer(bytes(raw), np.uint8).copy()}


def restore_iterator(iterator, extra: Mapping[str, Any] | None) -> bool:
  """Sets ``iterator`` to the state saved by ``iterator_extra``; False when ``extra`` has none."""
  if not extra or ITERATOR_STATE_KEY not in extra:
    return False
  raw = np.asarray(extra[ITERATOR_STATE_KEY], np.uint8).tobytes()
  import grain
  if isinstance(iterator, grain.DataLoaderIterator):
    iterator.set_state(raw)
  else:
    iterator.set_state(json.loads(raw.decode()))
  return True


def make_data_loader(source: Sequence[Any], *, operations: Sequence[Any] = (), seed: int = 0,
                     shuffle: bool = True, num_epochs: int | None = None, worker_count: int = 0,
                     process_index: int | None = None, process_count: int | None = None,
                     drop_remainder: bool = True):
  """grain's ``DataLoader`` over ``source`` with an ``IndexSampler`` sharded per process.

  ``operations``: grain transforms (e.g. ``grain.transforms.Batch``). The sampler gives process
  ``p`` of ``P`` a contiguous ``1/P`` of the records (grain's ``ShardOptions``), shuffled per epoch
  by ``seed``. ``worker_count > 0`` decodes in worker processes: grain then needs the absl flags
  parsed (``absl.app.run`` or ``flags.FLAGS.mark_as_parsed()``), re-imports ``__main__`` in the
  workers and batches per worker. Its iterator's state is JSON bytes (``iterator_extra``).
  """
  import grain
  p, n = process_info(process_index, process_count)
  if worker_count > 0:
    from absl import flags
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
  sampler = grain.samplers.IndexSampler(
      num_records=len(source), shard_options=grain.sharding.ShardOptions(p, n, drop_remainder=drop_remainder),
      shuffle=shuffle, num_epochs=num_epochs, seed=int(seed) if shuffle else None)
  return grain.DataLoader(data_source=source, sampler=sampler, operations=list(operations),
                          worker_count=int(worker_count))
