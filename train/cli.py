"""Command-line handling shared by `python -m train.<method>`: config presets, overrides, workdir, multi-host.

    python -m train.lcdh --config=train/configs/lcdh.py:mirflickr --config.bits=64 --workdir=runs/x
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, NoReturn, Sequence

import ml_collections

from train import config_lib


def _split_overrides(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
  overrides, rest = {}, []
  args = list(argv)
  i = 0
  while i < len(args):
    a = args[i]
    if a.startswith("--config."):
      key, eq, value = a[len("--config."):].partition("=")
      if not eq:
        if i + 1 >= len(args) or args[i + 1].startswith("--"):
          raise config_lib.ConfigError(f"{a} needs a value: --config.{key}=VALUE")
        value = args[i + 1]
        i += 1
      overrides[key] = value
    else:
      rest.append(a)
    i += 1
  return overrides, rest


def parse(argv: Sequence[str], default_config: str) -> tuple[ml_collections.ConfigDict, str, argparse.Namespace]:
  """Returns (resolved config, workdir, parsed args) for `argv` (without the program name)."""
  overrides, rest = _split_overrides(argv)
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default=default_config,
                      help="config file and preset, e.g. train/configs/lcdh.py:demo")
  parser.add_argument("--workdir", default=None, help="where logs, checkpoints and results go; a rerun resumes")
  parser.add_argument("--coordinator_address", default=None, help="multi-host: host:port of process 0")
  parser.add_argument("--num_processes", type=int, default=None, help="multi-host: number of processes")
  parser.add_argument("--process_id", type=int, default=None, help="multi-host: index of this process")
  parser.add_argument("--distributed", action="store_true",
                      help="call jax.distributed.initialize() with auto-detection (TPU pods, SLURM)")
  args = parser.parse_args(rest)
  spec = args.config
  config = config_lib.load_config(spec)
  config = config_lib.apply_overrides(config, overrides)
  if args.workdir is None:
    stem = os.path.splitext(os.path.basename(spec.partition(":")[0]))[0]
    preset = config.get("preset", spec.partition(":")[2] or "default")
    args.workdir = os.path.join("runs", f"{stem}_{preset}")
  return config, args.workdir, args


# User-input errors raised by the library packages (which cannot import `train`): "module:Class".
# Only classes whose module is already imported are checked (an exception of a class from a
# module that was never imported cannot have been raised).
USER_ERROR_TYPES: tuple[str, ...] = (
    "backbones_jax.convert:CheckpointMismatchError",
    "backbones_jax.convert:CheckpointFormatError",
    "backbones_jax.torch_pickle:TorchFileError",
    "derefl_jax.data:ImageReadError",
    "derefl_jax.dsrnet_weights:CheckpointError",
    "lcdh_jax.data:DatasetError",
)


def is_user_error(e: BaseException, extra: Sequence[type] = ()) -> bool:
  """True for errors caused by the user's input: printed as one `error:` line, exit code 2."""
  if isinstance(e, (config_lib.UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                    PermissionError, *extra)):
    return True
  for spec in USER_ERROR_TYPES:
    module, _, name = spec.partition(":")
    cls = getattr(sys.modules.get(module), name, None)
    if isinstance(cls, type) and isinstance(e, cls):
      return True
  return False


def _message(e: BaseException) -> str:
  return str(e) or type(e).__name__


def fail(e: BaseException) -> "NoReturn":
  """Prints `error: <message>` on stderr and exits with code 2 (no traceback)."""
  print(f"error: {_message(e)}", file=sys.stderr, flush=True)
  raise SystemExit(2) from None


def run(main_fn: Callable[[ml_collections.ConfigDict, str], Any], default_config: str,
        argv: Sequence[str] | None = None, *, resumable_keys: Sequence[str] = (),
        validate: Callable[[ml_collections.ConfigDict], None] | None = None,
        user_errors: Sequence[type] = ()) -> Any:
  """Parses flags, validates, checks/claims the workdir, then calls `main_fn(config, workdir)`.

  Order (nothing is written to the workdir before step 4):
  1. parse `--config=file.py:preset` and `--config.key=value` overrides;
  2. start multi-host JAX if asked; `validate(config)` (raise `config_lib.ConfigError`);
  3. `config_lib.check_workdir`: a rerun in a workdir that holds a run must have the saved config,
     except for `config_lib.SHARED_RESUMABLE_KEYS` and this method's `resumable_keys` (logged);
  4. write `config.json` (atomically; process 0) and run `main_fn`; allowed changes of a resumed
     run are logged and saved once `main_fn` went ahead (not when it stopped on a user error).
  User errors (`is_user_error`, plus `user_errors`) anywhere in this print one `error:` line and
  exit with code 2; anything else (an internal bug) keeps its traceback.
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  try:
    return _run(main_fn, default_config, argv, resumable_keys, validate)
  except Exception as e:  # pylint: disable=broad-except
    if is_user_error(e, tuple(user_errors)):
      fail(e)
    raise


def _run(main_fn, default_config, argv, resumable_keys, validate):
  config, workdir, args = parse(argv, default_config)
  from train import parallel  # imports jax: after the XLA flags are settled
  parallel.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id,
                                  auto=args.distributed)
  try:  # grain's multiprocessing loader reads absl flags
    from absl import flags
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
  except Exception:  # pragma: no cover
    pass
  record = prepare_workdir(config, workdir, resumable_keys=resumable_keys, validate=validate,
                           defaults=config_lib.load_config(args.config), defer=True)
  try:
    out = main_fn(config, workdir)
  except Exception as e:
    if not is_user_error(e):
      record()  # the run went ahead with the new settings before it failed
    raise
  except BaseException:  # KeyboardInterrupt: same
    record()
    raise
  record()
  return out


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str, *, resumable_keys: Sequence[str] = (),
                    validate: Callable[[ml_collections.ConfigDict], None] | None = None,
                    defaults: ml_collections.ConfigDict | None = None, defer: bool = False):
  """Steps 2-4 of `run`, also for code that calls a method's `train_and_evaluate` itself
  (notebooks): validates, checks the workdir against its saved config (raises `ConfigError`,
  writing nothing) and saves `config.json` (first run). Allowed changes of a resumed run are
  printed, logged to `resume_log.jsonl` and saved into `config.json` now, or, with `defer=True`,
  by calling the returned function once the run went ahead (`run` skips it when the method
  stopped on a user error, e.g. a checkpoint that does not restore, so that run dir stays as it was).
  Returns the differences found (`defer=False`) or that function.
  """
  from train import parallel  # pylint: disable=import-outside-toplevel
  if validate is not None:
    validate(config)
  diff = config_lib.check_workdir(config, workdir, resumable=resumable_keys, defaults=defaults)
  changes = config_lib.describe_changes(diff)
  if changes:
    print(f"resuming {workdir} with changed settings: {changes}", flush=True)

  def record():
    if parallel.is_main_process():
      if changes:
        config_lib.log_resume(workdir, diff)
      config_lib.save_config(config, workdir)  # unchanged bytes when the config is the saved one

  if not changes and parallel.is_main_process():
    config_lib.save_config(config, workdir)  # a first run claims the workdir before it starts
  if defer:
    return record
  record()
  return diff
