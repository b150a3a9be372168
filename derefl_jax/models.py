"""Inter-layer complementarity reflection-removal network (Huang et al., arXiv 2505.12641v1) in Flax.

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
* :class:`FeaturePyramidVGG`, :class:`LRM` -- DSRNet's stem and residual head.
* :class:`ReflectionRemovalNet` -- the whole network: ``apply(variables, I01) -> (out, aux)``; exact
  DSRNet is its ``dsrnet_l`` / ``dsrnet_l_nature`` / ``dsrnet_s`` presets (options, not a copy; weights
  from the official ``.pt`` files: :mod:`derefl_jax.dsrnet_weights`).

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
from backbones_jax.host_memory import release_free_heap

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


@jax.custom_vjp
def pointwise_matmul(x: Array, kernel: Array) -> Array:
  """A 1x1 conv as a matmul over channels: (..., C), (C, D) -> (..., D); its gradients in Eigen's fast forms.

  The values and gradients are those of ``jnp.einsum('...c,cd->...d', x, kernel)``. With autodiff's own rule,
  XLA:CPU computed the kernel gradient from a transposed copy of the cotangent, ``dot(x (P, C), g^T (D, P))``
  contracting the pixels P, which Eigen runs ~3x slower than ``dot(x (P, C), g (P, D))`` (25 vs 7.4 ms at
  P = 224², C = 64, D = 128); DSRNet-L's training step held 532 of them (456 GFLOPs). This rule writes the
  kernel gradient as the latter, with no transposed copy (a full-resolution MuGI block's forward + backward:
  0.55-0.58 -> 0.44-0.49 s on a 2-core CPU; docs/derefl.md).
  """
  return jnp.einsum("...c,cd->...d", x, kernel)


def _pointwise_matmul_fwd(x, kernel):
  return pointwise_matmul(x, kernel), (x, kernel)


def _pointwise_matmul_bwd(res, g):
  x, kernel = res
  c, d = kernel.shape
  x2, g2 = x.reshape(-1, c), g.reshape(-1, d)
  dkernel = jax.lax.dot_general(x2, g2, (((0,), (0,)), ((), ())))           # (C, D), pixels contracted
  dx = jax.lax.dot_general(g2, kernel, (((1,), (1,)), ((), ()))).reshape(x.shape)  # g . kernel^T
  return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


pointwise_matmul.defvjp(_pointwise_matmul_fwd, _pointwise_matmul_bwd)


def _conv_same_xla(x: Array, kernel: Array) -> Array:
  k = kernel.shape[0]
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((k // 2, k // 2), (k // 2, k // 2)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@jax.custom_vjp
def conv_same(x: Array, kernel: Array) -> Array:
  """A KxK conv (K odd), stride 1, SAME zero padding: x (B, H, W, C), kernel (K, K, C, D) -> (B, H, W, D).

  The values and the input gradient are ``lax.conv_general_dilated``'s (as ``nn.Conv``). The kernel gradient is
  one dot: the K*K shifted windows of the padded cotangent (BHW, K*K*D) against x (BHW, C), or those of x against
  the cotangent when C <= D. From autodiff's rule, XLA:CPU computes it as a convolution whose window is the whole
  image, at ~3 GFLOP/s: 0.24 s for the LRM tail's (3, 3, 256, 3) kernel at 224² (docs/derefl.md).
  """
  k = kernel.shape[0]
  if kernel.ndim != 4 or kernel.shape[1] != k or k % 2 == 0 or kernel.shape[2] != x.shape[-1]:
    raise ValueError(f"conv_same needs a (K, K, C, D) kernel with K odd and C = {x.shape[-1]} (the input's "
                     f"channels), got {kernel.shape}; use nn.Conv for even or strided kernels.")
  return _conv_same_xla(x, kernel)


def _conv_same_fwd(x, kernel):
  return conv_same(x, kernel), (x, kernel)  # with conv_same's shape checks


def _conv_same_bwd(res, g):
  x, kernel = res
  k, (h, w), (c, d) = kernel.shape[0], x.shape[1:3], kernel.shape[2:]
  dx = jax.vjp(lambda v: _conv_same_xla(v, kernel), x)[1](g)[0]
  # dk[i, j] = sum_yz xpad[y + i, z + j] g[y, z] = sum_yz x[y, z] gpad[y + 2p - i, z + 2p - j]: the K*K shifted
  # windows of whichever of x and g has fewer channels, stacked on channels, against the other, in one dot.
  contract = (((0,), (0,)), ((), ()))
  if c <= d:
    xp = _pad_same(x, k)
    windows = jnp.concatenate([xp[:, i:i + h, j:j + w, :] for i in range(k) for j in range(k)], axis=-1)
    dk = jax.lax.dot_general(windows.reshape(-1, k * k * c), g.reshape(-1, d), contract).reshape(k, k, c, d)
  else:
    gp, last = _pad_same(g, k), k - 1
    windows = jnp.concatenate([gp[:, last - i:last - i + h, last - j:last - j + w, :]
                               for i in range(k) for j in range(k)], axis=-1)
    dk = jax.lax.dot_general(x.reshape(-1, c), windows.reshape(-1, k * k * d), contract)
    dk = dk.reshape(c, k, k, d).transpose(1, 2, 0, 3)
  return dx, dk.astype(kernel.dtype)


conv_same.defvjp(_conv_same_fwd, _conv_same_bwd)


# ----------------------------------------------------------------------------- modules
class PointwiseConv(nn.Module):
  """1x1 conv as a matmul over channels: (B, H, W, Cin) -> (B, H, W, Cout); params as nn.Conv(features, (1, 1)).

  Same parameters (``kernel`` (1, 1, Cin, Cout), ``bias``), initial values and outputs as
  ``nn.Conv``. On XLA:CPU the kernel gradient of a 1x1 ``lax.conv`` is a convolution whose window
  is the whole image, ~50x slower than the matmul that it is (DSRNet-L's training step at 224²:
  half of its time; ``benchmarks/derefl_profile.py``); a dot's gradients are dots
  (:func:`pointwise_matmul`, whose kernel gradient avoids a transposed copy of the cotangent).
  """
  features: int
  use_bias: bool = True
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.linear.default_kernel_init

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", self.kernel_init, (1, 1, x.shape[-1], self.features))
    y = pointwise_matmul(x.astype(self.dtype), kernel[0, 0].astype(self.dtype))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
    return y


class SameConv(nn.Module):
  """KxK conv (K odd), stride 1, SAME zero padding: (B, H, W, Cin) -> (B, H, W, Cout); params as nn.Conv's.

  Same parameters, initial values, outputs and input gradient as ``nn.Conv``; the kernel gradient is a dot
  (:func:`conv_same`) instead of XLA:CPU's whole-image-window convolution.
  """
  features: int
  kernel_size: int = 3
  use_bias: bool = True
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.linear.default_kernel_init

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features))
    y = conv_same(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
    return y


def _conv(features: int, k: int = 1, *, groups: int = 1, bias: bool = True, stride: int = 1,
          name: str | None = None, dtype=jnp.float32, kernel_init=None) -> nn.Module:
  """A KxK conv (SAME padding; VALID when strided) with nn.Conv's parameters; 1x1 ones as a matmul, odd KxK
  unstrided ones with a dot for the kernel gradient (:class:`SameConv`)."""
  kw = {} if kernel_init is None else {"kernel_init": kernel_init}
  if k == 1 and stride == 1 and groups == 1:
    return PointwiseConv(features, use_bias=bias, dtype=dtype, name=name, **kw)
  if k % 2 and stride == 1 and groups == 1:
    return SameConv(features, k, use_bias=bias, dtype=dtype, name=name, **kw)
  pad = "VALID" if stride > 1 else ((k // 2, k // 2), (k // 2, k // 2))
  return nn.Conv(features, (k, k), strides=(stride, stride), padding=pad, feature_group_count=groups,
                 use_bias=bias, dtype=dtype, name=name, **kw)


def _layer_norm(name: str, dtype) -> nn.LayerNorm:
  """LayerNorm over channels, eps 1e-6, variance as mean((x - mu)^2) (DSRNet's LayerNorm2d)."""
  return nn.LayerNorm(epsilon=1e-6, dtype=dtype, use_fast_variance=False, name=name)


def upsample_bilinear_align_corners(x: Array, scale: int = 2) -> Array:
  """(B, H, W, C) -> (B, sH, sW, C), bilinear with align_corners=True (torch nn.UpsamplingBilinear2d)."""
  def weights(n: int) -> np.ndarray:
    m = n * scale
    src = np.arange(m, dtype=np.float64) * ((n - 1) / (m - 1) if m > 1 else 0.0)
    i0 = np.clip(np.floor(src).astype(np.int64), 0, n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    frac = (src - i0).astype(np.float32)
    w = np.zeros((m, n), np.float32)
    np.add.at(w, (np.arange(m), i0), 1.0 - frac)
    np.add.at(w, (np.arange(m), i1), frac)
    return w

  wh, ww = weights(x.shape[1]), weights(x.shape[2])
  x = jnp.einsum("oh,bhwc->bowc", jnp.asarray(wh, x.dtype), x, precision=jax.lax.Precision.HIGHEST)
  return jnp.einsum("pw,bowc->bopc", jnp.asarray(ww, x.dtype), x, precision=jax.lax.Precision.HIGHEST)


def _shift_sum(xp: Array, kernel: Array, h: int, w: int) -> Array:
  """sum_{i,j} xp[:, i:i+h, j:j+w, :] * kernel[i, j, 0]: a depthwise correlation of padded xp."""
  k = kernel.shape[0]
  out = None
  for i in range(k):
    for j in range(k):
      term = xp[:, i:i + h, j:j + w, :] * kernel[i, j, 0]
      out = term if out is None else out + term
  return out


def _pad_same(x: Array, k: int) -> Array:
  return jnp.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))


@jax.custom_vjp
def _depthwise_shift(x: Array, kernel: Array) -> Array:
  return _shift_sum(_pad_same(x, kernel.shape[0]), kernel, x.shape[1], x.shape[2])


def _depthwise_shift_fwd(x, kernel):
  return _depthwise_shift(x, kernel), (x, kernel)


def _depthwise_shift_bwd(res, g):
  # Hand-written backward: only x and the kernel are kept for it. Autodiff of the K*K shifted
  # products kept every shifted window of x alive (DSRNet-L's backward: ~2x the activation memory).
  # Both grads read shifted windows of the padded cotangent only: windows of the padded x would be
  # CSE'd with the forward's and kept alive, K*K copies of x per conv, from forward to backward.
  x, kernel = res
  k, (h, w) = kernel.shape[0], x.shape[1:3]
  gp = _pad_same(g, k)
  dx = _shift_sum(gp, kernel[::-1, ::-1], h, w)  # correlation with the flipped kernel
  # dk[i, j] = sum_hw xpad[h + i, w + j] g[h, w] = sum_yz x[y, z] gpad[y + 2p - i, z + 2p - j]
  last = k - 1
  dk = jnp.stack([jnp.sum(x * gp[:, last - i:last - i + h, last - j:last - j + w, :], axis=(0, 1, 2))
                  for i in range(k) for j in range(k)])
  return dx, dk.reshape(kernel.shape).astype(kernel.dtype)


_depthwise_shift.defvjp(_depthwise_shift_fwd, _depthwise_shift_bwd)


def depthwise_conv(x: Array, kernel: Array, *, impl: str = "auto") -> Array:
  """Depthwise KxK conv (K odd), SAME zero padding: x (B,H,W,C), kernel (K,K,1,C) -> (B,H,W,C).

  ``impl='shift'`` sums K*K shifted products, with a hand-written backward that keeps only x
  (fast everywhere, ~20-50x faster than XLA's grouped convolution on CPU, and no more memory);
  ``'xla'`` uses ``lax.conv_general_dilated``; ``'auto'`` picks 'shift' on CPU, 'xla' elsewhere.
  Both give the same numbers and gradients (to float rounding).
  """
  k = kernel.shape[0]
  if kernel.ndim != 4 or kernel.shape[1] != k or k % 2 == 0 or kernel.shape[2] != 1 or kernel.shape[3] != x.shape[-1]:
    raise ValueError(f"depthwise kernel must be (K, K, 1, C) with K odd and C = {x.shape[-1]}, got {kernel.shape}.")
  if impl == "auto":
    impl = "shift" if jax.default_backend() == "cpu" else "xla"
  if impl == "xla":
    return jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), (1, 1), [(k // 2, k // 2)] * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=x.shape[-1])
  if impl != "shift":
    raise ValueError(f"depthwise impl must be 'auto', 'shift' or 'xla', got {impl!r}.")
  return _depthwise_shift(x, kernel.astype(x.dtype))


def remat_call(module: nn.Module, *args):
  """``module(*args)``, its activations recomputed in the backward pass instead of stored.

  Unlike ``nn.remat``, the recomputation's inputs carry a data dependency on the output cotangent
  (``x + 0 * g[0]``), so XLA cannot schedule it before that cotangent exists: with ``nn.remat``,
  XLA:CPU (which drops optimisation barriers before scheduling) ran every block's recomputation at
  the start of the backward pass and the peak memory did not drop. Same values and gradients as
  ``module(*args)``; same parameter names.
  """
  unbound = module.clone(parent=None, name=None)

  def f(mdl, *a):
    return mdl(*a)

  def fwd(mdl, *a):
    return mdl(*a), (mdl.variables, a)

  def bwd(res, g):
    variables, a = res
    dep = 0 * jax.tree.leaves(g)[0].reshape(-1)[0]  # not folded away by XLA for floats (NaN * 0 = NaN)
    a = jax.tree.map(lambda v: v + dep.astype(v.dtype), a)
    # The parameters too: otherwise XLA merges the recomputation's full-size broadcasts of biases
    # and scales with the forward's (CSE) and keeps them alive from the forward to the backward.
    variables = jax.tree.map(lambda v: v + dep.astype(v.dtype), variables)
    _, vjp = jax.vjp(lambda v, *xs: unbound.apply(v, *xs), variables, *a)
    return vjp(g)

  return nn.custom_vjp(f, forward_fn=fwd, backward_fn=bwd)(module, *args)


def call_block(remat: bool, module: nn.Module, *args, min_side: int = 0):
  """``remat_call(module, *args)`` when ``remat`` and the first input's height is at least ``min_side``
  (a block on a smaller feature map keeps its activations), else ``module(*args)``."""
  return remat_call(module, *args) if remat and args[0].shape[1] >= min_side else module(*args)


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
  Part 2: LN -> 1x1 C->2C -> crossing gate -> 1x1, residual with zero-init ``b_t, b_r`` (one ``b``
  for both streams with ``shared_b``, as DSRNet-L). LayerNorm over channels, eps 1e-6, two-pass
  variance (as DSRNet's LayerNorm2d).
  """
  shared_b: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, t: Array, r: Array) -> tuple[Array, Array]:
    c = t.shape[-1]
    norm1 = _layer_norm("norm1", self.dtype)
    expand1 = _conv(2 * c, 1, name="expand1", dtype=self.dtype)
    dw = DepthwiseConv(3, dtype=self.dtype, name="dwconv")
    ca = ChannelAttention(dtype=self.dtype, name="ca")
    proj1 = _conv(c, 1, name="proj1", dtype=self.dtype)
    xt, xr = mugi_gate(dw(expand1(norm1(t))), dw(expand1(norm1(r))))
    xt, xr = proj1(ca(xt)), proj1(ca(xr))
    zeros = nn.initializers.zeros
    t = t + xt * self.param("a_t", zeros, (c,))
    r = r + xr * self.param("a_r", zeros, (c,))

    norm2 = _layer_norm("norm2", self.dtype)
    expand2 = _conv(2 * c, 1, name="expand2", dtype=self.dtype)
    proj2 = _conv(c, 1, name="proj2", dtype=self.dtype)
    yt, yr = mugi_gate(expand2(norm2(t)), expand2(norm2(r)))
    if self.shared_b:
      b_t = b_r = self.param("b", zeros, (c,))
    else:
      b_t, b_r = self.param("b_t", zeros, (c,)), self.param("b_r", zeros, (c,))
    return t + proj2(yt) * b_t, r + proj2(yr) * b_r


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
    y = _layer_norm("norm1", self.dtype)(x)
    y = _conv(2 * c, 1, name="expand1", dtype=self.dtype)(y)
    y = DepthwiseConv(3, dtype=self.dtype, name="dwconv")(y)
    y = ChannelAttention(dtype=self.dtype, name="ca")(simple_gate(y))
    y = _conv(c, 1, name="proj1", dtype=self.dtype)(y)
    x = x + y * self.param("a", nn.initializers.zeros, (c,))
    y = _layer_norm("norm2", self.dtype)(x)
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
  features: int | None = None  # width of h (None = the inputs' channel count)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, t: Array, r: Array) -> tuple[Array, Array]:
    c = self.features or t.shape[-1]
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
  """Frozen VGG19 prior: (B,H,W,3) in [0,1] -> {tap: features}, gradients stopped.

  ``normalize=True`` feeds ImageNet-normalised images (torchvision's convention); DSRNet feeds
  the raw [0, 1] image (``normalize=False``), as its ``self.vgg(input_i)`` does.
  """
  taps: Sequence[str] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
  width_divisor: int = 1
  normalize: bool = True

  @nn.compact
  def __call__(self, x01: Array) -> dict[str, Array]:
    # Only the convs up to the deepest tap are created here; init_params stores all 16 convs in
    # frozen['vgg'] (unused extra params are ignored by apply).
    vgg = vgg_lib.VGG(depth=19, taps=tuple(self.taps), width_divisor=self.width_divisor, name="vgg")
    feats = vgg(vgg_lib.imagenet_normalize(x01) if self.normalize else x01)
    return jax.lax.stop_gradient(feats)


class FeaturePyramidVGG(nn.Module):
  """DSRNet's stem: image (B,H,W,3) + VGG19 taps relu1_1..relu5_1 -> two streams (B,H,W,out_channels).

  Top-down over the taps: MuGI at 512 on relu5_1, bilinear x2 (align_corners=True); concat with
  MuGI(relu4_1) -> 1x1 1024 -> PixelShuffle -> MuGI 256; the same at 256 and 128; then relu1_1:
  1x1 128 -> MuGI 128 -> 1x1 32 -> MuGI 32; the image: 3x3 3->32 -> MuGI 32; concat -> 1x1 -> C.
  Channel counts are VGG19's (fixed); ``H, W`` must be multiples of 16.
  """
  out_channels: int = 64
  shared_b: bool = False
  remat: bool = False  # recompute MuGI activations in the backward pass (less memory)
  dtype: Any = jnp.float32
  remat_min_side: int = 0  # with remat: only blocks on feature maps at least this high are recomputed

  @nn.compact
  def __call__(self, x01: Array, feats: Sequence[Array]) -> tuple[Array, Array]:
    vf1, vf2, vf3, vf4, vf5 = feats
    dt, sb = self.dtype, self.shared_b
    def mugi(name, t, r=None):
      return call_block(self.remat, MuGIBlock(shared_b=sb, dtype=dt, name=name), t, t if r is None else r,
                        min_side=self.remat_min_side)

    def both(layer, t, r):
      return layer(t), layer(r)

    def merge(name, deep, skip, ch):  # concat -> 1x1 (shared) -> PixelShuffle -> MuGI
      conv = _conv(ch, 1, name=name, dtype=dt)
      t = pixel_shuffle(conv(jnp.concatenate([deep[0], skip[0]], -1)))
      r = pixel_shuffle(conv(jnp.concatenate([deep[1], skip[1]], -1)))
      return mugi(name + "_mugi", t, r)

    f5 = both(upsample_bilinear_align_corners, *mugi("block5", vf5))
    f4 = merge("ch_map4", f5, mugi("block4", vf4), 1024)
    f3 = merge("ch_map3", f4, mugi("block3", vf3), 512)
    f2 = merge("ch_map2", f3, mugi("block2", vf2), 256)
    f1 = mugi("block1", vf1)
    t, r = both(_conv(128, 1, name="ch_map1_in", dtype=dt), jnp.concatenate([f2[0], f1[0]], -1),
                jnp.concatenate([f2[1], f1[1]], -1))
    t, r = mugi("ch_map1_mugi0", t, r)
    t, r = both(_conv(32, 1, name="ch_map1_out", dtype=dt), t, r)
    f1 = mugi("ch_map1_mugi1", t, r)
    f0 = mugi("intro_mugi", _conv(32, 3, name="intro", dtype=dt)(x01))
    out = _conv(self.out_channels, 1, name="ch_map0", dtype=dt)
    return out(jnp.concatenate([f1[0], f0[0]], -1)), out(jnp.concatenate([f1[1], f0[1]], -1))


class LRM(nn.Module):
  """DSRNet's residual head: decoder streams (B,H,W,C) x2 -> RR (B,H,W,3) in (-1, 1).

  1x1 C->2C (shared), ``inter_blocks`` dual-stream MuGI blocks (separate ``b_t, b_r``), concat ->
  ``merge_blocks`` single-stream NAFNet blocks at 4C -> 3x3 conv -> tanh.
  """
  inter_blocks: int = 2
  merge_blocks: int = 4
  remat: bool = False  # recompute the blocks' activations in the backward pass (less memory)
  dtype: Any = jnp.float32
  remat_min_side: int = 0  # with remat: only blocks on feature maps at least this high are recomputed

  @nn.compact
  def __call__(self, t: Array, r: Array) -> Array:
    call = functools.partial(call_block, self.remat, min_side=self.remat_min_side)
    c = 2 * t.shape[-1]
    intro = _conv(c, 1, name="intro", dtype=self.dtype)
    t, r = intro(t), intro(r)
    for i in range(self.inter_blocks):
      t, r = call(MuGIBlock(shared_b=False, dtype=self.dtype, name=f"inter{i}"), t, r)
    f = jnp.concatenate([t, r], axis=-1)
    for i in range(self.merge_blocks):
      f = call(SingleStreamBlock(dtype=self.dtype, name=f"merge{i}"), f)
    return jnp.tanh(_conv(3, 3, name="tail", dtype=self.dtype)(f))


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
  """(B, H, W, 3) blended image in [0,1] -> ({'T','R','R_low','R_high'[,'RR']}, aux). H, W % size_multiple == 0.

  One network, two stems and optional parts, so that both the inter-layer-complementarity model
  and exact DSRNet are presets of it:

  * ``stem='conv'``: 3x3 intro conv, VGG taps injected per level (:class:`PriorInjection`);
    ``stem='vgg_pyramid'``: DSRNet's :class:`FeaturePyramidVGG` over relu1_1..relu5_1.
  * ``prior_normalize``: ImageNet-normalise the VGG input (False = raw [0, 1], as DSRNet).
  * ``shared_b``: one ``b`` for both streams in every MuGI block (DSRNet-L).
  * ``attention`` (complementarity attention per stage), ``hf_blocks`` > 0 (high-frequency block
    G and inverse modulation; 0 = off, then ``R_high`` = 0).
  * ``lrm_blocks=(n_inter, n_merge)``: DSRNet's LRM head, output ``RR`` (empty = no LRM).
  * ``t_residual``: ``T = I + ending(f_T)`` (else ``T = ending(f_T)``, as DSRNet).
  * ``g_position``: ``'before_heads'`` -- G(f_T, f_R) on the decoder's stream features, inverse
    modulation of those features, then the heads; ``'after_heads'`` (the paper, arXiv 2505.12641v1) --
    the heads give T_hat and R_low_hat, then G(T_hat, R_low_hat) (high-pass of the two images, width
    ``width``) gives h and R_high, and h inversely modulates both output layers:
    ``T = T_hat * (1 - s_T sigmoid(W h))``, ``R_low = R_low_hat * (1 - s_R sigmoid(W h))``.
  """
  width: int = 64
  enc_blocks: Sequence[int] = (2, 2, 4, 8)
  middle_blocks: int = 8
  dec_blocks: Sequence[int] = (2, 2, 2, 2)
  attention: bool = True          # inter-layer complementarity attention after every stage
  max_heads: int = 8
  hf_blocks: int = 2              # 0 = no high-frequency block / inverse modulation
  hf_kernel: int = 11             # mean-filter size of the high-pass inside G
  use_prior: bool = True
  vgg_width_divisor: int = 1      # 1 = real VGG19 (loadable); >1 only for tiny random demos
  t_residual: bool = True         # T = I + head(f_T) (starts at the identity), else T = head(f_T)
  stem: str = "conv"              # "conv" | "vgg_pyramid" (DSRNet)
  prior_normalize: bool = True    # ImageNet-normalise the prior's input (DSRNet: False)
  shared_b: bool = False          # MuGI: one b for both streams (DSRNet-L)
  lrm_blocks: Sequence[int] = ()  # DSRNet LRM (n_inter, n_merge); () = none
  remat: bool = False             # recompute every block's activations in the backward pass (remat_call)
  # With remat: recompute only blocks whose feature maps are at most this many times smaller than the input
  # (e.g. 4: the full, 1/2 and 1/4 resolution ones); the smaller, cheap-to-keep ones keep their activations.
  # 0 = every block. Same parameters and numbers; trades memory for time (docs/derefl.md).
  remat_max_stride: int = 0
  g_position: str = "before_heads"  # "before_heads" | "after_heads" (the paper): where G sits
  dtype: Any = jnp.float32

  def _heads(self, level: int, c: int) -> int:
    h = min(self.max_heads, 2 ** level)
    while c % h:
      h //= 2
    return max(h, 1)

  @property
  def prior_taps(self) -> tuple[str, ...]:
    n = 5 if self.stem == "vgg_pyramid" else min(len(self.enc_blocks) + 1, 5)
    return tuple(f"relu{i + 1}_1" for i in range(n))

  @property
  def size_multiple(self) -> int:
    """H and W must be multiples of this (2^levels; 16 at least for the VGG pyramid)."""
    m = 2 ** len(self.enc_blocks)
    return max(m, 16) if self.stem == "vgg_pyramid" else m

  def _check(self, x01: Array) -> None:
    levels = len(self.enc_blocks)
    if len(self.dec_blocks) != levels:
      raise ValueError(f"enc_blocks {self.enc_blocks} and dec_blocks {self.dec_blocks} need the same length.")
    if self.stem not in ("conv", "vgg_pyramid"):
      raise ValueError(f"stem must be 'conv' or 'vgg_pyramid', got {self.stem!r}.")
    if self.stem == "vgg_pyramid" and (not self.use_prior or self.vgg_width_divisor != 1):
      raise ValueError("stem='vgg_pyramid' needs the full VGG19 prior (use_prior=True, vgg_width_divisor=1).")
    if self.g_position not in ("before_heads", "after_heads"):
      raise ValueError(f"g_position must be 'before_heads' or 'after_heads', got {self.g_position!r}.")
    if self.remat_max_stride < 0:
      raise ValueError(f"remat_max_stride must be >= 0 (0 = recompute every block), got {self.remat_max_stride}.")
    if len(self.lrm_blocks) not in (0, 2):
      raise ValueError(f"lrm_blocks must be () or (n_inter, n_merge), got {tuple(self.lrm_blocks)}.")
    if x01.ndim != 4 or x01.shape[-1] != 3:
      raise ValueError(f"expected NHWC RGB images (B, H, W, 3), got shape {x01.shape}.")
    mult = self.size_multiple
    if x01.shape[1] % mult or x01.shape[2] % mult:
      raise ValueError(f"H and W must be multiples of {mult} for this model, got {x01.shape[1:3]}; "
                       "pad the image (derefl_jax.predict pads to a multiple of 32).")

  @nn.compact
  def __call__(self, x01: Array) -> tuple[dict[str, Array], dict[str, Array]]:
    self._check(x01)
    levels = len(self.enc_blocks)
    dt = self.dtype
    x01 = x01.astype(dt)
    min_side = -(-x01.shape[1] // self.remat_max_stride) if self.remat_max_stride > 0 else 0
    prior = {}
    if self.use_prior:
      prior = VGGPrior(self.prior_taps, self.vgg_width_divisor, self.prior_normalize, name="prior")(x01)
    inject = self.use_prior and self.stem == "conv"
    if self.stem == "vgg_pyramid":
      t, r = FeaturePyramidVGG(self.width, self.shared_b, self.remat, dtype=dt, remat_min_side=min_side,
                               name="pyramid")(
          x01, [prior[k] for k in self.prior_taps])
    else:
      t = r = _conv(self.width, 3, name="intro", dtype=dt)(x01)
    c = self.width
    skips = []
    call = functools.partial(call_block, self.remat, min_side=min_side)
    for lvl, n in enumerate(self.enc_blocks):
      if inject and lvl + 1 <= 5:  # VGG19 has taps relu1_1 .. relu5_1
        t, r = PriorInjection(dtype=dt, name=f"prior_in{lvl}")(t, r, prior[f"relu{lvl + 1}_1"])
      for i in range(n):
        t, r = call(MuGIBlock(self.shared_b, dtype=dt, name=f"enc{lvl}_{i}"), t, r)
      if self.attention:
        t, r = call(ComplementarityAttention(self._heads(lvl, c), dtype=dt, name=f"enc{lvl}_ica"), t, r)
      skips.append((t, r))
      down = _conv(2 * c, 2, stride=2, name=f"down{lvl}", dtype=dt)
      t, r = down(t), down(r)
      c *= 2
    if inject and levels + 1 <= 5:
      t, r = PriorInjection(dtype=dt, name="prior_mid")(t, r, prior[f"relu{levels + 1}_1"])
    for i in range(self.middle_blocks):
      t, r = call(MuGIBlock(self.shared_b, dtype=dt, name=f"mid_{i}"), t, r)
    if self.attention:
      t, r = call(ComplementarityAttention(self._heads(levels, c), dtype=dt, name="mid_ica"), t, r)
    for j, n in enumerate(self.dec_blocks):
      lvl = levels - 1 - j
      up = _conv(2 * c, 1, bias=False, name=f"up{lvl}", dtype=dt)
      t, r = pixel_shuffle(up(t)), pixel_shuffle(up(r))
      c //= 2
      t, r = t + skips[lvl][0], r + skips[lvl][1]
      for i in range(n):
        t, r = call(MuGIBlock(self.shared_b, dtype=dt, name=f"dec{lvl}_{i}"), t, r)
      if self.attention:
        t, r = call(ComplementarityAttention(self._heads(lvl, c), dtype=dt, name=f"dec{lvl}_ica"), t, r)
    aux = {"prior": prior}
    r_high = None
    after = self.g_position == "after_heads"
    if self.hf_blocks > 0 and not after:
      h, r_high = HighFrequencyBlock(self.hf_blocks, self.hf_kernel, dtype=dt, name="hf")(t, r)
      t, r = InverseModulation(dtype=dt, name="inverse_mod")(t, r, h)
      aux["hf_features"] = h
    out = {}
    if self.lrm_blocks:
      out["RR"] = LRM(int(self.lrm_blocks[0]), int(self.lrm_blocks[1]), self.remat, dtype=dt,
                      remat_min_side=min_side, name="lrm")(t, r)
    # Zero-init head: at init T = I (with t_residual), R_low = R_high = 0 -- the identity baseline.
    ending = _conv(3, 3, name="ending", dtype=dt, kernel_init=nn.initializers.zeros)
    t_img, r_low = ending(t), ending(r)
    if self.t_residual:
      t_img = t_img + x01
    if self.hf_blocks > 0 and after:
      h, r_high = HighFrequencyBlock(self.hf_blocks, self.hf_kernel, features=self.width, dtype=dt, name="hf")(
          t_img, r_low)
      t_img, r_low = InverseModulation(dtype=dt, name="inverse_mod")(t_img, r_low, h)
      aux["hf_features"] = h
    if r_high is None:
      r_high = jnp.zeros_like(r_low)
    out.update({"T": t_img, "R": r_low + r_high, "R_low": r_low, "R_high": r_high})
    return out, aux


# ----------------------------------------------------------------------------- presets / params
_DSRNET = dict(stem="vgg_pyramid", prior_normalize=False, attention=False, hf_blocks=0, t_residual=False,
               use_prior=True, vgg_width_divisor=1)

PRESETS: dict[str, dict[str, Any]] = {
    # CPU tests / demo: 2 levels, width 8, tiny random VGG (width / 8).
    "tiny": dict(width=8, enc_blocks=(1, 1), middle_blocks=1, dec_blocks=(1, 1), hf_blocks=1,
                 max_heads=2, vgg_width_divisor=8),
    # A mid-size model (single GPU fine-tuning): real VGG19 prior.
    "base": dict(width=32, enc_blocks=(1, 1, 2, 4), middle_blocks=4, dec_blocks=(1, 1, 1, 1), hf_blocks=1),
    # The paper (arXiv 2505.12641v1): exact DSRNet-L + complementarity attention after every stage + G after the
    # heads with inverse modulation (train/configs/derefl.py `variant` switches the additions; costs:
    # docs/derefl_model.md "Cost").
    "paper": dict(_DSRNET, width=64, enc_blocks=(2, 2, 4, 8), middle_blocks=12, dec_blocks=(2, 2, 2, 2),
                  lrm_blocks=(2, 4), shared_b=True, attention=True, hf_blocks=2, g_position="after_heads"),
    # The earlier `paper` layout (prior injected per level, 8 middle blocks, G before the heads, no LRM).
    "paper_conv": dict(width=64, enc_blocks=(2, 2, 4, 8), middle_blocks=8, dec_blocks=(2, 2, 2, 2), hf_blocks=2),
    # Exact DSRNet (ICCV 2023; official builders models/arch/__init__.py): 124,602,022 params.
    "dsrnet_l": dict(_DSRNET, width=64, enc_blocks=(2, 2, 4, 8), middle_blocks=12, dec_blocks=(2, 2, 2, 2),
                     lrm_blocks=(2, 4), shared_b=True),
    # dsrnet_l_4000_epoch33.pt (trained with Nature data): LRM with 2 merge blocks; 123,667,622 params.
    "dsrnet_l_nature": dict(_DSRNET, width=64, enc_blocks=(2, 2, 4, 8), middle_blocks=12,
                            dec_blocks=(2, 2, 2, 2), lrm_blocks=(2, 2), shared_b=True),
    # The official dsrnet_s builder fails at the reference commit (LRM(num_blocks=[])); this preset
    # assumes LRM's own default (2, 4). Loading dsrnet_s_epoch14.pt infers LRM (and all else) from
    # the state dict's keys and shapes instead (derefl_jax.dsrnet_weights.infer_variant).
    "dsrnet_s": dict(_DSRNET, width=32, enc_blocks=(2, 2, 2), middle_blocks=4, dec_blocks=(2, 2, 2),
                     lrm_blocks=(2, 4), shared_b=False),
}
DSRNET_PRESETS = ("dsrnet_l", "dsrnet_l_nature", "dsrnet_s")


def build_model(preset: str = "tiny", **overrides) -> ReflectionRemovalNet:
  """Model of a preset ('tiny' | 'base' | 'paper' | 'dsrnet_l' | 'dsrnet_l_nature' | 'dsrnet_s'), fields overridable."""
  if preset not in PRESETS:
    raise ValueError(f"Unknown model preset {preset!r}; valid presets: {sorted(PRESETS)}.")
  fields = {f.name for f in dataclasses.fields(ReflectionRemovalNet)} - {"parent", "name"}
  bad = sorted(set(overrides) - fields)
  if bad:
    raise ValueError(f"Unknown model fields {bad}; valid fields: {sorted(fields)}.")
  kw = dict(PRESETS[preset])
  kw.update(overrides)
  for k in ("enc_blocks", "dec_blocks", "lrm_blocks"):
    if k in kw:
      kw[k] = tuple(int(v) for v in kw[k])
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
  size = max(model.size_multiple, 16)  # params do not depend on the image size
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
  del lowered
  release_free_heap()
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
                           batch: int = 1, compile: bool = False, **overrides) -> dict[str, Any]:
  """Trainable params (frozen VGG excluded) and forward FLOPs from XLA's cost analysis.

  With the defaults (batch 1, ``compile=False``) this is :func:`derefl_jax.complexity.count`, the one
  counter every quoted figure comes from (lowered HLO: the same number on every backend).
  ``compile=True`` reads the compiled estimate of the default backend instead (it changes with
  backend and XLA flags; never quoted). XLA counts a multiply-add as 2 flops: ``macs = flops / 2``.
  """
  model = build_model(preset, **overrides) if isinstance(preset, str) else preset
  if batch == 1 and not compile:
    from derefl_jax import complexity  # pylint: disable=import-outside-toplevel
    c = complexity.count(model, height, width)
    return {"preset": preset if isinstance(preset, str) else "custom", "batch": 1, **c,
            "flops_source": c["source"], "analysis_seconds": c["seconds"]}
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
