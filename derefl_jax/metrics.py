"""PSNR and SSIM under the reflection-removal papers' protocol, batched in JAX.

The DSRNet / DSIT / inter-layer-complementarity papers evaluate with ERRNet's
``quality_assess``: both images are resized so that H and W are multiples of 32,
the prediction is clipped to [0, 1], both are scaled by 255 (float, no rounding),
and PSNR / SSIM are computed per RGB channel with scikit-image
(``peak_signal_noise_ratio(data_range=255)`` and
``structural_similarity(data_range=255)`` with its defaults: 7x7 uniform window,
``use_sample_covariance=True``, ``K1=0.01``, ``K2=0.03``, mean of the SSIM map
over the region that excludes a 3-pixel border). Values are averaged over
channels, then over images.

Inputs. Channels-last images (NHWC or HWC, 1 or 3 channels) as floats in [0, 1]; uint8 and
uint16 images are converted by dividing by 255 / 65535 (so uint8 and the same image /255 give the
same number). Refused with a ValueError: channel-first arrays, other channel counts, NaN/inf,
other integer dtypes, and a float target outside [-0.5, 1.5] (an image in [0, 255] passed as
float, which would otherwise give about -43 dB).

Numerics. scikit-image computes SSIM in float64 as ``E[x^2] - E[x]^2``. In
float32 that difference loses ~1e-2 (in 255 units) to cancellation, which is
large next to ``C2 = 58.5``. Here the local (co)variances are computed from
centred values, ``mean_q (x_q - mu_p)(y_q - mu_p')`` over the 49 window taps,
which is exact up to ~1e-7 relative in float32. So the float32 result matches
scikit-image's float64 one to ~1e-6 (see tests/derefl/test_metrics.py); with
``jax_enable_x64`` on, the same code runs in float64 and matches to ~1e-12.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "psnr",
    "ssim",
    "psnr_ssim",
    "resize_to_multiple",
    "DATA_RANGE",
    "WIN_SIZE",
]

DATA_RANGE = 255.0
WIN_SIZE = 7
K1 = 0.01
K2 = 0.03


def _compute_dtype():
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


_UINT_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def _as_unit_float(x, what: str, name: str):
    """uint8 / uint16 -> float in [0, 1] (divided by 255 / 65535); other integer or bool dtypes are refused."""
    x = x if isinstance(x, jax.Array) else np.asarray(x)
    dt = np.dtype(x.dtype)
    if dt in _UINT_SCALE:
        return jnp.asarray(x).astype(_compute_dtype()) / _UINT_SCALE[dt]
    if not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(
            f"{name}: {what} has dtype {dt}; pass float images in [0, 1] (or uint8 / uint16 images, "
            f"which are divided by 255 / 65535)."
        )
    return jnp.asarray(x).astype(_compute_dtype())


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _prepare(pred, target, name: str):
    """Validates dtypes, layout and values, adds a batch axis to HWC input, clips pred, scales by 255.

    Refused (ValueError) rather than silently wrong: channel-first layouts, a channel count other
    than 1 or 3, NaN/inf in either image, integer dtypes other than uint8/uint16, and a float
    target outside [-0.5, 1.5] (an image in [0, 255] passed as float). uint8 / uint16 inputs are
    converted to [0, 1] by their full range.
    """
    pred_shape, target_shape = np.shape(pred), np.shape(target)
    if pred_shape != target_shape:
        raise ValueError(
            f"{name}: pred and target must have the same shape, got {pred_shape} and {target_shape}."
        )
    shape = pred_shape
    if len(shape) not in (3, 4):
        raise ValueError(
            f"{name}: expected NHWC (or HWC) images in [0, 1], got shape {shape}."
        )
    if shape[-1] not in (1, 3):
        cf = shape[-3] in (1, 3)
        raise ValueError(
            f"{name}: expected channels-last NHWC (or HWC) images with 1 or 3 channels, got shape {shape}"
            + (f"; this looks channel-first: transpose it, e.g. x.transpose(0, 2, 3, 1)." if cf else ".")
        )
    pred = _as_unit_float(pred, "pred", name)
    target = _as_unit_float(target, "target", name)
    if _is_concrete(pred) and _is_concrete(target):
        for what, x in (("pred", pred), ("target", target)):
            bad = int(jnp.sum(~jnp.isfinite(x)))
            if bad:
                raise ValueError(f"{name}: {what} has {bad} NaN/inf values; metrics of such images are meaningless.")
        lo, hi = float(jnp.min(target)), float(jnp.max(target))
        if lo < -0.5 or hi > 1.5:
            raise ValueError(
                f"{name}: target values span [{lo:g}, {hi:g}]; expected float images in [0, 1] "
                f"(divide images in [0, 255] by 255, or pass them as uint8)."
            )
    if pred.ndim == 3:
        pred, target = pred[None], target[None]
    pred = jnp.clip(pred, 0.0, 1.0) * DATA_RANGE
    target = target * DATA_RANGE
    return pred, target


def _reduce(per_image: jax.Array, reduction: str) -> jax.Array:
    if reduction == "mean":
        return jnp.mean(per_image)
    if reduction == "none":
        return per_image
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}.")


@jax.jit
def _psnr_per_image(x: jax.Array, y: jax.Array) -> jax.Array:
    mse = jnp.mean(jnp.square(x - y), axis=(1, 2))  # (B, C)
    return jnp.mean(10.0 * jnp.log10(DATA_RANGE**2 / mse), axis=-1)


def psnr(pred, target, *, reduction: str = "mean") -> jax.Array:
    """PSNR in dB, (B, H, W, C) x2 in [0, 1] (or uint8) -> () (or (B,) with reduction='none').

    Per channel ``10 log10(255^2 / MSE)`` on ``clip(pred) * 255`` vs ``target * 255``,
    averaged over channels, then images. A channel with MSE = 0 gives +inf, as in
    scikit-image.
    """
    x, y = _prepare(pred, target, "psnr")
    return _reduce(_psnr_per_image(x, y), reduction)


def _window_stats(x: jax.Array, y: jax.Array, win: int):
    """Local means and sample (co)variances over every valid win x win window.

    x, y: (B, H, W, C) -> five arrays (B, H-win+1, W-win+1, C).
    """
    ho, wo = x.shape[1] - win + 1, x.shape[2] - win + 1
    n = win * win
    # Centre each image-channel on its global mean so the window sums carry
    # small magnitudes; the means are added back for the luminance term.
    mx = jnp.mean(x, axis=(1, 2), keepdims=True)
    my = jnp.mean(y, axis=(1, 2), keepdims=True)
    xc, yc = x - mx, y - my

    def taps(a):
        for i in range(win):
            for j in range(win):
                yield a[:, i : i + ho, j : j + wo, :]

    sx = sum(taps(xc)) / n
    sy = sum(taps(yc)) / n
    vx = vy = vxy = 0.0
    for tx, ty in zip(taps(xc), taps(yc)):
        dx, dy = tx - sx, ty - sy
        vx = vx + dx * dx
        vy = vy + dy * dy
        vxy = vxy + dx * dy
    cov_norm = 1.0 / (n - 1)  # sample covariance: sum / (N - 1)
    return sx + mx, sy + my, vx * cov_norm, vy * cov_norm, vxy * cov_norm


@jax.jit
def _ssim_per_image(x: jax.Array, y: jax.Array) -> jax.Array:
    ux, uy, vx, vy, vxy = _window_stats(x, y, WIN_SIZE)
    c1 = (K1 * DATA_RANGE) ** 2
    c2 = (K2 * DATA_RANGE) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return jnp.mean(jnp.mean(s, axis=(1, 2)), axis=-1)  # channels, then the image


def ssim(pred, target, *, reduction: str = "mean") -> jax.Array:
    """Mean SSIM, (B, H, W, C) x2 in [0, 1] (or uint8) -> () (or (B,) with reduction='none').

    scikit-image ``structural_similarity(data_range=255)`` semantics per channel
    (7x7 uniform window, sample covariance, K1=0.01, K2=0.03, 3-pixel border
    excluded), averaged over channels, then images.
    """
    x, y = _prepare(pred, target, "ssim")
    if min(x.shape[1], x.shape[2]) < WIN_SIZE:
        raise ValueError(
            f"ssim: images must be at least {WIN_SIZE}x{WIN_SIZE} pixels, got {x.shape[1]}x{x.shape[2]}."
        )
    return _reduce(_ssim_per_image(x, y), reduction)


def psnr_ssim(pred, target, *, reduction: str = "mean") -> tuple[jax.Array, jax.Array]:
    """Both metrics: (B, H, W, C) x2 -> (psnr, ssim)."""
    return psnr(pred, target, reduction=reduction), ssim(pred, target, reduction=reduction)


def resize_to_multiple(image: np.ndarray, multiple: int = 32) -> np.ndarray:
    """Evaluation resize, (H, W, C) -> (H//m*m, W//m*m, C), as DSRNet's ``align``.

    DSRNet/ERRNet resize both the blended input and the ground truth with PIL's
    default (bicubic) filter to the largest multiple of 32 not above the size,
    before the network and the metrics. uint8 input is resized exactly like
    that (PIL RGB/L bicubic, uint8 out); float input is resized per channel in
    PIL's float mode (no rounding) and returned as float32. An image already at
    a multiple is returned unchanged.
    """
    from PIL import Image

    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"resize_to_multiple: expected an (H, W[, C]) image, got shape {image.shape}.")
    h, w = image.shape[:2]
    nh, nw = h // multiple * multiple, w // multiple * multiple
    if nh == 0 or nw == 0:
        raise ValueError(
            f"resize_to_multiple: image {h}x{w} is smaller than {multiple} pixels on a side; "
            f"it cannot be resized down to a multiple of {multiple}."
        )
    if (nh, nw) == (h, w):
        return image
    if image.dtype == np.uint8 and (image.ndim == 2 or image.shape[2] in (1, 3)):
        squeeze = image.ndim == 3 and image.shape[2] == 1
        pil = Image.fromarray(image[..., 0] if squeeze else image)
        out = np.asarray(pil.resize((nw, nh), Image.Resampling.BICUBIC))
        return out[..., None] if squeeze else out
    chans = image[..., None] if image.ndim == 2 else image
    out = np.stack(
        [
            np.asarray(
                Image.fromarray(np.ascontiguousarray(chans[..., c], dtype=np.float32)).resize(
                    (nw, nh), Image.Resampling.BICUBIC
                )
            )
            for c in range(chans.shape[-1])
        ],
        axis=-1,
    )
    return out[..., 0] if image.ndim == 2 else out
