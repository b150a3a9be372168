"""CLIP (Radford et al., 2021) in Flax Linen with Hugging Face Flax-CLIP parameter names.

The parameter tree mirrors ``transformers``' former ``FlaxCLIPModel``::

  text_model/embeddings/token_embedding/embedding           (vocab, D_t)
  text_model/embeddings/position_embedding/embedding        (L, D_t)
  text_model/encoder/layers/<i>/self_attn/{q,k,v,out}_proj/{kernel,bias}
  text_model/encoder/layers/<i>/{layer_norm1,layer_norm2}/{scale,bias}
  text_model/encoder/layers/<i>/mlp/{fc1,fc2}/{kernel,bias}
  text_model/final_layer_norm/{scale,bias}
  vision_model/embeddings/{class_embedding, patch_embedding/kernel, position_embedding/embedding}
  vision_model/pre_layrnorm/{scale,bias}        (sic: Hugging Face's spelling)
  vision_model/encoder/layers/<i>/...           (as for text)
  vision_model/post_layernorm/{scale,bias}
  visual_projection/kernel, text_projection/kernel, logit_scale

Images are NHWC, already CLIP-normalised (see :func:`normalize`). Linear kernels are
``(in, out)``; the patch embedding is an HWIO convolution.

Text pooling follows Hugging Face: the final-layer-normed hidden state at the EOS position, where
the EOS position is ``argmax(input_ids)`` when ``eos_token_id == 2`` (configs written before
transformers PR #24773; for the CLIP BPE vocabulary the end-of-text token has the largest id, so
this is OpenAI's rule) and otherwise the *first* position whose id equals ``eos_token_id``
(padding may reuse the EOS id). Every sequence must contain an EOS token.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "CLIP_MEAN", "CLIP_STD", "normalize", "ACTIVATIONS",
    "CLIPVisionSpec", "CLIPTextSpec", "CLIPSpec", "clip_spec", "tiny_clip_spec", "CLIP_PRESETS",
    "CLIPAttention", "CLIPMLP", "CLIPEncoderLayer", "CLIPEncoder", "CLIPTextEmbeddings",
    "CLIPVisionEmbeddings", "CLIPTextTransformer", "CLIPVisionTransformer", "CLIP",
    "init_clip", "init_params", "abstract_params", "encode_image", "encode_text", "load_clip", "count_params",
]

Dtype = Any

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def normalize(images01) -> jnp.ndarray:
  """CLIP normalisation of RGB images in [0, 1]: (..., H, W, 3) -> (..., H, W, 3)."""
  images01 = jnp.asarray(images01)
  if images01.shape[-1] != 3:
    raise ValueError(f"normalize expects channels-last RGB images (..., H, W, 3), got shape "
                     f"{images01.shape}; transpose NCHW input with x.transpose(0, 2, 3, 1)")
  mean = jnp.asarray(CLIP_MEAN, images01.dtype)
  std = jnp.asarray(CLIP_STD, images01.dtype)
  return (images01 - mean) / std


def _quick_gelu(x):
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable] = {
    "quick_gelu": _quick_gelu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),  # torch/HF "gelu" is exact (erf)
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_fast": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}


def _check_tower(kind: str, hidden_size: int, heads: int, act: str):
  if hidden_size % heads:
    raise ValueError(f"{kind}: hidden_size {hidden_size} is not divisible by "
                     f"num_attention_heads {heads}")
  if act not in ACTIVATIONS:
    raise ValueError(f"{kind}: unsupported hidden_act {act!r}; supported: {sorted(ACTIVATIONS)}")


@dataclasses.dataclass(frozen=True)
class CLIPVisionSpec:
  """Vision tower hyper-parameters (field names as in transformers' CLIPVisionConfig)."""

  image_size: int = 224
  patch_size: int = 32
  num_channels: int = 3
  hidden_size: int = 768
  intermediate_size: int = 3072
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5

  def __post_init__(self):
    _check_tower("vision", self.hidden_size, self.num_attention_heads, self.hidden_act)
    if self.image_size % self.patch_size:
      raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size "
                       f"{self.patch_size}")

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  @classmethod
  def from_hf_config(cls, config) -> "CLIPVisionSpec":
    """From a ``transformers.CLIPVisionConfig``."""
    return cls(image_size=config.image_size, patch_size=config.patch_size,
               num_channels=config.num_channels, hidden_size=config.hidden_size,
               intermediate_size=config.intermediate_size,
               num_hidden_layers=config.num_hidden_layers,
               num_attention_heads=config.num_attention_heads, hidden_act=config.hidden_act,
               layer_norm_eps=config.layer_norm_eps)

  def hf_kwargs(self) -> dict:
    """Keyword arguments for ``transformers.CLIPVisionConfig``."""
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class CLIPTextSpec:
  """Text tower hyper-parameters (field names as in transformers' CLIPTextConfig)."""

  vocab_size: int = 49408
  hidden_size: int = 512
  intermediate_size: int = 2048
  num_hidden_layers: int = 12
  num_attention_heads: int = 8
  max_position_embeddings: int = 77
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  eos_token_id: int = 49407

  def __post_init__(self):
    _check_tower("text", self.hidden_size, self.num_attention_heads, self.hidden_act)

  @classmethod
  def from_hf_config(cls, config) -> "CLIPTextSpec":
    """From a ``transformers.CLIPTextConfig``."""
    return cls(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
               intermediate_size=config.intermediate_size,
               num_hidden_layers=config.num_hidden_layers,
               num_attention_heads=config.num_attention_heads,
               max_position_embeddings=config.max_position_embeddings,
               hidden_act=config.hidden_act, layer_norm_eps=config.layer_norm_eps,
               eos_token_id=int(config.eos_token_id))

  def hf_kwargs(self) -> dict:
    """Keyword arguments for ``transformers.CLIPTextConfig``."""
    kw = dataclasses.asdict(self)
    if self.vocab_size <= 49406:  # small vocabularies: keep HF's special ids inside the vocab
      kw.update(bos_token_id=max(0, self.vocab_size - 2), pad_token_id=0)
    return kw


@dataclasses.dataclass(frozen=True)
class CLIPSpec:
  """A whole CLIP: both towers, the joint embedding size and the initial logit scale."""

  vision: CLIPVisionSpec = CLIPVisionSpec()
  text: CLIPTextSpec = CLIPTextSpec()
  projection_dim: int = 512
  logit_scale_init_value: float = 2.6592

  @classmethod
  def from_hf_config(cls, config) -> "CLIPSpec":
    """From a ``transformers.CLIPConfig``."""
    if not hasattr(config, "vision_config") or not hasattr(config, "text_config"):
      raise ValueError(f"expected a transformers CLIPConfig with text and vision configs, got "
                       f"{type(config).__name__}")
    return cls(vision=CLIPVisionSpec.from_hf_config(config.vision_config),
               text=CLIPTextSpec.from_hf_config(config.text_config),
               projection_dim=config.projection_dim,
               logit_scale_init_value=float(config.logit_scale_init_value))

  def to_hf_config(self):
    """The equivalent ``transformers.CLIPConfig`` (imports transformers)."""
    import transformers  # pylint: disable=g-import-not-at-top
    return transformers.CLIPConfig(text_config=self.text.hf_kwargs(),
                                   vision_config=self.vision.hf_kwargs(),
                                   projection_dim=self.projection_dim,
                                   logit_scale_init_value=self.logit_scale_init_value)


def _openai_vit(image_size, patch, width, layers, embed, text_width, text_layers=12):
  return CLIPSpec(
      vision=CLIPVisionSpec(image_size=image_size, patch_size=patch, hidden_size=width,
                            intermediate_size=4 * width, num_hidden_layers=layers,
                            num_attention_heads=width // 64),
      text=CLIPTextSpec(hidden_size=text_width, intermediate_size=4 * text_width,
                        num_hidden_layers=text_layers, num_attention_heads=text_width // 64),
      projection_dim=embed)


# OpenAI's released ViT CLIPs (hyper-parameters from their state dicts).
CLIP_PRESETS: dict[str, CLIPSpec] = {
    "ViT-B/32": _openai_vit(224, 32, 768, 12, 512, 512),
    "ViT-B/16": _openai_vit(224, 16, 768, 12, 512, 512),
    "ViT-L/14": _openai_vit(224, 14, 1024, 24, 768, 768),
    "ViT-L/14@336": _openai_vit(336, 14, 1024, 24, 768, 768),
}


def clip_spec(name: str) -> CLIPSpec:
  """The spec of an OpenAI CLIP preset ("ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336")."""
  if name not in CLIP_PRESETS:
    raise ValueError(f"unknown CLIP preset {name!r}; choose one of {sorted(CLIP_PRESETS)}")
  return CLIP_PRESETS[name]


def tiny_clip_spec(*, width: int = 32, layers: int = 2, heads: int = 2, image_size: int = 32,
                   patch_size: int = 8, vocab_size: int = 64, context_length: int = 16,
                   projection_dim: int = 16, eos_token_id: int | None = None,
                   hidden_act: str = "quick_gelu") -> CLIPSpec:
  """A small random-weight CLIP for tests and offline demos (both towers ``width`` wide)."""
  return CLIPSpec(
      vision=CLIPVisionSpec(image_size=image_size, patch_size=patch_size, hidden_size=width,
                            intermediate_size=4 * width, num_hidden_layers=layers,
                            num_attention_heads=heads, hidden_act=hidden_act),
      text=CLIPTextSpec(vocab_size=vocab_size, hidden_size=width, intermediate_size=4 * width,
                        num_hidden_layers=layers, num_attention_heads=heads,
                        max_position_embeddings=context_length, hidden_act=hidden_act,
                        eos_token_id=vocab_size - 1 if eos_token_id is None else eos_token_id),
      projection_dim=projection_dim)


_dense_init = nn.initializers.normal(0.02)


class CLIPAttention(nn.Module):
  """Multi-head attention: queries (B, Lq, D) [, keys/values (B, L, D)], mask (B, 1, Lq, L) bool
  -> (B, Lq, D). Self-attention when ``kv`` is None.

  Softmax is normalised after the value product, ``(exp(s - max s) @ v) / sum exp(s - max s)``
  (as in flash attention): the same numbers as ``softmax(s) @ v`` up to rounding, but the
  division touches (B, H, L, d) instead of (B, H, L, L); on XLA:CPU this halved the attention
  core's time in the ViT-B/16 encoder.
  Scores, exponentials and their sums are float32 whatever ``dtype`` is.
  """

  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, kv=None):
    kv = x if kv is None else kv
    batch, length, dim = x.shape
    head_dim = dim // self.num_heads
    dense = functools.partial(nn.Dense, dim, dtype=self.dtype, param_dtype=self.param_dtype,
                              kernel_init=_dense_init)
    split = lambda t: t.reshape(t.shape[0], t.shape[1], self.num_heads, head_dim)
    q = split(dense(name="q_proj")(x))
    k = split(dense(name="k_proj")(kv))
    v = split(dense(name="v_proj")(kv))
    q = q * jnp.asarray(head_dim**-0.5, q.dtype)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    # A row's max is a constant shift of that row: no gradient flows through it.
    unnorm = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
    out = jnp.einsum("bhqk,bkhd->bhqd", unnorm.astype(v.dtype), v).astype(jnp.float32)
    out = (out / unnorm.sum(axis=-1)[..., None]).astype(v.dtype)
    out = out.transpose(0, 2, 1, 3).reshape(batch, length, dim)
    return dense(name="out_proj")(out)


class CLIPMLP(nn.Module):
  """Transformer MLP fc1 -> act -> fc2: (B, L, D) -> (B, L, D)."""

  intermediate_size: int
  hidden_act: str = "quick_gelu"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=_dense_init)
    h = nn.Dense(self.intermediate_size, name="fc1", **kw)(x)
    h = ACTIVATIONS[self.hidden_act](h)
    return nn.Dense(x.shape[-1], name="fc2", **kw)(h)


def _layer_norm(eps, dtype, param_dtype, name):
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype,
                      use_fast_variance=False, name=name)


class CLIPEncoderLayer(nn.Module):
  """Pre-LN transformer block: (B, L, D) -> (B, L, D), or (B, n, D) for ``query_index`` (B, n).

  With ``query_index`` only those tokens are updated (they attend to all L tokens): the block's
  output at those positions, computed without the work for the others.
  """

  num_heads: int
  intermediate_size: int
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, query_index=None):
    ln = functools.partial(_layer_norm, self.layer_norm_eps, self.dtype, self.param_dtype)
    h = ln("layer_norm1")(x)
    kv = None
    if query_index is not None:
      batch, length = x.shape[:2]
      take = lambda t: jnp.take_along_axis(t, query_index[:, :, None], axis=1)
      kv, x, h = h, take(x), take(h)
      if mask is not None:
        mask = jnp.take_along_axis(jnp.broadcast_to(mask, (batch, 1, length, length)),
                                   query_index[:, None, :, None], axis=2)
    x = x + CLIPAttention(self.num_heads, self.dtype, self.param_dtype, name="self_attn")(
        h, mask, kv)
    h = ln("layer_norm2")(x)
    return x + CLIPMLP(self.intermediate_size, self.hidden_act, self.dtype, self.param_dtype,
                       name="mlp")(h)


class _LayerCollection(nn.Module):
  """The ``layers`` container (children named "0", "1", ...): (B, L, D) -> (B, L, D).

  ``last_query_index`` (B, n) runs the last layer for those tokens only -> (B, n, D).
  """

  num_layers: int
  num_heads: int
  intermediate_size: int
  hidden_act: str
  layer_norm_eps: float
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, last_query_index=None):
    layer_cls = nn.remat(CLIPEncoderLayer) if self.remat else CLIPEncoderLayer
    for i in range(self.num_layers):
      last = i == self.num_layers - 1
      x = layer_cls(self.num_heads, self.intermediate_size, self.hidden_act, self.layer_norm_eps,
                    self.dtype, self.param_dtype, name=str(i))(
                        x, mask, last_query_index if last else None)
    return x


class CLIPEncoder(nn.Module):
  """A stack of ``num_layers`` encoder layers: (B, L, D) -> (B, L, D).

  With ``last_query_index`` (B, n) int, the last layer is computed only at those positions ->
  (B, n, D): exact, and cheaper when only a pooled token is wanted.
  """

  num_layers: int
  num_heads: int
  intermediate_size: int
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, last_query_index=None):
    return _LayerCollection(self.num_layers, self.num_heads, self.intermediate_size,
                            self.hidden_act, self.layer_norm_eps, self.remat, self.dtype,
                            self.param_dtype, name="layers")(x, mask, last_query_index)


def _encoder(spec, remat, dtype, param_dtype) -> CLIPEncoder:
  return CLIPEncoder(spec.num_hidden_layers, spec.num_attention_heads, spec.intermediate_size,
                     spec.hidden_act, spec.layer_norm_eps, remat, dtype, param_dtype,
                     name="encoder")


class CLIPTextEmbeddings(nn.Module):
  """Token + learned position embeddings: ids (B, L) int -> (B, L, D)."""

  spec: CLIPTextSpec
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids):
    s = self.spec
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, embedding_init=_dense_init)
    tok = nn.Embed(s.vocab_size, s.hidden_size, name="token_embedding", **kw)(input_ids)
    pos = nn.Embed(s.max_position_embeddings, s.hidden_size, name="position_embedding", **kw)(
        jnp.arange(input_ids.shape[-1])[None])
    return tok + pos


class CLIPVisionEmbeddings(nn.Module):
  """Patch conv + [CLS] + learned positions: (B, H, W, C) -> (B, 1 + N, D).

  With ``alpha=True`` (AlphaCLIP) a bias-free, zero-initialised ``conv1_alpha`` maps the alpha
  map (B, H, W, 1) to the patch grid and is added to the RGB patch embedding before the class
  token is prepended.
  """

  spec: CLIPVisionSpec
  alpha: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images, alpha=None):
    s = self.spec
    p = s.patch_size
    conv = functools.partial(nn.Conv, s.hidden_size, (p, p), strides=(p, p), padding="VALID",
                             use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
    x = conv(kernel_init=_dense_init, name="patch_embedding")(images.astype(self.dtype))
    if self.alpha:
      x = x + conv(kernel_init=nn.initializers.zeros, name="conv1_alpha")(alpha.astype(self.dtype))
    batch = x.shape[0]
    x = x.reshape(batch, -1, s.hidden_size)
    cls = self.param("class_embedding", nn.initializers.normal(s.hidden_size**-0.5),
                     (s.hidden_size,), self.param_dtype)
    cls = jnp.broadcast_to(cls.astype(self.dtype), (batch, 1, s.hidden_size))
    x = jnp.concatenate([cls, x], axis=1)
    pos = nn.Embed(s.num_patches + 1, s.hidden_size, dtype=self.dtype,
                   param_dtype=self.param_dtype, embedding_init=_dense_init,
                   name="position_embedding")(jnp.arange(s.num_patches + 1)[None])
    return x + pos


def _check_images(spec: CLIPVisionSpec, images, what="images", channels=None):
  channels = spec.num_channels if channels is None else channels
  want = (spec.image_size, spec.image_size, channels)
  if images.ndim != 4 or tuple(images.shape[1:]) != want:
    hint = ""
    if images.ndim == 4 and images.shape[1] == channels and images.shape[-1] != channels:
      hint = " (looks like NCHW: use x.transpose(0, 2, 3, 1))"
    raise ValueError(f"{what} must be NHWC with shape (B, {want[0]}, {want[1]}, {want[2]}) for "
                     f"this model, got {tuple(images.shape)}{hint}")


class CLIPTextTransformer(nn.Module):
  """Causal text transformer: ids (B, L), mask (B, L) -> (pooled (B, D), hidden (B, L, D)).

  With ``pooled_only=True`` the last layer runs for the EOS token only and ``hidden`` is
  (B, 1, D): the same ``pooled``, about 1/num_layers less work.
  """

  spec: CLIPTextSpec
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, pooled_only: bool = False):
    s = self.spec
    if input_ids.ndim != 2 or not jnp.issubdtype(input_ids.dtype, jnp.integer):
      raise ValueError(f"input_ids must be an integer array (B, L), got {input_ids.dtype} "
                       f"{tuple(input_ids.shape)}")
    length = input_ids.shape[1]
    if length > s.max_position_embeddings:
      raise ValueError(f"sequence length {length} exceeds max_position_embeddings "
                       f"{s.max_position_embeddings}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
      raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} differs from "
                       f"input_ids shape {tuple(input_ids.shape)}")
    x = CLIPTextEmbeddings(s, self.dtype, self.param_dtype, name="embeddings")(input_ids)
    mask = jnp.tril(jnp.ones((length, length), bool))[None, None]
    if attention_mask is not None:
      mask = mask & (attention_mask[:, None, None, :] > 0)
    if s.eos_token_id == 2:  # legacy HF configs: OpenAI's rule, EOT has the largest id
      eos = jnp.argmax(input_ids, axis=-1)
    else:  # first occurrence of the EOS id
      eos = jnp.argmax((input_ids == s.eos_token_id).astype(jnp.int32), axis=-1)
    x = _encoder(s, self.remat, self.dtype, self.param_dtype)(
        x, mask, eos[:, None] if pooled_only else None)
    x = _layer_norm(s.layer_norm_eps, self.dtype, self.param_dtype, "final_layer_norm")(x)
    if pooled_only:
      return x[:, 0], x
    pooled = jnp.take_along_axis(x, eos[:, None, None], axis=1)[:, 0]
    return pooled, x


class CLIPVisionTransformer(nn.Module):
  """ViT: images (B, H, W, C) [, alpha (B, H, W, 1)] -> (pooled (B, D), hidden (B, 1 + N, D)).

  ``pooled`` is ``post_layernorm`` of the class token; ``hidden`` is the last layer's output
  before ``post_layernorm`` (after it, for every token, with ``all_tokens=True``). With
  ``pooled_only=True`` the last layer runs for the class token only (the same ``pooled`` for
  ~1/num_layers less work) and ``hidden`` is (B, 1, D).
  """

  spec: CLIPVisionSpec
  alpha: bool = False
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images, alpha=None, all_tokens: bool = False, pooled_only: bool = False):
    """With ``all_tokens``, the second output is ``post_layernorm`` of every token instead."""
    s = self.spec
    if all_tokens and pooled_only:
      raise ValueError("all_tokens=True needs every token of the last layer; drop pooled_only")
    _check_images(s, images)
    if self.alpha:
      if alpha is None:
        raise ValueError("this AlphaCLIP vision tower needs an alpha map (B, H, W, 1)")
      _check_images(s, alpha, "alpha", channels=1)
      if alpha.shape[0] != images.shape[0]:
        raise ValueError(f"alpha batch {alpha.shape[0]} != images batch {images.shape[0]}")
    x = CLIPVisionEmbeddings(s, self.alpha, self.dtype, self.param_dtype,
                             name="embeddings")(images, alpha)
    x = _layer_norm(s.layer_norm_eps, self.dtype, self.param_dtype, "pre_layrnorm")(x)
    query = jnp.zeros((x.shape[0], 1), jnp.int32) if pooled_only else None
    x = _encoder(s, self.remat, self.dtype, self.param_dtype)(x, None, query)
    post = _layer_norm(s.layer_norm_eps, self.dtype, self.param_dtype, "post_layernorm")
    if all_tokens:  # LayerNorm is per token: post(x)[:, 0] == post(x[:, 0])
      x = post(x)
      return x[:, 0], x
    return post(x[:, 0]), x


class CLIP(nn.Module):
  """CLIP: images (B, H, W, 3) and ids (B', L) -> projected embeddings and logits.

  ``__call__`` returns a dict with ``image_embeds`` (B, P), ``text_embeds`` (B', P) (projected,
  not normalised) and ``logits_per_image`` (B, B') = exp(logit_scale) * cos similarities.
  """

  spec: CLIPSpec
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    s = self.spec
    self.text_model = CLIPTextTransformer(s.text, self.remat, self.dtype, self.param_dtype)
    self.vision_model = CLIPVisionTransformer(s.vision, False, self.remat, self.dtype,
                                              self.param_dtype)
    proj = functools.partial(nn.Dense, s.projection_dim, use_bias=False, dtype=self.dtype,
                             param_dtype=self.param_dtype, kernel_init=_dense_init)
    self.visual_projection = proj()
    self.text_projection = proj()
    self.logit_scale = self.param("logit_scale",
                                  nn.initializers.constant(s.logit_scale_init_value), (),
                                  self.param_dtype)

  def get_image_features(self, images):
    """(B, H, W, 3) CLIP-normalised -> (B, projection_dim)."""
    pooled, _ = self.vision_model(images, pooled_only=True)
    return self.visual_projection(pooled)

  def get_text_features(self, input_ids, attention_mask=None):
    """ids (B, L), mask (B, L) -> (B, projection_dim)."""
    pooled, _ = self.text_model(input_ids, attention_mask, pooled_only=True)
    return self.text_projection(pooled)

  def __call__(self, images, input_ids, attention_mask=None):
    img = self.get_image_features(images).astype(jnp.float32)
    txt = self.get_text_features(input_ids, attention_mask).astype(jnp.float32)
    img_n = img / jnp.linalg.norm(img, axis=-1, keepdims=True)
    txt_n = txt / jnp.linalg.norm(txt, axis=-1, keepdims=True)
    logits = jnp.exp(self.logit_scale.astype(jnp.float32)) * img_n @ txt_n.T
    return {"image_embeds": img, "text_embeds": txt, "logits_per_image": logits,
            "logits_per_text": logits.T}


def _dummy_inputs(spec: CLIPSpec):
  v = spec.vision
  images = jnp.zeros((1, v.image_size, v.image_size, v.num_channels), jnp.float32)
  ids = jnp.zeros((1, spec.text.max_position_embeddings), jnp.int32)
  return images, ids


def abstract_params(model: CLIP):
  """The parameter tree of ``model`` as ``jax.ShapeDtypeStruct`` leaves (nothing allocated)."""
  images, ids = _dummy_inputs(model.spec)
  return jax.eval_shape(model.init, jax.random.key(0), images, ids)["params"]


def init_params(model: nn.Module, *args):
  """``jax.jit(model.init)(*args)["params"]``; on CPU compiled without backend optimisation.

  Init runs once, and XLA:CPU spends seconds optimising the many RNG calls of an init (more
  than the forward pass): optimisation level 0 halves that. The values are identical.
  """
  lowered = jax.jit(model.init).lower(*args)
  opts = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else {}
  return lowered.compile(compiler_options=opts)(*args)["params"]


def init_clip(spec: CLIPSpec, seed: int = 0, *, dtype: Dtype = jnp.float32,
              param_dtype: Dtype = jnp.float32, remat: bool = False):
  """A random CLIP: returns ``(model, params)``."""
  model = CLIP(spec, remat=remat, dtype=dtype, param_dtype=param_dtype)
  images, ids = _dummy_inputs(spec)
  return model, init_params(model, jax.random.key(seed), images, ids)


def count_params(tree) -> int:
  """Number of scalars in a parameter tree (arrays or ShapeDtypeStructs)."""
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _variables(params):
  return params if "params" in params and len(params) == 1 else {"params": params}


@functools.partial(jax.jit, static_argnums=0)
def _encode_image(model, params, images):
  return model.apply(_variables(params), images,
                     method=CLIP.get_image_features).astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def _encode_text(model, params, input_ids, attention_mask):
  return model.apply(_variables(params), input_ids, attention_mask,
                     method=CLIP.get_text_features).astype(jnp.float32)


def encode_image(model: CLIP, params, images) -> jax.Array:
  """Projected image embeddings (not L2-normalised), float32.

  Args:
    model: a :class:`CLIP`.
    params: its parameters.
    images: (B, H, W, 3) CLIP-normalised float images (see :func:`normalize`).

  Returns:
    (B, projection_dim) float32. Jitted (the model is static); callable inside ``jit``.
    A batch sharded over devices (e.g. ``train.parallel.shard_batch``) is encoded in parallel.
  """
  return _encode_image(model, params, jnp.asarray(images))


def encode_text(model: CLIP, params, input_ids, attention_mask=None) -> jax.Array:
  """Projected text embeddings (not L2-normalised), float32: ids (B, L) -> (B, P)."""
  input_ids = jnp.asarray(input_ids)
  if attention_mask is None:
    attention_mask = jnp.ones(input_ids.shape, jnp.int32)
  return _encode_text(model, params, input_ids, jnp.asarray(attention_mask))


def load_clip(name_or_path: str, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
              remat: bool = False):
  """Loads pretrained CLIP weights: returns ``(model, params)``.

  ``name_or_path`` is a local Hugging Face model directory (``config.json`` plus
  ``flax_model.msgpack``, ``model.safetensors`` or ``pytorch_model.bin``), a Hugging Face hub
  id (downloaded through ``huggingface_hub``; needs the network or its cache), or an OpenAI
  CLIP ``.pt`` file (TorchScript or plain state dict; the spec is inferred from the shapes).
  See :mod:`backbones_jax.convert`.
  """
  from backbones_jax import convert  # pylint: disable=g-import-not-at-top
  return convert.load_clip(name_or_path, dtype=dtype, param_dtype=param_dtype, remat=remat)
