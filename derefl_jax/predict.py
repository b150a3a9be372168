"""Remove reflections from a photo or a folder of photos with a trained checkpoint.

    python -m derefl_jax.predict --checkpoint runs/derefl_demo --input photo.jpg --output out/
    python -m derefl_jax.predict --checkpoint runs/derefl_demo --input photos/ --output out/

For every input ``<stem>.<ext>`` it writes ``<stem>_T.png`` (the transmission: the
photo without the reflection) and ``<stem>_R.png`` (the removed reflection), 8-bit
RGB PNG, at the input's size and orientation.

* Any size: the image is reflect-padded to a multiple of 32 (and at least 32 px),
  run, and cropped back.
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
import warnings
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Predictor", "load_predictor", "find_checkpoint", "pad_to_multiple", "tile_slices", "main"]

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
    import orbax.checkpoint as ocp

    from derefl_jax import models

    state_dir, model_file = find_checkpoint(checkpoint, step)
    spec = json.loads(model_file.read_text())
    fields = dict(spec.get("fields", {}))
    model = models.build_model(spec.get("preset", "tiny"), **fields)
    try:
        restored = _restore_single_device(state_dir.resolve())
    except Exception as e:  # noqa: BLE001 - orbax raises many types
        raise ValueError(f"Could not restore the checkpoint in {state_dir}: {type(e).__name__}: {e}") from None
    if "params" not in restored:
        raise ValueError(f"{state_dir} holds no 'params': not a derefl train state.")
    import jax

    params = jax.device_get(models.merge_params(restored["params"], restored.get("frozen") or {}))
    return Predictor(model, params, **predictor_kwargs)


def _restore_single_device(state_dir: Path) -> dict:
    """Restores a TrainState saved on any device mesh (e.g. 2 CPU devices, 8 TPU cores) onto one device.

    Orbax refuses to restore a sharded checkpoint on another topology without a target, so the
    target is built from the checkpoint's own metadata (shapes, dtypes) with single-device shardings.
    """
    import logging

    import jax
    import orbax.checkpoint as ocp

    device = jax.local_devices()[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    ckptr = ocp.StandardCheckpointer()
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # "metadata file does not exist" notices
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta = ckptr.metadata(state_dir)
            tree = getattr(meta, "item_metadata", meta)
            tree = getattr(tree, "tree", tree)

            def to_target(m):
                if hasattr(m, "shape") and hasattr(m, "dtype"):
                    return jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding)
                return m

            target = jax.tree.map(to_target, tree)
            return ckptr.restore(state_dir, target)
    finally:
        absl_logger.setLevel(level)


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

        _FORWARDS[key] = jax.jit(forward)
    return _FORWARDS[key]


class Predictor:
    """A trained model as a function: (H, W, 3) float image in [0, 1] -> (T, R), each (H, W, 3) in [0, 1]."""

    def __init__(self, model: Any, params: Any, *, max_pixels: int = 4_000_000, tile: int = 512,
                 overlap: int = 64, large: str = "tile", batch: int = 4):
        import jax

        self.model, self.params = model, params
        self.max_pixels, self.tile, self.overlap, self.large, self.batch = max_pixels, tile, overlap, large, batch
        if large not in ("tile", "downscale"):
            raise ValueError(f"large must be 'tile' or 'downscale', got {large!r}.")
        if tile % MULTIPLE or tile < MULTIPLE:
            raise ValueError(f"tile must be a positive multiple of {MULTIPLE}, got {tile}.")
        if not 0 <= overlap < tile // 2:
            raise ValueError(f"overlap must be in [0, tile/2), got {overlap} for tile {tile}.")

        self._forward = make_forward(model)

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t, r = self._forward(self.params, batch.astype(np.float32))
        return np.asarray(t), np.asarray(r)

    def _whole(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        padded, (h, w) = pad_to_multiple(image, MULTIPLE, MULTIPLE)
        t, r = self._run(padded[None])
        return t[0, :h, :w], r[0, :h, :w]

    def _tiled(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        padded, (h, w) = pad_to_multiple(image, MULTIPLE, self.tile)
        ph, pw = padded.shape[:2]
        ys, xs = tile_slices(ph, self.tile, self.overlap), tile_slices(pw, self.tile, self.overlap)
        weight = np.outer(_ramp(self.tile, self.overlap), _ramp(self.tile, self.overlap))[..., None]
        acc_t = np.zeros(padded.shape, np.float32)
        acc_r = np.zeros(padded.shape, np.float32)
        norm = np.zeros(padded.shape[:2] + (1,), np.float32)
        coords = [(y, x) for y in ys for x in xs]
        for i in range(0, len(coords), self.batch):
            chunk = coords[i : i + self.batch]
            tiles = np.stack([padded[y : y + self.tile, x : x + self.tile] for y, x in chunk])
            n = len(chunk)
            if n < self.batch:  # keep one compiled shape
                tiles = np.concatenate([tiles, np.repeat(tiles[-1:], self.batch - n, 0)])
            t, r = self._run(tiles)
            for k, (y, x) in enumerate(chunk):
                acc_t[y : y + self.tile, x : x + self.tile] += t[k] * weight
                acc_r[y : y + self.tile, x : x + self.tile] += r[k] * weight
                norm[y : y + self.tile, x : x + self.tile] += weight
        return (acc_t / norm)[:h, :w], (acc_r / norm)[:h, :w]

    def _downscaled(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from derefl_jax.data import _resize

        h, w = image.shape[:2]
        s = (self.max_pixels / (h * w)) ** 0.5
        sh, sw = max(1, int(h * s)), max(1, int(w * s))
        small = _resize(image.astype(np.float32), (sh, sw))
        t_small, r_small = self._whole(small)
        removed = _resize(small - t_small, (h, w))  # what the network took out, upsampled
        r_full = np.clip(_resize(r_small, (h, w)), 0, 1)
        return np.clip(image - removed, 0, 1), r_full

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
    p.add_argument("--checkpoint", required=True, help="workdir of a train.derefl run (or its checkpoints/<step>)")
    p.add_argument("--input", required=True, help="an image file or a folder of images")
    p.add_argument("--output", required=True, help="folder for <stem>_T.png and <stem>_R.png")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--max-pixels", type=int, default=4_000_000, help="above this, tile or downscale")
    p.add_argument("--large", choices=("tile", "downscale"), default="tile", help="strategy for huge images")
    p.add_argument("--tile", type=int, default=512, help="tile size (multiple of 32)")
    p.add_argument("--overlap", type=int, default=64, help="tile overlap in pixels")
    return p


def main(argv: list[str] | None = None) -> int:
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
    if not folder_mode:  # a bad single file fails before the model loads
        try:
            first = read_image(src, keep_uint8=False)
        except (ImageReadError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        predictor = load_predictor(args.checkpoint, step=args.step, max_pixels=args.max_pixels, tile=args.tile,
                                   overlap=args.overlap, large=args.large)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out_dir = Path(args.output).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = _output_stems(files)
    done, skipped = 0, []
    try:
        from tqdm.auto import tqdm
        it = tqdm(files, desc="derefl", disable=len(files) < 2)
    except ImportError:  # pragma: no cover
        it = files
    for f in it:
        try:
            image = first if not folder_mode else read_image(f, keep_uint8=False)
        except (ImageReadError, FileNotFoundError) as e:
            print(f"warning: skipping {f}: {e}", file=sys.stderr)
            skipped.append(f.name)
            continue
        t, r = predictor(image)
        _to_png(out_dir / f"{stems[f]}_T.png", t)
        _to_png(out_dir / f"{stems[f]}_R.png", r)
        done += 1
    print(f"wrote {done} image pair(s) to {out_dir}" + (f"; skipped {len(skipped)}: {', '.join(skipped)}" if skipped else ""))
    if done == 0:
        print(f"error: no readable image in {src}.", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
