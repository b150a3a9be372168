"""LCDH end to end: CLIP features -> offline teacher -> online student stream -> retrieval tables.

    python -m train.lcdh                                   # demo preset, fully offline
    python -m train.lcdh --config=train/configs/lcdh.py:mirflickr --config.data_root=data/mirflickr

Per code length K (``config.bits``) the run

1. loads the dataset (the demo generates synthetic data into ``<workdir>/data``) and the DCMH split
   (held-out queries, database, teacher training set) drawn with ``config.seed``;
2. computes the frozen CLIP image/text features once (cached in ``<workdir>/features``);
3. trains the teacher offline on the training set (checkpointed in ``<workdir>/K<K>/teacher``);
4. streams the database in chunks: each round trains the student on the new chunk plus anchors
   under teacher supervision, appends the chunk's codes to the database (never re-encoded unless
   ``stream.reencode``), encodes the queries with the current student and reports mAP
   (checkpoint with the stream state after every round in ``<workdir>/K<K>/student``);
5. writes ``results.json`` (mAP I->T / T->I of student, teacher and random codes after every round),
   ``map_per_round.png`` and ``pr_curves.png`` into the workdir, and prints the table.
"""
from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lcdh_jax import data as data_lib
from lcdh_jax import features as features_lib
from lcdh_jax import models, online, retrieval, synthetic
from train import parallel
from train.checkpoint import Checkpointer
from train.guard import check_finite
from train.loop import fit
from train.metric_writer import MetricWriter, progress, save_json
from train.state import TrainState, compile_train_step

DEFAULT_CONFIG = str(Path(__file__).resolve().parent / "configs" / "lcdh.py") + ":demo"


# ------------------------------------------------------------------------------------------- data


def _prepared_data(config: ml_collections.ConfigDict, workdir: str) -> data_lib.CrossModalData:
  """The dataset read from the prepared tfds dataset in ``config.data_dir`` (docs/data.md).

  On first use it is prepared there from the raw layout (``data_root``; ``synthetic`` is generated
  first), with tfds's progress bars. The items, text, BoW and labels equal the raw reader's.
  """
  from lcdh_jax import tfds_builder
  from train.config_lib import ConfigError
  if not tfds_builder.is_prepared(config.data_dir, config.dataset):
    if config.dataset == "synthetic":
      raw_config = config.copy_and_resolve_references()
      raw_config.data_dir = ""
      raw, _ = prepare_data(raw_config, workdir)  # generates <data_root>/synthetic.mat (process 0)
      if not parallel.is_main_process():
        return raw
      root = config.data_root or os.path.join(workdir, "data")
    else:
      root = config.data_root or os.path.join("data", config.dataset)
    print(f"data: preparing the tfds dataset {config.dataset!r} in {config.data_dir} from {root} "
          f"(once)", flush=True)
    try:
      tfds_builder.prepare(root, config.data_dir, dataset=config.dataset,
                           tag_vocab=config.get("tag_vocab") or None, split_seed=config.seed,
                           num_query=config.split.num_query, num_train=config.split.num_train)
    except data_lib.DatasetError as e:
      raise ConfigError(f"dataset {config.dataset!r} under {Path(root).absolute()}: {e}") from e
  d = tfds_builder.load_prepared(config.data_dir, config.dataset, cache_gb=config.get("data_cache_gb", 0.0))
  if config.dataset == "synthetic" and len(d) != config.synthetic.num_samples:
    raise ConfigError(f"the prepared synthetic dataset in {config.data_dir} holds {len(d)} items but "
                      f"synthetic.num_samples={config.synthetic.num_samples}; use another data_dir.")
  return d


def prepare_data(config: ml_collections.ConfigDict, workdir: str) -> tuple[data_lib.CrossModalData,
                                                                           data_lib.Split]:
  """Dataset (generated for ``synthetic``; from the prepared tfds ``data_dir`` when set) and its
  seeded DCMH split."""
  if config.get("data_dir"):
    d = _prepared_data(config, workdir)
  elif config.dataset == "synthetic":
    root = Path(config.data_root or os.path.join(workdir, "data"))
    d = data_lib.load_dataset("synthetic", root) if (root / "synthetic.mat").exists() else None
    if d is not None and len(d) != config.synthetic.num_samples:
      raise ValueError(f"{root / 'synthetic.mat'} holds {len(d)} items but "
                       f"synthetic.num_samples={config.synthetic.num_samples}; use a fresh "
                       f"--workdir (or data_root) for a different synthetic set.")
    if d is None:
      syn = synthetic.make_synthetic(num_samples=config.synthetic.num_samples,
                                     image_size=config.synthetic.image_size, seed=config.seed,
                                     max_objects=config.synthetic.max_objects)
      if parallel.is_main_process():
        synthetic.write_mat(syn, root, name="synthetic", layout="arrays")
      d = data_lib.CrossModalData(name="synthetic", images=syn.images, tags=syn.tags,
                                  labels=syn.labels.astype(np.float32), captions=syn.captions,
                                  text_source="generated captions (synthetic)",
                                  bow_source=f"the dataset's own: generated {syn.tags.shape[1]}-d tags")
  else:
    from train.config_lib import ConfigError
    root = config.data_root or os.path.join("data", config.dataset)
    try:
      d = data_lib.load_dataset(config.dataset, root, tag_vocab=config.get("tag_vocab") or None)
    except data_lib.DatasetError as e:  # inconsistent or incomplete dataset files: a user error
      raise ConfigError(f"dataset {config.dataset!r} under {Path(root).absolute()}: {e}") from e
  if parallel.is_main_process():
    print(f"data: teacher text = {d.text_source or 'captions'}; student text input = "
          f"{d.bow_source or 'tags'} ({d.tags.shape[1]}-d BoW)", flush=True)
  split = data_lib.split_indices(len(d), num_query=config.split.num_query,
                                 num_train=config.split.num_train, seed=config.seed)
  return d, split


# ------------------------------------------------------------------------------------------- CLIP


def _tiny_pretrain_config(config):
  """The demo CLIP's pretraining settings (``clip.pretrain``), or None for a random tiny CLIP."""
  import dataclasses
  from lcdh_jax import pretrain as pretrain_lib
  p = config.clip.get("pretrain")
  if config.clip.name != "tiny" or p is None or int(p.get("steps", 0)) <= 0:
    return None
  fields = {f.name for f in dataclasses.fields(pretrain_lib.PretrainConfig)}
  return pretrain_lib.PretrainConfig(**{k: v for k, v in p.items() if k in fields})


def _interactive() -> bool:
  """Whether tqdm bars are shown (a terminal or a notebook); otherwise phases print lines."""
  import sys
  return sys.stderr.isatty() or "ipykernel" in sys.modules


def _tokenizer(config, captions):
  """The tiny demo CLIP uses a word tokenizer: over the fixed caption vocabulary of the synthetic
  data when it is pretrained (``lcdh_jax.pretrain.caption_tokenizer``), else over the captions'
  words; real CLIP its BPE."""
  from backbones_jax import tokenizer as tok_lib
  if config.clip.name == "tiny":
    if _tiny_pretrain_config(config) is not None:
      from lcdh_jax import pretrain as pretrain_lib
      return pretrain_lib.caption_tokenizer(context_length=16)
    return tok_lib.WordTokenizer.from_texts(list(captions), context_length=16)
  # clip.tokenizer: needed when clip.name is an OpenAI .pt file (it holds no tokenizer files)
  return tok_lib.CLIPTokenizer(config.clip.get("tokenizer") or config.clip.name)


def clip_features(config: ml_collections.ConfigDict, d: data_lib.CrossModalData,
                  workdir: str) -> dict[str, np.ndarray]:
  """Frozen CLIP image/text embeddings of every item, (N, P) each, cached on disk."""
  from backbones_jax import clip as clip_lib
  pcfg = _tiny_pretrain_config(config)
  patch = config.clip.get("tiny_patch_size", 0) or max(4, config.clip.tiny_image_size // 8)
  if config.clip.name == "tiny":
    model_key = (f"tiny-clip-w{config.clip.tiny_width}-l{config.clip.tiny_layers}"
                 f"-s{config.clip.tiny_image_size}-p{config.clip.tiny_projection_dim}")
    if pcfg is None:
      model_key += f"-wordtok-seed{config.seed}"
    else:  # every pretraining setting, hashed (the feature cache key also holds it in full)
      import dataclasses
      import hashlib
      import json
      pkey = json.dumps(dataclasses.asdict(pcfg), sort_keys=True)
      tower = config.clip.get("tiny_image_tower", "vit")
      tower += "".join(f"-{w}" for w in config.clip.tiny_cnn_widths) if tower == "cnn" else ""
      model_key += (f"-{tower}-patch{patch}-pretrained-"
                    f"{hashlib.sha1(pkey.encode()).hexdigest()[:10]}")
  else:
    model_key = config.clip.name
  cache_dir = config.cache_dir or os.path.join(workdir, "features")

  def compute():
    from lcdh_jax import pretrain as pretrain_enc  # encoders of CLIP and of the demo's ConvCLIP
    tok = _tokenizer(config, d.captions)
    if config.clip.name == "tiny":
      spec = clip_lib.tiny_clip_spec(width=config.clip.tiny_width, layers=config.clip.tiny_layers,
                                     heads=4, image_size=config.clip.tiny_image_size,
                                     patch_size=patch,
                                     vocab_size=tok.vocab_size, context_length=16,
                                     projection_dim=config.clip.tiny_projection_dim,
                                     eos_token_id=tok.eos_token_id)
      if pcfg is None:
        model, params = clip_lib.init_clip(spec, seed=config.seed)
      else:
        # Pretrained contrastively on a synthetic corpus disjoint from this data (another seed
        # stream), once per setting: cached in clip.pretrain.cache_dir (default <workdir>/clip).
        from lcdh_jax import pretrain as pretrain_lib
        pdir = config.clip.pretrain.get("cache_dir", "") or os.path.join(workdir, "clip")
        cnn = (tuple(config.clip.tiny_cnn_widths)
               if config.clip.get("tiny_image_tower", "vit") == "cnn" else None)
        model, params, _ = pretrain_lib.pretrained_tiny_clip(
            spec, pcfg, cache_dir=pdir if parallel.is_main_process() else None,
            init_seed=pcfg.seed, context_length=16, show_progress=_interactive(),
            log=lambda m: print(m, flush=True), cnn_widths=cnn)
    else:
      model, params = clip_lib.load_clip(config.clip.name)
    size = model.spec.vision.image_size

    def get_images(idx):
      ims = np.stack([features_lib.clip_preprocess(d.image(int(i)), size, mode=config.clip.preprocess)
                      for i in idx]).astype(np.float32) / 255.0
      return np.asarray(clip_lib.normalize(ims))

    return features_lib.compute_clip_features(
        get_images=get_images, captions=d.captions,
        encode_image=lambda x: pretrain_enc.encode_image(model, params, x),
        encode_text=lambda ids, m: pretrain_enc.encode_text(model, params, ids, m),
        tokenize=lambda texts: tok(list(texts)), batch_size=config.clip.batch_size)

  return features_lib.cached_clip_features(
      cache_dir=cache_dir, dataset=d.name, model=model_key,
      image_size=config.clip.tiny_image_size if config.clip.name == "tiny" else 0,
      labels=d.labels, captions=d.captions, compute=compute, preprocess=config.clip.preprocess)


# ---------------------------------------------------------------------------------------- teacher


def _jit_create(init_params, tx, rng, init_seed: int) -> TrainState:
  """``TrainState.create`` in one compiled call (eager init would compile every op separately).

  Parameters are drawn with the ``rbg`` PRNG: on XLA:CPU a threefry-based init of the student
  compiled in ~8.5 s against ~2 s for rbg (rbg streams may differ across backends; fine for init).
  """
  @jax.jit
  def create(r, init_key):
    return TrainState.create(params=init_params(init_key), tx=tx, rng=r)
  return create(rng, jax.random.key(init_seed, impl="rbg"))


def _adamw(lr, wd):
  return optax.adamw(lr, weight_decay=wd)


def train_teacher(config, bits: int, feats: dict[str, np.ndarray], d: data_lib.CrossModalData,
                  split: data_lib.Split, workdir: str, mesh) -> tuple[models.Teacher, Any]:
  """Offline teacher on cached CLIP features of the training set; resumes from its checkpoints."""
  tc = config.teacher
  teacher = models.Teacher(bits=bits, width=tc.width, num_heads=tc.num_heads, dropout=tc.dropout)
  rng = jax.random.PRNGKey(config.seed + 1000 * bits)
  tx = _adamw(tc.lr, tc.weight_decay)
  state = _jit_create(lambda r: teacher.init(r, feats["image"][:2], feats["text"][:2])["params"],
                      tx, rng, config.seed + 1000 * bits)
  cfg = online.TeacherLossConfig(w_label=tc.w_label, w_contrast=tc.w_contrast, w_quant=tc.w_quant,
                                 w_balance=tc.w_balance, likelihood_scale=config.student.likelihood_scale,
                                 temperature=tc.temperature)
  train_idx = split.train
  bs = tc.batch_size

  def batch_fn(step):
    r = np.random.default_rng([config.seed, bits, step])
    idx = train_idx[r.choice(train_idx.size, size=bs, replace=train_idx.size < bs)]
    return {"image_emb": feats["image"][idx], "text_emb": feats["text"][idx],
            "labels": d.labels[idx]}

  tdir = os.path.join(workdir, f"K{bits}", "teacher")
  # Without a terminal the tqdm bar is off: print about 5 progress lines instead.
  print(f"teacher K={bits}: {tc.steps} steps of {bs} on {train_idx.size} items (first step "
        f"compiles)", flush=True)
  t0, every, printed = time.time(), max(1, tc.steps // 5), [0]

  def on_log(step, host):
    if not _interactive() and (step - printed[0] >= every or step == tc.steps):
      printed[0] = step
      print(f"  teacher K={bits} step {step}/{tc.steps}: loss {float(host['loss']):.4f} "
            f"({time.time() - t0:.0f} s)", flush=True)

  state = fit(state=state, train_step=functools.partial(online.teacher_train_step, teacher=teacher,
                                                        cfg=cfg),
              batch_fn=batch_fn, num_steps=tc.steps, workdir=tdir, mesh=mesh,
              checkpoint_every=config.checkpoint.every_steps,
              max_to_keep=config.checkpoint.max_to_keep, log_every=config.log_every_steps,
              desc=f"teacher K={bits}", on_log=on_log)
  return teacher, parallel.to_host(state.params)


def teacher_outputs(teacher: models.Teacher, params, feats, batch_size: int) -> dict[str, np.ndarray]:
  """Teacher outputs for every item: fused (N, K) float features, image/text (N, K) int8 codes."""
  apply = jax.jit(lambda p, i, t: teacher.apply({"params": p}, i, t))
  n = feats["image"].shape[0]
  outs = {"fused": [], "image": [], "text": []}
  for s in range(0, n, batch_size):
    idx = np.arange(s, min(s + batch_size, n))
    pad = batch_size - idx.size
    pidx = np.concatenate([idx, np.repeat(idx[-1:], pad)]) if pad else idx
    o = apply(params, feats["image"][pidx], feats["text"][pidx])
    for k in outs:
      outs[k].append(np.asarray(o[k])[:idx.size])
  out = {k: np.concatenate(v) for k, v in outs.items()}
  return {"fused": out["fused"].astype(np.float32), "image": online.binarize(out["image"]),
          "text": online.binarize(out["text"])}


# ---------------------------------------------------------------------------------------- student


def _student_tx(sc) -> optax.GradientTransformation:
  def labels(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "backbone" if path[0].key == "image_net" else "head", params)
  return optax.multi_transform(
      {"backbone": _adamw(sc.lr * sc.backbone_lr_mult, sc.weight_decay),
       "head": _adamw(sc.lr, sc.weight_decay)}, labels)


def build_student(config, bits: int, tag_dim: int):
  sc = config.student
  student = models.Student(bits=bits, image_backbone=sc.backbone, cnn_widths=tuple(sc.cnn_widths),
                           text_hidden=sc.text_hidden, image_hidden=sc.image_hidden)
  rng = jax.random.PRNGKey(config.seed + 2000 * bits)
  images = jnp.zeros((1, sc.image_size, sc.image_size, 3), jnp.float32)
  if sc.backbone == "vgg16" and not sc.vgg_weights and not sc.allow_random_vgg:
    raise FileNotFoundError(
        "student.backbone='vgg16' needs ImageNet weights: pass --config.student.vgg_weights="
        "<path to torchvision vgg16-397923af.pth>, or --config.student.allow_random_vgg=true to "
        "train VGG16 from scratch, or --config.student.backbone=small_cnn.")
  if sc.backbone == "vgg16" and sc.vgg_weights and not os.path.exists(sc.vgg_weights):
    raise FileNotFoundError(
        f"student.vgg_weights={sc.vgg_weights!r} does not exist. Put torchvision's ImageNet "
        f"VGG16 state dict there (vgg16-397923af.pth from download.pytorch.org/models).")
  init = lambda r: student.init(r, images, jnp.zeros((1, tag_dim)))["params"]
  tx = _student_tx(sc)
  if sc.backbone == "vgg16" and sc.vgg_weights:
    from backbones_jax import vgg as vgg_lib
    _, vgg_params = vgg_lib.load_torchvision_vgg(sc.vgg_weights, depth=16,
                                                taps=(vgg_lib.all_taps(16)[-1],))
    params = models.load_vgg_into_student(
        jax.jit(init)(jax.random.key(config.seed + 2000 * bits, impl="rbg")), vgg_params)
    init = lambda r: params
  return student, _jit_create(init, tx, rng, config.seed + 2000 * bits)


def _encoder(student, which: str):
  method = models.Student.encode_image if which == "image" else models.Student.encode_text
  return jax.jit(lambda p, x: student.apply({"params": p}, x, method=method))


def _random_codes(n: int, bits: int, seed: int) -> np.ndarray:
  r = np.random.default_rng([seed, bits, 99])
  return np.where(r.random((n, bits)) < 0.5, 1, -1).astype(np.int8)


def run_stream(config, bits: int, d: data_lib.CrossModalData, split: data_lib.Split,
               teacher_out: dict[str, np.ndarray], workdir: str, mesh) -> list[dict[str, float]]:
  """The online rounds for one code length; returns one metrics dict per finished round."""
  sc = config.student
  student, state = build_student(config, bits, d.tags.shape[1])
  sdir = os.path.join(workdir, f"K{bits}", "student")
  ckpt = Checkpointer(sdir, max_to_keep=config.checkpoint.max_to_keep, every_steps=1)
  state = parallel.replicate(state, mesh)
  state, extra, restored = ckpt.restore_or(state)
  stream = online.StreamState.empty(bits)
  history: list[dict[str, float]] = []
  keys = ["round", "db_size", "student_i2t", "student_t2i", "teacher_i2t", "teacher_t2i",
          "random_i2t", "random_t2i", "loss", "teacher_fused"]
  if extra is not None:
    stream = online.StreamState.from_extra(extra)
    history = [dict(zip(keys, map(float, row))) for row in np.asarray(extra["history"])]
    for h in history:  # the curves of finished rounds, from the JSON each round wrote
      h["metrics"] = _load_round_metrics(workdir, bits, int(h["round"]))
    print(f"[K={bits}] resumed the stream after round {stream.rounds_done} "
          f"(database {stream.size} items, step {restored}).")
  chunks = online.make_stream(split.database, chunk_size=config.stream.chunk_size,
                              num_rounds=config.stream.num_rounds or None,
                              merge_remainder=config.stream.get("merge_remainder", True))
  loss_cfg = online.StudentLossConfig(
      w_distill=sc.w_distill, w_label=sc.w_label, w_contrast=sc.w_contrast, w_quant=sc.w_quant,
      w_balance=sc.w_balance, distill_mode=sc.distill_mode, teacher_sim_mode=sc.teacher_sim_mode,
      teacher_sim_threshold=sc.teacher_sim_threshold, likelihood_scale=sc.likelihood_scale,
      temperature=sc.temperature)
  step_fn = compile_train_step(functools.partial(online.train_step, student=student, cfg=loss_cfg),
                               mesh)
  enc_img, enc_txt = _encoder(student, "image"), _encoder(student, "text")
  eb = config.eval.batch_size
  top_k = config.eval.top_k or None
  rand = _random_codes(len(d), bits, config.seed)
  q = split.query

  def images_of(idx):
    return (data_lib.imagenet_normalize(np.stack([d.image(int(i), sc.image_size) for i in idx])),)

  def encode(params, idx, desc=None):
    ic = online.encode_in_batches(lambda x: enc_img(params, x), images_of, idx, batch_size=eb,
                                  desc=desc)
    tc = online.encode_in_batches(lambda x: enc_txt(params, x), lambda i: (d.tags[i],), idx,
                                  batch_size=eb)
    return ic, tc

  writer = MetricWriter(sdir)
  steps = sc.steps_per_round
  try:
    for r in range(stream.rounds_done, len(chunks)):
      new, anchors = online.round_pool(chunks, r, seed=config.seed,
                                       num_anchors=config.stream.num_anchors)
      pool = np.concatenate([new, anchors])
      ds = data_lib.image_dataset(d, pool, batch_size=sc.batch_size,
                                  seed=config.seed * 100003 + r, image_size=sc.image_size)
      bar = progress(steps, desc=f"student K={bits} round {r + 1}/{len(chunks)}")
      losses = []
      # The round's batches ds[0..steps) read ahead by threads (image decoding releases the GIL);
      # the same batches as random access, so a redone round sees exactly the same data.
      import grain
      threads = max(1, sc.data_threads)
      batches = iter(ds[0:steps].to_iter_dataset(
          grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads)))
      for s in range(steps):
        b = next(batches)
        batch = {"image": b["image"], "bow": b["bow"], "labels": b["labels"],
                 "teacher": teacher_out["fused"][b["index"]]}
        gstep = r * steps + s
        state, metrics = step_fn(state, parallel.shard_batch(batch, mesh),
                                 jax.random.fold_in(state.rng, gstep))
        if (s + 1) % max(1, config.log_every_steps) == 0 or s + 1 == steps:
          host = parallel.to_host(metrics)
          check_finite(host, step=gstep + 1, last_checkpoint=ckpt.latest_step(),
                       checkpoint_dir=ckpt.directory)
          writer.write(gstep + 1, {**host, "round": r + 1})
          losses.append(float(host["loss"]))
          bar.set_postfix(loss=f"{float(host['loss']):.4f}", refresh=False)
        bar.update(1)
      bar.close()
      params = parallel.to_host(state.params)
      # Encode the new chunk once and append it; the old database codes are not touched.
      stream = stream.add(new, *encode(params, new))
      if config.stream.reencode:
        stream = stream.reencode(*encode(params, stream.indices, desc="re-encode database"))
      qi, qt = encode(params, q)
      db, lq, ldb = stream.indices, d.labels[q], d.labels[stream.indices]
      ev = functools.partial(online.evaluate, query_labels=lq, db_labels=ldb,
                             map_fn=retrieval.mean_average_precision, top_k=top_k)
      # mAP@all, precision@N and PR curves, both directions, for the student and the teacher.
      report = functools.partial(
          online.retrieval_report, query_labels=lq, db_labels=ldb, top_k=top_k,
          ns=online.precision_grid(db_size=stream.size, n_max=config.eval.get("precision_n_max", 1000),
                                   ns=tuple(config.eval.get("precision_ns", ()))))
      curves = {
          "student": report(query_image_codes=qi, query_text_codes=qt,
                            db_image_codes=stream.image_codes, db_text_codes=stream.text_codes),
          "teacher": report(query_image_codes=teacher_out["image"][q],
                            query_text_codes=teacher_out["text"][q],
                            db_image_codes=teacher_out["image"][db],
                            db_text_codes=teacher_out["text"][db])}
      st = {k: curves["student"][k]["map"] for k in ("i2t", "t2i")}
      te = {k: curves["teacher"][k]["map"] for k in ("i2t", "t2i")}
      ra = ev(query_image_codes=rand[q], query_text_codes=rand[q], db_image_codes=rand[db],
              db_text_codes=rand[db])
      fused = online.binarize(teacher_out["fused"])
      tf = retrieval.mean_average_precision(fused[q], fused[db], lq, ldb, top_k=top_k)
      row = {"round": r + 1, "db_size": stream.size, "student_i2t": st["i2t"],
             "student_t2i": st["t2i"], "teacher_i2t": te["i2t"], "teacher_t2i": te["t2i"],
             "random_i2t": ra["i2t"], "random_t2i": ra["t2i"],
             "loss": losses[-1] if losses else float("nan"), "teacher_fused": float(tf)}
      history.append(row)
      print(f"[K={bits}] round {r + 1}/{len(chunks)} db={stream.size:6d}  student I->T "
            f"{st['i2t']:.4f} T->I {st['t2i']:.4f} | teacher {te['i2t']:.4f} {te['t2i']:.4f} "
            f"(fused {tf:.4f}) | "
            f"random {ra['i2t']:.4f} {ra['t2i']:.4f}", flush=True)
      writer.write((r + 1) * steps, {f"map/{k}": v for k, v in row.items()
                                     if k not in ("round", "db_size")})
      row["metrics"] = curves
      _write_round_metrics(config, workdir, bits, row)  # before the checkpoint that marks it done
      extra = {**stream.to_extra(),
               "history": np.array([[h[k] for k in keys] for h in history], np.float64)}
      ckpt.save((r + 1) * steps, state, extra=extra, force=True)
  finally:
    writer.close()
    ckpt.close()
  return history, stream, student, parallel.to_host(state.params)


# -------------------------------------------------------------------------------------- reporting


def format_table(results: dict) -> str:
  lines = [f"{'bits':>4} {'round':>5} {'db':>7} | {'student I->T':>12} {'T->I':>6} | "
           f"{'teacher I->T':>12} {'T->I':>6} {'fused':>6} | {'random I->T':>11} {'T->I':>6}"]
  for k, res in results["bits"].items():
    for h in res["rounds"]:
      lines.append(f"{k:>4} {int(h['round']):>5} {int(h['db_size']):>7} | "
                   f"{h['student_i2t']:12.4f} {h['student_t2i']:6.4f} | "
                   f"{h['teacher_i2t']:12.4f} {h['teacher_t2i']:6.4f} {h['teacher_fused']:6.4f} | "
                   f"{h['random_i2t']:11.4f} {h['random_t2i']:6.4f}")
  # Last round: precision@N at a few N of the grid, and last-round vs average-over-rounds mAP.
  tail = []
  for k, res in results["bits"].items():
    last = res["rounds"][-1] if res["rounds"] else None
    if not last or not last.get("metrics"):
      continue
    grid = last["metrics"]["student"]["i2t"]["precision_at_n"]["n"]
    show = [n for n in (1, 10, 100, 500, 1000, 2000, 5000) if n in grid] or grid[-1:]
    for model in ("student", "teacher"):
      for direction, name in (("i2t", "I->T"), ("t2i", "T->I")):
        pn = dict(zip(grid, last["metrics"][model][direction]["precision_at_n"]["precision"]))
        mean = float(np.mean([h[f"{model}_{direction}"] for h in res["rounds"]]))
        tail.append(f"{k:>4} {model:>7} {name} | mAP last {last[f'{model}_{direction}']:.4f} "
                    f"avg over {len(res['rounds'])} rounds {mean:.4f} | "
                    + " ".join(f"P@{n} {pn[n]:.4f}" for n in show))
  if tail:
    lines += ["", "last round: mAP (and its average over the rounds), precision@N:"] + tail
  return "\n".join(lines)


def save_table_png(table: str, path: str) -> None:
  """The printed results table (``format_table``) rendered as a monospace PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  lines = table.splitlines()
  fig = plt.figure(figsize=(0.09 * max(map(len, lines)) + 0.4, 0.17 * len(lines) + 0.3))
  fig.text(0.02, 0.98, table, family="monospace", fontsize=9, va="top", ha="left")
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_map_per_round(results: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
  for ax, direction, title in ((axes[0], "i2t", "image -> text"), (axes[1], "t2i", "text -> image")):
    for i, (k, res) in enumerate(results["bits"].items()):
      rounds = [h["round"] for h in res["rounds"]]
      colour = f"C{i}"
      ax.plot(rounds, [h[f"student_{direction}"] for h in res["rounds"]], "-o", color=colour,
              label=f"student {k} bits")
      ax.plot(rounds, [h[f"teacher_{direction}"] for h in res["rounds"]], "--", color=colour,
              label=f"teacher {k} bits")
      ax.plot(rounds, [h[f"random_{direction}"] for h in res["rounds"]], ":", color="gray",
              label="random codes" if i == 0 else None)
    ax.set_title(f"mAP per round, {title}")
    ax.set_xlabel("round (chunks seen)")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # whole rounds only
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("mAP")
  axes[1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


_DIRECTIONS = (("i2t", "image -> text"), ("t2i", "text -> image"))


def plot_retrieval_curves(curves: dict[str, dict], path: str, *, title: str,
                          kinds: tuple[str, ...] = ("precision_at_n", "pr")) -> None:
  """PNG of ``online.retrieval_report`` outputs: one row per kind (precision@N, PR by Hamming
  radius), one column per direction; ``curves`` maps a legend name to a report."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(len(kinds), 2, figsize=(9, 3.6 * len(kinds)), squeeze=False)
  for row, kind in enumerate(kinds):
    for col, (direction, dname) in enumerate(_DIRECTIONS):
      ax = axes[row][col]
      for i, (name, rep) in enumerate(curves.items()):
        m = rep[direction]
        style = "--" if name.startswith("teacher") else "-"
        colour = f"C{i // 2}" if len(curves) > 2 else f"C{i}"
        if kind == "pr":
          ax.plot(m["pr"]["recall"], m["pr"]["precision"], style, marker=".", color=colour,
                  label=f"{name} (mAP {m['map']:.3f})")
          ax.set_xlabel("recall")
          ax.set_xlim(0, 1)
        else:
          ax.plot(m["precision_at_n"]["n"], m["precision_at_n"]["precision"], style, color=colour,
                  label=f"{name} (mAP {m['map']:.3f})")
          ax.set_xlabel("N (top-N retrieved)")
      ax.set_ylabel("precision")
      ax.set_ylim(0, 1.02)
      ax.set_title(f"{'PR by Hamming radius' if kind == 'pr' else 'precision@N'}, {dname}",
                   fontsize=9)
      ax.grid(alpha=0.3)
      ax.legend(fontsize=6)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _round_path(workdir: str, bits: int, round_number: int, suffix: str) -> str:
  return os.path.join(workdir, f"K{bits}", "rounds", f"round_{round_number:03d}{suffix}")


def _write_round_metrics(config, workdir: str, bits: int, row: dict) -> None:
  """``K<bits>/rounds/round_<r>.json`` (+ ``.png``): the round's flat row and its curves."""
  if not parallel.is_main_process():
    return
  r = int(row["round"])
  os.makedirs(os.path.dirname(_round_path(workdir, bits, r, ".json")), exist_ok=True)
  save_json(_round_path(workdir, bits, r, ".json"), {"bits": bits, **row})
  if config.eval.get("round_png", True):
    plot_retrieval_curves({f"{name} {bits}b": m for name, m in row["metrics"].items()},
                          _round_path(workdir, bits, r, ".png"),
                          title=f"K={bits}, round {r}, database {int(row['db_size'])}")


def _load_round_metrics(workdir: str, bits: int, round_number: int) -> dict | None:
  """The curves a finished round wrote (None if its JSON is missing, e.g. an older run)."""
  import json
  path = _round_path(workdir, bits, round_number, ".json")
  try:
    with open(path) as f:
      return json.load(f).get("metrics")
  except (OSError, ValueError):
    return None


def _summary(history: list[dict]) -> dict:
  """Last-round and average-over-rounds mAP of the student (both are reported in the literature)."""
  keys = ("student_i2t", "student_t2i", "teacher_i2t", "teacher_t2i", "random_i2t", "random_t2i")
  return {"rounds": len(history),
          "last_round": {k: history[-1][k] for k in keys},
          "average_over_rounds": {k: float(np.mean([h[k] for h in history])) for k in keys}}


# ------------------------------------------------------------------------------------------- main


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Fail before any training on settings that would only break later (``ConfigError``)."""
  from train.config_lib import ConfigError  # a ValueError: `main` turns it into a clean exit
  bits = tuple(config.bits)
  bad = [b for b in bits if b <= 0 or b % 8]
  if not bits or bad:
    raise ConfigError(f"config.bits must be positive multiples of 8 (codes are bit-packed for "
                     f"retrieval); got {bits}. Use e.g. --config.bits=(16,32,64).")
  for name in ("student.batch_size", "teacher.batch_size"):
    bs = config[name.split(".")[0]][name.split(".")[1]]
    if bs <= 0 or bs % num_devices:
      raise ConfigError(f"config.{name}={bs} must be a positive multiple of the {num_devices} "
                       f"devices the batch is split over.")
  for name, v in (("stream.chunk_size", config.stream.chunk_size),
                  ("student.steps_per_round", config.student.steps_per_round),
                  ("teacher.steps", config.teacher.steps), ("eval.batch_size", config.eval.batch_size)):
    if v <= 0:
      raise ConfigError(f"config.{name} must be > 0; got {v}.")
  if config.student.distill_mode not in ("likelihood", "mse"):
    raise ConfigError(f"config.student.distill_mode must be 'likelihood' or 'mse'; got "
                     f"{config.student.distill_mode!r}.")
  if config.student.teacher_sim_mode not in ("threshold", "soft"):
    raise ConfigError(f"config.student.teacher_sim_mode must be 'threshold' or 'soft'; got "
                     f"{config.student.teacher_sim_mode!r}.")
  if config.clip.get("preprocess", "clip") not in features_lib.PREPROCESS_MODES:
    raise ConfigError(f"config.clip.preprocess must be one of {features_lib.PREPROCESS_MODES} "
                      f"(clip: OpenAI's resize + centre crop; squash: the old square resize); got "
                      f"{config.clip.preprocess!r}.")
  n_max, ns = config.eval.get("precision_n_max", 1000), tuple(config.eval.get("precision_ns", ()))
  if (not ns and (not isinstance(n_max, int) or n_max < 1)) or any(
      not isinstance(n, int) or n < 1 for n in ns):
    raise ConfigError(f"precision@N needs positive integers: config.eval.precision_n_max="
                      f"{n_max!r}, config.eval.precision_ns={ns!r} (e.g. (200,500,1000)).")
  if config.get("tag_vocab") and not os.path.isfile(config.tag_vocab):
    raise ConfigError(f"config.tag_vocab={config.tag_vocab!r} does not exist: give a text file "
                      f"with one tag word per line (line j names BoW column j), or leave it empty.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the whole pipeline (module docstring) and returns the results dict."""
  t0 = time.time()
  mesh = parallel.make_mesh()
  validate_config(config, mesh.devices.size)
  os.makedirs(workdir, exist_ok=True)
  d, split = prepare_data(config, workdir)
  print(f"data: {d.name}, {len(d)} items, {d.labels.shape[1]} labels, {d.tags.shape[1]}-d tags; "
        f"{split.query.size} queries, {split.database.size} database, {split.train.size} "
        f"teacher-train; devices: {jax.device_count()} x {jax.devices()[0].platform}", flush=True)
  feats = features_lib.standardize(clip_features(config, d, workdir), split.train)
  results = {"preset": config.get("preset", ""), "dataset": d.name, "num_items": len(d),
             "num_query": int(split.query.size), "num_database": int(split.database.size),
             "chunk_size": config.stream.chunk_size, "clip": config.clip.name,
             "student_backbone": config.student.backbone,
             "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}", "bits": {}}
  results["text_source"], results["bow_source"] = d.text_source, d.bow_source
  results["metrics_note"] = (
      "per round (rounds[i].metrics) and for the last round (final.metrics), for the student and "
      "the teacher, i2t = image queries vs text database and t2i = text queries vs image "
      "database: map = mAP over the whole database streamed so far (DCMH calc_map), "
      "precision_at_n = mean precision of the top-N list, pr = precision/recall of Hamming "
      "radius 0..K (averaged over queries); summary = last-round and average-over-rounds mAP")
  final_curves = {}
  for bits in config.bits:
    teacher, tparams = train_teacher(config, bits, feats, d, split, workdir, mesh)
    tout = teacher_outputs(teacher, tparams, feats, config.eval.batch_size)
    history, stream, student, sparams = run_stream(config, bits, d, split, tout, workdir, mesh)
    results["bits"][str(bits)] = {"rounds": history, "final": history[-1] if history else None,
                                  "summary": _summary(history) if history else None}
    last = history[-1].get("metrics") if history else None
    if last:
      final_curves.update({f"{name} {bits}b": m for name, m in last.items()})
  results["time_s"] = round(time.time() - t0, 1)
  table = format_table(results)
  if parallel.is_main_process():
    print("\nmAP (DCMH calc_map over the database streamed so far), after each round. teacher "
          "I->T/T->I: its per-modality codes; fused: its fused codes on both sides (the "
          "distillation target); random: random +-1 codes:\n" + table, flush=True)
    save_json(os.path.join(workdir, "results.json"), results)
    with open(os.path.join(workdir, "results.txt"), "w") as f:
      f.write(table + "\n")
    save_table_png(table, os.path.join(workdir, "results_table.png"))
    plot_map_per_round(results, os.path.join(workdir, "map_per_round.png"))
    if final_curves:
      plot_retrieval_curves(final_curves, os.path.join(workdir, "precision_at_n.png"),
                            title="precision@N after the last round", kinds=("precision_at_n",))
      if config.eval.pr_curve:
        plot_retrieval_curves(final_curves, os.path.join(workdir, "pr_curves.png"),
                              title="PR by Hamming radius after the last round", kinds=("pr",))
    print(f"results: {os.path.join(workdir, 'results.json')} (+ map_per_round.png, "
          f"precision_at_n.png, pr_curves.png; per round: K<bits>/rounds/round_<r>.json/.png); "
          f"{results['time_s']} s", flush=True)
  return results


# Settings a rerun in the same --workdir may change (besides train.config_lib.SHARED_RESUMABLE_KEYS):
# more rounds, other code lengths (each has its own K<bits>/ stream), and settings that do not
# change what is computed. Anything else stops the rerun (docs/reliability.md).
RESUMABLE_KEYS = ("stream.num_rounds", "bits", "eval.pr_curve", "eval.round_png", "student.data_threads",
                  "clip.batch_size", "data_cache_gb")


def _validate(config: ml_collections.ConfigDict) -> None:
  from train import config_lib
  validate_config(config, jax.device_count())
  config_lib.require_choice(config, "dataset", sorted({"synthetic", *data_lib.DATASETS}))
  config_lib.require_choice(config, "student.backbone", ("small_cnn", "vgg16"))
  sc = config.student
  if sc.backbone == "vgg16" and not sc.vgg_weights and not sc.allow_random_vgg:
    raise config_lib.ConfigError(
        "config.student.backbone='vgg16' needs ImageNet weights: pass --config.student.vgg_weights="
        "<path to torchvision vgg16-397923af.pth>, or --config.student.allow_random_vgg=true to train "
        "VGG16 from scratch, or --config.student.backbone=small_cnn.")
  if sc.backbone == "vgg16" and sc.vgg_weights and not os.path.isfile(sc.vgg_weights):
    raise FileNotFoundError(f"config.student.vgg_weights={sc.vgg_weights!r} does not exist. Put torchvision's "
                            "ImageNet VGG16 state dict there (vgg16-397923af.pth from download.pytorch.org/models).")
  if not config.get("data_cache_gb", 0.0) >= 0:
    raise config_lib.ConfigError(f"config.data_cache_gb={config.data_cache_gb} must be >= 0 (GB of decoded images "
                                 "kept in memory with --config.data_dir; 0 turns the cache off).")
  name, tok = config.clip.name, config.clip.get("tokenizer", "")
  if name != "tiny" and not tok and (os.path.isfile(name) or name.endswith((".pt", ".pth"))):
    raise config_lib.ConfigError(
        f"config.clip.name={name!r} is a checkpoint file, which holds no tokenizer: pass "
        "--config.clip.tokenizer=<a local CLIP tokenizer directory with vocab.json and merges.txt, "
        "or a hub id such as openai/clip-vit-base-patch32>.")


def main(argv=None):
  """`python -m train.lcdh`: user errors print one `error:` line and exit with code 2 (train.cli)."""
  from train import cli
  return cli.run(train_and_evaluate, default_config=DEFAULT_CONFIG, argv=argv,
                 resumable_keys=RESUMABLE_KEYS, validate=_validate)


if __name__ == "__main__":
  main()
