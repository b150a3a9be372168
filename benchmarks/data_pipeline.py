"""Input pipelines: prepared tfds (array_record) + grain vs the current raw-file readers, per method.

    python benchmarks/data_pipeline.py                       # all three, default sizes (~5-8 min here)
    python benchmarks/data_pipeline.py --methods lcdh --repeats 5 --rounds 2 --json out.json

For each method the script writes a synthetic raw dataset of realistic image sizes into
``--workdir`` (kept between runs) and prepares it with the method's tfds builder (timed once:
``prepare_s``). Then every **route** (a way of reading the data: the current reader on the raw
files, or a reader of the prepared dataset) opens the data (``open_s``), reads one warm-up epoch
(the first-epoch rate: opening, cold code paths, caches filling) and ``--repeats`` timed epochs,
each with its wall time and the process's CPU seconds (user + sys of all its threads,
``time.process_time``):

* ``--mode paired`` (default): a method's routes run in one fresh process, one reader at a time,
  their timed epochs alternating (the order rotating), so the k-th epochs of all routes ran
  within seconds of each other: the ratio of a route to the current reader is the median of these
  paired per-epoch ratios, which a load that drifts over minutes hardly moves;
* ``--mode process``: every route alone in its own fresh process (no other route's memory or
  imports), one after the other.

Either way the whole run is repeated ``--rounds`` times in alternating order (new processes).
Reported per route: the median items/s (wall) and items per CPU-second over all timed epochs, the
fastest epoch, and the ratios to the method's current reader. On a shared machine the wall rate
moves with the other jobs' load; the CPU rate is the work per item and moves less (it still grows
when the cores are oversubscribed: caches, SMT, steal), so a wall ratio that the CPU ratio does not
confirm is load, not the reader. ``uptime``'s load averages before and after each process are
printed and stored.

By default every route is a **single reader** (``--threads 0``: the items are read and transformed
in the main thread, derefl's samplers with one worker), so that items/s is the inverse of the work
per item and the CPU seconds are that work; ``--threads N`` gives every route N read-ahead threads.
The fastest timed epoch ("best") is reported too: a shared machine's load only ever slows an epoch.

Routes (the same work after reading in each method's routes: decode, resize, normalise / views /
crops):

* lcdh, DCHMT ``paths`` layout (JPEG 320x240) and DCMH ``arrays`` layout (224 px images in the
  .mat), the student's element (224 px, ImageNet-normalised, BoW, labels), batches of 32:
  ``current`` = ``data.image_dataset`` on ``load_dataset``; ``grain_batch`` =
  ``open_source`` + ``make_dataset(batch_transform=tfds_builder.batch_transform)``;
  ``grain_batch_cache`` = the same with ``cache=tfds_builder.decode_record`` (each record decoded
  once per process, as the raw DCMH reader holds ``IAll``; arrays layout); ``grain_item`` = the
  per-record ``record_transform`` (the first version, for reference); ``load_prepared`` =
  ``image_dataset`` on ``tfds_builder.load_prepared`` without its cache; ``load_prepared_cache``
  = the same with ``cache_gb=4`` (what ``train.lcdh --config.data_dir`` reads by default,
  ``data_cache_gb=4``: the image-file layout's decoded images kept for their next visit).
* mvrec, MVTec-FS layout (256 px PNG), the 27 ``mso`` views of each instance (crops 64/96/128 px,
  resized to 112): ``current`` = ``data.instance_inputs``; ``record_views`` = ``open_source`` +
  ``make_dataset(transform=views_transform)``; ``image_loader`` = ``features.instance_views`` with
  ``tfds_builder.image_loader`` (what ``train.mvrec --config.data_dir`` renders).
* derefl, DSRNet layout (VOC 320x240 PNG, real/nature 320x240 JPEG pairs): ``current_train`` =
  ``TrainSampler`` vs ``prepared_train`` = ``PreparedTrainSampler``, batches of 8 crops of 224 px
  (items = samples); ``current_test`` = ``PairedFolder.load`` vs ``prepared_test`` =
  ``PreparedPairs.load`` (test pairs aligned to 32 px).

The OS page cache holds the raw files and the array_record files alike after the warm-up epoch,
so the steady state measures the readers, not the disk. Each timing is of whatever machine runs it:
say which, and its load.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LCDH_BS, LCDH_SIZE = 32, 224
MVREC_CATS = ("weave", "disc")
MVREC_VIEWS = dict(method="mso", crop_sizes=(64, 96, 128), resize=(112,))
DEREFL_BS = 8

# method -> (current route, [other routes]); a route name is "<method>:<what>"
ROUTES = {
    "lcdh_paths": ("current", ["grain_batch_cache", "grain_batch", "grain_item", "load_prepared",
                             "load_prepared_cache"]),
    "lcdh_arrays": ("current", ["grain_batch_cache", "grain_batch", "grain_item", "load_prepared"]),
    "mvrec": ("current", ["record_views", "image_loader"]),
    "derefl_train": ("current_train", ["prepared_train"]),
    "derefl_test": ("current_test", ["prepared_test"]),
}
WHAT = {
    "lcdh_paths": "lcdh DCHMT paths (JPEG 320x240) -> 224 px batches of 32",
    "lcdh_arrays": "lcdh DCMH .mat arrays (224 px) -> 224 px batches of 32",
    "mvrec": "mvrec 27 mso views / instance",
    "derefl_train": "derefl train batches (8 x 224 crops)",
    "derefl_test": "derefl test pairs (aligned to 32)",
}


# ------------------------------------------------------------------------------------ raw data + prepare

def make_lcdh(work: Path, args) -> dict:
  import scipy.io
  from PIL import Image

  from lcdh_jax import synthetic
  from lcdh_jax import tfds_builder as tb
  n = args.lcdh_items
  raw, rawa = work / "lcdh_paths", work / "lcdh_arrays"
  if not (raw / "tag.mat").is_file() or not (rawa / "synthetic.mat").is_file():
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
  prep = {}
  for layout, root in (("paths", raw), ("arrays", rawa)):
    data_dir = work / f"prepared_lcdh_{layout}"
    shutil.rmtree(data_dir, ignore_errors=True)  # prepare_s: always a fresh preparation
    t0 = time.perf_counter()
    tb.prepare(root, data_dir, dataset="synthetic", num_query=n // 10, num_train=n // 2)
    prep[f"lcdh_{layout}"] = time.perf_counter() - t0
  return prep


def make_mvrec(work: Path, args) -> dict:
  from mvrec_jax import synthetic
  from mvrec_jax import tfds_builder as tb
  raw = work / "mvrec"
  synthetic.make_dataset(raw, categories=MVREC_CATS, image_size=256, n_train=args.mvrec_per_class,
                         n_valid=args.mvrec_per_class, seed=0)
  data_dir = work / "prepared_mvrec"
  shutil.rmtree(data_dir, ignore_errors=True)
  t0 = time.perf_counter()
  for c in MVREC_CATS:
    tb.prepare(raw, data_dir, category=c)
  return {"mvrec": time.perf_counter() - t0}


def make_derefl(work: Path, args) -> dict:
  from PIL import Image

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
  t = time.perf_counter() - t0
  return {"derefl_train": t, "derefl_test": t}


# ------------------------------------------------------------------------------------------ routes
# Each returns (open: () -> state, epoch: (state, e) -> iterable of batches/items, items per epoch).

def _iterate(ds, threads: int):
  """Iterates a ``grain.MapDataset``: in this thread (``threads=0``: one reader) or with read-ahead threads."""
  if threads <= 0:  # (iter(ds) would read ahead with grain's own thread pool)
    return (ds[k] for k in range(len(ds)))
  import grain
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads)))


def route_lcdh(layout: str, what: str, work: Path, args):
  from lcdh_jax import data as data_lib
  from lcdh_jax import tfds_builder as tb
  from train import data_pipeline as dp
  n = args.lcdh_items
  root, data_dir = work / f"lcdh_{layout}", work / f"prepared_lcdh_{layout}"
  split = data_lib.split_indices(n, num_query=n // 10, num_train=n // 2, seed=0)
  count = (len(split.database) // LCDH_BS) * LCDH_BS

  def image_dataset(d, e):
    ds = data_lib.image_dataset(d, split.database, batch_size=LCDH_BS, seed=e, image_size=LCDH_SIZE, repeat=False)
    return _iterate(ds, args.threads)

  if what in ("current", "load_prepared", "load_prepared_cache"):
    def open_():
      if what == "current":
        return data_lib.load_dataset("synthetic", root)
      return tb.load_prepared(data_dir, "synthetic", cache_gb=4.0 if what == "load_prepared_cache" else 0.0)
    return open_, image_dataset, count

  def open_grain():
    return dp.open_source(data_dir, "lcdh_cross_modal/synthetic", "database")

  kw = dict(batch_size=LCDH_BS, num_epochs=1, process_index=0, process_count=1)
  if what == "grain_item":
    tf = {"transform": tb.record_transform(image_size=LCDH_SIZE)}
  elif what in ("grain_batch", "grain_batch_cache"):
    tf = {"batch_transform": tb.batch_transform(image_size=LCDH_SIZE)}
  else:
    raise ValueError(what)
  if what == "grain_batch_cache":
    def open_grain(open_src=open_grain):  # the cache lives as long as the source: across epochs
      from train.data_pipeline import CachedSource
      return CachedSource(open_src(), tb.decode_record(image_size=LCDH_SIZE))

  def epoch(src, e):
    return _iterate(dp.make_dataset(src, seed=e, **tf, **kw), args.threads)
  return open_grain, epoch, count


def route_mvrec(what: str, work: Path, args):
  import grain

  from mvrec_jax import data as data_lib
  from mvrec_jax import features
  from mvrec_jax import tfds_builder as tb
  from train import data_pipeline as dp
  raw, data_dir = work / "mvrec", work / "prepared_mvrec"
  count = sum(len(data_lib.load_category(raw, c).train) for c in MVREC_CATS)
  if what == "current":
    def open_():
      return [i for c in MVREC_CATS for i in data_lib.load_category(raw, c, data_root=raw).train]

    def epoch(insts, e):
      ds = grain.MapDataset.source(insts).shuffle(seed=e).map(
          lambda inst: {"index": np.int64(inst.row), "views": data_lib.instance_inputs(inst, **MVREC_VIEWS)})
      return _iterate(ds, args.threads)
  elif what == "record_views":
    def open_():
      return [dp.open_source(data_dir, f"mvrec_mvtec_fs/{c}", "train") for c in MVREC_CATS]

    def epoch(srcs, e):
      tf = tb.views_transform(**MVREC_VIEWS)
      its = [_iterate(dp.make_dataset(s, transform=tf, seed=e, num_epochs=1, process_index=0, process_count=1),
                      args.threads) for s in srcs]
      return (x for it in its for x in it)
  elif what == "image_loader":  # train.mvrec --config.data_dir: load_prepared + image_loader -> instance_views
    def open_():
      cats = [(tb.load_prepared(data_dir, c), c) for c in MVREC_CATS]
      load = {c: tb.image_loader(data_dir, c, cat) for cat, c in cats}
      return [i for cat, _ in cats for i in cat.train], load

    def epoch(state, e):
      insts, load = state
      ds = grain.MapDataset.source(insts).shuffle(seed=e).map(
          lambda inst: {"index": np.int64(inst.row),
                        "views": features.instance_views(inst, load_image=load[inst.category], **MVREC_VIEWS)})
      return _iterate(ds, args.threads)
  else:
    raise ValueError(what)
  return open_, epoch, count


def route_derefl(what: str, work: Path, args):
  from derefl_jax import data as data_lib
  from derefl_jax import tfds_builder as tb
  raw, data_dir = work / "derefl", work / "prepared_derefl"
  steps = args.derefl_steps
  kw = dict(weights={"synthetic": 0.6, "real": 0.2, "nature": 0.2}, batch_size=DEREFL_BS, crop=224, seed=0,
            num_workers=max(1, args.threads))

  def sampler_epoch(sampler, e):
    for s in range(e * steps, (e + 1) * steps):
      b = sampler.batch(s)
      yield {"index": np.arange(len(b["t"]))}

  names = ["real20", "nature"]

  def test_epoch(sets, e):
    return (sets[n].load(i) for n in names for i in range(len(sets[n])))

  if what == "current_train":
    return (lambda: data_lib.TrainSampler(voc=data_lib.voc_images(raw), real=[
        data_lib.paired_folder(raw / "train" / n, name=n) for n in ("real", "nature")], **kw)), sampler_epoch, \
        steps * DEREFL_BS
  if what == "prepared_train":
    return (lambda: tb.PreparedTrainSampler(data_dir=data_dir, **kw)), sampler_epoch, steps * DEREFL_BS
  if what == "current_test":
    return (lambda: data_lib.test_sets(raw, names)), test_epoch, 40
  if what == "prepared_test":
    return (lambda: tb.test_sets(data_dir, names)), test_epoch, 40
  raise ValueError(what)


def make_route(name: str, work: Path, args):
  method, what = name.split(":")
  if method.startswith("lcdh_"):
    return route_lcdh(method[5:], what, work, args)
  if method == "mvrec":
    return route_mvrec(what, work, args)
  return route_derefl(what, work, args)


def _count(batch) -> int:
  if isinstance(batch, dict) and "index" in batch and np.ndim(batch["index"]):
    return len(batch["index"])
  return 1


def run_route(name: str, work: Path, args) -> dict:
  """One route in this process: open, one warm-up epoch, ``repeats`` timed epochs (wall + CPU)."""
  open_, epoch, count = make_route(name, work, args)
  t0, c0 = time.perf_counter(), time.process_time()
  state = open_()
  open_s, open_cpu = time.perf_counter() - t0, time.process_time() - c0
  walls, cpus, first = [], [], None
  for e in range(1 + args.repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    n = sum(_count(b) for b in epoch(state, e))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if abs(n - count) >= 64:
      raise RuntimeError(f"{name}: epoch read {n} items, expected about {count}")
    if e == 0:
      first = {"items": n, "wall_s": wall + open_s, "cpu_s": cpu + open_cpu}
    else:
      walls.append(n / wall)
      cpus.append(n / cpu)
  return {"route": name, "open_s": open_s, "first": first, "rates": walls, "cpu_rates": cpus}


def run_group(group: str, work: Path, args) -> dict[str, dict]:
  """All routes of ``group`` in this process, one reader at a time: each opened and warmed up (one
  epoch), then ``repeats`` rounds in which every route reads one epoch, the order rotating each round
  (so each route's k-th epoch ran next to the others' k-th epoch: a paired comparison)."""
  names = [f"{group}:{r}" for r in [ROUTES[group][0]] + ROUTES[group][1]]
  routes, out = {}, {}
  for name in names:
    open_, epoch, count = make_route(name, work, args)
    t0, c0 = time.perf_counter(), time.process_time()
    state = open_()
    open_s, open_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    n = sum(_count(b) for b in epoch(state, 0))
    routes[name] = (epoch, state, count)
    out[name] = {"route": name, "open_s": open_s, "rates": [], "cpu_rates": [],
                 "first": {"items": n, "wall_s": time.perf_counter() - t0 + open_s,
                           "cpu_s": time.process_time() - c0 + open_cpu}}
  for rep in range(args.repeats):
    for name in names[rep % len(names):] + names[:rep % len(names)]:
      epoch, state, count = routes[name]
      t0, c0 = time.perf_counter(), time.process_time()
      n = sum(_count(b) for b in epoch(state, rep + 1))
      wall, cpu = time.perf_counter() - t0, time.process_time() - c0
      if abs(n - count) >= 64:
        raise RuntimeError(f"{name}: epoch read {n} items, expected about {count}")
      out[name]["rates"].append(n / wall)
      out[name]["cpu_rates"].append(n / cpu)
  return out


# ------------------------------------------------------------------------------------------ driver

def _load() -> str:
  return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--methods", nargs="+", default=["lcdh", "mvrec", "derefl"], choices=["lcdh", "mvrec", "derefl"])
  p.add_argument("--repeats", type=int, default=4, help="timed epochs per route and round (after 1 warm-up epoch)")
  p.add_argument("--rounds", type=int, default=2, help="times every route runs (alternating order)")
  p.add_argument("--threads", type=int, default=0,
                 help="read-ahead threads, the same for every route (0: one reader, in the main thread)")
  p.add_argument("--workdir", default="/tmp/data_pipeline_bench")
  p.add_argument("--lcdh-items", type=int, default=1000)
  p.add_argument("--lcdh-layouts", nargs="+", default=["paths", "arrays"], choices=["paths", "arrays"])
  p.add_argument("--mvrec-per-class", type=int, default=8)
  p.add_argument("--derefl-voc", type=int, default=200)
  p.add_argument("--derefl-steps", type=int, default=16)
  p.add_argument("--routes", nargs="*", default=None, help="only these groups (e.g. lcdh_arrays derefl_test)")
  p.add_argument("--no-prepare", action="store_true", help="reuse the prepared datasets in --workdir")
  p.add_argument("--json", default="")
  p.add_argument("--mode", default="paired", choices=["paired", "process"],
                 help="paired: a method's routes in one process, epochs alternating (default); process: "
                      "every route alone in its own process")
  p.add_argument("--route", default="", help=argparse.SUPPRESS)  # internal: run one route, print JSON
  p.add_argument("--group", default="", help=argparse.SUPPRESS)  # internal: run one group, print JSON
  args = p.parse_args(argv)
  work = Path(args.workdir)
  work.mkdir(parents=True, exist_ok=True)
  if args.route:
    print("ROUTE_RESULT " + json.dumps(run_route(args.route, work, args)))
    return None
  if args.group:
    print("ROUTE_RESULT " + json.dumps(run_group(args.group, work, args)))
    return None

  groups = [g for g in ROUTES if any(g.startswith(m) for m in args.methods)
            and (not g.startswith("lcdh_") or g[5:] in args.lcdh_layouts) and (not args.routes or g in args.routes)]
  prep = {}
  if not args.no_prepare:
    for m, fn in (("lcdh", make_lcdh), ("mvrec", make_mvrec), ("derefl", make_derefl)):
      if any(g.startswith(m) for g in groups):
        prep.update(fn(work, args))
  passthrough = [f"--workdir={work}", f"--repeats={args.repeats}", f"--threads={args.threads}",
                 f"--lcdh-items={args.lcdh_items}", f"--mvrec-per-class={args.mvrec_per_class}",
                 f"--derefl-voc={args.derefl_voc}", f"--derefl-steps={args.derefl_steps}"]
  names = [f"{g}:{r}" for g in groups for r in [ROUTES[g][0]] + ROUTES[g][1]]
  results: dict[str, list[dict]] = {n: [] for n in names}
  jobs = names if args.mode == "process" else groups
  for rnd in range(args.rounds):
    for job in (jobs if rnd % 2 == 0 else jobs[::-1]):
      before = _load()
      flag = "--route" if args.mode == "process" else "--group"
      r = subprocess.run([sys.executable, __file__, f"{flag}={job}", *passthrough], capture_output=True,
                         text=True, cwd=str(ROOT))
      line = [l for l in r.stdout.splitlines() if l.startswith("ROUTE_RESULT ")]
      if r.returncode != 0 or not line:
        raise RuntimeError(f"{job} failed:\n{r.stderr[-3000:]}")
      res = json.loads(line[-1][len("ROUTE_RESULT "):])
      for one in ([res] if args.mode == "process" else list(res.values())):
        one["load_before"], one["load_after"] = before, _load()
        results[one["route"]].append(one)
        print(f"round {rnd} {one['route']}: median {np.median(one['rates']):.1f} items/s, "
              f"{np.median(one['cpu_rates']):.1f} items/CPU-s, load {before} -> {one['load_after']}", flush=True)

  rows = []
  for g in groups:
    cur = f"{g}:{ROUTES[g][0]}"
    med = lambda n, k: float(np.median([x for r in results[n] for x in r[k]]))  # noqa: E731
    # paired: the route's k-th timed epoch over the current reader's k-th one (same round)
    paired = lambda n, k: float(np.median([a / b for ra, rb in zip(results[n], results[cur])  # noqa: E731
                                           for a, b in zip(ra[k], rb[k])]))
    best = lambda n, k: float(np.max([x for r in results[n] for x in r[k]]))  # noqa: E731
    for name in [cur] + [f"{g}:{r}" for r in ROUTES[g][1]]:
      firsts = [r["first"]["items"] / r["first"]["wall_s"] for r in results[name]]
      rows.append({"group": g, "what": WHAT[g], "route": name.split(":")[1], "rate": med(name, "rates"),
                   "cpu_rate": med(name, "cpu_rates"), "ratio": paired(name, "rates"),
                   "cpu_ratio": paired(name, "cpu_rates"),
                   "best": best(name, "rates"), "best_ratio": best(name, "rates") / best(cur, "rates"),
                   "first": float(np.median(firsts)), "open_s": float(np.median([r["open_s"] for r in results[name]])),
                   "prepare_s": prep.get(g), "loads": [(r["load_before"], r["load_after"]) for r in results[name]]})
  how = ("each route alone in its own process" if args.mode == "process" else
         "a method's routes in one process, epochs alternating")
  print(f"\n{platform.node()} ({os.cpu_count()} CPUs), {args.threads} read threads, 1 warm-up + {args.repeats} timed "
        f"epochs x {args.rounds} rounds per route, {how}; load average now {_load()}")
  print("steady = median items/s of the timed epochs (best = the fastest epoch); CPU = median items per "
        "CPU-second (all threads); ratio / CPU ratio = median over the timed epochs of the route's rate over "
        "the current reader's in the same round and repeat; best ratio = best over best; first = the warm-up "
        "epoch incl. opening")
  print("| data | route | steady items/s | ratio | best items/s | ratio | items/CPU-s | CPU ratio | "
        "first epoch items/s | open s | prepare s |")
  print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
  for r in rows:
    prep_s = "-" if r["prepare_s"] is None else f"{r['prepare_s']:.1f}"
    print(f"| {r['what']} | {r['route']} | {r['rate']:.1f} | {r['ratio']:.2f} | {r['best']:.1f} | "
          f"{r['best_ratio']:.2f} | {r['cpu_rate']:.1f} | {r['cpu_ratio']:.2f} | {r['first']:.1f} | "
          f"{r['open_s']:.2f} | {prep_s} |")
  if args.json:
    Path(args.json).write_text(json.dumps({"rows": rows, "results": results, "args": vars(args),
                                           "host": platform.node(), "cpus": os.cpu_count()}, indent=1))
  return rows


if __name__ == "__main__":
  main()
