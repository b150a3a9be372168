"""The tfds builders of the three methods: fake raw layouts prepared and read back equal the raw readers."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import fakes  # noqa: E402


# ------------------------------------------------------------------------------------------- LCDH

@pytest.mark.parametrize("layout", ["arrays", "paths"])
def test_lcdh_prepared_equals_raw_reader(tmp_path, layout):
  from lcdh_jax import data as data_lib
  from lcdh_jax import tfds_builder as tb
  raw = fakes.make_lcdh_raw(tmp_path / "raw", layout)
  out = tb.prepare(raw, tmp_path / "prep", dataset="synthetic", num_query=5, num_train=7, split_seed=3)
  assert out == tb.dataset_dir(tmp_path / "prep", "synthetic") and tb.is_prepared(tmp_path / "prep", "synthetic")
  ref = data_lib.load_dataset("synthetic", raw)
  got = tb.load_prepared(tmp_path / "prep", "synthetic")
  assert len(got) == len(ref) == 24
  assert (got.images is not None) == (layout == "arrays")  # in memory exactly when the raw reader holds it
  if layout == "arrays":
    assert ref.images.flags.c_contiguous  # loadmat gives Fortran order; the reader copies it once
    lazy = tb.load_prepared(tmp_path / "prep", "synthetic", images_in_memory=False)
    assert lazy.images is None and all(np.array_equal(lazy.image(i, 16), ref.image(i, 16)) for i in range(3))
  np.testing.assert_array_equal(got.tags, ref.tags)
  np.testing.assert_array_equal(got.labels, ref.labels)
  assert got.captions == ref.captions and got.tag_vocab == ref.tag_vocab
  assert got.bow_source == ref.bow_source and got.text_source.startswith(ref.text_source)
  for i in range(len(ref)):  # the same pixels, native size and resized (JPEG and grayscale in `paths`)
    np.testing.assert_array_equal(got.image(i), ref.image(i))
    np.testing.assert_array_equal(got.image(i, 16), ref.image(i, 16))
  # the stored DCMH split: query, then the database in protocol order (train set first)
  split = data_lib.split_indices(len(ref), num_query=5, num_train=7, seed=3)
  q = tb.open_split(tmp_path / "prep", "synthetic", "query")
  db = tb.open_split(tmp_path / "prep", "synthetic", "database")
  assert [int(q[k]["index"]) for k in range(len(q))] == split.query.tolist()
  assert [int(db[k]["index"]) for k in range(len(db))] == split.database.tolist()
  assert got.metadata["num_train"] == 7 and got.metadata["split_seed"] == 3
  # the grain element equals lcdh_jax.data.image_dataset's for the same item
  fn = tb.record_transform(image_size=16, flip_seed=4)
  want = data_lib.image_dataset(ref, split.database[:4], batch_size=4, seed=4, image_size=16, shuffle=False,
                                repeat=False, flip=True)[0]
  els = [fn(db[k], k) for k in range(4)]
  for key in ("index", "image", "bow", "labels"):
    np.testing.assert_array_equal(np.stack([e[key] for e in els]), want[key])
  # the batched transform, on stored records and on records decoded once (make_dataset(cache=)): the same bits
  bt = tb.batch_transform(image_size=16, flip_seed=4)
  dec = tb.decode_record(image_size=16)
  decoded = [dec(db[k], k) for k in range(4)]
  assert decoded[0]["image"].dtype == np.uint8 and decoded[0]["image"].shape == (16, 16, 3)
  for recs in ([db[k] for k in range(4)], decoded):
    got_b = bt(recs, np.arange(4))
    for key in ("index", "image", "bow", "labels"):
      assert got_b[key].dtype == want[key].dtype
      np.testing.assert_array_equal(got_b[key], want[key])
  np.testing.assert_array_equal(fn(decoded[1], 1)["image"], want["image"][1])
  with pytest.raises(ValueError, match="same image_size"):
    tb.record_transform(image_size=8)(decoded[0], 0)


def test_lcdh_decoded_image_cache(tmp_path):
  """cache_gb keeps decoded images (same bits, read-only) up to its budget; the pipeline's batches are unchanged."""
  from lcdh_jax import data as data_lib
  from lcdh_jax import tfds_builder as tb
  raw = fakes.make_lcdh_raw(tmp_path / "raw", "paths", num_samples=12)
  tb.prepare(raw, tmp_path / "prep", dataset="synthetic", num_query=2, num_train=4)
  ref = data_lib.load_dataset("synthetic", raw)
  one = 16 * 16 * 3  # bytes of one decoded 16 px image
  got = tb.load_prepared(tmp_path / "prep", "synthetic", cache_gb=5.5 * one / 2**30)  # room for 5 of them
  for _ in range(2):
    for i in range(len(ref)):
      im = got.image(i, 16)
      np.testing.assert_array_equal(im, ref.image(i, 16))
  info = got.cache_info()
  assert info == {"hits": 5, "misses": 12 + 7, "bytes": 5 * one, "items": 5}
  cached = got.image(0, 16)
  assert cached is got.image(0, 16) and not cached.flags.writeable
  np.testing.assert_array_equal(got.image(0), ref.image(0))  # another size is another entry (not in budget)
  # the student's batches (with flips) read through the cache equal the raw reader's
  idx = np.arange(len(ref))
  kw = dict(batch_size=4, seed=1, image_size=16, repeat=False, flip=True)
  want, ds = data_lib.image_dataset(ref, idx, **kw), data_lib.image_dataset(got, idx, **kw)
  for _ in range(2):
    for k in range(len(want)):
      for key in ("index", "image", "bow", "labels"):
        np.testing.assert_array_equal(ds[k][key], want[k][key])
  assert tb.load_prepared(tmp_path / "prep", "synthetic").cache_info()["items"] == 0  # off by default
  with pytest.raises(ValueError, match="cache_gb must be >= 0"):
    tb.load_prepared(tmp_path / "prep", "synthetic", cache_gb=-1)


def test_imagenet_normalize_table_equals_formula():
  """The uint8 look-up table gives the bits of (x / 255 - mean) / std in float32, for every level and channel."""
  from lcdh_jax import data as data_lib
  mean = np.array([0.485, 0.456, 0.406], np.float32)
  std = np.array([0.229, 0.224, 0.225], np.float32)
  levels = np.stack(np.meshgrid(np.arange(256), np.arange(256), np.arange(256), indexing="ij"), -1)[::5, ::7, ::3]
  x = np.ascontiguousarray(levels.astype(np.uint8))[:, :, :, None, :].repeat(2, axis=3)
  want = (x.astype(np.float32) / 255.0 - mean) / std
  got = data_lib.imagenet_normalize(x)
  assert got.dtype == np.float32 and got.shape == x.shape
  np.testing.assert_array_equal(got, want)
  every = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, 1)
  np.testing.assert_array_equal(data_lib.imagenet_normalize(every), (every.astype(np.float32) / 255.0 - mean) / std)
  np.testing.assert_array_equal(data_lib.imagenet_normalize(x[:, ::-1]), want[:, ::-1])  # strided input
  f = np.linspace(0, 255, 12, dtype=np.float32).reshape(4, 3)  # other dtypes: the formula
  np.testing.assert_array_equal(data_lib.imagenet_normalize(f), (f / 255.0 - mean) / std)


def test_lcdh_unprepared_and_missing_raw_errors(tmp_path):
  from lcdh_jax import tfds_builder as tb
  with pytest.raises(FileNotFoundError, match="prepare it once"):
    tb.load_prepared(tmp_path, "mirflickr")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    tb.prepare(tmp_path / "nothing", tmp_path / "prep", dataset="mirflickr")
  # a DCMH .mat file under another name, given as the file itself
  raw = fakes.make_lcdh_raw(tmp_path / "raw", "arrays", num_samples=12)
  (raw / "synthetic.mat").rename(raw / "my_copy.mat")
  tb.prepare(raw / "my_copy.mat", tmp_path / "prep", dataset="synthetic", num_query=2, num_train=4)
  assert len(tb.load_prepared(tmp_path / "prep", "synthetic")) == 12


# ------------------------------------------------------------------------------------------ MVREC

def test_mvrec_prepared_equals_raw_reader(tmp_path):
  from mvrec_jax import data as data_lib
  from mvrec_jax import tfds_builder as tb
  raw = fakes.make_mvrec_raw(tmp_path / "raw")
  tb.prepare(raw, tmp_path / "prep", category="weave")
  ref = data_lib.load_category(raw, "weave", data_root=raw)
  got = tb.load_prepared(tmp_path / "prep", "weave")
  assert got.class_names == ref.class_names
  modes = set()
  kw = dict(method="ms", crop_sizes=(32, 48), resize=(40, 24))
  for s in ("train", "valid"):
    src = tb.open_split(tmp_path / "prep", "weave", s)
    assert len(src) == len(ref.split(s)) == len(got.split(s))
    for k, (a, b) in enumerate(zip(ref.split(s), got.split(s))):
      assert a.key == b.key and a.bbox == b.bbox and a.label == b.label and a.image_size == b.image_size
      np.testing.assert_array_equal(a.polygon, b.polygon)
      rec = src[k]
      modes.add(tb.decode_image(rec["image"]).mode)
      want = data_lib.instance_inputs(a, **kw)
      have = tb.record_views(rec, **kw)
      for x, y in zip(want, have):
        np.testing.assert_array_equal(x, y)
  assert {"RGBA", "L", "RGB"} <= modes  # image modes are kept as the official reader keeps them


# ----------------------------------------------------------------------------------------- derefl

def test_derefl_prepared_equals_raw_reader(tmp_path):
  from derefl_jax import data as data_lib
  from derefl_jax import tfds_builder as tb
  raw = fakes.make_derefl_raw(tmp_path / "raw")
  out = tb.prepare(raw, tmp_path / "prep")
  assert sorted(out) == sorted(tb.CONFIGS)
  import json
  meta = {c: json.loads((out[c] / "metadata.json").read_text())["images"] for c in out}
  assert meta["voc2012"] == {"stored_as_file": 4, "stored_as_png": 0, "quantized_to_8bit": 0}
  assert meta["test_pairs"]["stored_as_png"] == 1  # the EXIF-rotated JPEG
  ref_sets, got_sets = data_lib.test_sets(raw), tb.test_sets(tmp_path / "prep")
  assert list(got_sets) == list(ref_sets)
  for name, ref in ref_sets.items():
    got = got_sets[name]
    assert got.names == ref.names
    for i in range(len(ref)):
      a, b = ref.load(i), got.load(i)
      assert sorted(a) == sorted(b)
      for key in ("input", "T", "R"):
        if key in a:
          np.testing.assert_array_equal(a[key], b[key])
  real = tb.open_pairs(tmp_path / "prep", "train_pairs", "real")
  ref_real = data_lib.paired_folder(raw / "train" / "real", name="real")
  assert real.names == ref_real.names and len(real) == 3
  # training batches: the same draws on prepared records as on the raw files
  kw = dict(weights={"synthetic": 0.5, "real": 0.3, "nature": 0.2}, batch_size=4, crop=24, seed=7,
            num_workers=1)
  want = data_lib.TrainSampler(voc=data_lib.voc_images(raw),
                               real=[ref_real, data_lib.paired_folder(raw / "train" / "nature", name="nature")],
                               **kw)
  have = tb.PreparedTrainSampler(data_dir=tmp_path / "prep", **kw)
  syn = []
  for step in (0, 1, 5):
    a, b = want.batch(step), have.batch(step)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
    syn += list(a["synthetic"])
  assert any(syn) and not all(syn)  # both kinds of rows were compared


def test_derefl_missing_split_and_16bit(tmp_path):
  from PIL import Image

  from derefl_jax import data as data_lib
  from derefl_jax import tfds_builder as tb
  raw = fakes.make_derefl_raw(tmp_path / "raw")
  sixteen = np.random.default_rng(0).integers(0, 65536, (40, 48), dtype=np.uint16)
  for sub in ("blended", "transmission_layer"):  # a 16-bit grayscale pair: stored rounded to 8 bits
    Image.fromarray(sixteen).save(raw / "test/real20_420" / sub / "z16.png")
  tb.prepare(raw, tmp_path / "prep", configs=["test_pairs"])
  import json
  assert json.loads((tb.dataset_dir(tmp_path / "prep", "test_pairs") / "metadata.json").read_text()
                    )["images"]["quantized_to_8bit"] == 2
  got = tb.test_sets(tmp_path / "prep", ["real20"])["real20"]
  k = got.names.index("z16.png")
  ref = data_lib.read_image(raw / "test/real20_420/blended/z16.png")
  assert ref.dtype == np.float32
  np.testing.assert_allclose(got.load(k, multiple=None)["input"], ref, atol=0.5 / 255 + 1e-6)
  with pytest.raises(FileNotFoundError, match="prepare them once"):
    tb.test_sets(tmp_path / "prep", ["wild"])
  with pytest.raises(ValueError, match="Unknown test set"):
    tb.test_sets(tmp_path / "prep", ["sun"])


def test_mvrec_real_mvtec_fs_csvs(tmp_path):
  """The official transistor CSVs (annotations of the real benchmark), with blank images in their place."""
  from PIL import Image

  from mvrec_jax import data as data_lib
  from mvrec_jax import tfds_builder as tb
  csvs = Path(__file__).resolve().parents[2] / "../shared/fixtures/mvtec_fs_config"
  if not (csvs / "transistor_config1").is_dir():
    pytest.skip("../shared/fixtures/mvtec_fs_config is absent")
  ann = data_lib.load_category(csvs, "transistor")
  blank = Image.new("L", (1024, 1024))
  for inst in ann.train + ann.valid:  # MVTec-FS image-archive layout: <root>/image/<part>/<img_rel_path>
    p = tmp_path / "images" / "image" / "transistor" / inst.img_rel_path
    if not p.exists():
      p.parent.mkdir(parents=True, exist_ok=True)
      blank.save(p)
  tb.prepare(tmp_path / "images", tmp_path / "prep", category="transistor", config_root=csvs)
  ref = data_lib.load_category(csvs, "transistor", data_root=tmp_path / "images")
  got = tb.load_prepared(tmp_path / "prep", "transistor")
  assert got.class_names == data_lib.OFFICIAL_CLASS_NAMES["transistor"] == ref.class_names
  for s in ("train", "valid"):
    assert [i.key for i in got.split(s)] == [i.key for i in ref.split(s)] and len(ref.split(s)) > 10
    for a, b in zip(ref.split(s), got.split(s)):
      assert a.bbox == b.bbox and a.label == b.label and a.image_size == b.image_size
      np.testing.assert_array_equal(a.polygon, b.polygon)
  want = data_lib.instance_inputs(ref.valid[0], method="ms")
  have = tb.record_views(tb.open_split(tmp_path / "prep", "transistor", "valid")[0], method="ms")
  for x, y in zip(want, have):
    np.testing.assert_array_equal(x, y)
