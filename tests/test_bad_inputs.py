"""Bad inputs a user would hit, through the real entry points (`train.lcdh.main`, `train.derefl.main`,
`train.mvrec.main`, `derefl_jax.predict.main`, called in-process with their argv).

Each case must end with exit code 2 and one `error:` line on stderr that names the key or file
(no traceback), and a rerun in a finished run directory must leave every file of it as it was
(content hashes before/after). The finished runs are the session fixtures of tests/conftest.py.
docs/reliability.md lists the classes and the messages.
"""
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from train import config_lib, derefl, lcdh
from train import mvrec as mvrec_main

REPO = Path(__file__).resolve().parents[1]
LCDH_CFG = str(REPO / "train" / "configs" / "lcdh.py")
MVREC_CFG = str(REPO / "train" / "configs" / "mvrec.py")
DEREFL_CFG = str(REPO / "train" / "configs" / "derefl.py")
TRIED = []  # (entry point, case) of every bad input tried; the count is reported in docs/reliability.md


def tree_hash(workdir) -> dict[str, str]:
  """{relative path: sha256} of every file under `workdir`."""
  return {str(p.relative_to(workdir)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(Path(workdir).rglob("*")) if p.is_file()}


def run_error(main, argv, capsys, *needles, code=2):
  """Runs `main(argv)`; asserts exit code 2 and one `error:` line holding every needle; returns it."""
  capsys.readouterr()
  with pytest.raises(SystemExit) as e:
    main(argv)
  err = capsys.readouterr().err
  assert e.value.code == code, (e.value.code, err[-2000:])
  assert "Traceback" not in err, err[-3000:]
  lines = [l for l in err.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1, err[-2000:]
  for n in needles:
    assert n in lines[0], (n, lines[0])
  TRIED.append((getattr(main, "__module__", "?"), lines[0]))
  return lines[0]


# ------------------------------------------------------------------------- finished runs: refused reruns

@pytest.mark.parametrize("override,key", [
    ("--config.seed=1", "seed (saved 0, now 1)"),                        # the silent "resume"
    ("--config.teacher.width=64", "teacher.width (saved 32, now 64)"),
    ("--config.student.lr=0.1", "student.lr"),
    (f"--config={LCDH_CFG}:demo", "preset"),
])
def test_lcdh_rerun_with_other_config_changes_nothing(lcdh_run, capsys, override, key):
  wd, _, argv = lcdh_run
  before = tree_hash(wd)
  line = run_error(lcdh.main, argv + [f"--workdir={wd}", override], capsys, key, "new --workdir",
                   "Nothing was changed")
  assert str(wd) in line
  assert tree_hash(wd) == before


@pytest.mark.parametrize("override,key", [
    ("--config.model.width=16", "model.width (saved null, now 16)"),  # the destroyed run
    ("--config.seed=1", "seed (saved 0, now 1)"),
    ("--config.loss.t_pixel=1.0", "loss.t_pixel"),
    ("--config.data.crop=48", "data.crop"),
])
def test_derefl_rerun_with_other_config_changes_nothing(demo_run, derefl_demo_argv, capsys, override, key):
  wd, _ = demo_run
  before = tree_hash(wd)
  run_error(derefl.main, derefl_demo_argv + [f"--workdir={wd}", override], capsys, key, "new --workdir")
  assert tree_hash(wd) == before


def _mvrec_standin(tmp_path):
  """A finished mvrec run directory (its config and one evaluated category; no training)."""
  wd = tmp_path / "mvrec_run"
  config_lib.save_config(mvrec_main_config(), str(wd))
  (wd / "per_category").mkdir()
  (wd / "per_category" / "weave.json").write_text(json.dumps({"settings": {}, "accuracy": {"zip_adapter": {}}}))
  (wd / "results.json").write_text("{}")
  return wd


def mvrec_main_config():
  from train.configs import mvrec as C
  return C.get_config("demo")


def test_mvrec_rerun_with_other_protocol_changes_nothing(tmp_path, capsys):
  wd = _mvrec_standin(tmp_path)
  before = tree_hash(wd)
  run_error(mvrec_main.main, [f"--workdir={wd}", "--config.protocol.shots=(1,)"], capsys,
            "protocol.shots (saved [1, 3, 5], now [1])", "new --workdir")
  run_error(mvrec_main.main, [f"--workdir={wd}", "--config.zip_f.lr=0.1"], capsys, "zip_f.lr")
  assert tree_hash(wd) == before


def test_workdir_that_is_not_a_run(tmp_path, capsys):
  foreign = tmp_path / "photos"
  foreign.mkdir()
  (foreign / "a.jpg").write_bytes(b"123")
  run_error(derefl.main, [f"--workdir={foreign}"], capsys, "has no config.json", str(foreign))
  assert tree_hash(foreign) == {"a.jpg": hashlib.sha256(b"123").hexdigest()}
  run_error(lcdh.main, [f"--workdir={foreign / 'a.jpg'}"], capsys, "is a file")
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "config.json").write_text("{truncated")
  (broken / "metrics.jsonl").write_text('{"step": 1}\n')
  run_error(mvrec_main.main, [f"--workdir={broken}"], capsys, "config.json cannot be read")


def test_derefl_corrupt_checkpoint_is_named_and_nothing_is_written(demo_run, derefl_demo_argv, tmp_path, capsys):
  src, summary = demo_run
  wd = tmp_path / "copy"
  shutil.copytree(src, wd)
  step = summary["steps"]
  state = wd / "checkpoints" / str(step) / "state"
  files = sorted(p for p in state.rglob("*") if p.is_file() and p.stat().st_size > 0)
  for p in files:  # every data file of the state truncated to half
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
  before = tree_hash(wd)
  run_error(derefl.main, derefl_demo_argv + [f"--workdir={wd}"], capsys,
            f"checkpoint {wd / 'checkpoints' / str(step)} cannot be restored", "new --workdir")
  assert tree_hash(wd) == before  # no metrics line, no new TensorBoard file, no results


# ----------------------------------------------------------------------- settings, before any work

LCDH_CASES = {
    "unknown preset": ([f"--config={LCDH_CFG}:imagenet"], ["Unknown preset 'imagenet'", "Valid presets"]),
    "unknown key": (["--config.teacher.widht=3"], ["Unknown config key 'teacher.widht'", "teacher.width"]),
    "bad value type": (["--config.seed=abc"], ["--config.seed=abc", "could not parse 'abc' as a int"]),
    "override without value": (["--config.seed"], ["--config.seed needs a value"]),
    "bad bits": (["--config.bits=(12,)"], ["config.bits", "multiples of 8"]),
    "batch not divisible": (["--config.student.batch_size=30"], ["config.student.batch_size=30", "multiple of the 8"]),
    "unknown dataset": (["--config.dataset=imagenet"], ["config.dataset='imagenet'", "mirflickr"]),
    "unknown distill mode": (["--config.student.distill_mode=kl"], ["distill_mode"]),
    "vgg16 without weights": ([f"--config={LCDH_CFG}:mirflickr"], ["student.backbone='vgg16' needs ImageNet"]),
    "vgg16 weights missing": ([f"--config={LCDH_CFG}:mirflickr", "--config.student.vgg_weights=/no/vgg16.pth"],
                              ["/no/vgg16.pth", "does not exist"]),
    "OpenAI .pt without tokenizer": (["--config.clip.name=/weights/ViT-B-32.pt"],
                                     ["ViT-B-32.pt", "holds no tokenizer", "--config.clip.tokenizer"]),
    "missing config file": (["--config=nowhere/lcdh.py:demo"], ["nowhere/lcdh.py", "does not exist"]),
    "incomplete multi-host flags": (["--num_processes=2"], ["--coordinator_address, --num_processes and "
                                                            "--process_id (got None, 2, None)"]),
}


@pytest.mark.parametrize("case", sorted(LCDH_CASES))
def test_lcdh_bad_settings(case, tmp_path, capsys):
  argv, needles = LCDH_CASES[case]
  wd = tmp_path / "wd"
  run_error(lcdh.main, argv + [f"--workdir={wd}"], capsys, *needles)
  assert not wd.exists()  # nothing written before validation


DEREFL_CASES = {
    "unknown model preset": (["--config.model.preset=huge"], ["Unknown model preset 'huge'"]),
    "unknown key": (["--config.model.depth=3"], ["Unknown config key 'model.depth'"]),
    "batch not divisible": (["--config.data.batch_size=6"], ["config.data.batch_size=6 does not divide over 8",
                                                             "--config.data.batch_size=8"]),
    "unknown schedule": (["--config.optim.schedule=linear"], ["config.optim.schedule='linear'"]),
    "unknown recipe": (["--config.synthesis.recipe=foo"], ["config.synthesis.recipe='foo'"]),
    "negative steps": (["--config.num_steps=-1"], ["config.num_steps=-1 must be >= 0"]),
    "unknown data source": (["--config.data.source=web"], ["config.data.source='web'"]),
}


@pytest.mark.parametrize("case", sorted(DEREFL_CASES))
def test_derefl_bad_settings(case, tmp_path, capsys):
  argv, needles = DEREFL_CASES[case]
  wd = tmp_path / "wd"
  run_error(derefl.main, argv + [f"--workdir={wd}"], capsys, *needles)
  assert not wd.exists()


MVREC_CASES = {
    "unknown classifier": (["--config.protocol.classifiers=('svm',)"], ["'svm' is not one of", "zip_adapter"]),
    "unknown precision": (["--config.protocol.precision=fp8"], ["config.protocol.precision='fp8'"]),
    "unknown source": (["--config.source=web"], ["config.source='web'"]),
    "zero shots": (["--config.protocol.shots=(0,)"], ["config.protocol.shots=(0,) must be > 0"]),
    "unknown preset": ([f"--config={MVREC_CFG}:imagenet"], ["Unknown preset 'imagenet'"]),
}


@pytest.mark.parametrize("case", sorted(MVREC_CASES))
def test_mvrec_bad_settings(case, tmp_path, capsys):
  argv, needles = MVREC_CASES[case]
  wd = tmp_path / "wd"
  run_error(mvrec_main.main, argv + [f"--workdir={wd}"], capsys, *needles)
  assert not wd.exists()


# ------------------------------------------------------------------------ files that are missing or corrupt

def test_missing_and_corrupt_data_files(tmp_path, capsys):
  base = [f"--config={LCDH_CFG}:mirflickr", "--config.student.backbone=small_cnn"]
  run_error(lcdh.main, base + [f"--config.data_root={tmp_path / 'none'}", f"--workdir={tmp_path / 'a'}"],
            capsys, "No 'mirflickr' dataset found", str(tmp_path / "none"))
  root = tmp_path / "mat"
  root.mkdir()
  (root / "mirflickr25k.mat").write_bytes(np.random.default_rng(0).bytes(4000))
  run_error(lcdh.main, base + [f"--config.data_root={root}", f"--workdir={tmp_path / 'b'}"], capsys,
            str(root / "mirflickr25k.mat"), "not a readable MATLAB .mat file")
  # MVREC: no features_dir; a corrupt official feature buffer
  run_error(mvrec_main.main, [f"--config={MVREC_CFG}:official_features", f"--workdir={tmp_path / 'c'}"],
            capsys, "features_dir")
  buf = tmp_path / "buf"
  buf.mkdir()
  for name in ("weave_support.pt", "weave_query.pt"):
    (buf / name).write_bytes(np.random.default_rng(1).bytes(3000))
  run_error(mvrec_main.main, [f"--config={MVREC_CFG}:official_features", f"--config.features_dir={buf}",
                              f"--workdir={tmp_path / 'd'}"], capsys, "weave_", "not a readable MVREC feature buffer")
  # MVREC on MVTec-FS with a corrupt AlphaCLIP checkpoint (the annotation CSVs exist)
  (tmp_path / "mv" / "CONFIG" / "bottle_config1").mkdir(parents=True)
  for split in ("train", "valid"):
    (tmp_path / "mv" / "CONFIG" / "bottle_config1" / f"{split}.csv").write_text("x\n")
  (tmp_path / "alpha.pth").write_bytes(np.random.default_rng(3).bytes(500))
  run_error(mvrec_main.main, [f"--config={MVREC_CFG}:mvtec_fs", f"--config.data_root={tmp_path / 'mv'}",
                              f"--config.alpha_clip.visual_ckpt={tmp_path / 'alpha.pth'}",
                              f"--workdir={tmp_path / 'g'}"], capsys,
            f"{tmp_path / 'alpha.pth'} cannot be read as a PyTorch checkpoint", "AlphaCLIP visual")
  # derefl paper preset: no data root / not a directory (the message goes on with the layout)
  run_error(derefl.main, [f"--config={DEREFL_CFG}:paper", "--config.data.batch_size=8", f"--workdir={tmp_path / 'e'}"], capsys,
            "--config.data.root=DIR")
  run_error(derefl.main, [f"--config={DEREFL_CFG}:paper", "--config.data.batch_size=8", f"--config.data.root={tmp_path / 'nodir'}",
                          f"--workdir={tmp_path / 'f'}"], capsys, "is not a directory")


def test_predict_bad_inputs(demo_run, tmp_path, capsys):
  from derefl_jax import predict
  wd, _ = demo_run
  before = tree_hash(wd)
  bad = tmp_path / "photo.png"
  bad.write_bytes(b"\x89PNG\r\n\x1a\n" + np.random.default_rng(2).bytes(500))
  good = tmp_path / "good.png"
  from PIL import Image
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(good)
  cases = [
      (["--input", str(bad), "--checkpoint", str(wd), "--output", str(tmp_path / "o1")], "photo.png"),
      (["--input", str(tmp_path / "missing.png"), "--checkpoint", str(wd), "--output", str(tmp_path / "o2")],
       "missing.png"),
      (["--input", str(good), "--checkpoint", str(tmp_path / "no_run"), "--output", str(tmp_path / "o3")], "no_run"),
      (["--input", str(good), "--checkpoint", str(tmp_path), "--output", str(tmp_path / "o4")], str(tmp_path)),
  ]
  for argv, needle in cases:
    capsys.readouterr()
    assert predict.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ") and needle in err.splitlines()[0], err
    TRIED.append(("derefl_jax.predict", err.splitlines()[0]))
  assert tree_hash(wd) == before


@pytest.fixture(scope="module", autouse=True)
def _report_count():
  """Prints how many bad inputs this file tried (shown with -s; counted in docs/reliability.md)."""
  yield
  print(f"\nbad inputs tried through the entry points: {len(TRIED)} "
        f"({', '.join(sorted({m for m, _ in TRIED}))})")
  for module, line in TRIED:
    print(f"  {module}: {line[:300]}")
