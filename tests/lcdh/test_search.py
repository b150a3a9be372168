"""lcdh_jax.search: index -> save -> load -> query round trip on a tiny run's student checkpoint, online add
without re-encoding, exact top-k (ties in insertion order), and one-line errors for bad input."""
import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from lcdh_jax import data as data_lib
from lcdh_jax import models, search, synthetic

N_IMAGES = 40


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """A run directory in the layout `python -m train.lcdh` writes (config.json, the synthetic dataset, the
  16-bit student's TrainState saved by train.checkpoint after round 1 of 80 steps), plus a photo folder.
  The student is freshly initialised (training it would cost the suite ~30 s and tests nothing here)."""
  import jax
  from train import lcdh, parallel
  from train.checkpoint import Checkpointer
  from train.config_lib import save_config
  from train.configs import lcdh as lcdh_config

  wd = tmp_path_factory.mktemp("lcdh_run")
  config = lcdh_config.get_config("tiny")
  save_config(config, str(wd))
  d, _ = lcdh.prepare_data(config, str(wd))
  student, state = lcdh.build_student(config, 16, d.tags.shape[1])
  ck = Checkpointer(str(wd / "K16" / "student"))
  # Saved from one device (a first save of mesh-replicated arrays costs ~10 s of one-off work here); the
  # restore builds its target from the checkpoint's metadata, as derefl_jax.predict does for any mesh.
  ck.save(80, state, extra={"db_indices": np.arange(3)}, force=True)
  ck.close()
  photos = wd / "photos"
  photos.mkdir()
  for i in range(N_IMAGES):
    Image.fromarray(d.images[i]).save(photos / f"img_{i:03d}.png")
  (photos / "notes.txt").write_text("not an image")
  (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
  with open(wd / "captions.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["image", "caption"])
    for i in range(N_IMAGES):
      w.writerow([f"img_{i:03d}.png", d.captions[i]])
  params = parallel.to_host(state.params)
  ims = data_lib.imagenet_normalize(np.stack([data_lib.load_image(str(photos / f"img_{i:03d}.png"), 32)
                                              for i in range(N_IMAGES)]))
  apply = jax.jit(student.apply, static_argnames="method")  # eager apply compiles every op: slower
  img_codes = np.where(apply({"params": params}, ims, method=models.Student.encode_image) >= 0, 1, -1)
  bow = data_lib.bow_from_captions(d.captions[:N_IMAGES], vocab=list(synthetic.TAG_VOCAB))[0]
  txt_codes = np.where(apply({"params": params}, bow, method=models.Student.encode_text) >= 0, 1, -1)
  return {"dir": wd, "photos": photos, "captions": wd / "captions.csv", "student": student, "params": params,
          "image_codes": img_codes.astype(np.int8), "text_codes": txt_codes.astype(np.int8),
          "captions_list": d.captions[:N_IMAGES], "apply": apply}


@pytest.fixture(scope="module")
def encoder(tiny_run):
  return search.load_student(tiny_run["dir"])


def stable_top(q, codes, k):
  dist = (codes.shape[1] - codes.astype(np.int64) @ q.astype(np.int64)) // 2
  order = np.argsort(dist, kind="stable")[:k]
  return order, dist[order]


def test_index_save_load_query_round_trip(tiny_run, tmp_path, capsys):
  out = tmp_path / "photos_index.npz"
  rc = search.main(["index", "--checkpoint", str(tiny_run["dir"]), "--images", str(tiny_run["photos"]),
                    "--captions", str(tiny_run["captions"]), "--index", str(out)])
  log = capsys.readouterr()
  assert rc == 0, log.err
  assert "notes.txt: not a readable image" in log.err + log.out
  assert "broken.png: not a readable image" in log.err + log.out
  assert "images/s" in log.out and f"{len(synthetic.TAG_VOCAB)} words from" in log.out
  idx = search.SearchIndex.load(out)  # no checkpoint needed to reload
  ids = [f"img_{i:03d}.png" for i in range(N_IMAGES)]
  assert idx.ids == ids and idx.bits == 16 and len(idx) == N_IMAGES
  assert idx.vocab == list(synthetic.TAG_VOCAB)
  assert idx.meta["step"] == 80 and idx.meta["checkpoint"] == str(tiny_run["dir"].resolve())
  assert idx.meta["fingerprint"] == search.params_fingerprint(tiny_run["params"])
  np.testing.assert_array_equal(search.retrieval.unpack_codes(idx.image_codes),
                                tiny_run["image_codes"])
  np.testing.assert_array_equal(search.retrieval.unpack_codes(idx.text_codes), tiny_run["text_codes"])
  assert idx.has_text.all() and idx.captions == tiny_run["captions_list"]

  # Image query (API): exact ranking of the whole index = stable argsort of the Hamming distances.
  enc = search.load_student(tiny_run["dir"])
  assert enc.vocab == list(synthetic.TAG_VOCAB) and "synthetic.mat" in enc.vocab_source
  res = search.query(idx, image=str(tiny_run["photos"] / "img_005.png"), top_k=100, encoder=enc)[0]
  order, dist = stable_top(tiny_run["image_codes"][5], tiny_run["image_codes"], N_IMAGES)
  assert [r["id"] for r in res] == [ids[j] for j in order]
  assert [r["distance"] for r in res] == dist.tolist() and dist[0] == 0
  # Text query against the caption codes (CLI), JSON and CSV outputs.
  js, cs = tmp_path / "hits.json", tmp_path / "hits.csv"
  for path in (js, cs):
    assert search.main(["query", "--index", str(out), "--text", "red circle", "--top_k", "7", "--search", "text",
                        "--output", str(path)]) == 0
  qcode = enc.encode_texts(["red circle"])[0]
  bow = data_lib.bow_from_captions(["red circle"], vocab=list(synthetic.TAG_VOCAB))[0]
  want = np.where(tiny_run["apply"]({"params": tiny_run["params"]}, bow, method=models.Student.encode_text)[0] >= 0,
                  1, -1)
  np.testing.assert_array_equal(qcode, want)
  order, dist = stable_top(qcode, tiny_run["text_codes"], 7)
  saved = json.loads(js.read_text())
  assert saved[0]["query"] == {"kind": "text", "value": "red circle"}
  assert [(r["rank"], r["id"], r["distance"]) for r in saved[0]["results"]] == [
      (r + 1, ids[j], int(d)) for r, (j, d) in enumerate(zip(order, dist))]
  rows = list(csv.DictReader(cs.read_text().splitlines()))
  assert [(r["id"], int(r["distance"])) for r in rows] == [(ids[j], int(d)) for j, d in zip(order, dist)]
  assert "rank distance" in capsys.readouterr().out.replace("  ", " ")


def test_add_encodes_only_new_items(tiny_run, encoder, tmp_path, capsys):
  photos = tiny_run["photos"]
  first = [photos / f"img_{i:03d}.png" for i in range(25)]
  idx = search.build_index(tiny_run["dir"], first, encoder=encoder)
  old_codes = idx.image_codes.copy()
  idx.save(tmp_path / "i.npz")
  idx = search.SearchIndex.load(tmp_path / "i.npz")
  encoded = []
  orig = encoder.encode_images
  encoder.encode_images = lambda x: (encoded.append(len(x)), orig(x))[1]
  try:
    n = search.add_to_index(idx, photos, captions=tiny_run["captions"], encoder=encoder)
  finally:
    del encoder.encode_images
  assert n == N_IMAGES - 25 and sum(encoded) == N_IMAGES - 25  # the 25 old images were not re-encoded
  out = capsys.readouterr().out
  assert "skipped 25 images already in the index" in out
  assert "encoded 25 captions of items already in the index" in out  # old items got text codes, images kept
  np.testing.assert_array_equal(idx.image_codes[:25], old_codes)
  np.testing.assert_array_equal(search.retrieval.unpack_codes(idx.image_codes), tiny_run["image_codes"])
  assert idx.has_text.all() and idx.captions == tiny_run["captions_list"]
  np.testing.assert_array_equal(search.retrieval.unpack_codes(idx.text_codes), tiny_run["text_codes"])
  assert search.add_to_index(idx, photos, encoder=encoder) == 0  # nothing new


def test_clear_errors(tiny_run, encoder, tmp_path, capsys):
  photos = tiny_run["photos"]
  idx = search.build_index(tiny_run["dir"], [photos / "img_000.png", photos / "img_001.png"], encoder=encoder)
  with pytest.raises(search.SearchError, match=r"none of the words of the caption 'zebra xylophone' is in the "
                                               rf"run's {len(synthetic.TAG_VOCAB)}-word text vocabulary"):
    search.query(idx, text="zebra xylophone", encoder=encoder)
  with pytest.raises(search.SearchError, match="the index is empty"):
    search.query(search.SearchIndex.empty(encoder), text="red", encoder=encoder)
  with pytest.raises(search.SearchError, match="holds no text codes"):
    idx.search_codes(np.ones((1, 16)), top_k=1, against="text")
  other = search.SearchIndex.load(idx.save(tmp_path / "o.npz"))
  other.meta["fingerprint"] = "0" * 16
  with pytest.raises(search.SearchError, match="built with another checkpoint"):
    search.add_to_index(other, photos, encoder=encoder)
  wide = search.SearchIndex(bits=32, ids=["a"], image_codes=np.zeros((1, 4), np.uint8),
                            text_codes=np.zeros((1, 4), np.uint8), has_text=np.zeros(1, bool), captions=[""],
                            vocab=[], meta=dict(idx.meta))
  with pytest.raises(search.SearchError, match="the index holds 32-bit codes but the checkpoint gives 16-bit"):
    search.query(wide, image=str(photos / "img_000.png"), encoder=encoder)
  with pytest.raises(search.SearchError, match="notes.txt is not a readable image"):
    search.build_index(tiny_run["dir"], [photos / "notes.txt"], encoder=encoder)  # file mode: an error
  only_text = tmp_path / "texts"
  only_text.mkdir()
  (only_text / "a.txt").write_text("x")
  with pytest.raises(search.SearchError, match="no readable image"):
    search.build_index(tiny_run["dir"], only_text, encoder=encoder)
  # The CLI: one 'error: ...' line, exit status 2, no traceback.
  search.SearchIndex.empty(encoder).save(tmp_path / "empty.npz")
  capsys.readouterr()
  for argv, msg in ((["query", "--index", str(tmp_path / "empty.npz"), "--text", "red"], "the index is empty"),
                    (["query", "--index", str(tmp_path / "missing.npz"), "--text", "red"], "does not exist"),
                    (["index", "--checkpoint", str(tmp_path), "--images", str(photos), "--index",
                      str(tmp_path / "x.npz")], "is not the workdir of a `python -m train.lcdh` run")):
    assert search.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and msg in err[0], err
