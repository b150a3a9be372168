"""Official DSRNet checkpoints (``.pt``) -> Flax params of :class:`derefl_jax.models.ReflectionRemovalNet`.

No torch needed: files are read with ``backbones_jax.torch_pickle``. Accepted forms:

* the official training checkpoint ``{'weight': state_dict, 'opt_g': ..., 'epoch': ..., 'iterations': ...}``
  (``dsrnet_l_epoch18.pt``, ``dsrnet_l_4000_epoch33.pt``, ``dsrnet_s_epoch14.pt``);
* a bare state dict (``torch.save(net.state_dict())``);
* a Lightning ``.ckpt`` (``{'state_dict': ...}``) or any wrapper whose keys carry a prefix in front of
  the network's own (``net_g.``, ``model.``, ``module.``, ...): the prefix is found from the keys.

Public API:

* :func:`key_table` -- explicit ``torch key -> (flax path, kind)`` table for a model's fields.
* :func:`infer_variant` -- (preset name or ``'custom'``, model fields) from a state dict's keys/shapes.
* :func:`read_state_dict` -- file -> (network state dict with the prefix removed, metadata).
* :func:`convert_state_dict` -- state dict -> trainable params, checked against ``jax.eval_shape``;
  missing, unexpected and mis-shaped keys are named.
* :func:`load_dsrnet` -- file -> (model, trainable, frozen) with the VGG19 prior from torchvision weights.
* :func:`init_from_state_dict` -- copy every tensor whose path and shape match into existing params
  (fine-tuning another preset from DSRNet weights) -> (params, loaded paths, fresh paths).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from derefl_jax import models

__all__ = ["CheckpointError", "key_table", "infer_variant", "read_state_dict", "convert_state_dict",
           "load_dsrnet", "init_from_state_dict", "default_vgg_path", "resolve_vgg_weights"]

VGG19_FILE = "vgg19-dcbb9e9d.pth"
VGG19_URL = "https://download.pytorch.org/models/" + VGG19_FILE
# A key every DSRNet state dict has, whatever its width and depth (the stem's last 1x1 conv).
_ANCHOR = "intro.ch_map0.seq.0.weight"


class CheckpointError(ValueError):
  """A checkpoint file that cannot be used as DSRNet weights (the message names the file and why)."""


# ----------------------------------------------------------------------------- key table
def _mugi(table: dict, tkey: str, path: tuple, *, shared_b: bool, seq: str = "seq") -> None:
  """Keys of one MuGI / R2 block (official ``block1``/``block2`` Sequentials) -> our MuGIBlock."""
  table[f"{tkey}.a_l"] = (path + ("a_t",), "scale")
  table[f"{tkey}.a_r"] = (path + ("a_r",), "scale")
  if shared_b:
    table[f"{tkey}.b"] = (path + ("b",), "scale")
  else:
    table[f"{tkey}.b_l"] = (path + ("b_t",), "scale")
    table[f"{tkey}.b_r"] = (path + ("b_r",), "scale")
  seqs = (seq,) if seq == "seq" else ("seq_l", "seq_r")  # LRM blocks list the shared layer twice
  for s in seqs:
    for sub, ours in (("block1.0.{s}.0", "norm1"), ("block1.0.{s}.1", "expand1"), ("block1.0.{s}.2", "dwconv"),
                      ("block1.2.{s}.0.ca.1", "ca/proj"), ("block1.3.{s}.0", "proj1"),
                      ("block2.0.{s}.0", "norm2"), ("block2.0.{s}.1", "expand2"), ("block2.2.{s}.0", "proj2")):
      p = path + tuple(ours.split("/"))
      is_ln = ours.startswith("norm")
      table[f"{tkey}.{sub.format(s=s)}.weight"] = (p + ("scale" if is_ln else "kernel",), "vec" if is_ln else "conv")
      table[f"{tkey}.{sub.format(s=s)}.bias"] = (p + ("bias",), "vec")


def _conv(table: dict, tkey: str, path: tuple, bias: bool = True) -> None:
  table[f"{tkey}.weight"] = (path + ("kernel",), "conv")
  if bias:
    table[f"{tkey}.bias"] = (path + ("bias",), "vec")


def _sin(table: dict, tkey: str, path: tuple) -> None:
  """Official LRM SinBlock (NAFNet block) -> our SingleStreamBlock."""
  table[f"{tkey}.a"] = (path + ("a",), "scale")
  table[f"{tkey}.b"] = (path + ("b",), "scale")
  for sub, ours in (("block1.0", "norm1"), ("block1.1", "expand1"), ("block1.2", "dwconv"), ("block1.4.ca.1", "ca/proj"),
                    ("block1.5", "proj1"), ("block2.0", "norm2"), ("block2.1", "expand2"), ("block2.3", "proj2")):
    p = path + tuple(ours.split("/"))
    is_ln = ours.startswith("norm")
    table[f"{tkey}.{sub}.weight"] = (p + ("scale" if is_ln else "kernel",), "vec" if is_ln else "conv")
    table[f"{tkey}.{sub}.bias"] = (p + ("bias",), "vec")


def key_table(model: models.ReflectionRemovalNet) -> dict[str, tuple[tuple[str, ...], str]]:
  """Official DSRNet state-dict key -> (our param path, kind) for a DSRNet-layout model.

  kind: 'conv' (OIHW -> HWIO), 'vec' (as is), 'scale' ((1, C, 1, 1) -> (C,)). LRM keys appear
  twice in the official state dict (``seq_l`` and ``seq_r`` hold the same layer); both map to one
  param and must be equal.
  """
  if model.stem != "vgg_pyramid" or model.attention or model.hf_blocks or model.t_residual:
    raise ValueError("key_table: the model is not in DSRNet's layout (use a dsrnet_* preset: stem='vgg_pyramid', "
                     "attention=False, hf_blocks=0, t_residual=False).")
  sb = bool(model.shared_b)
  t: dict[str, tuple[tuple[str, ...], str]] = {}
  py = ("pyramid",)
  for k in (5, 4, 3, 2, 1):
    _mugi(t, f"intro.block{k}.0", py + (f"block{k}",), shared_b=sb)
  for k in (4, 3, 2):
    _conv(t, f"intro.ch_map{k}.0.seq.0", py + (f"ch_map{k}",))
    _mugi(t, f"intro.ch_map{k}.1", py + (f"ch_map{k}_mugi",), shared_b=sb)
  _conv(t, "intro.ch_map1.0.seq.0", py + ("ch_map1_in",))
  _mugi(t, "intro.ch_map1.1", py + ("ch_map1_mugi0",), shared_b=sb)
  _conv(t, "intro.ch_map1.2.seq.0", py + ("ch_map1_out",))
  _mugi(t, "intro.ch_map1.3", py + ("ch_map1_mugi1",), shared_b=sb)
  _conv(t, "intro.block_intro.0.seq.0", py + ("intro",))
  _mugi(t, "intro.block_intro.1", py + ("intro_mugi",), shared_b=sb)
  _conv(t, "intro.ch_map0.seq.0", py + ("ch_map0",))
  levels = len(model.enc_blocks)
  for i, n in enumerate(model.enc_blocks):
    for j in range(n):
      _mugi(t, f"encoders.{i}.{j}", (f"enc{i}_{j}",), shared_b=sb)
    _conv(t, f"downs.{i}.seq.0", (f"down{i}",))
  for j in range(model.middle_blocks):
    _mugi(t, f"middle_blks.{j}", (f"mid_{j}",), shared_b=sb)
  for k, n in enumerate(model.dec_blocks):
    lvl = levels - 1 - k
    _conv(t, f"ups.{k}.seq.0", (f"up{lvl}",), bias=False)
    for j in range(n):
      _mugi(t, f"decoders.{k}.{j}", (f"dec{lvl}_{j}",), shared_b=sb)
  _conv(t, "ending.seq.0", ("ending",))
  if model.lrm_blocks:
    n_inter, n_merge = model.lrm_blocks
    for s in ("seq_l", "seq_r"):
      _conv(t, f"lrm.intro.{s}.0", ("lrm", "intro"))
    for j in range(n_inter):
      _mugi(t, f"lrm.blocks_inter.{j}", ("lrm", f"inter{j}"), shared_b=False, seq="lr")
    for j in range(n_merge):
      _sin(t, f"lrm.blocks_merge.{j}", ("lrm", f"merge{j}"))
    _conv(t, "lrm.tail.0", ("lrm", "tail"))
  return t


def _to_flax(value: np.ndarray, kind: str) -> np.ndarray:
  v = np.asarray(value, np.float32)
  if kind == "conv" and v.ndim == 4:
    return np.transpose(v, (2, 3, 1, 0))  # OIHW -> HWIO (depthwise (C,1,k,k) -> (k,k,1,C))
  if kind == "scale":
    return v.reshape(-1)
  return v


def _torch_shape(shape: tuple, kind: str) -> tuple:
  if kind == "conv" and len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if kind == "scale":
    return (1, shape[0], 1, 1)
  return tuple(shape)


# ----------------------------------------------------------------------------- variant inference
def _count(sd: Mapping[str, Any], pattern: str) -> list[int]:
  """Distinct integer groups of keys matching ``pattern`` (regex with one or two groups)."""
  rx = re.compile(pattern)
  found = set()
  for k in sd:
    m = rx.match(k)
    if m:
      found.add(tuple(int(g) for g in m.groups()))
  return sorted(found)


def infer_variant(sd: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
  """(preset name, model fields) of the DSRNet that ``sd`` (prefix removed) belongs to.

  Width from the stem's output conv, block counts from the key indices, ``shared_b`` from the
  MuGI scale names, LRM sizes from its block indices. The name is the preset whose fields agree,
  else ``'custom'``. A state dict of another network raises :class:`CheckpointError`.
  """
  if _ANCHOR not in sd or "intro.block5.0.block1.0.seq.1.weight" not in sd:
    sample = sorted(sd)[:6]
    raise CheckpointError(
        f"this state dict matches no DSRNet variant (dsrnet_l, dsrnet_l_nature, dsrnet_s or another width/depth): "
        f"it has no '{_ANCHOR}' key; its first keys are {sample}.")
  width = int(getattr(sd[_ANCHOR], "shape", None)[0])
  enc = _count(sd, r"^encoders\.(\d+)\.(\d+)\.")
  dec = _count(sd, r"^decoders\.(\d+)\.(\d+)\.")
  levels = len(_count(sd, r"^downs\.(\d+)\."))
  enc_blocks = tuple(sum(1 for i, _ in enc if i == lvl) for lvl in range(levels))
  dec_blocks = tuple(sum(1 for i, _ in dec if i == lvl) for lvl in range(len(_count(sd, r"^ups\.(\d+)\."))))
  middle = len(_count(sd, r"^middle_blks\.(\d+)\."))
  shared_b = "intro.block5.0.b" in sd
  n_inter = len(_count(sd, r"^lrm\.blocks_inter\.(\d+)\."))
  n_merge = len(_count(sd, r"^lrm\.blocks_merge\.(\d+)\."))
  lrm = (n_inter, n_merge) if any(k.startswith("lrm.") for k in sd) else ()
  fields = dict(models._DSRNET, width=width, enc_blocks=enc_blocks, middle_blocks=middle, dec_blocks=dec_blocks,
                lrm_blocks=lrm, shared_b=shared_b)
  for name in models.DSRNET_PRESETS:
    preset = models.PRESETS[name]
    if all(tuple(preset[k]) == tuple(fields[k]) if isinstance(preset[k], tuple) else preset[k] == fields[k]
           for k in ("width", "enc_blocks", "middle_blocks", "dec_blocks", "lrm_blocks", "shared_b")):
      return name, fields
  return "custom", fields


# ----------------------------------------------------------------------------- reading files
def _strip_prefix(sd: Mapping[str, Any], path: str) -> dict[str, Any]:
  """Keeps the network's keys, removing whatever prefix (Lightning ``net_g.``, ``module.``) precedes them."""
  anchors = [k for k in sd if k == _ANCHOR or k.endswith("." + _ANCHOR)]
  if not anchors:
    sample = sorted(sd)[:6]
    raise CheckpointError(
        f"{path}: matches no DSRNet variant (dsrnet_l, dsrnet_l_nature, dsrnet_s or another width/depth): "
        f"no key ends with '{_ANCHOR}'; its first keys are {sample}. Is this a DSRNet checkpoint?")
  if len(anchors) > 1:
    raise CheckpointError(f"{path}: holds {len(anchors)} DSRNet networks (keys {anchors}); extract one state dict.")
  prefix = anchors[0][: -len(_ANCHOR)]
  return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """A DSRNet ``.pt`` / ``.ckpt`` file -> (network state dict, {'format', 'epoch', 'iterations', 'prefix'}).

  Raises FileNotFoundError for a missing file and :class:`CheckpointError` (naming the file) for
  a truncated/corrupt file or one that holds no DSRNet.
  """
  from backbones_jax import torch_pickle

  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"DSRNet checkpoint {path} does not exist (download e.g. dsrnet_l_epoch18.pt from "
                            "the official DSRNet release, github.com/mingcv/DSRNet).")
  try:
    obj = torch_pickle.load_torch_file(path)
  except Exception as e:  # noqa: BLE001 - zipfile/pickle/EOF errors of a damaged file
    raise CheckpointError(f"{path}: could not be read as a torch checkpoint ({type(e).__name__}: {e}); the file "
                          "is truncated or corrupt - download it again.") from None
  meta: dict[str, Any] = {"format": "state_dict"}
  sd = obj
  if isinstance(obj, dict) and isinstance(obj.get("weight"), dict):
    sd, meta = obj["weight"], {"format": "official {'weight', 'opt_g', 'epoch', 'iterations'}",
                               "epoch": obj.get("epoch"), "iterations": obj.get("iterations")}
  elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
    sd, meta = obj["state_dict"], {"format": "Lightning checkpoint ('state_dict')", "epoch": obj.get("epoch"),
                                   "iterations": obj.get("global_step")}
  elif isinstance(obj, dict) and isinstance(obj.get("params"), dict):
    sd, meta = obj["params"], {"format": "{'params': state_dict}"}
  if not isinstance(sd, dict):
    raise CheckpointError(f"{path}: holds a {type(sd).__name__}, not a state dict; matches no DSRNet variant.")
  arrays = {k: v for k, v in sd.items() if isinstance(k, str) and isinstance(v, np.ndarray)}
  if not arrays:
    raise CheckpointError(f"{path}: holds no tensors (top-level keys {list(sd)[:8]}); matches no DSRNet variant.")
  net = _strip_prefix(arrays, path)
  prefix = next(k for k in arrays if k.endswith(_ANCHOR))[: -len(_ANCHOR)]
  meta["prefix"] = prefix
  return net, meta


# ----------------------------------------------------------------------------- conversion
_ABSTRACT: dict[str, dict] = {}


def _abstract_params(model: models.ReflectionRemovalNet) -> dict:
  """Trainable param shapes from ``jax.eval_shape(model.init)`` (cached per model config)."""
  key = repr(model)
  if key not in _ABSTRACT:
    s = max(model.size_multiple, 16)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32))
    _ABSTRACT[key], _ = models.split_params(shapes["params"])
  return _ABSTRACT[key]


def _get(tree: Mapping, path: tuple) -> Any:
  for p in path:
    tree = tree[p]
  return tree


def _set(tree: dict, path: tuple, value) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def _flat_paths(tree: Mapping, prefix=()) -> list[tuple[str, ...]]:
  out = []
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out += _flat_paths(v, prefix + (k,))
    else:
      out.append(prefix + (k,))
  return out


def convert_state_dict(sd: Mapping[str, Any], model: models.ReflectionRemovalNet, *, source: str = "state dict"
                       ) -> dict:
  """Official DSRNet state dict (prefix removed) -> trainable Flax params of ``model``, strictly.

  Every table key must be present with the shape ``jax.eval_shape(model.init)`` implies, no other
  key may be present, duplicated LRM entries (``seq_l`` / ``seq_r``) must be equal, and every
  trainable param must be covered; otherwise :class:`CheckpointError` names the keys.
  """
  table = key_table(model)
  abstract = _abstract_params(model)
  missing = sorted(set(table) - set(sd), key=_natural)
  unexpected = sorted(set(sd) - set(table), key=_natural)
  bad, params, unequal = [], {}, []
  for key, (path, kind) in table.items():
    if key not in sd:
      continue
    try:
      want = tuple(_get(abstract, path).shape)
    except KeyError:
      raise AssertionError(f"key table maps {key} to {path}, which the model does not have") from None
    v = _to_flax(sd[key], kind)
    if v.shape != want:
      bad.append(f"{key}: got {tuple(np.shape(sd[key]))}, expected {_torch_shape(want, kind)}")
      continue
    try:
      prev = _get(params, path)
    except KeyError:
      prev = None
    if prev is not None and not np.array_equal(prev, v):
      unequal.append(key)
    _set(params, path, v)
  uncovered = sorted("/".join(p) for p in set(_flat_paths(abstract)) - set(_flat_paths(params)))
  if missing or unexpected or bad or unequal:
    msg = [f"{source} does not match the DSRNet model (width {model.width}, enc {tuple(model.enc_blocks)}, "
           f"middle {model.middle_blocks}, dec {tuple(model.dec_blocks)}, lrm {tuple(model.lrm_blocks)}, "
           f"shared_b {model.shared_b}):"]
    if missing:
      msg.append(f"missing keys {_short(missing)}")
    if unexpected:
      msg.append(f"unexpected keys {_short(unexpected)}")
    if bad:
      msg.append("mis-shaped keys " + "; ".join(bad[:10]) + (f" (+{len(bad) - 10} more)" if len(bad) > 10 else ""))
    if unequal:
      msg.append(f"LRM keys whose seq_l / seq_r copies differ {_short(unequal)}")
    msg.append("(omit the preset to infer the variant from the file, or name the right one)")
    raise CheckpointError(" ".join(msg))
  if uncovered:  # the table is wrong, not the file
    raise AssertionError(f"key table leaves params uncovered: {uncovered}")
  return params


def _short(keys: list[str], n: int = 12) -> str:
  return str(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def _natural(key: str):
  return [int(t) if t.isdigit() else t for t in key.split(".")]


def default_vgg_path() -> Path:
  """Where torchvision caches VGG19: ``$TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth`` (default ~/.cache/torch)."""
  torch_home = os.environ.get("TORCH_HOME") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "torch")
  return Path(torch_home) / "hub" / "checkpoints" / VGG19_FILE


def resolve_vgg_weights(vgg_weights: str | os.PathLike | None, *, flag: str = "--vgg_weights") -> Path:
  """The VGG19 weights file: ``vgg_weights`` if given, else torchvision's cache; clear error if neither exists.

  ``flag``: how the user passes the path (named in the messages).
  """
  if vgg_weights:
    p = Path(vgg_weights).expanduser()
    if not p.is_file():
      raise FileNotFoundError(f"{flag} {p} does not exist (expected torchvision's {VGG19_FILE}, {VGG19_URL}).")
    return p
  p = default_vgg_path()
  if not p.is_file():
    raise FileNotFoundError(
        f"This model needs torchvision's VGG19 weights (its prior / perceptual loss): pass {flag} PATH, or put {VGG19_FILE} "
        f"where torchvision caches it ({p}; set by $TORCH_HOME, default ~/.cache/torch). Download: {VGG19_URL}")
  return p


def load_dsrnet(path: str | os.PathLike, preset: str | None = None, *, vgg_weights=None, dtype=jnp.float32
                ) -> tuple[models.ReflectionRemovalNet, dict, dict, dict]:
  """DSRNet checkpoint -> (model, trainable, frozen, info).

  ``preset`` (``'dsrnet_l'``, ``'dsrnet_l_nature'``, ``'dsrnet_s'``) is checked against the file;
  when None the variant is inferred from the state dict's shapes. ``vgg_weights``: torchvision
  VGG19 state dict or path (see :func:`resolve_vgg_weights`; ``False`` = random VGG, tests only).
  ``info``: {'variant', 'fields', 'format', 'epoch', 'iterations', 'prefix'}.
  """
  from backbones_jax import vgg as vgg_lib

  if vgg_weights is not False and not isinstance(vgg_weights, Mapping):
    vgg_weights = resolve_vgg_weights(vgg_weights)  # fail fast, before reading a large checkpoint
  sd, meta = read_state_dict(path)
  variant, fields = infer_variant(sd)
  if preset is not None:
    if preset not in models.DSRNET_PRESETS:
      raise ValueError(f"preset {preset!r} is not a DSRNet preset; choose one of {list(models.DSRNET_PRESETS)} "
                       "or omit it to infer the variant from the file.")
    if preset != variant:
      raise CheckpointError(f"{path}: holds a {variant} DSRNet (width {fields['width']}, lrm "
                            f"{fields['lrm_blocks']}, shared_b {fields['shared_b']}), not {preset}; omit the preset "
                            "to infer it.")
  model = models.ReflectionRemovalNet(**fields, dtype=dtype)
  trainable = convert_state_dict(sd, model, source=os.fspath(path))
  trainable = jax.tree.map(jnp.asarray, trainable)
  if vgg_weights is False:
    _, vgg_params = vgg_lib.init_vgg(19, 0)
  elif isinstance(vgg_weights, Mapping):
    _, vgg_params = vgg_lib.load_torchvision_vgg(vgg_weights, 19)
  else:
    _, vgg_params = vgg_lib.load_torchvision_vgg(str(vgg_weights), 19)
  info = dict(meta, variant=variant, fields=fields)
  return model, trainable, {"vgg": vgg_params}, info


def init_from_state_dict(sd: Mapping[str, Any], reference: models.ReflectionRemovalNet, params: Mapping
                         ) -> tuple[dict, list[str], list[str]]:
  """Copy DSRNet tensors into ``params`` (any preset) wherever the path and shape match.

  The DSRNet table of ``reference`` (a DSRNet model of the file's variant) names each tensor's
  path; tensors land where ``params`` has the same path and shape. A shared ``b`` fills ``b_t``
  and ``b_r`` when ``params`` has those. -> (new params, loaded paths, fresh paths).
  """
  table = key_table(reference)
  flat_src: dict[tuple, np.ndarray] = {}
  for key, (path, kind) in table.items():
    if key in sd:
      flat_src[path] = _to_flax(sd[key], kind)
  out = jax.tree.map(lambda x: x, dict(params))
  loaded = []
  for path in _flat_paths(params):
    cands = [path]
    if path[-1] in ("b_t", "b_r"):
      cands.append(path[:-1] + ("b",))
    if path[-1] == "b" and len(path) > 1:
      cands.append(path[:-1] + ("b_t",))
    target = _get(params, path)
    for c in cands:
      v = flat_src.get(c)
      if v is not None and tuple(v.shape) == tuple(target.shape):
        _set(out, path, jnp.asarray(v, target.dtype))
        loaded.append("/".join(path))
        break
  fresh = sorted(set("/".join(p) for p in _flat_paths(params)) - set(loaded))
  return out, loaded, fresh
