"""AlphaCLIP features of multi-view instances, sharded over devices, cached on disk; official buffers.

* :func:`make_view_encoder` jits ``(params, images (B, V, H, W, 3), alphas (B, V, H, W, 1)) ->
  (B, V, D)`` once, with the batch sharded over a 1-D ``data`` mesh (``NamedSharding``) and the
  parameters replicated; :func:`encode_views` pads ``N`` to a multiple of the device count and runs
  it in ONE call.
* :func:`extract_features` renders the views of many instances (``data.instance_inputs``, host
  threads; ``load_image=`` takes the decoded images from elsewhere, e.g. prepared tfds records via
  ``tfds_builder.image_loader``, the views still rendered here), encodes fixed-size batches with
  the jitted encoder (host work for the next batch overlaps the device work of the current one),
  shows tqdm progress, and caches the result as
  ``<cache_dir>/<dataset>__<backbone>__<split>__<hash>.npz`` with a ``.json`` key next to it (the
  key covers the view preprocessing version, so features of older views are never served).
* :func:`load_official_features` reads the official MVREC feature buffers (torch pickles of a list
  of ``{'y', 'mvrec': fp16 (27, 3, 768)}``) with ``backbones_jax.torch_pickle`` (no torch needed).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from mvrec_jax import data as data_lib
from mvrec_jax import views as views_lib

__all__ = [
    "DATA_AXIS", "FeatureSet", "ViewEncoder", "OfficialFeatures", "make_mesh", "make_view_encoder", "encode_views",
    "alpha_clip_encode_fn", "instance_views", "extract_features", "cache_key", "load_official_features",
    "find_official_buffers", "official_categories",
]

DATA_AXIS = "data"
# 2: the key also names the view preprocessing (views.PREPROCESSING_VERSION); entries written by
# version 1 (float bbox centre, BILINEAR masks, PIL polygons) never match a version-2 key.
CACHE_VERSION = 2

# encode_fn(params, images (M, H, W, 3), alphas (M, H, W, 1)) -> (M, D)
EncodeFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """1-D mesh with axis ``data`` over ``devices`` (default: all devices)."""
  devices = list(jax.devices() if devices is None else devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def make_view_encoder(encode_fn: EncodeFn, mesh: Mesh | None = None):
  """Jitted ``(params, images (B, V, H, W, 3), alphas (B, V, H, W, 1)) -> (B, V, D)`` float32.

  The ``B`` axis is sharded over the mesh axis ``data`` (``B`` must be a multiple of the number of
  devices; :func:`encode_views` pads), ``params`` are replicated; all ``B * V`` views go through
  ``encode_fn`` as one batch.
  """
  return _cached_encoder(encode_fn, make_mesh() if mesh is None else mesh)


@functools.lru_cache(maxsize=32)
def _cached_encoder(encode_fn: EncodeFn, mesh: Mesh) -> "ViewEncoder":
  """One jitted encoder per (encode_fn, mesh): repeated extractions (train, valid) compile once."""
  batch = NamedSharding(mesh, P(DATA_AXIS))
  repl = NamedSharding(mesh, P())

  def fn(params, images, alphas):
    b, v = images.shape[:2]
    feats = encode_fn(params, images.reshape((b * v,) + images.shape[2:]),
                      alphas.reshape((b * v,) + alphas.shape[2:]))
    return feats.reshape(b, v, -1).astype(jnp.float32)

  return ViewEncoder(jax.jit(fn, in_shardings=(repl, batch, batch), out_shardings=batch), mesh)


@dataclasses.dataclass(frozen=True)
class ViewEncoder:
  """A jitted multi-view encoder and the mesh its batch axis is sharded over."""
  fn: Callable
  mesh: Mesh

  def __call__(self, params, images, alphas) -> jax.Array:
    return self.fn(params, images, alphas)


def _pad(x: np.ndarray, n: int) -> np.ndarray:
  if len(x) == n:
    return x
  return np.concatenate([x, np.zeros((n - len(x),) + x.shape[1:], x.dtype)])


def encode_views(encoder, params, images: np.ndarray, alphas: np.ndarray) -> np.ndarray:
  """All views of ``N`` instances in one jitted call: ``(N, V, H, W, 3)``, ``(N, V, H, W, 1)`` -> ``(N, V, D)``.

  ``encoder`` comes from :func:`make_view_encoder`; ``N`` is zero-padded to a multiple of the
  mesh's device count and the padding is dropped from the result.
  """
  images, alphas = np.asarray(images), np.asarray(alphas)
  if images.ndim != 5 or images.shape[-1] != 3:
    raise ValueError(f"images must be (N, V, H, W, 3), got {images.shape}.")
  if alphas.shape != images.shape[:-1] + (1,):
    raise ValueError(f"alphas must be (N, V, H, W, 1) matching images {images.shape}, got {alphas.shape}.")
  n = len(images)
  ndev = encoder.mesh.devices.size
  padded = -(-n // ndev) * ndev
  out = encoder(params, _pad(images, padded), _pad(alphas, padded))
  return np.asarray(out)[:n]


@functools.lru_cache(maxsize=8)
def alpha_clip_encode_fn(model) -> EncodeFn:
  """``encode_fn`` for an AlphaCLIP ``model`` (``backbones_jax.alpha_clip.encode_image``: CLS after ln_post and proj).

  The same function object is returned for the same model, so the jitted encoder is reused.
  """
  from backbones_jax import alpha_clip  # pylint: disable=import-outside-toplevel

  def fn(params, images, alphas):
    return alpha_clip.encode_image(model, params, images, alphas)

  return fn


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureSet:
  """Features ``(N, V, D)`` of a list of instances, their labels ``(N,)`` and instance keys."""
  features: np.ndarray
  labels: np.ndarray
  keys: tuple[str, ...]
  from_cache: bool = False


def _slug(s: str) -> str:
  return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-")[:80] or "x"


def cache_key(instances: Sequence[data_lib.Instance], *, dataset: str, backbone: str, method: str,
              crop_sizes: Sequence[float], resize: Sequence[int], split: str = "") -> dict:
  """The JSON key a cache entry must match (instances enter as a sha256 of their keys and bboxes).

  It names the view preprocessing (``views.PREPROCESSING_VERSION``), so features computed from
  views of another preprocessing version are never served, and it enters the file name's digest.
  """
  h = hashlib.sha256()
  for inst in instances:
    h.update(f"{inst.key}|{tuple(inst.bbox)}|{inst.polygon.tobytes().hex()[:64]}\n".encode())
  return dict(version=CACHE_VERSION, views=views_lib.PREPROCESSING_VERSION, dataset=dataset, split=split,
              backbone=backbone, method=method,
              crop_sizes=[float(s) for s in crop_sizes], resize=[int(s) for s in resize],
              num_instances=len(instances), instances_sha256=h.hexdigest())


def _cache_paths(cache_dir: Path, key: dict) -> tuple[Path, Path]:
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
  stem = f"{_slug(key['dataset'])}__{_slug(key['backbone'])}__{_slug(key['split'] or 'all')}__{digest}"
  return cache_dir / f"{stem}.npz", cache_dir / f"{stem}.json"


def instance_views(inst: data_lib.Instance, *, method: str = "mso",
                   crop_sizes: Sequence[float] = views_lib.OFFICIAL_CROP_SIZES,
                   resize: Sequence[int] = views_lib.OFFICIAL_RESIZE,
                   load_image: Callable[[data_lib.Instance], Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """``(V, S, S, 3)`` image and ``(V, S, S, 1)`` alpha views of one instance, as ``data.instance_inputs``.

  ``load_image(inst)`` returns the instance's decoded PIL image (modes as ``data.load_image``);
  ``None`` reads ``inst.image_path`` (``data.instance_inputs``). The views are always rendered by
  ``views.instance_views``, so they follow ``views.PREPROCESSING_VERSION`` whatever the image source.
  """
  if load_image is None:
    return data_lib.instance_inputs(inst, method=method, crop_sizes=crop_sizes, resize=resize)
  return data_lib.views_of_image(inst, load_image(inst), what=f"the image of instance {inst.key}", method=method,
                                 crop_sizes=crop_sizes, resize=resize)


def extract_features(encode_fn: EncodeFn, params, instances: Sequence[data_lib.Instance], *,
                     dataset: str, backbone: str, split: str = "", method: str = "mso",
                     crop_sizes: Sequence[float] = views_lib.OFFICIAL_CROP_SIZES,
                     resize: Sequence[int] = views_lib.OFFICIAL_RESIZE, batch_size: int | None = None,
                     mesh: Mesh | None = None, cache_dir: str | os.PathLike | None = None,
                     num_threads: int | None = None, progress: bool = True,
                     load_image: Callable[[data_lib.Instance], Any] | None = None) -> FeatureSet:
  """Multi-view features ``(N, V, D)`` float32 of ``instances`` (images from disk or ``load_image``), cached.

  ``encode_fn(params, images (M, H, W, 3), alphas (M, H, W, 1)) -> (M, D)``, e.g.
  :func:`alpha_clip_encode_fn`. ``dataset``/``backbone`` name the cache entry (use the checkpoint
  file name or preset for ``backbone``: the parameters themselves are not hashed). ``batch_size``
  (instances per jitted call, default one per device) is rounded up to a multiple of the device
  count; every call has the same shape so the encoder compiles once. Views are rendered by
  ``num_threads`` host threads (default: CPU count, at most 8; PIL releases the GIL).
  ``load_image(inst) -> PIL image`` supplies the decoded images instead of ``inst.image_path``
  (e.g. ``tfds_builder.image_loader(data_dir, category)`` for prepared tfds records); it must return
  the same image the file would give. The views are rendered here either way (:func:`instance_views`),
  so the cache key -- instance keys, bboxes, polygons, view recipe and ``views.PREPROCESSING_VERSION``
  -- means the same for both sources, and an entry computed from one is served to the other.
  Single-process: on multi-host runs call it per host on that host's share of the instances.
  """
  if not instances:
    raise ValueError("No instances to encode.")
  labels = np.asarray([i.label for i in instances], np.int64)
  keys = tuple(i.key for i in instances)
  key = cache_key(instances, dataset=dataset, backbone=backbone, method=method, crop_sizes=crop_sizes,
                  resize=resize, split=split)
  npz_path = json_path = None
  if cache_dir is not None:
    npz_path, json_path = _cache_paths(Path(cache_dir).expanduser(), key)
    if npz_path.is_file() and json_path.is_file():
      try:
        stored = json.loads(json_path.read_text())
        with np.load(npz_path) as z:
          feats, stored_labels = z["features"], z["labels"]
        if stored == key and len(feats) == len(instances) and np.array_equal(stored_labels, labels):
          return FeatureSet(features=feats, labels=labels, keys=keys, from_cache=True)
      except (OSError, ValueError, KeyError, json.JSONDecodeError):
        pass  # unreadable entry: recompute and overwrite it

  encoder = make_view_encoder(encode_fn, mesh)
  ndev = encoder.mesh.devices.size
  bs = ndev if batch_size is None else max(1, int(batch_size))
  bs = -(-bs // ndev) * ndev
  repl_params = jax.device_put(params, NamedSharding(encoder.mesh, P()))

  def render(inst):
    return instance_views(inst, method=method, crop_sizes=crop_sizes, resize=resize, load_image=load_image)

  chunks = [list(instances[i:i + bs]) for i in range(0, len(instances), bs)]
  outputs: list[np.ndarray] = []
  pending = None  # (device result, count) of the previous batch, fetched after the next dispatch
  bar = tqdm(total=len(instances), desc=f"features {dataset}/{split or 'all'}", unit="inst",
             disable=not progress)
  threads = min(8, os.cpu_count() or 1) if num_threads is None else max(1, int(num_threads))
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    for chunk in chunks:
      rendered = list(pool.map(render, chunk))
      imgs = np.stack([r[0] for r in rendered])
      alps = np.stack([r[1] for r in rendered])
      result = encoder(repl_params, _pad(imgs, bs), _pad(alps, bs))
      if pending is not None:
        outputs.append(np.asarray(pending[0])[:pending[1]])
        bar.update(pending[1])
      pending = (result, len(chunk))
    outputs.append(np.asarray(pending[0])[:pending[1]])
    bar.update(pending[1])
  bar.close()
  feats = np.concatenate(outputs).astype(np.float32)
  if npz_path is not None:
    npz_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = npz_path.with_suffix(".tmp.npz")
    np.savez(tmp, features=feats, labels=labels)
    os.replace(tmp, npz_path)
    json_path.write_text(json.dumps(key, indent=1, sort_keys=True))
  return FeatureSet(features=feats, labels=labels, keys=keys, from_cache=False)


# ------------------------------------------------------------------------------- official buffers
@dataclasses.dataclass(frozen=True, eq=False)
class OfficialFeatures:
  """Official MVREC buffer: ``features`` fp16 ``(N, 27, 3, 768)`` (or CLS only ``(N, 27, 768)``), ``labels`` ``(N,)``."""
  features: np.ndarray
  labels: np.ndarray
  path: str


def load_official_features(path: str | os.PathLike, *, cls_only: bool = False) -> OfficialFeatures:
  """Reads an official ``*.pt`` feature buffer without torch (token 0 of ``mvrec`` is the CLS feature)."""
  from backbones_jax import torch_pickle  # pylint: disable=import-outside-toplevel

  path = Path(path).expanduser()
  if not path.is_file():
    raise FileNotFoundError(
        f"Official MVREC feature buffer {path} is missing. The official code writes them to "
        "buffer/mso/AlphaClip_ViT-L/14_<data_name>_{support,query}.pt (github ShuaiLYU/MVREC).")
  try:
    obj = torch_pickle.load_torch_file(path)
  except torch_pickle.TorchFileError as e:
    raise torch_pickle.TorchFileError(f"{path} is not a readable MVREC feature buffer: {e}") from None
  if not isinstance(obj, (list, tuple)) or not obj:
    raise ValueError(f"{path}: expected a non-empty list of {{'y', 'mvrec'}} dicts, got {type(obj).__name__}.")
  feats, labels = [], []
  for i, item in enumerate(obj):
    if not isinstance(item, dict) or "mvrec" not in item or "y" not in item:
      keys = sorted(item) if isinstance(item, dict) else type(item).__name__
      raise ValueError(f"{path}: item {i} should be a dict with 'y' and 'mvrec', got {keys}.")
    f = np.asarray(item["mvrec"])
    if f.ndim == 2:  # (views, dim): CLS only
      f = f[:, None]
    if f.ndim != 3:
      raise ValueError(f"{path}: item {i} 'mvrec' has shape {f.shape}; expected (views, tokens, dim).")
    feats.append(f)
    labels.append(int(np.asarray(item["y"]).reshape(())))
  shapes = {f.shape for f in feats}
  if len(shapes) != 1:
    raise ValueError(f"{path}: items have different feature shapes {sorted(shapes)}.")
  features = np.stack(feats)
  if cls_only:
    features = np.ascontiguousarray(features[:, :, 0])
  return OfficialFeatures(features=features, labels=np.asarray(labels, np.int64), path=str(path))


def find_official_buffers(directory: str | os.PathLike, category: str) -> tuple[Path, Path]:
  """``(support, query)`` buffer paths of a category in ``directory``.

  Accepted names: ``<category>_{support,query}.pt``, ``<data_name>_{support,query}.pt`` and the
  official ``14_<data_name>_...`` (also under ``mso/AlphaClip_ViT-L/`` or ``AlphaClip_ViT-L/``),
  with ``data_name`` from ``data.OFFICIAL_DATA_NAMES`` (e.g. ``mvtec_pill``) or ``mvtec_<category>_data``.
  """
  d = Path(directory).expanduser()
  if not d.is_dir():
    raise FileNotFoundError(f"Feature buffer directory {d} does not exist.")
  names = {category, data_lib.OFFICIAL_DATA_NAMES.get(category, f"mvtec_{category}_data"),
           f"mvtec_{category}_data", f"mvtec_{category}"}
  subdirs = [d, d / "AlphaClip_ViT-L", d / "mso" / "AlphaClip_ViT-L"]
  found = []
  for role in ("support", "query"):
    cands = [s / f"{pre}{n}_{role}.pt" for s in subdirs for n in sorted(names) for pre in ("", "14_")]
    hit = next((c for c in cands if c.is_file()), None)
    if hit is None:
      raise FileNotFoundError(f"No {role} buffer for {category!r} in {d}; looked for e.g. "
                              f"{cands[0].name}, {cands[1].name}, {cands[-1].relative_to(d)}.")
    found.append(hit)
  return found[0], found[1]


def official_categories(directory: str | os.PathLike) -> list[str]:
  """MVTec-FS categories that have both a support and a query buffer in ``directory``."""
  out = []
  for cat in data_lib.MVTEC_FS_CATEGORIES:
    try:
      find_official_buffers(directory, cat)
    except FileNotFoundError:
      continue
    out.append(cat)
  return out
