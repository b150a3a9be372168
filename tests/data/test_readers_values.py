"""Every data reader, compared value by value with what the test wrote in the real on-disk layout.

For each layout the readers accept (LCDH: the DCMH single ``.mat`` in its three image orders, the
DCHMT ``index/label/caption/tag.mat`` layout and its ``caption.txt`` / no-``tag.mat`` variants, the
raw image folder; MVREC: MVTec-FS images + CSVs under the three image layouts, an official and a
user category; derefl: the DSRNet train/test pair folders and VOC2012) the test writes a tiny
dataset whose every value it knows (pixels, labels, BoW, captions, boxes, polygons, ids) and
asserts that the raw reader returns exactly those values, then that the prepared tfds dataset
read with grain (``train.data_pipeline``: ``open_source`` + ``make_dataset``, shuffled, and the
batched / cached routes) and the packages' ``load_prepared`` return them too. The expected values
come from the test's own arrays, never from a reader.
"""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import fakes  # noqa: E402

from train import data_pipeline as dp  # noqa: E402


def _text(x) -> str:
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def _grain_records(data_dir, name, split, seed=3):
  """Every record of a prepared split through grain (shuffled; one epoch), as (position, record)."""
  src = dp.open_source(data_dir, name, split)
  ds = dp.make_dataset(src, transform=lambda rec, pos: (pos, rec), seed=seed, num_epochs=1, process_index=0,
                       process_count=1)
  recs = [ds[k] for k in range(len(ds))]
  assert sorted(pos for pos, _ in recs) == list(range(len(src)))
  return recs


# ------------------------------------------------------------------------------------------- LCDH

def _lcdh_expected_image(v, i, gray_item=None):
  im = v["images"][i]
  return np.repeat(im[..., :1], 3, axis=-1) if i == gray_item else im


def _assert_lcdh(d, v, *, captions, bow, gray_item=None):
  n = len(v["images"])
  assert len(d) == n
  for i in range(n):
    np.testing.assert_array_equal(d.image(i), _lcdh_expected_image(v, i, gray_item))
  assert d.tags.dtype == np.float32 and d.labels.dtype == np.float32
  np.testing.assert_array_equal(d.tags, bow)
  np.testing.assert_array_equal(d.labels, v["labels"])
  assert list(d.captions) == captions


def _assert_lcdh_prepared(raw, tmp_path, v, *, captions, bow, gray_item=None):
  """tfds route: load_prepared, every record through grain, and the batched (+ cached) transforms."""
  from lcdh_jax import data as data_lib
  from lcdh_jax import tfds_builder as tb
  n = len(v["images"])
  tb.prepare(raw, tmp_path / "prep", dataset="synthetic", num_query=2, num_train=2, split_seed=1)
  _assert_lcdh(tb.load_prepared(tmp_path / "prep", "synthetic"), v, captions=captions, bow=bow,
               gray_item=gray_item)
  seen = []
  for split in ("query", "database"):
    for _, rec in _grain_records(tmp_path / "prep", "lcdh_cross_modal/synthetic", split):
      i = int(rec["index"])  # the item's id in the raw dataset
      seen.append(i)
      np.testing.assert_array_equal(tb.decode_image(rec["image"]), _lcdh_expected_image(v, i, gray_item))
      np.testing.assert_array_equal(rec["bow"], bow[i])
      np.testing.assert_array_equal(rec["labels"], v["labels"][i])
      assert _text(rec["caption"]) == captions[i]
  assert sorted(seen) == list(range(n))
  # the batched route (one __getitems__ a batch) and the cached one (decoded once per process)
  src = dp.open_source(tmp_path / "prep", "lcdh_cross_modal/synthetic", "database")
  want = np.stack([_lcdh_expected_image(v, i, gray_item) for i in range(n)])
  for cache in (None, tb.decode_record(image_size=None)):
    ds = dp.make_dataset(src, batch_transform=tb.batch_transform(image_size=None), cache=cache, batch_size=2,
                         seed=5, num_epochs=2, process_index=0, process_count=1)
    for step in range(len(ds)):
      b = ds[step]
      idx = b["index"]
      np.testing.assert_array_equal(b["image"], data_lib.imagenet_normalize(want[idx]))
      np.testing.assert_array_equal(b["bow"], bow[idx])
      np.testing.assert_array_equal(b["labels"], v["labels"][idx])


@pytest.mark.parametrize("order,key", [("nhwc", "IAll"), ("hwcn", "IAll"), ("nchw", "images")])
def test_lcdh_dcmh_mat_values(tmp_path, order, key):
  from lcdh_jax import data as data_lib
  v = fakes.lcdh_values()
  raw = fakes.write_lcdh_arrays(tmp_path / "raw", v, order=order, key=key)
  d = data_lib.load_dataset("synthetic", raw)
  assert d.images is not None and d.images.shape == v["images"].shape
  _assert_lcdh(d, v, captions=v["captions"], bow=v["tags"])
  if order == "hwcn":
    _assert_lcdh_prepared(raw, tmp_path, v, captions=v["captions"], bow=v["tags"])


def test_lcdh_dcmh_mat_text_from_tag_vocab(tmp_path):
  from lcdh_jax import data as data_lib
  v = fakes.lcdh_values()
  raw = fakes.write_lcdh_arrays(tmp_path / "raw", v, with_caption=False)
  d = data_lib.load_dataset("synthetic", raw)
  # no caption key: the text is the words of each item's non-zero tag columns, in column order
  words = [" ".join(w for w, t in zip(v["vocab"], row) if t) for row in v["tags"]]
  _assert_lcdh(d, v, captions=words, bow=v["tags"])
  assert d.tag_vocab == v["vocab"]


@pytest.mark.parametrize("captions,with_tags", [("mat", True), ("txt", False)])
def test_lcdh_dchmt_paths_values(tmp_path, captions, with_tags):
  from lcdh_jax import data as data_lib
  v = fakes.lcdh_values()
  raw = fakes.write_lcdh_paths(tmp_path / "raw", v, captions=captions, with_tags=with_tags)
  d = data_lib.load_dataset("synthetic", raw)
  assert d.images is None and [Path(p).name for p in d.image_paths] == [f"{i:03d}.png" for i in range(6)]
  if with_tags:
    bow = v["tags"]  # tag.mat as is (counts kept)
  else:  # built from the captions over tag_vocab.txt: 1 where the tag word is in the caption
    bow = np.array([[1.0 if w in c.split() else 0.0 for w in v["vocab"]] for c in v["captions"]], np.float32)
    np.testing.assert_array_equal(bow, (v["tags"] > 0).astype(np.float32))  # the captions hold the tag words
  _assert_lcdh(d, v, captions=v["captions"], bow=bow, gray_item=1)
  assert d.tag_vocab == v["vocab"]
  if with_tags:
    _assert_lcdh_prepared(raw, tmp_path, v, captions=v["captions"], bow=bow, gray_item=1)


def test_lcdh_image_folder_values(tmp_path):
  from lcdh_jax import data as data_lib
  v = fakes.lcdh_values()
  raw = fakes.write_lcdh_folder(tmp_path / "raw", v)
  d = data_lib.load_dataset("synthetic", raw)
  bow = (v["tags"] > 0).astype(np.float32)  # binary BoW of the captions over tag_vocab.txt
  _assert_lcdh(d, v, captions=v["captions"], bow=bow)
  _assert_lcdh_prepared(raw, tmp_path, v, captions=v["captions"], bow=bow)


# ------------------------------------------------------------------------------------------ MVREC

def _mvrec_rows():
  rng = np.random.default_rng(2)
  rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
  gray = rng.integers(0, 256, (24, 16), dtype=np.uint8)
  rgba = rng.integers(0, 256, (18, 22, 4), dtype=np.uint8)
  return {
      "train": [  # two instances on one image; one without bbox columns (the polygon's min/max)
          {"image": rgb, "name": "000.png", "defect": "scratch", "label": "scratch", "id": "7",
           "points": [[2.0, 3.0], [12.5, 3.0], [12.5, 9.0]], "bbox": (2.0, 3.0, 12.5, 9.0)},
          {"image": rgb, "name": "000.png", "defect": "scratch", "label": "dent", "id": "8",
           "points": [[20, 10], [28, 11], [25, 18], [21, 17]], "bbox": (20.0, 10.0, 28.0, 18.0)},
          {"image": gray, "name": "001.png", "defect": "dent", "label": "dent", "id": "9",
           "points": [[1, 1], [9, 2], [5, 20]]},
      ],
      "valid": [{"image": rgba, "name": "002.png", "defect": "dent", "label": "scratch", "id": "3",
                 "points": [[4, 4], [15, 5], [10, 12]], "bbox": (4.0, 4.0, 15.0, 12.0)}],
  }


def _assert_instances(insts, rows, category, split, class_names):
  assert len(insts) == len(rows)
  for k, (inst, row) in enumerate(zip(insts, rows)):
    assert inst.category == category and inst.split == split and inst.row == k
    assert inst.instance_id == row["id"] and inst.class_name == row["label"]
    assert inst.label == class_names.index(row["label"])
    assert inst.image_size == row["image"].shape[:2]
    assert inst.img_rel_path == f"{'training' if split == 'train' else 'testing'}/{row['defect']}/{row['name']}"
    assert inst.polygon.dtype == np.float64
    np.testing.assert_array_equal(inst.polygon, np.asarray(row["points"], np.float64))
    pts = np.asarray(row["points"], np.float64)
    want_box = row.get("bbox") or (pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max())
    assert inst.bbox == tuple(float(x) for x in want_box)


@pytest.mark.parametrize("category,layout", [("widget", "image"), ("widget", "part"), ("widget", "mvtec_ad"),
                                             ("bottle", "image")])
def test_mvrec_mvtec_fs_values(tmp_path, category, layout):
  from mvrec_jax import data as data_lib
  from mvrec_jax import tfds_builder as tb
  rows = _mvrec_rows()
  if category == "bottle":  # an official category: label ids in the official class order
    for r, lab in zip(rows["train"] + rows["valid"], ("contamination", "broken_small", "broken_small",
                                                      "contamination")):
      r["label"] = lab
  root = fakes.write_mvtec_fs(tmp_path / "raw", category, rows, image_layout=layout)
  cat = data_lib.load_category(root, category, data_root=root)
  names = ("broken_large", "broken_small", "contamination") if category == "bottle" else ("dent", "scratch")
  assert cat.class_names == names
  for split in ("train", "valid"):
    _assert_instances(cat.split(split), rows[split], category, split, names)
    for inst, row in zip(cat.split(split), rows[split]):
      img = data_lib.load_image(inst.image_path)
      assert img.mode == ("L" if row["image"].ndim == 2 else {3: "RGB", 4: "RGBA"}[row["image"].shape[2]])
      np.testing.assert_array_equal(np.asarray(img), row["image"])
  if layout != "image" and category == "widget":
    return  # one tfds preparation per category is enough: the records do not depend on where the file was
  tb.prepare(root, tmp_path / "prep", category=category, config_root=root)
  got = tb.load_prepared(tmp_path / "prep", category)
  assert got.class_names == names
  load = tb.image_loader(tmp_path / "prep", category, got)
  for split in ("train", "valid"):
    _assert_instances(got.split(split), rows[split], category, split, names)
    for inst, row in zip(got.split(split), rows[split]):
      np.testing.assert_array_equal(np.asarray(load(inst)), row["image"])
    for pos, rec in _grain_records(tmp_path / "prep", f"mvrec_mvtec_fs/{category}", split):
      row = rows[split][int(rec["row"])]
      assert pos == int(rec["row"])  # stored in CSV row order
      np.testing.assert_array_equal(np.asarray(tb.record_image(rec)), row["image"])
      assert int(rec["label"]) == names.index(row["label"]) and _text(rec["class_name"]) == row["label"]
      np.testing.assert_array_equal(rec["polygon"], np.asarray(row["points"], np.float64))
      pts = np.asarray(row["points"], np.float64)
      want_box = row.get("bbox") or (pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max())
      np.testing.assert_array_equal(rec["bbox"], np.asarray(want_box))
      assert tuple(int(x) for x in rec["image_size"]) == row["image"].shape[:2]
      assert _text(rec["instance_id"]) == row["id"]


# ----------------------------------------------------------------------------------------- derefl

def _derefl_write(root: Path):
  """The DSRNet layout with known pixels; returns {set: [(name, {blended, transmission[, reflection]})]}
  and the VOC images. A grayscale and an RGBA file read back as RGB; pairs matched by stem across
  extensions (.png / .bmp)."""
  rng = np.random.default_rng(9)
  u8 = lambda h, w, c=3: rng.integers(0, 256, (h, w, c) if c else (h, w), dtype=np.uint8)  # noqa: E731
  sets = {"train/real": False, "train/nature": False, "test/real20_420": False, "test/Nature": False,
          "test/SIR2/SolidObjectDataset": True, "test/SIR2/PostcardDataset": True, "test/SIR2/WildSceneDataset": True}
  want = {}
  for rel, has_r in sets.items():
    items = []
    for i, (h, w) in enumerate(((20, 26), (17, 31))):
      ims = {"blended": u8(h, w), "transmission": u8(h, w)}
      if has_r:
        ims["reflection"] = u8(h, w)
      name = f"{i:02d}.png"
      for key, folder in (("blended", "blended"), ("transmission", "transmission_layer"),
                          ("reflection", "reflection_layer")):
        if key in ims:
          ext = ".bmp" if (key == "transmission" and i == 1) else ".png"  # paired by stem
          fakes._save(root / rel / folder / f"{i:02d}{ext}", ims[key])  # pylint: disable=protected-access
      items.append((name, ims))
    want[rel] = items
  # grayscale blended and RGBA transmission (alpha dropped) in the real20 set
  g, a = u8(15, 19, 0), u8(15, 19, 4)
  fakes._save(root / "test/real20_420/blended/02.png", g)  # pylint: disable=protected-access
  fakes._save(root / "test/real20_420/transmission_layer/02.png", a)  # pylint: disable=protected-access
  want["test/real20_420"].append(("02.png", {"blended": np.repeat(g[..., None], 3, -1), "transmission": a[..., :3]}))
  voc = []
  for i in range(3):
    im = u8(21 + i, 23)
    fakes._save(root / "train/VOCdevkit/VOC2012/PNGImages" / f"{i:04d}.png", im)  # pylint: disable=protected-access
    voc.append((f"{i:04d}.png", im))
  return want, voc


TEST_REL = {"real20": "test/real20_420", "nature": "test/Nature", "objects": "test/SIR2/SolidObjectDataset",
            "postcard": "test/SIR2/PostcardDataset", "wild": "test/SIR2/WildSceneDataset"}


def test_derefl_dsrnet_layout_values(tmp_path):
  from derefl_jax import data as data_lib
  from derefl_jax import tfds_builder as tb
  root = tmp_path / "raw"
  want, voc = _derefl_write(root)
  # raw readers
  files = data_lib.voc_images(root)
  assert [p.name for p in files] == [n for n, _ in voc]
  for p, (_, im) in zip(files, voc):
    got = data_lib.read_image(p)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, im)
  raw_sets = data_lib.test_sets(root)
  folders = [(TEST_REL[n], f) for n, f in raw_sets.items()] + [
      (f"train/{n}", data_lib.paired_folder(root / "train" / n, name=n)) for n in ("real", "nature")]
  for rel, folder in folders:
    items = want[rel]
    assert folder.names == [n for n, _ in items]
    for i, (_, ims) in enumerate(items):
      out = folder.load(i, multiple=None)
      for key, field in (("input", "blended"), ("T", "transmission"), ("R", "reflection")):
        assert (key in out) == (field in ims)
        if field in ims:
          assert out[key].dtype == np.float32
          np.testing.assert_array_equal(out[key], ims[field].astype(np.float32) / 255.0)
      np.testing.assert_array_equal(data_lib.read_image(folder.transmission[i]), ims["transmission"])
  # prepared: test sets, training pairs, VOC, and every record through grain
  tb.prepare(root, tmp_path / "prep")
  prep_sets = tb.test_sets(tmp_path / "prep")
  assert list(prep_sets) == list(raw_sets)
  for rel, pp in [(TEST_REL[n], pp) for n, pp in prep_sets.items()] + [
      (f"train/{n}", tb.open_pairs(tmp_path / "prep", "train_pairs", n)) for n in ("real", "nature")]:
    items = want[rel]
    assert pp.names == [n for n, _ in items]
    for i, (_, ims) in enumerate(items):
      got = pp.images(i)
      assert sorted(got) == sorted(ims)
      for field in ims:
        assert got[field].dtype == np.uint8
        np.testing.assert_array_equal(got[field], ims[field])
      out = pp.load(i, multiple=None)
      np.testing.assert_array_equal(out["input"], ims["blended"].astype(np.float32) / 255.0)
      np.testing.assert_array_equal(out["T"], ims["transmission"].astype(np.float32) / 255.0)
  for config, split, rel in (("test_pairs", "real20", "test/real20_420"), ("sir2", "wild", "test/SIR2/WildSceneDataset"),
                             ("train_pairs", "nature", "train/nature")):
    items = dict(want[rel])
    recs = _grain_records(tmp_path / "prep", f"derefl_reflection/{config}", split)
    assert [_text(r["name"]) for _, r in sorted(recs, key=lambda x: x[0])] == [n for n, _ in want[rel]]
    for _, rec in recs:
      ims = items[_text(rec["name"])]
      for field in ims:
        np.testing.assert_array_equal(tb.decode_image(rec[field]), ims[field])
  recs = _grain_records(tmp_path / "prep", "derefl_reflection/voc2012", "train")
  assert [_text(r["name"]) for _, r in sorted(recs, key=lambda x: x[0])] == [n for n, _ in voc]
  for _, rec in recs:
    np.testing.assert_array_equal(tb.decode_image(rec["image"]), dict(voc)[_text(rec["name"])])
