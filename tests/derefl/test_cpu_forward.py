"""CPU inference forwards compiled without XLA's YNNPACK fusions (backbones_jax.xla_cpu): same numbers,
no YNNPACK fusion left, the opt-out, and an option this jaxlib does not know falls back to the defaults."""
import jax
import numpy as np
import pytest

from backbones_jax import xla_cpu
from derefl_jax import models, predict

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU compile options")


def test_inference_options_and_opt_out(monkeypatch):
  known = xla_cpu._accepted(tuple(xla_cpu.NO_YNN.items()))  # jaxlib 0.10 knows it
  assert xla_cpu.inference_compiler_options() == (xla_cpu.NO_YNN if known else None)
  monkeypatch.setenv("VPJ_XLA_CPU_YNN", "1")
  assert xla_cpu.inference_compiler_options() is None
  assert not xla_cpu._accepted((("xla_cpu_no_such_option_vpj", "1"),))


def test_predict_forward_has_no_ynn_fusion_and_same_outputs():
  model = models.build_model("tiny", lrm_blocks=(1, 1))
  trainable, frozen = models.init_params(model, 0)
  params = jax.tree.map(lambda a: a + 0.05, models.merge_params(trainable, frozen))  # no zero head
  x = np.random.default_rng(0).uniform(size=(1, 64, 96, 3)).astype(np.float32)
  forward = predict.make_forward_layers(model)
  assert "__ynn_fusion" not in forward.lower(params, x).compile().as_text()
  default = jax.jit(lambda p, x: model.apply({"params": p}, x)[0])  # XLA's defaults (YNNPACK on, jaxlib 0.10)
  got, ref = forward(params, x), default(params, x)
  for k in ("T", "R", "RR"):
    scale = float(np.abs(np.asarray(ref[k])).max())  # float32 sums in another order: relative to the outputs
    assert scale > 1e-2
    np.testing.assert_allclose(np.asarray(got[k]), np.asarray(ref[k]), atol=1e-5 * scale, rtol=0)
