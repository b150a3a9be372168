"""VGG16 / VGG19 convolutional feature networks (torchvision layout) in Flax, NHWC.

Public API:

* :class:`VGG` -- ``VGG(depth=19, taps=('relu1_1', ..., 'relu5_1'))``; ``apply`` maps
  ImageNet-normalised NHWC images to a dict of the requested ReLU taps. Computation stops after
  the deepest requested tap (a loss on ``relu1_1..relu3_1`` never runs conv4/conv5).
* :func:`imagenet_normalize` -- ``(x01 - mean) / std`` with torchvision's ImageNet statistics.
* :func:`vgg_features` -- ``vgg_features(model, params, images01)``: normalise + apply.
* :func:`load_torchvision_vgg` -- torchvision state dict (``features.N.weight/bias``; a
  ``{name: array}`` dict, or a ``.pth`` path) -> Flax params, through the explicit key table
  :func:`torchvision_key_table`, checked against ``jax.eval_shape(model.init, ...)``.
* :func:`init_vgg` -- random params (tests, demos without downloadable weights).

Parameter names: ``conv{block}_{index}/{kernel,bias}`` (e.g. ``conv3_2/kernel``), kernels HWIO.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Number of 3x3 convolutions in each of the five blocks.
_BLOCKS = {16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
_WIDTHS = (64, 128, 256, 512, 512)

DEFAULT_TAPS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


def layer_names(depth: int) -> list[str]:
  """Names of the conv layers of VGG-``depth`` in forward order (``conv1_1`` ...)."""
  if depth not in _BLOCKS:
    raise ValueError(f"VGG depth must be 16 or 19, got {depth!r}.")
  return [f"conv{b + 1}_{i + 1}" for b, n in enumerate(_BLOCKS[depth]) for i in range(n)]


def all_taps(depth: int) -> list[str]:
  """Every ReLU tap name of VGG-``depth`` (``relu1_1`` ... ``relu5_3|4``)."""
  return ["relu" + name[4:] for name in layer_names(depth)]


def torchvision_key_table(depth: int) -> dict[str, tuple[str, str]]:
  """Explicit map torchvision key -> (flax conv name, 'kernel'|'bias').

  torchvision's ``vgg{16,19}().features`` is an ``nn.Sequential`` of conv, ReLU (and a max-pool
  after each block), so conv ``k`` sits at index ``2k + (number of pools before it)``.
  """
  if depth not in _BLOCKS:
    raise ValueError(f"VGG depth must be 16 or 19, got {depth!r}.")
  table = {}
  idx = 0
  for b, n in enumerate(_BLOCKS[depth]):
    for i in range(n):
      name = f"conv{b + 1}_{i + 1}"
      table[f"features.{idx}.weight"] = (name, "kernel")
      table[f"features.{idx}.bias"] = (name, "bias")
      idx += 2  # conv, relu
    idx += 1  # max-pool
  return table


def imagenet_normalize(x01: jax.Array) -> jax.Array:
  """(..., 3) images in [0, 1] -> ImageNet-normalised (torchvision mean/std)."""
  x01 = jnp.asarray(x01)
  if x01.shape[-1] != 3:
    raise ValueError(f"imagenet_normalize expects NHWC RGB images (last axis 3), got shape {x01.shape}.")
  mean = jnp.asarray(IMAGENET_MEAN, x01.dtype)
  std = jnp.asarray(IMAGENET_STD, x01.dtype)
  return (x01 - mean) / std


class VGG(nn.Module):
  """VGG16/19 conv features: (B, H, W, 3) ImageNet-normalised -> {tap: (B, H/2^k, W/2^k, C)}."""
  depth: int = 19
  taps: Sequence[str] = DEFAULT_TAPS
  width_divisor: int = 1  # >1 only for tiny random demo/test networks (not loadable from torchvision)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    if self.depth not in _BLOCKS:
      raise ValueError(f"VGG depth must be 16 or 19, got {self.depth!r}.")
    valid = all_taps(self.depth)
    bad = [t for t in self.taps if t not in valid]
    if bad or not self.taps:
      raise ValueError(f"Unknown VGG{self.depth} taps {bad or '(none given)'}; valid taps: {valid}.")
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"VGG expects NHWC RGB images (B, H, W, 3), got shape {x.shape}.")
    last = max(valid.index(t) for t in self.taps)
    out = {}
    k = 0
    x = x.astype(self.dtype)
    for b, n in enumerate(_BLOCKS[self.depth]):
      if b > 0:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      for i in range(n):
        name = f"conv{b + 1}_{i + 1}"
        x = nn.Conv(max(_WIDTHS[b] // self.width_divisor, 1), (3, 3), padding=((1, 1), (1, 1)),
                    dtype=self.dtype, name=name)(x)
        x = nn.relu(x)
        tap = "relu" + name[4:]
        if tap in self.taps:
          out[tap] = x
        if k == last:
          return out
        k += 1
    return out


def vgg_features(model: VGG, params, images01: jax.Array) -> dict[str, jax.Array]:
  """[0, 1] NHWC images -> dict of the model's taps (ImageNet normalisation applied here)."""
  return model.apply({"params": params}, imagenet_normalize(images01))


def init_vgg(depth: int = 19, seed: int = 0, *, width_divisor: int = 1, taps=DEFAULT_TAPS):
  """Random VGG params (He-normal kernels, zero bias; numpy, no compile) -> (model, params)."""
  model = VGG(depth=depth, taps=tuple(taps), width_divisor=width_divisor)
  full = VGG(depth=depth, taps=(all_taps(depth)[-1],), width_divisor=width_divisor)
  shapes = jax.eval_shape(full.init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))["params"]
  rng = np.random.default_rng(seed)
  params = {}
  for name, p in shapes.items():  # He-normal (fan_in = 9 * C_in), as torchvision initialises convs
    kh, kw, cin, cout = p["kernel"].shape
    std = np.sqrt(2.0 / (kh * kw * cin))
    params[name] = {"kernel": jnp.asarray(rng.normal(0.0, std, (kh, kw, cin, cout)), jnp.float32),
                    "bias": jnp.zeros((cout,), jnp.float32)}
  return model, params


def _read_state_dict(path_or_state_dict) -> dict[str, np.ndarray]:
  if isinstance(path_or_state_dict, Mapping):
    return {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v))
            for k, v in path_or_state_dict.items()}
  path = os.fspath(path_or_state_dict)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"VGG weights not found at {path!r}. Download torchvision's vgg19-dcbb9e9d.pth / "
        "vgg16-397923af.pth (https://download.pytorch.org/models/) and pass its path.")
  try:
    from backbones_jax.torch_pickle import load_state_dict  # no torch needed
  except ImportError:  # pragma: no cover - torch_pickle ships with the project
    load_state_dict = None
  if load_state_dict is not None:
    return dict(load_state_dict(path))
  try:  # pragma: no cover
    import torch
  except ImportError as e:  # pragma: no cover
    raise ImportError("Reading a .pth file needs backbones_jax.torch_pickle or torch installed.") from e
  sd = torch.load(path, map_location="cpu", weights_only=True)  # pragma: no cover
  return {k: v.numpy() for k, v in sd.items()}  # pragma: no cover


def load_torchvision_vgg(path_or_state_dict, depth: int = 19, *, taps=DEFAULT_TAPS,
                         dtype=jnp.float32, allow_classifier: bool = True):
  """torchvision VGG state dict (dict or .pth path) -> (VGG model, params).

  Keys ``features.N.weight`` (O, I, 3, 3) -> ``convB_I/kernel`` (3, 3, I, O); ``features.N.bias``
  -> ``convB_I/bias``. A ``module.`` prefix is stripped; ``classifier.*`` keys (full
  ``vgg19()`` checkpoints) are ignored when ``allow_classifier``; the state dict of
  ``vgg.features`` alone (keys ``N.weight``) is accepted too. Missing, unexpected or
  mis-shaped keys raise ``ValueError`` naming them.
  """
  if depth not in _BLOCKS:
    raise ValueError(f"VGG depth must be 16 or 19, got {depth!r}.")
  sd = _read_state_dict(path_or_state_dict)
  sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
  if allow_classifier:
    sd = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
  if sd and all(k.split(".")[0].isdigit() for k in sd):  # state dict of ``vgg.features`` itself
    sd = {"features." + k: v for k, v in sd.items()}
  table = torchvision_key_table(depth)
  model = VGG(depth=depth, taps=tuple(taps), dtype=dtype)
  full = VGG(depth=depth, taps=(all_taps(depth)[-1],))
  abstract = jax.eval_shape(full.init, jax.random.PRNGKey(0),
                            jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))["params"]
  missing = sorted(set(table) - set(sd), key=_natural)
  unexpected = sorted(set(sd) - set(table), key=_natural)
  params: dict[str, dict[str, np.ndarray]] = {}
  bad_shapes = []
  for key, (name, leaf) in table.items():
    if key not in sd:
      continue
    v = np.asarray(sd[key], dtype=np.float32)
    if leaf == "kernel" and v.ndim == 4:
      v = np.transpose(v, (2, 3, 1, 0))  # OIHW -> HWIO
    want = tuple(abstract[name][leaf].shape)
    if v.shape != want:
      bad_shapes.append(f"{key}: got {tuple(np.shape(sd[key]))}, expected torch shape "
                        f"{_torch_shape(want, leaf)}")
      continue
    params.setdefault(name, {})[leaf] = v
  if missing or unexpected or bad_shapes:
    msg = [f"State dict does not match torchvision VGG{depth} features:"]
    if missing:
      msg.append(f"missing keys {missing}")
    if unexpected:
      msg.append(f"unexpected keys {unexpected} (is this VGG{19 if depth == 16 else 16}?)")
    if bad_shapes:
      msg.append("mis-shaped keys " + "; ".join(bad_shapes))
    raise ValueError(" ".join(msg))
  params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
  return model, params


def _torch_shape(hwio, leaf):
  return (hwio[3], hwio[2], hwio[0], hwio[1]) if leaf == "kernel" else hwio


def _natural(key: str):
  return [int(t) if t.isdigit() else t for t in key.split(".")]


def param_count(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
