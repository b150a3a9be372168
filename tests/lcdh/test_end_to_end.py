"""Tiny end-to-end run of `train.lcdh` on synthetic data: the student beats random codes, the stream
resumes from its checkpoint, outputs are written, and bad configs fail clearly."""
import json
import os

import numpy as np
import pytest

from train import lcdh
from train.configs import lcdh as lcdh_config


def tiny_config(**over):
  c = lcdh_config.get_config("tiny")
  for k, v in over.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


@pytest.mark.slow
def test_tiny_demo_beats_random_and_resumes(tmp_path, capsys):
  wd = str(tmp_path / "run")
  # First only 2 of the 3 rounds, as if the run had stopped there.
  part = lcdh.train_and_evaluate(tiny_config(**{"stream.num_rounds": 2}), wd)
  assert [r["db_size"] for r in part["bits"]["16"]["rounds"]] == [100, 200]
  res = lcdh.train_and_evaluate(tiny_config(), wd)
  out = capsys.readouterr().out
  assert "resumed the stream after round 2" in out
  rounds = res["bits"]["16"]["rounds"]
  assert [r["round"] for r in rounds] == [1, 2, 3]
  assert [r["db_size"] for r in rounds] == [100, 200, 300]   # the database grows by one chunk
  assert rounds[:2] == part["bits"]["16"]["rounds"]          # resumed, not retrained
  final = rounds[-1]
  student = (final["student_i2t"] + final["student_t2i"]) / 2
  random = (final["random_i2t"] + final["random_t2i"]) / 2
  assert student > random + 0.03, final
  for name in ("results.json", "results.txt", "map_per_round.png", "pr_curves.png"):
    assert os.path.exists(os.path.join(wd, name)), name
  with open(os.path.join(wd, "results.json")) as f:
    saved = json.load(f)
  assert saved["bits"]["16"]["final"]["db_size"] == 300
  from train.checkpoint import Checkpointer
  cfg = tiny_config()
  ck = Checkpointer(os.path.join(wd, "K16", "student"))
  assert ck.latest_step() == 3 * cfg.student.steps_per_round  # one checkpoint per finished round
  d, split = lcdh.prepare_data(cfg, wd)
  _, template = lcdh.build_student(cfg, 16, d.tags.shape[1])
  _, extra = ck.restore(template)
  ck.close()
  db = np.asarray(extra["db_indices"])
  assert len(db) == len(set(db)) == 300
  assert not set(db) & set(split.query)                      # queries never enter the database
  np.testing.assert_array_equal(np.sort(db), np.sort(split.database))
  assert set(np.unique(extra["db_image_codes"])) <= {-1, 1}


def test_missing_dataset_and_vgg_weights_fail_clearly(tmp_path):
  c = lcdh_config.get_config("mirflickr")
  c.data_root = str(tmp_path / "nothing_here")
  with pytest.raises(FileNotFoundError, match="mirflickr25k.mat"):
    lcdh.train_and_evaluate(c, str(tmp_path / "wd"))
  c = tiny_config(**{"student.backbone": "vgg16"})
  with pytest.raises(FileNotFoundError, match="vgg_weights"):
    lcdh.build_student(c, 16, 10)


def test_presets_and_unknown_preset():
  for name in ("demo", "tiny", "mirflickr", "nuswide", "iapr", "coco"):
    c = lcdh_config.get_config(name)
    assert c.seed == 0 and c.checkpoint.max_to_keep > 0 and c.log_every_steps > 0
  assert lcdh_config.get_config("mirflickr").split.num_query == 2000
  assert lcdh_config.get_config("nuswide").split.num_query == 2100
  assert lcdh_config.get_config("coco").split.num_query == 5000
  with pytest.raises(ValueError, match="Valid presets"):
    lcdh_config.get_config("imagenet")


@pytest.mark.parametrize("key,value,match", [
    ("bits", (12,), "multiples of 8"),
    ("student.batch_size", 30, "multiple of the"),
    ("stream.chunk_size", 0, "chunk_size must be > 0"),
    ("student.distill_mode", "kl", "distill_mode"),
])
def test_bad_config_fails_before_training(tmp_path, key, value, match):
  with pytest.raises(ValueError, match=match):
    lcdh.train_and_evaluate(tiny_config(**{key: value}), str(tmp_path / "wd"))
  assert not (tmp_path / "wd").exists()
