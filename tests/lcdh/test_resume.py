"""LCDH stream resume equals an uninterrupted run: a stream killed inside a round, rerun with the
same --workdir, ends with the same database codes and the same mAP rows as the run that was never
stopped (the shared finished `lcdh_run` of tests/conftest.py is the uninterrupted reference).

How the stream checkpoints (train/lcdh.py `run_stream`): after every finished round it saves the
student TrainState plus the stream (round count, database indices and codes, history) at step
`round * steps_per_round`. A process that dies inside round r leaves the checkpoint of round r-1;
the rerun restores it and redoes round r from its first step with the same batches and keys.
"""
import os
import shutil

import numpy as np
import orbax.checkpoint as ocp

from train import lcdh

STEPS = 4  # steps_per_round of conftest.LCDH_TINY_RUN


def _extra(workdir, step):
  path = os.path.join(workdir, "K16", "student", "checkpoints", str(step), "extra")
  with ocp.StandardCheckpointer() as ck:
    return {k: np.asarray(v) for k, v in ck.restore(path).items()}


def test_stream_stopped_inside_a_round_resumes_to_the_uninterrupted_result(lcdh_run, tmp_path, monkeypatch,
                                                                           capsys):
  ref_wd, ref, argv = lcdh_run
  wd = tmp_path / "interrupted"
  wd.mkdir()
  # The same run up to its stream: data, cached CLIP features and the finished teacher are copied,
  # so only the student stream runs here (its state is what resume has to get right).
  shutil.copy(ref_wd / "config.json", wd / "config.json")
  for sub in ("data", "features", os.path.join("K16", "teacher")):
    shutil.copytree(ref_wd / sub, wd / sub)

  real_check = lcdh.check_finite
  stop_at = STEPS + 2  # the 2nd step of round 2: after round 1's checkpoint, before round 2's

  def dying_check(metrics, *, step, **kw):
    if step == stop_at:
      raise KeyboardInterrupt  # the process is killed mid-round
    return real_check(metrics, step=step, **kw)

  monkeypatch.setattr(lcdh, "check_finite", dying_check)
  try:
    lcdh.main(argv + [f"--workdir={wd}"])
    raise AssertionError("the stream should have been interrupted")
  except KeyboardInterrupt:
    pass
  ckdir = wd / "K16" / "student" / "checkpoints"
  assert sorted(int(p) for p in os.listdir(ckdir) if p.isdigit()) == [STEPS]  # only round 1 saved
  monkeypatch.setattr(lcdh, "check_finite", real_check)
  capsys.readouterr()
  res = lcdh.main(argv + [f"--workdir={wd}"])
  assert "resumed the stream after round 1" in capsys.readouterr().out

  got, want = res["bits"]["16"]["rounds"], ref["bits"]["16"]["rounds"]
  assert [r["round"] for r in want] == [1, 2, 3]
  assert got == want  # every round's mAP (student, teacher, random) and loss, exactly
  last = 3 * STEPS
  a, b = _extra(wd, last), _extra(ref_wd, last)
  assert set(a) == set(b) and int(a["rounds_done"]) == 3
  for k in ("db_indices", "db_image_codes", "db_text_codes"):
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  # the codes of round 1 (restored) and of rounds 2-3 (recomputed after the resume) are all there
  assert a["db_image_codes"].shape == (300, 16) and set(np.unique(a["db_image_codes"])) <= {-1, 1}
