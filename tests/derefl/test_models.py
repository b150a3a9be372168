"""Reflection-removal network: stream reorganisation, blocks, presets, params/FLOPs budget."""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from derefl_jax import models

KEY = jax.random.key(0, impl="unsafe_rbg")


def _rand(*shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


# ------------------------------------------------------------------ pure stream functions
def test_interleave_layout_and_exact_inverse():
  t = jnp.arange(6.0).reshape(1, 1, 1, 6)
  r = 100 + jnp.arange(6.0).reshape(1, 1, 1, 6)
  z = models.interleave_channels(t, r)
  np.testing.assert_array_equal(z[0, 0, 0], [0, 100, 1, 101, 2, 102, 3, 103, 4, 104, 5, 105])
  a, b = models.reorganize_streams(t, r)
  np.testing.assert_array_equal(a[0, 0, 0], [0, 100, 1, 101, 2, 102])  # each mixes T and R
  np.testing.assert_array_equal(b[0, 0, 0], [3, 103, 4, 104, 5, 105])
  # Exact (bitwise) round trip on random data, odd channel counts included.
  for c in (1, 5, 16):
    t, r = _rand(2, 3, 4, c, seed=c), _rand(2, 3, 4, c, seed=c + 1)
    t2, r2 = models.restore_streams(*models.reorganize_streams(t, r))
    np.testing.assert_array_equal(t2, t)
    np.testing.assert_array_equal(r2, r)
    a, b = models.reorganize_streams(t, r)
    a2, b2 = models.reorganize_streams(*models.restore_streams(a, b))
    np.testing.assert_array_equal(a2, a)
    np.testing.assert_array_equal(b2, b)
  with pytest.raises(ValueError, match="same shape"):
    models.interleave_channels(jnp.zeros((1, 2, 2, 3)), jnp.zeros((1, 2, 2, 4)))


def test_pixel_shuffle_matches_torch():
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(0).normal(size=(2, 3, 5, 12)).astype(np.float32)
  ref = torch.nn.PixelShuffle(2)(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
  np.testing.assert_array_equal(models.pixel_shuffle(jnp.asarray(x), 2), ref)


def test_depthwise_shift_equals_xla_conv():
  x, k = _rand(2, 7, 9, 5), _rand(3, 3, 1, 5, seed=1)
  np.testing.assert_allclose(models.depthwise_conv(x, k, impl="shift"), models.depthwise_conv(x, k, impl="xla"),
                             atol=1e-5)
  with pytest.raises(ValueError, match="impl"):
    models.depthwise_conv(x, k, impl="fft")


@pytest.mark.parametrize("ksize", [3, 5])
def test_depthwise_shift_gradients_equal_xla_conv(ksize):
  # The shift impl has a hand-written backward (memory): its VJP must equal autodiff of XLA's conv.
  x, k = _rand(2, 6, 9, 4), _rand(ksize, ksize, 1, 4, seed=1)
  w = _rand(2, 6, 9, 4, seed=2)

  def f(impl):
    return jax.grad(lambda x, k: jnp.sum(jnp.sin(models.depthwise_conv(x, k, impl=impl)) * w), argnums=(0, 1))(x, k)

  for got, ref in zip(f("shift"), f("xla")):
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)
  with pytest.raises(ValueError, match="K odd"):
    models.depthwise_conv(x, _rand(2, 2, 1, 4), impl="shift")


@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_conv_equals_nn_conv(bias):
  """PointwiseConv (a 1x1 conv as a matmul) has nn.Conv's params and init, and its outputs and gradients."""
  import flax.linen as nn
  x = _rand(2, 5, 7, 6)
  ref, ours = nn.Conv(4, (1, 1), use_bias=bias), models.PointwiseConv(4, use_bias=bias)
  p_ref, p_ours = ref.init(KEY, x)["params"], ours.init(KEY, x)["params"]
  assert jax.tree.map(jnp.shape, p_ref) == jax.tree.map(jnp.shape, p_ours)
  jax.tree.map(np.testing.assert_array_equal, p_ref, p_ours)  # the same initial values
  p = jax.tree.map(lambda v: v + _rand(*v.shape, seed=3), p_ref)  # non-zero bias too
  np.testing.assert_allclose(ours.apply({"params": p}, x), ref.apply({"params": p}, x), rtol=1e-5, atol=1e-5)
  loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply({"params": p}, x)))  # noqa: E731
  g_ours, g_ref = jax.grad(loss(ours), (0, 1))(p, x), jax.grad(loss(ref), (0, 1))(p, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), g_ours, g_ref)
  # the network's 1x1 convs are PointwiseConv, odd KxK unstrided ones SameConv; strided ones stay nn.Conv
  assert isinstance(models._conv(8, 1), models.PointwiseConv)  # pylint: disable=protected-access
  assert isinstance(models._conv(8, 3), models.SameConv) and isinstance(models._conv(8, 2, stride=2), nn.Conv)


@pytest.mark.parametrize("cin,cout,k,bias", [(6, 4, 3, True), (3, 5, 3, False), (2, 3, 5, True)])
def test_same_conv_equals_nn_conv(cin, cout, k, bias):
  """SameConv has nn.Conv's params, init and outputs (bit for bit), and its gradients; both kernel-gradient
  forms (windows of the cotangent when Cin > Cout, of x otherwise) are covered."""
  import flax.linen as nn
  x = _rand(2, 7, 9, cin)
  ref = nn.Conv(cout, (k, k), padding=((k // 2, k // 2), (k // 2, k // 2)), use_bias=bias)
  ours = models.SameConv(cout, k, use_bias=bias)
  p_ref, p_ours = ref.init(KEY, x)["params"], ours.init(KEY, x)["params"]
  jax.tree.map(np.testing.assert_array_equal, p_ref, p_ours)  # same names, shapes and initial values
  p = jax.tree.map(lambda v: v + _rand(*v.shape, seed=3), p_ref)
  np.testing.assert_array_equal(ours.apply({"params": p}, x), ref.apply({"params": p}, x))
  loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply({"params": p}, x)))  # noqa: E731
  g_ours, g_ref = jax.grad(loss(ours), (0, 1))(p, x), jax.grad(loss(ref), (0, 1))(p, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), g_ours, g_ref)
  for fn in (models.conv_same, lambda a, b: jax.grad(lambda b: jnp.sum(models.conv_same(a, b)))(b)):
    with pytest.raises(ValueError, match="K odd"):
      fn(x, _rand(2, 2, cin, cout))


def test_same_conv_kernel_gradient_is_a_dot():
  """The compiled kernel gradient of a 3x3 conv: no convolution whose window is the whole image (autodiff's rule
  makes one, ~100x slower on XLA:CPU: 0.24 s for DSRNet's LRM tail at 224²), one dot instead."""
  x, g = _rand(1, 24, 20, 8), _rand(1, 24, 20, 3, seed=1)
  kernel = _rand(3, 3, 8, 3, seed=2)

  def kernel_grad_hlo(conv):
    def kernel_grad(x, k, g):
      return jax.vjp(lambda k: conv(x, k), k)[1](g)[0]
    return jax.jit(kernel_grad).lower(x, kernel, g).compile().as_text()  # arguments: not constant-folded

  whole_image = re.compile(r"convolution\([^)]*\), window=\{size=24x20")
  assert whole_image.search(kernel_grad_hlo(models._conv_same_xla))  # pylint: disable=protected-access
  hlo = kernel_grad_hlo(models.conv_same)
  assert not whole_image.search(hlo) and " dot(" in hlo


def test_pointwise_matmul_gradients_against_numpy():
  """pointwise_matmul's hand-written VJP: the gradients of (..., C) . (C, D), against numpy in float64."""
  x, k, g = _rand(2, 3, 5, 6, seed=1), _rand(6, 4, seed=2), _rand(2, 3, 5, 4, seed=3)
  y, vjp = jax.vjp(models.pointwise_matmul, x, k)
  dx, dk = vjp(g)
  x64, k64, g64 = (np.asarray(a, np.float64) for a in (x, k, g))
  np.testing.assert_allclose(y, x64 @ k64, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dx, g64 @ k64.T, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dk, x64.reshape(-1, 6).T @ g64.reshape(-1, 4), rtol=1e-5, atol=1e-5)
  assert dx.dtype == x.dtype and dk.dtype == k.dtype
  xb, kb = x.astype(jnp.bfloat16), k.astype(jnp.bfloat16)  # the model's dtype=bfloat16 option
  dxb, dkb = jax.grad(lambda a, b: jnp.sum(models.pointwise_matmul(a, b).astype(jnp.float32)), (0, 1))(xb, kb)
  assert dxb.dtype == jnp.bfloat16 and dkb.dtype == jnp.bfloat16


def _kernel_gradient_dots(hlo: str) -> list[str]:
  """rhs contracting dim of each dot that contracts lhs dim 0 into a (>= 16, >= 16) output: a kernel gradient."""
  pat = r"= f32\[(\d+),(\d+)\]\S* dot\([^)]*\), lhs_contracting_dims=\{0\}, rhs_contracting_dims=\{(\d)\}"
  return [m.group(3) for m in re.finditer(pat, hlo) if min(int(m.group(1)), int(m.group(2))) >= 16]


def test_pointwise_kernel_gradient_needs_no_transposed_cotangent():
  """In a MuGI block's compiled gradient, every 1x1 kernel gradient contracts the pixels of x (P, C) and of the
  cotangent (P, D) as they are (dims 0 and 0). From autodiff's own rule for the einsum, XLA made the slow
  dot(x, g^T) form (dims 0 and 1, after a transposed copy of g) for all 8 here (checked with the rule swapped
  back)."""
  blk = models.MuGIBlock(shared_b=True)
  t, r = _rand(1, 16, 16, 16, seed=4), _rand(1, 16, 16, 16, seed=5)
  params = blk.init(KEY, t, r)["params"]

  def loss(p):
    a, b = blk.apply({"params": p}, t, r)
    return jnp.sum(a * a) + jnp.sum(b * r)

  forms = _kernel_gradient_dots(jax.jit(jax.grad(loss)).lower(params).compile().as_text())
  assert forms and set(forms) == {"0"}, forms


def test_mean_filter_against_numpy():
  x = np.random.default_rng(0).uniform(size=(1, 9, 10, 2)).astype(np.float32)
  ref = np.zeros_like(x)
  xp = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
  for i in range(9):
    for j in range(10):
      ref[:, i, j] = xp[:, i:i + 5, j:j + 5].mean(axis=(1, 2))
  np.testing.assert_allclose(models.mean_filter(jnp.asarray(x), 5), ref, atol=1e-6)
  with pytest.raises(ValueError, match="odd"):
    models.mean_filter(jnp.asarray(x), 4)


# ------------------------------------------------------------------ blocks
def _perturb(params, seed=0):
  """Random values everywhere (zero-init scales included), so blocks are not the identity."""
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(tree, [jnp.asarray(rng.normal(scale=0.5, size=l.shape), l.dtype) for l in leaves])


def test_mugi_identity_at_init_gate_crossing_and_shared_weights():
  blk = models.MuGIBlock()
  t, r = _rand(2, 8, 8, 6), _rand(2, 8, 8, 6, seed=1)
  p = blk.init(KEY, t, r)
  apply = jax.jit(blk.apply)
  ot, orr = apply(p, t, r)
  np.testing.assert_array_equal(ot, t)  # zero-init residual scales
  np.testing.assert_array_equal(orr, r)
  # One set of conv weights for both streams (plus per-stream scales a_t, a_r, b_t, b_r).
  names = set(p["params"])
  assert {"norm1", "expand1", "dwconv", "ca", "proj1", "norm2", "expand2", "proj2"} <= names
  assert {"a_t", "a_r", "b_t", "b_r"} <= names
  q = _perturb(p)["params"]
  q = {**q, "a_r": q["a_t"], "b_r": q["b_t"]}
  ot, orr = apply({"params": q}, t, r)
  st, sr = apply({"params": q}, r, t)  # shared weights + symmetric gate: swap-equivariant
  np.testing.assert_allclose(st, orr, atol=1e-5)
  np.testing.assert_allclose(sr, ot, atol=1e-5)
  # The gate crosses the streams: T's output depends on R.
  ot2, _ = apply({"params": q}, t, r * 2.0 + _rand(2, 8, 8, 6, seed=7))
  assert float(jnp.abs(ot2 - ot).max()) > 1e-3
  x1, x2 = jnp.array([[1.0, 2.0]]), jnp.array([[3.0, 5.0]])
  g = models.mugi_gate(x1, x2)
  np.testing.assert_array_equal(g[0], [[5.0]])   # x_first * y_second
  np.testing.assert_array_equal(g[1], [[6.0]])   # y_first * x_second


def test_complementarity_attention_mixes_only_within_reorganised_streams():
  blk = models.ComplementarityAttention(num_heads=2)
  c = 8
  t, r = _rand(1, 6, 6, c), _rand(1, 6, 6, c, seed=1)
  p = blk.init(KEY, t, r)
  apply = jax.jit(blk.apply)
  ot, orr = apply(p, t, r)
  np.testing.assert_array_equal(ot, t)  # zero-init gammas: identity
  np.testing.assert_array_equal(orr, r)
  assert "attn" in p["params"] and "attn_1" not in p["params"]  # one attention, shared by both streams
  q = _perturb(p, seed=3)
  ot, orr = apply(q, t, r)
  assert ot.shape == t.shape and orr.shape == r.shape
  # Reorganised stream A holds T[:, :c/2] and R[:, :c/2]. Changing R[..., 0] (in A) changes
  # T[..., 0] (the complementarity); changing R[..., c-1] (in B) leaves T[..., :c/2] unchanged.
  ot_a, _ = apply(q, t, r.at[..., 0].add(1.0))
  ot_b, _ = apply(q, t, r.at[..., c - 1].add(1.0))
  assert float(jnp.abs(ot_a[..., 0] - ot[..., 0]).max()) > 1e-4
  np.testing.assert_allclose(ot_b[..., : c // 2], ot[..., : c // 2], atol=1e-6)
  assert float(jnp.abs(ot_b[..., c // 2:] - ot[..., c // 2:]).max()) > 1e-4
  # Gradients reach every parameter (shared attention included) and are finite.
  g = jax.jit(jax.grad(lambda q: sum(jnp.sum(o ** 2) for o in blk.apply(q, t, r))))(q)
  for path, leaf in jax.tree_util.tree_leaves_with_path(g):
    assert bool(jnp.isfinite(leaf).all()) and float(jnp.abs(leaf).max()) > 0, path


def test_transposed_attention_against_numpy():
  blk = models.TransposedChannelAttention(num_heads=2)
  x = _rand(1, 4, 5, 4)
  p = _perturb(blk.init(KEY, x), seed=5)["params"]
  out = np.asarray(jax.jit(blk.apply)({"params": p}, x))
  xn = np.asarray(x)[0].reshape(20, 4)
  qkv = xn @ np.asarray(p["qkv"]["kernel"])[0, 0]
  qkv = np.asarray(models.depthwise_conv(jnp.asarray(qkv.reshape(1, 4, 5, 12)), p["qkv_dwconv"]["kernel"]))[0]
  qkv = qkv.reshape(20, 12)
  q, k, v = qkv[:, :4], qkv[:, 4:8], qkv[:, 8:]
  heads = []
  for h in range(2):
    qh, kh, vh = (z[:, 2 * h:2 * h + 2].T for z in (q, k, v))  # (d, HW)
    qh = qh / np.linalg.norm(qh, axis=1, keepdims=True)
    kh = kh / np.linalg.norm(kh, axis=1, keepdims=True)
    logits = qh @ kh.T * np.asarray(p["temperature"])[h]
    a = np.exp(logits - logits.max(1, keepdims=True))
    a /= a.sum(1, keepdims=True)
    heads.append((a @ vh).T)
  ref = np.concatenate(heads, axis=1) @ np.asarray(p["proj"]["kernel"])[0, 0]
  np.testing.assert_allclose(out[0].reshape(20, 4), ref, atol=1e-5)


def test_inverse_modulation_and_high_frequency_block():
  t, r, h = _rand(1, 8, 8, 4), _rand(1, 8, 8, 4, seed=1), _rand(1, 8, 8, 4, seed=2)
  mod = models.InverseModulation()
  p = mod.init(KEY, t, r, h)
  ot, orr = jax.jit(mod.apply)(p, t, r, h)
  np.testing.assert_array_equal(ot, t)  # s = 0 at init
  q = {"params": {**p["params"], "s_t": jnp.ones(4), "s_r": jnp.full((4,), 0.5)}}
  ot, orr = jax.jit(mod.apply)(q, t, r, h)
  m = jax.nn.sigmoid(h @ p["params"]["gate"]["kernel"][0, 0] + p["params"]["gate"]["bias"])
  np.testing.assert_allclose(ot, t * (1 - m[..., :4]), atol=1e-6)
  np.testing.assert_allclose(orr, r * (1 - 0.5 * m[..., 4:]), atol=1e-6)
  # G sees only the high-frequency parts: adding a constant to the streams changes nothing.
  g = models.HighFrequencyBlock(num_blocks=1, kernel_size=3)
  pg = _perturb(g.init(KEY, t, r), seed=1)
  gapply = jax.jit(g.apply)
  h1, rh1 = gapply(pg, t, r)
  h2, rh2 = gapply(pg, t + 3.0, r - 2.0)
  assert rh1.shape == (1, 8, 8, 3) and h1.shape == t.shape
  np.testing.assert_allclose(rh2, rh1, atol=1e-4)


# ------------------------------------------------------------------ whole network
@pytest.fixture(scope="module")
def tiny():
  model = models.build_model("tiny")
  trainable, frozen = models.init_params(model, 0)
  return model, trainable, frozen


def test_tiny_forward_outputs(tiny):
  model, trainable, frozen = tiny
  assert "prior" not in trainable and set(frozen) == {"vgg"}
  assert len(frozen["vgg"]) == 16  # all VGG19 convs, for the perceptual loss too
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 16, 24, 3))
  fwd = jax.jit(lambda p, f, x: model.apply({"params": models.merge_params(p, f)}, x))
  out, aux = fwd(trainable, frozen, x)
  assert set(out) == {"T", "R", "R_low", "R_high"}
  for v in out.values():
    assert v.shape == x.shape
  np.testing.assert_allclose(out["R"], out["R_low"] + out["R_high"], atol=1e-6)
  np.testing.assert_allclose(out["T"], x, atol=1e-6)  # zero-init heads: starts at the identity
  assert aux["hf_features"].shape == (2, 16, 24, 8)
  # Perturbed params: finite, T differs from I, and the frozen prior changes the output.
  p2 = _perturb(trainable, seed=2)
  out2, _ = fwd(p2, frozen, x)
  assert all(bool(jnp.isfinite(v).all()) for v in out2.values())
  assert float(jnp.abs(out2["T"] - x).max()) > 1e-3
  out3, _ = fwd(p2, _perturb(frozen, seed=4), x)
  assert float(jnp.abs(out3["T"] - out2["T"]).max()) > 1e-4


_REMAT_KW = dict(width=8, enc_blocks=(1,), middle_blocks=1, dec_blocks=(1,), hf_blocks=0, max_heads=2,
                 vgg_width_divisor=8, lrm_blocks=(1, 1))  # MuGI, attention, LRM (MuGI + NAFNet) blocks


@pytest.fixture(scope="module")
def remat_grads():
  """Compiled parameter gradients of the tiny model without remat, with every block recomputed, and with
  remat_max_stride 1 and 2 -> (x, perturbed trainable params, {name: compiled}); compiled once for the
  remat tests."""
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(1, 32, 32, 3)), jnp.float32)
  tr, fr = models.init_params(models.build_model("tiny", **_REMAT_KW), 0)
  tr = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(KEY, a.shape), tr)  # no zero scales

  def grad_fn(model):
    def loss(tr):
      out, _ = model.apply({"params": models.merge_params(tr, fr)}, x)
      return sum(jnp.mean(jnp.sin(3 * out[k])) for k in ("T", "R", "RR"))
    # -O0 backend: 2x faster to compile; the buffer assignment (what is compared) is still XLA's.
    return jax.jit(jax.grad(loss)).lower(tr).compile(compiler_options={"xla_backend_optimization_level": 0})

  runs = {name: grad_fn(models.build_model("tiny", **_REMAT_KW, **extra)) for name, extra in [
      ("plain", {}), ("all", {"remat": True}), ("stride1", {"remat": True, "remat_max_stride": 1}),
      ("stride2", {"remat": True, "remat_max_stride": 2})]}
  return x, tr, runs


def test_remat_same_params_and_gradients_and_less_memory(remat_grads):
  """remat=True (every block through models.remat_call): same parameter names and gradients, and
  the backward's peak temp memory (XLA's own buffer assignment) goes down -- with nn.remat it did not."""
  x, tr, runs = remat_grads
  plain, remat = models.build_model("tiny", **_REMAT_KW), models.build_model("tiny", remat=True, **_REMAT_KW)
  shapes = lambda m: jax.tree.map(jnp.shape, jax.eval_shape(m.init, KEY, x)["params"])
  assert shapes(remat) == shapes(plain)
  c_plain, c_remat = runs["plain"], runs["all"]
  for a, b in zip(jax.tree.leaves(c_plain(tr)), jax.tree.leaves(c_remat(tr))):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
  temp = lambda c: c.memory_analysis().temp_size_in_bytes
  assert temp(c_remat) < 0.7 * temp(c_plain), (temp(c_remat), temp(c_plain))


def test_remat_max_stride_recomputes_only_the_larger_feature_maps(remat_grads):
  """remat_max_stride=1: only the full-resolution blocks are recomputed (the 16-px middle blocks keep their
  activations): same gradients, temp between every-block remat and none; 2 covers every block here."""
  x, tr, runs = remat_grads
  temp = {k: c.memory_analysis().temp_size_in_bytes for k, c in runs.items()}
  assert temp["all"] < temp["stride1"] < temp["plain"], temp
  assert temp["stride2"] == temp["all"], temp
  ref = jax.tree.leaves(runs["plain"](tr))
  for name in ("all", "stride1", "stride2"):
    for a, b in zip(ref, jax.tree.leaves(runs[name](tr))):
      np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
  with pytest.raises(ValueError, match="remat_max_stride"):
    models.build_model("tiny", remat=True, remat_max_stride=-1).init(KEY, x)


def test_remat_keeps_only_block_inputs_between_forward_and_backward():
  """Each remat'd block adds its input, and nothing else, to the backward's peak temp memory.

  Before the recomputation's parameters carried the cotangent dependency, XLA merged (CSE) the
  recomputation's full-size broadcasts of biases and scales with the forward's and kept them alive from
  the forward to the backward: +6.95 inputs per SingleStreamBlock here, and 4.2 of DSRNet-L's 4.9 GB temp
  at 224² (XLA:CPU YNNPACK fusions take broadcasts as materialised operands)."""
  class Chain(nn.Module):
    n: int

    @nn.compact
    def __call__(self, x):
      for i in range(self.n):
        x = models.remat_call(models.SingleStreamBlock(name=f"b{i}"), x)
      return x

  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 64, 64, 32)), jnp.float32)

  def temp(n):
    m = Chain(n)
    p = m.init(KEY, x)
    loss = lambda p: jnp.sum(jnp.sin(m.apply(p, x)))
    c = jax.jit(jax.grad(loss)).lower(p).compile(compiler_options={"xla_backend_optimization_level": 0})
    return c.memory_analysis().temp_size_in_bytes

  per_block = (temp(6) - temp(2)) / 4 / x.nbytes
  assert per_block <= 1.5, per_block


def test_bad_inputs_and_presets(tiny):
  model, trainable, frozen = tiny
  variables = {"params": models.merge_params(trainable, frozen)}
  with pytest.raises(ValueError, match="multiples of 4"):
    model.apply(variables, jnp.zeros((1, 30, 32, 3)))
  with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
    model.apply(variables, jnp.zeros((1, 3, 32, 32)))
  with pytest.raises(ValueError, match="valid presets"):
    models.build_model("huge")
  with pytest.raises(ValueError, match="valid fields"):
    models.build_model("tiny", widht=8)
  with pytest.raises(ValueError, match="vgg_width_divisor"):
    models.init_params(model, 0, vgg_weights={})


def test_pretrained_vgg_goes_into_frozen():
  torch = pytest.importorskip("torch")
  from backbones_jax import vgg as vgg_lib
  shapes = jax.eval_shape(vgg_lib.VGG(19, taps=("relu5_4",)).init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))["params"]
  sd = {}
  rng = np.random.default_rng(0)
  for key, (name, leaf) in vgg_lib.torchvision_key_table(19).items():
    sd[key] = rng.normal(size=vgg_lib._torch_shape(shapes[name][leaf].shape, leaf)).astype(np.float32)
  frozen = models.load_vgg_prior({"vgg": None}, sd)
  np.testing.assert_array_equal(frozen["vgg"]["conv2_1"]["kernel"], sd["features.5.weight"].transpose(2, 3, 1, 0))
  del torch


def test_params_and_flops_paper_is_dsrnet_l_plus_additions():
  """paper = dsrnet_l + ICA + G: more params and FLOPs than DSRNet-L, by the additions only."""
  paper = models.count_params_and_flops("paper", 224, 224)
  # without ICA and G the paper preset is dsrnet_l (124,602,022 params: the official code's count)
  assert models.build_model("paper", attention=False, hf_blocks=0, g_position="before_heads") == models.build_model("dsrnet_l")
  assert 124_602_022 < paper["trainable_params"] < 1.1 * 124_602_022
  assert paper["gflops"] > 510  # dsrnet_l: 510.8 GFLOPs at 224 with this counter (docs/derefl_model.md)
  assert paper["frozen_params"] == 20_024_384  # VGG19 features, excluded from trainable
  tiny = models.count_params_and_flops("tiny", 64, 64, compile=False)
  assert tiny["trainable_params"] < 100_000
  assert tiny["macs"] == tiny["flops"] / 2
