"""Classify new defect regions with MVREC: a labelled support CSV -> predictions for a query CSV.

The way an inspection engineer uses the method: a few labelled defect instances per class (the
support set) and new instances to classify (the queries), both as CSVs in the MVTec-FS annotation
format (columns ``img_rel_path, x1, x2, y1, y2, label, points``; image paths relative to the CSV
or to ``--image-root``; ``x1..y2`` optional, default the polygon's min/max; ``label`` optional for
queries; any other MVTec-FS column is accepted and ignored except ``imageWidth``/``imageHeight``,
which are checked against the image when present).

    python -m mvrec_jax.classify --support SUPPORT.csv --query QUERY.csv --output OUT/ \\
        [--backbone tiny|PATH.pth|DIR] [--preset ViT-L/14] [--finetune]

Every region becomes the 27 official "mso" views (:mod:`mvrec_jax.views`, identical to the
official preprocessing), AlphaCLIP encodes them (cached under ``OUT/features``, keyed on the
images, annotations, backbone and preprocessing version), and Zip-Adapter (training-free, beta 32)
or Zip-Adapter-F (``--finetune``: 500 AdamW steps, beta 1) classifies each query with the
uncertainty-weighted fusion of its views. Writes to ``OUT/``:

* ``predictions.csv``: one row per query row, in query order: ``row`` (0-based data row of the
  query CSV), ``img_rel_path``, ``predicted``, ``p_<class>`` per class (fused probabilities,
  summing to 1), ``label`` and ``correct`` when the row has a label, ``error`` for a skipped row;
* ``summary.json``: settings, class names, counts, accuracy (labelled rows), the skipped rows;
* ``confusion.png`` (and its numbers in ``summary.json``) when query rows carry labels.

Bad rows (missing or unreadable image, unparsable polygon, polygon entirely outside the image,
image size differing from the row's ``imageWidth``/``imageHeight``, unknown class in a query)
are reported with their CSV line and skipped; the rest still run. ``--backbone tiny`` uses a
small random AlphaCLIP (32 px views, no download) for trying the tool: its predictions are not
meaningful. The same as a function: :func:`classify`.
"""
from __future__ import annotations

import argparse
import ast
import csv
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mvrec_jax import data as data_lib
from mvrec_jax import views as views_lib

__all__ = ["ClassifyError", "RowProblem", "Annotations", "ClassificationResult", "read_annotations",
           "load_backbone", "tiny_alpha_clip", "classify", "main"]

_REQUIRED = ("img_rel_path", "points")


class ClassifyError(ValueError):
  """A problem with the user's input (files, settings) that stops the whole run."""


@dataclasses.dataclass(frozen=True)
class RowProblem:
  """A skipped CSV row: ``row`` is the 0-based data row, ``line`` the line in the file (header = 1)."""
  csv: str
  row: int
  line: int
  message: str

  def __str__(self) -> str:
    return f"{self.csv} line {self.line} (row {self.row}): {self.message}"


@dataclasses.dataclass(frozen=True, eq=False)
class Annotations:
  """The usable rows of one CSV as instances, plus what was skipped."""
  path: str
  num_rows: int
  instances: list[data_lib.Instance]
  rows: list[int]               # data row of each instance
  labels: list[str | None]      # label text of each instance (None: unlabelled query)
  rel_paths: list[str]          # img_rel_path of every data row (for the predictions file)
  problems: list[RowProblem]
  row_labels: list[str] = dataclasses.field(default_factory=list)  # label text of every data row


def _parse_points(text: str) -> np.ndarray:
  text = (text or "").strip()
  if not text:
    raise ValueError("`points` is empty")
  try:
    pts = json.loads(text)
  except json.JSONDecodeError:
    try:
      pts = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      raise ValueError(f"cannot parse `points` {text[:40]!r} as a list of [x, y]") from None
  try:
    arr = np.asarray(pts, dtype=np.float64)
  except (TypeError, ValueError):
    raise ValueError("`points` must be a list of [x, y] number pairs") from None
  if arr.ndim != 2 or arr.shape[1] != 2 or len(arr) == 0:
    raise ValueError(f"`points` must be a non-empty list of [x, y] pairs, got shape {arr.shape}")
  if not np.all(np.isfinite(arr)):
    raise ValueError("`points` has non-finite coordinates")
  return arr


def _row_bbox(row: dict[str, str], pts: np.ndarray) -> tuple[float, float, float, float]:
  vals = [(row.get(k) or "").strip() for k in ("x1", "y1", "x2", "y2")]
  if all(vals):
    try:
      x1, y1, x2, y2 = (float(v) for v in vals)
    except ValueError:
      raise ValueError(f"bad bbox x1/y1/x2/y2 {vals}") from None
    if not (x2 >= x1 and y2 >= y1):
      raise ValueError(f"bad bbox: x1={vals[0]} x2={vals[2]} y1={vals[1]} y2={vals[3]} (need x1 <= x2, y1 <= y2)")
    return x1, y1, x2, y2
  return views_lib.bbox_of_polygon(pts)


def _image_info(path: Path) -> tuple[tuple[int, int], str]:
  """(height, width) and a cache tag (size + mtime) of a fully decodable image; ValueError otherwise."""
  if not path.is_file():
    raise ValueError(f"image {path} does not exist")
  img = data_lib.load_image(path)  # decodes fully: corrupt files fail here, named
  st = path.stat()
  return (img.size[1], img.size[0]), f"{st.st_size}-{st.st_mtime_ns}"


def read_annotations(path: str | os.PathLike, *, role: str, class_names: Sequence[str] | None = None,
                     specs: Sequence[views_lib.ViewSpec] = (), image_root: str | os.PathLike | None = None,
                     progress: bool = True) -> Annotations:
  """Reads a support (``role="support"``, labels required) or query CSV; bad rows become problems.

  ``class_names``: the support classes (queries only): a query label outside them is a bad row.
  Every image is opened and decoded once here and the crop box of every view in ``specs`` is
  computed, so extraction later cannot fail on a row. Image paths are relative to the CSV's
  folder, or to ``image_root`` when given.
  """
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel

  if role not in ("support", "query"):
    raise ValueError(f"role must be 'support' or 'query', got {role!r}")
  p = Path(path).expanduser()
  if not p.is_file():
    raise FileNotFoundError(f"{role} CSV {p} does not exist; pass --{role} <file.csv>.")
  try:
    with open(p, newline="", encoding="utf-8-sig") as f:
      reader = csv.DictReader(f)
      fields = reader.fieldnames or []
      rows = list(reader)
  except (UnicodeDecodeError, csv.Error) as e:
    raise ClassifyError(f"cannot read {role} CSV {p} ({e}); it must be a UTF-8 CSV with a header row.") from None
  need = _REQUIRED + (("label",) if role == "support" else ())
  missing = [c for c in need if c not in fields]
  if missing:
    raise ClassifyError(f"{role} CSV {p} lacks the column(s) {missing} (has {fields}); the MVTec-FS annotation "
                        "format needs img_rel_path, x1, x2, y1, y2, label, points.")
  base = p.parent if image_root is None else Path(image_root).expanduser()
  if not base.is_dir():
    raise FileNotFoundError(f"image root {base} is not a directory.")
  known = None if class_names is None else set(class_names)
  instances, kept_rows, labels, problems, rel_paths, row_labels = [], [], [], [], [], []
  info_cache: dict[Path, tuple[tuple[int, int], str] | str] = {}
  for i, r in enumerate(tqdm(rows, desc=f"check {role} rows", unit="row", disable=not progress)):
    rel = (r.get("img_rel_path") or "").strip()
    rel_paths.append(rel)
    row_labels.append((r.get("label") or "").strip())
    try:
      if not rel:
        raise ValueError("`img_rel_path` is empty")
      label = (r.get("label") or "").strip() or None
      if role == "support" and label is None:
        raise ValueError("support rows need a `label`")
      if role == "query" and label is not None and known is not None and label not in known:
        raise ValueError(f"class {label!r} is not in the support set {sorted(known)}")
      pts = _parse_points(r.get("points", ""))
      bbox = _row_bbox(r, pts)
      img_path = (base / rel).resolve()
      if img_path not in info_cache:
        try:
          info_cache[img_path] = _image_info(img_path)
        except (ValueError, FileNotFoundError) as e:
          info_cache[img_path] = str(e)
      info = info_cache[img_path]
      if isinstance(info, str):
        raise ValueError(info)
      (h, w), tag = info
      for key, actual in (("imageWidth", w), ("imageHeight", h)):
        given = (r.get(key) or "").strip()
        if given:
          try:
            ok = int(float(given)) == actual
          except ValueError:
            ok = False
          if not ok:
            raise ValueError(f"{key}={given!r} but image {rel} is {w}x{h} (WxH): the polygon would not line up")
      if not views_lib.polygon_to_mask(pts, w, h).any():
        raise ValueError(f"the polygon (x {pts[:, 0].min():g}..{pts[:, 0].max():g}, y {pts[:, 1].min():g}.."
                         f"{pts[:, 1].max():g}) covers no pixel of the {w}x{h} image")
      for spec in specs:  # e.g. a bbox-relative crop of a 1 px side is empty (clear ValueError)
        views_lib.crop_box(bbox, spec)
    except ValueError as e:
      problems.append(RowProblem(csv=str(p), row=i, line=i + 2, message=str(e)))
      continue
    instances.append(data_lib.Instance(
        image_path=str(img_path), polygon=pts, bbox=bbox, label=-1, class_name=label or "",
        image_size=(h, w), category=role, split=role, row=i, instance_id=f"{r.get('id', '')}@{tag}",
        img_rel_path=rel))
    kept_rows.append(i)
    labels.append(label)
  return Annotations(path=str(p), num_rows=len(rows), instances=instances, rows=kept_rows, labels=labels,
                     rel_paths=rel_paths, problems=problems, row_labels=row_labels)


def _with_labels(insts: list[data_lib.Instance], labels: list[str | None], class_names: Sequence[str]):
  idx = {c: i for i, c in enumerate(class_names)}
  return [dataclasses.replace(inst, label=idx.get(lab, -1) if lab is not None else -1, class_name=lab or "")
          for inst, lab in zip(insts, labels)]


# ----------------------------------------------------------------------------------------- backbone
def tiny_alpha_clip(seed: int = 0, *, width: int = 32, layers: int = 2, image_size: int = 32, patch_size: int = 8,
                    projection_dim: int = 32, embed_scale: float = 10.0, alpha_std: float = 0.2):
  """A small random vision AlphaCLIP for demos: ``(model, params, name)``.

  The patch embedding is scaled by ``embed_scale`` and ``conv1_alpha`` drawn from N(0, alpha_std)
  (the demo preset's recipe): with the standard init the class token of a random ViT barely
  depends on the image or the mask.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from backbones_jax import alpha_clip  # pylint: disable=import-outside-toplevel

  spec = alpha_clip.tiny_alpha_clip_spec(width=width, layers=layers, image_size=image_size, patch_size=patch_size,
                                         projection_dim=projection_dim)
  model, params = alpha_clip.init_alpha_clip(spec, seed=seed)
  emb = dict(params["vision_model"]["embeddings"])
  emb["patch_embedding"] = {"kernel": emb["patch_embedding"]["kernel"] * embed_scale}
  shape = emb["conv1_alpha"]["kernel"].shape
  emb["conv1_alpha"] = {"kernel": alpha_std * jax.random.normal(jax.random.key(seed + 1), shape)}
  params = dict(params, vision_model=dict(params["vision_model"], embeddings=emb))
  name = f"tiny-alphaclip-w{width}-l{layers}-s{image_size}-seed{seed}-x{embed_scale:g}-a{alpha_std:g}"
  return model, params, name


def load_backbone(backbone: str, preset: str | None = "ViT-L/14", *, seed: int = 0):
  """``"tiny"`` (random demo weights), an AlphaCLIP visual ``.pth`` or a dir holding one -> (model, params, name)."""
  if backbone == "tiny":
    return tiny_alpha_clip(seed)
  from backbones_jax import alpha_clip  # pylint: disable=import-outside-toplevel

  p = Path(backbone).expanduser()
  if p.is_dir():
    found = sorted(p.glob("*.pth")) + sorted(p.glob("*.pt"))
    if len(found) != 1:
      raise FileNotFoundError(
          f"--backbone {p} is a directory with {len(found)} .pth/.pt files ({[f.name for f in found][:5]}); "
          "pass the AlphaCLIP visual checkpoint file itself (e.g. clip_l14_grit20m_fultune_2xe.pth).")
    p = found[0]
  if not p.is_file():
    raise FileNotFoundError(
        f"--backbone {backbone!r} is neither 'tiny' nor an existing file or directory. Give an AlphaCLIP visual "
        "checkpoint (.pth, e.g. clip_l14_grit20m_fultune_2xe.pth from github SunzeY/AlphaCLIP) with its --preset, "
        "or 'tiny' for random demo weights.")
  if preset and preset not in alpha_clip.ALPHA_CLIP_PRESETS:
    raise ClassifyError(f"unknown --preset {preset!r}; choose one of {list(alpha_clip.ALPHA_CLIP_PRESETS)} "
                        "or '' to accept any checkpoint architecture.")
  from backbones_jax import convert, torch_pickle  # pylint: disable=import-outside-toplevel
  try:
    model, params = alpha_clip.load_alpha_clip(p, preset=preset or None)
  except (torch_pickle.TorchFileError, convert.CheckpointMismatchError, convert.CheckpointFormatError) as e:
    msg = str(e) if str(p) in str(e) else f"{p}: {e}"
    raise ClassifyError(f"cannot use --backbone {msg}. Give an AlphaCLIP visual checkpoint (.pth) that fits "
                        f"--preset {preset!r} ('' accepts any architecture).") from None
  return model, params, f"alphaclip-{preset or 'any'}-{p.stem}"


# ----------------------------------------------------------------------------------------- classify
@dataclasses.dataclass(frozen=True, eq=False)
class ClassificationResult:
  """Per query row (query order): predicted class (None: skipped) and fused probabilities (NaN: skipped)."""
  class_names: tuple[str, ...]
  rows: list[dict[str, Any]]
  probabilities: np.ndarray            # (num_query_rows, C)
  predicted: list[str | None]
  accuracy: float | None               # over the labelled, classified query rows
  num_labelled: int
  confusion: np.ndarray | None         # (C, C) rows = label, columns = prediction
  problems: list[RowProblem]
  output_dir: str | None
  summary: dict[str, Any]


def _save_confusion(conf: np.ndarray, class_names: Sequence[str], path: Path, title: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  c = len(class_names)
  fig, ax = plt.subplots(figsize=(max(5.0, 1.6 + 0.6 * c), max(4.0, 1.2 + 0.6 * c)))
  ax.imshow(conf, cmap="Blues")
  for i in range(c):
    for j in range(c):
      ax.text(j, i, str(int(conf[i, j])), ha="center", va="center",
              color="white" if conf[i, j] > conf.max() / 2 else "black", fontsize=8)
  ax.set_xticks(range(c), class_names, rotation=45, ha="right", fontsize=8)
  ax.set_yticks(range(c), class_names, fontsize=8)
  ax.set_xlabel("predicted")
  ax.set_ylabel("label")
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _default_resize(image_size: int) -> tuple[int, int]:
  """The official chain ends at the model's input size: 512 -> 224 (ViT-L/14); tiny 32 px: 64 -> 32."""
  return (512, image_size) if image_size >= 224 else (2 * image_size, image_size)


def classify(support_csv: str | os.PathLike, query_csv: str | os.PathLike, output_dir: str | os.PathLike | None = None,
             *, backbone: str = "tiny", preset: str | None = "ViT-L/14", finetune: bool = False,
             method: str = "mso", crop_sizes: Sequence[float] = views_lib.OFFICIAL_CROP_SIZES,
             resize: Sequence[int] | None = None, precision: str = "float32", steps: int = 500,
             batch_size: int = 8, cache_dir: str | os.PathLike | None = None, seed: int = 0,
             image_root: str | os.PathLike | None = None, progress: bool = True,
             model_and_params=None) -> ClassificationResult:
  """Classifies every region of ``query_csv`` with Zip-Adapter(-F) on the support set of ``support_csv``.

  ``backbone``: ``"tiny"``, an AlphaCLIP visual ``.pth`` or a directory with one (``preset`` checks
  its architecture; ``""``/None accepts any); ``model_and_params=(model, params, name)`` overrides
  it (e.g. an already loaded model in a notebook). ``finetune``: Zip-Adapter-F (``steps`` AdamW
  steps, beta 1) instead of the training-free Zip-Adapter (beta 32). ``resize`` defaults to
  ``512 -> model input size``. Image paths are relative to each CSV's folder, or to
  ``image_root`` when given. Writes the files of the module docstring when ``output_dir`` is
  given (features cached in ``cache_dir``, default ``<output_dir>/features``). Raises
  ``ClassifyError``/``FileNotFoundError`` for input that stops the run; bad rows are skipped and
  listed in ``result.problems``.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from mvrec_jax import adapters  # pylint: disable=import-outside-toplevel
  from mvrec_jax import features  # pylint: disable=import-outside-toplevel

  if precision not in adapters.PRECISIONS:
    raise ClassifyError(f"unknown precision {precision!r}; choose one of {list(adapters.PRECISIONS)}.")
  try:
    specs = views_lib.view_specs(method, crop_sizes)
  except ValueError as e:
    raise ClassifyError(str(e)) from None
  if finetune and int(steps) < 1:
    raise ClassifyError(f"--steps must be >= 1 for --finetune, got {steps}.")
  sup = read_annotations(support_csv, role="support", specs=specs, image_root=image_root, progress=progress)
  class_names = tuple(sorted({lab for lab in sup.labels if lab is not None}))
  if len(class_names) < 2:
    raise ClassifyError(f"the support set {sup.path} needs at least 2 classes with usable rows, got "
                        f"{list(class_names)} ({len(sup.problems)} of {sup.num_rows} rows skipped"
                        + (f"; first: {sup.problems[0]}" if sup.problems else "") + ").")
  qry = read_annotations(query_csv, role="query", class_names=class_names, specs=specs, image_root=image_root,
                         progress=progress)
  for prob in sup.problems + qry.problems:
    print(f"warning: skipped {prob}", file=sys.stderr, flush=True)
  if not qry.instances:
    raise ClassifyError(f"no usable query rows in {qry.path} ({len(qry.problems)} of {qry.num_rows} skipped).")

  model, params, name = model_and_params if model_and_params is not None else load_backbone(backbone, preset, seed=seed)
  image_size = int(model.spec.vision.image_size)
  resize = tuple(int(s) for s in (resize if resize is not None else _default_resize(image_size)))
  if not resize or resize[-1] != image_size:
    raise ClassifyError(f"resize {resize} must end at the model's input size {image_size}.")
  out = None
  if output_dir is not None:
    out = Path(output_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
  cache = cache_dir if cache_dir is not None else (out / "features" if out is not None else None)
  encode_fn = features.alpha_clip_encode_fn(model)
  kw = dict(backbone=name, method=method, crop_sizes=tuple(crop_sizes), resize=resize, batch_size=batch_size,
            cache_dir=cache, progress=progress)
  s_insts = _with_labels(sup.instances, sup.labels, class_names)
  q_insts = _with_labels(qry.instances, qry.labels, class_names)
  fs = features.extract_features(encode_fn, params, s_insts, dataset=f"classify-{Path(sup.path).stem}",
                                 split="support", **kw)
  fq = features.extract_features(encode_fn, params, q_insts, dataset=f"classify-{Path(qry.path).stem}",
                                 split="query", **kw)
  s_labels = np.asarray([i.label for i in s_insts], np.int32)
  num_classes = len(class_names)
  shots = {c: int((s_labels == k).sum()) for k, c in enumerate(class_names)}
  if finetune:
    logits, losses = adapters.zip_adapter_f_predict(fs.features[None], s_labels[None], fq.features,
                                                    num_classes=num_classes, steps=int(steps), precision=precision)
    final_loss = float(np.asarray(losses)[0, -1])
  else:
    logits = adapters.zip_adapter_predict(fs.features[None], s_labels[None], fq.features, num_classes=num_classes,
                                          precision=precision)
    final_loss = None
  probs_views = jax.nn.softmax(np.asarray(logits, np.float32)[0], axis=-1)  # (Q, V, C)
  fused = np.asarray(adapters.fuse_views(probs_views), np.float64)        # (Q, C), rows sum to 1
  pred = fused.argmax(-1)

  # one output row per query CSV row, in query order
  probs_all = np.full((qry.num_rows, num_classes), np.nan)
  predicted: list[str | None] = [None] * qry.num_rows
  row_label: dict[int, str | None] = {}
  for j, r in enumerate(qry.rows):
    probs_all[r] = fused[j]
    predicted[r] = class_names[int(pred[j])]
    row_label[r] = qry.labels[j]
  errors = {pr.row: pr.message for pr in qry.problems}
  rows_out = []
  for r in range(qry.num_rows):
    d: dict[str, Any] = {"row": r, "img_rel_path": qry.rel_paths[r], "predicted": predicted[r] or ""}
    for k, c in enumerate(class_names):
      d[f"p_{c}"] = "" if np.isnan(probs_all[r, k]) else f"{probs_all[r, k]:.6f}"
    lab = row_label.get(r)
    d["label"] = lab or qry.row_labels[r]  # a skipped row keeps its label text
    d["correct"] = "" if (lab is None or predicted[r] is None) else int(lab == predicted[r])
    d["error"] = errors.get(r, "")
    rows_out.append(d)
  labelled = [(r, lab) for r, lab in row_label.items() if lab is not None]
  accuracy = conf = None
  if labelled:
    idx = {c: k for k, c in enumerate(class_names)}
    conf = np.zeros((num_classes, num_classes), np.int64)
    for r, lab in labelled:
      conf[idx[lab], idx[predicted[r]]] += 1
    accuracy = float(np.trace(conf) / conf.sum())
  classifier = "Zip-Adapter-F" if finetune else "Zip-Adapter"
  summary = dict(
      support=sup.path, query=qry.path, backbone=name, preset=preset or "", classifier=classifier,
      precision=precision, steps=int(steps) if finetune else 0, final_train_loss=final_loss,
      views=dict(method=method, crop_sizes=[float(s) for s in crop_sizes], resize=list(resize),
                 preprocessing=views_lib.PREPROCESSING_VERSION),
      class_names=list(class_names), support_shots=shots, num_support_rows=sup.num_rows,
      num_support_used=len(sup.instances), num_query_rows=qry.num_rows, num_query_classified=len(qry.instances),
      num_labelled=len(labelled), accuracy=accuracy, confusion=None if conf is None else conf.tolist(),
      skipped=[dataclasses.asdict(pr) for pr in sup.problems + qry.problems],
      features_from_cache=dict(support=fs.from_cache, query=fq.from_cache))
  if out is not None:
    fields = ["row", "img_rel_path", "predicted"] + [f"p_{c}" for c in class_names] + ["label", "correct", "error"]
    with open(out / "predictions.csv", "w", newline="", encoding="utf-8") as f:
      wr = csv.DictWriter(f, fieldnames=fields)
      wr.writeheader()
      wr.writerows(rows_out)
    if conf is not None:
      _save_confusion(conf, class_names, out / "confusion.png",
                      f"{classifier}: accuracy {accuracy:.3f}\n({len(labelled)} labelled queries)")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
  return ClassificationResult(class_names=class_names, rows=rows_out, probabilities=probs_all, predicted=predicted,
                              accuracy=accuracy, num_labelled=len(labelled), confusion=conf,
                              problems=sup.problems + qry.problems, output_dir=None if out is None else str(out),
                              summary=summary)


# ----------------------------------------------------------------------------------------- CLI
def _parse_sizes(text: str, what: str) -> tuple[int, ...]:
  try:
    vals = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
  except ValueError:
    raise ClassifyError(f"{what} must be comma-separated integers, got {text!r}.") from None
  if not vals or any(v <= 0 for v in vals):
    raise ClassifyError(f"{what} must be positive integers, got {text!r}.")
  return vals


def main(argv: Sequence[str] | None = None) -> int:
  """``python -m mvrec_jax.classify``; user errors print one ``error:`` line and exit with code 2."""
  ap = argparse.ArgumentParser(prog="python -m mvrec_jax.classify",
                               description="Classify defect regions (query CSV) from a few labelled ones (support CSV) "
                               "with MVREC's multi-view AlphaCLIP features and Zip-Adapter(-F).")
  ap.add_argument("--support", required=True, help="labelled support regions (MVTec-FS annotation CSV)")
  ap.add_argument("--query", required=True, help="regions to classify (same format; label optional)")
  ap.add_argument("--output", required=True, help="output directory (predictions.csv, summary.json, confusion.png)")
  ap.add_argument("--image-root", default=None, help="folder the img_rel_path values are relative to "
                  "(default: each CSV's folder)")
  ap.add_argument("--backbone", default="tiny",
                  help="'tiny' (random demo weights), an AlphaCLIP visual .pth, or a directory holding one")
  ap.add_argument("--preset", default="ViT-L/14", help="architecture the .pth must have ('' = any)")
  ap.add_argument("--finetune", action="store_true", help="Zip-Adapter-F (trained) instead of Zip-Adapter")
  ap.add_argument("--steps", type=int, default=500, help="Zip-Adapter-F AdamW steps")
  ap.add_argument("--precision", default="float32", help="float32 | bfloat16 | official")
  ap.add_argument("--method", default="mso", help=f"view recipe: {', '.join(views_lib.MV_METHODS)}")
  ap.add_argument("--crop-sizes", default=",".join(str(s) for s in views_lib.OFFICIAL_CROP_SIZES),
                  help="absolute crop sizes in px (official: 256,384,512 for ~1024 px images)")
  ap.add_argument("--resize", default="", help="resize chain, e.g. 512,224 (default: 512 -> model input size)")
  ap.add_argument("--batch-size", type=int, default=8, help="instances per AlphaCLIP call (x views)")
  ap.add_argument("--seed", type=int, default=0, help="seed of the tiny random backbone")
  ap.add_argument("--no-progress", action="store_true")
  args = ap.parse_args(argv)
  from backbones_jax import convert, torch_pickle  # pylint: disable=import-outside-toplevel
  try:
    crop_sizes = _parse_sizes(args.crop_sizes, "--crop-sizes")
    resize = _parse_sizes(args.resize, "--resize") if args.resize else None
    if args.batch_size < 1:
      raise ClassifyError(f"--batch-size must be >= 1, got {args.batch_size}.")
    res = classify(args.support, args.query, args.output, backbone=args.backbone, preset=args.preset,
                   finetune=args.finetune, method=args.method, crop_sizes=crop_sizes, resize=resize,
                   precision=args.precision, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                   image_root=args.image_root, progress=not args.no_progress)
  except (ClassifyError, FileNotFoundError, convert.CheckpointMismatchError, convert.CheckpointFormatError,
          torch_pickle.TorchFileError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  n = sum(p is not None for p in res.predicted)
  print(f"{res.summary['classifier']} ({res.summary['backbone']}): classified {n} of {len(res.predicted)} query rows "
        f"into {len(res.class_names)} classes {list(res.class_names)}; {len(res.problems)} row(s) skipped.")
  if res.accuracy is not None:
    print(f"accuracy {res.accuracy:.4f} on {res.num_labelled} labelled queries")
  print(f"wrote {Path(res.output_dir) / 'predictions.csv'}, summary.json"
        + (", confusion.png" if res.confusion is not None else ""))
  return 0


if __name__ == "__main__":
  sys.exit(main())
