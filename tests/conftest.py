"""Test setup: 8 fake CPU devices so that sharding is exercised (must run before jax is imported),
and the tiny finished runs that several test files share.

Each shared run is trained once per test session, also under pytest-xdist (the README runs the
suite on 2 workers, each test file on one worker): the first worker that needs a run trains it
into a directory all workers share (`tmp_path_factory.getbasetemp().parent`, guarded by a
`filelock.FileLock`), a worker that asks while it trains waits for it, and every worker then gets
its own copy of the finished run, so no test can see another worker's changes.

A test that reruns an entry point in one of these workdirs must leave it unchanged (the
bad-input tests check this by hashing every file); a test that needs to change one copies it.
"""
import os
import pickle
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Shortened derefl demo: same model (tiny preset), data, losses and evaluation as the default
# demo, fewer steps and smaller pools. Batch 8 = one image per fake CPU device.
DEREFL_SHORT_DEMO = [
    "--config.num_steps=80", "--config.data.batch_size=8", "--config.data.crop=32", "--config.data.pool_size=128",
    "--config.data.eval_pairs=16", "--config.eval.batch_size=1", "--config.log_every_steps=40",
    "--config.checkpoint.every_steps=80", "--config.optim.warmup_steps=10",
]

# A finished LCDH stream small enough to be compile-bound: the `tiny` preset (16 bits, 3 rounds of
# 100 items) with 4 teacher steps and 4 student steps per round, logged at every step.
LCDH_TINY_RUN = [
    "--config=train/configs/lcdh.py:tiny", "--config.teacher.steps=4", "--config.student.steps_per_round=4",
    "--config.log_every_steps=1", "--config.eval.pr_curve=false", "--config.clip.tiny_layers=1",
]


@pytest.fixture(scope="session")
def derefl_demo_argv():
  """The argv of `demo_run` (without --workdir): a rerun with it resumes that run."""
  return list(DEREFL_SHORT_DEMO)


def _finished_run(tmp_path_factory, name: str, make: Callable[[Path], Any]) -> tuple[Path, Any]:
  """(workdir, make's return value) of a run that `make(workdir)` trains, made once per test session.

  Without xdist: trained in a fresh tmp dir. Under xdist: trained once into `<session tmp>/shared_runs/
  <name>` by the first worker (under a file lock; the return value pickled beside it, written last,
  marks the run finished), then copied to a fresh tmp dir of the asking worker.
  """
  if not os.environ.get("PYTEST_XDIST_WORKER"):
    workdir = tmp_path_factory.mktemp(name)
    return workdir, make(workdir)
  from filelock import FileLock

  root = tmp_path_factory.getbasetemp().parent / "shared_runs"  # the session's dir, above each worker's
  root.mkdir(exist_ok=True)
  shared, done = root / name, root / f"{name}.pkl"
  with FileLock(str(root / f"{name}.lock")):
    if not done.is_file():
      if shared.exists():  # a worker failed while training it: start again
        shutil.rmtree(shared)
      shared.mkdir()
      out = make(shared)
      tmp = root / f"{name}.pkl.tmp"
      tmp.write_bytes(pickle.dumps(out))
      os.replace(tmp, done)
    out = pickle.loads(done.read_bytes())
  workdir = tmp_path_factory.mktemp(name)
  shutil.copytree(shared, workdir, dirs_exist_ok=True, symlinks=True)
  return workdir, out


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
  """(workdir, summary) of the shortened `python -m train.derefl` demo (trained once per session)."""
  from train import derefl

  return _finished_run(tmp_path_factory, "derefl_demo",
                       lambda workdir: derefl.main(DEREFL_SHORT_DEMO + [f"--workdir={workdir}"]))


def _lcdh_argv() -> list[str]:
  """LCDH_TINY_RUN with absolute config paths and the tiny preset's optional extras turned off."""
  from train.configs import lcdh as lcdh_config

  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  argv = [a.replace("train/configs", os.path.join(repo, "train", "configs")) for a in LCDH_TINY_RUN]
  tiny = lcdh_config.get_config("tiny")
  if "pretrain" in tiny.clip:  # a random tiny CLIP: the stream, not the CLIP, is under test here
    argv.append("--config.clip.pretrain.steps=0")
  if "round_png" in tiny.eval:
    argv.append("--config.eval.round_png=false")
  return argv


@pytest.fixture(scope="session")
def lcdh_run(tmp_path_factory):
  """(workdir, results, argv) of a finished tiny `python -m train.lcdh` run (uninterrupted; trained once
  per session)."""
  from train import lcdh

  argv = _lcdh_argv()
  workdir, results = _finished_run(tmp_path_factory, "lcdh_tiny",
                                   lambda workdir: lcdh.main(argv + [f"--workdir={workdir}"]))
  return workdir, results, argv
