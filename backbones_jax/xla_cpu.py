"""XLA:CPU compile options for inference forwards (``jax.jit(..., compiler_options=...)``)."""
from __future__ import annotations

import functools
import os

__all__ = ["NO_YNN", "inference_compiler_options"]

# XLA:CPU (jaxlib 0.10) hands dots, and the elementwise work and reductions around them, to YNNPACK
# ("__ynn_fusion"). An empty fusion-type list turns that off: dots go to Eigen, the rest to XLA's own
# fusions. Measured on a 2-core AMD EPYC (docs/derefl.md "DSRNet-L side by side"):
# * a (50176 x 256) . (256 x 512) dot: 116 -> 88-90 ms; LayerNorm + dot + bias: 181 -> 143 ms;
# * DSRNet-L's forward at 224²: 5.0 -> 3.6 s, XLA temp 1.70 -> 0.34 GB (YNNPACK fusions take their
#   broadcast operands, LayerNorm scales and biases, as materialised full-size buffers).
# Not for training steps: XLA's own column reductions (the bias and scale gradients, sums over H and W)
# are ~8x slower than YNNPACK's, and DSRNet-L's training step went 26 -> 44 s without it.
NO_YNN = {"xla_cpu_experimental_ynn_fusion_type": ""}

_ENV = "VPJ_XLA_CPU_YNN"  # "1": leave XLA's default (YNNPACK fusions on) for inference too


@functools.lru_cache(maxsize=None)
def _accepted(options: tuple[tuple[str, str], ...]) -> bool:
  """Whether this jaxlib's CPU compiler accepts ``options`` (an unknown option is a compile error)."""
  import jax
  import jax.numpy as jnp
  try:
    jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(jnp.zeros(2)).compile()
    return True
  except Exception:  # noqa: BLE001 - older/newer jaxlib without the option: use the defaults
    return False


def inference_compiler_options() -> dict[str, str] | None:
  """``compiler_options`` for a jitted inference forward: :data:`NO_YNN` on the CPU backend (when this
  jaxlib knows the option and ``VPJ_XLA_CPU_YNN`` is not ``1``), else None (the defaults)."""
  import jax
  if os.environ.get(_ENV) == "1" or jax.default_backend() != "cpu":
    return None
  return dict(NO_YNN) if _accepted(tuple(NO_YNN.items())) else None
