"""Synthetic MVTec-FS-layout defects: readable by data.py, deterministic, pixel-exact polygons."""
import json

import numpy as np
import pytest

from mvrec_jax import data as D
from mvrec_jax import synthetic as S
from mvrec_jax import views as V


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  root = tmp_path_factory.mktemp("syn")
  S.make_dataset(root, categories=("disc", "speckle"), image_size=64, n_train=3, n_valid=2, seed=0)
  return root


def test_readable_by_data_reader(small):
  disc = D.load_category(small, "disc", data_root=small)
  assert disc.class_names == tuple(sorted(S.CATEGORIES["disc"])) == ("crack", "hole", "missing_part", "scratch", "stain")
  assert len(disc.train) == 15 and len(disc.valid) == 10
  assert [i.label for i in disc.train] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
  sp = D.load_category(small, "speckle", data_root=small)
  assert sp.class_names == ("crack", "hole", "scratch", "stain")
  for inst in disc.train + sp.valid:
    assert inst.image_size == (64, 64)
    assert V.bbox_of_polygon(inst.polygon) == inst.bbox
  x, a = D.instance_inputs(disc.train[4], crop_sizes=S.crop_sizes_for(64), resize=(32,))
  assert S.crop_sizes_for(64) == (16, 24, 32)
  assert x.shape == (27, 32, 32, 3) and a.shape == (27, 32, 32, 1)


def test_defect_pixels_are_the_polygon_pixels(small):
  disc = D.load_category(small, "disc", data_root=small)
  for inst in disc.train:
    img = np.asarray(D.load_image(inst.image_path).convert("RGB")).astype(int)
    m = V.polygon_to_mask(inst.polygon, 64, 64) > 0
    assert m.sum() >= 6
    inside = img[m].mean(-1)
    if inst.class_name == "hole":
      assert inside.max() <= 15
    elif inst.class_name == "scratch":
      assert inside.min() >= 0.75 * 215 - 1
    elif inst.class_name == "missing_part":
      assert np.abs(inside - 25).max() < 20  # background colour where the ring was
      ring_like = img[~m].mean(-1) > 60
      assert ring_like.any()


def test_deterministic_and_idempotent(tmp_path, small):
  a = S.make_dataset(tmp_path / "a", categories=("disc",), image_size=64, n_train=3, n_valid=2, seed=0)
  ca = (a / "CONFIG" / "disc_config1" / "train.csv").read_text()
  assert ca == (small / "CONFIG" / "disc_config1" / "train.csv").read_text()
  b = S.make_dataset(tmp_path / "b", categories=("disc",), image_size=64, n_train=3, n_valid=2, seed=1)
  assert (b / "CONFIG" / "disc_config1" / "train.csv").read_text() != ca
  # same settings again: nothing rewritten
  p = a / "image" / "disc" / "training" / "hole" / "000.png"
  mtime = p.stat().st_mtime_ns
  S.make_dataset(a, categories=("disc",), image_size=64, n_train=3, n_valid=2, seed=0)
  assert p.stat().st_mtime_ns == mtime
  with pytest.raises(FileExistsError, match="overwrite=True"):
    S.make_dataset(a, categories=("disc",), image_size=64, n_train=2, n_valid=2, seed=0)
  S.make_dataset(a, categories=("disc",), image_size=64, n_train=2, n_valid=2, seed=0, overwrite=True)
  assert json.loads((a / "synthetic.json").read_text())["n_train"] == 2
  assert len(D.load_category(a, "disc", data_root=a).train) == 10


def test_errors():
  with pytest.raises(ValueError, match="Unknown synthetic categories"):
    S.make_dataset("/tmp/unused_syn_root", categories=("carpet",))
  with pytest.raises(ValueError, match="missing_part needs an object"):
    S.make_image("weave", "missing_part", np.random.default_rng(0), 64)
  with pytest.raises(ValueError, match="too small"):
    S.make_image("disc", "hole", np.random.default_rng(0), 16)
