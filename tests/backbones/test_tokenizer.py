"""Tokenizers: CLIP BPE from a local vocab.json/merges.txt, and the offline WordTokenizer."""
import json

import numpy as np
import pytest

from backbones_jax import clip
from backbones_jax.tokenizer import CLIPTokenizer, WordTokenizer

pytest.importorskip("transformers")


def _bytes_to_unicode():
  """GPT-2/CLIP byte -> printable unicode table (the standard formula)."""
  bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1)))
  cs, n = bs[:], 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return [chr(c) for c in cs]


@pytest.fixture()
def bpe_dir(tmp_path):
  chars = _bytes_to_unicode()
  merges = [("p", "h"), ("o", "t"), ("ph", "ot"), ("phot", "o</w>")]
  vocab = (chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
           + ["<|startoftext|>", "<|endoftext|>"])
  (tmp_path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
  (tmp_path / "merges.txt").write_text(
      "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
  return tmp_path, {t: i for i, t in enumerate(vocab)}


def test_clip_tokenizer_local_dir(bpe_dir):
  path, vocab = bpe_dir
  tok = CLIPTokenizer(str(path))
  ids, mask = tok(["A photo", "photo of a photo"])
  assert ids.shape == mask.shape == (2, 77) and ids.dtype == mask.dtype == np.int32
  bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
  assert tok.bos_token_id == bos and tok.eos_token_id == eos
  # Hand-computed BPE: "photo" merges to one token, "of" stays two byte tokens.
  want1 = [bos, vocab["a</w>"], vocab["photo</w>"], eos]
  want2 = [bos, vocab["photo</w>"], vocab["o"], vocab["f</w>"], vocab["a</w>"], vocab["photo</w>"],
           eos]
  assert ids[0, :4].tolist() == want1 and mask[0].sum() == 4
  assert ids[1, :7].tolist() == want2 and mask[1].sum() == 7
  assert np.all(ids[0, 4:] == tok.pad_token_id) and not mask[0, 4:].any()
  # Truncation keeps the EOS at the end.
  long_ids, long_mask = tok("a photo " * 60)
  assert long_mask.sum() == 77 and long_ids[0, -1] == eos and long_ids[0, 0] == bos


def test_clip_tokenizer_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="vocab.json"):
    CLIPTokenizer(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="not found"):
    CLIPTokenizer(str(tmp_path / "missing"))
  with pytest.raises(FileNotFoundError, match="hub"):  # tests run with HF_HUB_OFFLINE=1
    CLIPTokenizer("not-a-user/not-a-tokenizer")


def test_word_tokenizer():
  tok = WordTokenizer(["a", "photo", "of", "cat"], context_length=6)
  ids, mask = tok(["A photo of a CAT!", "dog", "a a a a a a a a"])
  bos, eos = tok.bos_token_id, tok.eos_token_id
  assert (bos, eos, tok.vocab_size) == (6, 7, 8)
  np.testing.assert_array_equal(ids, [[bos, 2, 3, 4, 2, eos],
                                      [bos, 1, eos, 0, 0, 0],
                                      [bos, 2, 2, 2, 2, eos]])
  np.testing.assert_array_equal(mask, [[1] * 6, [1, 1, 1, 0, 0, 0], [1] * 6])
  assert ids.dtype == mask.dtype == np.int32
  assert tok.decode(ids[0]) == "a photo of a"  # "cat" cut to keep EOS and tok.decode(ids[1]) == "<unk>"
  with pytest.raises(ValueError, match="duplicate"):
    WordTokenizer(["a", "A"])
  with pytest.raises(ValueError, match="strings"):
    tok([1, 2])
  built = WordTokenizer.from_texts(["the cat", "the dog", "a cat"], max_words=2)
  assert built.words == ("the", "cat")


def test_word_tokenizer_eos_pooling():
  """With a WordTokenizer, CLIP pools the hidden state at EOS whatever the padding."""
  tok = WordTokenizer(["red", "green", "blue"], context_length=8)
  spec = clip.tiny_clip_spec(width=16, layers=1, heads=2, vocab_size=tok.vocab_size,
                             context_length=8, eos_token_id=tok.eos_token_id, projection_dim=8)
  model, params = clip.init_clip(spec, seed=0)
  ids, mask = tok(["red green", "blue"])
  emb = np.asarray(clip.encode_text(model, params, ids, mask))
  # Changing what comes after EOS (padding) does not change the embedding (causal + EOS pool).
  ids2 = ids.copy()
  ids2[0, 4:] = 3
  np.testing.assert_allclose(np.asarray(clip.encode_text(model, params, ids2, mask)), emb,
                             atol=1e-6)
  # Changing a word before EOS does.
  ids3 = ids.copy()
  ids3[0, 1] = 4
  assert not np.allclose(np.asarray(clip.encode_text(model, params, ids3, mask))[0], emb[0],
                         atol=1e-4)
