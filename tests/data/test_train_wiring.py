"""`--config.data_dir` in the train scripts: the prepared tfds dataset gives the same data as the raw files."""
import numpy as np


def test_lcdh_prepare_data_from_data_dir_equals_raw(tmp_path):
  from train import lcdh
  from train.configs import lcdh as lcdh_configs
  c = lcdh_configs.get_config("tiny")
  c.synthetic.num_samples = 240
  c.data_dir = str(tmp_path / "tfds")
  first, split1 = lcdh.prepare_data(c, str(tmp_path))  # generates the raw set, prepares, reads
  again, _ = lcdh.prepare_data(c, str(tmp_path))       # reads the prepared dataset only
  raw_config = c.copy_and_resolve_references()
  raw_config.data_dir = ""
  raw, split = lcdh.prepare_data(raw_config, str(tmp_path))
  assert type(first).__name__ == "PreparedCrossModalData" and type(raw).__name__ == "CrossModalData"
  for d in (first, again):
    np.testing.assert_array_equal(d.images, raw.images)
    np.testing.assert_array_equal(d.tags, raw.tags)
    np.testing.assert_array_equal(d.labels, raw.labels)
    assert d.captions == raw.captions
  for a, b in ((split1.query, split.query), (split1.database, split.database), (split1.train, split.train)):
    np.testing.assert_array_equal(a, b)


def test_derefl_data_dir_gives_the_same_batches_and_test_sets(tmp_path):
  import sys
  from pathlib import Path
  sys.path.insert(0, str(Path(__file__).parent))
  import fakes
  from train import derefl, parallel
  from train.configs import derefl as derefl_configs
  c = derefl_configs.get_config("paper")
  c.data.root = str(fakes.make_derefl_raw(tmp_path / "raw"))
  c.data.crop, c.data.batch_size, c.data.num_workers = 24, 8, 1
  c.data.test_sets = ("real20", "wild", "nature")
  mesh = parallel.make_mesh()
  raw_sampler, raw_tests = derefl._batch_fn(c, mesh), derefl._test_folders(c)
  c.data.data_dir = str(tmp_path / "tfds")
  sampler = derefl._batch_fn(c, mesh)  # prepares voc2012 + train_pairs from data.root, then reads them
  tests = derefl._test_folders(c)      # prepares test_pairs + sir2
  assert type(sampler).__name__ == "PreparedTrainSampler"
  for step in (0, 3):
    a, b = raw_sampler(step), sampler(step)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  assert list(tests) == list(raw_tests)
  for name in tests:
    assert len(tests[name]) == len(raw_tests[name])
    np.testing.assert_array_equal(tests[name].load(0)["input"], raw_tests[name].load(0)["input"])


def _mvrec_tiny(data_root):
  from train.configs import mvrec as mvrec_configs
  c = mvrec_configs.get_config("demo")
  c.synthetic.categories, c.synthetic.n_train, c.synthetic.n_valid, c.synthetic.image_size = ("weave",), 2, 1, 64
  c.views.crop_sizes, c.views.resize = (16.0, 24.0, 32.0), (32,)
  c.alpha_clip.tiny_width, c.alpha_clip.tiny_layers, c.alpha_clip.tiny_projection_dim = 16, 1, 16
  c.protocol.shots, c.protocol.seeds, c.protocol.num_devices = (1,), (0, 1), 1
  c.protocol.classifiers = ("zip_adapter",)
  c.plots = False
  c.data_root = str(data_root)
  return c


def test_mvrec_data_dir_gives_the_same_features_and_results(tmp_path):
  import pytest
  from train import mvrec
  from train.config_lib import ConfigError
  c = _mvrec_tiny(tmp_path / "raw")
  raw = mvrec.train_and_evaluate(c, str(tmp_path / "run_raw"))
  c.data_dir = str(tmp_path / "tfds")
  prep = mvrec.train_and_evaluate(c, str(tmp_path / "run_tfds"))  # prepares weave from data_root, then reads it
  assert (tmp_path / "tfds" / "mvrec_mvtec_fs" / "weave" / "1.0.0" / "dataset_info.json").is_file()
  assert prep["categories"]["weave"]["accuracy"] == raw["categories"]["weave"]["accuracy"]
  feats = {}
  for run in ("run_raw", "run_tfds"):  # the same cache entries (names = key digests), the same features
    feats[run] = {p.name: np.load(p)["features"] for p in sorted((tmp_path / run / "features").glob("*.npz"))}
  assert list(feats["run_raw"]) == list(feats["run_tfds"]) and len(feats["run_raw"]) == 2
  for name, f in feats["run_raw"].items():
    np.testing.assert_array_equal(f, feats["run_tfds"][name])
  # later runs need only data_dir: mvtec_fs with no raw layout at all finds and reads the prepared category
  m = _mvrec_tiny("")
  m.source, m.data_dir = "mvtec_fs", str(tmp_path / "tfds")
  assert [cat for cat, _ in mvrec._category_sources(m, str(tmp_path / "run_prepared_only"))] == ["weave"]
  cat, load_image = mvrec._prepared_category(m, "weave", "", "")
  assert len(cat.valid) == raw["categories"]["weave"]["num_query"]
  from mvrec_jax import data as mvrec_data
  ref = mvrec_data.load_category(tmp_path / "raw", "weave", data_root=tmp_path / "raw")
  assert [i.key for i in cat.train] == [i.key for i in ref.train]
  np.testing.assert_array_equal(np.asarray(load_image(cat.train[3])), np.asarray(
      mvrec_data.load_image(ref.train[3].image_path)))
  # a prepared category that no longer matches the CSVs under config_root is refused
  other = _mvrec_tiny(tmp_path / "raw2")
  other.synthetic.n_valid, other.data_dir = 2, str(tmp_path / "tfds")
  with pytest.raises(ConfigError, match="differs from the annotation CSVs"):
    mvrec.train_and_evaluate(other, str(tmp_path / "run_other"))
  m.data_dir = str(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match="data_root"):
    mvrec.train_and_evaluate(m, str(tmp_path / "run_none"))
