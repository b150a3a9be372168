"""Metrics as JSON lines and TensorBoard events (process 0 only), and a tqdm progress bar."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping

import jax
import numpy as np
from tqdm.auto import tqdm


def _scalar(v: Any) -> float | int | str:
  a = np.asarray(v)
  if a.size != 1:
    raise ValueError(f"metrics must be scalars, got an array of shape {a.shape}")
  x = a.item()
  if isinstance(x, float) and not math.isfinite(x):
    return str(x)  # JSON has no NaN/inf
  return x


def _json_default(o: Any):
  if isinstance(o, (np.generic, np.ndarray)) or hasattr(o, "__array__"):
    a = np.asarray(o)
    return a.item() if a.size == 1 else a.tolist()
  return str(o)


def save_json(path: str, obj: Any) -> None:
  """Writes `obj` as indented JSON (numpy/jax values converted); only on process 0.

  Atomic: written to a temp file next to `path`, then renamed over it, so an interrupted write
  never leaves a truncated file in a run directory.
  """
  if jax.process_index() != 0:
    return
  from train.config_lib import write_json_atomic  # pylint: disable=import-outside-toplevel
  write_json_atomic(path, obj, indent=2, default=_json_default)


class MetricWriter:
  """`write(step, metrics)` appends `{"step", "time", **metrics}` to `<workdir>/metrics.jsonl` and
  TensorBoard scalars to `<workdir>/tensorboard`. A no-op on processes other than 0."""

  def __init__(self, workdir: str, *, tensorboard: bool = True, filename: str = "metrics.jsonl"):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, filename)
    self._file = None
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._file = open(self.path, "a")
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    row = {k: _scalar(v) for k, v in metrics.items()}
    self._file.write(json.dumps({"step": int(step), "time": round(time.time(), 3), **row}) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in row.items():
        if isinstance(v, (int, float)):
          self._tb.add_scalar(k, v, int(step))
      self._tb.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
    return False


def progress(total: int | None, *, initial: int = 0, desc: str = "", force: bool | None = None, **kw) -> tqdm:
  """A tqdm bar with ETA on interactive runs of process 0 (`force=True/False` overrides the tty check)."""
  if jax.process_index() != 0:
    disable = True
  elif force is None:
    disable = not sys.stderr.isatty() and "ipykernel" not in sys.modules
  else:
    disable = not force
  return tqdm(total=total, initial=initial, desc=desc, disable=disable, dynamic_ncols=True, **kw)


def read_metrics(workdir: str, filename: str = "metrics.jsonl") -> list[dict]:
  """The logged rows of a run, in order."""
  with open(os.path.join(workdir, filename)) as f:
    return [json.loads(line) for line in f if line.strip()]
