"""The train state: trainable params and their optimizer state, frozen params, step and rng."""
from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from train import parallel


class TrainState(flax.struct.PyTreeNode):
  """Everything a step needs. `frozen` (e.g. a frozen CLIP or VGG tower) is held outside the optimizer."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  frozen: Any
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  @classmethod
  def create(cls, *, params: Any, tx: optax.GradientTransformation, rng: jax.Array,
             frozen: Any = None) -> "TrainState":
    """`rng` is a raw uint32 key (`jax.random.PRNGKey(seed)`), kept so checkpoints stay plain arrays."""
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
               rng=jnp.asarray(rng), frozen={} if frozen is None else frozen, tx=tx)

  def apply_gradients(self, grads: Any) -> "TrainState":
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                        opt_state=opt_state)


def step_rng(state: TrainState) -> jax.Array:
  """The key of the current step: `fold_in(state.rng, state.step)` — a pure function of seed and step."""
  return jax.random.fold_in(state.rng, state.step)


def compile_train_step(train_step: Callable, mesh) -> Callable:
  """Jits `train_step(state, batch, rng) -> (state, metrics)` once: state donated and replicated,
  batch sharded over `data`, metrics replicated."""
  repl = parallel.replicated(mesh)
  return jax.jit(train_step, in_shardings=(repl, parallel.batch_sharding(mesh), repl),
                 out_shardings=(repl, repl), donate_argnums=(0,))
