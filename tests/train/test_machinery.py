"""The shared training machinery: data parallelism, exact resume, multi-host, NaN guard, metrics."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import toy  # noqa: E402

from train import guard, metric_writer, parallel  # noqa: E402

TOY = str(Path(__file__).parent / "toy.py")
REPO = str(Path(__file__).resolve().parents[2])


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_one_device_and_eight_devices_give_same_params(tmp_path):
  assert jax.device_count() == 8, "conftest should expose 8 fake CPU devices"
  p1, _ = toy.run(str(tmp_path / "one"), 6, devices=jax.devices()[:1])
  p8, s8 = toy.run(str(tmp_path / "eight"), 6)
  for a, b in zip(_leaves(p1), _leaves(p8)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # the params really were replicated over all 8 devices and really trained
  leaf = jax.tree_util.tree_leaves(s8.params)[0]
  assert len(leaf.sharding.device_set) == 8
  _, init = toy.make_state(0)
  assert not np.allclose(_leaves(init.params)[0], _leaves(p8)[0])


def test_interrupted_run_resumes_bitwise_equal(tmp_path):
  full, full_state = toy.run(str(tmp_path / "full"), 8, checkpoint_every=3)
  # interrupt: the process dies while computing step 5 (after the checkpoint of step 3)
  workdir = str(tmp_path / "interrupted")
  model, state = toy.make_state(0)
  base = toy.batch_fn_for(0)

  def dying_batch_fn(step):
    if step == 5:
      raise KeyboardInterrupt
    return base(step)

  from train import loop
  with pytest.raises(KeyboardInterrupt):
    loop.fit(state=state, train_step=toy.make_train_step(model), batch_fn=dying_batch_fn, num_steps=8,
             workdir=workdir, checkpoint_every=3, log_every=1)
  assert sorted(int(p) for p in os.listdir(os.path.join(workdir, "checkpoints")) if p.isdigit()) == [3]
  resumed, resumed_state = toy.run(workdir, 8, checkpoint_every=3)
  for a, b in zip(_leaves(full), _leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(_leaves(full_state.opt_state), _leaves(resumed_state.opt_state)):
    np.testing.assert_array_equal(a, b)
  assert int(resumed_state.step) == 8
  # the optax state came back as its NamedTuple types, not lists
  assert type(resumed_state.opt_state) is type(full_state.opt_state)
  rows = metric_writer.read_metrics(workdir)
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 4, 5, 6, 7, 8]


def test_same_seed_same_result_other_seed_differs(tmp_path):
  a, _ = toy.run(str(tmp_path / "a"), 4)
  b, _ = toy.run(str(tmp_path / "b"), 4)
  c, _ = toy.run(str(tmp_path / "c"), 4, seed=1)
  for x, y in zip(_leaves(a), _leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert not np.allclose(_leaves(a)[0], _leaves(c)[0])


def test_nan_guard_names_step_and_last_checkpoint(tmp_path):
  with pytest.raises(guard.NonFiniteError, match=r"step 6.*last good checkpoint is step 4"):
    toy.run(str(tmp_path / "nan"), 10, checkpoint_every=2, nan_at=5)
  ckpts = sorted(int(p) for p in os.listdir(tmp_path / "nan" / "checkpoints") if p.isdigit())
  assert ckpts == [2, 4], "no checkpoint may be written after the NaN"


def test_metrics_jsonl_and_tensorboard(tmp_path):
  toy.run(str(tmp_path / "m"), 3)
  rows = metric_writer.read_metrics(str(tmp_path / "m"))
  assert [r["step"] for r in rows] == [1, 2, 3]
  assert all(np.isfinite(r["loss"]) for r in rows)
  events = list((tmp_path / "m" / "tensorboard").glob("events.out.tfevents.*"))
  assert events and events[0].stat().st_size > 0


def test_shard_batch_errors_clearly_on_indivisible_batch():
  mesh = parallel.make_mesh()
  with pytest.raises(ValueError, match="multiple of 8"):
    parallel.shard_batch({"x": np.zeros((6, 2))}, mesh)
  with pytest.raises(ValueError, match="does not divide over 8 devices"):
    parallel.local_batch_size(12, mesh)


def _worker_env(ndev):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={ndev}"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env["JAX_PLATFORMS"] = "cpu"
  return env


@pytest.mark.timeout(300)
def test_two_process_multihost_matches_single_process_four_devices(tmp_path):
  import portpicker
  port = portpicker.pick_unused_port()
  steps = "4"
  ref = subprocess.run([sys.executable, TOY, str(tmp_path / "ref.npz"), str(tmp_path / "ref"), steps],
                       env=_worker_env(4), capture_output=True, text=True, timeout=240)
  assert ref.returncode == 0, ref.stderr[-3000:]
  workdir = str(tmp_path / "multi")
  procs = [subprocess.Popen([sys.executable, TOY, str(tmp_path / f"p{i}.npz"), workdir, steps,
                             f"127.0.0.1:{port}", "2", str(i)], env=_worker_env(2),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=240) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  want = np.load(tmp_path / "ref.npz")
  assert int(want["ndev"]) == 4 and int(want["nproc"]) == 1
  for i in range(2):
    got = np.load(tmp_path / f"p{i}.npz")
    assert int(got["ndev"]) == 4 and int(got["nproc"]) == 2
    for k in want.files:
      if k not in ("ndev", "nproc"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
  # only process 0 wrote the log, and the run completed all steps
  rows = metric_writer.read_metrics(workdir)
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
