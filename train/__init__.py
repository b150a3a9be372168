"""Entry points (`python -m train.<method>`), configs and the shared training machinery.

On a CPU-only host one XLA CPU device computes on about one core, so before jax is first
imported we expose the cores as several host devices (a power of two, at most 8) and the
data-parallel machinery splits each batch over them. Set XLA_FLAGS yourself, or
`VPJ_NO_CPU_SPLIT=1`, to opt out; on GPU/TPU hosts the flag only affects the unused CPU backend.
"""
import os as _os
import sys as _sys


def _split_cpu_cores() -> None:
  if "jax" in _sys.modules or _os.environ.get("VPJ_NO_CPU_SPLIT"):
    return
  flags = _os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" in flags:
    return
  cores = len(_os.sched_getaffinity(0)) if hasattr(_os, "sched_getaffinity") else (_os.cpu_count() or 1)
  n = 1
  while n * 2 <= min(cores, 8):
    n *= 2
  if n > 1:
    _os.environ["XLA_FLAGS"] = (flags + f" --xla_force_host_platform_device_count={n}").strip()


_split_cpu_cores()
