"""A toy regression problem trained through the shared machinery (used in-process and by multi-host workers).

Run as a script it is one worker of a multi-process run:
  python toy.py OUT.npz WORKDIR STEPS [coordinator num_processes process_id]
"""
from __future__ import annotations

import os
import sys

import numpy as np

GLOBAL_BATCH = 16
DIM = 4


def batch_fn_for(seed: int, process_index: int = 0, process_count: int = 1, nan_at: int | None = None):
  """Host-local slices of global batches that are a pure function of (seed, step)."""
  w_true = np.random.default_rng(seed).normal(size=(DIM, 1)).astype(np.float32)

  def batch_fn(step: int):
    rng = np.random.default_rng([seed, step])
    x = rng.normal(size=(GLOBAL_BATCH, DIM)).astype(np.float32)
    y = x @ w_true + 0.1 * rng.normal(size=(GLOBAL_BATCH, 1)).astype(np.float32)
    if nan_at is not None and step == nan_at:
      x[:] = np.nan
    n = GLOBAL_BATCH // process_count
    sl = slice(process_index * n, (process_index + 1) * n)
    return {"x": x[sl], "y": y[sl]}

  return batch_fn


def make_state(seed: int = 0):
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import optax

  from train.state import TrainState

  class MLP(nn.Module):
    """Toy MLP: (B, 4) -> (B, 1)."""

    @nn.compact
    def __call__(self, x, *, deterministic: bool = True):
      h = nn.Dense(8)(x)
      h = nn.Dropout(0.1, deterministic=deterministic)(nn.tanh(h))
      return nn.Dense(1)(h)

  model = MLP()
  key = jax.random.PRNGKey(seed)
  params = model.init(key, jnp.zeros((1, DIM)))["params"]
  tx = optax.adamw(1e-2)
  frozen = {"scale": jnp.asarray(0.5, jnp.float32)}
  return model, TrainState.create(params=params, tx=tx, rng=jax.random.fold_in(key, 1), frozen=frozen)


def make_train_step(model):
  import jax
  import jax.numpy as jnp

  def train_step(state, batch, rng):
    def loss_fn(params):
      pred = model.apply({"params": params}, batch["x"], deterministic=False, rngs={"dropout": rng})
      return jnp.mean((pred * (2 * state.frozen["scale"]) - batch["y"]) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads), {"loss": loss}

  return train_step


def run(workdir: str, steps: int, *, seed: int = 0, devices=None, process_index: int = 0, process_count: int = 1,
        checkpoint_every: int = 2, nan_at: int | None = None):
  import jax

  from train import loop, parallel

  model, state = make_state(seed)
  mesh = parallel.make_mesh(devices)
  final = loop.fit(state=state, train_step=make_train_step(model),
                   batch_fn=batch_fn_for(seed, process_index, process_count, nan_at),
                   num_steps=steps, workdir=workdir, mesh=mesh, checkpoint_every=checkpoint_every,
                   log_every=1)
  return jax.tree_util.tree_map(np.asarray, parallel.to_host(final.params)), final


if __name__ == "__main__":
  out, workdir, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
  if len(sys.argv) > 4:
    from train import parallel
    parallel.initialize_distributed(sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
  import jax
  params, _ = run(workdir, steps, process_index=jax.process_index(), process_count=jax.process_count())
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): v
          for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  np.savez(out, ndev=jax.device_count(), nproc=jax.process_count(), **flat)
