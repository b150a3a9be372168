"""The one parameter / FLOP counter of derefl_jax: every params / FLOPs figure in README, docs and configs.

``count(model_or_preset, height, width)`` -> trainable parameters (frozen VGG19 excluded), frozen
parameters, and forward FLOPs from XLA's cost analysis of the **lowered** (un-optimised) HLO of the
jitted forward at batch 1, frozen VGG19 prior included. The lowered HLO does not depend on the
backend or on XLA's fusion decisions, so the number is the same on CPU, GPU and TPU and from run to
run (the compiled estimate varied with backend and flags: the docs once quoted 266.5 and 259.3
GFLOPs for one model). XLA counts a multiply-add as 2 FLOPs and also counts element-wise ops
(norms, gates, activations), so ``macs = flops / 2`` is an upper bound on the multiply-adds.

Used by ``derefl_jax.models.count_params_and_flops``, ``train.derefl --ablate``, the notebook and
``benchmarks/derefl_cost.py`` (the paper vs DSRNet-L / DSIT comparison).
"""
from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = "XLA cost_analysis of the lowered (un-optimised) HLO of the batch-1 forward, frozen VGG19 included"


def param_count(tree) -> int:
  """Number of scalars in a pytree of arrays or ShapeDtypeStructs."""
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def count(model: Any, height: int = 224, width: int = 224, **overrides) -> dict[str, Any]:
  """Params and forward FLOPs of a ``ReflectionRemovalNet`` (or a preset name + field overrides).

  Returns {"trainable_params", "frozen_params", "flops", "gflops", "macs", "gmacs", "height", "width",
  "source", "seconds"}. Nothing is allocated (``jax.eval_shape``) and nothing is compiled.
  """
  from derefl_jax import models  # models imports nothing from here at import time
  if isinstance(model, str):
    model = models.build_model(model, **overrides)
  t0 = time.perf_counter()
  x = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"]
  trainable, _ = models.split_params(shapes)
  lowered = jax.jit(lambda p, x: model.apply({"params": p}, x)[0]).lower(shapes, x)
  cost = lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  flops = float(cost["flops"])
  return {
      "height": height, "width": width,
      "trainable_params": param_count(trainable),
      "frozen_params": _full_vgg_count(model.vgg_width_divisor) if model.use_prior else 0,
      "flops": flops, "gflops": flops / 1e9, "macs": flops / 2, "gmacs": flops / 2e9,
      "source": SOURCE, "seconds": time.perf_counter() - t0,
  }


def _full_vgg_count(width_divisor: int) -> int:
  from backbones_jax import vgg as vgg_lib
  net = vgg_lib.VGG(depth=19, taps=("relu5_4",), width_divisor=width_divisor)
  return param_count(jax.eval_shape(net.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)))
