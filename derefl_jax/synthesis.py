"""Synthetic reflection images, written in JAX so training pairs are made on the device.

Two recipes, each a pure function of ``(key, transmission, reflection)`` for ONE
(H, W, 3) image pair in [0, 1]; both are jittable, and ``synthesize_batch`` vmaps
them over a batch with one key per pair.

* ``dsrnet_synthesis`` -- the recipe of DSRNet (Hu & Guo, ICCV 2023), used by DSIT
  and the inter-layer-complementarity paper: the reflection is blurred by a
  Gaussian with kernel size 5/7/9/11 (p = .1/.2/.3/.4) and sigma ~ U(2, 5);
  ``alpha ~ U(0.8, 1)`` scales T and ``beta ~ U(0.4, 1)`` scales R; with p = 0.7
  the layers are screen-blended ``aT + bR - aT*bR``, else added, with an overflow
  correction. Targets are the *unscaled* T and the blurred (unscaled) R.
* ``zhang_synthesis`` -- Zhang, Ng & Chen (CVPR 2018, "Single image reflection
  separation with perceptual losses"): in linear light (gamma 2.2), R blurred with
  sigma from ``linspace(1, 5, 80)`` and kernel ``2 ceil(2 sigma) + 1``; overflow
  correction ``R -= (mean(I[I > 1]) - 1) * (1.08 + U/10)`` per channel; R is
  multiplied by a crop of a 560 x 560 Gaussian vignette (``gkern(560, 3)``) and T by
  ``1 - U/5``; back to sRGB.

Random kernel sizes under jit: every blur uses a fixed maximal odd kernel (11 taps
for DSRNet, 21 for Zhang) whose taps outside the drawn size are zero, normalised
over the live taps, so shapes are static. The Gaussian is separable
(``cv2.getGaussianKernel`` outer product), so it is applied as two 1-D passes of
shifted slices (vmappable with a per-sample kernel).

Choices where the papers' text is silent (config fields, see docs/derefl.md):
* DSRNet border handling: zero padding, as ``scipy.signal.convolve2d(mode='same')``
  in the ERRNet/DSRNet data code (``pad_mode`` switches to reflect). Zhang's
  recipe uses OpenCV's default border (reflect-101 = ``jnp.pad(mode='reflect')``).
* DSRNet additive branch: ``M = clip(aT + R'), R' = clip(bR - (mean(M[M > 1]) - 1) * 1.3)``
  per channel (ERRNet's ``gamma = 1.3`` overflow shift) -- the blend is brightened
  as little as possible while the over-exposed part is pulled back into range.
* Zhang's vignette crop: offsets ~ U{0, 560 - size - 10} as in the code; for sides
  above 550 px the Gaussian profile is continued analytically past 560 px.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "gaussian_kernel_1d",
    "blur",
    "dsrnet_synthesis",
    "zhang_synthesis",
    "synthesize_batch",
    "RECIPES",
]


def gaussian_kernel_1d(size: jax.Array, sigma: jax.Array, max_size: int) -> jax.Array:
    """``cv2.getGaussianKernel(size, sigma)`` centred in ``max_size`` taps, zeros outside: () -> (max_size,).

    ``size`` (odd, <= max_size) may be traced; taps further than ``size // 2`` from
    the centre are zero and the live taps sum to 1.
    """
    if max_size % 2 != 1:
        raise ValueError(f"max_size must be odd, got {max_size}.")
    offsets = jnp.arange(max_size, dtype=jnp.float32) - (max_size - 1) / 2
    g = jnp.exp(-jnp.square(offsets) / (2.0 * jnp.square(sigma)))
    live = jnp.abs(offsets) <= (jnp.asarray(size, jnp.float32) - 1) / 2
    g = jnp.where(live, g, 0.0)
    return g / jnp.sum(g)


def _pad_hw(x: jax.Array, r: int, pad_mode: str) -> jax.Array:
    widths = ((r, r), (r, r), (0, 0))
    if pad_mode == "constant":
        return jnp.pad(x, widths)
    if pad_mode in ("reflect", "edge", "symmetric"):
        return jnp.pad(x, widths, mode=pad_mode)
    raise ValueError(f"pad_mode must be 'constant', 'reflect', 'symmetric' or 'edge', got {pad_mode!r}.")


def blur(image: jax.Array, kernel_1d: jax.Array, *, pad_mode: str = "constant") -> jax.Array:
    """Separable 2-D filtering ('same' size), (H, W, C) x (K,) -> (H, W, C).

    The 2-D kernel is ``outer(kernel_1d, kernel_1d)``; each pass is a sum of K
    shifted slices, so the kernel may differ per vmapped sample.
    """
    k = kernel_1d.shape[0]
    r = k // 2
    h, w = image.shape[0], image.shape[1]
    if pad_mode == "reflect" and r >= min(h, w):
        pad_mode = "symmetric"  # reflect needs more pixels than the radius
    padded = _pad_hw(image, r, pad_mode)
    rows = sum(kernel_1d[i] * padded[i : i + h] for i in range(k))  # (H, W + 2r, C)
    return sum(kernel_1d[j] * rows[:, j : j + w] for j in range(k))


def _check_pair(transmission: jax.Array, reflection: jax.Array, name: str) -> None:
    if transmission.ndim != 3 or reflection.ndim != 3:
        raise ValueError(
            f"{name}: expects ONE (H, W, C) pair (use synthesize_batch or jax.vmap for batches), "
            f"got {transmission.shape} and {reflection.shape}."
        )
    if transmission.shape != reflection.shape:
        raise ValueError(
            f"{name}: transmission and reflection must have the same shape, "
            f"got {transmission.shape} and {reflection.shape}."
        )


def dsrnet_synthesis(
    key: jax.Array,
    transmission: jax.Array,
    reflection: jax.Array,
    *,
    kernel_sizes: Sequence[int] = (5, 7, 9, 11),
    kernel_probs: Sequence[float] = (0.1, 0.2, 0.3, 0.4),
    sigma_range: tuple[float, float] = (2.0, 5.0),
    alpha_range: tuple[float, float] = (0.8, 1.0),
    beta_range: tuple[float, float] = (0.4, 1.0),
    screen_prob: float = 0.7,
    overflow_gamma: float = 1.3,
    pad_mode: str = "constant",
) -> dict[str, jax.Array]:
    """DSRNet recipe, one pair (H, W, C) x2 in [0, 1] -> dict of (H, W, C) and scalars.

    Returns ``blended`` (the input I), ``transmission`` (unscaled T target),
    ``reflection`` (blurred, unscaled R target) and the drawn ``alpha``, ``beta``,
    ``sigma``, ``kernel_size``, ``screen`` (bool) for inspection.
    """
    _check_pair(transmission, reflection, "dsrnet_synthesis")
    if len(kernel_sizes) != len(kernel_probs) or any(k % 2 != 1 for k in kernel_sizes):
        raise ValueError(
            f"kernel_sizes must be odd and match kernel_probs, got {kernel_sizes} / {kernel_probs}."
        )
    t = jnp.asarray(transmission, jnp.float32)
    r = jnp.asarray(reflection, jnp.float32)
    k_size, k_sigma, k_alpha, k_beta, k_screen = jax.random.split(key, 5)
    probs = jnp.asarray(kernel_probs, jnp.float32)
    size = jnp.asarray(kernel_sizes, jnp.int32)[jax.random.choice(k_size, len(kernel_sizes), p=probs / probs.sum())]
    sigma = jax.random.uniform(k_sigma, (), minval=sigma_range[0], maxval=sigma_range[1])
    alpha = jax.random.uniform(k_alpha, (), minval=alpha_range[0], maxval=alpha_range[1])
    beta = jax.random.uniform(k_beta, (), minval=beta_range[0], maxval=beta_range[1])
    screen = jax.random.uniform(k_screen, ()) < screen_prob

    kernel = gaussian_kernel_1d(size, sigma, max(kernel_sizes))
    r_blur = blur(r, kernel, pad_mode=pad_mode)
    at, br = alpha * t, beta * r_blur

    screened = at + br - at * br
    added = at + br
    over = added > 1.0
    n_over = jnp.sum(over, axis=(0, 1))
    mean_over = jnp.sum(jnp.where(over, added, 0.0), axis=(0, 1)) / jnp.maximum(n_over, 1)
    shift = jnp.where(n_over > 0, (mean_over - 1.0) * overflow_gamma, 0.0)
    corrected = jnp.clip(at + jnp.clip(br - shift, 0.0, 1.0), 0.0, 1.0)
    blended = jnp.clip(jnp.where(screen, screened, corrected), 0.0, 1.0)
    return {
        "blended": blended,
        "transmission": t,
        "reflection": r_blur,
        "alpha": alpha,
        "beta": beta,
        "sigma": sigma,
        "kernel_size": size,
        "screen": screen,
    }


_ZHANG_MASK_SIZE = 560
_ZHANG_MASK_NSIG = 3.0


def _zhang_vignette_profile(start: jax.Array, length: int) -> jax.Array:
    """1-D factor of Zhang's ``gkern(560, 3)`` at rows start..start+length-1, over its max."""
    # gkern: x = linspace(-nsig - interval/2, nsig + interval/2, 561), k1d = diff(Phi(x)),
    # mask = sqrt(outer(k1d, k1d)) / max; x[280] = 0 is the peak's left edge.
    interval = (2 * _ZHANG_MASK_NSIG + 1.0) / _ZHANG_MASK_SIZE
    lo = -_ZHANG_MASK_NSIG - interval / 2.0
    step = (2 * _ZHANG_MASK_NSIG + interval) / _ZHANG_MASK_SIZE
    pos = start + jnp.arange(length + 1, dtype=jnp.float32)
    cdf = jax.scipy.stats.norm.cdf(lo + pos * step)
    k1d = cdf[1:] - cdf[:-1]
    peak = jax.scipy.stats.norm.cdf(step) - 0.5
    return k1d / peak


def zhang_synthesis(
    key: jax.Array,
    transmission: jax.Array,
    reflection: jax.Array,
    *,
    sigma_range: tuple[float, float] = (1.0, 5.0),
    num_sigmas: int = 80,
    gamma: float = 2.2,
    vignette: bool = True,
) -> dict[str, jax.Array]:
    """Zhang et al. 2018 recipe, one pair (H, W, C) x2 in [0, 1] -> dict of (H, W, C) and scalars.

    Returns ``blended``, ``transmission`` (T, unchanged), ``reflection`` (the
    blurred, corrected, vignetted R in sRGB) and the drawn ``sigma``,
    ``kernel_size``, ``alpha`` (the factor on T).
    """
    _check_pair(transmission, reflection, "zhang_synthesis")
    t_srgb = jnp.asarray(transmission, jnp.float32)
    t = jnp.power(t_srgb, gamma)
    r = jnp.power(jnp.asarray(reflection, jnp.float32), gamma)
    h, w = t.shape[0], t.shape[1]
    k_sigma, k_att, k_h, k_w, k_alpha = jax.random.split(key, 5)
    sigmas = jnp.linspace(sigma_range[0], sigma_range[1], num_sigmas)
    sigma = sigmas[jax.random.randint(k_sigma, (), 0, num_sigmas)]
    size = 2 * jnp.ceil(2 * sigma).astype(jnp.int32) + 1
    max_size = 2 * int(math.ceil(2 * sigma_range[1])) + 1
    r_blur = blur(r, gaussian_kernel_1d(size, sigma, max_size), pad_mode="reflect")

    blend = r_blur + t
    att = 1.08 + jax.random.uniform(k_att, ()) / 10.0
    over = blend > 1.0
    mean_over = jnp.sum(jnp.where(over, blend, 0.0), axis=(0, 1)) / (jnp.sum(over, axis=(0, 1)) + 1e-6)
    mean_over = jnp.maximum(1.0, mean_over)
    r_blur = jnp.clip(r_blur - (mean_over - 1.0) * att, 0.0, 1.0)

    if vignette:
        off_h = jax.random.randint(k_h, (), 0, max(_ZHANG_MASK_SIZE - h - 10, 1))
        off_w = jax.random.randint(k_w, (), 0, max(_ZHANG_MASK_SIZE - w - 10, 1))
        mask = jnp.sqrt(
            jnp.outer(_zhang_vignette_profile(off_h.astype(jnp.float32), h),
                      _zhang_vignette_profile(off_w.astype(jnp.float32), w))
        )[..., None]
        r_blur = r_blur * mask
    alpha = 1.0 - jax.random.uniform(k_alpha, ()) / 5.0
    blend = r_blur + t * alpha
    inv = 1.0 / gamma
    return {
        "blended": jnp.clip(jnp.power(jnp.maximum(blend, 0.0), inv), 0.0, 1.0),
        "transmission": t_srgb,
        "reflection": jnp.power(r_blur, inv),
        "alpha": alpha,
        "sigma": sigma,
        "kernel_size": size,
    }


RECIPES = {"dsrnet": dsrnet_synthesis, "zhang": zhang_synthesis}


def synthesize_batch(
    key: jax.Array, transmission: jax.Array, reflection: jax.Array, *, recipe: str = "dsrnet", **kwargs
) -> dict[str, jax.Array]:
    """vmapped recipe with one key per pair, (B, H, W, C) x2 -> dict of (B, H, W, C) / (B,)."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown synthesis recipe {recipe!r}; choose one of {sorted(RECIPES)}.")
    transmission = jnp.asarray(transmission)
    reflection = jnp.asarray(reflection)
    if transmission.ndim != 4 or transmission.shape != reflection.shape:
        raise ValueError(
            "synthesize_batch: transmission and reflection must both be (B, H, W, C) with the same shape, "
            f"got {transmission.shape} and {reflection.shape}."
        )
    fn = RECIPES[recipe]
    keys = jax.random.split(key, transmission.shape[0])
    return jax.vmap(lambda k, t, r: fn(k, t, r, **kwargs))(keys, transmission, reflection)


def numpy_gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """Reference ``cv2.getGaussianKernel(size, sigma)`` in numpy (for tests and docs): (size,)."""
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()
