"""MVTec-FS reader: real annotation CSVs (when the fixture is present) and a tiny fake dataset."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mvrec_jax import data as D
from mvrec_jax import views as V

REPO = Path(__file__).resolve().parents[2]
# Shared fixtures live next to the repository (../shared/fixtures), never inside it.
FIXTURES = next((p for p in (REPO.parent / "shared" / "fixtures", REPO / "shared" / "fixtures") if p.is_dir()),
                REPO.parent / "shared" / "fixtures")
CONFIG = FIXTURES / "mvtec_fs_config"
OFFICIAL = FIXTURES / "mvrec_official"


def _need_config():
  if not (CONFIG / "transistor_config1" / "train.csv").is_file():
    pytest.skip("MVTec-FS annotation fixture not present")


def test_real_csvs_all_categories():
  _need_config()
  counts = {}
  for cat in D.MVTEC_FS_CATEGORIES:
    cd = D.load_category(CONFIG, cat)
    assert cd.class_names == D.OFFICIAL_CLASS_NAMES[cat]
    counts[cat] = (len(cd.train), len(cd.valid))
    for inst in cd.train + cd.valid:
      assert inst.image_path is None and inst.polygon.shape[1] == 2
      assert cd.class_names[inst.label] == inst.class_name
      x1, y1, x2, y2 = inst.bbox
      assert x1 <= x2 and y1 <= y2
      h, w = inst.image_size
      assert 0 <= inst.polygon[:, 0].min() and inst.polygon[:, 0].max() <= w
    # every class has support instances for 5-shot sampling... at least one per class
    assert set(i.label for i in cd.train) == set(range(len(cd.class_names)))
  assert counts["transistor"] == (22, 21)
  assert counts["bottle"] == (34, 32)
  t = D.load_category(CONFIG, "transistor")
  first = t.train[0]
  assert first.img_rel_path == "training/bent_lead/000.png" and first.class_name == "bent_lead"
  assert first.bbox == (240.0, 830.0, 290.0, 947.0)
  np.testing.assert_array_equal(first.polygon[0], [287, 830])
  assert V.bbox_of_polygon(first.polygon) == first.bbox
  # capsule's official order is not alphabetical
  cap = D.load_category(CONFIG, "capsule")
  assert cap.class_names[0] == "squeeze"
  assert all(cap.class_names[i.label] == i.class_name for i in cap.train)
  # toothbrush (not in the benchmark) falls back to sorted labels
  assert D.load_category(CONFIG, "toothbrush").class_names == ("defective",)


def test_real_labels_match_official_buffers():
  _need_config()
  if not (OFFICIAL / "transistor_support.pt").is_file():
    pytest.skip("official MVREC feature fixture not present")
  torch_pickle = pytest.importorskip("backbones_jax.torch_pickle")
  t = D.load_category(CONFIG, "transistor")
  for split, fname in (("train", "transistor_support.pt"), ("valid", "transistor_query.pt")):
    items = torch_pickle.load_torch_file(OFFICIAL / fname)
    ys = [int(np.asarray(it["y"])) for it in items]
    assert ys == [i.label for i in t.split(split)]


def _write_fake(root: Path, layout: str, *, corrupt: bool = False, drop: bool = False, size=(24, 20)):
  """Two categories of a fake MVTec-FS release: CONFIG/<cat>_config1/*.csv + images."""
  w, h = size
  rng = np.random.default_rng(0)
  rows = {"train": [], "valid": []}
  for split, sp in (("train", "training"), ("valid", "testing")):
    for k, label in enumerate(["scratch", "hole", "scratch"]):
      name = f"{k:03d}.png"
      poly = [[3 + k, 4], [12, 4 + k], [10, 15]]
      x = [p[0] for p in poly]
      y = [p[1] for p in poly]
      rows[split].append(dict(imageName=name, imageData="", imageHeight=h, imageWidth=w, img_id=k, part="widget",
                              id=k, img_rel_path=f"{sp}/{label}/{name}", classification_rank="",
                              x1=min(x), x2=max(x), y1=min(y), y2=max(y), label=label, rank=-1,
                              points=json.dumps(poly)))
      if layout == "fs":
        p = root / "image" / "widget" / sp / label / name
      elif layout == "image_dir":
        p = root / "widget" / sp / label / name
      else:  # mvtec ad
        p = root / "widget" / "test" / label / name
      if drop and split == "valid" and k == 1:
        continue
      p.parent.mkdir(parents=True, exist_ok=True)
      if corrupt and split == "train" and k == 2:
        p.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
      else:
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
  cfg = root / "CONFIG" / "widget_config1"
  cfg.mkdir(parents=True, exist_ok=True)
  for split, rs in rows.items():
    with open(cfg / f"{split}.csv", "w", newline="") as f:
      wr = csv.DictWriter(f, fieldnames=list(D.CSV_COLUMNS))
      wr.writeheader()
      wr.writerows(rs)
  return cfg


@pytest.mark.parametrize("layout", ["fs", "image_dir", "mvtec_ad"])
def test_fake_layouts_resolve(tmp_path, layout):
  _write_fake(tmp_path, layout)
  cd = D.load_category(tmp_path, "widget", data_root=tmp_path)
  assert cd.class_names == ("hole", "scratch")  # no official list: sorted labels
  assert [i.label for i in cd.train] == [1, 0, 1]
  assert all(Path(i.image_path).is_file() for i in cd.train + cd.valid)
  assert cd.valid[2].bbox == (5.0, 4.0, 12.0, 15.0)
  x, a = D.instance_inputs(cd.train[0], crop_sizes=(8, 12, 16), resize=(16,))
  assert x.shape == (27, 16, 16, 3) and a.shape == (27, 16, 16, 1)
  # the alpha of the centre view contains the polygon
  assert (a[13] > 0).any() and (a[13] < 0).any()


def test_fake_errors(tmp_path):
  _write_fake(tmp_path, "fs", drop=True)
  with pytest.raises(FileNotFoundError, match=r"1 of 3 images of widget/valid are missing.*MVTec AD"):
    D.load_category(tmp_path, "widget", data_root=tmp_path)
  # annotation-only read still works, and check_images=False keeps the missing path as None
  cd = D.load_category(tmp_path, "widget", data_root=tmp_path, check_images=False)
  assert cd.valid[1].image_path is None
  with pytest.raises(ValueError, match="no image path"):
    D.instance_inputs(cd.valid[1])
  with pytest.raises(FileNotFoundError, match="No annotations for category 'gadget'.*widget"):
    D.load_category(tmp_path, "gadget")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    D.load_category(tmp_path / "nowhere", "widget")
  with pytest.raises(ValueError, match=r"labels \['scratch'\] are not in the class list"):
    D.load_category(tmp_path, "widget", class_names=["hole"])
  with pytest.raises(ValueError, match="split"):
    D.read_split(tmp_path, "widget", "test")


def test_corrupt_and_mismatched_images(tmp_path):
  _write_fake(tmp_path, "fs", corrupt=True)
  cd = D.load_category(tmp_path, "widget", data_root=tmp_path)
  with pytest.raises(ValueError, match="corrupt"):
    D.instance_inputs(cd.train[2])
  other = tmp_path / "other"
  _write_fake(other, "fs", size=(24, 20))
  # rewrite one image at another size: the polygon would not line up
  p = Path(D.load_category(other, "widget", data_root=other).train[0].image_path)
  Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(p)
  with pytest.raises(ValueError, match="annotation says 24x20"):
    D.instance_inputs(D.load_category(other, "widget", data_root=other).train[0])


def test_bad_points(tmp_path):
  cfg = _write_fake(tmp_path, "fs")
  text = (cfg / "train.csv").read_text().replace("[[3, 4], [12, 4], [10, 15]]", "not json")
  (cfg / "train.csv").write_text(text)
  with pytest.raises(ValueError, match="row 2: cannot parse `points`"):
    D.load_category(tmp_path, "widget")
