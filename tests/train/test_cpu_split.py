"""`import train` splits a CPU-only host into several XLA CPU devices (train/__init__.py), and the
VPJ_NO_CPU_SPLIT opt-out, an explicit XLA_FLAGS and an already imported jax all leave it alone."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import train

REPO = str(Path(__file__).resolve().parents[2])

# The child pins itself to `cores` CPUs before importing train, then reports what jax sees.
CHILD = """
import os, sys
cores = int(sys.argv[1])
os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
import train, jax
print(jax.local_device_count(), jax.devices()[0].platform, os.environ.get("XLA_FLAGS", ""))
"""


def _child(cores, **env_over):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "VPJ_NO_CPU_SPLIT")}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""), **env_over)
  out = subprocess.run([sys.executable, "-c", CHILD, str(cores)], env=env, capture_output=True, text=True,
                       timeout=180, cwd=REPO)
  assert out.returncode == 0, out.stderr[-2000:]
  n, platform, flags = out.stdout.split(" ", 2)
  return int(n), platform, flags.strip()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPU cores")
def test_cpu_host_is_split_and_opt_out_keeps_one_device():
  assert _child(2) == (2, "cpu", "--xla_force_host_platform_device_count=2")
  assert _child(2, VPJ_NO_CPU_SPLIT="1") == (1, "cpu", "")


@pytest.mark.parametrize("cores,want", [(1, None), (2, 2), (3, 2), (6, 4), (8, 8), (64, 8)])
def test_device_count_is_the_largest_power_of_two_up_to_8(monkeypatch, cores, want):
  monkeypatch.delitem(sys.modules, "jax", raising=False)  # as before jax's first import
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.delenv("VPJ_NO_CPU_SPLIT", raising=False)
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
  train._split_cpu_cores()  # pylint: disable=protected-access
  if want is None:
    assert "XLA_FLAGS" not in os.environ
  else:
    assert os.environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count={want}"


def test_explicit_flags_opt_out_and_imported_jax_are_respected(monkeypatch):
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)))
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3 --xla_cpu_foo")
  monkeypatch.delitem(sys.modules, "jax", raising=False)
  train._split_cpu_cores()  # pylint: disable=protected-access
  assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=3 --xla_cpu_foo"
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_foo")
  monkeypatch.setenv("VPJ_NO_CPU_SPLIT", "1")
  train._split_cpu_cores()  # pylint: disable=protected-access
  assert os.environ["XLA_FLAGS"] == "--xla_cpu_foo"
  monkeypatch.delenv("VPJ_NO_CPU_SPLIT")
  monkeypatch.undo()
  import jax  # noqa: F401  once jax is imported it is too late to change the device count
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)))
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_foo")
  train._split_cpu_cores()  # pylint: disable=protected-access
  assert os.environ["XLA_FLAGS"] == "--xla_cpu_foo"
