"""The paper's switches over DSRNet-L (`config.variant`): each changes what it says it changes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from derefl_jax import complexity, losses, models
from train import derefl
from train.configs import derefl as derefl_configs


# A one-level tiny net without prior or ICA: compiles in seconds.
SMALL = dict(enc_blocks=(1,), dec_blocks=(1,), middle_blocks=1, attention=False, use_prior=False)


def _rand(*shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(0.05, 0.95, shape), jnp.float32)


def _out(b=2, s=8):
  r_low, r_high = 0.1 * _rand(b, s, s, 3, seed=2), 0.1 * _rand(b, s, s, 3, seed=3)
  return {"T": _rand(b, s, s, 3, seed=1), "R_low": r_low, "R_high": r_high, "R": r_low + r_high}


def test_freq_target_gradient_path():
  """prediction: the frequency losses reach T_hat through their targets; ground_truth: they do not."""
  out, inputs, gt_t = _out(), _rand(2, 8, 8, 3, seed=4), _rand(2, 8, 8, 3, seed=5)
  only_freq = {k: 0.0 for k in ("t_pixel", "r_pixel", "vgg", "exclusion", "recons")}

  def grad_t(target):
    def f(t):
      return losses.total_loss(out={**out, "T": t}, inputs=inputs, target_t=gt_t,
                               config={**only_freq, "freq_target": target, "mean_kernel": 3})[0]
    return jax.jit(jax.grad(f))(out["T"])

  assert float(jnp.max(jnp.abs(grad_t("prediction")))) > 1e-4
  assert float(jnp.max(jnp.abs(grad_t("ground_truth")))) == 0.0
  # with the prediction as target, the loss value is the one computed from T_hat explicitly
  val = losses.total_loss(out=out, inputs=inputs, target_t=gt_t, config={**only_freq, "freq_target": "prediction",
                                                                         "mean_kernel": 3})[1]
  ref = losses.high_frequency_loss(r_high=out["R_high"], inputs=inputs, target_t=out["T"], kernel_size=3)
  np.testing.assert_allclose(float(val["loss_high_freq"]), float(ref), rtol=1e-6)
  with pytest.raises(ValueError, match="freq_target"):
    losses.total_loss(out=out, inputs=inputs, target_t=gt_t, config={"freq_target": "gt"})


def test_r_pixel_mask_selects_rows():
  """r_pixel_mask=True: the R pixel loss ignores real rows (has_R = 0); False: every row counts."""
  out, inputs, gt_t = _out(), _rand(2, 8, 8, 3, seed=4), _rand(2, 8, 8, 3, seed=5)
  gt_r = _rand(2, 8, 8, 3, seed=6)
  has_r = jnp.array([1.0, 0.0])
  cfg = {"low_freq": 0.0, "high_freq": 0.0, "vgg": 0.0, "exclusion": 0.0, "recons": 0.0}

  def r_loss(mask, target_r):
    return float(losses.total_loss(out=out, inputs=inputs, target_t=gt_t, target_r=target_r,
                                   r_mask=has_r if mask else None, config=cfg)[1]["loss_r_pixel"])

  changed = gt_r.at[1].set(0.0)  # the real row's R target changes
  assert r_loss(True, gt_r) == r_loss(True, changed)
  assert r_loss(False, gt_r) != r_loss(False, changed)


def test_rotation_aug_rotates_pairs_together():
  t = _rand(64, 8, 8, 3, seed=1)
  i, tt, r = derefl.rotate_batch(jax.random.key(0), t + 1.0, t, t + 2.0)
  np.testing.assert_array_equal(np.asarray(i), np.asarray(tt) + 1.0)  # same angle in every tensor
  np.testing.assert_array_equal(np.asarray(r), np.asarray(tt) + 2.0)
  ks = []
  for b in range(64):
    ks.append([k for k in range(4) if np.array_equal(np.asarray(tt[b]), np.rot90(np.asarray(t[b]), k))][0])
  ks = np.bincount(ks, minlength=4)
  assert ks[0] >= 20 and all(ks[1:] > 0), ks  # DSRNet: unrotated with p 1/2, else 90/180/270


def test_variant_maps_to_model_loss_and_training():
  cfg = derefl_configs.get_config("paper")
  assert derefl.variant(cfg) == {k: v[0] for k, v in derefl.VARIANT_CHOICES.items()}
  spec = derefl.model_spec(cfg)["fields"]
  assert spec["g_position"] == "after_heads" and spec["stem"] == "vgg_pyramid" and spec["middle_blocks"] == 12
  cfg.variant.prior, cfg.variant.middle_blocks = "current", 8
  spec = derefl.model_spec(cfg)["fields"]
  assert spec["stem"] == "conv" and spec["prior_normalize"] is True and spec["middle_blocks"] == 8
  cfg.model.middle_blocks = 3  # an explicit model field wins
  assert derefl.model_spec(cfg)["fields"]["middle_blocks"] == 3
  assert derefl.build(cfg).remat is False
  cfg.model.remat = True  # memory only: allowed to change on resume
  assert derefl.build(cfg).remat is True and "model.remat" in derefl.RESUMABLE_KEYS
  cfg.model.remat_max_stride = 4
  assert derefl.build(cfg).remat_max_stride == 4 and "model.remat_max_stride" in derefl.RESUMABLE_KEYS
  assert derefl._synthesis_kwargs(cfg)["rotation_aug"] is True
  cfg.variant.rotation_aug = False
  assert "rotation_aug" not in derefl._synthesis_kwargs(cfg)
  cfg.variant.keep = "newest"
  with pytest.raises(ValueError, match="keep"):
    derefl.variant(cfg)
  # DSRNet presets: no switch applies (exact DSRNet)
  assert derefl.variant(derefl_configs.get_config("dsrnet_l")) == {}


def test_recipe_numbers_follow_the_official_training_scripts():
  """DSRNet (github.com/mingcv/DSRNet @7953e40): Adam(0.9, 0.999, wd 0) lr 1e-4, batch 1, crop 224,
  lambda_vgg 0.01, lambda_rec 0.2; FusionDataset 0.7/0.3 in train_sirs.py, 0.6/0.2/0.2 in train_sirs_4000.py."""
  mixes = {"paper": (0.6, 0.2, 0.2), "dsrnet_l": (0.7, 0.3, 0.0), "dsrnet_l_nature": (0.6, 0.2, 0.2)}
  for preset, mix in mixes.items():
    c = derefl_configs.get_config(preset)
    assert (c.data.weights_synthetic, c.data.weights_real, c.data.weights_nature) == mix, preset
    assert (c.optim.lr, c.optim.b1, c.optim.b2, c.optim.weight_decay, c.optim.schedule) == (1e-4, 0.9, 0.999, 0.0, "constant")
    assert (c.data.batch_size, c.data.crop, c.loss.vgg, c.loss.recons) == (1, 224, 0.01, 0.2)


def test_ablation_configs_flip_one_switch_each():
  cfg = derefl_configs.get_config("demo")
  confs = derefl.ablation_configs(cfg, ["freq_target", "keep"])
  assert list(confs) == ["paper", "freq_target=ground_truth", "keep=last"]
  assert derefl.variant(confs["paper"]) == {"freq_target": "prediction", "keep": "best_val"}
  assert derefl.variant(confs["keep=last"]) == {"freq_target": "prediction", "keep": "last"}
  assert cfg.variant.keep is None  # the input config is left alone
  with pytest.raises(ValueError, match="unknown switch"):
    derefl.ablation_configs(cfg, ["colour"])


def test_ablate_flag_user_error(capsys):
  with pytest.raises(SystemExit) as e:
    derefl.main(["--ablate", "colour,keep"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: --ablate") and "colour" in err and "Traceback" not in err
  assert derefl._ablate_flag(["--ablate=keep, prior", "--x"]) == (["--x"], ["keep", "prior"])


def test_counter_is_deterministic_and_scales_with_pixels():
  small = dict(SMALL, use_prior=True)
  a = complexity.count("tiny", 16, 16, **small)
  assert complexity.count("tiny", 16, 16, **small)["flops"] == a["flops"] > 0
  model = models.build_model("tiny", **small)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
  assert a["trainable_params"] == models.param_count(models.split_params(shapes)[0])
  assert a["frozen_params"] > 0
  c = complexity.count("tiny", 32, 32, **small)  # 4x the pixels: about 4x the FLOPs, the same params
  assert 3.5 < c["flops"] / a["flops"] < 4.5 and c["trainable_params"] == a["trainable_params"]


def _random_params(model, x):
  """Random params of every shape (no init compile): the zero-init scales become non-zero too."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"]
  rng = np.random.default_rng(3)  # numpy: one jax random kernel per shape would compile ~50 times
  return jax.tree.map(lambda l: jnp.asarray(0.2 * rng.standard_normal(l.shape), jnp.float32), shapes)


def test_g_position_changes_what_g_sees():
  """before_heads: G's fuse conv reads 2 x width stream features; after_heads: the two 3-channel
  head outputs (T_hat, R_low_hat), and its h modulates the output images, not the features."""
  x = _rand(1, 16, 16, 3, seed=7)
  ms = {pos: models.build_model("tiny", g_position=pos, **SMALL) for pos in ("before_heads", "after_heads")}
  before = jax.eval_shape(ms["before_heads"].init, jax.random.PRNGKey(0), x)["params"]
  after = jax.eval_shape(ms["after_heads"].init, jax.random.PRNGKey(0), x)["params"]
  width = ms["before_heads"].width
  assert before["hf"]["fuse"]["kernel"].shape == (1, 1, 2 * width, width)
  assert after["hf"]["fuse"]["kernel"].shape == (1, 1, 6, width)
  assert after["inverse_mod"]["s_t"].shape == (3,) and before["inverse_mod"]["s_t"].shape == (width,)
  model = ms["after_heads"]
  params = _random_params(model, x)
  fwd = jax.jit(lambda p: model.apply({"params": p}, x))
  out, aux = fwd(params)
  assert out["R_high"].shape == out["T"].shape == x.shape and aux["hf_features"].shape == (1, 16, 16, width)
  assert float(jnp.max(jnp.abs(out["R_high"]))) > 0
  # R_high is computed from the heads' outputs: a change of the ending conv's kernel (the heads)
  # changes R_high; a constant shift of both heads (bias) does not (G high-passes its inputs).
  k, b = params["ending"]["kernel"], params["ending"]["bias"]
  moved = fwd(dict(params, ending={"kernel": k + 0.3 * jnp.asarray(np.random.default_rng(1).standard_normal(k.shape), jnp.float32), "bias": b}))
  shifted = fwd(dict(params, ending={"kernel": k, "bias": b + 0.3}))
  assert float(jnp.max(jnp.abs(moved[0]["R_high"] - out["R_high"]))) > 1e-4
  np.testing.assert_allclose(np.asarray(shifted[0]["R_high"]), np.asarray(out["R_high"]), atol=1e-5)


def test_ablation_outputs(tmp_path):
  """The table's three files from hand-made rows: JSON as given, one Markdown row per variant, a PNG."""
  rows = [{"variant": v, "psnr": p, "ssim": 0.7, "identity_psnr": 17.5, "identity_ssim": 0.75, "trainable_params": 10,
           "gflops": 0.5, "flops_size": 64, "kept_step": 40, "steps": 60, "test_set": "demo"}
          for v, p in (("paper", 19.0), ("keep=last", 18.5))]
  result = {"switches": ["keep"], "seed": 0, "num_steps": 60, "preset": "demo", "model_preset": "tiny",
            "flops_counter": complexity.SOURCE, "complete": True, "rows": rows}
  derefl.save_ablation(str(tmp_path), result)
  import json
  assert json.loads((tmp_path / "ablation.json").read_text())["rows"][1]["psnr"] == 18.5
  md = (tmp_path / "ablation.md").read_text().splitlines()
  assert md[2].startswith("| paper | 19.00 |") and md[3].startswith("| keep=last | 18.50 |") and "identity" in md[4]
  from PIL import Image
  assert Image.open(tmp_path / "ablation.png").size[0] > 500
