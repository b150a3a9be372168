"""benchmarks/derefl_profile.py's HLO accounting: the dots and convolutions of a compiled module and their FLOPs."""
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import derefl_profile  # noqa: E402  pylint: disable=wrong-import-position


def test_hlo_matmuls_counts_ops_and_flops():
  """Two identical dots, one batched dot and one 3x3 conv: counts, shapes, dims and FLOPs exactly; a dot of the
  default (YNNPACK) path is told apart from the same dot compiled for Eigen."""
  x, w = jnp.ones((50, 16)), jnp.ones((16, 8))
  b1, b2 = jnp.ones((3, 5, 7)), jnp.ones((3, 7, 2))
  img, k = jnp.ones((1, 12, 10, 4)), jnp.ones((3, 3, 4, 6))

  def f(x, w, b1, b2, img, k):
    conv = jax.lax.conv_general_dilated(img, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sin(x @ w) @ w.T, jnp.cos(x @ w), b1 @ b2, conv

  args = (x, w, b1, b2, img, k)
  rows = derefl_profile.hlo_matmuls(jax.jit(f).lower(*args).compile().as_text())
  dots = {(r["lhs"], r["rhs"]): r for r in rows if r["op"] == "dot"}
  convs = [r for r in rows if r["op"] == "convolution"]
  xw = dots[((50, 16), (16, 8))]
  assert xw["count"] in (1, 2) and xw["flops"] == 2 * 50 * 16 * 8 and xw["contract"] == ((1,), (0,))  # CSE may merge
  batched = dots[((3, 5, 7), (3, 7, 2))]
  assert batched["flops"] == 2 * 3 * 5 * 2 * 7 and batched["batch"] == ((0,), (0,))
  assert len(convs) == 1 and convs[0]["count"] == 1 and convs[0]["flops"] == 2 * 12 * 10 * 6 * 9 * 4
  spec = derefl_profile._conv_spec(convs[0]["dim_labels"])  # pylint: disable=protected-access
  assert spec == ("NHWC", "HWIO", "NHWC")
  assert xw["ynn"]  # XLA:CPU's default hands these dots to YNNPACK
  eigen = jax.jit(f, compiler_options={"xla_cpu_experimental_ynn_fusion_type": ""}).lower(*args).compile()
  assert not any(r["ynn"] for r in derefl_profile.hlo_matmuls(eigen.as_text()) if r["op"] == "dot")
  # each op rebuilt and timed on its own gives the same FLOPs back
  totals = derefl_profile.time_matmuls(rows, repeats=1)
  assert np.isclose(totals["conv_tflops"] * 1e12, convs[0]["flops"])
  assert totals["dot_s"] > 0 and totals["dot_best_s"] <= totals["dot_s"]
