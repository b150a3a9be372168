"""Orbax checkpointing: periodic saves, keep-N (or keep-best), automatic resume with the exact optimizer state.

Layout (documented for packages that restore without importing `train`, e.g. `derefl_jax.predict`):

    <workdir>/checkpoints/<step>/state/   the TrainState pytree (StandardSave):
                                          step, params, opt_state, rng, frozen
    <workdir>/checkpoints/<step>/extra/   optional dict of numpy arrays (e.g. a stream's database codes)

Restore `state` with an abstract target (`ocp.utils.to_shape_dtype_struct`) — without one, optax
NamedTuples come back as plain lists.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT_SUBDIR = "checkpoints"


def _user_error_base():
  from train.config_lib import UserError  # pylint: disable=import-outside-toplevel
  return UserError


class CheckpointRestoreError(_user_error_base()):
  """A checkpoint that cannot be read or does not fit the state built from the config."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.abspath(os.path.join(workdir, CHECKPOINT_SUBDIR))


class Checkpointer:
  """Saves every `every_steps` steps (plus forced saves), keeps `max_to_keep`, resumes the latest.

  With `best_fn(metrics) -> float`, `max_to_keep` keeps the best checkpoints (by `best_mode`), not the newest.
  """

  def __init__(self, workdir: str, *, max_to_keep: int | None = 3, every_steps: int = 1,
               best_fn: Callable[[Mapping[str, float]], float] | None = None, best_mode: str = "max",
               async_save: bool = False):
    self.directory = checkpoint_dir(workdir)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_interval_steps=max(1, int(every_steps)), best_fn=best_fn,
        best_mode=best_mode, create=True, enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "extra"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, extra: Mapping[str, Any] | None = None, *, force: bool = False,
           metrics: Mapping[str, float] | None = None) -> bool:
    """Saves if `step` is on the interval (or `force`); returns whether it saved."""
    items = {"state": ocp.args.StandardSave(state)}
    if extra:
      items["extra"] = ocp.args.StandardSave({k: np.asarray(v) for k, v in extra.items()})
    saved = self._manager.save(int(step), args=ocp.args.Composite(**items), force=force,
                               metrics=dict(metrics) if metrics is not None else None)
    return bool(saved)

  def restore(self, state: Any, step: int | None = None) -> tuple[Any, dict | None]:
    """Restores `step` (default latest) into the structure, dtypes and shardings of `state`."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    self._manager.wait_until_finished()
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
    items = {"state": ocp.args.StandardRestore(abstract)}
    has_extra = os.path.isdir(os.path.join(self.directory, str(step), "extra"))
    if has_extra:
      items["extra"] = ocp.args.StandardRestore()
    where = os.path.join(self.directory, str(step))
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types for a bad checkpoint
      first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
      raise CheckpointRestoreError(
          f"the checkpoint {where} cannot be restored into the state this config builds "
          f"({type(e).__name__}: {first}). It is corrupt or from another model; nothing was changed. "
          f"Delete that step directory to fall back to an earlier checkpoint, or use a new --workdir."
      ) from e
    extra = dict(restored["extra"]) if has_extra else None
    return restored["state"], extra

  def restore_or(self, state: Any, extra: Mapping[str, Any] | None = None
                 ) -> tuple[Any, Mapping[str, Any] | None, int | None]:
    """Latest checkpoint if there is one, else the given `state`/`extra`; third value: restored step or None."""
    step = self.latest_step()
    if step is None:
      return state, extra, None
    state, restored_extra = self.restore(state, step)
    return state, (restored_extra if restored_extra is not None else extra), step

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
