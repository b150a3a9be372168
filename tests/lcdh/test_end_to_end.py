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
  for name in ("results.json", "results.txt", "map_per_round.png", "pr_curves.png",
               "precision_at_n.png"):
    assert os.path.exists(os.path.join(wd, name)), name
  with open(os.path.join(wd, "results.json")) as f:
    saved = json.load(f)
  assert saved["bits"]["16"]["final"]["db_size"] == 300
  # Every round (the resumed ones too) wrote mAP@all, precision@N and PR curves of both
  # directions for student and teacher, as JSON and PNG; the final result holds the last round's.
  for r, row in enumerate(rounds, start=1):
    assert os.path.exists(os.path.join(wd, "K16", "rounds", f"round_{r:03d}.png"))
    with open(os.path.join(wd, "K16", "rounds", f"round_{r:03d}.json")) as f:
      per_round = json.load(f)
    assert per_round["metrics"] == row["metrics"] and per_round["round"] == r
    for model in ("student", "teacher"):
      for direction in ("i2t", "t2i"):
        m = row["metrics"][model][direction]
        assert m["map"] == pytest.approx(row[f"{model}_{direction}"], abs=1e-6)
        assert m["precision_at_n"]["n"] == list(range(1, 100 * r + 1))  # every N up to the db
        assert len(m["precision_at_n"]["precision"]) == 100 * r
        assert m["pr"]["radius"] == list(range(17)) and len(m["pr"]["recall"]) == 17
        assert m["pr"]["recall"][-1] == pytest.approx(1.0)  # radius K retrieves everything
  assert saved["bits"]["16"]["final"]["metrics"] == rounds[-1]["metrics"]
  summary = saved["bits"]["16"]["summary"]
  assert summary["last_round"]["student_i2t"] == final["student_i2t"]
  assert summary["average_over_rounds"]["student_t2i"] == pytest.approx(
      np.mean([h["student_t2i"] for h in rounds]))
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


def test_missing_text_fails_clearly_before_training(tmp_path, capsys):
  """A DCMH-style MIRFlickr file without captions and without tag words stops with the fix."""
  import scipy.io
  from train.config_lib import ConfigError
  root = tmp_path / "mirflickr"
  root.mkdir()
  scipy.io.savemat(root / "mirflickr25k.mat", {"IAll": np.zeros((6, 8, 8, 3), np.uint8),
                                               "YAll": np.eye(6, 4), "LAll": np.eye(6, 3)})
  c = lcdh_config.get_config("mirflickr")
  c.data_root = str(root)
  c.split.num_query, c.split.num_train = 2, 2
  with pytest.raises(ConfigError, match="no captions.*tag_vocab.txt"):
    lcdh.prepare_data(c, str(tmp_path / "wd"))
  (root / "tag_vocab.txt").write_text("sky\ndog\ncat\nsea\n")
  d, _ = lcdh.prepare_data(c, str(tmp_path / "wd"))
  assert d.captions[:5] == ["sky", "dog", "cat", "sea", ""]  # item 5 has no tags: empty, not made up
  out = capsys.readouterr().out
  assert "teacher text = tag words" in out and "student text input = the dataset's own" in out


def test_presets_and_unknown_preset():
  for name in ("demo", "tiny", "mirflickr", "nuswide", "iapr", "coco"):
    c = lcdh_config.get_config(name)
    assert c.seed == 0 and c.checkpoint.max_to_keep > 0 and c.log_every_steps > 0
    assert c.stream.merge_remainder and c.clip.preprocess == "clip"
    if name not in ("demo", "tiny"):
      assert tuple(c.bits) == (16, 32, 64, 128)
  # Published numbers are labelled and none is a target (LCDH's own table was not reachable).
  for ref in lcdh_config.REFERENCES:
    assert {"paper", "table", "protocol", "figure", "bits", "map_i2t", "map_t2i"} <= set(ref)
    assert ref["comparable"] is False and len(ref["bits"]) == len(ref["map_i2t"]) == len(ref["map_t2i"])
  assert "average over rounds" in [r["figure"] for r in lcdh_config.REFERENCES]
  assert "Targets: NONE" in lcdh_config.__doc__
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
    ("clip.preprocess", "stretch", "clip.preprocess"),
    ("eval.precision_ns", (0, 10), "precision@N"),
    ("tag_vocab", "/nonexistent/tags.txt", "tag_vocab"),
])
def test_bad_config_fails_before_training(tmp_path, key, value, match):
  with pytest.raises(ValueError, match=match):
    lcdh.train_and_evaluate(tiny_config(**{key: value}), str(tmp_path / "wd"))
  assert not (tmp_path / "wd").exists()


def test_format_table_reports_last_round_and_average_and_precision():
  rep = lambda m, p: {"map": m, "precision_at_n": {"n": [1, 10, 100, 150], "precision": p},
                      "pr": {"radius": [0], "precision": [0.0], "recall": [0.0]}}
  rounds = []
  for r, (s, t) in enumerate([(0.2, 0.3), (0.4, 0.5)], start=1):
    rounds.append({"round": r, "db_size": 100 * r, "student_i2t": s, "student_t2i": s + 0.01,
                   "teacher_i2t": t, "teacher_t2i": t, "teacher_fused": t, "random_i2t": 0.1,
                   "random_t2i": 0.1, "loss": 1.0,
                   "metrics": {"student": {"i2t": rep(s, [1.0, 0.9, 0.5, 0.4]),
                                           "t2i": rep(s + 0.01, [0.0, 0.1, 0.2, 0.3])},
                               "teacher": {"i2t": rep(t, [1.0] * 4), "t2i": rep(t, [0.5] * 4)}}})
  table = lcdh.format_table({"bits": {"16": {"rounds": rounds}}})
  assert "  16 student I->T | mAP last 0.4000 avg over 2 rounds 0.3000 | P@1 1.0000 P@10 0.9000 P@100 0.5000" in table
  assert "  16 student T->I | mAP last 0.4100 avg over 2 rounds 0.3100 | P@1 0.0000" in table
  assert "  16 teacher T->I | mAP last 0.5000 avg over 2 rounds 0.4000 | P@1 0.5000" in table
