"""LCDH networks: the CLIP-feature teacher hasher and the lightweight online student.

Teacher (offline, frozen CLIP features in, K-bit codes out)::

    image_emb (B, D_i) --ModalityProjection--> image token (B, W) --+
                                                                   |-- [fusion, image, text] tokens
    text_emb  (B, D_t) --ModalityProjection--> text token  (B, W) --+        (B, 3, W)
          --AttentionEnhancement (self-attention + MLP, masked)--> fusion token (B, W)
          --HashLayer (Dense + tanh)--> codes (B, K)

The fusion token is a learned query that attends over whichever modality tokens are present, so
the same weights give fused codes (both present; used for distillation) and per-modality codes
(only the image or only the text token present; used to evaluate the teacher as an offline
cross-modal hasher, since a query image has no text at test time).

Student (online): an image network (``small_cnn`` for CPUs, or VGG16 from ``backbones_jax.vgg``
with ImageNet weights loadable) and a bag-of-words MLP for text, each followed by a hash layer.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["ModalityProjection", "AttentionEnhancement", "HashLayer", "Teacher", "SmallCNN",
           "VGGFeatures", "TextMLP", "Student", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ModalityProjection(nn.Module):
  """L2-normalise a frozen embedding and project it to a token: (B, D) -> (B, W)."""
  width: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-6)
    x = nn.Dense(self.width, name="proj")(x)
    return nn.LayerNorm(name="norm")(x)


class AttentionEnhancement(nn.Module):
  """Pre-LN transformer block over modality tokens with a key mask: (B, T, W), (B, T) -> (B, T, W)."""
  num_heads: int = 4
  mlp_ratio: int = 2
  dropout: float = 0.0

  @nn.compact
  def __call__(self, tokens: jax.Array, mask: jax.Array, train: bool = False) -> jax.Array:
    w = tokens.shape[-1]
    attn_mask = nn.make_attention_mask(jnp.ones(mask.shape, bool), mask.astype(bool))
    h = nn.LayerNorm(name="ln_attn")(tokens)
    h = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, name="attn",
                                        deterministic=not train, dropout_rate=self.dropout)(
                                            h, h, mask=attn_mask)
    tokens = tokens + h
    h = nn.LayerNorm(name="ln_mlp")(tokens)
    h = nn.Dense(self.mlp_ratio * w, name="mlp_in")(h)
    h = nn.gelu(h)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.Dense(w, name="mlp_out")(h)
    return tokens + h


class HashLayer(nn.Module):
  """FC hash layer with tanh: (B, F) -> (B, K) continuous codes in (-1, 1)."""
  bits: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.tanh(nn.Dense(self.bits, name="fc")(x))


class Teacher(nn.Module):
  """CLIP-feature teacher: (B, D_i), (B, D_t) -> {"fused", "image", "text"}: (B, K) each.

  Outputs are tanh features in (-1, 1); ``sign`` gives the binary codes. ``fused`` uses both
  modalities, ``image``/``text`` only one (the other token is masked out of the attention).
  """
  bits: int
  width: int = 256
  num_heads: int = 4
  dropout: float = 0.1

  def setup(self):
    self.image_proj = ModalityProjection(self.width)
    self.text_proj = ModalityProjection(self.width)
    self.fusion_token = self.param("fusion_token", nn.initializers.normal(0.02), (self.width,))
    self.modality_embed = self.param("modality_embed", nn.initializers.normal(0.02),
                                     (3, self.width))
    self.enhance = AttentionEnhancement(num_heads=self.num_heads, dropout=self.dropout)
    self.out_norm = nn.LayerNorm()
    self.hash = HashLayer(self.bits)

  def _code(self, img_tok, txt_tok, mask, train):
    b = img_tok.shape[0]
    fus = jnp.broadcast_to(self.fusion_token, (b, self.width))
    tokens = jnp.stack([fus, img_tok, txt_tok], axis=1) + self.modality_embed[None]
    out = self.enhance(tokens, mask, train=train)
    return self.hash(self.out_norm(out[:, 0]))

  def encode_image(self, image_emb: jax.Array, train: bool = False) -> jax.Array:
    """Image-only codes: (B, D_i) -> (B, K)."""
    tok = self.image_proj(image_emb)
    mask = jnp.broadcast_to(jnp.array([1, 1, 0], bool), (tok.shape[0], 3))
    return self._code(tok, jnp.zeros_like(tok), mask, train)

  def encode_text(self, text_emb: jax.Array, train: bool = False) -> jax.Array:
    """Text-only codes: (B, D_t) -> (B, K)."""
    tok = self.text_proj(text_emb)
    mask = jnp.broadcast_to(jnp.array([1, 0, 1], bool), (tok.shape[0], 3))
    return self._code(jnp.zeros_like(tok), tok, mask, train)

  def __call__(self, image_emb: jax.Array, text_emb: jax.Array,
               train: bool = False) -> dict[str, jax.Array]:
    if image_emb.shape[0] != text_emb.shape[0]:
      raise ValueError(f"image_emb and text_emb must have the same batch size; got "
                       f"{image_emb.shape[0]} and {text_emb.shape[0]}.")
    img = self.image_proj(image_emb)
    txt = self.text_proj(text_emb)
    b = img.shape[0]
    zeros = jnp.zeros_like(img)
    # The three views (fused, image only, text only) run as one batched pass of 3B token sets.
    masks = jnp.concatenate([
        jnp.ones((b, 3), bool),
        jnp.broadcast_to(jnp.array([1, 1, 0], bool), (b, 3)),
        jnp.broadcast_to(jnp.array([1, 0, 1], bool), (b, 3))])
    codes = self._code(jnp.concatenate([img, img, zeros]), jnp.concatenate([txt, zeros, txt]),
                       masks, train)
    return {"fused": codes[:b], "image": codes[b:2 * b], "text": codes[2 * b:]}


class SmallCNN(nn.Module):
  """Small conv net for CPUs: (B, H, W, 3) ImageNet-normalised -> (B, F) pooled features."""
  widths: tuple[int, ...] = (32, 64, 128)

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    x = images
    for i, w in enumerate(self.widths):
      x = nn.Conv(w, (3, 3), name=f"conv{i}_a")(x)
      x = nn.relu(nn.LayerNorm(name=f"norm{i}")(x))
      x = nn.Conv(w, (3, 3), strides=(2, 2), name=f"conv{i}_b")(x)
      x = nn.relu(x)
    return jnp.concatenate([jnp.mean(x, axis=(1, 2)), jnp.max(x, axis=(1, 2))], axis=-1)


class VGGFeatures(nn.Module):
  """VGG16 conv features (``relu5_3``, avg+max pooled): (B, H, W, 3) ImageNet-normalised -> (B, 1024).

  Parameters live under ``params["image_net"]["vgg"]`` in the layout of
  ``backbones_jax.vgg.load_torchvision_vgg`` (see ``load_vgg_into_student``). ``width_divisor > 1``
  gives a thin random VGG for tests only.
  """
  depth: int = 16
  width_divisor: int = 1

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    from backbones_jax import vgg as vgg_lib  # imported lazily: only this option needs it
    last = vgg_lib.all_taps(self.depth)[-1]
    taps = vgg_lib.VGG(depth=self.depth, taps=(last,), width_divisor=self.width_divisor,
                       name="vgg")(images)
    deepest = taps[last]
    return jnp.concatenate([jnp.mean(deepest, axis=(1, 2)), jnp.max(deepest, axis=(1, 2))], -1)


class TextMLP(nn.Module):
  """Bag-of-words MLP: (B, V) -> (B, F)."""
  hidden: int = 512

  @nn.compact
  def __call__(self, bow: jax.Array, train: bool = False) -> jax.Array:
    x = jnp.log1p(jnp.maximum(bow, 0.0))  # counts -> damped; binary BoW unchanged up to log 2
    x = nn.relu(nn.Dense(self.hidden, name="fc1")(x))
    return nn.relu(nn.Dense(self.hidden, name="fc2")(x))


class Student(nn.Module):
  """Lightweight online hasher: (B, H, W, 3), (B, V) -> {"image": (B, K), "text": (B, K)}.

  Images are ImageNet-normalised NHWC floats. ``image_backbone`` is ``"small_cnn"`` or
  ``"vgg16"``.
  """
  bits: int
  image_backbone: str = "small_cnn"
  cnn_widths: tuple[int, ...] = (32, 64, 128)
  text_hidden: int = 512
  image_hidden: int = 512
  vgg_width_divisor: int = 1

  def setup(self):
    if self.image_backbone == "small_cnn":
      self.image_net = SmallCNN(self.cnn_widths)
    elif self.image_backbone == "vgg16":
      self.image_net = VGGFeatures(16, self.vgg_width_divisor)
    else:
      raise ValueError(f"image_backbone must be 'small_cnn' or 'vgg16'; got "
                       f"{self.image_backbone!r}.")
    self.image_fc = nn.Dense(self.image_hidden)
    self.image_hash = HashLayer(self.bits)
    self.text_net = TextMLP(self.text_hidden)
    self.text_hash = HashLayer(self.bits)

  def encode_image(self, images: jax.Array, train: bool = False) -> jax.Array:
    """(B, H, W, 3) -> (B, K) tanh features."""
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must be NHWC with 3 channels; got shape {tuple(images.shape)}.")
    h = self.image_net(images, train=train)
    return self.image_hash(nn.relu(self.image_fc(h)))

  def encode_text(self, bow: jax.Array, train: bool = False) -> jax.Array:
    """(B, V) -> (B, K) tanh features."""
    if bow.ndim != 2:
      raise ValueError(f"bow must be (B, V); got shape {tuple(bow.shape)}.")
    return self.text_hash(self.text_net(bow, train=train))

  def __call__(self, images: jax.Array, bow: jax.Array,
               train: bool = False) -> dict[str, jax.Array]:
    return {"image": self.encode_image(images, train), "text": self.encode_text(bow, train)}


def load_vgg_into_student(params: Any, vgg_params: Any) -> Any:
  """Return student ``params`` with ``image_net/vgg`` replaced by ``vgg_params``.

  ``vgg_params`` is the params tree of ``backbones_jax.vgg.VGG`` (e.g. from
  ``load_torchvision_vgg(path, depth=16)``); the student must use ``image_backbone="vgg16"``.
  """
  import flax
  p = flax.core.unfreeze(params)
  if "image_net" not in p or "vgg" not in p["image_net"]:
    raise ValueError("params have no image_net/vgg subtree; build the Student with "
                     "image_backbone='vgg16'.")
  if isinstance(vgg_params, dict) and "params" in vgg_params:
    vgg_params = vgg_params["params"]
  p["image_net"]["vgg"] = vgg_params
  return p
