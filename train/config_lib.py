"""Config files with named presets, command-line overrides and their errors.

A config file `train/configs/<method>.py` defines `get_config(preset="demo")` that calls
`select_preset(PRESETS, preset)`. On the command line a config is named `path.py:preset`, and
single fields are overridden with `--config.key=value` (nested: `--config.optim.lr=1e-3`).
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
from typing import Any, Callable, Mapping

import ml_collections


class ConfigError(ValueError):
  """A config spec, preset or override that does not exist or does not parse."""


def select_preset(presets: Mapping[str, Callable[[], ml_collections.ConfigDict]],
                  preset: str | None) -> ml_collections.ConfigDict:
  """Returns the config built by `presets[preset]`; an unknown name lists the valid ones."""
  name = preset or "demo"
  if name not in presets:
    raise ConfigError(
        f"Unknown preset {name!r}. Valid presets: {', '.join(sorted(presets))}. "
        f"Select one with --config=<file>.py:<preset>.")
  config = presets[name]()
  with config.unlocked():
    config.preset = name
  return config


def _load_module(path: str):
  if not os.path.isfile(path):
    raise ConfigError(f"Config file {path!r} does not exist. Pass --config=train/configs/<method>.py:<preset>.")
  spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"Config file {path!r} defines no get_config(preset) function.")
  return module


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads `path.py[:preset]` (preset defaults to the file's own default)."""
  path, _, preset = spec.partition(":")
  module = _load_module(path)
  config = module.get_config(preset) if preset else module.get_config()
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"{path}:get_config() must return an ml_collections.ConfigDict, got {type(config).__name__}.")
  return config


def _all_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  keys = []
  for k, v in config.items():
    full = f"{prefix}{k}"
    if isinstance(v, ml_collections.ConfigDict):
      keys.extend(_all_keys(v, full + "."))
    else:
      keys.append(full)
  return keys


def _parse_value(text: str, current: Any) -> Any:
  if isinstance(current, str):
    return text
  if isinstance(current, bool):
    low = text.lower()
    if low in ("true", "1", "yes"):
      return True
    if low in ("false", "0", "no"):
      return False
    raise ConfigError(f"expected a boolean (true/false), got {text!r}")
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if current is None:
      return text
    raise ConfigError(f"could not parse {text!r} as a {type(current).__name__}") from None
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)
  if current is not None and not isinstance(value, type(current)):
    if isinstance(current, (tuple, list)) and isinstance(value, (int, float, str)):
      value = type(current)([value])
    else:
      raise ConfigError(f"expected a {type(current).__name__}, got {text!r}")
  return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, str]) -> ml_collections.ConfigDict:
  """Sets `key.sub=value` strings on a copy of the config; unknown keys list the valid ones."""
  config = ml_collections.ConfigDict(config.to_dict())
  valid = _all_keys(config)
  for key, text in overrides.items():
    if key not in valid:
      raise ConfigError(
          f"Unknown config key {key!r} in --config.{key}={text}. Valid keys: {', '.join(valid)}.")
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    try:
      value = _parse_value(text, node[leaf])
    except ConfigError as e:
      raise ConfigError(f"--config.{key}={text}: {e}.") from None
    with node.unlocked():
      node[leaf] = value
  return config


def save_config(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes the resolved config to `workdir/config.json` and returns its path."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  with open(path, "w") as f:
    json.dump(config.to_dict(), f, indent=2, sort_keys=True, default=str)
  return path
