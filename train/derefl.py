"""Reflection removal end to end: train the inter-layer-complementarity network, evaluate, report.

    python -m train.derefl                                   # demo preset, offline, a few CPU minutes
    python -m train.derefl --config=train/configs/derefl.py:paper \
        --config.data.root=/data/reflection --config.vgg_weights=/weights/vgg19-dcbb9e9d.pth

The run

1. builds the model (``derefl_jax.models``; preset and overrides in ``config.model``) and its
   frozen VGG19 (torchvision weights from ``config.vgg_weights``; random for the demo);
2. trains with ``train.loop.fit``: each host batch holds raw T/R layers (synthetic rows) or real
   (I, T) pairs; the reflection recipe (``derefl_jax.synthesis``) runs inside the jitted step with
   the step's key, so data are a pure function of (seed, step) and resumes are exact;
3. evaluates on the test sets under the papers' protocol (resize to multiples of 32, clip,
   x255, per-channel PSNR/SSIM, ``derefl_jax.metrics``) for the model and for the identity
   baseline (the input itself), prints the table, writes ``results.json`` and image grids
   ``grids/<set>.png`` (input | T̂ | R̂ | ground-truth T).

Workdir layout (read by ``derefl_jax.predict`` with Orbax, without importing ``train``)::

    <workdir>/config.json                 the resolved config
    <workdir>/model.json                  {"preset": ..., "fields": {...}}: rebuilds the model
    <workdir>/checkpoints/<step>/state/   TrainState: step, params (trainable), opt_state, rng,
                                          frozen = {"vgg": VGG19 params}
    <workdir>/metrics.jsonl, tensorboard/ training logs
    <workdir>/results.json, grids/*.png   evaluation

Rerunning with the same ``--workdir`` resumes from the latest checkpoint; ``--config.num_steps``
equal to the checkpoint's step only evaluates.
"""
from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from derefl_jax import data as data_lib
from derefl_jax import demo_data, losses, metrics, models, synthesis
from derefl_jax import predict as predict_lib
from train import cli, parallel
from train.checkpoint import Checkpointer
from train.loop import fit
from train.metric_writer import progress, save_json
from train.state import TrainState, compile_train_step

DEFAULT_CONFIG = str(Path(__file__).resolve().parent / "configs" / "derefl.py") + ":demo"
MODEL_FILE = "model.json"


# ------------------------------------------------------------------------------------------- model
# The paper's additions over DSRNet-L as switches (``config.variant``): each field's first value is the
# paper's reading (arXiv 2505.12641v1), the second today's deliberate alternative (reasons in
# docs/derefl_model.md "Paper switches"); None = leave the preset as it is. middle_blocks: 12 (DSRNet-L,
# which the paper builds on) | 8 (the earlier `paper` layout).
VARIANT_CHOICES: dict[str, tuple[Any, Any]] = {
    "g_position": ("after_heads", "before_heads"),
    "freq_target": ("prediction", "ground_truth"),
    "r_pixel_mask": (False, True),
    "prior": ("feature_pyramid", "current"),
    "middle_blocks": (12, 8),
    "rotation_aug": (True, False),
    "keep": ("best_val", "last"),
}
_PRIOR_FIELDS = {"feature_pyramid": {"stem": "vgg_pyramid", "prior_normalize": False},
                 "current": {"stem": "conv", "prior_normalize": True}}


def variant(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """``config.variant`` with the unset (None) switches dropped; values checked against VARIANT_CHOICES."""
  v = config.get("variant")
  out = {k: val for k, val in (v.to_dict() if v is not None else {}).items() if val is not None}
  for k, val in out.items():
    if k not in VARIANT_CHOICES:
      raise ValueError(f"unknown config.variant.{k}; valid: {sorted(VARIANT_CHOICES)}.")
    if k == "middle_blocks":
      if int(val) < 0:
        raise ValueError(f"config.variant.middle_blocks must be >= 0, got {val}.")
    elif val not in VARIANT_CHOICES[k]:
      raise ValueError(f"config.variant.{k} must be one of {list(VARIANT_CHOICES[k])}, got {val!r}.")
  return out


def model_spec(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{"preset", "fields"}: the model preset and the non-None field overrides of ``config.model``
  (``config.variant``'s g_position / prior / middle_blocks first, explicit ``config.model.*`` win)."""
  v = variant(config)
  fields: dict[str, Any] = {}
  if "g_position" in v:
    fields["g_position"] = v["g_position"]
  if "prior" in v:
    fields.update(_PRIOR_FIELDS[v["prior"]])
  if "middle_blocks" in v:
    fields["middle_blocks"] = int(v["middle_blocks"])
  fields.update({k: val for k, val in config.model.to_dict().items() if k != "preset" and val is not None})
  for k in ("enc_blocks", "dec_blocks", "lrm_blocks"):
    if k in fields:
      fields[k] = list(fields[k]) if isinstance(fields[k], (list, tuple)) else [int(fields[k])]
  return {"preset": config.model.preset, "fields": fields}


def build(config: ml_collections.ConfigDict) -> models.ReflectionRemovalNet:
  spec = model_spec(config)
  return models.build_model(spec["preset"], **spec["fields"])


def _check_paper_inputs(config: ml_collections.ConfigDict, model: models.ReflectionRemovalNet) -> None:
  """Clear errors for the files a non-demo run needs, before anything is compiled."""
  if config.data.source == "demo":
    return
  if not config.data.root:
    raise FileNotFoundError(
        "This preset trains on the reflection-removal datasets: pass --config.data.root=DIR with the layout\n"
        f"{data_lib.LAYOUT}\nor run the offline demo: python -m train.derefl")
  if not Path(config.data.root).is_dir():
    raise FileNotFoundError(f"--config.data.root={config.data.root} is not a directory. Expected layout:\n"
                            f"{data_lib.LAYOUT}")
  vgg_weights_path(config, model)


def vgg_weights_path(config: ml_collections.ConfigDict, model: models.ReflectionRemovalNet) -> str | None:
  """VGG19 weights for the prior / perceptual loss: config.vgg_weights, else torchvision's cache
  ($TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth) for runs that need a real VGG; None = random (demo)."""
  from derefl_jax import dsrnet_weights
  needs_real = config.data.source != "demo" or model.stem == "vgg_pyramid"
  needs_vgg = model.use_prior or float(config.loss.vgg) > 0
  if config.vgg_weights or (needs_vgg and needs_real):
    return str(dsrnet_weights.resolve_vgg_weights(config.vgg_weights or None, flag="--config.vgg_weights"))
  return None


def load_init_from(path: str, model: models.ReflectionRemovalNet, trainable: Mapping[str, Any]
                   ) -> tuple[dict, list[str], list[str], dict]:
  """Trainable params initialised from a DSRNet .pt/.ckpt -> (params, loaded, fresh, file info).

  A DSRNet preset of the file's variant loads strictly (every tensor, named errors otherwise); any
  other model (e.g. ``paper``) takes every tensor whose path and shape match, the rest stays fresh.
  """
  from derefl_jax import dsrnet_weights
  sd, meta = dsrnet_weights.read_state_dict(path)
  variant, fields = dsrnet_weights.infer_variant(sd)
  reference = models.ReflectionRemovalNet(**fields, dtype=model.dtype)
  info = dict(meta, variant=variant)
  if reference == model:
    params = dsrnet_weights.convert_state_dict(sd, model, source=path)
    params = jax.tree.map(lambda v, t: jnp.asarray(v, t.dtype), params, dict(trainable))
    names = ["/".join(str(getattr(k, "key", k)) for k in p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    return params, names, [], info
  params, loaded, fresh = dsrnet_weights.init_from_state_dict(sd, reference, trainable)
  if not loaded:
    raise dsrnet_weights.CheckpointError(
        f"--init_from {path}: no tensor of this {variant} DSRNet matches the model ({config_name(model)}) in "
        "path and shape; use a dsrnet_* model preset or a model of matching width.")
  return params, loaded, fresh, info


def config_name(model: models.ReflectionRemovalNet) -> str:
  return f"width {model.width}, stem {model.stem}, enc {tuple(model.enc_blocks)}"


def _summarise(paths: list[str]) -> str:
  """'enc0_0 (16), mid_0 (16), ...': tensors per top-level module."""
  counts: dict[str, int] = {}
  for p in paths:
    top = p.split("/")[0]
    counts[top] = counts.get(top, 0) + 1
  return ", ".join(f"{k} ({v})" for k, v in counts.items())


def zero_init_head(trainable: Mapping[str, Any]) -> dict:
  """Zeroes the shared output conv ('ending'): T = I (t_residual) and R_low = 0 at step 0.

  The network then starts exactly at the identity baseline and training only has to improve on
  it; with a random head the first hundreds of steps go to undoing the head's noise.
  """
  if "ending" not in trainable:
    raise ValueError("zero_init_head: the model has no 'ending' conv; set --config.zero_init_head=false.")
  out = dict(trainable)
  out["ending"] = jax.tree.map(jnp.zeros_like, trainable["ending"])
  return out


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  o = config.optim
  if o.schedule == "cosine":
    lr = optax.warmup_cosine_decay_schedule(0.0, o.lr, max(1, o.warmup_steps), max(o.warmup_steps + 1, config.num_steps),
                                            end_value=o.lr * 0.01)
  elif o.schedule == "constant":
    lr = optax.join_schedules([optax.linear_schedule(0.0, o.lr, o.warmup_steps), optax.constant_schedule(o.lr)],
                              [o.warmup_steps]) if o.warmup_steps else o.lr
  else:
    raise ValueError(f"optim.schedule must be 'constant' or 'cosine', got {o.schedule!r}.")
  adam = optax.adamw(lr, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay) if o.weight_decay else optax.adam(lr, b1=o.b1, b2=o.b2)
  return optax.chain(optax.clip_by_global_norm(o.grad_clip), adam) if o.grad_clip else adam


# ------------------------------------------------------------------------------------------- step
def _synthesis_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
  s = config.synthesis
  clean = {"clean_prob": float(s.get("clean_prob", 0.0))}
  if variant(config).get("rotation_aug"):
    clean["rotation_aug"] = True
  if s.recipe == "dsrnet":
    return {"recipe": "dsrnet", "pad_mode": s.pad_mode, "screen_prob": float(s.screen_prob), **clean}
  if s.recipe == "zhang":
    return {"recipe": "zhang", **clean}
  raise ValueError(f"synthesis.recipe must be 'dsrnet' or 'zhang', got {s.recipe!r}.")


def rotate_batch(rng: jax.Array, *images: jax.Array) -> tuple[jax.Array, ...]:
  """Each sample of (B, H, H, C) batches rotated by the same random angle in all of them: with
  probability 1/2 by one of 90/180/270 degrees, else not (DSRNet's paired_data_transforms)."""
  if images[0].shape[1] != images[0].shape[2]:
    raise ValueError(f"rotation augmentation needs square crops, got {images[0].shape[1:3]}.")
  k_rot, k_angle = jax.random.split(rng)
  n = images[0].shape[0]
  k = jnp.where(jax.random.bernoulli(k_rot, 0.5, (n,)), jax.random.randint(k_angle, (n,), 1, 4), 0)[:, None, None, None]

  def rot(x):
    r = [jnp.rot90(x, i, axes=(1, 2)) for i in range(4)]
    return jnp.where(k == 0, r[0], jnp.where(k == 1, r[1], jnp.where(k == 2, r[2], r[3])))
  return tuple(rot(x) for x in images)


def make_inputs(batch: Mapping[str, jax.Array], rng: jax.Array, syn_kwargs: Mapping[str, Any]
                ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Host batch -> (I, T, R, has_R): synthetic rows mixed on the device, real rows passed through.

  ``clean_prob`` in ``syn_kwargs``: that share of the synthetic rows gets no reflection (I = T,
  R = 0), so the model also learns to leave a clean photo alone (see docs/derefl.md, demo).
  ``rotation_aug``: every pair rotated by a random multiple of 90 degrees (config.variant).
  """
  syn_kwargs = dict(syn_kwargs)
  clean_prob = float(syn_kwargs.pop("clean_prob", 0.0))
  rotation = bool(syn_kwargs.pop("rotation_aug", False))
  key_syn, key_clean = jax.random.split(rng)
  syn = synthesis.synthesize_batch(key_syn if clean_prob else rng, batch["t"], batch["r"], **syn_kwargs)
  blended, reflection = syn["blended"], syn["reflection"]
  if clean_prob:
    clean = jax.random.bernoulli(key_clean, clean_prob, (batch["t"].shape[0],))[:, None, None, None]
    blended = jnp.where(clean, batch["t"], blended)
    reflection = jnp.where(clean, jnp.zeros_like(reflection), reflection)
  m = batch["synthetic"][:, None, None, None]
  inputs = jnp.where(m, blended, batch["blended"])
  target_r = jnp.where(m, reflection, batch["r"])
  target_t = batch["t"]
  if rotation:
    inputs, target_t, target_r = rotate_batch(jax.random.fold_in(rng, 90), inputs, target_t, target_r)
  return inputs, target_t, target_r, batch["synthetic"].astype(jnp.float32)


def train_step(state: TrainState, batch: Mapping[str, jax.Array], rng: jax.Array, *,
               model: models.ReflectionRemovalNet, loss_config: Mapping[str, Any], vgg_apply,
               syn_kwargs: Mapping[str, Any], r_pixel_mask: bool = True) -> tuple[TrainState, dict[str, jax.Array]]:
  """One Adam step on a batch: synthesis on the device, forward, ``losses.total_loss``, update.

  ``r_pixel_mask``: the R pixel loss only on synthetic rows (real pairs' R = clip(I - T) is not a
  clean layer); False = on every row (the paper's reading).
  """
  syn_key, _ = jax.random.split(rng)
  inputs, target_t, target_r, has_r = make_inputs(batch, syn_key, syn_kwargs)
  vgg_params = state.frozen.get("vgg") if vgg_apply is not None else None

  def loss_fn(params):
    out, _ = model.apply({"params": models.merge_params(params, state.frozen)}, inputs)
    loss, terms = losses.total_loss(out=out, inputs=inputs, target_t=target_t, target_r=target_r,
                                    r_mask=has_r if r_pixel_mask else None,
                                    residual=out.get("RR"),  # DSRNet: recons = L1(T + R + RR, I)
                                    vgg_apply=vgg_apply, vgg_params=vgg_params, config=loss_config)
    return loss, (terms, out["T"])

  (_, (terms, pred_t)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads)
  mse = jnp.mean(jnp.square(jnp.clip(pred_t, 0, 1) - target_t))
  mse_id = jnp.mean(jnp.square(inputs - target_t))
  terms = dict(terms)
  terms["train_psnr_T"] = 10.0 * jnp.log10(1.0 / jnp.maximum(mse, 1e-10))
  terms["train_psnr_identity"] = 10.0 * jnp.log10(1.0 / jnp.maximum(mse_id, 1e-10))
  terms["grad_norm"] = optax.tree.norm(grads)
  return state, terms


# ------------------------------------------------------------------------------------------- eval
def _pad32(x: np.ndarray, mult: int) -> tuple[np.ndarray, tuple[int, int]]:
  h, w = x.shape[1:3]
  ph, pw = -h % mult, -w % mult
  if ph or pw:
    x = np.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="reflect")
  return x, (h, w)


def evaluate_arrays(fwd, params, inputs: np.ndarray, target_t: np.ndarray, *, batch_size: int, mult: int
                    ) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
  """Same-size arrays (N, H, W, 3) -> ({psnr, ssim, identity_psnr, identity_ssim}, T̂, R̂)."""
  ts, rs = [], []
  for i in range(0, len(inputs), batch_size):
    chunk = inputs[i:i + batch_size]
    n = len(chunk)
    if n < batch_size:  # one compiled shape
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, 0)])
    padded, (h, w) = _pad32(chunk, mult)
    t, r = fwd(params, padded)
    ts.append(np.asarray(t)[:n, :h, :w])
    rs.append(np.asarray(r)[:n, :h, :w])
  pred_t, pred_r = np.concatenate(ts), np.concatenate(rs)
  res = {"psnr": float(metrics.psnr(pred_t, target_t)), "ssim": float(metrics.ssim(pred_t, target_t)),
         "identity_psnr": float(metrics.psnr(inputs, target_t)), "identity_ssim": float(metrics.ssim(inputs, target_t)),
         "num_images": int(len(inputs))}
  return res, pred_t, pred_r


def evaluate_folder(fwd, params, folder: data_lib.PairedFolder, *, mult: int, keep: int
                    ) -> tuple[dict[str, float], list[tuple[np.ndarray, ...]]]:
  """A test set of varied sizes, image by image (each aligned to 32 px as in the papers)."""
  p, s, ip, iss = [], [], [], []
  kept = []
  for i in progress(len(folder), desc=f"eval {folder.name}"):
    pair = folder.load(i, multiple=32)
    x, gt = pair["input"][None], pair["T"][None]
    padded, (h, w) = _pad32(x, mult)
    t, r = fwd(params, padded)
    t, r = np.asarray(t)[:, :h, :w], np.asarray(r)[:, :h, :w]
    p.append(float(metrics.psnr(t, gt))); s.append(float(metrics.ssim(t, gt)))
    ip.append(float(metrics.psnr(x, gt))); iss.append(float(metrics.ssim(x, gt)))
    if len(kept) < keep:
      kept.append((x[0], t[0], r[0], gt[0]))
  res = {"psnr": float(np.mean(p)), "ssim": float(np.mean(s)), "identity_psnr": float(np.mean(ip)),
         "identity_ssim": float(np.mean(iss)), "num_images": len(folder)}
  return res, kept


def save_grid(path: str, rows: list[tuple[np.ndarray, ...]], title: str) -> None:
  """PNG grid, one row per sample: input | T̂ | R̂ | ground-truth T."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  if not rows:
    return
  cols = ("input", "T (pred)", "R (pred)", "T (ground truth)")
  fig, axes = plt.subplots(len(rows), 4, figsize=(4 * 2.4, len(rows) * 2.4), squeeze=False)
  for i, row in enumerate(rows):
    for j, img in enumerate(row):
      ax = axes[i, j]
      ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
      ax.set_xticks([]); ax.set_yticks([])
      if i == 0:
        ax.set_title(cols[j], fontsize=9)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)


def format_table(results: Mapping[str, Mapping[str, float]]) -> str:
  lines = [f"{'test set':<12} {'n':>5}  {'PSNR':>7} {'SSIM':>7}   {'identity PSNR':>13} {'SSIM':>7}",
           "-" * 60]
  for name, r in results.items():
    lines.append(f"{name:<12} {r['num_images']:>5}  {r['psnr']:>7.2f} {r['ssim']:>7.4f}   "
                 f"{r['identity_psnr']:>13.2f} {r['identity_ssim']:>7.4f}")
  return "\n".join(lines)


# ------------------------------------------------------------------------------------------- main
def _ensure_prepared(config: ml_collections.ConfigDict, needed: list[str]) -> None:
  """Prepares the tfds configs in ``data.data_dir`` that are missing, from ``data.root`` (docs/data.md)."""
  from derefl_jax import tfds_builder  # pylint: disable=import-outside-toplevel
  d = config.data
  missing = [c for c in needed if not tfds_builder.is_prepared(d.data_dir, c)]
  if missing and d.root:
    print(f"data: preparing {missing} in {d.data_dir} from {d.root} (once)", flush=True)
    tfds_builder.prepare(d.root, d.data_dir, configs=missing)


def _prepared_sampler(config: ml_collections.ConfigDict, mesh) -> Any:
  """`data_lib.TrainSampler` over the prepared tfds datasets in ``data.data_dir`` (the same batches)."""
  from derefl_jax import tfds_builder  # pylint: disable=import-outside-toplevel
  d = config.data
  real = [n for n, w in (("real", d.weights_real), ("nature", d.weights_nature)) if w > 0]
  _ensure_prepared(config, (["voc2012"] if d.weights_synthetic > 0 else []) + (["train_pairs"] if real else []))
  weights = {k: w for k, w in (("synthetic", d.weights_synthetic), ("real", d.weights_real),
                               ("nature", d.weights_nature)) if w > 0}
  local_bs = parallel.local_batch_size(config.data.batch_size, mesh)
  return tfds_builder.PreparedTrainSampler(
      data_dir=d.data_dir, use_voc=d.weights_synthetic > 0, real=real, weights=weights, batch_size=local_bs,
      crop=d.crop, scale_range=(d.scale_min, d.scale_max), seed=config.seed, process_index=jax.process_index(),
      num_workers=d.num_workers)


def _test_folders(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The test sets: prepared tfds datasets when ``data.data_dir`` is set, else the raw folders."""
  names = list(config.data.test_sets)
  if config.data.get("data_dir"):
    from derefl_jax import tfds_builder  # pylint: disable=import-outside-toplevel
    _ensure_prepared(config, sorted({tfds_builder.TEST_SPLITS[n][0] for n in names if n in tfds_builder.TEST_SPLITS}))
    return tfds_builder.test_sets(config.data.data_dir, names)
  return data_lib.test_sets(config.data.root, names)


def _batch_fn(config: ml_collections.ConfigDict, mesh) -> Any:
  d = config.data
  if d.source == "demo":
    local_bs = parallel.local_batch_size(config.data.batch_size, mesh)
    return demo_data.DemoSampler(batch_size=local_bs, crop=d.crop, pool_size=d.pool_size, seed=config.seed,
                                 process_index=jax.process_index())
  if d.source != "files":
    raise ValueError(f"data.source must be 'demo' or 'files', got {d.source!r}.")
  if d.get("data_dir"):
    return _prepared_sampler(config, mesh)
  root = Path(d.root)
  voc, real = [], []
  weights = {}
  if d.weights_synthetic > 0:
    voc = data_lib.voc_images(root)
    weights["synthetic"] = d.weights_synthetic
  for name, w in (("real", d.weights_real), ("nature", d.weights_nature)):
    if w > 0:
      real.append(data_lib.paired_folder(root / "train" / name, name=name))
      weights[name] = w
  local_bs = parallel.local_batch_size(config.data.batch_size, mesh)  # after the layout checks
  return data_lib.TrainSampler(voc=voc, real=real, weights=weights, batch_size=local_bs, crop=d.crop,
                               scale_range=(d.scale_min, d.scale_max), seed=config.seed,
                               process_index=jax.process_index(), num_workers=d.num_workers)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes), evaluates, writes results; returns the results dict."""
  t_start = time.time()
  model = build(config)
  _check_paper_inputs(config, model)
  var = variant(config)
  loss_config = {k: v for k, v in config.loss.to_dict().items()}
  if "freq_target" in var:
    loss_config["freq_target"] = var["freq_target"]
  syn_kwargs = _synthesis_kwargs(config)
  mesh = parallel.make_mesh()
  batch_fn = _batch_fn(config, mesh)  # file layout errors surface here, before compiling
  if config.data.source == "files":
    test_folders = _test_folders(config)
  vgg_path = vgg_weights_path(config, model)
  trainable, frozen = models.init_params(model, int(config.seed), vgg_weights=vgg_path)
  if config.zero_init_head and not config.init_from:
    trainable = zero_init_head(trainable)
  if config.init_from:  # released DSRNet weights (a resumed run restores its own checkpoint over these)
    trainable, loaded, fresh, info = load_init_from(config.init_from, model, trainable)
    print(f"init_from {config.init_from} ({info['variant']} DSRNet, {info['format']}): loaded {len(loaded)} "
          f"tensors: {_summarise(loaded)}")
    print(f"initialised fresh ({len(fresh)} tensors): " + (", ".join(fresh) if fresh else "none"))
  # model.json only once the config, the model and its weights are known to be good (atomic write).
  if parallel.is_main_process():
    from train import config_lib
    config_lib.write_json_atomic(os.path.join(workdir, MODEL_FILE), model_spec(config), indent=2)
  n_params = models.param_count(trainable)
  print(f"model preset {config.model.preset}: {n_params:,} trainable parameters, "
        f"{models.param_count(frozen):,} frozen (VGG19{' random' if not vgg_path else ''}); "
        f"{len(mesh.devices.flat)} device(s), global batch {config.data.batch_size}")
  state = TrainState.create(params=trainable, tx=make_optimizer(config), rng=jax.random.PRNGKey(config.seed + 1),
                            frozen=frozen)
  vgg_apply = models.perceptual_vgg_apply(model) if float(config.loss.vgg) > 0 else None
  step = functools.partial(train_step, model=model, loss_config=loss_config, vgg_apply=vgg_apply,
                           syn_kwargs=syn_kwargs, r_pixel_mask=bool(var.get("r_pixel_mask", True)))
  ckpt = Checkpointer(workdir, max_to_keep=config.checkpoint.max_to_keep, every_steps=config.checkpoint.every_steps)
  fwd = predict_lib.make_forward(model)  # shared with derefl_jax.predict (same compiled functions)
  mult = model.size_multiple
  t_train = time.time()
  fit_kw = dict(train_step=step, batch_fn=batch_fn, workdir=workdir, mesh=mesh, checkpointer=ckpt,
                checkpoint_every=config.checkpoint.every_steps, log_every=config.log_every_steps, desc="train derefl")
  kept = None
  if var.get("keep", "last") == "best_val":
    state, kept = _train_keep_best(config, state, fit_kw, fwd, mult, test_folders if config.data.source == "files" else None)
  else:
    state = fit(state=state, num_steps=config.num_steps, **fit_kw)
  ckpt.close()
  train_seconds = time.time() - t_train

  # ---- evaluation (host copy of the params, default device)
  params = jax.device_get(models.merge_params(state.params, state.frozen))
  if kept is not None:
    params = kept["params"]
  results, grids = {}, {}
  rows = int(config.eval.grid_rows)
  if config.data.source == "demo":
    ev = demo_data.demo_eval_set(num_pairs=config.data.eval_pairs, crop=config.data.eval_crop, seed=config.seed,
                                 recipe=config.synthesis.recipe)
    res, pt, pr = evaluate_arrays(fwd, params, ev["input"], ev["T"], batch_size=config.eval.batch_size, mult=mult)
    results["demo"] = res
    grids["demo"] = [(ev["input"][i], pt[i], pr[i], ev["T"][i]) for i in range(min(rows, len(pt)))]
  else:
    for name, folder in test_folders.items():
      results[name], grids[name] = evaluate_folder(fwd, params, folder, mult=mult, keep=rows)
  table = format_table(results)
  summary = {
      "preset": config.get("preset", ""), "model_preset": config.model.preset, "trainable_params": n_params,
      "steps": int(jax.device_get(state.step)), "train_seconds": round(train_seconds, 1),
      "variant": var, "kept_step": int(kept["step"]) if kept is not None else int(jax.device_get(state.step)),
      "val_history": kept["history"] if kept is not None else [],
      "total_seconds": round(time.time() - t_start, 1), "devices": len(mesh.devices.flat),
      "test_sets": results,
      "beats_identity": {k: bool(v["psnr"] > v["identity_psnr"] and v["ssim"] > v["identity_ssim"])
                         for k, v in results.items()},
  }
  if parallel.is_main_process():
    for name, g in grids.items():
      save_grid(os.path.join(workdir, "grids", f"{name}.png"), g, f"{name}: input | T̂ | R̂ | GT T")
    save_json(os.path.join(workdir, "results.json"), summary)
    print("\nPSNR/SSIM of the transmission layer (papers' protocol) vs the identity baseline:")
    print(table)
    for name, ok in summary["beats_identity"].items():
      print(f"{name}: model {'beats' if ok else 'does NOT beat'} the identity baseline")
    print(f"results: {os.path.join(workdir, 'results.json')}; grids: {os.path.join(workdir, 'grids')}; "
          f"total {summary['total_seconds']:.0f} s")
  return summary


def _validation_set(config: ml_collections.ConfigDict, test_folders) -> tuple[np.ndarray, np.ndarray]:
  """Validation pairs for keep=best_val: demo -> synthetic mixes of the demo's held-out photos under
  another seed than the test mixes; files -> the first test set (as DSRNet's recipe selects its epoch)."""
  if test_folders is None:
    ev = demo_data.demo_eval_set(num_pairs=config.data.eval_pairs, crop=config.data.eval_crop, seed=config.seed + 1000,
                                 recipe=config.synthesis.recipe)
    return ev["input"], ev["T"]
  return next(iter(test_folders.values()))


def _train_keep_best(config, state, fit_kw, fwd, mult, test_folders):
  """Trains in chunks of ``eval.every_steps``, scores PSNR on the validation set after each chunk and
  keeps the best parameters (keep=best_val) -> (last state, {"params", "step", "psnr", "history"})."""
  every = int(config.eval.get("every_steps", 0)) or max(1, config.num_steps // 4)
  val = _validation_set(config, test_folders)
  ends = sorted(set(list(range(every, config.num_steps, every)) + [config.num_steps]))
  step_fn = compile_train_step(fit_kw["train_step"], fit_kw["mesh"])
  best, history = None, []
  for end in ends:
    state = fit(state=state, num_steps=end, step_fn=step_fn, **fit_kw)
    params = jax.device_get(models.merge_params(state.params, state.frozen))
    if isinstance(val, tuple):
      res, _, _ = evaluate_arrays(fwd, params, val[0], val[1], batch_size=config.eval.batch_size, mult=mult)
    else:
      res, _ = evaluate_folder(fwd, params, val, mult=mult, keep=0)
    history.append({"step": end, "val_psnr": res["psnr"], "val_ssim": res["ssim"]})
    if best is None or res["psnr"] > best["psnr"]:
      best = {"params": params, "step": end, "psnr": res["psnr"]}
  print(f"keep=best_val: step {best['step']} (val PSNR {best['psnr']:.2f}) of {[h['step'] for h in history]}")
  return state, dict(best, history=history)


# Settings a rerun in the same --workdir may change (besides train.config_lib.SHARED_RESUMABLE_KEYS,
# which include num_steps): evaluation-only settings, the loader's worker count, and model.remat (memory
# only: the same params and numbers).
RESUMABLE_KEYS = ("eval.*", "data.num_workers", "data.eval_pairs", "data.test_sets", "model.remat",
                  "model.remat_max_stride")


def _validate(config: ml_collections.ConfigDict) -> None:
  """Settings checked before any data or model is built (`ConfigError` -> one `error:` line)."""
  from train import config_lib
  try:
    build(config)
  except (ValueError, TypeError) as e:
    raise config_lib.ConfigError(f"config.model: {e} Fix the --config.model.* override.") from None
  if config.get("init_from"):
    config_lib.require(Path(config.init_from).is_file(), "init_from",
                       f"{config.init_from} does not exist (a DSRNet .pt/.ckpt, e.g. dsrnet_l_epoch18.pt).")
  try:
    variant(config)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from None
  config_lib.require_choice(config, "data.source", ("demo", "files"))
  config_lib.require_choice(config, "synthesis.recipe", ("dsrnet", "zhang"))
  config_lib.require_choice(config, "optim.schedule", ("constant", "cosine"))
  config_lib.require_positive(config, "num_steps", allow_zero=True)  # 0: evaluate the initial model
  config_lib.require_positive(config, "eval.batch_size", "checkpoint.every_steps", "log_every_steps")
  parallel.local_batch_size(int(config.data.batch_size), key="data.batch_size")


# ------------------------------------------------------------------------------------------- ablation
def ablation_configs(config: ml_collections.ConfigDict, names: list[str]) -> dict[str, ml_collections.ConfigDict]:
  """{"paper": config with every named switch at the paper's reading, "<name>=<alt>": that one switch
  flipped to today's alternative}; switches not named keep the config's value."""
  bad = [n for n in names if n not in VARIANT_CHOICES]
  if bad or not names:
    raise ValueError(f"--ablate: unknown switch(es) {bad}; valid: {','.join(VARIANT_CHOICES)}.")
  base = ml_collections.ConfigDict(config.to_dict(), type_safe=False)
  for n in names:
    base.variant[n] = VARIANT_CHOICES[n][0]
  out = {"paper": base}
  for n in names:
    c = ml_collections.ConfigDict(base.to_dict(), type_safe=False)
    c.variant[n] = VARIANT_CHOICES[n][1]
    out[f"{n}={VARIANT_CHOICES[n][1]}"] = c
  return out


def run_ablation(config: ml_collections.ConfigDict, workdir: str, *, names: list[str]) -> dict:
  """Trains every variant of :func:`ablation_configs` (same seed, data and steps) in
  ``<workdir>/ablation/<variant>``, then writes ``ablation.json``, ``ablation.md`` and
  ``ablation.png`` (PSNR, SSIM, trainable params, GFLOPs per variant) in ``workdir``."""
  from derefl_jax import complexity
  configs = ablation_configs(config, names)
  size = int(config.data.eval_crop or config.data.crop)
  rows = []
  for label, cfg in configs.items():
    _validate(cfg)
    print(f"\n=== ablation variant {label} ===", flush=True)
    summary = train_and_evaluate(cfg, os.path.join(workdir, "ablation", label.replace("=", "-")))
    model = build(cfg)
    cost = complexity.count(model, size, size)
    first = next(iter(summary["test_sets"].values()))
    rows.append({"variant": label, "psnr": first["psnr"], "ssim": first["ssim"],
                 "identity_psnr": first["identity_psnr"], "identity_ssim": first["identity_ssim"],
                 "trainable_params": cost["trainable_params"], "gflops": cost["gflops"], "flops_size": size,
                 "kept_step": summary["kept_step"], "steps": summary["steps"], "test_set": next(iter(summary["test_sets"]))})
    result = {"switches": names, "seed": int(config.seed), "num_steps": int(config.num_steps),
              "preset": config.get("preset", ""), "model_preset": config.model.preset,
              "flops_counter": complexity.SOURCE, "complete": len(rows) == len(configs), "rows": rows}
    save_ablation(workdir, result)  # after every variant: an interrupted run keeps its rows
  md = format_ablation(result)
  print("\n" + md)
  print(f"ablation: {os.path.join(workdir, 'ablation.json')}, .md, .png")
  return result


def save_ablation(workdir: str, result: Mapping[str, Any]) -> None:
  """``ablation.json``, ``ablation.md`` and ``ablation.png`` in ``workdir``."""
  save_json(os.path.join(workdir, "ablation.json"), dict(result))
  Path(workdir, "ablation.md").write_text(format_ablation(result) + "\n")
  plot_ablation(os.path.join(workdir, "ablation.png"), result)


def format_ablation(result: Mapping[str, Any]) -> str:
  """Markdown table of :func:`run_ablation`'s rows."""
  lines = ["| variant | PSNR | SSIM | trainable params | GFLOPs | kept step |", "|---|---:|---:|---:|---:|---:|"]
  for r in result["rows"]:
    lines.append(f"| {r['variant']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['trainable_params']:,} | "
                 f"{r['gflops']:.3f} | {r['kept_step']} / {r['steps']} |")
  r0 = result["rows"][0]
  lines.append(f"| identity (input) | {r0['identity_psnr']:.2f} | {r0['identity_ssim']:.4f} | | | |")
  return "\n".join(lines)


def plot_ablation(path: str, result: Mapping[str, Any]) -> None:
  """Bar chart (PSNR, SSIM, params, GFLOPs per variant) as PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = result["rows"]
  labels = [r["variant"] for r in rows]
  fig, axes = plt.subplots(1, 4, figsize=(16, 0.5 * len(rows) + 2))
  for ax, key, title in zip(axes, ("psnr", "ssim", "trainable_params", "gflops"),
                            ("PSNR (dB)", "SSIM", "trainable params", f"GFLOPs ({rows[0]['flops_size']} px)")):
    vals = [r[key] for r in rows]
    ax.barh(labels, vals, color=["C0"] + ["C1"] * (len(rows) - 1))
    if key in ("psnr", "ssim"):
      ax.axvline(rows[0]["identity_" + key], color="k", ls="--", lw=1, label="identity")
      lo = min(vals + [rows[0]["identity_" + key]])
      hi = max(vals + [rows[0]["identity_" + key]])
      ax.set_xlim(lo - 0.1 * (hi - lo + 1e-3), hi + 0.1 * (hi - lo + 1e-3))
      ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    if ax is not axes[0]:
      ax.set_yticklabels([])
  fig.suptitle(f"ablation of the paper switches ({result['preset']} preset, seed {result['seed']}, "
               f"{result['num_steps']} steps)", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _ablate_flag(argv) -> tuple[list[str], list[str] | None]:
  """Removes ``--ablate a,b`` / ``--ablate=a,b`` from argv -> (argv, names or None)."""
  out, names, i = [], None, 0
  while i < len(argv):
    a = argv[i]
    if a == "--ablate" and i + 1 < len(argv):
      names, i = argv[i + 1], i + 2
      continue
    if a.startswith("--ablate="):
      names, i = a[len("--ablate="):], i + 1
      continue
    out.append(a)
    i += 1
  return out, (None if names is None else [n.strip() for n in names.split(",") if n.strip()])


def _init_from_flag(argv):
  """``--init_from FILE`` / ``--init_from=FILE`` -> ``--config.init_from=FILE``."""
  out, i = [], 0
  while i < len(argv):
    a = argv[i]
    if a == "--init_from" and i + 1 < len(argv):
      out.append(f"--config.init_from={argv[i + 1]}")
      i += 2
      continue
    out.append("--config.init_from=" + a[len("--init_from="):] if a.startswith("--init_from=") else a)
    i += 1
  return out


def main(argv=None):
  """`python -m train.derefl`: user errors print one `error:` line and exit with code 2 (train.cli)."""
  import sys
  argv, ablate = _ablate_flag(_init_from_flag(sys.argv[1:] if argv is None else list(argv)))
  if ablate is not None:
    from train import config_lib
    bad = [n for n in ablate if n not in VARIANT_CHOICES]
    if bad or not ablate:
      cli.fail(config_lib.ConfigError(f"--ablate: unknown switch(es) {bad or ablate}; valid: {','.join(VARIANT_CHOICES)}."))
    return cli.run(functools.partial(run_ablation, names=ablate), default_config=DEFAULT_CONFIG, argv=argv,
                   resumable_keys=RESUMABLE_KEYS, validate=_validate)
  return cli.run(train_and_evaluate, default_config=DEFAULT_CONFIG, argv=argv,
                 resumable_keys=RESUMABLE_KEYS, validate=_validate)


if __name__ == "__main__":
  main()
