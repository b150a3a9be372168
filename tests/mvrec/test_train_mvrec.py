"""`python -m train.mvrec`: demo end to end (tiny), official_features discovery/reproduction, clear errors."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from train import mvrec as M
from train.configs import mvrec as C


def _tiny_demo(tmp_path):
  c = C.get_config("demo")
  c.synthetic.categories = ("weave",)
  c.synthetic.n_train = 3
  c.synthetic.n_valid = 2
  c.synthetic.image_size = 64
  c.views.crop_sizes = (16.0, 24.0, 32.0)
  c.views.resize = (32,)
  c.alpha_clip.tiny_width = 16
  c.alpha_clip.tiny_layers = 1
  c.alpha_clip.tiny_projection_dim = 16
  c.protocol.shots = (2,)
  c.protocol.seeds = (0, 1)
  c.protocol.num_devices = 1
  c.zip_f.steps = 5
  c.tip_f.steps = 5
  c.data_root = str(tmp_path / "data")
  return c


def test_demo_end_to_end_and_resume(tmp_path):
  c = _tiny_demo(tmp_path)
  wd = str(tmp_path / "run")
  res = M.train_and_evaluate(c, wd)
  saved = json.loads(Path(wd, "results.json").read_text())
  cat = saved["categories"]["weave"]
  assert set(cat["accuracy"]) == set(c.protocol.classifiers)
  for clf, per_k in cat["accuracy"].items():
    assert sorted(per_k) == ["2"]
    for k, e in per_k.items():
      for mode in ("multi_view", "view0"):
        vals = e[mode]["values"]
        assert len(vals) == 2 and all(0.0 <= v <= 1.0 for v in vals)
        assert e[mode]["mean"] == pytest.approx(np.mean(vals))
        assert e[mode]["std"] == pytest.approx(np.std(vals))
  assert cat["num_support"] == 12 and cat["num_query"] == 8 and cat["feature_shape"] == [27, 16]
  # per-category results are reused only with the same view preprocessing (they are compared by settings)
  from mvrec_jax import views
  assert cat["settings"]["views_preprocessing"] == views.PREPROCESSING_VERSION
  assert np.asarray(cat["confusion"]["zip_adapter"]["2"]).sum() == 2 * 8
  assert Path(wd, "confusion", "weave_zip_adapter_f.png").stat().st_size > 1000
  assert "Zip-Adapter-F" in Path(wd, "results.txt").read_text()
  assert res["mean_over_categories"]["zip_adapter"]["2"]["multi_view"] == cat["accuracy"]["zip_adapter"]["2"][
      "multi_view"]["mean"]
  # A rerun with the same workdir reuses the finished category (no feature extraction, same numbers).
  shutil.rmtree(Path(wd, "features"))
  again = M.train_and_evaluate(c, wd)
  assert again["categories"]["weave"]["accuracy"] == cat["accuracy"]
  assert not Path(wd, "features").exists()


def _fixture_dir():
  here = Path(__file__).resolve()
  for p in (os.environ.get("MVREC_OFFICIAL_DIR", ""), here.parents[3] / "shared/fixtures/mvrec_official",
            here.parents[2] / "shared/fixtures/mvrec_official"):
    if p and Path(p, "transistor_support.pt").is_file():
      return Path(p)
  return None


def test_official_features_any_naming(tmp_path, capsys):
  src = _fixture_dir()
  if src is None:
    pytest.skip("official MVREC feature buffers not present")
  d = tmp_path / "buffers"
  (d / "mso").mkdir(parents=True)
  os.symlink(src / "transistor_support.pt", d / "mso" / "14_mvtec_transistor_data_support.pt")
  os.symlink(src / "transistor_query.pt", d / "mso" / "14_mvtec_transistor_data_query.pt")
  os.symlink(src / "transistor_support.pt", d / "my_part_support.pt")  # an unknown category name
  os.symlink(src / "transistor_query.pt", d / "my_part_query.pt")
  found = M.discover_official(d)
  assert sorted(found) == ["my_part", "transistor"]
  c = C.get_config("official_features")
  c.features_dir = str(d)
  c.protocol.classifiers = ("zip_adapter",)
  c.protocol.shots = (1, 3, 6)  # transistor's pool has 5/6/6/5 items per class: K = 6 is short for two classes
  res = M.train_and_evaluate(c, str(tmp_path / "run"))
  out = capsys.readouterr().out
  part = res["categories"]["transistor"]
  assert part["shots_used"]["6"] == {"bent_lead": 5, "cut_lead": 6, "damaged_case": 6, "misplaced": 5}
  assert part["shots_used"]["3"] == {n: 3 for n in part["class_names"]}
  assert len(part["warnings"]) == 2 and all("< K=6" in w for w in part["warnings"])
  assert "warning: [transistor] bent_lead has 5 support item(s) < K=6" in out
  saved = json.loads((tmp_path / "run" / "results.json").read_text())
  assert saved["categories"]["transistor"]["warnings"] == part["warnings"]
  assert "misplaced has 5 support item(s) < K=6" in (tmp_path / "run" / "results.txt").read_text()
  for cat in ("transistor", "my_part"):
    acc = res["categories"][cat]["accuracy"]["zip_adapter"]
    assert acc["1"]["multi_view"]["values"] == pytest.approx([0.7619, 0.7143, 0.7143, 0.9524, 0.8095], abs=1e-4)
    assert acc["3"]["multi_view"]["values"] == pytest.approx([0.9524, 1.0, 1.0, 0.9524, 1.0], abs=1e-4)
  assert res["categories"]["transistor"]["class_names"][0] == "bent_lead"
  assert res["categories"]["my_part"]["class_names"] == ["class_0", "class_1", "class_2", "class_3"]


def test_clear_errors(tmp_path):
  c = C.get_config("official_features")
  with pytest.raises(FileNotFoundError, match="features_dir"):
    M.train_and_evaluate(c, str(tmp_path / "a"))
  (tmp_path / "empty").mkdir()
  c.features_dir = str(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match="No official feature buffers"):
    M.train_and_evaluate(c, str(tmp_path / "b"))
  c = C.get_config("mvtec_fs")
  with pytest.raises(FileNotFoundError, match="data_root"):
    M.train_and_evaluate(c, str(tmp_path / "c"))
  c.data_root = str(tmp_path)
  (tmp_path / "CONFIG" / "bottle_config1").mkdir(parents=True)
  (tmp_path / "CONFIG" / "bottle_config1" / "train.csv").write_text("x\n")
  (tmp_path / "CONFIG" / "bottle_config1" / "valid.csv").write_text("x\n")
  with pytest.raises(FileNotFoundError, match="visual_ckpt"):
    M.train_and_evaluate(c, str(tmp_path / "d"))
  c = _tiny_demo(tmp_path)
  c.protocol.classifiers = ("svm",)
  with pytest.raises(ValueError, match="unknown"):
    M.train_and_evaluate(c, str(tmp_path / "e"))
  from train import config_lib
  with pytest.raises(config_lib.ConfigError, match="Valid presets"):
    C.get_config("imagenet")
  c = C.get_config("official_features")
  c.data_dir = str(tmp_path / "tfds")
  with pytest.raises(config_lib.ConfigError, match="config.data_dir: prepared tfds datasets hold images"):
    M._validate(c)


def test_cli_default_is_demo():
  assert M.DEFAULT_CONFIG.endswith("configs/mvrec.py:demo")
  assert C.get_config().source == "synthetic" and C.get_config().alpha_clip.preset == "tiny"


def _fake_alpha_clip_checkpoint(path, width=64, layers=1, patch=8, image=32, embed=16):
  """A random AlphaCLIP visual checkpoint in the release's naming (module. prefix, attn.in_proj.*)."""
  torch = pytest.importorskip("torch")
  g = torch.Generator().manual_seed(0)
  r = lambda *s: torch.randn(*s, generator=g) * 0.05
  n = (image // patch) ** 2 + 1
  sd = {"class_embedding": r(width), "positional_embedding": r(n, width), "conv1.weight": r(width, 3, patch, patch),
        "conv1_alpha.weight": r(width, 1, patch, patch), "ln_pre.weight": 1 + r(width), "ln_pre.bias": r(width),
        "ln_post.weight": 1 + r(width), "ln_post.bias": r(width), "proj": r(width, embed)}
  for i in range(layers):
    q = f"transformer.resblocks.{i}."
    sd.update({q + "attn.in_proj.weight": r(3 * width, width), q + "attn.in_proj.bias": r(3 * width),
               q + "attn.out_proj.weight": r(width, width), q + "attn.out_proj.bias": r(width),
               q + "ln_1.weight": 1 + r(width), q + "ln_1.bias": r(width), q + "ln_2.weight": 1 + r(width),
               q + "ln_2.bias": r(width), q + "mlp.c_fc.weight": r(4 * width, width), q + "mlp.c_fc.bias": r(4 * width),
               q + "mlp.c_proj.weight": r(width, 4 * width), q + "mlp.c_proj.bias": r(width)})
  torch.save({"module." + k: v for k, v in sd.items()}, path)
  return path


def test_mvtec_fs_preset_with_a_checkpoint(tmp_path):
  """The mvtec_fs path: MVTec-FS layout (synthetic), an AlphaCLIP visual checkpoint without text tower."""
  from mvrec_jax import synthetic
  root = synthetic.make_dataset(tmp_path / "mvtec", categories=("disc",), image_size=64, n_train=2, n_valid=1)
  c = C.get_config("mvtec_fs")
  c.data_root = str(root)
  c.categories = ("disc",)
  c.alpha_clip.preset = ""
  c.alpha_clip.visual_ckpt = str(_fake_alpha_clip_checkpoint(tmp_path / "alpha.pth"))
  c.views.crop_sizes, c.views.resize = (16.0, 24.0, 32.0), (32,)
  c.protocol.shots, c.protocol.seeds, c.protocol.num_devices = (1,), (0,), 1
  c.protocol.classifiers = ("zero_shot", "zip_adapter")
  res = M.train_and_evaluate(c, str(tmp_path / "run"))
  cat = res["categories"]["disc"]
  assert cat["feature_shape"] == [27, 16] and cat["num_support"] == 10 and cat["num_query"] == 5
  assert set(cat["accuracy"]) == {"zip_adapter"}  # no text tower -> zero-shot skipped
