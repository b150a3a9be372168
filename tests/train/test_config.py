"""Config presets, overrides and their error messages; the resolved config is saved in the workdir."""
import json
import textwrap

import pytest

from train import cli, config_lib

CONFIG = textwrap.dedent('''
    """Toy config. Run: python -m train.toy --config=toy.py:small"""
    import ml_collections
    from train.config_lib import select_preset

    def _base():
      c = ml_collections.ConfigDict()
      c.seed = 0
      c.lr = 1e-3
      c.bits = (16, 32)
      c.name = "x"
      c.use_vgg = False
      c.optim = ml_collections.ConfigDict({"warmup": 10})
      return c

    def _small():
      c = _base()
      c.lr = 0.5
      return c

    PRESETS = {"demo": _base, "small": _small}

    def get_config(preset="demo"):
      return select_preset(PRESETS, preset)
''')


@pytest.fixture
def cfg_path(tmp_path):
  p = tmp_path / "toy.py"
  p.write_text(CONFIG)
  return str(p)


def test_preset_and_overrides(cfg_path, tmp_path):
  config, workdir, _ = cli.parse([f"--config={cfg_path}:small", "--config.optim.warmup=3", "--config.bits=[64]",
                                  "--config.lr", "2", "--config.use_vgg=true", "--config.name=y"], cfg_path + ":demo")
  assert config.preset == "small"
  assert config.lr == 2.0 and isinstance(config.lr, float)
  assert config.optim.warmup == 3
  assert tuple(config.bits) == (64,)
  assert config.use_vgg is True and config.name == "y"
  assert workdir.endswith("toy_small")


def test_default_preset_is_used_without_suffix(cfg_path):
  config, _, _ = cli.parse([f"--config={cfg_path}"], cfg_path + ":demo")
  assert config.preset == "demo" and config.lr == 1e-3


def test_unknown_preset_lists_valid_ones(cfg_path):
  with pytest.raises(config_lib.ConfigError, match=r"Unknown preset 'nope'. Valid presets: demo, small"):
    cli.parse([f"--config={cfg_path}:nope"], cfg_path)


def test_unknown_key_lists_valid_keys(cfg_path):
  with pytest.raises(config_lib.ConfigError,
                     match=r"Unknown config key 'optim.warmpu'.*Valid keys: .*optim.warmup"):
    cli.parse([f"--config={cfg_path}", "--config.optim.warmpu=3"], cfg_path)


def test_bad_value_type_is_named(cfg_path):
  with pytest.raises(config_lib.ConfigError, match=r"--config.lr=fast: could not parse 'fast' as a float"):
    cli.parse([f"--config={cfg_path}", "--config.lr=fast"], cfg_path)
  with pytest.raises(config_lib.ConfigError, match="expected a boolean"):
    cli.parse([f"--config={cfg_path}", "--config.use_vgg=maybe"], cfg_path)


def test_missing_config_file():
  with pytest.raises(config_lib.ConfigError, match="does not exist"):
    cli.parse(["--config=nowhere.py:demo"], "nowhere.py")


def test_run_saves_resolved_config_and_exits_cleanly_on_errors(cfg_path, tmp_path, capsys):
  seen = {}

  def main_fn(config, workdir):
    seen["config"], seen["workdir"] = config, workdir
    return 7

  workdir = tmp_path / "wd"
  assert cli.run(main_fn, cfg_path + ":demo", [f"--workdir={workdir}", "--config.seed=3"]) == 7
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["seed"] == 3 and saved["preset"] == "demo" and seen["config"].seed == 3
  with pytest.raises(SystemExit) as e:
    cli.run(main_fn, cfg_path + ":demo", [f"--config={cfg_path}:bogus"])
  assert "Unknown preset 'bogus'" in str(e.value)
