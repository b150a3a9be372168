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
                     match=r"Unknown config key 'optim.warmpu'.*Did you mean 'optim.warmup'\? "
                           r"Valid keys under optim.: optim.warmup\."):
    cli.parse([f"--config={cfg_path}", "--config.optim.warmpu=3"], cfg_path)
  with pytest.raises(config_lib.ConfigError, match=r"Did you mean 'seed'\? Valid keys: bits, lr, name, "):
    cli.parse([f"--config={cfg_path}", "--config.sed=3"], cfg_path)


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
  capsys.readouterr()
  with pytest.raises(SystemExit) as e:
    cli.run(main_fn, cfg_path + ":demo", [f"--config={cfg_path}:bogus"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: Unknown preset 'bogus'") and err.count("\n") == 1


def _files(workdir):
  import hashlib
  return {str(p.relative_to(workdir)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
          for p in sorted(workdir.rglob("*")) if p.is_file()}


def _finished(workdir):
  """A stand-in for a finished run: a checkpoint file next to the config."""
  def main_fn(config, wd):
    (workdir / "checkpoints").mkdir(exist_ok=True)
    (workdir / "checkpoints" / "state").write_text(f"trained with seed {config.seed}")
    return "trained"
  return main_fn


def test_rerun_with_changed_config_is_refused_and_changes_nothing(cfg_path, tmp_path, capsys):
  wd = tmp_path / "wd"
  main_fn = _finished(wd)
  cli.run(main_fn, cfg_path + ":demo", [f"--workdir={wd}"])
  before = _files(wd)
  called = []
  for bad in (["--config.seed=1"], ["--config.optim.warmup=3", "--config.lr=0.1"], [f"--config={cfg_path}:small"]):
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
      cli.run(lambda c, w: called.append(1), cfg_path + ":demo", [f"--workdir={wd}", *bad])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "new --workdir" in err and "Nothing was changed" in err
    for arg in bad:
      key = arg.split("=")[0][len("--config."):] if arg.startswith("--config.") else "lr"
      assert f"{key} (saved" in err, (key, err)
  assert not called
  assert _files(wd) == before  # same bytes and not even rewritten


def test_resumable_change_is_allowed_logged_and_saved(cfg_path, tmp_path, capsys):
  wd = tmp_path / "wd"
  cli.run(_finished(wd), cfg_path + ":demo", [f"--workdir={wd}"])
  # `lr` declared resumable by this "method"; num_steps-like shared keys need no declaration.
  assert cli.run(lambda c, w: c.lr, cfg_path + ":demo", [f"--workdir={wd}", "--config.lr=0.5"],
                 resumable_keys=("lr", "optim.*")) == 0.5
  out = capsys.readouterr().out
  assert "resuming" in out and "lr 0.001 -> 0.5" in out
  assert json.loads((wd / "config.json").read_text())["lr"] == 0.5
  log = [json.loads(x) for x in (wd / "resume_log.jsonl").read_text().splitlines()]
  assert log[-1]["changed"] == {"lr": [0.001, 0.5]}
  # the same value again: no new log line, config.json untouched
  before = _files(wd)
  cli.run(lambda c, w: None, cfg_path + ":demo", [f"--workdir={wd}", "--config.lr=0.5"], resumable_keys=("lr",))
  assert _files(wd) == before


def test_allowed_change_is_not_recorded_when_the_run_stops_on_a_user_error(cfg_path, tmp_path, capsys):
  """e.g. more steps asked, but the checkpoint does not restore: the run dir stays as it was."""
  wd = tmp_path / "wd"
  cli.run(_finished(wd), cfg_path + ":demo", [f"--workdir={wd}"])
  before = _files(wd)

  def restore_fails(config, workdir):
    from train.checkpoint import CheckpointRestoreError
    raise CheckpointRestoreError("the checkpoint X cannot be restored")

  with pytest.raises(SystemExit):
    cli.run(restore_fails, cfg_path + ":demo", [f"--workdir={wd}", "--config.lr=0.5"], resumable_keys=("lr",))
  assert "lr 0.001 -> 0.5" in capsys.readouterr().out
  assert _files(wd) == before

  def interrupted(config, workdir):
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):  # the run went ahead with lr=0.5: recorded
    cli.run(interrupted, cfg_path + ":demo", [f"--workdir={wd}", "--config.lr=0.5"], resumable_keys=("lr",))
  assert json.loads((wd / "config.json").read_text())["lr"] == 0.5 and (wd / "resume_log.jsonl").exists()


def test_config_json_alone_is_replaced(cfg_path, tmp_path):
  """An earlier attempt that stopped before producing anything does not lock the workdir."""
  wd = tmp_path / "wd"

  def failing(config, workdir):
    (wd / "metrics.jsonl").write_text("")  # opened, never written
    raise FileNotFoundError("data_root missing")

  with pytest.raises(SystemExit):
    cli.run(failing, cfg_path + ":demo", [f"--workdir={wd}", "--config.seed=5"])
  cli.run(lambda c, w: None, cfg_path + ":demo", [f"--workdir={wd}", "--config.seed=6"])
  assert json.loads((wd / "config.json").read_text())["seed"] == 6


def test_foreign_directory_is_refused(cfg_path, tmp_path, capsys):
  wd = tmp_path / "photos"
  wd.mkdir()
  (wd / "holiday.jpg").write_bytes(b"x")
  with pytest.raises(SystemExit) as e:
    cli.run(lambda c, w: None, cfg_path + ":demo", [f"--workdir={wd}"])
  assert e.value.code == 2 and "has no config.json" in capsys.readouterr().err
  assert sorted(p.name for p in wd.iterdir()) == ["holiday.jpg"]


def test_new_field_at_its_default_is_allowed(cfg_path, tmp_path, capsys):
  """A run saved before a config field existed resumes if the field keeps its default."""
  wd = tmp_path / "wd"
  cli.run(_finished(wd), cfg_path + ":demo", [f"--workdir={wd}"])
  saved = json.loads((wd / "config.json").read_text())
  del saved["name"]
  (wd / "config.json").write_text(json.dumps(saved))
  cli.run(lambda c, w: None, cfg_path + ":demo", [f"--workdir={wd}"])
  assert 'new field name = "x"' in capsys.readouterr().out
  del saved["use_vgg"]
  (wd / "config.json").write_text(json.dumps(saved))
  with pytest.raises(SystemExit):
    cli.run(lambda c, w: None, cfg_path + ":demo", [f"--workdir={wd}", "--config.use_vgg=true"])
  assert "use_vgg (saved null, now true)" in capsys.readouterr().err


def test_user_errors_exit_2_internal_bugs_keep_traceback(cfg_path, tmp_path, capsys):
  def user(config, workdir):
    raise config_lib.UserError("config.lr=5 is too large; set --config.lr below 1.")

  def bug(config, workdir):
    raise ValueError("internal shape bug")

  with pytest.raises(SystemExit) as e:
    cli.run(user, cfg_path + ":demo", [f"--workdir={tmp_path / 'a'}"])
  assert e.value.code == 2
  assert capsys.readouterr().err == "error: config.lr=5 is too large; set --config.lr below 1.\n"
  with pytest.raises(ValueError, match="internal shape bug"):
    cli.run(bug, cfg_path + ":demo", [f"--workdir={tmp_path / 'b'}"])

  def validate(config):
    config_lib.require_choice(config, "name", ("x", "y"))

  with pytest.raises(SystemExit):
    cli.run(user, cfg_path + ":demo", [f"--workdir={tmp_path / 'c'}", "--config.name=z"], validate=validate)
  assert "config.name='z': 'z' is not one of 'x', 'y'" in capsys.readouterr().err
  assert not (tmp_path / "c").exists()  # validation runs before anything is written


def test_write_json_atomic_leaves_old_file_on_failure(tmp_path):
  path = tmp_path / "results.json"
  config_lib.write_json_atomic(str(path), {"a": 1})
  with pytest.raises(TypeError):
    config_lib.write_json_atomic(str(path), {"a": object()})
  assert json.loads(path.read_text()) == {"a": 1}
  assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_prepare_workdir_for_notebooks(cfg_path, tmp_path):
  """What a notebook calls before `train_and_evaluate`: the same check, as an exception."""
  wd = tmp_path / "wd"
  cli.run(_finished(wd), cfg_path + ":demo", [f"--workdir={wd}"])
  before = _files(wd)
  config = config_lib.load_config(cfg_path + ":demo")
  config.seed = 9
  with pytest.raises(config_lib.ConfigError, match=r"seed \(saved 0, now 9\)"):
    cli.prepare_workdir(config, str(wd))
  assert _files(wd) == before
  config.seed = 0
  assert cli.prepare_workdir(config, str(wd))["refused"] == []
