"""Config files with named presets, command-line overrides and their errors.

A config file `train/configs/<method>.py` defines `get_config(preset="demo")` that calls
`select_preset(PRESETS, preset)`. On the command line a config is named `path.py:preset`, and
single fields are overridden with `--config.key=value` (nested: `--config.optim.lr=1e-3`).
"""
from __future__ import annotations

import ast
import fnmatch
import importlib.util
import json
import os
import tempfile
from typing import Any, Callable, Iterable, Mapping, Sequence

import ml_collections


class UserError(ValueError):
  """Bad user input (a value, a name, a file): the CLIs print `error: <message>` and exit with code 2.

  Raise it (or a subclass) from any method code under `train/` with a message that says what is
  wrong, names the file or config key, and says how to fix it. Library packages that cannot import
  `train` raise their own ValueError subclasses, which `train.cli.USER_ERROR_TYPES` lists.
  """


class ConfigError(UserError):
  """A config spec, preset, override or setting that does not exist, does not parse or is invalid."""


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
      import difflib  # pylint: disable=import-outside-toplevel
      close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
      parent = key.rpartition(".")[0]
      group = [k for k in valid if parent and k.startswith(parent + ".")] or valid
      hint = f"Did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
      raise ConfigError(
          f"Unknown config key {key!r} in --config.{key}={text}. {hint}Valid keys"
          f"{f' under {parent}.' if group is not valid else ''}: {', '.join(group)}.")
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


def write_json_atomic(path: str, obj: Any, **dump_kwargs) -> None:
  """Writes JSON to a temp file in the same directory, then renames it over `path` (never half a file)."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(obj, f, **dump_kwargs)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def to_json_dict(config: ml_collections.ConfigDict) -> dict:
  """The config as it is stored in config.json (tuples become lists, other objects strings)."""
  return json.loads(json.dumps(config.to_dict(), sort_keys=True, default=str))


def save_config(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes the resolved config to `workdir/config.json` atomically and returns its path."""
  path = os.path.join(workdir, CONFIG_FILE)
  data = to_json_dict(config)
  try:
    with open(path) as f:
      if json.load(f) == data:
        return path  # same config: leave the file (and its mtime) alone
  except (OSError, ValueError):
    pass
  write_json_atomic(path, data, indent=2, sort_keys=True)
  return path


# ------------------------------------------------------------------------------------ run directories

CONFIG_FILE = "config.json"
RESUME_LOG = "resume_log.jsonl"

# Fields any method may change when it resumes a run: how long it runs and how often it logs and
# saves. Each entry point adds its own (e.g. `train.derefl.RESUMABLE_KEYS`). fnmatch patterns.
SHARED_RESUMABLE_KEYS: tuple[str, ...] = (
    "num_steps", "log_every_steps", "checkpoint.every_steps", "checkpoint.max_to_keep",
    "eval.batch_size",
)


def flatten_dict(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"a": {"b": 1}} -> {"a.b": 1} (leaves only)."""
  out = {}
  for k, v in d.items():
    full = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(flatten_dict(v, full + "."))
    else:
      out[full] = v
  return out


def _matches(key: str, patterns: Iterable[str]) -> bool:
  return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def _short(v: Any) -> str:
  text = json.dumps(v, default=str)
  return text if len(text) <= 40 else text[:37] + "..."


def compare_configs(saved: Mapping[str, Any], new: Mapping[str, Any], *, resumable: Sequence[str],
                    defaults: Mapping[str, Any] | None = None) -> dict[str, list[tuple[str, Any, Any]]]:
  """Sorts the differences of two stored-form configs (`to_json_dict`) by what a resume may do.

  Returns {"allowed": [...], "refused": [...], "added": [...], "removed": [...]}, each a list of
  (key, saved value, new value). `added`: keys the saved run did not have (a newer version of
  the code) whose new value equals the preset default in `defaults` (flat), so they change nothing
  the user asked for; an added key with a non-default value is refused. `removed`: keys the code
  no longer has (allowed, reported).
  """
  a, b = flatten_dict(saved), flatten_dict(new)
  defaults = defaults or {}
  out: dict[str, list] = {"allowed": [], "refused": [], "added": [], "removed": []}
  for key in sorted(set(a) | set(b)):
    if key in a and key in b:
      if a[key] != b[key]:
        out["allowed" if _matches(key, resumable) else "refused"].append((key, a[key], b[key]))
    elif key in b:
      ok = key in defaults and defaults[key] == b[key]
      out["added" if ok or _matches(key, resumable) else "refused"].append((key, None, b[key]))
    else:
      out["removed"].append((key, a[key], None))
  return out


# Files that do not make a workdir a run worth protecting.
_METADATA = {CONFIG_FILE, RESUME_LOG}


def has_run_state(workdir: str) -> bool:
  """True when `workdir` holds anything beyond its metadata and empty files (checkpoints, logs,
  data, results)."""
  for root, _, files in os.walk(workdir):
    for f in files:
      if root == workdir and (f in _METADATA or f.startswith(f".{CONFIG_FILE}.")):
        continue
      try:
        if os.path.getsize(os.path.join(root, f)) == 0:
          continue
      except OSError:
        pass
      return True
  return False


def check_workdir(config: ml_collections.ConfigDict, workdir: str, *, resumable: Sequence[str] = (),
                  defaults: ml_collections.ConfigDict | None = None) -> dict[str, list]:
  """Checks a (re)run's config against `<workdir>/config.json`, before anything is written.

  - no config.json: a first run (returns no differences) if the workdir is missing or empty;
    a non-empty directory without one is refused (not a run directory);
  - config.json and nothing else in the workdir (an earlier attempt stopped before it produced
    anything): the new config replaces it;
  - otherwise every difference outside `SHARED_RESUMABLE_KEYS + resumable` raises `ConfigError`
    naming the keys and the saved/new values, and saying to use a new --workdir. Allowed
    differences are returned for the caller to log.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  empty = {"allowed": [], "refused": [], "added": [], "removed": []}
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f"--workdir={workdir} is a file, not a directory. Pass a new or empty --workdir.")
  if not os.path.isfile(path):
    if os.path.isdir(workdir) and has_run_state(workdir):
      raise ConfigError(
          f"--workdir={workdir} is not empty and has no {CONFIG_FILE}: it is not a run directory of "
          f"this project (or its {CONFIG_FILE} was deleted). Nothing was changed. Pass a new or empty "
          f"--workdir (or restore {path} to resume the run).")
    return empty
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigError(f"{path} cannot be read ({type(e).__name__}: {e}); this workdir's run cannot be "
                      "checked: restore the file or use a new --workdir.") from None
  if not isinstance(saved, dict):
    raise ConfigError(f"{path} does not hold a config (a JSON object); restore it or use a new --workdir.")
  if not has_run_state(workdir):
    return empty
  new = to_json_dict(config)
  flat_defaults = flatten_dict(to_json_dict(defaults)) if defaults is not None else None
  diff = compare_configs(saved, new, resumable=tuple(SHARED_RESUMABLE_KEYS) + tuple(resumable),
                         defaults=flat_defaults)
  if diff["refused"]:
    keys = ", ".join(f"{k} (saved {_short(o)}, now {_short(n)})" for k, o, n in diff["refused"])
    raise ConfigError(
        f"{workdir} holds a run with another config: {keys} differ from {path}. Nothing was changed. "
        f"Rerun with the saved values to resume it, or pass a new --workdir for the new config "
        f"(settings that may change on resume: {', '.join(tuple(SHARED_RESUMABLE_KEYS) + tuple(resumable))}).")
  return diff


def describe_changes(diff: Mapping[str, list]) -> str:
  """One line for the log: 'num_steps 300 -> 600; new field clip.tokenizer = ""'."""
  parts = [f"{k} {_short(o)} -> {_short(n)}" for k, o, n in diff.get("allowed", [])]
  parts += [f"new field {k} = {_short(n)}" for k, _, n in diff.get("added", [])]
  parts += [f"field {k} (saved {_short(o)}) no longer exists" for k, o, _ in diff.get("removed", [])]
  return "; ".join(parts)


def log_resume(workdir: str, diff: Mapping[str, list]) -> None:
  """Appends the allowed changes of a resume as one JSON line to `<workdir>/resume_log.jsonl`."""
  import time  # pylint: disable=import-outside-toplevel
  row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"),
         "changed": {k: [o, n] for k, o, n in diff.get("allowed", []) + diff.get("added", [])
                     + diff.get("removed", [])}}
  with open(os.path.join(workdir, RESUME_LOG), "a") as f:
    f.write(json.dumps(row, default=str) + "\n")


def require(condition: bool, key: str, message: str) -> None:
  """Raises `ConfigError('config.<key> ...: <message>')` unless `condition`."""
  if not condition:
    raise ConfigError(f"config.{key}: {message}")


def require_choice(config: ml_collections.ConfigDict, key: str, choices: Sequence[Any]) -> None:
  """`config.<key>` must be one of `choices` (each element, for a tuple/list value)."""
  value = get_key(config, key)
  values = value if isinstance(value, (tuple, list)) else (value,)
  bad = [v for v in values if v not in choices]
  if bad:
    raise ConfigError(f"config.{key}={value!r}: {', '.join(map(repr, bad))} is not one of "
                      f"{', '.join(map(repr, choices))}. Set --config.{key}=<one of them>.")


def require_positive(config: ml_collections.ConfigDict, *keys: str, allow_zero: bool = False) -> None:
  for key in keys:
    value = get_key(config, key)
    values = value if isinstance(value, (tuple, list)) else (value,)
    if not values or any((v < 0) if allow_zero else (v <= 0) for v in values):
      raise ConfigError(f"config.{key}={value!r} must be {'>= 0' if allow_zero else '> 0'}; "
                        f"set --config.{key}=<a {'non-negative' if allow_zero else 'positive'} number>.")


def get_key(config: ml_collections.ConfigDict, key: str) -> Any:
  node = config
  for part in key.split("."):
    node = node[part]
  return node
