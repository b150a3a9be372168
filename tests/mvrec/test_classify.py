"""mvrec_jax.classify: predictions equal the library pipeline, bad rows named and skipped, CLI errors."""
import csv
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from mvrec_jax import adapters as A
from mvrec_jax import classify as C
from mvrec_jax import data as D
from mvrec_jax import features as F
from mvrec_jax import synthetic as S

CROPS, RESIZE = (16, 24, 32), (64, 32)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """A synthetic category with support.csv / query.csv next to the images (paths relative to the CSVs)."""
  root = tmp_path_factory.mktemp("classify")
  S.make_dataset(root, categories=("disc",), image_size=64, n_train=2, n_valid=1, seed=5)
  img_dir = root / "image" / "disc"
  out = {}
  for src, dst in (("train", "support"), ("valid", "query")):
    rows = list(csv.DictReader(open(root / "CONFIG" / "disc_config1" / f"{src}.csv")))
    out[dst] = rows
  return img_dir, out


@pytest.fixture(scope="module")
def tiny():
  return C.tiny_alpha_clip(0, width=16, layers=1)


def _write(path: Path, rows, fields=None):
  fields = fields or list(rows[0])
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
  return path


def test_predictions_equal_library_pipeline_and_bad_rows_are_skipped(folder, tiny, tmp_path, capsys):
  img_dir, rows = folder
  sup = _write(img_dir / "support.csv", rows["support"])
  q = [dict(r) for r in rows["query"]]
  good = len(q)
  bad = dict(q[0])
  (img_dir / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
  q.append(dict(bad, img_rel_path="testing/nowhere/missing.png"))                       # missing image
  q.append(dict(bad, points="[[500, 500], [520, 500], [510, 520]]", x1="500", x2="520", y1="500", y2="520"))
  q.append(dict(bad, label="dent"))                                                    # unknown class
  q.append(dict(bad, points="[[1, 2], [3"))                                            # unparsable
  q.append(dict(bad, img_rel_path="corrupt.png"))                                      # corrupt image
  q.append(dict(bad, imageWidth="65"))                                                 # size mismatch
  q.append(dict(q[1], label=""))                                                       # unlabelled, fine
  qry = _write(img_dir / "query.csv", q)
  res = C.classify(sup, qry, tmp_path / "out", model_and_params=tiny, crop_sizes=CROPS, resize=RESIZE,
                   cache_dir=img_dir / "cache", progress=False)
  err = capsys.readouterr().err
  # every bad row named by line, skipped; the rest classified, in query order
  assert len(res.rows) == len(q) == good + 7
  msgs = [r["error"] for r in res.rows]
  assert all(m == "" for m in msgs[:good]) and msgs[-1] == ""
  for k, needle in enumerate(("does not exist", "covers no pixel", "'dent' is not in the support set",
                              "cannot parse", "corrupt", "imageWidth='65'")):
    assert needle in msgs[good + k], (k, msgs[good + k])
    assert f"line {good + k + 2} (row {good + k})" in err
  assert [p.row for p in res.problems] == list(range(good, good + 6))
  assert res.rows[good + 2]["label"] == "dent" and res.rows[good + 2]["correct"] == ""
  # probabilities sum to one, prediction = argmax; skipped rows have none
  ok = [r for r in range(len(q)) if not msgs[r]]
  np.testing.assert_allclose(res.probabilities[ok].sum(-1), 1.0, atol=1e-5)
  assert np.isnan(res.probabilities[good]).all() and res.predicted[good] is None
  assert [res.predicted[r] for r in ok] == [res.class_names[i] for i in res.probabilities[ok].argmax(-1)]
  # the same numbers from the library pieces: instances -> features -> Zip-Adapter -> fusion
  names = res.class_names
  assert names == tuple(sorted({r["label"] for r in rows["support"]}))
  def insts(rws, split):
    out = []
    for i, r in enumerate(rws):
      pts = np.asarray(json.loads(r["points"]), float)
      out.append(D.Instance(image_path=str(img_dir / r["img_rel_path"]), polygon=pts,
                            bbox=tuple(float(r[k]) for k in ("x1", "y1", "x2", "y2")),
                            label=names.index(r["label"]) if r["label"] else -1, class_name=r["label"],
                            image_size=(64, 64), category="c", split=split, row=i, instance_id=str(i),
                            img_rel_path=r["img_rel_path"]))
    return out
  model, params, _ = tiny
  enc = F.alpha_clip_encode_fn(model)
  kw = dict(dataset="ref", backbone="tiny", crop_sizes=CROPS, resize=RESIZE, progress=False)
  s_inst = insts(rows["support"], "s")
  fs = F.extract_features(enc, params, s_inst, **kw)
  fq = F.extract_features(enc, params, insts([q[r] for r in ok], "q"), **kw)
  logits = A.zip_adapter_predict(fs.features[None], fs.labels[None].astype(np.int32), fq.features,
                                 num_classes=len(names))[0]
  fused = np.asarray(A.fuse_views(jax.nn.softmax(logits, -1)))
  np.testing.assert_allclose(res.probabilities[ok], fused, atol=1e-5)
  # files: predictions.csv (one row per query row), summary.json, confusion.png; accuracy of labelled rows
  out = tmp_path / "out"
  pred = list(csv.DictReader(open(out / "predictions.csv")))
  assert [int(r["row"]) for r in pred] == list(range(len(q)))
  assert set(pred[0]) == {"row", "img_rel_path", "predicted", "label", "correct", "error"} | {f"p_{c}" for c in names}
  labelled = [r for r in ok if q[r]["label"]]
  acc = np.mean([names[int(np.argmax(fused[ok.index(r)]))] == q[r]["label"] for r in labelled])
  assert res.num_labelled == len(labelled) == good and res.accuracy == pytest.approx(acc)
  summary = json.loads((out / "summary.json").read_text())
  assert summary["num_query_classified"] == good + 1 and len(summary["skipped"]) == 6
  assert summary["support_shots"] == {c: sum(r["label"] == c for r in rows["support"]) for c in names}
  assert np.trace(np.asarray(summary["confusion"])) == round(acc * good)
  with Image.open(out / "confusion.png") as im:
    assert im.size[0] > 100
  # a rerun reads the features from the cache
  again = C.classify(sup, qry, out, model_and_params=tiny, crop_sizes=CROPS, resize=RESIZE,
                     cache_dir=img_dir / "cache", progress=False)
  assert again.summary["features_from_cache"] == {"support": True, "query": True}
  np.testing.assert_array_equal(again.probabilities[ok], res.probabilities[ok])


def test_finetune_equals_zip_adapter_f(folder, tiny, tmp_path):
  img_dir, rows = folder
  sup = _write(img_dir / "support.csv", rows["support"])
  qry = _write(img_dir / "query_unlabelled.csv", [dict(r, label="") for r in rows["query"]])
  res = C.classify(sup, qry, tmp_path / "o", model_and_params=tiny, crop_sizes=CROPS, resize=RESIZE,
                   finetune=True, steps=10, cache_dir=img_dir / "cache", progress=False)
  assert res.summary["features_from_cache"]["support"]  # shared with the first test when it ran
  assert res.accuracy is None and res.confusion is None and not (tmp_path / "o" / "confusion.png").exists()
  assert res.summary["classifier"] == "Zip-Adapter-F" and np.isfinite(res.summary["final_train_loss"])
  fs = np.load(next((img_dir / "cache").glob("classify-support__*.npz")))
  fq = np.load(next((img_dir / "cache").glob("classify-query_unlabelled__*.npz")))
  logits, losses = A.zip_adapter_f_predict(fs["features"][None], fs["labels"][None].astype(np.int32),
                                           fq["features"], num_classes=len(res.class_names), steps=10)
  np.testing.assert_allclose(res.probabilities, np.asarray(A.fuse_views(jax.nn.softmax(logits[0], -1))), atol=1e-5)
  assert float(losses[0, -1]) < float(losses[0, 0])


def test_absolute_paths_and_image_root(folder, tmp_path):
  img_dir, rows = folder
  ab = _write(tmp_path / "abs.csv", [dict(r, img_rel_path=str(img_dir / r["img_rel_path"])) for r in rows["support"]])
  ann = C.read_annotations(ab, role="support", progress=False)
  assert not ann.problems and len(ann.instances) == len(rows["support"])
  rel = _write(tmp_path / "rel.csv", rows["support"])  # paths relative to img_dir, CSV elsewhere
  assert len(C.read_annotations(rel, role="support", progress=False).problems) == len(rows["support"])
  ann = C.read_annotations(rel, role="support", image_root=img_dir, progress=False)
  assert not ann.problems and [i.image_path for i in ann.instances] == [str((img_dir / r["img_rel_path"]).resolve())
                                                                        for r in rows["support"]]


def _garbage(path):
  path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
  return path


def test_cli_user_errors_are_one_line(folder, tmp_path, capsys):
  img_dir, rows = folder
  sup = _write(tmp_path / "s.csv", [dict(r, img_rel_path=str(img_dir / r["img_rel_path"])) for r in rows["support"]])
  cases = [
      (["--support", str(tmp_path / "nope.csv"), "--query", str(sup)], "support CSV"),
      (["--support", str(sup), "--query", str(sup), "--crop-sizes", "16,x"], "--crop-sizes"),
      (["--support", str(sup), "--query", str(sup), "--backbone", str(tmp_path / "w.pth")], "neither 'tiny'"),
      (["--support", str(sup), "--query", str(sup), "--precision", "fp8"], "unknown precision"),
      (["--support", str(sup), "--query", str(sup), "--backbone", str(_garbage(tmp_path / "g.pth"))],
       f"cannot use --backbone {tmp_path / 'g.pth'}"),
      (["--support", str(sup), "--query", str(sup), "--method", "zoom"], "Unknown multi-view method"),
      (["--support", str(_write(tmp_path / "one.csv", rows["support"][:1])), "--query", str(sup)], "at least 2 classes"),
      (["--support", str(_write(tmp_path / "nolabel.csv", rows["support"], ["img_rel_path", "points"])),
        "--query", str(sup)], "lacks the column(s) ['label']"),
  ]
  for argv, needle in cases:
    assert C.main(argv + ["--output", str(tmp_path / "o"), "--no-progress"]) == 2, argv
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and needle in err[-1], (argv, err)
    assert not any("Traceback" in line for line in err)


def test_load_backbone_from_a_release_format_checkpoint(tmp_path):
  """--backbone: a .pth (or a dir holding one) in the AlphaCLIP release naming; --preset checks the shapes."""
  torch = pytest.importorskip("torch")
  g = torch.Generator().manual_seed(0)
  r = lambda *s: torch.randn(*s, generator=g) * 0.05
  w, patch, image, embed = 64, 8, 32, 16  # OpenAI heads = width // 64
  sd = {"class_embedding": r(w), "positional_embedding": r((image // patch) ** 2 + 1, w),
        "conv1.weight": r(w, 3, patch, patch), "conv1_alpha.weight": r(w, 1, patch, patch), "ln_pre.weight": 1 + r(w),
        "ln_pre.bias": r(w), "ln_post.weight": 1 + r(w), "ln_post.bias": r(w), "proj": r(w, embed)}
  q = "transformer.resblocks.0."
  sd.update({q + "attn.in_proj.weight": r(3 * w, w), q + "attn.in_proj.bias": r(3 * w), q + "attn.out_proj.weight": r(w, w),
             q + "attn.out_proj.bias": r(w), q + "ln_1.weight": 1 + r(w), q + "ln_1.bias": r(w),
             q + "ln_2.weight": 1 + r(w), q + "ln_2.bias": r(w), q + "mlp.c_fc.weight": r(4 * w, w),
             q + "mlp.c_fc.bias": r(4 * w), q + "mlp.c_proj.weight": r(w, 4 * w), q + "mlp.c_proj.bias": r(w)})
  (tmp_path / "w").mkdir()
  torch.save({"module." + k: v for k, v in sd.items()}, tmp_path / "w" / "alpha.pth")
  for src in (tmp_path / "w" / "alpha.pth", tmp_path / "w"):
    model, params, name = C.load_backbone(str(src), preset="")
    assert model.spec.vision.image_size == 32 and name == "alphaclip-any-alpha"
    np.testing.assert_array_equal(np.asarray(params["vision_model"]["embeddings"]["conv1_alpha"]["kernel"]).ravel()[:1],
                                  np.asarray(sd["conv1_alpha.weight"].permute(2, 3, 1, 0)).ravel()[:1])
  assert C._default_resize(model.spec.vision.image_size) == (64, 32)  # pylint: disable=protected-access
  with pytest.raises(C.ClassifyError, match="does not fit preset ViT-L/14"):
    C.load_backbone(str(tmp_path / "w" / "alpha.pth"), preset="ViT-L/14")
  with pytest.raises(C.ClassifyError, match="unknown --preset"):
    C.load_backbone(str(tmp_path / "w" / "alpha.pth"), preset="ViT-Z")
  torch.save({}, tmp_path / "w" / "second.pth")
  with pytest.raises(FileNotFoundError, match="2 .pth/.pt files"):
    C.load_backbone(str(tmp_path / "w"), preset="")
