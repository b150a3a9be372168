"""A guard that stops a run at the first non-finite metric, naming the step and the last good checkpoint."""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np


class NonFiniteError(FloatingPointError):
  """A loss or metric became NaN or inf."""


def check_finite(metrics: Mapping[str, Any], *, step: int, last_checkpoint: int | None,
                 checkpoint_dir: str | None = None) -> None:
  """Raises `NonFiniteError` if any metric is NaN/inf."""
  bad = {k: float(np.asarray(v)) for k, v in metrics.items()
         if np.asarray(v).size == 1 and not math.isfinite(float(np.asarray(v)))}
  if not bad:
    return
  where = (f"the last good checkpoint is step {last_checkpoint}" + (f" in {checkpoint_dir}" if checkpoint_dir else "")
           if last_checkpoint is not None else "no checkpoint was saved before it")
  raise NonFiniteError(
      f"Non-finite value(s) at step {step}: {bad}. Stopping; {where}. Lower the learning rate or check the "
      f"data, then rerun with the same --workdir to resume from that checkpoint.")
