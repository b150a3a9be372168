"""Contrastive pretraining of a small CLIP on a synthetic image-caption corpus (the demo's teacher).

The offline demo cannot download CLIP weights, and a CLIP with random weights carries no shared
image-text structure (its image embeddings are nearly collinear; a linear probe on them is at
chance), so its teacher cannot show what LCDH distils. This module gives the tiny demo CLIP what
real CLIP has: it is trained with CLIP's objective, the symmetric InfoNCE over the in-batch
image-caption pairs,

    logits = exp(t) * norm(img) @ norm(txt).T          (B, B), t = CLIP's learnable logit scale
    L = [CE(logits, diag) + CE(logits.T, diag)] / 2

on a corpus drawn like the demo data but from another random stream
(``synthetic.make_synthetic(seed=(s, synthetic.PRETRAIN_STREAM))``), so the demo's own items
are never seen in pretraining. Captions are tokenized by ``caption_tokenizer``, a word tokenizer
over the fixed ``synthetic.CAPTION_WORDS`` (the same ids for every draw of the data).

The image tower of the demo's CLIP is ``ConvCLIP``'s small conv net: a ViT tower this small
learned colour and texture but not the shapes of the synthetic data in a CPU budget (probe and
supervised measurements in docs/lcdh.md). A warmup of ~40 steps is needed: shorter ones collapsed
the embeddings (loss stuck at log(batch)).

Time (the demo's setting, 600 steps of 128 pairs): the tower first folds 2x2 pixel blocks into
channels (``space_to_depth``, lossless), so its convs and LayerNorms run at 16x16 instead of
32x32; on XLA:CPU the backward of those full-resolution layers (the channel LayerNorm above all)
took most of a step. With widths (32, 64) a step (2 text layers) costs ~75 ms of CPU against
~210 ms for ``SmallCNN((16, 32, 64))`` on the 32x32 pixels, and held-out retrieval and the label
probe are better (docs/lcdh.md, "The demo's CLIP is pretrained"): ~57 CPU-seconds in all.

* ``ConvCLIP``, ``init_model``, ``encode_image``/``encode_text``: the models and their encoders.
* ``clip_loss``: the symmetric InfoNCE (pure).
* ``pretrain_clip``: ``steps`` AdamW steps (warmup + cosine) on a corpus; data-parallel over the
  local devices when the batch divides; deterministic in ``seed``.
* ``retrieval_accuracy``: image->text and text->image recall@k within a set of pairs.
* ``pretrained_tiny_clip``: build the corpus, pretrain, and cache the parameters on disk keyed by
  every setting (``PretrainConfig`` + the CLIP spec); a second call with the same key loads them.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lcdh_jax import models, synthetic

__all__ = ["ConvCLIP", "space_to_depth", "encode_image", "encode_text", "PretrainConfig", "caption_tokenizer", "clip_loss", "pretrain_clip",
           "retrieval_accuracy", "encode_corpus", "pretrained_tiny_clip", "pretrain_cache_paths"]


class ConvCLIP(nn.Module):
  """CLIP with a small conv image tower: images (B, S, S, 3), ids (B, L), mask (B, L) -> embeds.

  The text tower, projections and logit scale are CLIP's (``backbones_jax.clip``, from
  ``spec``); the image tower is ``models.SmallCNN(cnn_widths)`` (mean+max pooled), as CLIP's
  ResNet variants put a conv net under the same contrastive head, applied after
  ``space_to_depth(images, space_to_depth)`` ((B, S, S, 3) -> (B, S/f, S/f, 3f^2); f = 1: none).
  A ViT tower as small as the demo's did not learn the shapes of the synthetic data in a CPU
  budget (docs/lcdh.md); this one does. ``__call__`` returns ``image_embeds`` (B, P) and
  ``text_embeds`` (B, P), not normalised.
  """
  spec: Any
  cnn_widths: tuple[int, ...] = (16, 32, 64)
  space_to_depth: int = 1

  def setup(self):
    from backbones_jax import clip as clip_lib
    self.vision_model = models.SmallCNN(tuple(self.cnn_widths))
    self.text_model = clip_lib.CLIPTextTransformer(self.spec.text)
    self.visual_projection = nn.Dense(self.spec.projection_dim, use_bias=False,
                                      kernel_init=nn.initializers.normal(0.02))
    self.text_projection = nn.Dense(self.spec.projection_dim, use_bias=False,
                                    kernel_init=nn.initializers.normal(0.02))
    self.logit_scale = self.param("logit_scale",
                                  nn.initializers.constant(self.spec.logit_scale_init_value), ())

  def get_image_features(self, images):
    """(B, S, S, 3) CLIP-normalised -> (B, P)."""
    return self.visual_projection(self.vision_model(space_to_depth(images, self.space_to_depth)))

  def get_text_features(self, input_ids, attention_mask=None):
    """ids (B, L), mask (B, L) -> (B, P)."""
    pooled, _ = self.text_model(input_ids, attention_mask, pooled_only=True)
    return self.text_projection(pooled)

  def __call__(self, images, input_ids, attention_mask=None):
    return {"image_embeds": self.get_image_features(images),
            "text_embeds": self.get_text_features(input_ids, attention_mask)}


def space_to_depth(images: jax.Array, factor: int) -> jax.Array:
  """Fold each ``factor x factor`` pixel block into channels: (B, H, W, C) -> (B, H/f, W/f, f*f*C).

  Lossless (a reshape); a conv net on the result computes at 1/f^2 of the positions.
  """
  if factor == 1:
    return images
  b, h, w, c = images.shape
  if h % factor or w % factor:
    raise ValueError(f"space_to_depth: image size {h}x{w} is not a multiple of {factor}.")
  x = images.reshape(b, h // factor, factor, w // factor, factor, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // factor, w // factor, factor * factor * c)


@functools.partial(jax.jit, static_argnums=0)
def _encode_image(model, params, images):
  return model.apply({"params": params}, images, method=type(model).get_image_features)


@functools.partial(jax.jit, static_argnums=0)
def _encode_text(model, params, ids, mask):
  return model.apply({"params": params}, ids, mask, method=type(model).get_text_features)


def encode_image(model, params, images) -> jax.Array:
  """Image embeddings of a ``ConvCLIP`` or ``backbones_jax.clip.CLIP``: (B,S,S,3) normalised -> (B,P)."""
  return _encode_image(model, params, jnp.asarray(images, jnp.float32)).astype(jnp.float32)


def encode_text(model, params, input_ids, attention_mask) -> jax.Array:
  """Text embeddings of a ``ConvCLIP`` or ``backbones_jax.clip.CLIP``: ids, mask (B, L) -> (B, P)."""
  return _encode_text(model, params, jnp.asarray(input_ids),
                      jnp.asarray(attention_mask)).astype(jnp.float32)


def init_model(spec, *, seed: int = 0, cnn_widths: tuple[int, ...] | None = None,
               space_to_depth: int = 1):
  """``(model, params)``: ``ConvCLIP(spec, cnn_widths, space_to_depth)``, or CLIP's ViT when
  ``cnn_widths`` is None."""
  from backbones_jax import clip as clip_lib
  if cnn_widths is None:
    return clip_lib.init_clip(spec, seed=seed)
  model = ConvCLIP(spec, tuple(cnn_widths), space_to_depth)
  s = spec.vision.image_size
  params = clip_lib.init_params(model, jax.random.key(seed), jnp.zeros((1, s, s, 3)),
                                jnp.zeros((1, spec.text.max_position_embeddings), jnp.int32))
  return model, params


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
  """Settings of the contrastive pretraining of the tiny CLIP (all of them key the cache)."""
  steps: int = 600
  batch_size: int = 128
  lr: float = 3e-3
  weight_decay: float = 0.05
  warmup_steps: int = 40
  num_samples: int = 4000       # corpus size (image-caption pairs)
  image_size: int = 32
  max_objects: int = 2
  noise_tags: int = 2           # distractor words per caption (as the demo data)
  group_size: int = 0           # >0: hard-negative batches (see ``pretrain_clip``)
  space_to_depth: int = 1       # conv tower: fold f x f pixel blocks into channels first (demo: 2)
  object_size: tuple[float, float] = (0.25, 0.5)  # shape sizes, fractions of the image side
  seed: int = 0                 # corpus stream (seed, PRETRAIN_STREAM), init and batch order


def caption_tokenizer(context_length: int = 16):
  """Word tokenizer over ``synthetic.CAPTION_WORDS`` (fixed ids; other words map to ``<unk>``)."""
  from backbones_jax import tokenizer as tok_lib
  return tok_lib.WordTokenizer(synthetic.CAPTION_WORDS, context_length=context_length)


def clip_loss(*, image_embeds: jax.Array, text_embeds: jax.Array,
              logit_scale: jax.Array) -> jax.Array:
  """CLIP's symmetric InfoNCE: (B, P), (B, P), () log-scale -> () mean cross-entropy.

  Pair ``i`` (row ``i`` of both) is the positive of row ``i``; every other row of the batch is a
  negative, in both directions.
  """
  if image_embeds.shape != text_embeds.shape or image_embeds.ndim != 2:
    raise ValueError(f"image_embeds and text_embeds must both be (B, P); got "
                     f"{tuple(image_embeds.shape)} and {tuple(text_embeds.shape)}.")
  img = image_embeds / jnp.linalg.norm(image_embeds, axis=-1, keepdims=True)
  txt = text_embeds / jnp.linalg.norm(text_embeds, axis=-1, keepdims=True)
  logits = jnp.exp(logit_scale) * img @ txt.T
  diag = jnp.arange(logits.shape[0])
  ce_i = -jnp.mean(jax.nn.log_softmax(logits, axis=1)[diag, diag])
  ce_t = -jnp.mean(jax.nn.log_softmax(logits, axis=0)[diag, diag])
  return 0.5 * (ce_i + ce_t)


def _normalize_uint8(images: np.ndarray) -> np.ndarray:
  from backbones_jax import clip as clip_lib
  return np.asarray(clip_lib.normalize(np.asarray(images, np.float32) / 255.0), np.float32)


def _decay_mask(params):
  """Weight decay on matrices only (not on gains, biases or CLIP's logit scale)."""
  return jax.tree_util.tree_map(lambda x: x.ndim > 1, params)


@functools.lru_cache(maxsize=8)
def _optimizer_and_step(model, lr: float, weight_decay: float, warmup_steps: int, steps: int):
  """AdamW (warmup + cosine) and the jitted step, built once per setting (so they compile once)."""
  sched = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, min(warmup_steps, steps - 1)), steps)
  tx = optax.adamw(sched, weight_decay=weight_decay, mask=_decay_mask)

  def loss_fn(p, im, ids, mask):
    out = model.apply({"params": p}, im, ids, mask)
    return clip_loss(image_embeds=out["image_embeds"], text_embeds=out["text_embeds"],
                     logit_scale=p["logit_scale"])

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(p, o, im, ids, mask):
    loss, g = jax.value_and_grad(loss_fn)(p, im, ids, mask)
    upd, o = tx.update(g, o, p)
    p = optax.apply_updates(p, upd)
    # CLIP clamps its temperature: exp(t) <= 100.
    p = {**p, "logit_scale": jnp.clip(p["logit_scale"], 0.0, np.log(100.0))}
    return p, o, loss

  return tx, step


def pretrain_clip(model, params, *, images: np.ndarray, input_ids: np.ndarray,
                  attention_mask: np.ndarray, steps: int, batch_size: int, lr: float = 2e-3,
                  weight_decay: float = 0.05, warmup_steps: int = 0, seed: int = 0,
                  show_progress: bool = True, desc: str = "CLIP pretraining",
                  log_every: int = 0, groups: np.ndarray | None = None, group_size: int = 0,
                  on_log: Callable[[int, float], None] | None = None) -> tuple[Any, list[float]]:
  """Train ``model`` (a ``backbones_jax.clip.CLIP``) with ``clip_loss`` on image-caption pairs.

  Args:
    model, params: the CLIP and its starting parameters.
    images: (N, S, S, 3) uint8 images (CLIP-normalised here).
    input_ids, attention_mask: (N, L) int token ids and mask of the N captions.
    steps, batch_size, lr, weight_decay, warmup_steps: AdamW with linear warmup then cosine decay
      to 0; batches are drawn without replacement within an epoch (seeded by ``seed``).
    groups, group_size: hard-negative batches: with ``groups`` (N,) int ids and ``group_size`` >
      0, a batch is ``batch_size // group_size`` random groups of ``group_size`` items each
      (e.g. items with the same colours and background), so the pairs of a batch differ mostly
      in what is hard to see (the shapes); colour alone no longer solves the batch, which keeps
      it from suppressing the harder features.
    show_progress: a tqdm bar over the steps; ``on_log(step, loss)`` every ``log_every`` steps.

  Returns:
    (params, losses): the trained parameters (numpy) and the loss of every step.
  The batch is split over the local devices when ``batch_size`` divides by their number.
  """
  from tqdm.auto import tqdm
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  n = images.shape[0]
  if steps <= 0 or batch_size <= 1:
    raise ValueError(f"steps must be > 0 and batch_size > 1; got {steps} and {batch_size}.")
  if not n == input_ids.shape[0] == attention_mask.shape[0]:
    raise ValueError(f"images, input_ids and attention_mask must have the same length; got "
                     f"{n}, {input_ids.shape[0]}, {attention_mask.shape[0]}.")
  if batch_size > n:
    raise ValueError(f"batch_size={batch_size} is larger than the corpus ({n} pairs).")
  tx, step = _optimizer_and_step(model, float(lr), float(weight_decay), int(warmup_steps),
                                 int(steps))
  devices = jax.local_devices()
  ndev = len(devices) if batch_size % len(devices) == 0 else 1
  mesh = Mesh(np.asarray(devices[:ndev]), ("data",))
  rep, shard = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  params = jax.device_put(jax.device_get(params), rep)  # a copy: the caller's arrays stay valid
  opt_state = jax.device_put(tx.init(params), rep)

  arrays = (_normalize_uint8(images), np.asarray(input_ids, np.int32),
            np.asarray(attention_mask, np.int32))
  rng = np.random.default_rng([seed, 17])
  order, pos = rng.permutation(n), 0
  if group_size:
    if groups is None or len(groups) != n or batch_size % group_size:
      raise ValueError("group_size needs groups (N,) and a batch_size that it divides.")
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    members = [m for m in members if m.size >= group_size]
    if len(members) < batch_size // group_size:
      raise ValueError(f"only {len(members)} groups hold >= {group_size} items; need "
                       f"{batch_size // group_size}.")
  losses = []
  bar = tqdm(range(steps), desc=desc, disable=not show_progress, leave=False)
  for s in bar:
    if group_size:
      chosen = rng.choice(len(members), size=batch_size // group_size, replace=False)
      idx = np.concatenate([rng.choice(members[g], size=group_size, replace=False)
                            for g in chosen])
    else:
      if pos + batch_size > n:
        order, pos = rng.permutation(n), 0
      idx = np.sort(order[pos:pos + batch_size])
      pos += batch_size
    batch = [jax.device_put(x[idx], shard) for x in arrays]
    params, opt_state, loss = step(params, opt_state, *batch)
    losses.append(loss)
    if log_every and ((s + 1) % log_every == 0 or s + 1 == steps):
      value = float(loss)
      bar.set_postfix(loss=f"{value:.3f}", refresh=False)
      if on_log is not None:
        on_log(s + 1, value)
  bar.close()
  return jax.device_get(params), [float(x) for x in jax.device_get(losses)]


def encode_corpus(model, params, *, images: np.ndarray, input_ids: np.ndarray,
                  attention_mask: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """Projected CLIP embeddings of N pairs: uint8 images (N,S,S,3), ids/mask (N,L) -> (N,P), (N,P).

  A short last batch is padded (edge rows) to ``batch_size``, so each encoder compiles once.
  """
  img, txt = [], []
  n = images.shape[0]
  for s in range(0, n, batch_size):
    m = min(batch_size, n - s)
    pad = lambda x: np.pad(x[s:s + m], [(0, batch_size - m if n > batch_size else 0)]
                           + [(0, 0)] * (x.ndim - 1), mode="edge")
    img.append(np.asarray(encode_image(model, params, _normalize_uint8(pad(images))))[:m])
    txt.append(np.asarray(encode_text(model, params, pad(input_ids), pad(attention_mask)))[:m])
  return np.concatenate(img), np.concatenate(txt)


def retrieval_accuracy(image_embeds: np.ndarray, text_embeds: np.ndarray, *,
                       k: int = 1) -> dict[str, float]:
  """Recall@k of the paired item among N: (N, P), (N, P) -> {"i2t", "t2i"} in [0, 1].

  Row ``i`` of each is a pair; random embeddings score about ``k / N``. Ties count against
  (a query whose score ties its pair's with another candidate is a hit only if fewer than ``k``
  candidates score at least as high).
  """
  img = image_embeds / np.linalg.norm(image_embeds, axis=-1, keepdims=True)
  txt = text_embeds / np.linalg.norm(text_embeds, axis=-1, keepdims=True)
  sim = img @ txt.T
  diag = np.diag(sim)
  i2t = np.mean((sim >= diag[:, None]).sum(1) <= k)
  t2i = np.mean((sim >= diag[None, :]).sum(0) <= k)
  return {"i2t": float(i2t), "t2i": float(t2i)}


def hard_negative_groups(data: synthetic.SyntheticData) -> np.ndarray:
  """(N,) group id per item: the set of colours it shows and its background texture."""
  colours = data.labels.reshape(len(data.labels), len(synthetic.COLOURS), -1).max(2)
  texture = [next(t for t in synthetic.TEXTURES if f" on {t}" in c) for c in data.captions]
  keys = [(tuple(c), t) for c, t in zip(colours.tolist(), texture)]
  index = {k: i for i, k in enumerate(sorted(set(keys)))}
  return np.asarray([index[k] for k in keys], np.int64)


def pretrain_cache_paths(cache_dir: str | os.PathLike, key: dict) -> tuple[Path, Path]:
  """``<cache_dir>/tiny_clip_<sha1(key)[:12]>.msgpack`` and its ``.json`` key."""
  digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
  stem = Path(cache_dir) / f"tiny_clip_{digest}"
  return stem.with_suffix(".msgpack"), stem.with_suffix(".json")


def pretrained_tiny_clip(spec, cfg: PretrainConfig, *, cache_dir: str | os.PathLike | None,
                         init_seed: int = 0, context_length: int = 16, show_progress: bool = True,
                         cnn_widths: tuple[int, ...] | None = None,
                         log: Callable[[str], None] | None = None) -> tuple[Any, Any, dict]:
  """A tiny CLIP pretrained with ``clip_loss``, cached on disk.

  ``ConvCLIP(spec, cnn_widths, cfg.space_to_depth)`` when ``cnn_widths`` is given (the demo),
  else the ViT ``backbones_jax.clip.CLIP(spec)`` (``cfg.space_to_depth`` must then be 1).

  ``spec`` must use ``caption_tokenizer(context_length)``'s vocabulary (``vocab_size``,
  ``eos_token_id``). The cache key is every field of ``cfg``, the spec, ``init_seed`` and the
  vocabulary; a file whose key differs, or that does not load, is recomputed. ``cache_dir=None``
  disables the cache. Returns ``(model, params, info)``; ``info`` holds the key, whether the cache
  was used, the loss at the start and end, recall@1 on 500 held-out corpus pairs and the seconds
  spent.
  """
  import time
  from flax import serialization
  from backbones_jax import clip as clip_lib
  log = log or (lambda msg: None)
  tok = caption_tokenizer(context_length)
  if spec.text.vocab_size != tok.vocab_size or spec.text.eos_token_id != tok.eos_token_id:
    raise ValueError(f"spec's text vocabulary ({spec.text.vocab_size} ids, eos "
                     f"{spec.text.eos_token_id}) is not caption_tokenizer's ({tok.vocab_size}, "
                     f"{tok.eos_token_id}).")
  if cfg.image_size != spec.vision.image_size:
    raise ValueError(f"the corpus image_size ({cfg.image_size}) must equal the CLIP's input size "
                     f"({spec.vision.image_size}).")
  f = cfg.space_to_depth
  if f < 1 or cfg.image_size % f or (f > 1 and cnn_widths is None):
    raise ValueError(f"space_to_depth={f} needs the conv image tower (cnn_widths) and must be >= 1 "
                     f"and divide image_size={cfg.image_size}; the ViT tower takes space_to_depth=1.")
  key = {"pretrain": dataclasses.asdict(cfg), "spec": repr(spec), "init_seed": int(init_seed),
         "vocab": list(tok.words), "context_length": int(context_length),
         "image_tower": "vit" if cnn_widths is None else f"cnn{list(cnn_widths)}", "version": 1}
  key = json.loads(json.dumps(key))  # as it reads back from the JSON file (tuples -> lists)
  model = (clip_lib.CLIP(spec) if cnn_widths is None
           else ConvCLIP(spec, tuple(cnn_widths), cfg.space_to_depth))
  s = spec.vision.image_size
  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, s, s, 3)),
                            jnp.zeros((1, spec.text.max_position_embeddings), jnp.int32))["params"]
  if cache_dir is not None:
    blob, meta = pretrain_cache_paths(cache_dir, key)
    if blob.exists() and meta.exists():
      try:
        saved = json.loads(meta.read_text())
        if saved.get("key") == key:
          target = jax.tree_util.tree_map(lambda a: np.zeros(a.shape, a.dtype), abstract)
          params = serialization.from_bytes(target, blob.read_bytes())
          log(f"tiny CLIP: pretrained weights loaded from {blob}")
          return model, params, {**saved, "cached": True}
      except (OSError, ValueError, KeyError) as e:
        log(f"tiny CLIP: cache {blob} unreadable ({e}); pretraining again")
  t0 = time.time()
  held_out = 500
  corpus = synthetic.make_synthetic(num_samples=cfg.num_samples + held_out,
                                    image_size=cfg.image_size,
                                    seed=(cfg.seed, synthetic.PRETRAIN_STREAM),
                                    max_objects=cfg.max_objects, noise_tags=cfg.noise_tags,
                                    object_size=tuple(cfg.object_size),
                                    show_progress=show_progress)
  ids, mask = tok(corpus.captions)
  _, params = init_model(spec, seed=init_seed, cnn_widths=cnn_widths,
                         space_to_depth=cfg.space_to_depth)
  tr = slice(0, cfg.num_samples)
  ev = slice(cfg.num_samples, None)
  before = retrieval_accuracy(*encode_corpus(model, params, images=corpus.images[ev],
                                             input_ids=ids[ev], attention_mask=mask[ev]))
  log(f"tiny CLIP: contrastive pretraining, {cfg.steps} steps of {cfg.batch_size} pairs on "
      f"{cfg.num_samples} synthetic image-caption pairs (seed stream ({cfg.seed}, "
      f"{synthetic.PRETRAIN_STREAM}), disjoint from the demo data)")
  every = max(1, cfg.steps // 10)
  params, losses = pretrain_clip(
      model, params, images=corpus.images[tr], input_ids=ids[tr], attention_mask=mask[tr],
      steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
      warmup_steps=cfg.warmup_steps, seed=cfg.seed, show_progress=show_progress,
      log_every=every, groups=hard_negative_groups(corpus)[tr], group_size=cfg.group_size,
      on_log=None if show_progress else
      (lambda s, l: log(f"  CLIP pretraining step {s}/{cfg.steps}: loss {l:.3f} "
                        f"({time.time() - t0:.0f} s)")))
  after = retrieval_accuracy(*encode_corpus(model, params, images=corpus.images[ev],
                                            input_ids=ids[ev], attention_mask=mask[ev]))
  info = {"key": key, "loss_first": losses[0], "loss_last": float(np.mean(losses[-every:])),
          "recall1_before": before, "recall1_after": after, "held_out": held_out,
          "seconds": round(time.time() - t0, 1)}
  log(f"tiny CLIP: loss {info['loss_first']:.3f} -> {info['loss_last']:.3f}; recall@1 on "
      f"{held_out} held-out pairs I->T {after['i2t']:.3f} T->I {after['t2i']:.3f} (random "
      f"weights: {before['i2t']:.3f} / {before['t2i']:.3f}); {info['seconds']} s")
  if cache_dir is not None:
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    tmp = blob.with_suffix(".tmp")
    tmp.write_bytes(serialization.to_bytes(params))
    os.replace(tmp, blob)
    meta.write_text(json.dumps(info, indent=1, sort_keys=True))
  return model, params, {**info, "cached": False}
