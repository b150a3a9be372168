"""Statistics and transforms of derefl_jax.synthesis (DSRNet and Zhang et al. 2018 recipes)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats as st
from scipy.signal import convolve2d

from derefl_jax import synthesis


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(0)
    t = rng.random((4, 20, 24, 3)).astype(np.float32)
    r = rng.random((4, 20, 24, 3)).astype(np.float32)
    return t, r


@pytest.fixture(scope="module")
def many_draws():
    """Parameters of 4000 DSRNet draws (tiny images: the statistics do not depend on size)."""
    t = jnp.full((4000, 12, 12, 3), 0.6, jnp.float32)
    out = jax.jit(lambda k: synthesis.synthesize_batch(k, t, t))(jax.random.key(42))
    return {k: np.asarray(v) for k, v in out.items()}


def test_gaussian_kernel_matches_cv2_formula_and_is_normalised():
    for size in (5, 7, 9, 11):
        for sigma in (2.0, 3.3, 5.0):
            k = np.asarray(synthesis.gaussian_kernel_1d(size, sigma, 11))
            live = k[(11 - size) // 2 : (11 + size) // 2]
            np.testing.assert_allclose(live, synthesis.numpy_gaussian_kernel(size, sigma), atol=1e-7)
            assert np.count_nonzero(k) == size
            np.testing.assert_allclose(k.sum(), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="odd"):
        synthesis.gaussian_kernel_1d(5, 2.0, 10)


def test_blur_equals_convolve2d_same(pairs):
    """Zero-padded separable blur == scipy.signal.convolve2d(mode='same') with the 2-D kernel (DSRNet code)."""
    r = pairs[1][0]
    k = synthesis.numpy_gaussian_kernel(9, 2.7)
    got = np.asarray(synthesis.blur(jnp.asarray(r), synthesis.gaussian_kernel_1d(9, 2.7, 11)))
    ref = np.stack([convolve2d(r[..., c], np.outer(k, k), mode="same") for c in range(3)], -1)
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_dsrnet_parameter_statistics(many_draws):
    d = many_draws
    assert d["alpha"].min() >= 0.8 and d["alpha"].max() <= 1.0
    assert d["beta"].min() >= 0.4 and d["beta"].max() <= 1.0
    assert d["sigma"].min() >= 2.0 and d["sigma"].max() <= 5.0
    # uniform: mean and spread close to theory (4000 draws: se ~ 0.005 of the range)
    np.testing.assert_allclose(d["alpha"].mean(), 0.9, atol=0.004)
    np.testing.assert_allclose(d["beta"].mean(), 0.7, atol=0.012)
    np.testing.assert_allclose(d["sigma"].mean(), 3.5, atol=0.06)
    assert 0.67 < d["screen"].mean() < 0.73  # p = 0.7, se 0.007
    sizes, counts = np.unique(d["kernel_size"], return_counts=True)
    assert sizes.tolist() == [5, 7, 9, 11]
    np.testing.assert_allclose(counts / counts.sum(), [0.1, 0.2, 0.3, 0.4], atol=0.025)


def test_dsrnet_blend_formulas(pairs):
    t, r = pairs
    out = jax.jit(synthesis.synthesize_batch)(jax.random.key(3), t, r)
    for i in range(t.shape[0]):
        a, b = float(out["alpha"][i]), float(out["beta"][i])
        rb = np.asarray(out["reflection"][i])
        k = synthesis.numpy_gaussian_kernel(int(out["kernel_size"][i]), float(out["sigma"][i]))
        ref_rb = np.stack([convolve2d(r[i, ..., c], np.outer(k, k), mode="same") for c in range(3)], -1)
        np.testing.assert_allclose(rb, ref_rb, atol=1e-5)  # target: blurred, unscaled R
        np.testing.assert_array_equal(np.asarray(out["transmission"][i]), t[i])  # target: unscaled T
        blended = np.asarray(out["blended"][i])
        if bool(out["screen"][i]):
            np.testing.assert_allclose(blended, a * t[i] + b * rb - a * t[i] * b * rb, atol=1e-5)
        else:
            added = a * t[i] + b * rb
            over = added > 1
            mean_over = np.where(over.sum((0, 1)) > 0, (added * over).sum((0, 1)) / np.maximum(over.sum((0, 1)), 1), 1)
            ref = np.clip(a * t[i] + np.clip(b * rb - (mean_over - 1) * 1.3, 0, 1), 0, 1)
            np.testing.assert_allclose(blended, ref, atol=1e-5)


def test_outputs_in_unit_range_and_both_branches(pairs):
    t, r = pairs
    # bright inputs force the additive branch to overflow
    bright = np.clip(t * 0.3 + 0.7, 0, 1)
    for screen_prob in (0.0, 1.0):
        out = jax.jit(lambda k: synthesis.synthesize_batch(k, bright, bright, screen_prob=screen_prob))(
            jax.random.key(5))
        assert bool(np.all(np.asarray(out["screen"]) == bool(screen_prob)))
        for name in ("blended", "transmission", "reflection"):
            v = np.asarray(out[name])
            assert v.min() >= 0.0 and v.max() <= 1.0 and np.isfinite(v).all(), name
        # a reflection is added: the blend is never darker than alpha * T
        assert np.all(np.asarray(out["blended"]) >= np.asarray(out["alpha"])[:, None, None, None] * bright - 1e-6)


def test_zhang_recipe(pairs):
    t, r = pairs
    out = jax.jit(lambda k: synthesis.synthesize_batch(k, t, r, recipe="zhang"))(jax.random.key(7))
    alpha = np.asarray(out["alpha"])
    assert alpha.min() >= 0.8 and alpha.max() <= 1.0
    sig = np.asarray(out["sigma"])
    grid = np.linspace(1, 5, 80)
    assert np.abs(sig[:, None] - grid[None]).min(axis=1).max() < 1e-5  # sigma from linspace(1, 5, 80)
    np.testing.assert_array_equal(np.asarray(out["kernel_size"]), 2 * np.ceil(2 * sig).astype(int) + 1)
    for name in ("blended", "reflection"):
        v = np.asarray(out[name])
        assert v.min() >= 0.0 and v.max() <= 1.0 + 1e-6
    np.testing.assert_array_equal(np.asarray(out["transmission"]), t)
    # in linear light: blend = R_out + alpha * T (before the final clip)
    lin = np.asarray(out["reflection"]) ** 2.2 + alpha[:, None, None, None] * t**2.2
    np.testing.assert_allclose(np.asarray(out["blended"]), np.clip(lin, 0, 1) ** (1 / 2.2), atol=2e-5)


def test_zhang_vignette_matches_gkern():
    def gkern(kernlen, nsig):  # Zhang et al.'s formula, numpy
        interval = (2 * nsig + 1.0) / kernlen
        x = np.linspace(-nsig - interval / 2.0, nsig + interval / 2.0, kernlen + 1)
        k1 = np.diff(st.norm.cdf(x))
        k = np.sqrt(np.outer(k1, k1))
        return k / k.sum() / (k / k.sum()).max()

    g = gkern(560, 3)
    rows = synthesis._zhang_vignette_profile(jnp.float32(100.0), 50)
    cols = synthesis._zhang_vignette_profile(jnp.float32(237.0), 40)
    np.testing.assert_allclose(np.sqrt(np.outer(rows, cols)), g[100:150, 237:277], atol=1e-4)


def test_jit_vmap_and_determinism(pairs):
    t, r = pairs
    f = jax.jit(lambda k: synthesis.synthesize_batch(k, t, r))
    a, b = f(jax.random.key(9)), f(jax.random.key(9))
    np.testing.assert_array_equal(np.asarray(a["blended"]), np.asarray(b["blended"]))
    c = f(jax.random.key(10))
    assert not np.allclose(np.asarray(a["blended"]), np.asarray(c["blended"]))
    # vmap == per-sample calls with the same keys
    keys = jax.random.split(jax.random.key(9), t.shape[0])
    one = jax.jit(synthesis.dsrnet_synthesis)(keys[2], t[2], r[2])
    np.testing.assert_allclose(np.asarray(a["blended"][2]), np.asarray(one["blended"]), atol=1e-6)


def test_bad_inputs(pairs):
    t, r = pairs
    with pytest.raises(ValueError, match="ONE"):
        synthesis.dsrnet_synthesis(jax.random.key(0), t, r)
    with pytest.raises(ValueError, match="same shape"):
        synthesis.zhang_synthesis(jax.random.key(0), t[0], r[0, :10])
    with pytest.raises(ValueError, match="unknown synthesis recipe"):
        synthesis.synthesize_batch(jax.random.key(0), t, r, recipe="fancy")
    with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
        synthesis.synthesize_batch(jax.random.key(0), t[0], r[0])
