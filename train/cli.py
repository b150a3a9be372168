"""Command-line handling shared by `python -m train.<method>`: config presets, overrides, workdir, multi-host.

    python -m train.lcdh --config=train/configs/lcdh.py:mirflickr --config.bits=64 --workdir=runs/x
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Sequence

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
        if i + 1 >= len(args):
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


def run(main_fn: Callable[[ml_collections.ConfigDict, str], Any], default_config: str,
        argv: Sequence[str] | None = None) -> Any:
  """Parses flags, starts multi-host JAX if asked, saves `config.json` and calls `main_fn(config, workdir)`."""
  argv = sys.argv[1:] if argv is None else list(argv)
  try:
    config, workdir, args = parse(argv, default_config)
  except config_lib.ConfigError as e:
    sys.exit(f"error: {e}")
  from train import parallel  # imports jax: after the XLA flags are settled
  parallel.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id,
                                  auto=args.distributed)
  try:  # grain's multiprocessing loader reads absl flags
    from absl import flags
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
  except Exception:  # pragma: no cover
    pass
  if parallel.is_main_process():
    config_lib.save_config(config, workdir)
  return main_fn(config, workdir)
