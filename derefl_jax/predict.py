"""Remove reflections from a photo or a folder of photos with a trained checkpoint.

    python -m derefl_jax.predict --checkpoint dsrnet_l_epoch18.pt --input photos/ --output out/
    python -m derefl_jax.predict --checkpoint runs/derefl_demo --input photo.jpg --output out/

``--checkpoint`` is an official DSRNet checkpoint (``dsrnet_l_epoch18.pt``,
``dsrnet_l_4000_epoch33.pt``, ... ; the variant is inferred from the file, torch not needed;
the VGG19 prior comes from ``--vgg_weights`` or torchvision's cache
``$TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth``) or a ``train.derefl`` workdir.

For every input ``<stem>.<ext>`` it writes ``<stem>_T.png`` (the transmission: the
photo without the reflection) and ``<stem>_R.png`` (the removed reflection), plus
``<stem>_RR.png`` for DSRNet (its residual, saved as (RR + 1) / 2 like the official
code), 8-bit RGB PNG, at the input's size and orientation. A progress bar runs over a
folder and the images/s are printed at the end.

* Any size: the image is reflect-padded up to a multiple of ``--bucket`` px (default
  128, at least 32), run, and cropped back: a folder of mixed sizes compiles once per
  size bucket.
* ``--if_align``: DSRNet's official evaluation instead -- PIL resize (default filter)
  so H and W are multiples of 32 (rounded down), no padding; outputs have that size.
* Huge images: above ``--max-pixels`` (default 4 Mpx) the image is processed in
  ``--tile`` x ``--tile`` tiles (default 512) overlapping by ``--overlap`` px (default
  64), blended with linear feathering -- memory stays bounded and the output keeps
  full resolution. ``--large downscale`` instead runs the network on a copy
  downscaled to ``--max-pixels`` and applies the removed reflection, upsampled, to
  the full-resolution photo (``T = I - up(I_small - T_small)``): faster, softer.
* Inputs: PNG/JPEG/BMP/TIFF/WebP/...; 8- or 16-bit; grayscale, palette, RGBA
  (alpha dropped), CMYK; EXIF orientation applied. A folder is read non-recursively;
  files that are not images are skipped with a warning. A single bad file is an
  error (exit status 2).

Checkpoint layout (written by ``python -m train.derefl``; read here with Orbax
directly, without importing ``train``)::

    <workdir>/model.json                     model fields: {"preset": ..., "fields": {...}}
    <workdir>/checkpoints/<step>/state/      Orbax StandardSave of the TrainState:
                                             {step, params (trainable), opt_state, rng,
                                              frozen: {"vgg": VGG19 params}}

``--checkpoint`` may name the workdir, its ``checkpoints`` folder or one ``<step>``
folder; the latest step is used unless ``--step`` is given.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from backbones_jax import host_memory, xla_cpu

__all__ = ["Predictor", "load_predictor", "load_dsrnet_predictor", "align_official", "find_checkpoint",
           "pad_to_multiple", "tile_slices", "main"]

MODEL_FILE = "model.json"
MULTIPLE = 32


# ----------------------------------------------------------------------------- checkpoint
def find_checkpoint(path: str | os.PathLike, step: int | None = None) -> tuple[Path, Path]:
    """-> (state dir ``.../checkpoints/<step>/state``, ``model.json``) for a workdir, checkpoints or step dir."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint path {path} does not exist. Pass the workdir of a "
                                f"`python -m train.derefl` run (it holds {MODEL_FILE} and checkpoints/).")
    candidates = [path, path / "checkpoints"]
    if (path / "state").is_dir():  # a step folder
        step_dir = path
    else:
        step_dir = None
        for c in candidates:
            if c.is_dir():
                steps = sorted(int(p.name) for p in c.iterdir() if p.name.isdigit() and (p / "state").is_dir())
                if steps:
                    if step is not None and step not in steps:
                        raise FileNotFoundError(f"No step {step} in {c}; available steps: {steps}.")
                    step_dir = c / str(step if step is not None else steps[-1])
                    break
        if step_dir is None:
            raise FileNotFoundError(
                f"No checkpoint under {path}: expected <workdir>/checkpoints/<step>/state/ as written by "
                "`python -m train.derefl` (see the layout in `python -m derefl_jax.predict --help`).")
    for d in (step_dir.parent.parent, step_dir.parent, step_dir):
        if (d / MODEL_FILE).is_file():
            return step_dir / "state", d / MODEL_FILE
    raise FileNotFoundError(f"{MODEL_FILE} not found next to the checkpoint {step_dir} (looked in the workdir "
                            f"{step_dir.parent.parent}); it records which model the weights belong to.")


def load_predictor(checkpoint: str | os.PathLike, *, step: int | None = None, **predictor_kwargs) -> "Predictor":
    """Builds the model recorded in ``model.json``, restores its trained params with Orbax -> ``Predictor``.

    ``predictor_kwargs`` go to ``Predictor`` (max_pixels, tile, overlap, large, batch).
    """
    from derefl_jax import models

    state_dir, model_file = find_checkpoint(checkpoint, step)
    spec = json.loads(model_file.read_text())
    fields = dict(spec.get("fields", {}))
    model = models.build_model(spec.get("preset", "tiny"), **fields)
    from backbones_jax.convert import CheckpointFormatError, restore_on_one_device

    try:
        restored = restore_on_one_device(state_dir.resolve())
    except CheckpointFormatError as e:
        raise ValueError(f"Could not restore the checkpoint in {state_dir}: {e}") from None
    if "params" not in restored:
        raise ValueError(f"{state_dir} holds no 'params': not a derefl train state.")
    import jax

    params = jax.device_get(models.merge_params(restored["params"], restored.get("frozen") or {}))
    return Predictor(model, params, **predictor_kwargs)


# ----------------------------------------------------------------------------- geometry helpers
def pad_to_multiple(image: np.ndarray, multiple: int = MULTIPLE, min_size: int = 0) -> tuple[np.ndarray, tuple[int, int]]:
    """Reflect-pads (H, W, C) at the bottom/right to a multiple (and at least min_size): -> (padded, (H, W))."""
    h, w = image.shape[:2]
    nh = max(-(-h // multiple) * multiple, min_size)
    nw = max(-(-w // multiple) * multiple, min_size)
    if (nh, nw) == (h, w):
        return image, (h, w)
    mode = "reflect" if h > 1 and w > 1 else "edge"
    return np.pad(image, ((0, nh - h), (0, nw - w), (0, 0)), mode=mode), (h, w)


def tile_slices(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles covering [0, length) with at least ``overlap`` px shared; the last ends at length."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def _ramp(n: int, overlap: int) -> np.ndarray:
    r = np.ones(n, np.float32)
    if overlap > 0:
        edge = (np.arange(overlap, dtype=np.float32) + 1) / (overlap + 1)
        r[:overlap] = np.minimum(r[:overlap], edge)
        r[-overlap:] = np.minimum(r[-overlap:], edge[::-1])
    return r


# ----------------------------------------------------------------------------- predictor
_FORWARDS: dict[str, Any] = {}


def make_forward(model: Any):
    """jitted ``(params, x (B, H, W, 3)) -> (clip(T), clip(R))``, one per model config (compiles are shared)."""
    import jax
    import jax.numpy as jnp

    key = repr(model)
    if key not in _FORWARDS:
        def forward(params, x):
            out, _ = model.apply({"params": params}, x)
            return jnp.clip(out["T"], 0, 1), jnp.clip(out["R"], 0, 1)

        _FORWARDS[key] = jax.jit(forward, compiler_options=xla_cpu.inference_compiler_options())
    return _FORWARDS[key]


def make_forward_layers(model: Any):
    """jitted ``(params, x) -> {'T', 'R'[, 'RR']}``, raw (unclipped) network outputs; DSRNet adds RR."""
    import jax

    key = "layers:" + repr(model)
    if key not in _FORWARDS:
        def forward(params, x):
            out, _ = model.apply({"params": params}, x)
            return {k: out[k] for k in ("T", "R", "RR") if k in out}

        _FORWARDS[key] = jax.jit(forward, compiler_options=xla_cpu.inference_compiler_options())
    return _FORWARDS[key]


def align_official(image: "Image.Image") -> "Image.Image":
    """DSRNet's ``--if_align``: PIL resize (default filter) so H and W are multiples of 32 (floor; >= 32)."""
    w, h = image.size
    nh, nw = max(h // 32 * 32, 32), max(w // 32 * 32, 32)
    return image.resize((nw, nh)) if (nw, nh) != (w, h) else image


class Predictor:
    """A trained model as a function: (H, W, 3) float image in [0, 1] -> (T, R), each (H, W, 3) in [0, 1].

    ``layers(image)`` returns a dict with 'T', 'R' and, for DSRNet models, 'RR' (raw, in (-1, 1)).
    ``bucket``: inputs are reflect-padded up to a multiple of ``bucket`` px (>= 32, a multiple of
    32), so that photos of similar sizes share one compiled shape. T and R are clipped to [0, 1]
    unless ``raw`` (parity checks).
    """

    def __init__(self, model: Any, params: Any, *, max_pixels: int = 4_000_000, tile: int = 512,
                 overlap: int = 64, large: str = "tile", batch: int = 4, bucket: int = MULTIPLE,
                 raw: bool = False):
        self.model, self.params, self.raw = model, params, raw
        self.max_pixels, self.tile, self.overlap, self.large, self.batch = max_pixels, tile, overlap, large, batch
        self.bucket = bucket
        if large not in ("tile", "downscale"):
            raise ValueError(f"large must be 'tile' or 'downscale', got {large!r}.")
        if tile % MULTIPLE or tile < MULTIPLE:
            raise ValueError(f"tile must be a positive multiple of {MULTIPLE}, got {tile}.")
        if bucket % MULTIPLE or bucket < MULTIPLE:
            raise ValueError(f"bucket must be a positive multiple of {MULTIPLE}, got {bucket}.")
        if not 0 <= overlap < tile // 2:
            raise ValueError(f"overlap must be in [0, tile/2), got {overlap} for tile {tile}.")
        self._forward = make_forward(model)
        self._layers = make_forward_layers(model) if hasattr(model, "lrm_blocks") else None
        self.shapes_seen: set[tuple[int, ...]] = set()

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        new_shape = tuple(batch.shape) not in self.shapes_seen
        self.shapes_seen.add(tuple(batch.shape))
        if self._layers is not None:
            out = {k: np.asarray(v) for k, v in self._layers(self.params, batch.astype(np.float32)).items()}
            if not self.raw:
                out["T"], out["R"] = np.clip(out["T"], 0, 1), np.clip(out["R"], 0, 1)
        else:
            t, r = self._forward(self.params, batch.astype(np.float32))
            out = {"T": np.asarray(t), "R": np.asarray(r)}
        if new_shape:  # after a compile: the compiler's freed heap back to the OS (as train.loop.fit)
            host_memory.release_free_heap()
        return out

    def _whole(self, image: np.ndarray) -> dict[str, np.ndarray]:
        padded, (h, w) = pad_to_multiple(image, self.bucket, MULTIPLE)
        return {k: v[0, :h, :w] for k, v in self._run(padded[None]).items()}

    def _tiled(self, image: np.ndarray) -> dict[str, np.ndarray]:
        padded, (h, w) = pad_to_multiple(image, MULTIPLE, self.tile)
        ph, pw = padded.shape[:2]
        ys, xs = tile_slices(ph, self.tile, self.overlap), tile_slices(pw, self.tile, self.overlap)
        weight = np.outer(_ramp(self.tile, self.overlap), _ramp(self.tile, self.overlap))[..., None]
        acc: dict[str, np.ndarray] = {}
        norm = np.zeros(padded.shape[:2] + (1,), np.float32)
        coords = [(y, x) for y in ys for x in xs]
        for i in range(0, len(coords), self.batch):
            chunk = coords[i : i + self.batch]
            tiles = np.stack([padded[y : y + self.tile, x : x + self.tile] for y, x in chunk])
            n = len(chunk)
            if n < self.batch:  # keep one compiled shape
                tiles = np.concatenate([tiles, np.repeat(tiles[-1:], self.batch - n, 0)])
            out = self._run(tiles)
            for k, (y, x) in enumerate(chunk):
                for name, v in out.items():
                    a = acc.setdefault(name, np.zeros(padded.shape, np.float32))
                    a[y : y + self.tile, x : x + self.tile] += v[k] * weight
                norm[y : y + self.tile, x : x + self.tile] += weight
        return {name: (a / norm)[:h, :w] for name, a in acc.items()}

    def _downscaled(self, image: np.ndarray) -> dict[str, np.ndarray]:
        from derefl_jax.data import _resize

        h, w = image.shape[:2]
        s = (self.max_pixels / (h * w)) ** 0.5
        sh, sw = max(1, int(h * s)), max(1, int(w * s))
        small = _resize(image.astype(np.float32), (sh, sw))
        out_small = self._whole(small)
        removed = _resize(small - out_small["T"], (h, w))  # what the network took out, upsampled
        out = {"T": np.clip(image - removed, 0, 1), "R": np.clip(_resize(out_small["R"], (h, w)), 0, 1)}
        if "RR" in out_small:
            out["RR"] = np.clip(_resize(out_small["RR"], (h, w)), -1, 1)
        return out

    def layers(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """(H, W, 3) image (uint8 or float in [0, 1]) -> {'T', 'R'[, 'RR']}, each (H, W, 3)."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"Predictor expects an (H, W, 3) image, got shape {image.shape}.")
        if image.dtype == np.uint8:
            image = image.astype(np.float32) / 255.0
        image = np.clip(image.astype(np.float32), 0.0, 1.0)
        h, w = image.shape[:2]
        if h * w <= self.max_pixels:
            return self._whole(image)
        return self._tiled(image) if self.large == "tile" else self._downscaled(image)

    def aligned(self, image: "Image.Image") -> dict[str, np.ndarray]:
        """DSRNet's official evaluation (``--if_align``): PIL resize to multiples of 32, one forward, no padding.

        -> {'T', 'R' (clipped to [0, 1] unless ``raw``), 'RR' (raw)} at the aligned size, float32.
        """
        x = np.asarray(align_official(image.convert("RGB")), np.float32) / 255.0
        return {k: v[0] for k, v in self._run(x[None]).items()}

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.layers(image)
        return out["T"], out["R"]


def load_dsrnet_predictor(checkpoint: str | os.PathLike, *, preset: str | None = None, vgg_weights=None,
                          **predictor_kwargs) -> "Predictor":
    """Official DSRNet ``.pt`` / ``.ckpt`` -> ``Predictor`` (variant inferred unless ``preset`` names it)."""
    from derefl_jax import dsrnet_weights, models

    model, trainable, frozen, info = dsrnet_weights.load_dsrnet(checkpoint, preset, vgg_weights=vgg_weights)
    pred = Predictor(model, models.merge_params(trainable, frozen), **predictor_kwargs)
    pred.info = info
    return pred


# ----------------------------------------------------------------------------- CLI
def _to_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray((np.clip(image, 0, 1) * 255.0 + 0.5).astype(np.uint8)).save(path)


def _output_stems(files: list[Path]) -> dict[Path, str]:
    stems: dict[str, int] = {}
    for f in files:
        stems[f.stem] = stems.get(f.stem, 0) + 1
    return {f: (f.stem if stems[f.stem] == 1 else f.name.replace(".", "_")) for f in files}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m derefl_jax.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="an official DSRNet .pt/.ckpt file, or the workdir of a train.derefl run (or its checkpoints/<step>)")
    p.add_argument("--input", required=True, help="an image file or a folder of images")
    p.add_argument("--output", required=True, help="folder for <stem>_T.png, <stem>_R.png (and <stem>_RR.png)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step of a workdir (default: latest)")
    p.add_argument("--preset", default=None, help="DSRNet variant the .pt must be (dsrnet_l, dsrnet_l_nature, "
                   "dsrnet_s); default: inferred from the file")
    p.add_argument("--vgg_weights", default=None, help="torchvision vgg19-dcbb9e9d.pth for the DSRNet prior "
                   "(default: $TORCH_HOME/hub/checkpoints/, TORCH_HOME defaulting to ~/.cache/torch)")
    p.add_argument("--if_align", "--align32", dest="align", action="store_true",
                   help="DSRNet's evaluation pipeline: resize (PIL) so H, W are multiples of 32 and run without "
                        "padding; outputs have the resized size")
    p.add_argument("--bucket", type=int, default=128,
                   help="pad H, W up to a multiple of this (multiple of 32): one compile per size bucket")
    p.add_argument("--max-pixels", type=int, default=4_000_000, help="above this, tile or downscale")
    p.add_argument("--large", choices=("tile", "downscale"), default="tile", help="strategy for huge images")
    p.add_argument("--tile", type=int, default=512, help="tile size (multiple of 32)")
    p.add_argument("--overlap", type=int, default=64, help="tile overlap in pixels")
    return p


def _is_weights_file(path: Path) -> bool:
    """A DSRNet weights file (by suffix, so that a missing X.pt gets the DSRNet download hint)."""
    return not path.is_dir() and path.suffix.lower() in (".pt", ".pth", ".ckpt", ".bin")


def main(argv: list[str] | None = None) -> int:
    import time

    args = _parser().parse_args(argv)
    from derefl_jax.data import ImageReadError, read_image

    src = Path(args.input).expanduser()
    if not src.exists():
        print(f"error: input {src} does not exist.", file=sys.stderr)
        return 2
    folder_mode = src.is_dir()
    files = sorted(p for p in src.iterdir() if p.is_file() and not p.name.startswith(".")) if folder_mode else [src]
    if folder_mode and not files:
        print(f"error: folder {src} holds no files.", file=sys.stderr)
        return 2

    def read(f: Path):
        if args.align:  # the official pipeline reads with PIL and converts to RGB
            from PIL import Image, UnidentifiedImageError
            try:
                with Image.open(f) as im:
                    return im.convert("RGB")
            except (UnidentifiedImageError, OSError) as e:
                raise ImageReadError(f"{f} is not a readable image ({e}).") from None
        return read_image(f, keep_uint8=False)

    if not folder_mode:  # a bad single file fails before the model loads
        try:
            first = read(src)
        except (ImageReadError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    kwargs = dict(max_pixels=args.max_pixels, tile=args.tile, overlap=args.overlap, large=args.large,
                  bucket=args.bucket)
    ckpt = Path(args.checkpoint).expanduser()
    try:
        if _is_weights_file(ckpt):
            predictor = load_dsrnet_predictor(ckpt, preset=args.preset, vgg_weights=args.vgg_weights, **kwargs)
            info = predictor.info
            print(f"loaded {ckpt.name}: DSRNet variant {info['variant']} ({info['format']}"
                  + (f", epoch {info['epoch']}" if info.get("epoch") is not None else "") + ")", file=sys.stderr)
        else:
            if args.preset or args.vgg_weights:
                raise ValueError("--preset / --vgg_weights apply to a DSRNet .pt checkpoint; a train.derefl "
                                 "workdir records its own model and VGG weights.")
            predictor = load_predictor(ckpt, step=args.step, **kwargs)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out_dir = Path(args.output).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = _output_stems(files)
    done, skipped = 0, []
    try:
        from tqdm.auto import tqdm
        it = tqdm(files, desc="derefl", unit="img", disable=len(files) < 2)
    except ImportError:  # pragma: no cover
        it = files
    t0 = time.perf_counter()
    for f in it:
        try:
            image = first if not folder_mode else read(f)
        except (ImageReadError, FileNotFoundError) as e:
            print(f"warning: skipping {f}: {e}", file=sys.stderr)
            skipped.append(f.name)
            continue
        out = predictor.aligned(image) if args.align else predictor.layers(image)
        _to_png(out_dir / f"{stems[f]}_T.png", out["T"])
        _to_png(out_dir / f"{stems[f]}_R.png", out["R"])
        if "RR" in out:  # DSRNet's residual, shown as the official code saves it: (RR + 1) / 2
            _to_png(out_dir / f"{stems[f]}_RR.png", (out["RR"] + 1.0) / 2.0)
        done += 1
    seconds = time.perf_counter() - t0
    rate = f"; {done / seconds:.2f} images/s ({seconds:.1f} s, {len(predictor.shapes_seen)} compiled shape(s))" if done else ""
    print(f"wrote {done} image set(s) to {out_dir}" + rate
          + (f"; skipped {len(skipped)}: {', '.join(skipped)}" if skipped else ""))
    if done == 0:
        print(f"error: no readable image in {src}.", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
