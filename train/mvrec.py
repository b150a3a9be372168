"""`python -m train.mvrec`: the MVTec-FS few-shot protocol for MVREC's classifiers.

Per category: multi-view AlphaCLIP features of the support pool (train split) and the queries
(valid split) -- from a synthetic dataset and a tiny random AlphaCLIP (`demo`), from MVTec-FS
images and an AlphaCLIP checkpoint (`mvtec_fs`), or read from official MVREC feature buffers
(`official_features`) -- then K in {1, 3, 5} x seeds 0..4 samplings of every classifier, with
and without multi-view fusion. Writes `results.json` (per-sampling values, mean, std), a
printed table, `results.txt`, `metrics.jsonl` and `confusion/<category>_<classifier>.png`.
With `--config.data_dir` the images come from prepared tfds datasets (docs/data.md; prepared
from the raw layout on first use): the same features, cache entries and results.
See train/configs/mvrec.py for the commands.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "mvrec.py") + ":demo"

CLASSIFIER_NAMES = {"zero_shot": "Zero-shot CLIP", "tip_adapter": "Tip-Adapter", "tip_adapter_f": "Tip-Adapter-F",
                    "zip_adapter": "Zip-Adapter", "zip_adapter_f": "Zip-Adapter-F"}


# ----------------------------------------------------------------------------------------- features
def discover_official(features_dir: str | os.PathLike) -> dict[str, tuple[Path, Path]]:
  """{category: (support .pt, query .pt)} for every pair of buffers in `features_dir`.

  MVTec-FS categories are found under any accepted naming (see `features.find_official_buffers`);
  any other `<name>_support.pt` with a matching `<name>_query.pt` (searched recursively) is taken
  as category `<name>` (a leading `14_` / `mvtec_` and trailing `_data` are stripped).
  """
  from mvrec_jax import features  # pylint: disable=import-outside-toplevel

  d = Path(features_dir).expanduser()
  if not str(features_dir) or not d.is_dir():
    raise FileNotFoundError(
        f"official_features needs --config.features_dir=<directory of official MVREC feature buffers>; "
        f"{str(features_dir)!r} is not a directory. The official code writes them to buffer/mso/AlphaClip_ViT-L/"
        "14_mvtec_<category>_data_{support,query}.pt; <category>_{support,query}.pt also works.")
  found: dict[str, tuple[Path, Path]] = {}
  for cat in features.official_categories(d):
    found[cat] = features.find_official_buffers(d, cat)
  taken = {p.resolve() for pair in found.values() for p in pair}
  for sup in sorted(d.rglob("*support.pt")):
    if sup.resolve() in taken:
      continue
    qry = sup.with_name(sup.name[:-len("support.pt")] + "query.pt")
    if not qry.is_file():
      continue
    name = re.sub(r"^(14_)?(mvtec_)?", "", sup.name[:-len("support.pt")].rstrip("_"))
    name = re.sub(r"_data$", "", name) or "category"
    while name in found:
      name += "_"
    found[name] = (sup, qry)
  if not found:
    raise FileNotFoundError(f"No official feature buffers (<category>_support.pt + <category>_query.pt) in {d}.")
  return dict(sorted(found.items()))


def _official_category(paths: tuple[Path, Path], category: str) -> dict[str, Any]:
  from mvrec_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  from mvrec_jax import features  # pylint: disable=import-outside-toplevel

  s = features.load_official_features(paths[0], cls_only=True)
  q = features.load_official_features(paths[1], cls_only=True)
  num_classes = int(max(s.labels.max(), q.labels.max())) + 1
  names = data_lib.OFFICIAL_CLASS_NAMES.get(category)
  if names is None or len(names) < num_classes:  # unknown category: a class per label id
    names = tuple(f"class_{i}" for i in range(num_classes))
  return dict(support=s.features, support_labels=s.labels, query=q.features, query_labels=q.labels,
              class_names=tuple(names), text=None)


class _Backbone:
  """The AlphaCLIP of a run (built once) and its prompt embedding function."""

  def __init__(self, config: ml_collections.ConfigDict, class_names_pool: list[str]):
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    from backbones_jax import alpha_clip  # pylint: disable=import-outside-toplevel
    from backbones_jax import tokenizer as tok_lib  # pylint: disable=import-outside-toplevel

    ac = config.alpha_clip
    self.prompt = config.prompt
    if ac.preset == "tiny":
      prompts = [self._prompt(n) for n in class_names_pool]
      self.tokenizer = tok_lib.WordTokenizer.from_texts(prompts, context_length=16)
      spec = alpha_clip.tiny_alpha_clip_spec(
          with_text=True, width=ac.tiny_width, layers=ac.tiny_layers, image_size=ac.tiny_image_size,
          patch_size=ac.tiny_patch_size, projection_dim=ac.tiny_projection_dim,
          vocab_size=self.tokenizer.vocab_size, context_length=16, eos_token_id=self.tokenizer.eos_token_id)
      self.model, self.params = alpha_clip.init_alpha_clip(spec, seed=int(config.seed))
      self.params = _spread_random_embeddings(self.params, float(ac.tiny_embed_scale), float(ac.tiny_alpha_std),
                                              int(config.seed))
      self.name = (f"tiny-alphaclip-w{ac.tiny_width}-l{ac.tiny_layers}-s{ac.tiny_image_size}-seed{config.seed}"
                   f"-x{ac.tiny_embed_scale:g}-a{ac.tiny_alpha_std:g}")
    else:
      if not ac.visual_ckpt or not Path(ac.visual_ckpt).expanduser().is_file():
        raise FileNotFoundError(
            f"mvtec_fs needs an AlphaCLIP visual checkpoint: --config.alpha_clip.visual_ckpt=<file> "
            f"(got {ac.visual_ckpt!r}). Download clip_l14_grit20m_fultune_2xe.pth (ViT-L/14) from the AlphaCLIP "
            "release (github SunzeY/AlphaCLIP) and put it e.g. in weights/.")
      clip_ckpt = ac.clip_ckpt or None
      if clip_ckpt and not Path(clip_ckpt).expanduser().is_file():
        raise FileNotFoundError(f"--config.alpha_clip.clip_ckpt={clip_ckpt!r} does not exist (OpenAI ViT-L-14.pt, "
                                "for the text tower; leave it empty to skip zero-shot).")
      self.model, self.params = alpha_clip.load_alpha_clip(ac.visual_ckpt, clip_ckpt, preset=ac.preset or None)
      self.tokenizer = None
      if self.model.spec.text is not None:
        try:
          self.tokenizer = tok_lib.CLIPTokenizer(ac.tokenizer)
        except Exception as e:  # noqa: BLE001 - offline without a cached tokenizer
          print(f"warning: no CLIP tokenizer ({e}); zero-shot is skipped.", flush=True)
      self.name = f"alphaclip-{ac.preset}-{Path(ac.visual_ckpt).stem}"
    self._jnp = jnp

  def _prompt(self, name: str) -> str:
    return self.prompt.format(name.replace("_", " "))

  def encode_fn(self):
    from mvrec_jax import features  # pylint: disable=import-outside-toplevel
    return features.alpha_clip_encode_fn(self.model)

  def text_embeddings(self, class_names) -> np.ndarray | None:
    from backbones_jax import alpha_clip  # pylint: disable=import-outside-toplevel
    if self.tokenizer is None or self.model.spec.text is None:
      return None
    ids, mask = self.tokenizer([self._prompt(n) for n in class_names])
    return np.asarray(alpha_clip.encode_text(self.model, self.params, ids, mask))


def _spread_random_embeddings(params, embed_scale: float, alpha_std: float, seed: int):
  """Random-weight demo only: scale the patch embedding and draw `conv1_alpha` ~ N(0, alpha_std).

  With the standard init (std 0.02 patch embedding, zero `conv1_alpha` as AlphaCLIP starts) the
  class token of a random tiny ViT is nearly constant (cosine ~0.9999 between all images) and
  ignores the alpha mask; these two changes make random features depend on the crop and on the
  defect region, so the demo's few-shot numbers are above chance. Trained checkpoints are untouched.
  """
  import jax  # pylint: disable=import-outside-toplevel
  emb = dict(params["vision_model"]["embeddings"])
  emb["patch_embedding"] = {"kernel": emb["patch_embedding"]["kernel"] * embed_scale}
  shape = emb["conv1_alpha"]["kernel"].shape
  emb["conv1_alpha"] = {"kernel": alpha_std * jax.random.normal(jax.random.key(seed + 1), shape)}
  vision = dict(params["vision_model"], embeddings=emb)
  return dict(params, vision_model=vision)


def _prepared_category(config, category: str, data_root: str, config_root: str):
  """(CategoryData, load_image) of ``category`` read from the prepared tfds dataset in ``config.data_dir``.

  On first use the category is prepared there from the raw layout (images under ``data_root``, CSVs
  under ``config_root``), with tfds's progress bars. When the CSVs are at hand, the prepared
  annotations must equal them (else the features, cached by instance, would describe other data).
  """
  from mvrec_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  from mvrec_jax import tfds_builder  # pylint: disable=import-outside-toplevel
  from train.config_lib import ConfigError  # pylint: disable=import-outside-toplevel

  data_dir = config.data_dir
  has_csvs = bool(config_root) and _has_config(config_root, category)
  if not tfds_builder.is_prepared(data_dir, category):
    if not has_csvs or not data_root or not Path(data_root).expanduser().is_dir():
      raise FileNotFoundError(
          f"MVTec-FS category {category!r} is not prepared in data_dir={data_dir!r}, and there is no raw layout to "
          f"prepare it from (data_root={data_root!r}, config_root={config_root!r}): set --config.data_root=<MVTec-FS "
          "images> (and --config.config_root=<folder of <category>_config1/>); it is prepared once. "
          + data_lib.DATA_HELP)
    print(f"data: preparing the tfds dataset {tfds_builder.BUILDER_NAME}/{category} in {data_dir} from {data_root} "
          "(once)", flush=True)
    tfds_builder.prepare(data_root, data_dir, category=category, config_root=config_root)
  cat = tfds_builder.load_prepared(data_dir, category)
  if has_csvs:
    raw = data_lib.load_category(config_root, category)  # annotations only
    same = raw.class_names == cat.class_names and all(
        len(raw.split(s)) == len(cat.split(s)) and all(
            a.key == b.key and a.bbox == b.bbox and np.array_equal(a.polygon, b.polygon)
            for a, b in zip(raw.split(s), cat.split(s))) for s in data_lib.SPLITS)
    if not same:
      raise ConfigError(
          f"the prepared category {category!r} in data_dir={data_dir!r} differs from the annotation CSVs under "
          f"{config_root!r} (other instances, classes or polygons): delete "
          f"{tfds_builder.dataset_dir(data_dir, category)} to prepare it again, or use another data_dir.")
  return cat, tfds_builder.image_loader(data_dir, category, cat)


def _image_category(config, workdir: str, category: str, backbone: _Backbone, data_root: str,
                    config_root: str) -> dict[str, Any]:
  from mvrec_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  from mvrec_jax import features  # pylint: disable=import-outside-toplevel

  if config.get("data_dir"):  # prepared tfds records (docs/data.md): the same views, features and cache entries
    cat, load_image = _prepared_category(config, category, data_root, config_root)
  else:
    cat, load_image = data_lib.load_category(config_root, category, data_root=data_root), None
  cache_dir = config.cache_dir or os.path.join(workdir, "features")
  kw = dict(dataset=f"{config.source}-{category}", backbone=backbone.name, method=config.views.method,
            crop_sizes=tuple(config.views.crop_sizes), resize=tuple(config.views.resize),
            batch_size=int(config.views.batch_size), cache_dir=cache_dir, load_image=load_image)
  sup = features.extract_features(backbone.encode_fn(), backbone.params, cat.train, split="train", **kw)
  qry = features.extract_features(backbone.encode_fn(), backbone.params, cat.valid, split="valid", **kw)
  return dict(support=sup.features, support_labels=sup.labels, query=qry.features, query_labels=qry.labels,
              class_names=cat.class_names, text=backbone.text_embeddings(cat.class_names))


def _category_sources(config, workdir: str):
  """Yields (category, loader()) for the configured source."""
  source = config.source
  if source == "official_features":
    found = discover_official(config.features_dir)
    cats = list(config.categories) or list(found)
    missing = [c for c in cats if c not in found]
    if missing:
      raise FileNotFoundError(f"No official buffers for {missing} in {config.features_dir}; found {list(found)}.")
    return [(c, (lambda c=c: _official_category(found[c], c))) for c in cats]
  from mvrec_jax import data as data_lib  # pylint: disable=import-outside-toplevel

  if source == "synthetic":
    from mvrec_jax import synthetic  # pylint: disable=import-outside-toplevel
    data_root = config.data_root or os.path.join(workdir, "data")
    cats = list(config.categories) or list(config.synthetic.categories)
    synthetic.make_dataset(data_root, categories=tuple(config.synthetic.categories),
                           image_size=int(config.synthetic.image_size), n_train=int(config.synthetic.n_train),
                           n_valid=int(config.synthetic.n_valid), seed=int(config.seed))
    config_root = config.config_root or data_root
    pool = sorted({k for c in config.synthetic.categories for k in synthetic.CATEGORIES[c]})
  elif source == "mvtec_fs":
    data_root = config.data_root
    has_root = bool(data_root) and Path(data_root).expanduser().is_dir()
    prepared = []
    if config.get("data_dir"):  # prepared categories need no raw layout
      from mvrec_jax import tfds_builder  # pylint: disable=import-outside-toplevel
      prepared = tfds_builder.prepared_categories(config.data_dir)
    if not has_root and not prepared:
      raise FileNotFoundError(
          f"mvtec_fs needs --config.data_root=<MVTec-FS images> (got {data_root!r}): the unpacked MVTec-FS image "
          "archive (<root>/image/<category>/...) or plain MVTec AD (<root>/<category>/test/...)"
          + (f"; data_dir={config.data_dir!r} holds no prepared category. " if config.get("data_dir") else ". ")
          + data_lib.DATA_HELP)
    config_root = config.config_root or (data_root if has_root else "")
    found = [c for c in data_lib.MVTEC_FS_CATEGORIES if config_root and _has_config(config_root, c)]
    cats = list(config.categories) or found + [c for c in prepared if c not in found]
    if not cats:
      raise FileNotFoundError(
          f"No MVTec-FS annotation CSVs (<category>_config1/train.csv) under {config_root!r} (or its CONFIG/); "
          "set --config.config_root to the folder holding <category>_config1/. " + data_lib.DATA_HELP)
    pool = sorted({n for c in cats for n in data_lib.OFFICIAL_CLASS_NAMES.get(c, ())})
  else:
    raise ValueError(f"config.source={source!r}; expected synthetic, mvtec_fs or official_features.")
  backbone = {}

  def loader(c):
    if "b" not in backbone:
      backbone["b"] = _Backbone(config, pool)
    return _image_category(config, workdir, c, backbone["b"], data_root, config_root)

  return [(c, (lambda c=c: loader(c))) for c in cats]


def _has_config(config_root, category) -> bool:
  from mvrec_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  try:
    data_lib.config_dir(config_root, category)
    return True
  except (FileNotFoundError, ValueError):
    return False


# ----------------------------------------------------------------------------------------- reporting
def format_table(results: dict, shots, classifiers) -> str:
  """Category x K table of accuracy (%) mean +- std over samplings, fused views / view 0, per classifier."""
  lines = []
  cats = list(results["categories"])
  width = max([len(c) for c in cats] + [8])
  for clf in classifiers:
    lines.append(f"\n{CLASSIFIER_NAMES.get(clf, clf)}  (accuracy %, mean ± std over samplings; fused views | view 0)")
    head = " " * width + "".join(f" | {'K=' + str(k):^27}" for k in shots)
    lines.append(head)
    for cat in cats + ["mean"]:
      row = f"{cat:<{width}}"
      for k in shots:
        if cat == "mean":
          m = results["mean_over_categories"][clf][str(k)]
          row += f" | {100 * m['multi_view']:12.2f} {100 * m['view0']:14.2f}"
        else:
          e = results["categories"][cat]["accuracy"][clf][str(k)]
          mv, v0 = e["multi_view"], e["view0"]
          row += (f" | {100 * mv['mean']:6.2f}±{100 * mv['std']:5.2f}"
                  f"  {100 * v0['mean']:6.2f}±{100 * v0['std']:5.2f}")
      lines.append(row)
  return "\n".join(lines)


def save_confusion_png(confusions: dict, class_names, path: str, title: str) -> str:
  """One panel per K: multi-view confusion matrix summed over the samplings."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  ks = list(confusions)
  c = len(class_names)
  fig, axes = plt.subplots(1, len(ks), figsize=(3.2 * len(ks) + 1, 4.0 + 0.12 * c), squeeze=False)
  for ax, k in zip(axes[0], ks):
    cm = np.asarray(confusions[k])
    ax.imshow(cm, cmap="Blues")
    for i in range(c):
      for j in range(c):
        ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_title(f"K={k}", fontsize=9)
    ax.set_xticks(range(c))
    ax.set_yticks(range(c))
    ax.set_xticklabels(class_names, rotation=60, ha="right", fontsize=6)
    ax.set_yticklabels(class_names, fontsize=6)
    ax.set_xlabel("predicted", fontsize=7)
  axes[0][0].set_ylabel("true", fontsize=7)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


# ----------------------------------------------------------------------------------------- main
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the protocol for every category; returns the results dict also written to results.json."""
  import jax  # pylint: disable=import-outside-toplevel

  from mvrec_jax import episodes  # pylint: disable=import-outside-toplevel
  from train import parallel  # pylint: disable=import-outside-toplevel
  from train.metric_writer import MetricWriter, save_json  # pylint: disable=import-outside-toplevel

  t0 = time.time()
  shots = tuple(int(k) for k in config.protocol.shots)
  seeds = tuple(int(s) for s in config.protocol.seeds)
  classifiers = tuple(config.protocol.classifiers)
  unknown = [c for c in classifiers if c not in episodes.CLASSIFIERS]
  if unknown:
    raise ValueError(f"config.protocol.classifiers has unknown {unknown}; choose from {episodes.CLASSIFIERS}.")
  devices = None
  if int(config.protocol.num_devices) > 0:
    devices = jax.local_devices()[:int(config.protocol.num_devices)]
  os.makedirs(workdir, exist_ok=True)
  partial_dir = os.path.join(workdir, "per_category")
  os.makedirs(partial_dir, exist_ok=True)
  writer = MetricWriter(workdir, tensorboard=False)
  sources = _category_sources(config, workdir)
  settings = dict(shots=list(shots), seeds=list(seeds), precision=config.protocol.precision,
                  zip_f=config.zip_f.to_dict(), tip_f=config.tip_f.to_dict(), source=config.source)
  if config.source != "official_features":  # results from images depend on the view preprocessing
    from mvrec_jax import views  # pylint: disable=import-outside-toplevel
    settings["views_preprocessing"] = views.PREPROCESSING_VERSION
  results: dict[str, Any] = {"preset": config.get("preset", ""), "settings": settings, "categories": {}}
  for step, (cat, load) in enumerate(sources):
    part_path = os.path.join(partial_dir, f"{cat}.json")
    if os.path.isfile(part_path):
      with open(part_path) as f:
        part = json.load(f)
      if part.get("settings") == settings and all(c in part["accuracy"] for c in classifiers):
        print(f"[{cat}] already evaluated ({part_path}); skipping.", flush=True)
        results["categories"][cat] = part
        continue
    t_cat = time.time()
    d = load()
    clfs = tuple(c for c in classifiers if c != "zero_shot" or d["text"] is not None)
    if len(clfs) < len(classifiers):
      print(f"[{cat}] no text embeddings (no text tower / prompts): zero-shot skipped.", flush=True)
    num_classes = len(d["class_names"])
    t_feat = time.time() - t_cat
    shortfalls = episodes.support_shortfalls(d["support_labels"], shots, d["class_names"])
    for msg in shortfalls:
      print(f"warning: [{cat}] {msg}", flush=True)
    res = episodes.evaluate_protocol(
        d["support"], d["support_labels"], d["query"], d["query_labels"], num_classes, classifiers=clfs,
        shots=shots, seeds=seeds, precision=config.protocol.precision, text_embeddings=d["text"],
        zip_f=dict(config.zip_f.to_dict()), tip_f=dict(config.tip_f.to_dict(), end_lr=0.0), devices=devices)
    acc = {c: {str(k): {"multi_view": episodes.summarize(e["multi_view"]), "view0": episodes.summarize(e["view0"]),
                        **({"final_loss": e["final_loss"]} if "final_loss" in e else {})}
               for k, e in per_k.items()} for c, per_k in res.items()}
    part = {"settings": settings, "class_names": list(d["class_names"]),
            "num_support": int(len(d["support"])), "num_query": int(len(d["query"])),
            "feature_shape": list(d["support"].shape[1:]), "accuracy": acc,
            "shots_used": {str(k): {d["class_names"][c]: n
                                    for c, n in episodes.shots_used(d["support_labels"], k).items()} for k in shots},
            "warnings": shortfalls,
            "confusion": {c: {str(k): np.asarray(e["confusion"]).tolist() for k, e in per_k.items()}
                          for c, per_k in res.items()},
            "time_s": {"features": round(t_feat, 2), "protocol": round(time.time() - t_cat - t_feat, 2)}}
    if parallel.is_main_process():
      save_json(part_path, part)
      if config.plots:
        for c, per_k in res.items():
          save_confusion_png({k: e["confusion"] for k, e in per_k.items()}, d["class_names"],
                             os.path.join(workdir, "confusion", f"{cat}_{c}.png"),
                             f"{cat} - {CLASSIFIER_NAMES.get(c, c)} (fused views, {len(seeds)} samplings)")
    writer.write(step, {f"{cat}/{c}/k{k}/{m}": acc[c][str(k)][m]["mean"]
                        for c in acc for k in shots for m in ("multi_view", "view0")})
    print(f"[{cat}] {len(d['support'])} support / {len(d['query'])} query instances, {num_classes} classes: "
          f"features {t_feat:.1f} s, protocol {part['time_s']['protocol']:.1f} s", flush=True)
    results["categories"][cat] = part
  writer.close()
  present = [c for c in classifiers if all(c in p["accuracy"] for p in results["categories"].values())]
  results["mean_over_categories"] = {
      c: {str(k): {m: float(np.mean([p["accuracy"][c][str(k)][m]["mean"] for p in results["categories"].values()]))
                   for m in ("multi_view", "view0")} for k in shots} for c in present}
  results["time_s"] = round(time.time() - t0, 1)
  table = format_table(results, shots, present)
  notes = [f"warning: [{c}] {m}" for c, p in results["categories"].items() for m in p.get("warnings", [])]
  if notes:
    table += "\n\n" + "\n".join(notes)
  if parallel.is_main_process():
    print(table, flush=True)
    save_json(os.path.join(workdir, "results.json"), results)
    with open(os.path.join(workdir, "results.txt"), "w") as f:
      f.write(table + "\n")
    print(f"\nresults: {os.path.join(workdir, 'results.json')} (+ results.txt, confusion/*.png); "
          f"{results['time_s']} s", flush=True)
  return results


# Settings a rerun in the same --workdir may change (besides train.config_lib.SHARED_RESUMABLE_KEYS):
# which categories to evaluate (finished ones are reused) and settings that do not change results.
RESUMABLE_KEYS = ("categories", "plots", "protocol.num_devices", "views.batch_size")


def _validate(config: ml_collections.ConfigDict) -> None:
  """Settings checked before any data or model is built."""
  from mvrec_jax import adapters, episodes  # pylint: disable=import-outside-toplevel
  from train import config_lib  # pylint: disable=import-outside-toplevel
  config_lib.require_choice(config, "source", ("synthetic", "mvtec_fs", "official_features"))
  config_lib.require_choice(config, "protocol.classifiers", episodes.CLASSIFIERS)
  config_lib.require_choice(config, "protocol.precision", adapters.PRECISIONS)
  config_lib.require_positive(config, "protocol.shots", "zip_f.steps", "tip_f.steps")
  config_lib.require_positive(config, "protocol.seeds", "protocol.num_devices", allow_zero=True)
  config_lib.require(not (config.get("data_dir") and config.source == "official_features"), "data_dir",
                     "prepared tfds datasets hold images; source=official_features reads feature buffers "
                     "(--config.features_dir). Leave data_dir empty, or use source=mvtec_fs / synthetic.")


def main(argv=None):
  """`python -m train.mvrec`: user errors print one `error:` line and exit with code 2 (train.cli)."""
  from train import cli  # pylint: disable=import-outside-toplevel  (train/__init__ sets the CPU device count)
  return cli.run(train_and_evaluate, default_config=DEFAULT_CONFIG, argv=argv,
                 resumable_keys=RESUMABLE_KEYS, validate=_validate)


if __name__ == "__main__":
  main()
