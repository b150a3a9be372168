"""python -m train.derefl: a shortened demo beats the identity baseline; outputs; preset errors."""
import json

import numpy as np
import pytest
from PIL import Image

from train import derefl

CONFIG_FILE = derefl.DEFAULT_CONFIG.rpartition(":")[0]
PAPER = CONFIG_FILE + ":paper"


def test_short_demo_beats_identity(demo_run):
    workdir, summary = demo_run
    res = summary["test_sets"]["demo"]
    assert res["num_images"] == 16
    assert res["psnr"] > res["identity_psnr"], res
    assert res["ssim"] > res["identity_ssim"], res
    assert summary["beats_identity"]["demo"]
    saved = json.loads((workdir / "results.json").read_text())
    assert saved["test_sets"]["demo"]["psnr"] == pytest.approx(res["psnr"])
    grid = np.asarray(Image.open(workdir / "grids" / "demo.png"))
    assert grid.ndim == 3 and grid.shape[0] > 100
    # the documented checkpoint layout
    assert json.loads((workdir / "model.json").read_text())["preset"] == "tiny"
    assert (workdir / "checkpoints" / str(summary["steps"]) / "state").is_dir()
    assert (workdir / "config.json").is_file() and (workdir / "metrics.jsonl").is_file()
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(40, summary["steps"] + 1, 40))
    assert all(np.isfinite(r["loss"]) for r in rows)


def _cli_error(argv, capsys):
    """train.derefl.main on a user error: exit code 2 and one `error:` line (returned)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        derefl.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_paper_preset_errors(tmp_path, capsys):
    paper = [f"--config={PAPER}", "--config.data.batch_size=8"]  # 8 test devices
    assert "config.data.root" in _cli_error(paper + [f"--workdir={tmp_path / 'w'}"], capsys)
    root = tmp_path / "data"
    root.mkdir()
    assert "vgg19" in _cli_error(paper + [f"--config.data.root={root}", f"--workdir={tmp_path / 'w'}"], capsys)
    assert "does not exist" in _cli_error(paper + [f"--config.data.root={root}", f"--config.vgg_weights={root / 'x.pth'}",
                                                   f"--workdir={tmp_path / 'w'}"], capsys)
    (root / "vgg19.pth").write_bytes(b"")
    # the VOC / pair folders are missing
    assert "expected layout" in _cli_error(paper + [f"--config.data.root={root}",
                                                    f"--config.vgg_weights={root / 'vgg19.pth'}",
                                                    f"--workdir={tmp_path / 'w'}"], capsys)


def test_unknown_preset_and_key(capsys):
    assert "Valid presets: demo" in _cli_error([f"--config={CONFIG_FILE}:huge"], capsys)
    assert "Unknown config key" in _cli_error(["--config.model.depth=3"], capsys)


def test_model_spec_overrides():
    from train.configs import derefl as cfg

    c = cfg.get_config("demo")
    assert derefl.model_spec(c) == {"preset": "tiny", "fields": {}}
    with c.unlocked():
        c.model.width = 16
        c.model.enc_blocks = (1, 2)
    spec = derefl.model_spec(c)
    assert spec == {"preset": "tiny", "fields": {"width": 16, "enc_blocks": [1, 2]}}
    assert derefl.build(c).width == 16
