"""Inter-layer complementarity reflection-removal network (Huang et al., arXiv 2505.12641) in Flax.

Physical model ``I = T + R_low + R_high``. A weight-shared dual-stream encoder-decoder (MuGI
blocks, DSRNet) carries a transmission stream T and a reflection stream R; inter-layer
complementarity attention mixes them; a high-frequency block G gives ``R_high`` and inversely
modulates both streams; a shared head gives ``T`` and ``R_low``. A frozen VGG19 gives the prior.

Components (one module each):

* :class:`MuGIBlock` -- DSRNet's dual-stream block, weights shared by the two streams.
* :class:`TransposedChannelAttention` -- Restormer MDTA (attention over channels).
* :class:`ComplementarityAttention` -- interleave T/R channels -> two mixed streams -> shared
  MDTA -> restore (pure functions :func:`reorganize_streams` / :func:`restore_streams`).
* :class:`HighFrequencyBlock` -- ``G(T, R_low) -> (h, R_high)``.
* :class:`InverseModulation` -- both streams scaled by ``1 - s * sigmoid(W h)``.
* :class:`VGGPrior` + :class:`PriorInjection` -- frozen VGG19 taps injected in the encoder.
* :class:`ReflectionRemovalNet` -- the whole network: ``apply(variables, I01) -> (out, aux)``.

Typical use::

    model = build_model("tiny")
    trainable, frozen = init_params(model, jax.random.PRNGKey(0), (64, 64), vgg_weights=None)
    out, aux = model.apply({"params": merge_params(trainable, frozen)}, images01)
    out["T"], out["R"], out["R_low"], out["R_high"]      # (B, H, W, 3) each
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from backbones_jax import vgg as vgg_lib

Array = jax.Array


# ----------------------------------------------------------------------------- pure functions
def mugi_gate(x: Array, y: Array) -> tuple[Array, Array]:
  """DSRNet's dual-stream gate: (…, 2C), (…, 2C) -> (x1 * y2, y1 * x2), each (…, C)."""
  x1, x2 = jnp.split(x, 2, axis=-1)
  y1, y2 = jnp.split(y, 2, axis=-1)
  return x1 * y2, y1 * x2


def simple_gate(x: Array) -> Array:
  """NAFNet gate: (…, 2C) -> x1 * x2 (…, C)."""
  x1, x2 = jnp.split(x, 2, axis=-1)
  return x1 * x2


def interleave_channels(t: Array, r: Array) -> Array:
  """(…, C), (…, C) -> (…, 2C) with channels t0, r0, t1, r1, …"""
  if t.shape != r.shape:
    raise ValueError(f"T and R streams must have the same shape, got {t.shape} and {r.shape}.")
  return jnp.stack([t, r], axis=-1).reshape(*t.shape[:-1], 2 * t.shape[-1])


def deinterleave_channels(z: Array) -> tuple[Array, Array]:
  """Inverse of :func:`interleave_channels`: (…, 2C) -> ((…, C), (…, C))."""
  if z.shape[-1] % 2:
    raise ValueError(f"Interleaved tensor needs an even channel count, got {z.shape[-1]}.")
  z = z.reshape(*z.shape[:-1], z.shape[-1] // 2, 2)
  return z[..., 0], z[..., 1]


def reorganize_streams(t: Array, r: Array) -> tuple[Array, Array]:
  """Interleave T and R channels, split in two: each reorganised stream holds half of T and half of R.

  With C channels per stream, stream A = (t0, r0, …, t_{C/2-1}, r_{C/2-1}) and stream B the rest.
  """
  z = interleave_channels(t, r)
  c = t.shape[-1]
  return z[..., :c], z[..., c:]


def restore_streams(a: Array, b: Array) -> tuple[Array, Array]:
  """Exact inverse of :func:`reorganize_streams`: (A, B) -> (T, R)."""
  return deinterleave_channels(jnp.concatenate([a, b], axis=-1))


def pixel_shuffle(x: Array, r: int = 2) -> Array:
  """(B, H, W, C*r*r) -> (B, H*r, W*r, C), channel order as torch.nn.PixelShuffle."""
  b, h, w, c = x.shape
  x = x.reshape(b, h, w, c // (r * r), r, r)
  x = x.transpose(0, 1, 4, 2, 5, 3)
  return x.reshape(b, h * r, w * r, c // (r * r))


def mean_filter(x: Array, kernel_size: int) -> Array:
  """Box filter M over H and W of (B, H, W, C), reflect padding, same size out."""
  if kernel_size < 1 or kernel_size % 2 == 0:
    raise ValueError(f"mean filter kernel_size must be a positive odd int, got {kernel_size}.")
  p = kernel_size // 2
  if p == 0:
    return x
  if x.shape[1] <= p or x.shape[2] <= p:
    raise ValueError(f"mean filter of size {kernel_size} needs H, W > {p}, got {x.shape[1:3]}.")
  x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
  x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, kernel_size, 1, 1), (1, 1, 1, 1), "VALID")
  x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 1, kernel_size, 1), (1, 1, 1, 1), "VALID")
  return x / (kernel_size * kernel_size)


def high_pass(x: Array, kernel_size: int) -> Array:
  """x - M(x): the high-frequency part of (B, H, W, C)."""
  return x - mean_filter(x, kernel_size)


# ----------------------------------------------------------------------------- modules
def _conv(features: int, k: int = 1, *, groups: int = 1, bias: bool = True, stride: int = 1,
          name: str | None = None, dtype=jnp.float32, kernel_init=None) -> nn.Conv:
  pad = "VALID" if stride > 1 else ((k // 2, k // 2), (k // 2, k // 2))
  kw = {} if kernel_init is None else {"kernel_init": kernel_init}
  return nn.Conv(features, (k, k), strides=(stride, stride), padding=pad, feature_group_count=groups,
                 use_bias=bias, dtype=dtype, name=name, **kw)


def depthwise_conv(x: Array, kernel: Array, *, impl: str = "auto") -> Array:
  """Depthwise KxK conv, SAME zero padding: x (B,H,W,C), kernel (K,K,1,C) -> (B,H,W,C).

  ``impl='shift'`` sums K*K shifted products (fast everywhere, and ~20-50x faster than XLA's
  grouped convolution on CPU); ``'xla'`` uses ``lax.conv_general_dilated``; ``'auto'`` picks
  'shift' on CPU, 'xla' elsewhere. Both give the same numbers (to float rounding).
  """
  k = kernel.shape[0]
  if impl == "auto":
    impl = "shift" if jax.default_backend() == "cpu" else "xla"
  if impl == "xla":
    return jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), (1, 1), [(k // 2, k // 2)] * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=x.shape[-1])
  if impl != "shift":
    raise ValueError(f"depthwise impl must be 'auto', 'shift' or 'xla', got {impl!r}.")
  h, w = x.shape[1], x.shape[2]
  xp = jnp.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
  kernel = kernel.astype(x.dtype)
  out = None
  for i in range(k):
    for j in range(k):
      term = xp[:, i:i + h, j:j + w, :] * kernel[i, j, 0]
      out = term if out is None else out + term
  return out


class DepthwiseConv(nn.Module):
  """Depthwise KxK conv: (B,H,W,C) -> (B,H,W,C); params as nn.Conv(feature_group_count=C)."""
  kernel_size: int = 3
  use_bias: bool = True
  impl: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (self.kernel_size, self.kernel_size, 1, c))
    y = depthwise_conv(x.astype(self.dtype), kernel, impl=self.impl)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (c,)).astype(self.dtype)
    return y


class ChannelAttention(nn.Module):
  """Simplified channel attention (DSRNet CABlock): (B, H, W, C) -> x * W·avgpool(x)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    w = _conv(x.shape[-1], 1, name="proj", dtype=self.dtype)(jnp.mean(x, axis=(1, 2), keepdims=True))
    return x * w


class MuGIBlock(nn.Module):
  """DSRNet MuGI dual-stream block, weights shared: (B,H,W,C) x2 -> (B,H,W,C) x2.

  Part 1: LN -> 1x1 C->2C -> 3x3 depthwise -> gate crossing halves of the two streams ->
  channel attention -> 1x1, residual with per-stream zero-init scales ``a_t, a_r``.
  Part 2: LN -> 1x1 C->2C -> crossing gate -> 1x1, residual with zero-init ``b_t, b_r``.
  """
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, t: Array, r: Array) -> tuple[Array, Array]:
    c = t.shape[-1]
    norm1 = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm1")
    expand1 = _conv(2 * c, 1, name="expand1", dtype=self.dtype)
    dw = DepthwiseConv(3, dtype=self.dtype, name="dwconv")
    ca = ChannelAttention(dtype=self.dtype, name="ca")
    proj1 = _conv(c, 1, name="proj1", dtype=self.dtype)
    xt, xr = mugi_gate(dw(expand1(norm1(t))), dw(expand1(norm1(r))))
    xt, xr = proj1(ca(xt)), proj1(ca(xr))
    zeros = nn.initializers.zeros
    t = t + xt * self.param("a_t", zeros, (c,))
    r = r + xr * self.param("a_r", zeros, (c,))

    norm2 = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm2")
    expand2 = _conv(2 * c, 1, name="expand2", dtype=self.dtype)
    proj2 = _conv(c, 1, name="proj2", dtype=self.dtype)
    yt, yr = mugi_gate(expand2(norm2(t)), expand2(norm2(r)))
    t = t + proj2(yt) * self.param("b_t", zeros, (c,))
    r = r + proj2(yr) * self.param("b_r", zeros, (c,))
    return t, r


class TransposedChannelAttention(nn.Module):
  """Restormer MDTA: (B, H, W, C) -> (B, H, W, C), attention map (heads, C/h, C/h) over channels."""
  num_heads: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, h, w, c = x.shape
    if c % self.num_heads:
      raise ValueError(f"channels {c} not divisible by num_heads {self.num_heads}.")
    qkv = _conv(3 * c, 1, bias=False, name="qkv", dtype=self.dtype)(x)
    qkv = DepthwiseConv(3, use_bias=False, dtype=self.dtype, name="qkv_dwconv")(qkv)
    q, k, v = jnp.split(qkv, 3, axis=-1)
    d = c // self.num_heads

    def heads(z):  # (B, H, W, C) -> (B, heads, d, HW)
      return z.reshape(b, h * w, self.num_heads, d).transpose(0, 2, 3, 1)

    q, k, v = heads(q), heads(k), heads(v)
    q = q / jnp.maximum(jnp.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    k = k / jnp.maximum(jnp.linalg.norm(k, axis=-1, keepdims=True), 1e-12)
    temperature = self.param("temperature", nn.initializers.ones, (self.num_heads, 1, 1))
    attn = jax.nn.softmax(jnp.einsum("bnid,bnjd->bnij", q, k) * temperature, axis=-1)
    out = jnp.einsum("bnij,bnjd->bnid", attn, v)  # (B, heads, d, HW)
    out = out.transpose(0, 3, 1, 2).reshape(b, h, w, c)
    return _conv(c, 1, bias=False, name="proj", dtype=self.dtype)(out)


class ComplementarityAttention(nn.Module):
  """Inter-layer complementarity attention: (B,H,W,C) x2 -> (B,H,W,C) x2.

  T and R channels are interleaved and split into two reorganised streams, each mixing T and R;
  both go through the same (weight-shared) LN + transposed channel attention with a zero-init
  residual scale; the original T/R channel order is then restored.
  """
  num_heads: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, t: Array, r: Array) -> tuple[Array, Array]:
    a, b = reorganize_streams(t, r)
    norm = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")
    attn = TransposedChannelAttention(self.num_heads, dtype=self.dtype, name="attn")
    c = a.shape[-1]
    a = a + attn(norm(a)) * self.param("gamma_a", nn.initializers.zeros, (c,))
    b = b + attn(norm(b)) * self.param("gamma_b", nn.initializers.zeros, (c,))
    return restore_streams(a, b)


class SingleStreamBlock(nn.Module):
  """NAFNet-style block: (B,H,W,C) -> (B,H,W,C) (used inside the high-frequency block)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm1")(x)
    y = _conv(2 * c, 1, name="expand1", dtype=self.dtype)(y)
    y = DepthwiseConv(3, dtype=self.dtype, name="dwconv")(y)
    y = ChannelAttention(dtype=self.dtype, name="ca")(simple_gate(y))
    y = _conv(c, 1, name="proj1", dtype=self.dtype)(y)
    x = x + y * self.param("a", nn.initializers.zeros, (c,))
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm2")(x)
    y = simple_gate(_conv(2 * c, 1, name="expand2", dtype=self.dtype)(y))
    return x + _conv(c, 1, name="proj2", dtype=self.dtype)(y) * self.param("b", nn.initializers.zeros, (c,))


class HighFrequencyBlock(nn.Module):
  """G(T, R_low): T/R stream features (B,H,W,C) x2 -> (h (B,H,W,C), R_high (B,H,W,3)).

  Takes the high-pass parts ``f - M(f)`` of both streams, fuses them (1x1), refines with
  ``num_blocks`` single-stream blocks and predicts R_high with a 3x3 conv.
  """
  num_blocks: int = 1
  kernel_size: int = 11
  out_channels: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, t: Array, r: Array) -> tuple[Array, Array]:
    c = t.shape[-1]
    # Reflect padding needs kernel_size // 2 < H, W: shrink the filter on very small inputs.
    ks = min(self.kernel_size, 2 * min(t.shape[1], t.shape[2]) - 1)
    hf = jnp.concatenate([high_pass(t, ks), high_pass(r, ks)], axis=-1)
    h = _conv(c, 1, name="fuse", dtype=self.dtype)(hf)
    for i in range(self.num_blocks):
      h = SingleStreamBlock(dtype=self.dtype, name=f"block{i}")(h)
    r_high = _conv(self.out_channels, 3, name="head", dtype=self.dtype, kernel_init=nn.initializers.zeros)(h)
    return h, r_high


class InverseModulation(nn.Module):
  """High-frequency features inversely modulate both streams: f <- f * (1 - s * sigmoid(W h)).

  (B,H,W,C) x2 and h (B,H,W,C) -> (B,H,W,C) x2. ``s_t, s_r`` are zero-initialised, so the block
  starts as the identity; a positive ``s`` suppresses stream content where h (reflection edges)
  is strong.
  """
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, t: Array, r: Array, h: Array) -> tuple[Array, Array]:
    c = t.shape[-1]
    m = jax.nn.sigmoid(_conv(2 * c, 1, name="gate", dtype=self.dtype)(h))
    m_t, m_r = jnp.split(m, 2, axis=-1)
    s_t = self.param("s_t", nn.initializers.zeros, (c,))
    s_r = self.param("s_r", nn.initializers.zeros, (c,))
    return t * (1.0 - s_t * m_t), r * (1.0 - s_r * m_r)


class VGGPrior(nn.Module):
  """Frozen VGG19 prior: (B,H,W,3) in [0,1] -> {tap: features}, gradients stopped."""
  taps: Sequence[str] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
  width_divisor: int = 1

  @nn.compact
  def __call__(self, x01: Array) -> dict[str, Array]:
    # Only the convs up to the deepest tap are created here; init_params stores all 16 convs in
    # frozen['vgg'] (unused extra params are ignored by apply).
    vgg = vgg_lib.VGG(depth=19, taps=tuple(self.taps), width_divisor=self.width_divisor, name="vgg")
    feats = vgg(vgg_lib.imagenet_normalize(x01))
    return jax.lax.stop_gradient(feats)


class PriorInjection(nn.Module):
  """Adds a VGG tap (B,H,W,Cv) to both streams (B,H,W,C) via LN + 1x1 Cv->2C (one half each)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, t: Array, r: Array, feat: Array) -> tuple[Array, Array]:
    c = t.shape[-1]
    p = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")(feat)
    p = _conv(2 * c, 1, name="proj", dtype=self.dtype)(p)
    p_t, p_r = jnp.split(p, 2, axis=-1)
    return t + p_t, r + p_r


class ReflectionRemovalNet(nn.Module):
  """(B, H, W, 3) blended image in [0,1] -> ({'T','R','R_low','R_high'}, aux). H, W % 2^levels == 0."""
  width: int = 64
  enc_blocks: Sequence[int] = (2, 2, 4, 8)
  middle_blocks: int = 8
  dec_blocks: Sequence[int] = (2, 2, 2, 2)
  attention: bool = True          # inter-layer complementarity attention after every stage
  max_heads: int = 8
  hf_blocks: int = 2
  hf_kernel: int = 11             # mean-filter size of the high-pass inside G
  use_prior: bool = True
  vgg_width_divisor: int = 1      # 1 = real VGG19 (loadable); >1 only for tiny random demos
  t_residual: bool = True         # T = I + head(f_T) (starts at the identity), else T = head(f_T)
  dtype: Any = jnp.float32

  def _heads(self, level: int, c: int) -> int:
    h = min(self.max_heads, 2 ** level)
    while c % h:
      h //= 2
    return max(h, 1)

  @property
  def prior_taps(self) -> tuple[str, ...]:
    n = min(len(self.enc_blocks) + 1, 5)
    return tuple(f"relu{i + 1}_1" for i in range(n))

  @nn.compact
  def __call__(self, x01: Array) -> tuple[dict[str, Array], dict[str, Array]]:
    levels = len(self.enc_blocks)
    if len(self.dec_blocks) != levels:
      raise ValueError(f"enc_blocks {self.enc_blocks} and dec_blocks {self.dec_blocks} need the same length.")
    if x01.ndim != 4 or x01.shape[-1] != 3:
      raise ValueError(f"expected NHWC RGB images (B, H, W, 3), got shape {x01.shape}.")
    mult = 2 ** levels
    if x01.shape[1] % mult or x01.shape[2] % mult:
      raise ValueError(f"H and W must be multiples of {mult} for {levels} levels, got {x01.shape[1:3]}; "
                       "pad the image (derefl_jax.predict pads to a multiple of 32).")
    x01 = x01.astype(self.dtype)
    prior = VGGPrior(self.prior_taps, self.vgg_width_divisor, name="prior")(x01) if self.use_prior else {}
    intro = _conv(self.width, 3, name="intro", dtype=self.dtype)
    t = r = intro(x01)
    c = self.width
    skips = []
    for lvl, n in enumerate(self.enc_blocks):
      if self.use_prior and lvl + 1 <= 5:  # VGG19 has taps relu1_1 .. relu5_1
        t, r = PriorInjection(dtype=self.dtype, name=f"prior_in{lvl}")(t, r, prior[f"relu{lvl + 1}_1"])
      for i in range(n):
        t, r = MuGIBlock(dtype=self.dtype, name=f"enc{lvl}_{i}")(t, r)
      if self.attention:
        t, r = ComplementarityAttention(self._heads(lvl, c), dtype=self.dtype, name=f"enc{lvl}_ica")(t, r)
      skips.append((t, r))
      down = _conv(2 * c, 2, stride=2, name=f"down{lvl}", dtype=self.dtype)
      t, r = down(t), down(r)
      c *= 2
    if self.use_prior and levels + 1 <= 5:
      t, r = PriorInjection(dtype=self.dtype, name="prior_mid")(t, r, prior[f"relu{levels + 1}_1"])
    for i in range(self.middle_blocks):
      t, r = MuGIBlock(dtype=self.dtype, name=f"mid_{i}")(t, r)
    if self.attention:
      t, r = ComplementarityAttention(self._heads(levels, c), dtype=self.dtype, name="mid_ica")(t, r)
    for j, n in enumerate(self.dec_blocks):
      lvl = levels - 1 - j
      up = _conv(2 * c, 1, bias=False, name=f"up{lvl}", dtype=self.dtype)
      t, r = pixel_shuffle(up(t)), pixel_shuffle(up(r))
      c //= 2
      t, r = t + skips[lvl][0], r + skips[lvl][1]
      for i in range(n):
        t, r = MuGIBlock(dtype=self.dtype, name=f"dec{lvl}_{i}")(t, r)
      if self.attention:
        t, r = ComplementarityAttention(self._heads(lvl, c), dtype=self.dtype, name=f"dec{lvl}_ica")(t, r)
    h, r_high = HighFrequencyBlock(self.hf_blocks, self.hf_kernel, dtype=self.dtype, name="hf")(t, r)
    t, r = InverseModulation(dtype=self.dtype, name="inverse_mod")(t, r, h)
    # Zero-init head: at init T = I (with t_residual), R_low = R_high = 0 -- the identity baseline.
    ending = _conv(3, 3, name="ending", dtype=self.dtype, kernel_init=nn.initializers.zeros)
    t_img, r_low = ending(t), ending(r)
    if self.t_residual:
      t_img = t_img + x01
    out = {"T": t_img, "R": r_low + r_high, "R_low": r_low, "R_high": r_high}
    aux = {"hf_features": h, "prior": prior}
    return out, aux


# ----------------------------------------------------------------------------- presets / params
PRESETS: dict[str, dict[str, Any]] = {
    # CPU tests / demo: 2 levels, width 8, tiny random VGG (width / 8).
    "tiny": dict(width=8, enc_blocks=(1, 1), middle_blocks=1, dec_blocks=(1, 1), hf_blocks=1,
                 max_heads=2, vgg_width_divisor=8),
    # A mid-size model (single GPU fine-tuning): real VGG19 prior.
    "base": dict(width=32, enc_blocks=(1, 1, 2, 4), middle_blocks=4, dec_blocks=(1, 1, 1, 1), hf_blocks=1),
    # Paper scale: DSRNet-L layout with 8 (not 12) middle blocks + ICA + G.
    "paper": dict(width=64, enc_blocks=(2, 2, 4, 8), middle_blocks=8, dec_blocks=(2, 2, 2, 2), hf_blocks=2),
}


def build_model(preset: str = "tiny", **overrides) -> ReflectionRemovalNet:
  """Model of a size preset ('tiny' | 'base' | 'paper'), fields overridable."""
  if preset not in PRESETS:
    raise ValueError(f"Unknown model preset {preset!r}; valid presets: {sorted(PRESETS)}.")
  fields = {f.name for f in dataclasses.fields(ReflectionRemovalNet)} - {"parent", "name"}
  bad = sorted(set(overrides) - fields)
  if bad:
    raise ValueError(f"Unknown model fields {bad}; valid fields: {sorted(fields)}.")
  kw = dict(PRESETS[preset])
  kw.update(overrides)
  for k in ("enc_blocks", "dec_blocks"):
    kw[k] = tuple(kw[k])
  return ReflectionRemovalNet(**kw)


def split_params(params: Mapping) -> tuple[dict, dict]:
  """Full params -> (trainable, frozen). frozen = {'vgg': VGG19 params} (empty without a prior)."""
  params = dict(params)
  frozen = {}
  if "prior" in params:
    frozen["vgg"] = params.pop("prior")["vgg"]
  return params, frozen


def merge_params(trainable: Mapping, frozen: Mapping) -> dict:
  """(trainable, frozen) -> full params for ``model.apply({'params': ...})``."""
  out = dict(trainable)
  if frozen and "vgg" in frozen:
    out["prior"] = {"vgg": frozen["vgg"]}
  return out


def init_params(model: ReflectionRemovalNet, rng: Array | int = 0, *, vgg_weights=None) -> tuple[dict, dict]:
  """Random init -> (trainable, frozen). ``vgg_weights``: torchvision VGG19 state dict or .pth path.

  ``frozen['vgg']`` always holds all 16 VGG19 convs (the perceptual loss needs relu5_1 even when the
  prior stops earlier). Without ``vgg_weights`` the VGG is random (He init): fine for demos and
  tests, meaningless as a prior; real runs pass torchvision's ``vgg19-dcbb9e9d.pth``. ``rng`` is
  an int seed or a PRNG key; init runs with an RBG key (XLA's RngBitGenerator), which compiles
  several times faster on CPU than threefry for a model with ~100 parameter tensors.
  """
  if vgg_weights is not None and model.use_prior and model.vgg_width_divisor != 1:
    raise ValueError("Pretrained VGG19 weights need vgg_width_divisor=1 (this preset uses a "
                     f"tiny random VGG with divisor {model.vgg_width_divisor}).")
  seed = int(rng) if isinstance(rng, (int, np.integer)) else int(jax.random.randint(rng, (), 0, 2**31 - 1))
  size = max(2 ** len(model.enc_blocks), 16)  # params do not depend on the image size
  key = jax.random.key(seed, impl="unsafe_rbg")
  lowered = jax.jit(model.init).lower(key, jnp.zeros((1, size, size, 3), jnp.float32))
  # Init runs once: on CPU, XLA's backend optimisations cost ~3x the compile time for nothing.
  opts = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else {}
  params = lowered.compile(compiler_options=opts)(key, jnp.zeros((1, size, size, 3), jnp.float32))["params"]
  trainable, frozen = split_params(params)
  if model.use_prior:
    if vgg_weights is not None:
      _, frozen["vgg"] = vgg_lib.load_torchvision_vgg(vgg_weights, 19)
    else:
      _, frozen["vgg"] = vgg_lib.init_vgg(19, seed, width_divisor=model.vgg_width_divisor)
  return trainable, frozen


def load_vgg_prior(frozen: Mapping, vgg_weights) -> dict:
  """Replace the frozen VGG19 of ``frozen`` by torchvision weights (state dict or .pth path)."""
  _, vgg_params = vgg_lib.load_torchvision_vgg(vgg_weights, 19)
  return {**frozen, "vgg": vgg_params}


def perceptual_vgg_apply(model: ReflectionRemovalNet, taps=vgg_lib.DEFAULT_TAPS) -> Callable:
  """(vgg_params, images01) -> {tap: features}: the model's VGG19 for the perceptual loss."""
  net = vgg_lib.VGG(depth=19, taps=tuple(taps), width_divisor=model.vgg_width_divisor)
  return functools.partial(_vgg_apply, net)


def _vgg_apply(net, vgg_params, images01):
  return vgg_lib.vgg_features(net, vgg_params, images01)


def param_count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def count_params_and_flops(preset: str | ReflectionRemovalNet = "paper", height: int = 224, width: int = 224, *,
                           batch: int = 1, compile: bool = True, **overrides) -> dict[str, Any]:
  """Trainable params (frozen VGG excluded) and forward FLOPs from XLA's cost analysis.

  Params come from ``jax.eval_shape(model.init)`` (nothing is allocated). FLOPs are XLA's
  ``cost_analysis()['flops']`` of the jitted forward (frozen VGG prior included) compiled for
  the default backend from abstract inputs (``compile=False`` uses the un-optimised HLO
  estimate, faster); XLA counts a multiply-add as 2 flops, so ``macs = flops / 2``.
  """
  model = build_model(preset, **overrides) if isinstance(preset, str) else preset
  x = jax.ShapeDtypeStruct((batch, height, width, 3), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"]
  trainable, frozen = split_params(shapes)
  t0 = time.perf_counter()
  lowered = jax.jit(lambda p, x: model.apply({"params": p}, x)[0]).lower(shapes, x)
  cost = lowered.compile().cost_analysis() if compile else lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  flops = float(cost["flops"])
  return {
      "preset": preset if isinstance(preset, str) else "custom",
      "height": height, "width": width, "batch": batch,
      "trainable_params": param_count(trainable),
      "frozen_params": _full_vgg_count(model) if model.use_prior else 0,
      "flops": flops, "gflops": flops / 1e9,
      "macs": flops / 2, "gmacs": flops / 2e9,
      "flops_source": "XLA cost_analysis of " + ("compiled" if compile else "lowered") + " forward (frozen VGG included)",
      "analysis_seconds": time.perf_counter() - t0,
  }


def _full_vgg_count(model: ReflectionRemovalNet) -> int:
  net = vgg_lib.VGG(depth=19, taps=("relu5_4",), width_divisor=model.vgg_width_divisor)
  return param_count(jax.eval_shape(net.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)))
