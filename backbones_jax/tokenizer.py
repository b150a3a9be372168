"""Text tokenizers producing CLIP text-tower inputs: ``(ids (N, L) int32, mask (N, L) int32)``.

* :class:`CLIPTokenizer`: CLIP's byte-level BPE through ``transformers`` (hub id, or a local
  directory with ``vocab.json`` + ``merges.txt`` / ``tokenizer.json``; local directories never
  touch the network). ``<|startoftext|>`` text ``<|endoftext|>``, padded with the tokenizer's pad
  id (``<|endoftext|>`` for OpenAI's) to ``context_length`` (77); too long texts are cut so the
  EOS token stays last.
* :class:`WordTokenizer`: a tiny offline word-level tokenizer with the same output format and
  BOS/EOS tokens, for random-weight demos and tests. Its EOS id is the largest id, so both of
  Hugging Face's pooling rules (first EOS, or argmax of the ids) find it.
"""
from __future__ import annotations

import collections
import os
import re
from typing import Iterable, Sequence

import numpy as np

__all__ = ["CLIPTokenizer", "WordTokenizer"]


def _as_list(texts) -> list[str]:
  if isinstance(texts, str):
    return [texts]
  texts = list(texts)
  bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
  if bad:
    raise ValueError(f"texts must be strings, got {sorted(set(bad))}")
  return texts


class CLIPTokenizer:
  """CLIP BPE tokenizer: ``tok(texts) -> (ids (N, L) int32, mask (N, L) int32)``."""

  def __init__(self, name_or_path: str | os.PathLike, context_length: int = 77):
    import transformers  # pylint: disable=g-import-not-at-top
    path = os.fspath(name_or_path)
    self.context_length = int(context_length)
    if os.path.isdir(path):
      files = set(os.listdir(path))
      if not ({"vocab.json", "merges.txt"} <= files or "tokenizer.json" in files):
        raise FileNotFoundError(f"{path} has no CLIP tokenizer files: expected vocab.json and "
                                f"merges.txt (or tokenizer.json), found {sorted(files)}")
      self._tok = transformers.CLIPTokenizer.from_pretrained(path, local_files_only=True)
    elif os.path.exists(path) or path.startswith((".", "/", "~")) or path.count("/") > 1:
      raise FileNotFoundError(f"CLIP tokenizer directory not found: {path}")
    else:
      # transformers 5 silently builds an empty tokenizer when files are missing, so fetch the
      # files explicitly and load the local snapshot.
      import huggingface_hub  # pylint: disable=g-import-not-at-top
      try:
        vocab = huggingface_hub.hf_hub_download(path, "vocab.json")
        huggingface_hub.hf_hub_download(path, "merges.txt")
        for optional in ("tokenizer_config.json", "special_tokens_map.json"):
          try:
            huggingface_hub.hf_hub_download(path, optional)
          except Exception:  # noqa: BLE001
            pass
      except Exception as e:  # noqa: BLE001  (offline, unknown repo)
        raise FileNotFoundError(
            f"could not load the CLIP tokenizer {path!r} from the Hugging Face hub or its cache "
            f"({type(e).__name__}: {e}); pass a local directory with vocab.json and merges.txt"
        ) from e
      self._tok = transformers.CLIPTokenizer.from_pretrained(os.path.dirname(vocab),
                                                             local_files_only=True)
    if len(self._tok) < 258 or self._tok.eos_token_id is None:
      raise ValueError(f"{path}: tokenizer has {len(self._tok)} tokens and EOS "
                       f"{self._tok.eos_token_id}; the vocabulary files look wrong")

  @property
  def vocab_size(self) -> int:
    return len(self._tok)

  @property
  def bos_token_id(self) -> int:
    return int(self._tok.bos_token_id)

  @property
  def eos_token_id(self) -> int:
    return int(self._tok.eos_token_id)

  @property
  def pad_token_id(self) -> int:
    return int(self._tok.pad_token_id)

  def __call__(self, texts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    out = self._tok(_as_list(texts), padding="max_length", truncation=True,
                    max_length=self.context_length, return_tensors="np")
    return (out["input_ids"].astype(np.int32), out["attention_mask"].astype(np.int32))


class WordTokenizer:
  """Lower-cased word-level tokenizer over a fixed vocabulary.

  Ids: 0 = ``<pad>``, 1 = ``<unk>``, 2 .. len(words)+1 = the words in order, then ``<bos>`` and
  ``<eos>`` (the largest id). ``tok(texts) -> (ids (N, L) int32, mask (N, L) int32)`` with
  ``[bos, words..., eos, pad...]``; long texts are cut so that EOS stays in the sequence.
  """

  PAD, UNK = 0, 1
  _WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")

  def __init__(self, words: Iterable[str], context_length: int = 77):
    words = [w.lower() for w in words]
    if len(set(words)) != len(words):
      dupes = [w for w, c in collections.Counter(words).items() if c > 1]
      raise ValueError(f"duplicate words in the vocabulary: {dupes[:10]}")
    if context_length < 2:
      raise ValueError("context_length must be at least 2 (BOS and EOS)")
    self.words = tuple(words)
    self.context_length = int(context_length)
    self._index = {w: i + 2 for i, w in enumerate(self.words)}
    self.bos_token_id = len(self.words) + 2
    self.eos_token_id = len(self.words) + 3
    self.pad_token_id = self.PAD

  @classmethod
  def from_texts(cls, texts: Iterable[str], max_words: int | None = None,
                 context_length: int = 77) -> "WordTokenizer":
    """Vocabulary = the ``max_words`` most frequent words of ``texts`` (ties: first seen)."""
    counts = collections.Counter()
    for t in _as_list(texts):
      counts.update(cls._WORD.findall(t.lower()))
    return cls([w for w, _ in counts.most_common(max_words)], context_length)

  @property
  def vocab_size(self) -> int:
    return len(self.words) + 4

  def split(self, text: str) -> list[str]:
    return self._WORD.findall(text.lower())

  def __call__(self, texts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    texts = _as_list(texts)
    ids = np.full((len(texts), self.context_length), self.PAD, np.int32)
    mask = np.zeros((len(texts), self.context_length), np.int32)
    for row, text in enumerate(texts):
      body = [self._index.get(w, self.UNK) for w in self.split(text)][:self.context_length - 2]
      seq = [self.bos_token_id, *body, self.eos_token_id]
      ids[row, :len(seq)] = seq
      mask[row, :len(seq)] = 1
    return ids, mask

  def decode(self, ids: Sequence[int]) -> str:
    """Words of one id row (specials and padding dropped, unknown words as ``<unk>``)."""
    out = []
    for i in ids:
      i = int(i)
      if 2 <= i < self.bos_token_id:
        out.append(self.words[i - 2])
      elif i == self.UNK:
        out.append("<unk>")
    return " ".join(out)
