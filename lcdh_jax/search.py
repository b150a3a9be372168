"""Index your own images (and captions) with a trained LCDH student, and search them by text or image.

    python -m lcdh_jax.search index --checkpoint RUN_DIR --images DIR [--captions FILE] --index OUT
    python -m lcdh_jax.search add   --index OUT --images DIR2 [--captions FILE2]
    python -m lcdh_jax.search query --index OUT --text "red circle" [--top_k 10] [--output hits.json]
    python -m lcdh_jax.search query --index OUT --image photo.jpg --top_k 5 --output hits.csv

* ``RUN_DIR`` is the workdir of a ``python -m train.lcdh`` run. Its layout (written by ``train``, read
  here with Orbax directly)::

      <workdir>/config.json                              the run's resolved config (student fields)
      <workdir>/K<bits>/student/checkpoints/<step>/state/  Orbax StandardSave of the student TrainState
                                                           {step, params, opt_state, rng, frozen}

  ``--bits`` picks the code length when the run trained several (default: the only one); the latest
  step is used unless ``--step`` is given. ``RUN_DIR/K<bits>`` may be passed instead of ``--bits``.
* ``--images``: a folder (searched recursively; files that are not readable images are skipped with a
  message) or image files. An item's id is its path relative to the folder (the file name for files).
* ``--captions``: a CSV file with a header holding the columns ``image`` and ``caption`` (the image-folder
  dataset's ``annotations.csv`` works as is), or a text file of ``<image id><TAB><caption>`` lines. A
  caption becomes the student's bag of words over the run's text vocabulary, then a text code.
* The index is ONE ``.npz`` file (numpy, no pickle): packed image codes, ids, packed text codes and
  captions where given, the bit length, the vocabulary, and the checkpoint's identity (path, K, step
  and a SHA-256 fingerprint of the student's parameters). It reloads without the checkpoint
  (``SearchIndex.load``); encoding a new query or new items needs the checkpoint, and a different one
  (other run, other K, other step) is refused.
* ``add`` encodes only the new files (ids already in the index are skipped) and appends them: the old
  codes are never re-encoded (the online setting).
* ``query`` searches the image codes by default (``--search text`` searches the caption codes): exact
  Hamming top-k with ``lcdh_jax.retrieval.HammingIndex``, equal distances in insertion order. It prints a
  table and writes JSON or CSV with ``--output``.

The text vocabulary (one word per BoW dimension of the student's text input) is taken, in this order,
from ``--vocab FILE``; ``<workdir>/tag_vocab.txt``; the dataset of the run (``config.tag_vocab``, the
dataset root's ``tag_vocab.txt``, a ``tag_vocab`` key in its ``.mat`` file, ``CrossModalData.tag_vocab``,
or, for a BoW built from the captions, the same vocabulary rebuilt and checked to give the run's BoW
exactly). It is stored in the index, so queries need neither the dataset nor the vocabulary file.

Importable: ``build_index``, ``add_to_index``, ``query``, ``SearchIndex``, ``load_student``.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from lcdh_jax import retrieval

__all__ = ["SearchError", "StudentEncoder", "SearchIndex", "load_student", "find_student_checkpoint",
           "list_images", "read_captions", "build_index", "add_to_index", "query", "main"]

CONFIG_FILE = "config.json"
VOCAB_FILE = "tag_vocab.txt"
INDEX_FORMAT = "lcdh-search-index/1"


class SearchError(ValueError):
  """A user error (bad input, mismatching checkpoint, empty index): the CLI prints it as one line."""


# ------------------------------------------------------------------------------------ checkpoint


def find_student_checkpoint(run_dir: str | os.PathLike, *, bits: int | None = None,
                            step: int | None = None) -> tuple[Path, int, int, dict]:
  """-> (state dir ``<workdir>/K<bits>/student/checkpoints/<step>/state``, bits, step, config dict)."""
  path = Path(run_dir).expanduser()
  if not path.exists():
    raise FileNotFoundError(f"checkpoint {path} does not exist; pass the workdir of a `python -m "
                            f"train.lcdh` run (it holds {CONFIG_FILE} and K<bits>/student/).")
  workdir = path
  if not (path / CONFIG_FILE).is_file() and path.name[:1] == "K" and path.name[1:].isdigit():
    workdir, from_dir = path.parent, int(path.name[1:])
    if bits is not None and bits != from_dir:
      raise SearchError(f"--bits {bits} contradicts the checkpoint folder {path.name}.")
    bits = from_dir
  if not (workdir / CONFIG_FILE).is_file():
    raise FileNotFoundError(f"{workdir / CONFIG_FILE} not found: {path} is not the workdir of a "
                            f"`python -m train.lcdh` run.")
  try:
    config = json.loads((workdir / CONFIG_FILE).read_text())
  except (OSError, ValueError) as e:
    raise SearchError(f"cannot read {workdir / CONFIG_FILE}: {e}") from None
  available = sorted(int(p.name[1:]) for p in workdir.iterdir()
                     if p.name[:1] == "K" and p.name[1:].isdigit() and (p / "student").is_dir())
  if not available:
    raise FileNotFoundError(f"no student checkpoint under {workdir} (expected K<bits>/student/checkpoints/"
                            f"<step>/state); has the run finished a round?")
  if bits is None:
    if len(available) > 1:
      raise SearchError(f"{workdir} holds students for {available} bits; choose one with --bits.")
    bits = available[0]
  if bits not in available:
    raise SearchError(f"{workdir} has no {bits}-bit student; it has {available} bits.")
  ck = workdir / f"K{bits}" / "student" / "checkpoints"
  steps = sorted(int(p.name) for p in ck.iterdir() if p.name.isdigit() and (p / "state").is_dir()) \
      if ck.is_dir() else []
  if not steps:
    raise FileNotFoundError(f"no finished round in {ck} (expected <step>/state/).")
  if step is not None and step not in steps:
    raise SearchError(f"no step {step} in {ck}; available steps: {steps}.")
  step = steps[-1] if step is None else step
  return ck / str(step) / "state", bits, step, config


def _restore_params(state_dir: Path) -> Any:
  """The ``params`` of a TrainState saved on any device mesh, restored onto one device as numpy."""
  import jax

  from backbones_jax.convert import CheckpointFormatError, restore_on_one_device

  try:
    restored = restore_on_one_device(state_dir)
  except CheckpointFormatError as e:
    raise SearchError(str(e)) from None
  if not isinstance(restored, dict) or "params" not in restored:
    raise SearchError(f"{state_dir} holds no 'params': not an LCDH student train state.")
  return jax.device_get(restored["params"])


def params_fingerprint(params: Any) -> str:
  """SHA-256 (first 16 hex digits) over the parameter paths, shapes, dtypes and values."""
  import jax
  h = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


def _check_param_tree(params: Any, expected: Any, where: Path) -> None:
  """Missing / unexpected / mis-shaped parameters are an error naming them."""
  import jax
  got = {jax.tree_util.keystr(p): tuple(np.shape(v)) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  want = {jax.tree_util.keystr(p): tuple(v.shape) for p, v in jax.tree_util.tree_flatten_with_path(expected)[0]}
  missing = sorted(set(want) - set(got))
  unexpected = sorted(set(got) - set(want))
  shapes = sorted(f"{k}: {got[k]} vs {want[k]}" for k in set(got) & set(want) if got[k] != want[k])
  if missing or unexpected or shapes:
    raise SearchError(f"the student in {where} does not match the model its config.json describes: "
                      f"missing {missing[:5]}, unexpected {unexpected[:5]}, mis-shaped {shapes[:5]}.")


# ----------------------------------------------------------------------------------- vocabulary


def _read_word_file(path: Path, dim: int) -> list[str]:
  words = [w.strip() for w in path.read_text(encoding="utf-8").splitlines()]
  while words and not words[-1]:
    words.pop()
  if len(words) != dim:
    raise SearchError(f"vocabulary file {path} has {len(words)} lines but the student's text input has "
                      f"{dim} BoW dimensions; it needs one word per dimension, in BoW column order.")
  return words


def resolve_vocabulary(workdir: Path, config: dict, dim: int, vocab_file: str | None = None
                       ) -> tuple[list[str] | None, str]:
  """The run's text vocabulary (word of each BoW column) and where it came from (module docstring)."""
  if vocab_file:
    p = Path(vocab_file)
    if not p.is_file():
      raise FileNotFoundError(f"vocabulary file {p} does not exist (one word per line, line j = BoW column j).")
    return _read_word_file(p, dim), str(p)
  if (workdir / VOCAB_FILE).is_file():
    return _read_word_file(workdir / VOCAB_FILE, dim), str(workdir / VOCAB_FILE)
  name = config.get("dataset", "")
  root = Path(config.get("data_root") or (workdir / "data" if name == "synthetic" else Path("data") / name))
  if config.get("tag_vocab") and Path(config["tag_vocab"]).is_file():
    return _read_word_file(Path(config["tag_vocab"]), dim), str(config["tag_vocab"])
  if root.is_dir() and (root / VOCAB_FILE).is_file():
    return _read_word_file(root / VOCAB_FILE, dim), str(root / VOCAB_FILE)
  from lcdh_jax import data as data_lib
  spec = data_lib.DATASETS.get(name)
  mats = [root] if root.is_file() else [root / m for m in (spec.mat_names if spec else ())]
  for mat in mats:
    if mat.is_file():
      try:
        import scipy.io
        m = scipy.io.loadmat(mat, variable_names=["tag_vocab"])
      except Exception:  # noqa: BLE001 - v7.3 files etc.: fall through to the dataset reader
        m = {}
      if "tag_vocab" in m:
        words = [str(np.asarray(v).reshape(-1)[0]).strip() if np.asarray(v).size else ""
                 for v in np.asarray(m["tag_vocab"]).reshape(-1)]
        if len(words) == dim:
          return words, f"{mat} key 'tag_vocab'"
  try:
    d = data_lib.load_dataset(name, root)
  except Exception:  # noqa: BLE001 - dataset not on this machine, or unreadable: no vocabulary from it
    return None, ""
  words = getattr(d, "tag_vocab", None)
  if words is not None and len(words) == dim:
    return list(words), f"the run's dataset ({root})"
  bow, words = data_lib.bow_from_captions(d.captions, max_vocab=dim)
  if bow.shape == d.tags.shape and np.array_equal(bow, d.tags):
    return words, f"rebuilt from the captions of the run's dataset ({root}); equals its BoW exactly"
  return None, ""


def text_bow(texts: Sequence[str], vocab: Sequence[str]) -> np.ndarray:
  """Captions -> (N, V) float32 binary bag of words over ``vocab`` (the training tokenizer)."""
  from lcdh_jax import data as data_lib
  return data_lib.bow_from_captions(list(texts), vocab=list(vocab))[0]


# -------------------------------------------------------------------------------------- encoder


@dataclasses.dataclass
class StudentEncoder:
  """A trained student as two functions: images / captions -> {-1, +1} codes (N, bits) int8."""
  student: Any
  params: Any
  bits: int
  step: int
  checkpoint: str
  fingerprint: str
  image_size: int
  vocab: list[str] | None
  vocab_source: str
  batch_size: int = 64

  def __post_init__(self):
    self._img, self._txt = _encoders(self.student)

  @property
  def identity(self) -> dict:
    return {"checkpoint": self.checkpoint, "bits": self.bits, "step": self.step,
            "fingerprint": self.fingerprint}

  def _batched(self, fn, x: np.ndarray) -> np.ndarray:
    out = []
    for s in range(0, x.shape[0], self.batch_size):
      b = x[s:s + self.batch_size]
      pad = self.batch_size - b.shape[0]
      if pad:  # one compiled shape
        b = np.concatenate([b, np.repeat(b[-1:], pad, axis=0)])
      out.append(np.asarray(fn(self.params, b))[:self.batch_size - pad])
    return np.where(np.concatenate(out) >= 0, 1, -1).astype(np.int8)

  def encode_images(self, images_uint8: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) uint8 RGB at ``image_size`` -> (N, bits) int8 codes."""
    from lcdh_jax import data as data_lib
    return self._batched(self._img, data_lib.imagenet_normalize(np.asarray(images_uint8)))

  def encode_texts(self, texts: Sequence[str], vocab: Sequence[str] | None = None) -> np.ndarray:
    """Captions -> (N, bits) int8 codes over ``vocab`` (default: the run's); a caption with no vocabulary
    word is an error naming it."""
    vocab = vocab or self.vocab
    bow = self.bow(texts, vocab)
    empty = np.flatnonzero(bow.sum(1) == 0)
    if empty.size:
      raise SearchError(_no_word_message(texts[empty[0]], vocab))
    return self.encode_bow(bow)

  def encode_bow(self, bow: np.ndarray) -> np.ndarray:
    """(N, V) bag of words -> (N, bits) int8 codes."""
    return self._batched(self._txt, np.asarray(bow, np.float32))

  def bow(self, texts: Sequence[str], vocab: Sequence[str] | None = None) -> np.ndarray:
    vocab = vocab or self.vocab
    if not vocab:
      raise SearchError("this run's text vocabulary was not found, so captions cannot be encoded; pass "
                        "--vocab FILE (one word per line, line j = the student's BoW column j).")
    return text_bow(texts, vocab)


_ENCODERS: dict[str, tuple] = {}


def _encoders(student) -> tuple:
  """jitted (params, x) -> tanh features of the image and text towers, one pair per student config."""
  key = repr(student)
  if key not in _ENCODERS:
    import jax
    from lcdh_jax import models
    _ENCODERS[key] = (
        jax.jit(lambda p, x: student.apply({"params": p}, x, method=models.Student.encode_image)),
        jax.jit(lambda p, x: student.apply({"params": p}, x, method=models.Student.encode_text)))
  return _ENCODERS[key]


def _no_word_message(text: str, vocab: Sequence[str] | None) -> str:
  sample = ", ".join(list(vocab or [])[:12])
  return (f"none of the words of the caption {text!r} is in the run's {len(vocab or [])}-word text "
          f"vocabulary (e.g. {sample}); its code would be arbitrary. Use vocabulary words.")


_STUDENTS: dict[tuple, StudentEncoder] = {}


def load_student(checkpoint: str | os.PathLike, *, bits: int | None = None, step: int | None = None,
                 vocab_file: str | None = None, batch_size: int = 64) -> StudentEncoder:
  """Restores the student of a ``train.lcdh`` run (layout in the module docstring) -> ``StudentEncoder``.

  Restored students are kept for the process (key: checkpoint step folder and its modification time), so
  repeated queries from a notebook do not restore the checkpoint again.
  """
  state_dir, bits, step, config = find_student_checkpoint(checkpoint, bits=bits, step=step)
  key = (str(state_dir.resolve()), state_dir.stat().st_mtime_ns, vocab_file, batch_size)
  if key not in _STUDENTS:
    _STUDENTS[key] = _load_student(state_dir, bits, step, config, vocab_file, batch_size)
  return _STUDENTS[key]


def _load_student(state_dir: Path, bits: int, step: int, config: dict, vocab_file: str | None,
                  batch_size: int) -> StudentEncoder:
  import jax
  import jax.numpy as jnp
  from lcdh_jax import models
  workdir = state_dir.parents[4]
  params = _restore_params(state_dir)
  try:
    sc = config["student"]
    student = models.Student(bits=bits, image_backbone=sc["backbone"], cnn_widths=tuple(sc["cnn_widths"]),
                             text_hidden=int(sc["text_hidden"]), image_hidden=int(sc["image_hidden"]))
    image_size = int(sc["image_size"])
    dim = int(np.shape(params["text_net"]["fc1"]["kernel"])[0])
  except (KeyError, TypeError) as e:
    raise SearchError(f"{workdir / CONFIG_FILE} / {state_dir}: not an LCDH student run ({e!r} missing).") from None
  expected = jax.eval_shape(lambda: student.init(jax.random.PRNGKey(0), jnp.zeros((1, image_size, image_size, 3)),
                                                 jnp.zeros((1, dim)))["params"])
  _check_param_tree(params, expected, state_dir)
  vocab, source = resolve_vocabulary(workdir, config, dim, vocab_file)
  return StudentEncoder(student=student, params=params, bits=bits, step=step,
                        checkpoint=str(workdir.resolve()), fingerprint=params_fingerprint(params),
                        image_size=image_size, vocab=vocab, vocab_source=source, batch_size=batch_size)


# ---------------------------------------------------------------------------------------- inputs


def list_images(images: str | os.PathLike | Sequence[str | os.PathLike]) -> list[tuple[str, Path, bool]]:
  """-> [(id, path, from_folder)]: a folder's files recursively (sorted; id = relative path), or files."""
  items = [images] if isinstance(images, (str, os.PathLike)) else list(images)
  out = []
  for it in items:
    p = Path(it).expanduser()
    if p.is_dir():
      for f in sorted(x for x in p.rglob("*") if x.is_file() and not any(
          part.startswith(".") for part in x.relative_to(p).parts)):
        out.append((f.relative_to(p).as_posix(), f, True))
    elif p.is_file():
      out.append((p.name, p, False))
    else:
      raise FileNotFoundError(f"image path {p} does not exist.")
  seen: dict[str, Path] = {}
  for iid, path, _ in out:
    if iid in seen:
      raise SearchError(f"two images get the id {iid!r} ({seen[iid]} and {path}); ids are paths relative to "
                        f"the --images folder (file names for files): index them from one parent folder.")
    seen[iid] = path
  return out


def _load_one(path: Path, size: int):
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR)), None
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
    return None, f"{type(e).__name__}: {e}"


def read_captions(path: str | os.PathLike) -> dict[str, str]:
  """Captions file (module docstring) -> {image id: caption}."""
  p = Path(path)
  if not p.is_file():
    raise FileNotFoundError(f"captions file {p} does not exist.")
  text = p.read_text(encoding="utf-8")
  if p.suffix.lower() == ".csv":
    rows = list(csv.DictReader(text.splitlines()))
    if not rows or not {"image", "caption"} <= set(rows[0]):
      raise SearchError(f"{p}: a captions CSV needs a header with the columns image,caption and one row per image.")
    return {r["image"].strip(): r["caption"] for r in rows}
  out = {}
  for n, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    if "\t" not in line:
      raise SearchError(f"{p} line {n}: expected '<image id><TAB><caption>' (or use a .csv with columns "
                        f"image,caption).")
    key, cap = line.split("\t", 1)
    out[key.strip()] = cap
  return out


# ------------------------------------------------------------------------------------------ index


@dataclasses.dataclass
class SearchIndex:
  """Codes of indexed items (insertion order), reloadable without the checkpoint.

  ``image_codes``/``text_codes``: (N, bits/8) uint8 packed (``retrieval.pack_codes``); ``has_text``: (N,)
  bool (items whose caption gave a text code); ``meta``: checkpoint identity and provenance.
  """
  bits: int
  ids: list[str]
  image_codes: np.ndarray
  text_codes: np.ndarray
  has_text: np.ndarray
  captions: list[str]
  vocab: list[str]
  meta: dict

  def __len__(self) -> int:
    return len(self.ids)

  @classmethod
  def empty(cls, encoder: StudentEncoder) -> "SearchIndex":
    nb = encoder.bits // 8
    return cls(bits=encoder.bits, ids=[], image_codes=np.zeros((0, nb), np.uint8),
               text_codes=np.zeros((0, nb), np.uint8), has_text=np.zeros(0, bool), captions=[],
               vocab=list(encoder.vocab or []),
               meta={**encoder.identity, "image_size": encoder.image_size, "vocab_source": encoder.vocab_source})

  def append(self, ids: Sequence[str], image_codes: np.ndarray, text_codes: np.ndarray | None,
             has_text: np.ndarray, captions: Sequence[str]) -> None:
    """Appends items given as {-1,+1} codes (n, bits); old items are not touched."""
    n = len(ids)
    self.ids.extend(ids)
    self.image_codes = np.concatenate([self.image_codes, retrieval.pack_codes(image_codes)]) if n else self.image_codes
    tc = retrieval.pack_codes(text_codes) if text_codes is not None and n else np.zeros((n, self.bits // 8), np.uint8)
    self.text_codes = np.concatenate([self.text_codes, np.where(np.asarray(has_text)[:, None], tc, 0)])
    self.has_text = np.concatenate([self.has_text, np.asarray(has_text, bool)])
    self.captions.extend(captions)

  def check_encoder(self, encoder: StudentEncoder) -> None:
    """Refuses a checkpoint other than the one that built the index (codes would not be comparable)."""
    if encoder.bits != self.bits:
      raise SearchError(f"the index holds {self.bits}-bit codes but the checkpoint gives {encoder.bits}-bit "
                        f"codes; use the {self.bits}-bit student of {self.meta.get('checkpoint')} or build a "
                        f"new index.")
    if encoder.fingerprint != self.meta.get("fingerprint"):
      raise SearchError(
          f"the index was built with another checkpoint ({self.meta.get('checkpoint')}, step "
          f"{self.meta.get('step')}, fingerprint {self.meta.get('fingerprint')}) than {encoder.checkpoint} "
          f"(step {encoder.step}, fingerprint {encoder.fingerprint}); its codes are not comparable. Use that "
          f"checkpoint (--checkpoint, --step) or build a new index.")

  def save(self, path: str | os.PathLike) -> Path:
    """Writes the index as one .npz file (atomically) and returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    meta = {**self.meta, "format": INDEX_FORMAT, "bits": self.bits}
    with open(tmp, "wb") as f:
      np.savez(f, meta=np.array(json.dumps(meta)), ids=np.array(self.ids, dtype=str),
               image_codes=self.image_codes, text_codes=self.text_codes, has_text=self.has_text,
               captions=np.array(self.captions, dtype=str), vocab=np.array(self.vocab, dtype=str))
    os.replace(tmp, path)
    return path

  @classmethod
  def load(cls, path: str | os.PathLike) -> "SearchIndex":
    path = Path(path)
    if not path.is_file():
      raise FileNotFoundError(f"index file {path} does not exist; build it with `python -m lcdh_jax.search "
                              f"index --checkpoint RUN_DIR --images DIR --index {path}`.")
    try:
      with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        if meta.get("format") != INDEX_FORMAT:
          raise ValueError(f"format {meta.get('format')!r}")
        bits = int(meta["bits"])
        idx = cls(bits=bits, ids=[str(s) for s in z["ids"]], image_codes=z["image_codes"],
                  text_codes=z["text_codes"], has_text=z["has_text"].astype(bool),
                  captions=[str(s) for s in z["captions"]], vocab=[str(s) for s in z["vocab"]], meta=meta)
    except (OSError, ValueError, KeyError) as e:
      raise SearchError(f"{path} is not an lcdh_jax.search index ({type(e).__name__}: {e}).") from None
    n = len(idx.ids)
    if idx.image_codes.shape != (n, bits // 8) or idx.text_codes.shape != (n, bits // 8) or idx.has_text.shape != (n,):
      raise SearchError(f"{path} is damaged: code tables do not match its {n} ids.")
    return idx

  def search_codes(self, codes: np.ndarray, *, top_k: int, against: str = "image"
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(Q, bits) {-1,+1} query codes -> (distances (Q, k) int32, item positions (Q, k) int64)."""
    if against not in ("image", "text"):
      raise SearchError(f"search must be 'image' or 'text'; got {against!r}.")
    if len(self) == 0:
      raise SearchError("the index is empty: add images first (python -m lcdh_jax.search add ...).")
    if isinstance(top_k, bool) or int(top_k) != top_k or int(top_k) < 1:
      raise SearchError(f"top_k must be a positive integer; got {top_k!r}.")
    if against == "image":
      table, rows = self.image_codes, np.arange(len(self))
    else:
      rows = np.flatnonzero(self.has_text)
      if rows.size == 0:
        raise SearchError("the index holds no text codes (it was built without --captions); search images.")
      table = self.text_codes[rows]
    index = retrieval.HammingIndex(self.bits)
    index.add_packed(table)
    dist, pos = index.search(codes, top_k=int(top_k))
    return dist, rows[pos]


# ------------------------------------------------------------------------------------ operations


def _encode_items(encoder: StudentEncoder, items: list[tuple[str, Path, bool]], captions: dict[str, str] | None,
                  *, vocab: Sequence[str] | None = None, known_ids: Iterable[str] = (), log=print,
                  threads: int = 4):
  """Loads and encodes images in batches (tqdm; images/s at the end) and their captions.

  -> (ids, image codes (n, bits) int8, text codes (n, bits) int8 or None, has_text (n,), captions)."""
  from tqdm.auto import tqdm
  size, bs = encoder.image_size, encoder.batch_size
  ids, codes, skipped = [], [], []
  t0 = time.perf_counter()
  bar = tqdm(total=len(items), desc="encoding images", unit="img")
  with ThreadPoolExecutor(threads) as pool:
    for s in range(0, len(items), bs):
      chunk = items[s:s + bs]
      loaded = list(pool.map(lambda it: _load_one(it[1], size), chunk))
      batch, batch_ids = [], []
      for (iid, path, from_folder), (arr, err) in zip(chunk, loaded):
        if arr is None:
          if not from_folder:
            bar.close()
            raise SearchError(f"{path} is not a readable image ({err}).")
          skipped.append(iid)
          bar.write(f"skipped {path}: not a readable image ({err})")
          continue
        batch.append(arr)
        batch_ids.append(iid)
      if batch:
        codes.append(encoder.encode_images(np.stack(batch)))
        ids.extend(batch_ids)
      bar.update(len(chunk))
  bar.close()
  dt = time.perf_counter() - t0
  if ids:
    log(f"encoded {len(ids)} images in {dt:.1f} s ({len(ids) / max(dt, 1e-9):.1f} images/s)"
        + (f"; skipped {len(skipped)} file(s) that are not readable images" if skipped else ""))
  image_codes = np.concatenate(codes) if codes else np.zeros((0, encoder.bits), np.int8)
  caps = [(captions or {}).get(i, "") for i in ids]
  has_text = np.zeros(len(ids), bool)
  text_codes = None
  if captions:
    unknown = sorted(set(captions) - set(i for i, _, _ in items) - set(known_ids))
    if unknown:
      log(f"note: {len(unknown)} captions name no image given here (e.g. {unknown[0]!r}); they are ignored.")
    with_cap = [j for j, c in enumerate(caps) if c.strip()]
    if with_cap:
      bow = encoder.bow([caps[j] for j in with_cap], vocab)
      ok = bow.sum(1) > 0
      bad = [ids[with_cap[j]] for j in np.flatnonzero(~ok)]
      if bad:
        log(f"{len(bad)} captions have no word of the run's text vocabulary, so those items get no text code "
            f"(e.g. {bad[0]!r}: {caps[with_cap[int(np.flatnonzero(~ok)[0])]]!r}).")
      rows = [with_cap[j] for j in np.flatnonzero(ok)]
      text_codes = np.zeros((len(ids), encoder.bits), np.int8)
      if rows:
        text_codes[rows] = encoder.encode_bow(bow[ok])
        has_text[rows] = True
      log(f"encoded {len(rows)} captions")
  return ids, image_codes, text_codes, has_text, caps


def build_index(checkpoint: str | os.PathLike, images, *, captions: str | os.PathLike | dict | None = None,
                bits: int | None = None, step: int | None = None, vocab_file: str | None = None,
                batch_size: int = 64, encoder: StudentEncoder | None = None, log=print) -> SearchIndex:
  """Encodes images (a folder or files) and optional captions with a run's student -> a new ``SearchIndex``."""
  encoder = encoder or load_student(checkpoint, bits=bits, step=step, vocab_file=vocab_file, batch_size=batch_size)
  log(f"student: {encoder.checkpoint} K={encoder.bits} step {encoder.step} (fingerprint {encoder.fingerprint}); "
      f"text vocabulary: " + (f"{len(encoder.vocab)} words from {encoder.vocab_source}" if encoder.vocab
                              else "not found (text search disabled; pass --vocab FILE)"))
  index = SearchIndex.empty(encoder)
  items = list_images(images)
  caps = read_captions(captions) if isinstance(captions, (str, os.PathLike)) else captions
  if caps:
    encoder.bow([""])  # raises the missing-vocabulary error before any work
  index.append(*_encode_items(encoder, items, caps, log=log))
  if len(index) == 0:
    where = images if isinstance(images, (str, os.PathLike)) else ", ".join(map(str, images))
    raise SearchError(f"no readable image in {where}; nothing to index.")
  return index


def add_to_index(index: SearchIndex, images, *, captions=None, checkpoint: str | os.PathLike | None = None,
                 encoder: StudentEncoder | None = None, batch_size: int = 64, log=print) -> int:
  """Encodes only the new images (ids not yet in the index) and appends them; returns how many were added.

  Old codes are never re-encoded. A caption for an item already in the index that has no text code yet gives
  it one (only the caption is encoded); an item's existing text code is never replaced.
  """
  if encoder is None:
    ck = checkpoint or index.meta.get("checkpoint")
    encoder = load_student(ck, bits=index.bits, step=None if checkpoint else index.meta.get("step"),
                           batch_size=batch_size)
  index.check_encoder(encoder)
  vocab = index.vocab or encoder.vocab
  caps = read_captions(captions) if isinstance(captions, (str, os.PathLike)) else captions
  if caps:
    encoder.bow([""], vocab)  # raises the missing-vocabulary error before any work
    _caption_old_items(index, encoder, caps, vocab, log)
  known = set(index.ids)
  items = list_images(images)
  new = [it for it in items if it[0] not in known]
  if len(new) < len(items):
    log(f"skipped {len(items) - len(new)} images already in the index (same id)")
  if not new:
    log("no new image to add")
    return 0
  before = len(index)
  index.append(*_encode_items(encoder, new, caps, vocab=vocab, known_ids=known, log=log))
  return len(index) - before


def _caption_old_items(index: SearchIndex, encoder: StudentEncoder, caps: dict[str, str], vocab, log) -> None:
  """Text codes for indexed items that have none yet and get a caption now."""
  rows = [j for j, iid in enumerate(index.ids) if not index.has_text[j] and caps.get(iid, "").strip()]
  kept = [j for j, iid in enumerate(index.ids) if index.has_text[j] and caps.get(iid, "").strip()
          and caps[iid] != index.captions[j]]
  if kept:
    log(f"note: {len(kept)} indexed items already have a text code; their new captions are ignored "
        f"(e.g. {index.ids[kept[0]]!r}).")
  if not rows:
    return
  bow = encoder.bow([caps[index.ids[j]] for j in rows], vocab)
  ok = bow.sum(1) > 0
  if not ok.all():
    log(f"{int((~ok).sum())} captions have no word of the run's text vocabulary, so those items get no text "
        f"code (e.g. {index.ids[rows[int(np.flatnonzero(~ok)[0])]]!r}).")
  rows_ok = [r for r, good in zip(rows, ok) if good]
  if rows_ok:
    index.text_codes[rows_ok] = retrieval.pack_codes(encoder.encode_bow(bow[ok]))
    index.has_text[rows_ok] = True
    for j in rows_ok:
      index.captions[j] = caps[index.ids[j]]
    log(f"encoded {len(rows_ok)} captions of items already in the index")


def query(index: SearchIndex, *, text: str | Sequence[str] | None = None, image=None, top_k: int = 10,
          against: str = "image", encoder: StudentEncoder | None = None,
          checkpoint: str | os.PathLike | None = None) -> list[list[dict]]:
  """Top-k items for each text or image query -> per query a list of {rank, id, distance, caption}.

  Ties (equal Hamming distance) are in insertion order. The queries are encoded with the index's checkpoint
  (or ``encoder``/``checkpoint``, which must be the same one).
  """
  if (text is None) == (image is None):
    raise SearchError("give exactly one of text= or image= (CLI: --text or --image).")
  if len(index) == 0:
    raise SearchError("the index is empty: add images first (python -m lcdh_jax.search add ...).")
  if encoder is None:
    ck = checkpoint or index.meta.get("checkpoint")
    encoder = load_student(ck, bits=index.bits, step=None if checkpoint else index.meta.get("step"))
  index.check_encoder(encoder)
  if text is not None:
    texts = [text] if isinstance(text, str) else list(text)
    if not index.vocab:
      raise SearchError("this index has no text vocabulary (the run's was not found when it was built); "
                        "rebuild it with --vocab FILE to search by text.")
    codes = encoder.encode_texts(texts, index.vocab)
  else:
    paths = [image] if isinstance(image, (str, os.PathLike)) else list(image)
    arrs = []
    for p in paths:
      if not Path(p).is_file():
        raise FileNotFoundError(f"query image {p} does not exist.")
      arr, err = _load_one(Path(p), encoder.image_size)
      if arr is None:
        raise SearchError(f"{p} is not a readable image ({err}).")
      arrs.append(arr)
    codes = encoder.encode_images(np.stack(arrs))
  dist, pos = index.search_codes(codes, top_k=top_k, against=against)
  return [[{"rank": r + 1, "id": index.ids[p], "distance": int(d), "caption": index.captions[p]}
           for r, (d, p) in enumerate(zip(drow, prow))] for drow, prow in zip(dist, pos)]


# -------------------------------------------------------------------------------------------- CLI


def _write_results(path: str, queries: list[dict], results: list[list[dict]]) -> None:
  p = Path(path)
  p.parent.mkdir(parents=True, exist_ok=True)
  if p.suffix.lower() == ".csv":
    with open(p, "w", newline="", encoding="utf-8") as f:
      w = csv.writer(f)
      w.writerow(["query_kind", "query", "rank", "id", "distance", "caption"])
      for q, res in zip(queries, results):
        for r in res:
          w.writerow([q["kind"], q["value"], r["rank"], r["id"], r["distance"], r["caption"]])
  elif p.suffix.lower() == ".json":
    p.write_text(json.dumps([{"query": q, "results": res} for q, res in zip(queries, results)], indent=2))
  else:
    raise SearchError(f"--output must end in .json or .csv; got {p.name}.")


def _parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(prog="python -m lcdh_jax.search", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = ap.add_subparsers(dest="command", required=True)
  ix = sub.add_parser("index", help="encode images (+ captions) into a new index file")
  ix.add_argument("--checkpoint", required=True, help="workdir of a train.lcdh run (or its K<bits> folder)")
  ix.add_argument("--bits", type=int, default=None, help="code length, when the run trained several")
  ix.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  ix.add_argument("--vocab", default=None,
                  help="text vocabulary file (one word per BoW column), if the run's is not found")
  for p in (ix, sub.add_parser("add", help="append new images (+ captions) to an index, old codes untouched")):
    p.add_argument("--images", required=True, nargs="+", help="a folder (recursive) or image files")
    p.add_argument("--captions", default=None, help="CSV (columns image,caption) or TSV lines '<id>\\t<caption>'")
    p.add_argument("--index", required=True, help="the index file (.npz)")
    p.add_argument("--batch_size", "--batch-size", type=int, default=64)
  add = sub.choices["add"]
  add.add_argument("--checkpoint", default=None, help="default: the checkpoint recorded in the index")
  q = sub.add_parser("query", help="top-k items for a caption or an image")
  q.add_argument("--index", required=True)
  g = q.add_mutually_exclusive_group(required=True)
  g.add_argument("--text", action="append", help="a caption (repeat for several queries)")
  g.add_argument("--image", action="append", help="an image file (repeat for several queries)")
  q.add_argument("--top_k", "--top-k", type=int, default=10)
  q.add_argument("--search", choices=("image", "text"), default="image",
                 help="which codes to search: the images (default) or the captions")
  q.add_argument("--checkpoint", default=None, help="default: the checkpoint recorded in the index")
  q.add_argument("--output", default=None, help="write the results to a .json or .csv file")
  return ap


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    if args.command == "index":
      index = build_index(args.checkpoint, args.images, captions=args.captions, bits=args.bits, step=args.step,
                          vocab_file=args.vocab, batch_size=args.batch_size)
      if Path(args.index).exists():
        print(f"note: replacing the existing index {args.index} (use `add` to extend an index)")
      path = index.save(args.index)
      print(f"index: {len(index)} items ({int(index.has_text.sum())} with a text code), {index.bits} bits -> {path}")
    elif args.command == "add":
      index = SearchIndex.load(args.index)
      n = add_to_index(index, args.images, captions=args.captions, checkpoint=args.checkpoint,
                       batch_size=args.batch_size)
      index.save(args.index)
      print(f"index: added {n} items, {len(index)} in all ({int(index.has_text.sum())} with a text code) "
            f"-> {args.index}")
    else:
      index = SearchIndex.load(args.index)
      kind, values = ("text", args.text) if args.text else ("image", args.image)
      results = query(index, top_k=args.top_k, against=args.search, checkpoint=args.checkpoint,
                      **{kind: values})
      queries = [{"kind": kind, "value": v} for v in values]
      for qd, res in zip(queries, results):
        print(f"top {len(res)} of {qd['kind']} query {qd['value']!r} ({args.search} codes, {index.bits} bits):")
        print(f"{'rank':>5} {'distance':>8}  id")
        for r in res:
          cap = f"  [{r['caption']}]" if r["caption"] else ""
          print(f"{r['rank']:>5} {r['distance']:>8}  {r['id']}{cap}")
      if args.output:
        _write_results(args.output, queries, results)
        print(f"results -> {args.output}")
  except (SearchError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
