"""AlphaCLIP (Sun et al., 2024): CLIP whose ViT also reads an alpha (region) map.

The vision tower is CLIP's plus ``conv1_alpha``: a bias-free convolution 1 -> width with
kernel = stride = patch size, zero-initialised, whose output is added to the RGB patch
embedding before the class token is prepended. Everything else (class token, positions,
``ln_pre``, transformer, ``ln_post`` on the class token, ``proj``) is OpenAI's CLIP ViT; the text
tower is the unchanged CLIP text transformer.

Parameters use the Hugging Face Flax CLIP names (see :mod:`backbones_jax.clip`); the alpha
convolution lives at ``vision_model/embeddings/conv1_alpha/kernel`` (HWIO, (p, p, 1, width)).

Inputs: ``images`` (B, H, W, 3) CLIP-normalised; ``alpha`` (B, H, W, 1) already normalised as
AlphaCLIP does, ``(mask01 - 0.5) / 0.26`` (see :func:`normalize_alpha`).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from backbones_jax import clip as clip_lib
from backbones_jax import convert
from backbones_jax.clip import CLIPTextSpec, CLIPVisionSpec

__all__ = ["AlphaCLIPSpec", "AlphaCLIP", "ALPHA_CLIP_PRESETS", "alpha_clip_spec",
           "tiny_alpha_clip_spec", "init_alpha_clip", "abstract_params", "encode_image",
           "encode_text", "load_alpha_clip", "normalize_alpha", "ALPHA_MEAN", "ALPHA_STD"]

Dtype = Any
ALPHA_MEAN, ALPHA_STD = 0.5, 0.26


def normalize_alpha(mask01) -> jnp.ndarray:
  """AlphaCLIP alpha normalisation: (B, H, W[, 1]) in [0, 1] -> (B, H, W, 1)."""
  mask01 = jnp.asarray(mask01, jnp.float32)
  if mask01.ndim == 3:
    mask01 = mask01[..., None]
  if mask01.ndim != 4 or mask01.shape[-1] != 1:
    raise ValueError(f"alpha masks must be (B, H, W) or (B, H, W, 1), got {mask01.shape}")
  return (mask01 - ALPHA_MEAN) / ALPHA_STD


@dataclasses.dataclass(frozen=True)
class AlphaCLIPSpec:
  """AlphaCLIP hyper-parameters; ``text=None`` gives a vision-only model."""

  vision: CLIPVisionSpec = CLIPVisionSpec()
  projection_dim: int = 512
  text: CLIPTextSpec | None = None
  logit_scale_init_value: float = 2.6592


def _from_clip(name: str, with_text: bool) -> AlphaCLIPSpec:
  c = clip_lib.clip_spec(name)
  return AlphaCLIPSpec(vision=c.vision, projection_dim=c.projection_dim,
                       text=c.text if with_text else None)


# The AlphaCLIP releases (OpenAI CLIP ViTs + conv1_alpha).
ALPHA_CLIP_PRESETS = ("ViT-B/16", "ViT-L/14", "ViT-L/14@336")


def alpha_clip_spec(name: str, with_text: bool = False) -> AlphaCLIPSpec:
  """Spec of an AlphaCLIP release: "ViT-B/16", "ViT-L/14" or "ViT-L/14@336"."""
  if name not in ALPHA_CLIP_PRESETS:
    raise ValueError(f"unknown AlphaCLIP preset {name!r}; choose one of {ALPHA_CLIP_PRESETS}")
  return _from_clip(name, with_text)


def tiny_alpha_clip_spec(*, with_text: bool = False, **kwargs) -> AlphaCLIPSpec:
  """A small AlphaCLIP for tests/demos (``kwargs`` as :func:`backbones_jax.clip.tiny_clip_spec`)."""
  c = clip_lib.tiny_clip_spec(**kwargs)
  return AlphaCLIPSpec(vision=c.vision, projection_dim=c.projection_dim,
                       text=c.text if with_text else None)


class AlphaCLIP(nn.Module):
  """AlphaCLIP: images (B, H, W, 3), alpha (B, H, W, 1) -> image embeddings (B, P).

  ``get_image_features(..., return_tokens=True)`` gives every token after ``post_layernorm`` and
  the projection, (B, 1 + N, P); token 0 is the usual (CLS) embedding.
  """

  spec: AlphaCLIPSpec
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    s = self.spec
    self.vision_model = clip_lib.CLIPVisionTransformer(s.vision, True, self.remat, self.dtype,
                                                       self.param_dtype)
    proj = functools.partial(nn.Dense, s.projection_dim, use_bias=False, dtype=self.dtype,
                             param_dtype=self.param_dtype,
                             kernel_init=nn.initializers.normal(0.02))
    self.visual_projection = proj()
    if s.text is not None:
      self.text_model = clip_lib.CLIPTextTransformer(s.text, self.remat, self.dtype,
                                                     self.param_dtype)
      self.text_projection = proj()
      self.logit_scale = self.param("logit_scale",
                                    nn.initializers.constant(s.logit_scale_init_value), (),
                                    self.param_dtype)

  def get_image_features(self, images, alpha, return_tokens: bool = False):
    """(B, H, W, 3), (B, H, W, 1) -> (B, P), or (B, 1 + N, P) with ``return_tokens``."""
    pooled, tokens = self.vision_model(images, alpha, all_tokens=return_tokens,
                                       pooled_only=not return_tokens)
    return self.visual_projection(tokens if return_tokens else pooled)

  def get_text_features(self, input_ids, attention_mask=None):
    """ids (B, L), mask (B, L) -> (B, P)."""
    if self.spec.text is None:
      raise ValueError("this AlphaCLIP has no text tower; load it with clip_ckpt=<OpenAI .pt>")
    pooled, _ = self.text_model(input_ids, attention_mask, pooled_only=True)
    return self.text_projection(pooled)

  def __call__(self, images, alpha, input_ids=None, attention_mask=None):
    img = self.get_image_features(images, alpha)
    if input_ids is None:
      return {"image_embeds": img}
    txt = self.get_text_features(input_ids, attention_mask)
    return {"image_embeds": img, "text_embeds": txt}


def _dummy(spec: AlphaCLIPSpec):
  v = spec.vision
  images = jnp.zeros((1, v.image_size, v.image_size, v.num_channels), jnp.float32)
  alpha = jnp.zeros((1, v.image_size, v.image_size, 1), jnp.float32)
  ids = (None if spec.text is None else
         jnp.zeros((1, spec.text.max_position_embeddings), jnp.int32))
  return images, alpha, ids


def abstract_params(model: AlphaCLIP):
  """Parameter tree of ``model`` as ShapeDtypeStructs (nothing allocated)."""
  return jax.eval_shape(model.init, jax.random.key(0), *_dummy(model.spec))["params"]


def init_alpha_clip(spec: AlphaCLIPSpec, seed: int = 0, *, dtype: Dtype = jnp.float32,
                    param_dtype: Dtype = jnp.float32, remat: bool = False):
  """A random AlphaCLIP (``conv1_alpha`` zero): returns ``(model, params)``."""
  model = AlphaCLIP(spec, remat=remat, dtype=dtype, param_dtype=param_dtype)
  return model, clip_lib.init_params(model, jax.random.key(seed), *_dummy(spec))


def _variables(params):
  return params if "params" in params and len(params) == 1 else {"params": params}


@functools.partial(jax.jit, static_argnums=(0, 4))
def _encode_image(model, params, images, alpha, return_tokens):
  return model.apply(_variables(params), images, alpha, return_tokens,
                     method=AlphaCLIP.get_image_features).astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def _encode_text(model, params, input_ids, attention_mask):
  return model.apply(_variables(params), input_ids, attention_mask,
                     method=AlphaCLIP.get_text_features).astype(jnp.float32)


def encode_image(model: AlphaCLIP, params, images, alpha, return_tokens: bool = False):
  """AlphaCLIP image embeddings (projected, not L2-normalised), float32.

  Args:
    model, params: an :class:`AlphaCLIP` and its parameters.
    images: (B, H, W, 3) CLIP-normalised.
    alpha: (B, H, W, 1) normalised alpha, ``(mask - 0.5) / 0.26`` (:func:`normalize_alpha`).
    return_tokens: also project the patch tokens.

  Returns:
    (B, P): the class token after ``ln_post`` and ``proj`` (MVREC's feature); or, with
    ``return_tokens``, (B, 1 + N, P) with that class embedding at index 0.
  """
  return _encode_image(model, params, jnp.asarray(images), jnp.asarray(alpha),
                       bool(return_tokens))


def encode_text(model: AlphaCLIP, params, input_ids, attention_mask=None):
  """Projected text embeddings (float32), ids (B, L) -> (B, P); needs a text tower."""
  input_ids = jnp.asarray(input_ids)
  if attention_mask is None:
    attention_mask = jnp.ones(input_ids.shape, jnp.int32)
  return _encode_text(model, params, input_ids, jnp.asarray(attention_mask))


def _visual_state_dict(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """AlphaCLIP visual checkpoint -> OpenAI ``visual.*`` names (``module.`` and bare keys)."""
  sd = convert.strip_prefix(sd, "module.")
  if not any(k.startswith("visual.") for k in sd):
    sd = {f"visual.{k}": v for k, v in sd.items()}
  return sd


def _spec_diff(a, b) -> str:
  return ", ".join(f"{f.name}: checkpoint {getattr(a, f.name)} vs preset {getattr(b, f.name)}"
                   for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name))


def load_alpha_clip(visual_ckpt: str | os.PathLike, clip_ckpt: str | os.PathLike | None = None,
                    preset: str | None = None, *, dtype: Dtype = jnp.float32,
                    param_dtype: Dtype = jnp.float32, remat: bool = False):
  """Loads AlphaCLIP weights: returns ``(model, params)``.

  Args:
    visual_ckpt: an AlphaCLIP visual checkpoint (``.pth``; e.g.
      ``clip_l14_grit20m_fultune_2xe.pth``): OpenAI-style ``visual.*`` or bare keys, optional
      ``module.`` prefix, attention as ``attn.in_proj.weight/bias`` (or ``in_proj_weight``),
      plus ``conv1_alpha.weight``. A full AlphaCLIP state dict with text keys also works.
    clip_ckpt: optional OpenAI CLIP ``.pt`` (TorchScript or state dict) of the same
      architecture, for the text tower (its ``visual.*`` weights are ignored). Without it the
      model is vision-only unless ``visual_ckpt`` carries text weights.
    preset: optional "ViT-B/16" / "ViT-L/14" / "ViT-L/14@336": checked against the shapes.

  Raises:
    FileNotFoundError: a file is missing.
    CheckpointMismatchError: missing, unexpected or mis-shaped keys (named in the message), or a
      checkpoint that does not fit ``preset``.
  """
  sd = _visual_state_dict(convert.read_state_dict(visual_ckpt, "AlphaCLIP visual"))
  if "visual.conv1_alpha.weight" not in sd:
    raise convert.CheckpointMismatchError(
        f"{visual_ckpt} has no conv1_alpha.weight: not an AlphaCLIP visual checkpoint (for a "
        "plain CLIP use backbones_jax.clip.load_clip)")
  if clip_ckpt is not None:
    text_sd = convert.strip_prefix(convert.read_state_dict(clip_ckpt, "OpenAI CLIP"), "module.")
    if not convert.is_openai_state_dict(text_sd) or "token_embedding.weight" not in text_sd:
      raise convert.CheckpointMismatchError(f"{clip_ckpt} is not an OpenAI CLIP checkpoint with "
                                            "a text tower")
    sd = {k: v for k, v in sd.items() if k.startswith("visual.")}
    sd.update({k: v for k, v in text_sd.items() if not k.startswith("visual.")})
  vision, text, embed = convert.infer_openai_spec(sd, require_text=False)
  if preset is not None:
    want = alpha_clip_spec(preset)
    if vision != want.vision or embed != want.projection_dim:
      diff = _spec_diff(vision, want.vision)
      if embed != want.projection_dim:
        diff += f" projection_dim: checkpoint {embed} vs preset {want.projection_dim}"
      raise convert.CheckpointMismatchError(f"{visual_ckpt} does not fit preset {preset}: {diff}")
  spec = AlphaCLIPSpec(vision=vision, projection_dim=embed, text=text)
  model = AlphaCLIP(spec, remat=remat, dtype=dtype, param_dtype=param_dtype)
  expected = convert.flatten(abstract_params(model))
  table = [*convert.openai_visual_table(alpha=True)]
  if text is not None:
    table += convert.OPENAI_TEXT_TABLE
  flat = convert.convert_state_dict(sd, table, expected, ignore=convert.OPENAI_IGNORED,
                                    source=os.fspath(visual_ckpt))
  return model, convert.to_params(flat, expected, param_dtype)
