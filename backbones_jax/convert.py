"""Checkpoint conversion: Hugging Face / OpenAI / AlphaCLIP CLIP weights -> Flax params.

Every supported naming scheme is an explicit table of ``(regex on the torch name, targets)``
where each target is ``(flax path template, transform)``. Templates use the regex groups
(``\\1``); transforms turn the torch array into the Flax one:

* ``linear``: ``nn.Linear.weight`` (out, in) -> Dense kernel (in, out) (transpose);
* ``conv``: ``nn.Conv2d.weight`` OIHW -> Conv kernel HWIO;
* ``ident``: unchanged (biases, embeddings, LayerNorm weights -> ``scale``, OpenAI ``proj``
  matrices which are already (in, out));
* ``qkv(i, ...)``: OpenAI's fused ``in_proj`` (3D, ...) split into q (i=0), k (1), v (2).

After mapping, the flat result is checked against ``jax.eval_shape(model.init, ...)``: any
missing, unexpected or mis-shaped key raises :class:`CheckpointMismatchError`, which names them.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Iterable, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from backbones_jax import torch_pickle
from backbones_jax.clip import CLIP, CLIPSpec, CLIPTextSpec, CLIPVisionSpec, abstract_params

__all__ = [
    "CheckpointMismatchError", "CheckpointFormatError", "read_state_dict", "HF_CLIP_TABLE", "OPENAI_CLIP_TABLE", "HF_IGNORED",
    "OPENAI_IGNORED", "convert_state_dict", "check_params", "flatten", "unflatten",
    "infer_openai_spec", "load_hf_clip", "load_openai_clip", "load_clip", "strip_prefix",
    "is_openai_state_dict", "to_params", "openai_visual_table", "OPENAI_TEXT_TABLE",
]


class CheckpointMismatchError(ValueError):
  """The checkpoint does not fit the model: lists missing, unexpected and mis-shaped keys."""


class CheckpointFormatError(ValueError):
  """A weights file that cannot be read (truncated, corrupt or another format): names the file and
  the format that was expected."""


TORCH_FORMAT = ("a PyTorch checkpoint (a torch.save zip archive or legacy pickle, or a TorchScript "
                "archive) holding a state dict")
SAFETENSORS_FORMAT = "a safetensors file (8-byte header length, JSON header, tensor data)"
MSGPACK_FORMAT = "Flax msgpack (flax.serialization.to_bytes of the CLIP params)"


def read_state_dict(path: str | os.PathLike, what: str = "CLIP") -> dict[str, np.ndarray]:
  """``torch_pickle.load_state_dict`` whose read errors name the file and the expected format.

  Raises FileNotFoundError (missing file) or CheckpointFormatError (anything that cannot be read).
  """
  path = os.fspath(path)
  expected = SAFETENSORS_FORMAT if path.endswith(".safetensors") else TORCH_FORMAT
  try:
    return torch_pickle.load_state_dict(path)
  except FileNotFoundError:
    raise
  except Exception as e:  # noqa: BLE001 - struct/json/zip/pickle/reshape errors of a bad file
    raise CheckpointFormatError(
        f"{path} cannot be read as {expected} of {what} weights ({type(e).__name__}: {e}). The file is "
        "truncated, corrupt or of another format: download it again, or pass the right file.") from e


Transform = Callable[[np.ndarray], np.ndarray]
Table = Sequence[tuple[str, Sequence[tuple[str, Transform]]]]


def ident(x: np.ndarray) -> np.ndarray:
  return x


def linear(x: np.ndarray) -> np.ndarray:
  if x.ndim != 2:
    raise ValueError(f"expected a 2-D linear weight, got shape {x.shape}")
  return x.T


def conv(x: np.ndarray) -> np.ndarray:
  if x.ndim != 4:
    raise ValueError(f"expected a 4-D OIHW conv weight, got shape {x.shape}")
  return x.transpose(2, 3, 1, 0)


def qkv(i: int, then: Transform = ident) -> Transform:
  """Part ``i`` (q=0, k=1, v=2) of a fused (3D, ...) in_proj weight or bias."""
  def split(x: np.ndarray) -> np.ndarray:
    if x.shape[0] % 3:
      raise ValueError(f"fused in_proj of shape {x.shape} is not divisible into q, k, v")
    d = x.shape[0] // 3
    return then(x[i * d:(i + 1) * d])
  split.__name__ = f"qkv{i}"
  return split


def _ln(src: str, dst: str) -> list[tuple[str, list[tuple[str, Transform]]]]:
  """LayerNorm: weight -> scale, bias -> bias."""
  return [(rf"{src}\.weight", [(f"{dst}/scale", ident)]),
          (rf"{src}\.bias", [(f"{dst}/bias", ident)])]


def _dense(src: str, dst: str, bias: bool = True):
  rows = [(rf"{src}\.weight", [(f"{dst}/kernel", linear)])]
  if bias:
    rows.append((rf"{src}\.bias", [(f"{dst}/bias", ident)]))
  return rows


_HF_LAYER = r"(text|vision)_model\.encoder\.layers\.(\d+)"
_FX_LAYER = r"\1_model/encoder/layers/\2"

# Hugging Face PyTorch CLIPModel / CLIPVisionModelWithProjection / CLIPTextModelWithProjection.
HF_CLIP_TABLE: Table = [
    (r"text_model\.embeddings\.token_embedding\.weight",
     [("text_model/embeddings/token_embedding/embedding", ident)]),
    (r"text_model\.embeddings\.position_embedding\.weight",
     [("text_model/embeddings/position_embedding/embedding", ident)]),
    *[row for p in ("q", "k", "v", "out")
      for row in _dense(rf"{_HF_LAYER}\.self_attn\.{p}_proj", rf"{_FX_LAYER}/self_attn/{p}_proj")],
    *_ln(rf"{_HF_LAYER}\.layer_norm1", rf"{_FX_LAYER}/layer_norm1"),
    *_ln(rf"{_HF_LAYER}\.layer_norm2", rf"{_FX_LAYER}/layer_norm2"),
    *_dense(rf"{_HF_LAYER}\.mlp\.fc1", rf"{_FX_LAYER}/mlp/fc1"),
    *_dense(rf"{_HF_LAYER}\.mlp\.fc2", rf"{_FX_LAYER}/mlp/fc2"),
    *_ln(r"text_model\.final_layer_norm", "text_model/final_layer_norm"),
    (r"vision_model\.embeddings\.class_embedding",
     [("vision_model/embeddings/class_embedding", ident)]),
    (r"vision_model\.embeddings\.patch_embedding\.weight",
     [("vision_model/embeddings/patch_embedding/kernel", conv)]),
    (r"vision_model\.embeddings\.position_embedding\.weight",
     [("vision_model/embeddings/position_embedding/embedding", ident)]),
    *_ln(r"vision_model\.pre_layrnorm", "vision_model/pre_layrnorm"),
    *_ln(r"vision_model\.post_layernorm", "vision_model/post_layernorm"),
    *_dense(r"visual_projection", "visual_projection", bias=False),
    *_dense(r"text_projection", "text_projection", bias=False),
    (r"logit_scale", [("logit_scale", ident)]),
]
# Non-persistent buffers that older transformers versions saved.
HF_IGNORED = (r".*\.position_ids",)


def _openai_block(src: str, dst: str, alpha_style: bool = False):
  """One OpenAI ResidualAttentionBlock ``src`` (regex, group 1 = index) -> HF-named layer."""
  # nn.MultiheadAttention names the fused projection in_proj_weight / in_proj_bias; AlphaCLIP's
  # visual Attention uses an nn.Linear called in_proj (in_proj.weight / in_proj.bias).
  w = r"in_proj(?:_|\.)weight" if alpha_style else r"in_proj_weight"
  b = r"in_proj(?:_|\.)bias" if alpha_style else r"in_proj_bias"
  return [
      (rf"{src}\.attn\.{w}", [(f"{dst}/self_attn/{p}_proj/kernel", qkv(i, linear))
                              for i, p in enumerate("qkv")]),
      (rf"{src}\.attn\.{b}", [(f"{dst}/self_attn/{p}_proj/bias", qkv(i))
                              for i, p in enumerate("qkv")]),
      *_dense(rf"{src}\.attn\.out_proj", f"{dst}/self_attn/out_proj"),
      *_ln(rf"{src}\.ln_1", f"{dst}/layer_norm1"),
      *_ln(rf"{src}\.ln_2", f"{dst}/layer_norm2"),
      *_dense(rf"{src}\.mlp\.c_fc", f"{dst}/mlp/fc1"),
      *_dense(rf"{src}\.mlp\.c_proj", f"{dst}/mlp/fc2"),
  ]


def openai_visual_table(alpha: bool = False) -> Table:
  """OpenAI ``visual.*`` ViT keys (AlphaCLIP: plus ``conv1_alpha`` and ``attn.in_proj.*``)."""
  rows = [
      (r"visual\.class_embedding", [("vision_model/embeddings/class_embedding", ident)]),
      (r"visual\.positional_embedding",
       [("vision_model/embeddings/position_embedding/embedding", ident)]),
      (r"visual\.conv1\.weight", [("vision_model/embeddings/patch_embedding/kernel", conv)]),
      *_ln(r"visual\.ln_pre", "vision_model/pre_layrnorm"),
      *_openai_block(r"visual\.transformer\.resblocks\.(\d+)",
                     r"vision_model/encoder/layers/\1", alpha_style=alpha),
      *_ln(r"visual\.ln_post", "vision_model/post_layernorm"),
      (r"visual\.proj", [("visual_projection/kernel", ident)]),  # already (width, embed)
  ]
  if alpha:
    rows.append((r"visual\.conv1_alpha\.weight",
                 [("vision_model/embeddings/conv1_alpha/kernel", conv)]))
  return rows


OPENAI_TEXT_TABLE: Table = [
    (r"token_embedding\.weight", [("text_model/embeddings/token_embedding/embedding", ident)]),
    (r"positional_embedding", [("text_model/embeddings/position_embedding/embedding", ident)]),
    *_openai_block(r"transformer\.resblocks\.(\d+)", r"text_model/encoder/layers/\1"),
    *_ln(r"ln_final", "text_model/final_layer_norm"),
    (r"text_projection", [("text_projection/kernel", ident)]),  # already (width, embed)
    (r"logit_scale", [("logit_scale", ident)]),
]

# OpenAI CLIP state dict (``clip.load(..., jit=False).state_dict()`` or the TorchScript archive).
OPENAI_CLIP_TABLE: Table = [*openai_visual_table(), *OPENAI_TEXT_TABLE]
# Scalars kept in OpenAI's TorchScript archives (deleted by OpenAI's build_model too), and the
# causal mask, which is a plain tensor attribute of the text blocks (never a parameter).
OPENAI_IGNORED = (r"input_resolution", r"context_length", r"vocab_size", r".*\.attn_mask")


def flatten(tree, sep: str = "/") -> dict[str, Any]:
  """Nested dict -> {"a/b/c": leaf}."""
  return {sep.join(k): v for k, v in flax.traverse_util.flatten_dict(
      flax.core.unfreeze(tree) if isinstance(tree, flax.core.FrozenDict) else tree).items()}


def unflatten(flat: dict[str, Any], sep: str = "/") -> dict:
  """{"a/b/c": leaf} -> nested dict."""
  return flax.traverse_util.unflatten_dict({tuple(k.split(sep)): v for k, v in flat.items()})


def _fmt(items: Iterable[str], limit: int = 20) -> str:
  items = sorted(items)
  more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
  return ", ".join(items[:limit]) + more


def check_params(flat: dict[str, np.ndarray], expected: dict[str, Any], *, source: str = "",
                 unexpected: Sequence[str] = ()) -> None:
  """Raises CheckpointMismatchError unless ``flat`` has exactly ``expected``'s keys and shapes."""
  missing = set(expected) - set(flat)
  extra = set(flat) - set(expected)
  misshaped = [f"{k}: checkpoint {tuple(flat[k].shape)} vs model {tuple(expected[k].shape)}"
               for k in set(flat) & set(expected)
               if tuple(flat[k].shape) != tuple(expected[k].shape)]
  if missing or extra or misshaped or unexpected:
    parts = [f"checkpoint {source} does not match the model" if source
             else "checkpoint does not match the model"]
    if missing:
      parts.append(f"missing keys ({len(missing)}): {_fmt(missing)}")
    if unexpected:
      parts.append(f"unexpected checkpoint keys ({len(unexpected)}): {_fmt(unexpected)}")
    if extra:
      parts.append(f"unexpected keys ({len(extra)}): {_fmt(extra)}")
    if misshaped:
      parts.append(f"mis-shaped keys ({len(misshaped)}): {_fmt(misshaped)}")
    raise CheckpointMismatchError("\n  ".join(parts))


def convert_state_dict(state_dict: dict[str, np.ndarray], table: Table,
                       expected: dict[str, Any] | None = None, *,
                       ignore: Sequence[str] = (), source: str = "") -> dict[str, np.ndarray]:
  """Maps a flat torch state dict to flat Flax params ("a/b/c" keys) through ``table``.

  Args:
    state_dict: {torch name: array}.
    table: explicit ``(regex, [(flax path template, transform), ...])`` rows; each torch name
      must fully match exactly one row.
    expected: flat {flax path: shape-bearing leaf} (e.g. from ``jax.eval_shape``); if given, the
      result must match it exactly.
    ignore: regexes of torch names to drop silently.
    source: a description of the checkpoint for error messages.

  Raises:
    CheckpointMismatchError: unmapped torch names, or (with ``expected``) missing, unexpected or
      mis-shaped keys; the message names them.
  """
  compiled = [(re.compile(p), targets) for p, targets in table]
  ignored = [re.compile(p) for p in ignore]
  out: dict[str, np.ndarray] = {}
  unmapped = []
  for name, value in state_dict.items():
    if any(p.fullmatch(name) for p in ignored):
      continue
    for pattern, targets in compiled:
      m = pattern.fullmatch(name)
      if m:
        value = np.asarray(value)
        for template, fn in targets:
          path = m.expand(template)
          if path in out:
            raise CheckpointMismatchError(f"{source}: two checkpoint keys map to {path}")
          try:
            out[path] = fn(value)
          except ValueError as e:
            raise CheckpointMismatchError(f"{source}: cannot convert {name}: {e}") from e
        break
    else:
      unmapped.append(name)
  if expected is not None or unmapped:
    check_params(out, expected if expected is not None else out, source=source,
                 unexpected=unmapped)
  return out


def to_params(flat: dict[str, np.ndarray], expected: dict[str, Any], param_dtype) -> dict:
  """Casts to ``param_dtype`` and nests; floats only are cast."""
  out = {}
  for k, v in flat.items():
    v = np.asarray(v)
    if np.issubdtype(v.dtype, np.floating) or v.dtype.name == "bfloat16":
      v = jnp.asarray(v, dtype=param_dtype)
    else:
      v = jnp.asarray(v)
    out[k] = v.reshape(expected[k].shape) if k in expected else v
  return unflatten(out)


def strip_prefix(state_dict: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
  """Removes ``prefix`` from every key that has it (e.g. DDP's "module.")."""
  return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state_dict.items()}


def is_openai_state_dict(state_dict: dict[str, Any]) -> bool:
  return any(k.startswith("visual.") or k.startswith("transformer.resblocks") or
             k == "token_embedding.weight" for k in state_dict)


def _count_blocks(state_dict, prefix: str) -> int:
  pat = re.compile(re.escape(prefix) + r"(\d+)\.")
  ids = {int(m.group(1)) for k in state_dict for m in [pat.match(k)] if m}
  return len(ids)


def infer_openai_spec(state_dict: dict[str, np.ndarray], *, require_text: bool = True
                      ) -> tuple[CLIPVisionSpec, CLIPTextSpec | None, int]:
  """Hyper-parameters of an OpenAI-format ViT CLIP from its tensor shapes (as OpenAI's build_model).

  Returns ``(vision spec, text spec or None, projection dim)``. Heads are width // 64, MLPs
  4x wide (read from ``c_fc``), quick_gelu, LayerNorm eps 1e-5; the text EOS id is the
  largest token id (OpenAI pools at ``argmax(ids)``, which equals the first EOT position).
  """
  sd = state_dict
  if "visual.layer1.0.conv1.weight" in sd or "visual.attnpool.positional_embedding" in sd:
    raise ValueError("this is a ResNet CLIP checkpoint (visual.layer1/attnpool); only ViT CLIPs "
                     "are supported")
  need = ["visual.conv1.weight", "visual.positional_embedding", "visual.proj",
          "visual.transformer.resblocks.0.mlp.c_fc.weight"]
  missing = [k for k in need if k not in sd]
  if missing:
    raise CheckpointMismatchError(f"not an OpenAI ViT CLIP state dict: missing {missing} "
                                  f"(found e.g. {sorted(sd)[:5]})")
  width, _, patch, _ = sd["visual.conv1.weight"].shape
  grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
  vision = CLIPVisionSpec(
      image_size=patch * grid, patch_size=patch, hidden_size=width,
      intermediate_size=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
      num_hidden_layers=_count_blocks(sd, "visual.transformer.resblocks."),
      num_attention_heads=width // 64)
  embed = sd["visual.proj"].shape[1]
  text = None
  if "token_embedding.weight" in sd:
    vocab, twidth = sd["token_embedding.weight"].shape
    text = CLIPTextSpec(
        vocab_size=vocab, hidden_size=twidth,
        intermediate_size=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=_count_blocks(sd, "transformer.resblocks."),
        num_attention_heads=twidth // 64,
        max_position_embeddings=sd["positional_embedding"].shape[0],
        eos_token_id=vocab - 1)
    if sd["text_projection"].shape[1] != embed:
      raise CheckpointMismatchError(f"text_projection {sd['text_projection'].shape} and "
                                    f"visual.proj {sd['visual.proj'].shape} disagree")
  elif require_text:
    raise CheckpointMismatchError("OpenAI CLIP state dict without a text tower "
                                  "(no token_embedding.weight)")
  return vision, text, embed


def _read_hf_config(path: str):
  import transformers  # pylint: disable=g-import-not-at-top
  try:
    with open(path) as f:
      raw = json.load(f)
  except ValueError as e:
    raise CheckpointFormatError(f"{path} is not valid JSON ({e}); a Hugging Face CLIP directory needs "
                                "its config.json as saved by transformers.") from None
  mt = raw.get("model_type", "clip")
  if mt != "clip":
    raise ValueError(f"{path}: model_type {mt!r} is not a full CLIP ('clip'); vision- or "
                     "text-only configs are not supported by load_clip")
  return transformers.CLIPConfig.from_json_file(path)


def _hf_weights(directory: str) -> tuple[dict[str, np.ndarray], str, str]:
  """Reads the weights of a local HF model directory: (flat dict, format, file)."""
  d = directory
  msgpack = os.path.join(d, "flax_model.msgpack")
  if os.path.isfile(msgpack):
    try:
      with open(msgpack, "rb") as f:
        tree = flax.serialization.msgpack_restore(f.read())
      if not isinstance(tree, dict):
        raise ValueError(f"top level is a {type(tree).__name__}, not a dict")
    except Exception as e:  # noqa: BLE001 - msgpack raises several types on a bad file
      raise CheckpointFormatError(
          f"{msgpack} cannot be read as {MSGPACK_FORMAT} ({type(e).__name__}: {e}). The file is "
          "truncated or corrupt: download it again.") from e
    if set(tree) == {"params"}:
      tree = tree["params"]
    return {k: np.asarray(v) for k, v in flatten(tree).items()}, "flax", msgpack
  for single, index in (("model.safetensors", "model.safetensors.index.json"),
                        ("pytorch_model.bin", "pytorch_model.bin.index.json")):
    if os.path.isfile(os.path.join(d, single)):
      return read_state_dict(os.path.join(d, single)), "torch", os.path.join(d, single)
    if os.path.isfile(os.path.join(d, index)):
      with open(os.path.join(d, index)) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
      sd = {}
      for shard in shards:
        sd.update(read_state_dict(os.path.join(d, shard)))
      return sd, "torch", os.path.join(d, index)
  raise FileNotFoundError(
      f"{d} has no weights: expected flax_model.msgpack, model.safetensors or pytorch_model.bin "
      f"(found {sorted(os.listdir(d))})")


def _build(spec: CLIPSpec, dtype, param_dtype, remat) -> tuple[CLIP, dict[str, Any]]:
  model = CLIP(spec, remat=remat, dtype=dtype, param_dtype=param_dtype)
  return model, flatten(abstract_params(model))


def load_hf_clip(directory: str, dtype=jnp.float32, param_dtype=jnp.float32, remat=False):
  """(model, params) from a local Hugging Face CLIP directory (no network)."""
  cfg_path = os.path.join(directory, "config.json")
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(f"{directory} has no config.json; a Hugging Face CLIP directory "
                            "needs config.json and a weights file")
  spec = CLIPSpec.from_hf_config(_read_hf_config(cfg_path))
  model, expected = _build(spec, dtype, param_dtype, remat)
  sd, fmt, file = _hf_weights(directory)
  if fmt == "flax":
    flat = {k: v for k, v in sd.items()}
    check_params(flat, expected, source=file)
  else:
    flat = convert_state_dict(strip_prefix(sd, "module."), HF_CLIP_TABLE, expected,
                              ignore=HF_IGNORED, source=file)
  return model, to_params(flat, expected, param_dtype)


def load_openai_clip(path: str, dtype=jnp.float32, param_dtype=jnp.float32, remat=False):
  """(model, params) from an OpenAI CLIP ``.pt`` (TorchScript archive or plain state dict)."""
  sd = strip_prefix(read_state_dict(path, "OpenAI CLIP"), "module.")
  if not is_openai_state_dict(sd):
    if any(k.startswith(("text_model.", "vision_model.")) for k in sd):
      raise ValueError(f"{path} holds Hugging Face-named CLIP weights: put it in a directory "
                       "with its config.json and pass the directory")
    raise CheckpointMismatchError(f"{path} is not an OpenAI CLIP checkpoint (keys e.g. "
                                  f"{sorted(sd)[:5]})")
  vision, text, embed = infer_openai_spec(sd)
  spec = CLIPSpec(vision=vision, text=text, projection_dim=embed)
  model, expected = _build(spec, dtype, param_dtype, remat)
  flat = convert_state_dict(sd, OPENAI_CLIP_TABLE, expected, ignore=OPENAI_IGNORED, source=path)
  return model, to_params(flat, expected, param_dtype)


_HUB_FILES = ("flax_model.msgpack", "model.safetensors", "pytorch_model.bin")


def _download_hub(repo_id: str) -> str:
  """Downloads config + one weights file of a hub model; returns the local snapshot dir."""
  import huggingface_hub  # pylint: disable=g-import-not-at-top
  try:
    cfg = huggingface_hub.hf_hub_download(repo_id, "config.json")
  except Exception as e:  # noqa: BLE001  (offline, unknown repo, gated...)
    raise FileNotFoundError(
        f"{repo_id!r} is not a local directory or file, and fetching it from the Hugging Face "
        f"hub failed ({type(e).__name__}: {e}). Pass a local directory with config.json and "
        "model.safetensors / pytorch_model.bin / flax_model.msgpack, or an OpenAI .pt file") from e
  last = None
  for name in _HUB_FILES:
    try:
      huggingface_hub.hf_hub_download(repo_id, name)
      return os.path.dirname(cfg)
    except Exception as e:  # noqa: BLE001
      last = e
  raise FileNotFoundError(f"hub repo {repo_id!r} has none of {_HUB_FILES}: {last}")


def load_clip(name_or_path: str | os.PathLike, dtype=jnp.float32, param_dtype=jnp.float32,
              remat: bool = False):
  """Loads CLIP from a local HF directory, an OpenAI ``.pt``/``.pth`` file or a hub id.

  A local path never touches the network; only a string that is neither an existing directory
  nor an existing file, and does not look like a path, is treated as a hub id.
  """
  path = os.fspath(name_or_path)
  if os.path.isdir(path):
    return load_hf_clip(path, dtype, param_dtype, remat)
  if os.path.isfile(path):
    return load_openai_clip(path, dtype, param_dtype, remat)
  looks_like_path = (path.startswith((".", "/", "~")) or path.count("/") > 1 or "\\" in path
                     or path.endswith((".pt", ".pth", ".bin", ".safetensors", ".msgpack")))
  if looks_like_path:
    raise FileNotFoundError(f"no such CLIP checkpoint file or directory: {path}")
  return load_hf_clip(_download_hub(path), dtype, param_dtype, remat)


# ----------------------------------------------------------------------------- Orbax train states
def restore_on_one_device(state_dir: str | os.PathLike) -> Any:
  """A train state saved by Orbax on any device mesh (2 CPU devices, 8 TPU cores...) -> on one device.

  Orbax refuses to restore a sharded checkpoint on another topology without a target, so the
  target is built from the checkpoint's own metadata (shapes, dtypes) with single-device
  shardings. Raises :class:`CheckpointFormatError` naming the directory when it cannot be read.
  Used by the methods' offline tools (``lcdh_jax.search``, ``derefl_jax.predict``).
  """
  import logging
  import warnings

  import orbax.checkpoint as ocp

  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  ckptr = ocp.StandardCheckpointer()
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)  # "metadata file does not exist" notices
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      meta = ckptr.metadata(state_dir)
      tree = getattr(meta, "item_metadata", meta)
      tree = getattr(tree, "tree", tree)
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding)
                            if hasattr(m, "shape") and hasattr(m, "dtype") else m, tree)
      return ckptr.restore(state_dir, target)
  except Exception as e:  # noqa: BLE001 - orbax raises many types for a damaged checkpoint
    raise CheckpointFormatError(f"cannot restore the checkpoint {state_dir}: {type(e).__name__}: {e}") from None
  finally:
    absl_logger.setLevel(level)
