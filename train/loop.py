"""The generic training loop every method uses: shard, step, guard, log, checkpoint, resume."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
from jax.sharding import Mesh

from backbones_jax.host_memory import release_free_heap
from train import parallel
from train.checkpoint import Checkpointer
from train.guard import check_finite
from train.metric_writer import MetricWriter, progress
from train.state import compile_train_step

BatchFn = Callable[[int], Mapping[str, Any]]


def fit(*, state: Any, train_step: Callable, batch_fn: BatchFn, num_steps: int, workdir: str,
        mesh: Mesh | None = None, checkpointer: Checkpointer | None = None, checkpoint_every: int = 100,
        max_to_keep: int = 3, log_every: int = 10, writer: MetricWriter | None = None,
        desc: str = "train", step_fn: Callable | None = None,
        on_log: Callable[[int, Mapping[str, float]], None] | None = None) -> Any:
  """Trains `state` to `num_steps` and returns it (replicated over `mesh`).

  - `train_step(state, batch, rng) -> (state, metrics)` is jitted once with the state donated
    (or pass an already compiled `step_fn`).
  - `batch_fn(step)` returns this host's slice of the global batch for `step` as numpy; it must be a
    pure function of (seed, step), so a resumed run sees exactly the batches it would have seen.
  - The rng of step s is `fold_in(state.rng, s)`.
  - If `<workdir>/checkpoints` holds a checkpoint, training resumes from it with the exact
    optimizer state; it is restored before the metric writer opens, so a checkpoint that does not
    fit (`CheckpointRestoreError`, a user error) leaves the workdir untouched. Checkpoints every `checkpoint_every` steps (keeping `max_to_keep`) and at the end.
  - Metrics are checked for NaN/inf at every log step and before every save; logs go to
    `<workdir>/metrics.jsonl` and TensorBoard (process 0 only).
  """
  mesh = parallel.make_mesh() if mesh is None else mesh
  own_ckpt = checkpointer is None
  ckpt = checkpointer or Checkpointer(workdir, max_to_keep=max_to_keep, every_steps=checkpoint_every)
  state = parallel.replicate(state, mesh)
  try:  # restore before anything is written: a checkpoint that does not fit stops a clean run
    state, _, last_saved = ckpt.restore_or(state)
  except BaseException:
    if own_ckpt:
      ckpt.close()
    raise
  own_writer = writer is None
  writer = writer or MetricWriter(workdir)
  start = int(jax.device_get(state.step))
  step_fn = step_fn or compile_train_step(train_step, mesh)
  every = max(1, int(checkpoint_every))
  bar = progress(num_steps, initial=start, desc=desc)
  try:
    for step in range(start, num_steps):
      batch = parallel.shard_batch(batch_fn(step), mesh)
      rng = jax.random.fold_in(state.rng, step)
      state, metrics = step_fn(state, batch, rng)
      if step == start:  # the compiler's freed heap back to the OS (RSS would stay at its peak)
        release_free_heap()
      done = step + 1
      is_log = done % max(1, log_every) == 0 or done == num_steps
      is_save = done % every == 0 or done == num_steps
      if is_log or is_save:
        host = parallel.to_host(metrics)
        check_finite(host, step=done, last_checkpoint=last_saved, checkpoint_dir=ckpt.directory)
        if is_log:
          writer.write(done, host)
          bar.set_postfix({k: f"{float(v):.4g}" for k, v in list(host.items())[:4]}, refresh=False)
          if on_log is not None:
            on_log(done, host)
        if is_save and ckpt.save(done, state, force=done == num_steps):
          last_saved = done
      bar.update(1)
  finally:
    bar.close()
    if own_writer:
      writer.close()
    if own_ckpt:
      ckpt.close()
    else:
      ckpt.wait()
  return state
