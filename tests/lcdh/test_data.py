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


def test_dcmh_mirflickr_layout_without_captions(tmp_path):
  """A fake MIRFlickr file in the DCMH key layout (IAll/YAll/LAll, 24 labels, 1386-d tags)."""
  r = np.random.default_rng(0)
  n = 10
  scipy.io.savemat(tmp_path / "mirflickr25k.mat", {
      "IAll": r.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8),
      "YAll": (r.random((n, 1386)) < 0.01).astype(np.float32),
      "LAll": (r.random((n, 24)) < 0.2).astype(np.uint8)})
  d = data.load_dataset("mirflickr", tmp_path)
  assert d.tags.shape == (n, 1386) and d.labels.shape == (n, 24) and d.images.shape == (n, 8, 8, 3)
  assert len(d.captions) == n


def test_dchmt_layout_with_caption_txt_builds_bow(tmp_path):
  from PIL import Image
  (tmp_path / "imgs").mkdir()
  paths = []
  for i in range(3):
    Image.fromarray(np.full((4, 4, 3), i * 40, np.uint8)).save(tmp_path / f"imgs/{i}.jpg")
    paths.append(f"imgs/{i}.jpg")
  cell = np.empty((3,), object)
  cell[:] = paths
  scipy.io.savemat(tmp_path / "index.mat", {"index": cell})
  scipy.io.savemat(tmp_path / "label.mat", {"category": np.eye(3, dtype=np.uint8)})
  (tmp_path / "caption.txt").write_text("a dog\na cat dog\nsky\n")
  d = data.load_dataset("coco", tmp_path)
  assert d.tags.shape[0] == 3 and d.captions[1] == "a cat dog"
  vocab_bow, vocab = data.bow_from_captions(d.captions)
  assert vocab[:2] == ["a", "dog"]
  np.testing.assert_array_equal(vocab_bow[1, :2], [1, 1])


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
                                              "YAll": np.zeros((5, 4)), "LAll": np.eye(5)})
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
