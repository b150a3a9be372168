"""Input pipelines: prepared tfds (array_record) + grain vs the current raw-file readers, per method.

    python benchmarks/data_pipeline.py                       # all three, default sizes (~3-5 min here)
    python benchmarks/data_pipeline.py --methods lcdh --epochs 4 --threads 2 --json out.json

For each method the script writes a synthetic raw dataset of realistic image sizes into
``--workdir`` (kept between runs), prepares it afresh with the method's tfds builder (timed:
``prepare_s``), then reads every item ``--epochs`` times through

* **current**: the reader the train scripts use today on the raw files, and
* **new**: ``train.data_pipeline.open_source`` (tfds.data_source) + ``make_dataset`` (grain
  ``MapDataset``, seeded shuffle) + the package's record transform,

with the same work after reading (the same decode, resize, normalise / views / crops) and the same
number of read-ahead threads, the readers alternating epoch by epoch. It reports items/s of the
first epoch (opening the data included: ``load_dataset`` vs ``open_source`` / ``load_prepared``) and
the mean of the later ones, and the ratio new / current.

* lcdh: DCHMT ``paths`` layout, JPEG 320x240 images, the student's element (224 px, ImageNet
  normalised, BoW, labels): ``data.image_dataset`` vs ``record_transform``; and the DCMH
  ``arrays`` layout (images in the .mat) read through ``load_prepared`` (images decoded into
  memory at load, as the raw reader holds ``IAll``) vs the raw reader.
  ``--lcdh-layouts arrays`` runs that layout only.
* mvrec: MVTec-FS layout, 256 px PNG images, the 27 ``mso`` views of each instance
  (crop sizes scaled to 64/96/128 px, resized to 112 px): ``data.instance_inputs`` vs
  ``tfds_builder.record_views``, and vs ``features.instance_views`` with
  ``tfds_builder.image_loader`` (what ``train.mvrec --config.data_dir`` renders).
* derefl: DSRNet layout (VOC 320x240 PNG, real/nature 320x240 JPEG pairs): ``TrainSampler`` vs
  ``PreparedTrainSampler`` batches of 8 crops of 224 px (items = samples); and the test sets
  (``PairedFolder.load`` vs ``PreparedPairs.load``, aligned to 32 px).

The OS page cache holds the raw files and the array_record files alike after the first epoch (and
usually before it: they were just written), so "first epoch" measures opening the data and cold
code paths, not a cold disk. Each timing is one run on whatever machine runs it: say which.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _epoch_rate(make_epoch_iter, epoch: int, count: int) -> float:
  """items/s of one epoch; ``make_epoch_iter(epoch)`` returns an iterable of about ``count`` items (or batches)."""
  t0 = time.perf_counter()
  n = 0
  for b in make_epoch_iter(epoch):
    n += len(b["index"]) if isinstance(b, dict) and "index" in b and np.ndim(b["index"]) else 1
  dt = time.perf_counter() - t0
  if abs(n - count) >= 64:  # the current lcdh reader keeps the last partial batch, grain drops it
    raise RuntimeError(f"epoch read {n} items, expected about {count}")
  return n / dt


def _interleaved(readers, count: int, epochs: int) -> list[list[float]]:
  """items/s per epoch of each reader, the readers alternating epoch by epoch (so that the load of a
  shared machine drifts over all of them alike)."""
  out = [[] for _ in readers]
  for e in range(epochs):
    for k, r in enumerate(readers):
      out[k].append(_epoch_rate(r, e, count))
  return out


def _row(method, what, current, new, prepare_s=None):
  row = {"method": method, "what": what, "current_first": current[0], "new_first": new[0],
         "current_later": float(np.mean(current[1:])) if len(current) > 1 else None,
         "new_later": float(np.mean(new[1:])) if len(new) > 1 else None, "prepare_s": prepare_s}
  row["ratio_first"] = row["new_first"] / row["current_first"]
  row["ratio_later"] = (row["new_later"] / row["current_later"]) if row["current_later"] else None
  return row


# ------------------------------------------------------------------------------------------- lcdh

def bench_lcdh(work: Path, args) -> list[dict]:
  import grain
  import scipy.io
  from PIL import Image

  from lcdh_jax import data as data_lib
  from lcdh_jax import synthetic
  from lcdh_jax import tfds_builder as tb
  from train import data_pipeline as dp
  n = args.lcdh_items
  rows = []
  raw, rawa = work / "lcdh_paths", work / "lcdh_arrays"
  if not (raw / "tag.mat").is_file():
    syn = synthetic.make_synthetic(num_samples=n, image_size=240, seed=0)
    synthetic.write_mat(syn, raw, name="synthetic", layout="paths")
    index = []
    for i, im in enumerate(syn.images):  # 320x240 JPEGs, as the MIRFlickr photos are JPEG
      Image.fromarray(im).resize((320, 240)).save(raw / "images" / f"{i:06d}.jpg", quality=90)
      os.remove(raw / "images" / f"{i:06d}.png")
      index.append(f"images/{i:06d}.jpg")
    cell = np.empty((n,), dtype=object)
    cell[:] = index
    scipy.io.savemat(raw / "index.mat", {"index": cell})
    small = synthetic.make_synthetic(num_samples=n, image_size=224, seed=1)
    synthetic.write_mat(small, rawa, name="synthetic", layout="arrays")
  nq, nt = n // 10, n // 2
  for layout, root in (("paths", raw), ("arrays", rawa)):
    if layout not in args.lcdh_layouts:
      continue
    data_dir = work / f"prepared_lcdh_{layout}"
    shutil.rmtree(data_dir, ignore_errors=True)  # prepare_s: always a fresh preparation
    t0 = time.perf_counter()
    tb.prepare(root, data_dir, dataset="synthetic", num_query=nq, num_train=nt)
    prep = time.perf_counter() - t0
    bs, size, threads = 32, 224, args.threads
    count = ((n - nq) // bs) * bs
    state = {}

    def current(e, root=root):
      if "d" not in state:
        state["d"] = data_lib.load_dataset("synthetic", root)
        state["split"] = data_lib.split_indices(n, num_query=nq, num_train=nt, seed=0)
      ds = data_lib.image_dataset(state["d"], state["split"].database, batch_size=bs, seed=e, image_size=size,
                                  repeat=False)
      return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads)))

    def new_grain(e, data_dir=data_dir):
      if "src" not in state:
        state["src"] = dp.open_source(data_dir, "lcdh_cross_modal/synthetic", "database")
      ds = dp.make_dataset(state["src"], transform=tb.record_transform(image_size=size), batch_size=bs,
                           seed=e, num_epochs=1, process_index=0, process_count=1)
      return dp.make_iterator(ds, num_threads=threads, prefetch=2 * threads)

    def new_loaded(e, data_dir=data_dir):
      if "p" not in state:
        state["p"] = tb.load_prepared(data_dir, "synthetic")
      ds = data_lib.image_dataset(state["p"], state["split"].database, batch_size=bs, seed=e, image_size=size,
                                  repeat=False)
      return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads)))

    cur, new, loaded = _interleaved([current, new_grain, new_loaded], count, args.epochs)
    rows.append(_row("lcdh", f"{layout}: image_dataset vs tfds+grain record_transform", cur, new, prep))
    rows.append(_row("lcdh", f"{layout}: image_dataset on raw vs on load_prepared (train.lcdh path)", cur,
                     loaded, prep))
  return rows


# ------------------------------------------------------------------------------------------ mvrec

def bench_mvrec(work: Path, args) -> list[dict]:
  import grain

  from mvrec_jax import data as data_lib
  from mvrec_jax import synthetic
  from mvrec_jax import tfds_builder as tb
  from train import data_pipeline as dp
  raw = work / "mvrec"
  synthetic.make_dataset(raw, categories=("weave", "disc"), image_size=256, n_train=args.mvrec_per_class,
                         n_valid=args.mvrec_per_class, seed=0)
  data_dir = work / "prepared_mvrec"
  shutil.rmtree(data_dir, ignore_errors=True)
  t0 = time.perf_counter()
  for c in ("weave", "disc"):
    tb.prepare(raw, data_dir, category=c)
  prep = time.perf_counter() - t0
  kw = dict(method="mso", crop_sizes=(64, 96, 128), resize=(112,))
  threads = args.threads
  state = {}
  count = sum(len(data_lib.load_category(raw, c).train) for c in ("weave", "disc"))

  def current(e):
    if "inst" not in state:
      state["inst"] = [i for c in ("weave", "disc") for i in data_lib.load_category(raw, c, data_root=raw).train]
    ds = grain.MapDataset.source(state["inst"]).shuffle(seed=e).map(
        lambda inst: {"index": np.int64(inst.row), "views": data_lib.instance_inputs(inst, **kw)})
    return (x for x in ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads)))

  def new(e):
    if "src" not in state:
      state["src"] = [dp.open_source(data_dir, f"mvrec_mvtec_fs/{c}", "train") for c in ("weave", "disc")]
    tf = tb.views_transform(**kw)
    its = [dp.make_iterator(dp.make_dataset(s, transform=tf, seed=e, num_epochs=1, process_index=0, process_count=1),
                            num_threads=threads, prefetch=2 * threads) for s in state["src"]]
    return (x for it in its for x in it)

  def loaded(e):  # train.mvrec --config.data_dir: load_prepared + image_loader -> features.instance_views
    from mvrec_jax import features
    if "cats" not in state:
      state["cats"] = [(tb.load_prepared(data_dir, c), c) for c in ("weave", "disc")]
      state["load"] = {c: tb.image_loader(data_dir, c, cat) for cat, c in state["cats"]}
    insts = [i for cat, _ in state["cats"] for i in cat.train]
    ds = grain.MapDataset.source(insts).shuffle(seed=e).map(
        lambda inst: {"index": np.int64(inst.row),
                      "views": features.instance_views(inst, load_image=state["load"][inst.category], **kw)})
    return (x for x in ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads)))

  cur, new_, load_ = _interleaved([current, new, loaded], count, args.epochs)
  return [_row("mvrec", "27 mso views / instance: instance_inputs vs record_views", cur, new_, prep),
          _row("mvrec", "27 mso views / instance: instance_inputs vs image_loader (train.mvrec path)", cur, load_,
               prep)]


# ----------------------------------------------------------------------------------------- derefl

def _sampler_epoch(sampler, epoch: int, steps: int):
  for s in range(epoch * steps, (epoch + 1) * steps):
    b = sampler.batch(s)
    yield {"index": np.arange(len(b["t"]))}


def bench_derefl(work: Path, args) -> list[dict]:
  from PIL import Image

  from derefl_jax import data as data_lib
  from derefl_jax import tfds_builder as tb
  raw = work / "derefl"
  rng = np.random.default_rng(0)
  if not (raw / "done").is_file():
    def photo():
      base = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
      return Image.fromarray(base).resize((320, 240), Image.BICUBIC)
    for i in range(args.derefl_voc):
      p = raw / "train/VOCdevkit/VOC2012/PNGImages" / f"{i:05d}.png"
      p.parent.mkdir(parents=True, exist_ok=True)
      photo().save(p)
    for rel, k in (("train/real", 40), ("train/nature", 40), ("test/real20_420", 20), ("test/Nature", 20)):
      for sub in ("blended", "transmission_layer"):
        (raw / rel / sub).mkdir(parents=True, exist_ok=True)
      for i in range(k):
        photo().save(raw / rel / "blended" / f"{i:03d}.jpg", quality=90)
        photo().save(raw / rel / "transmission_layer" / f"{i:03d}.jpg", quality=90)
    (raw / "done").write_text("1")
  data_dir = work / "prepared_derefl"
  shutil.rmtree(data_dir, ignore_errors=True)
  t0 = time.perf_counter()
  tb.prepare(raw, data_dir)
  prep = time.perf_counter() - t0
  bs, steps = 8, args.derefl_steps
  weights = {"synthetic": 0.6, "real": 0.2, "nature": 0.2}
  kw = dict(weights=weights, batch_size=bs, crop=224, seed=0, num_workers=args.threads)
  state = {}

  def current(e):
    if "s" not in state:
      state["s"] = data_lib.TrainSampler(voc=data_lib.voc_images(raw), real=[
          data_lib.paired_folder(raw / "train" / n, name=n) for n in ("real", "nature")], **kw)
    return _sampler_epoch(state["s"], e, steps)

  def new(e):
    if "p" not in state:
      state["p"] = tb.PreparedTrainSampler(data_dir=data_dir, **kw)
    return _sampler_epoch(state["p"], e, steps)

  rows = [_row("derefl", "train batches (8 x 224 crops): TrainSampler vs PreparedTrainSampler",
               *_interleaved([current, new], steps * bs, args.epochs), prep)]
  names = ["real20", "nature"]
  count = 40

  def cur_test(e):
    sets = data_lib.test_sets(raw, names)
    return (sets[n].load(i) for n in names for i in range(len(sets[n])))

  def new_test(e):
    sets = tb.test_sets(data_dir, names)
    return (sets[n].load(i) for n in names for i in range(len(sets[n])))

  rows.append(_row("derefl", "test sets (load, aligned to 32): PairedFolder vs PreparedPairs",
                   *_interleaved([cur_test, new_test], count, args.epochs), prep))
  return rows


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--methods", nargs="+", default=["lcdh", "mvrec", "derefl"])
  p.add_argument("--epochs", type=int, default=4)
  p.add_argument("--threads", type=int, default=2, help="read-ahead threads, the same for both readers")
  p.add_argument("--workdir", default="/tmp/data_pipeline_bench")
  p.add_argument("--lcdh-items", type=int, default=1000)
  p.add_argument("--lcdh-layouts", nargs="+", default=["paths", "arrays"], choices=["paths", "arrays"])
  p.add_argument("--mvrec-per-class", type=int, default=8)
  p.add_argument("--derefl-voc", type=int, default=200)
  p.add_argument("--derefl-steps", type=int, default=16)
  p.add_argument("--json", default="")
  args = p.parse_args(argv)
  work = Path(args.workdir)
  work.mkdir(parents=True, exist_ok=True)
  rows = []
  for m in args.methods:
    rows += {"lcdh": bench_lcdh, "mvrec": bench_mvrec, "derefl": bench_derefl}[m](work, args)
  print(f"\n{platform.node()} ({os.cpu_count()} CPUs), {args.threads} read threads, {args.epochs} epochs; "
        f"items/s (first epoch | mean of later epochs), ratio = new / current")
  print("| method | what | current first | new first | ratio | current later | new later | ratio | prepare s |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    print(f"| {r['method']} | {r['what']} | {fmt(r['current_first'])} | {fmt(r['new_first'])} | "
          f"{r['ratio_first']:.2f} | {fmt(r['current_later'])} | {fmt(r['new_later'])} | "
          f"{'-' if r['ratio_later'] is None else format(r['ratio_later'], '.2f')} | {fmt(r['prepare_s'])} |")
  if args.json:
    Path(args.json).write_text(json.dumps({"rows": rows, "args": vars(args), "host": platform.node(),
                                           "cpus": os.cpu_count()}, indent=1))
  return rows


if __name__ == "__main__":
  main()
