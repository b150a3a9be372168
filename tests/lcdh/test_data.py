"""`.mat` readers on fake files written in the real layouts, splits, the grain pipeline, errors."""
import numpy as np
import pytest
import scipy.io

from lcdh_jax import data, synthetic


@pytest.fixture(scope="module")
def tiny():
  return synthetic.make_synthetic(num_samples=24, image_size=16, seed=3, show_progress=False)


def test_arrays_layout_roundtrip(tmp_path, tiny):
  synthetic.write_mat(tiny, tmp_path, name="synthetic", layout="arrays")
  d = data.load_dataset("synthetic", tmp_path)
  np.testing.assert_array_equal(d.images, tiny.images)
  np.testing.assert_array_equal(d.tags, tiny.tags)
  np.testing.assert_array_equal(d.labels, tiny.labels)
  assert d.captions == tiny.captions
  assert len(d) == 24 and d.image(0).shape == (16, 16, 3)


def test_paths_layout_roundtrip(tmp_path, tiny):
  synthetic.write_mat(tiny, tmp_path, layout="paths")
  d = data.load_dataset("synthetic", tmp_path)
  assert d.images is None and len(d.image_paths) == 24
  np.testing.assert_array_equal(d.image(5), tiny.images[5])  # PNG is lossless
  np.testing.assert_array_equal(d.labels, tiny.labels)
  assert d.captions == tiny.captions
  assert d.image(5, image_size=8).shape == (8, 8, 3)


def _words(n):
  """n distinct tag-like words without digits (so a made-up 'tag12' could not match them)."""
  syl = ["ka", "lo", "mi", "su", "te", "ra", "no", "vi", "de", "po", "fu", "ze"]
  return [a + b + c for a in syl for b in syl for c in syl][:n]


def _fake_mirflickr(root, n=10, with_caption=False, seed=0):
  """A fake MIRFlickr file in the DCMH key layout (IAll/YAll/LAll, 24 labels, 1386-d tags)."""
  r = np.random.default_rng(seed)
  tags = (r.random((n, 1386)) < 0.01).astype(np.float32)
  tags[:, 5] = 1.0  # every item has a tag
  keys = {"IAll": r.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8), "YAll": tags,
          "LAll": (r.random((n, 24)) < 0.2).astype(np.uint8)}
  if with_caption:
    keys["caption"] = np.array([f"caption {i}" for i in range(n)], dtype=object)
  scipy.io.savemat(root / "mirflickr25k.mat", keys)
  return tags


def test_dcmh_layout_without_captions_needs_tag_vocab_and_never_invents_text(tmp_path):
  import re
  tags = _fake_mirflickr(tmp_path)
  # No captions and no tag names: a clear error naming what is missing and how to supply it.
  with pytest.raises(data.DatasetError, match=r"no captions.*1386 BoW dimensions.*one word per "
                     r"line.*1386 lines.*tag_vocab\.txt.*--config\.tag_vocab"):
    data.load_dataset("mirflickr", tmp_path)
  # With the tag vocabulary (one word per BoW column) the text is each item's own tag words.
  vocab = _words(1386)
  (tmp_path / "tag_vocab.txt").write_text("\n".join(vocab) + "\n")
  d = data.load_dataset("mirflickr", tmp_path)
  assert d.tags.shape == (10, 1386) and d.labels.shape == (10, 24) and d.images.shape == (10, 8, 8, 3)
  np.testing.assert_array_equal(d.tags, tags)  # the student's BoW is YAll itself
  for i in range(10):
    assert d.captions[i].split() == [vocab[j] for j in np.flatnonzero(tags[i])]
  assert not any(re.search(r"tag\d", c) for c in d.captions)  # the old placeholder text is gone
  assert "tag_vocab.txt" in d.text_source and "YAll" in d.bow_source and "1386" in d.bow_source
  # The vocabulary may also be passed explicitly, from anywhere; its length must match YAll.
  (tmp_path / "tag_vocab.txt").unlink()
  (tmp_path / "v.txt").write_text("\n".join(vocab))
  assert data.load_dataset("mirflickr", tmp_path, tag_vocab=tmp_path / "v.txt").captions == d.captions
  (tmp_path / "v.txt").write_text("\n".join(vocab[:-1]))
  with pytest.raises(data.DatasetError, match="1385 words but the tag BoW has 1386"):
    data.load_dataset("mirflickr", tmp_path, tag_vocab=tmp_path / "v.txt")
  with pytest.raises(FileNotFoundError, match="tag_vocab="):
    data.load_dataset("mirflickr", tmp_path, tag_vocab=tmp_path / "missing.txt")
  # Captions in the file win; no vocabulary is needed then.
  _fake_mirflickr(tmp_path, with_caption=True)
  d = data.load_dataset("mirflickr", tmp_path)
  assert d.captions[3] == "caption 3" and "'caption'" in d.text_source


def _dchmt(root, n=3):
  from PIL import Image
  (root / "imgs").mkdir(exist_ok=True)
  paths = []
  for i in range(n):
    Image.fromarray(np.full((4, 4, 3), i * 40, np.uint8)).save(root / f"imgs/{i}.jpg")
    paths.append(f"imgs/{i}.jpg")
  cell = np.empty((n,), object)
  cell[:] = paths
  scipy.io.savemat(root / "index.mat", {"index": cell})
  scipy.io.savemat(root / "label.mat", {"category": np.eye(n, dtype=np.uint8)})


def test_dchmt_layout_with_caption_txt_builds_bow_only_without_tags(tmp_path):
  _dchmt(tmp_path)
  (tmp_path / "caption.txt").write_text("a dog\na cat dog\nsky\n")
  d = data.load_dataset("coco", tmp_path)
  assert d.tags.shape == (3, 4) and d.captions[1] == "a cat dog"  # 4 distinct words
  assert d.bow_source.startswith("BUILT") and "4-d" in d.bow_source  # the log says so, with size
  vocab_bow, vocab = data.bow_from_captions(d.captions)
  assert vocab[:2] == ["a", "dog"]
  np.testing.assert_array_equal(vocab_bow[1, :2], [1, 1])
  np.testing.assert_array_equal(d.tags, vocab_bow)
  # With a tag vocabulary the built BoW has exactly its dimensions, in its order.
  (tmp_path / "tag_vocab.txt").write_text("sky\ndog\ncat\nbird\nnew_york\n")
  (tmp_path / "caption.txt").write_text("a dog\na cat dog\nsky New_York\n")
  d = data.load_dataset("coco", tmp_path)
  np.testing.assert_array_equal(d.tags, [[0, 1, 0, 0, 0], [0, 1, 1, 0, 0], [1, 0, 0, 0, 1]])
  assert "BUILT" in d.bow_source and "5-d" in d.bow_source and "tag vocabulary" in d.bow_source


def test_dchmt_layout_uses_the_datasets_own_tag_vectors(tmp_path):
  """MIRFlickr in the DCHMT layout with its 1386-d tag matrix: the student reads it unchanged."""
  _dchmt(tmp_path)
  scipy.io.savemat(tmp_path / "caption.mat", {"caption": np.array(["a dog", "cat", "sky"], object)})
  own = (np.random.default_rng(0).random((3, 1386)) < 0.01).astype(np.float32)
  own[:, 7] = 1
  scipy.io.savemat(tmp_path / "tag.mat", {"YAll": own})
  d = data.load_dataset("mirflickr", tmp_path)
  np.testing.assert_array_equal(d.tags, own)
  assert d.captions == ["a dog", "cat", "sky"]
  assert d.bow_source == "the dataset's own: tag.mat key 'YAll', 1386-d"
  # No caption file: the text is the tag words, which need the vocabulary.
  (tmp_path / "caption.mat").unlink()
  with pytest.raises(data.DatasetError, match="no captions.*tag_vocab"):
    data.load_dataset("mirflickr", tmp_path)
  vocab = _words(1386)
  (tmp_path / "tag_vocab.txt").write_text("\n".join(vocab))
  d = data.load_dataset("mirflickr", tmp_path)
  assert d.captions[0].split() == [vocab[j] for j in np.flatnonzero(own[0])]
  np.testing.assert_array_equal(d.tags, own)


def test_missing_dataset_message(tmp_path):
  with pytest.raises(FileNotFoundError, match="mirflickr25k.mat.*IAll.*index.mat"):
    data.load_dataset("mirflickr", tmp_path)
  with pytest.raises(ValueError, match="unknown dataset"):
    data.load_dataset("imagenet", tmp_path)


def test_inconsistent_files_raise(tmp_path):
  scipy.io.savemat(tmp_path / "iapr.mat", {"IAll": np.zeros((4, 8, 8, 3), np.uint8),
                                           "YAll": np.zeros((3, 5)), "LAll": np.zeros((4, 2))})
  with pytest.raises(ValueError, match="tags has 3 items but labels has 4"):
    data.load_dataset("iapr", tmp_path)
  scipy.io.savemat(tmp_path / "iapr.mat", {"IAll": np.zeros((4, 8, 8, 3), np.uint8)})
  with pytest.raises(ValueError, match="lacks keys"):
    data.load_dataset("iapr", tmp_path)


def test_split_is_seeded_and_disjoint():
  s1 = data.split_indices(100, num_query=20, num_train=30, seed=7)
  s2 = data.split_indices(100, num_query=20, num_train=30, seed=7)
  np.testing.assert_array_equal(s1.query, s2.query)
  assert len(s1.query) == 20 and len(s1.database) == 80 and len(s1.train) == 30
  assert not set(s1.query) & set(s1.database)
  assert set(s1.train) <= set(s1.database)
  with pytest.raises(ValueError, match="exceeds"):
    data.split_indices(10, num_query=5, num_train=6)


def test_grain_pipeline_is_deterministic(tiny):
  d = data.CrossModalData(name="t", images=tiny.images, tags=tiny.tags,
                          labels=tiny.labels.astype(np.float32), captions=tiny.captions)
  idx = np.arange(4, 20)
  ds = data.image_dataset(d, idx, batch_size=4, seed=1, image_size=16)
  b0, b1 = ds[0], ds[1]
  assert b0["image"].shape == (4, 16, 16, 3) and b0["image"].dtype == np.float32
  assert b0["bow"].shape == (4, tiny.tags.shape[1])
  again = data.image_dataset(d, idx, batch_size=4, seed=1, image_size=16)[1]
  np.testing.assert_array_equal(b1["index"], again["index"])
  np.testing.assert_allclose(b1["image"], again["image"])
  assert set(b0["index"]) <= set(idx)
  np.testing.assert_array_equal(b0["labels"], d.labels[b0["index"]])
  # One epoch covers every index exactly once.
  seen = np.concatenate([ds[i]["index"] for i in range(4)])
  assert sorted(seen) == list(idx)


def test_matlab_order_images_are_moved_to_nhwc(tmp_path):
  r = np.random.default_rng(1)
  nhwc = r.integers(0, 255, (5, 8, 8, 3), dtype=np.uint8)
  scipy.io.savemat(tmp_path / "nuswide.mat", {"images": nhwc.transpose(1, 2, 3, 0),  # H,W,3,N
                                              "YAll": np.zeros((5, 4)), "LAll": np.eye(5),
                                              "tag_vocab": np.array(list("abcd"), object)})
  d = data.load_dataset("nuswide", tmp_path)
  np.testing.assert_array_equal(d.images, nhwc)


def test_raw_image_folder_reader(tmp_path):
  from PIL import Image
  (tmp_path / "images" / "sub").mkdir(parents=True)
  for i, name in enumerate(["a.png", "sub/b.jpg", "c.png"]):
    Image.fromarray(np.full((10, 12, 3), 40 * i, np.uint8)).save(tmp_path / "images" / name)
  (tmp_path / "annotations.csv").write_text(
      "image,labels,caption\na.png,dog;sky,a dog under the sky\nsub/b.jpg,cat,a cat\nc.png,sky; dog ,sky and dog\n")
  d = data.load_dataset("mirflickr", tmp_path)  # auto-detected layout
  assert d.image_paths == [str(tmp_path / "images" / n) for n in ["a.png", "sub/b.jpg", "c.png"]]
  # classes sorted: cat, dog, sky
  np.testing.assert_array_equal(d.labels, [[0, 1, 1], [1, 0, 0], [0, 1, 1]])
  assert d.captions[1] == "a cat" and d.tags.shape[0] == 3 and d.tags[1].sum() > 0
  assert d.image(1).shape == (10, 12, 3) and int(d.image(2)[0, 0, 0]) == 80
  # classes.txt fixes the order, and an unknown class is named
  (tmp_path / "classes.txt").write_text("sky\ndog\ncat\n")
  np.testing.assert_array_equal(data.read_image_folder(tmp_path).labels[0], [1, 1, 0])
  (tmp_path / "classes.txt").write_text("sky\ndog\n")
  with pytest.raises(ValueError, match="class 'cat' is not in"):
    data.read_image_folder(tmp_path)
  (tmp_path / "classes.txt").unlink()
  (tmp_path / "images" / "c.png").unlink()
  with pytest.raises(FileNotFoundError, match="c.png listed in .*annotations.csv is missing"):
    data.read_image_folder(tmp_path)


def test_dchmt_index_with_another_machines_absolute_paths_is_relocated(tmp_path):
  """DCHMT's make_mirflickr25k.py stores absolute paths of the machine that ran it."""
  from PIL import Image
  (tmp_path / "mirflickr").mkdir()
  for i in range(3):
    Image.fromarray(np.full((4, 4, 3), 50 * i, np.uint8)).save(tmp_path / f"mirflickr/im{i + 1}.jpg")
  listed = [f"/data/somebody/flickr25k/mirflickr/im{i + 1}.jpg" for i in range(3)]
  scipy.io.savemat(tmp_path / "index.mat", {"index": np.array(listed)})  # a char matrix, as DCHMT
  scipy.io.savemat(tmp_path / "label.mat", {"category": np.eye(3, dtype=np.uint8)})
  scipy.io.savemat(tmp_path / "caption.mat", {"caption": np.array([["sky sea"], ["dog"], ["x"]])})
  d = data.load_dataset("mirflickr", tmp_path)
  assert d.image_paths == [str(tmp_path / f"mirflickr/im{i + 1}.jpg") for i in range(3)]
  assert int(d.image(2)[0, 0, 0]) == 100 and d.captions[0] == "sky sea"
  (tmp_path / "mirflickr" / "im1.jpg").unlink()
  with pytest.raises(FileNotFoundError, match="im1.jpg listed in .*index.mat does not exist"):
    data.load_dataset("mirflickr", tmp_path)
