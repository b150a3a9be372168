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
