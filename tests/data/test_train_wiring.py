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
