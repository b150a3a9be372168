"""derefl_jax.metrics against scikit-image's per-channel computation (the papers' protocol)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from derefl_jax import metrics


def reference(pred, target):
    """ERRNet/DSRNet quality_assess: clip, x255 float64, per channel skimage, mean channels then images."""
    pred = np.clip(np.asarray(pred, np.float64), 0, 1) * 255.0
    target = np.asarray(target, np.float64) * 255.0
    ps, ss = [], []
    for p, t in zip(pred, target):
        ps.append(np.mean([peak_signal_noise_ratio(t[..., c], p[..., c], data_range=255) for c in range(3)]))
        ss.append(np.mean([structural_similarity(t[..., c], p[..., c], data_range=255) for c in range(3)]))
    return np.array(ps), np.array(ss)


def _natural_pairs():
    a = skdata.astronaut()[40:241, 100:313] / 255.0  # 201 x 213, odd
    c = skdata.coffee()[0:201, 50:263] / 255.0
    ch = skdata.chelsea()[10:211, 20:233] / 255.0
    target = np.stack([a, c, ch])
    pred = np.stack([0.75 * a + 0.35 * c, np.clip(c * 1.1 - 0.02, 0, 1), 0.9 * ch + 0.1 * a])
    return pred, target


CASES = {
    "random_odd": lambda rng: (lambda t: (t + 0.15 * rng.standard_normal(t.shape), t))(rng.random((3, 37, 53, 3))),
    "random_tiny": lambda rng: (lambda t: (t + 0.05 * rng.standard_normal(t.shape), t))(rng.random((2, 7, 9, 3))),
    "natural_odd": lambda rng: _natural_pairs(),
    "near_flat": lambda rng: (np.full((1, 41, 39, 3), 0.5) + 1e-3 * rng.standard_normal((1, 41, 39, 3)),
                              np.full((1, 41, 39, 3), 0.5)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_skimage_float32(case):
    pred, target = CASES[case](np.random.default_rng(0))
    ref_p, ref_s = reference(pred, target)
    got_p = np.asarray(metrics.psnr(pred.astype(np.float32), target.astype(np.float32), reduction="none"))
    got_s = np.asarray(metrics.ssim(pred.astype(np.float32), target.astype(np.float32), reduction="none"))
    # float32 inputs lose ~3e-8 relative before any arithmetic: compare against float32-rounded inputs.
    ref_p32, ref_s32 = reference(pred.astype(np.float32), target.astype(np.float32))
    np.testing.assert_allclose(got_p, ref_p32, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got_s, ref_s32, atol=1e-5, rtol=0)
    np.testing.assert_allclose(float(metrics.psnr(pred, target)), ref_p.mean(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(float(metrics.ssim(pred, target)), ref_s.mean(), atol=1e-5, rtol=0)


def test_matches_skimage_float64_with_x64():
    pred, target = _natural_pairs()
    ref_p, ref_s = reference(pred, target)
    with jax.enable_x64(True):
        got_p = np.asarray(metrics.psnr(pred, target, reduction="none"))
        got_s = np.asarray(metrics.ssim(pred, target, reduction="none"))
    assert got_p.dtype == np.float64
    np.testing.assert_allclose(got_p, ref_p, atol=1e-9, rtol=0)
    np.testing.assert_allclose(got_s, ref_s, atol=1e-9, rtol=0)


def test_clips_prediction_not_target():
    rng = np.random.default_rng(1)
    target = rng.random((1, 16, 16, 3))
    pred = target.copy()
    pred[0, :4] = 1.7  # out of range, clipped to 1
    ref_p, ref_s = reference(pred, target)
    np.testing.assert_allclose(float(metrics.psnr(pred, target)), ref_p[0], atol=1e-4)
    np.testing.assert_allclose(float(metrics.ssim(pred, target)), ref_s[0], atol=1e-5)


def test_identical_images():
    x = np.random.default_rng(2).random((2, 12, 10, 3))
    assert float(metrics.ssim(x, x)) == pytest.approx(1.0, abs=1e-6)
    assert np.isinf(float(metrics.psnr(x, x)))


def test_hwc_input_jit_and_vmap():
    pred, target = CASES["random_odd"](np.random.default_rng(3))
    batched = metrics.ssim(pred, target, reduction="none")
    single = metrics.ssim(pred[1], target[1])
    np.testing.assert_allclose(float(single), float(batched[1]), atol=1e-7)
    jitted = jax.jit(lambda p, t: metrics.psnr_ssim(p, t))(jnp.asarray(pred), jnp.asarray(target))
    np.testing.assert_allclose(float(jitted[1]), float(batched.mean()), atol=1e-7)
    vm = jax.vmap(lambda p, t: metrics.psnr(p, t))(jnp.asarray(pred), jnp.asarray(target))
    np.testing.assert_allclose(np.asarray(vm), np.asarray(metrics.psnr(pred, target, reduction="none")), atol=1e-5)


def test_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        metrics.psnr(np.zeros((1, 8, 8, 3)), np.zeros((1, 8, 9, 3)))
    with pytest.raises(ValueError, match="NHWC"):
        metrics.ssim(np.zeros((8, 8)), np.zeros((8, 8)))
    with pytest.raises(ValueError, match="at least 7x7"):
        metrics.ssim(np.zeros((1, 6, 8, 3)), np.zeros((1, 6, 8, 3)))
    with pytest.raises(ValueError, match="reduction"):
        metrics.psnr(np.zeros((1, 8, 8, 3)), np.ones((1, 8, 8, 3)), reduction="sum")


def test_resize_to_multiple():
    img = skdata.astronaut()[:101, :77]
    out = metrics.resize_to_multiple(img)
    assert out.shape == (96, 64, 3) and out.dtype == np.uint8
    expected = np.asarray(Image.fromarray(img).resize((64, 96), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(out, expected)
    f = metrics.resize_to_multiple(img / 255.0)
    assert f.shape == (96, 64, 3) and f.dtype == np.float32
    # same filter; PIL rounds uint8 after each of its two separable passes
    assert np.abs(np.clip(f * 255, 0, 255) - out).max() < 2.0
    same = skdata.astronaut()[:64, :96]
    assert metrics.resize_to_multiple(same) is same
    with pytest.raises(ValueError, match="smaller than 32"):
        metrics.resize_to_multiple(np.zeros((20, 40, 3), np.uint8))


def test_uint8_images_are_converted_not_misread():
    """uint8 input is divided by 255: the same number as the [0, 1] floats (not about -43 dB)."""
    rng = np.random.default_rng(3)
    target = rng.integers(0, 256, (2, 20, 24, 3), dtype=np.uint8)
    pred = np.clip(target.astype(np.int16) + rng.integers(-6, 7, target.shape), 0, 255).astype(np.uint8)
    want_p = float(metrics.psnr(pred / 255.0, target / 255.0))
    want_s = float(metrics.ssim(pred / 255.0, target / 255.0))
    assert want_p > 30
    assert float(metrics.psnr(pred, target)) == pytest.approx(want_p, abs=1e-4)
    assert float(metrics.ssim(pred, target)) == pytest.approx(want_s, abs=1e-6)
    assert float(metrics.psnr(pred / 255.0, target)) == pytest.approx(want_p, abs=1e-4)  # mixed dtypes
    ref_p, ref_s = reference(pred / 255.0, target / 255.0)
    assert float(metrics.psnr(pred, target)) == pytest.approx(ref_p.mean(), abs=1e-4)
    with pytest.raises(ValueError, match=r"target values span \[0, 255\].*divide"):
        metrics.psnr(pred.astype(np.float32), target.astype(np.float32))
    with pytest.raises(ValueError, match="dtype int32"):
        metrics.ssim(pred.astype(np.int32), target.astype(np.int32))


def test_channel_first_nan_and_bad_shapes_are_refused():
    x = np.random.default_rng(4).random((2, 3, 16, 16)).astype(np.float32)
    with pytest.raises(ValueError, match="channel-first"):
        metrics.psnr(x, x)
    with pytest.raises(ValueError, match="channel-first"):
        metrics.ssim(x[0], x[0])
    with pytest.raises(ValueError, match="1 or 3 channels"):
        metrics.psnr(np.zeros((4, 16, 16)), np.zeros((4, 16, 16)))  # a grayscale batch without C
    y = np.moveaxis(x, 1, -1).copy()
    y[0, 3, 3, 1] = np.nan
    with pytest.raises(ValueError, match="pred has 1 NaN/inf"):
        metrics.psnr(y, np.moveaxis(x, 1, -1))
    with pytest.raises(ValueError, match="target has 1 NaN/inf"):
        metrics.ssim(np.moveaxis(x, 1, -1), y)


def test_metrics_still_work_under_jit():
    rng = np.random.default_rng(5)
    t = rng.random((1, 12, 12, 3)).astype(np.float32)
    p = np.clip(t + 0.05 * rng.standard_normal(t.shape), 0, 1).astype(np.float32)
    jitted = jax.jit(lambda a, b: metrics.psnr(a, b))
    assert float(jitted(p, t)) == pytest.approx(float(metrics.psnr(p, t)), abs=1e-4)
