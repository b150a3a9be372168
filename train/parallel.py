"""Data parallelism over all devices of all hosts: a 1-D `data` mesh, sharded batches, replicated params.

The same code runs on one CPU, on 8 TPU cores and on many hosts: each process feeds its host-local
slice of the global batch, `shard_batch` assembles the global array, parameters are replicated and
XLA inserts the gradient all-reduce.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, *, auto: bool = False) -> bool:
  """Starts `jax.distributed` when multi-host settings are given (or `auto` for TPU pods/SLURM).

  On CPU the cross-process collectives use gloo. Returns True when distributed mode is on.
  """
  if not auto and coordinator_address is None and num_processes is None:
    return False
  if not auto and (coordinator_address is None or num_processes is None or process_id is None):
    from train.config_lib import UserError  # pylint: disable=import-outside-toplevel
    raise UserError("Multi-host runs need all of --coordinator_address, --num_processes and --process_id "
                     f"(got {coordinator_address!r}, {num_processes!r}, {process_id!r}).")
  try:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except Exception:  # pragma: no cover - option absent on some builds
    pass
  if auto:
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  return True


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh with axis `data` over `devices` (default: every device of every process)."""
  devices = list(jax.devices() if devices is None else devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data`, other axes whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array."""
  return NamedSharding(mesh, P())


def local_device_count(mesh: Mesh) -> int:
  """Devices of `mesh` that belong to this process."""
  return sum(d.process_index == jax.process_index() for d in mesh.devices.flat)


def local_batch_size(global_batch_size: int, mesh: Mesh | None = None, *, key: str = "") -> int:
  """This process's share of a global batch; a `UserError` if it does not divide evenly.

  `key` names the config field in the message (e.g. "data.batch_size").
  """
  nproc = jax.process_count()
  ndev = mesh.devices.size if mesh is not None else jax.device_count()
  if global_batch_size <= 0 or global_batch_size % ndev:
    from train.config_lib import UserError  # pylint: disable=import-outside-toplevel
    fix = ndev * max(1, -(-global_batch_size // ndev))
    where = f"config.{key}={global_batch_size}" if key else f"The global batch size {global_batch_size}"
    raise UserError(f"{where} does not divide over {ndev} devices; use a positive "
                    f"multiple of {ndev}" + (f", e.g. --config.{key}={fix}." if key else "."))
  return global_batch_size // nproc


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Host-local numpy pytree -> global jax.Arrays whose leading axis is sharded over `data`."""
  sharding = batch_sharding(mesh)
  nlocal = local_device_count(mesh)

  def put(x):
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[0] % nlocal:
      raise ValueError(
          f"A host-local batch leaf of shape {x.shape} cannot be split over this process's {nlocal} devices: "
          f"its leading (batch) dimension must be a multiple of {nlocal}.")
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree_util.tree_map(put, batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree (identical on every process) on every device of the mesh."""
  sharding = replicated(mesh)

  def put(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

  return jax.tree_util.tree_map(put, tree)


def is_main_process() -> bool:
  """True on process 0, the only one that writes logs and files."""
  return jax.process_index() == 0


def to_host(tree: Any) -> Any:
  """Fetches replicated (or fully addressable) arrays as numpy on every process."""
  return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), tree)
