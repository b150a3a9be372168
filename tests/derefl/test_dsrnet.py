"""Exact DSRNet: parity with the official PyTorch code (../shared/peers/dsrnet) and the .pt loader.

Every official parameter is random (zero-init residual scales included), the network is saved by
torch in both official forms and read back without torch by derefl_jax.dsrnet_weights.
"""
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from PIL import Image

from derefl_jax import dsrnet_weights as dw
from derefl_jax import models, predict

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dsrnet_ref  # noqa: E402

needs_official = pytest.mark.skipif(not dsrnet_ref.available(), reason="../shared/peers/dsrnet not present")
REDUCED = dict(width=16, middle_blk_num=1, enc_blk_nums=[1, 2], dec_blk_nums=[1, 1], lrm_blk_nums=[1, 1])
TOL = 1e-4


def _compile(model, params, shape):
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  lowered = jax.jit(lambda p, x: model.apply({"params": p}, x)[0]).lower(params, x)
  return lowered.compile(compiler_options={"xla_backend_optimization_level": 0})  # compile-dominated test


@pytest.fixture(scope="module")
def official_reduced(tmp_path_factory):
  """A reduced official DSRNet (random everything), its random VGG19, saved in both .pt forms."""
  if not dsrnet_ref.available():
    pytest.skip("../shared/peers/dsrnet not present")
  torch = pytest.importorskip("torch")
  arch, vgg_mod, _ = dsrnet_ref.import_official()
  torch.manual_seed(0)
  net = arch.DSRNet(3, 3, shared_b=True, **REDUCED).eval()
  dsrnet_ref.randomize_(net, seed=1)
  dsrnet_ref.set_vgg_weights(None, seed=2)
  vgg = vgg_mod.Vgg19().eval()
  d = tmp_path_factory.mktemp("dsrnet_pt")
  opt = torch.optim.Adam(net.parameters(), lr=1e-4)
  for p in net.parameters():
    p.grad = torch.zeros_like(p)
  opt.step()  # a real optimiser state in 'opt_g' (zero gradients leave the weights as they are)
  torch.save({"weight": net.state_dict(), "opt_g": opt.state_dict(), "epoch": 18, "iterations": 12345},
             d / "official_form.pt")
  torch.save(net.state_dict(), d / "bare.pt")
  vgg_sd = {"features." + k: v.numpy() for k, v in vgg.vgg_pretrained_features.state_dict().items()}
  return {"net": net, "vgg": vgg, "vgg_sd": vgg_sd, "dir": d, "torch": torch}


@needs_official
def test_reduced_dsrnet_parity_both_pt_forms_official_pipeline(official_reduced):
  o = official_reduced
  torch = o["torch"]
  model, tr, fr, info = dw.load_dsrnet(o["dir"] / "official_form.pt", vgg_weights=o["vgg_sd"])
  assert info["epoch"] == 18 and info["iterations"] == 12345 and info["variant"] == "custom"
  assert (model.width, tuple(model.enc_blocks), model.middle_blocks, tuple(model.dec_blocks),
          tuple(model.lrm_blocks), model.shared_b) == (16, (1, 2), 1, (1, 1), (1, 1), True)
  sd2, meta2 = dw.read_state_dict(o["dir"] / "bare.pt")  # the bare state-dict form: same params
  assert meta2["format"] == "state_dict"
  jax.tree.map(np.testing.assert_array_equal, tr, dw.convert_state_dict(sd2, model))
  # The official evaluation pipeline (--if_align): PIL RGB, resize to multiples of 32 with PIL's
  # default filter, to_tensor, net(I, vgg(I)). Two photos: 70x40 -> 64x32 (non-square), 45x33 -> 32x32.
  pred = predict.Predictor(model, models.merge_params(tr, fr), raw=True)
  for path in _photos(o["dir"] / "photos"):
    ours = pred.aligned(Image.open(path))
    for k, r in zip(("T", "R", "RR"), _official_pipeline(o, path)):
      assert ours[k].shape == r.shape and float(np.abs(r).max()) > 0.5  # not trivially small
      err = float(np.abs(ours[k] - r).max())
      assert err < TOL, (path.name, k, err)


def _official_pipeline(o, path):
  """test_sirs.py --if_align on one photo: PIL RGB, PIL resize to multiples of 32, to_tensor, net(I, vgg(I)).

  -> raw (T, R, RR), each (H, W, 3) numpy; cached in the fixture (the CLI test reuses it).
  """
  cache = o.setdefault("official_out", {})
  if path.name not in cache:
    torch = o["torch"]
    with Image.open(path) as im:
      im = im.convert("RGB")
      w, h = im.size
      im = im.resize((w // 32 * 32, h // 32 * 32))
    x = torch.from_numpy(np.asarray(im, np.float32) / 255.0).permute(2, 0, 1)[None]
    cache[path.name] = [r[0].permute(1, 2, 0).numpy() for r in dsrnet_ref.official_forward(o["net"], o["vgg"], x)]
  return cache[path.name]


def _photos(folder):
  """Two PNG photos (lossless) of sizes 70x40 and 45x33 (W x H), written once."""
  from skimage import data as skdata

  if not folder.exists():
    folder.mkdir()
    Image.fromarray(skdata.coffee()[100:140, 200:270]).save(folder / "wide.png")
    Image.fromarray(skdata.chelsea()[50:83, 100:145]).save(folder / "small.png")
  return sorted(folder.glob("*.png"))


@needs_official
def test_predict_cli_on_official_pt(official_reduced, tmp_path, monkeypatch, capsys):
  """`predict --checkpoint X.pt --if_align` writes the official pipeline's T/R/RR to one 8-bit level."""
  o = official_reduced
  torch = o["torch"]
  cache = tmp_path / "th" / "hub" / "checkpoints"
  cache.mkdir(parents=True)
  torch.save({k: torch.from_numpy(v) for k, v in o["vgg_sd"].items()}, cache / dw.VGG19_FILE)
  monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))  # VGG19 found where torchvision caches it
  photos = _photos(o["dir"] / "photos")
  rc = predict.main(["--checkpoint", str(o["dir"] / "official_form.pt"), "--input", str(photos[0].parent),
                     "--output", str(tmp_path / "out"), "--if_align"])
  assert rc == 0
  captured = capsys.readouterr()
  assert "images/s" in captured.out and "variant custom" in captured.err
  for path in photos:
    for name, r in zip(("T", "R", "RR"), _official_pipeline(o, path)):
      r = (r + 1) / 2 if name == "RR" else r  # the official code saves RR as (RR + 1) / 2
      want = np.clip(r, 0, 1) * 255.0
      got = np.asarray(Image.open(tmp_path / "out" / f"{path.stem}_{name}.png"), np.float64)
      assert got.shape == want.shape and np.abs(got - want).max() <= 1.0, (path.name, name)
  # errors: a CLIP-like .pt, a truncated file, no VGG weights anywhere -> one line, exit 2
  torch.save({"visual.proj": torch.zeros(2, 2)}, tmp_path / "clip.pt")
  assert predict.main(["--checkpoint", str(tmp_path / "clip.pt"), "--input", str(photos[0]),
                       "--output", str(tmp_path / "o2")]) == 2
  assert "matches no DSRNet variant" in capsys.readouterr().err
  monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
  assert predict.main(["--checkpoint", str(o["dir"] / "bare.pt"), "--input", str(photos[0]),
                       "--output", str(tmp_path / "o3")]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "--vgg_weights" in err and dw.VGG19_URL in err


@needs_official
def test_unshared_b_and_lrm_duplicates_map_strictly():
  torch = pytest.importorskip("torch")
  arch, _, _ = dsrnet_ref.import_official()
  torch.manual_seed(0)
  net = arch.DSRNet(3, 3, shared_b=False, **REDUCED)
  dsrnet_ref.randomize_(net, seed=3)
  sd = {k: v.numpy() for k, v in net.state_dict().items()}
  name, fields = dw.infer_variant(sd)
  assert name == "custom" and fields["shared_b"] is False and fields["lrm_blocks"] == (1, 1)
  model = models.ReflectionRemovalNet(**fields)
  p = dw.convert_state_dict(sd, model)
  np.testing.assert_array_equal(p["enc0_0"]["b_t"], sd["encoders.0.0.b_l"].reshape(-1))
  np.testing.assert_array_equal(p["dec1_0"]["b_r"], sd["decoders.0.0.b_r"].reshape(-1))  # decoders.0 = deepest
  np.testing.assert_array_equal(p["lrm"]["merge0"]["dwconv"]["kernel"],
                                sd["lrm.blocks_merge.0.block1.2.weight"].transpose(2, 3, 1, 0))
  bad = dict(sd)
  bad["lrm.intro.seq_r.0.bias"] = bad["lrm.intro.seq_r.0.bias"] + 1  # copies of one shared layer must agree
  with pytest.raises(dw.CheckpointError, match="seq_l / seq_r"):
    dw.convert_state_dict(bad, model)


def test_presets_match_official_param_counts_and_key_tables():
  model = models.build_model("dsrnet_l")  # official dsrnet_l(): 124,602,022 params at this commit
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  trainable, frozen = models.split_params(shapes["params"])
  assert models.param_count(trainable) == 124_602_022
  covered = {"/".join(p) for p, _ in dw.key_table(model).values()}
  assert covered == {"/".join(k.key for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(trainable)[0]}
  with pytest.raises(ValueError, match="DSRNet's layout"):
    dw.key_table(models.build_model("tiny"))


def _fake_sd(model):
  """A state dict with the official keys and shapes of ``model`` (zeros), from our own key table."""
  tr = dw._abstract_params(model)
  return {k: np.zeros(dw._torch_shape(tuple(dw._get(tr, p).shape), kind), np.float32)
          for k, (p, kind) in dw.key_table(model).items()}


def _fake_keys(model):
  """Only the keys (and the stem's output-conv shape) of ``model``'s official state dict: no init traced."""
  return {k: jax.ShapeDtypeStruct((model.width, 64, 1, 1), jnp.float32) if k == dw._ANCHOR else None
          for k in dw.key_table(model)}


def test_variant_inference_prefixes_and_clear_errors(tmp_path):
  torch = pytest.importorskip("torch")
  small = models.build_model("dsrnet_l", width=8, enc_blocks=(1, 1), middle_blocks=1, dec_blocks=(1, 1),
                             lrm_blocks=(1, 2))
  sd = _fake_sd(small)
  name, fields = dw.infer_variant(sd)
  assert name == "custom" and fields["width"] == 8 and fields["lrm_blocks"] == (1, 2) and fields["shared_b"]
  for preset in ("dsrnet_l", "dsrnet_l_nature", "dsrnet_s"):  # presets are recognised from key names/shapes
    assert dw.infer_variant(_fake_keys(models.build_model(preset)))[0] == preset
  # Lightning .ckpt: the network under a prefix, next to other modules' keys (ignored)
  tsd = {k: torch.from_numpy(v) for k, v in sd.items()}
  ckpt = {"state_dict": {**{"net_g." + k: v for k, v in tsd.items()}, "vgg.features.0.weight": torch.zeros(1)},
          "epoch": 3, "global_step": 99}
  torch.save(ckpt, tmp_path / "xreflection.ckpt")
  net_sd, meta = dw.read_state_dict(tmp_path / "xreflection.ckpt")
  assert meta["prefix"] == "net_g." and set(net_sd) == set(sd) and meta["iterations"] == 99
  model, tr, _, info = dw.load_dsrnet(tmp_path / "xreflection.ckpt", vgg_weights=False)
  assert info["fields"]["width"] == 8
  # errors: truncated file (names it), a CLIP .pt (no DSRNet variant), wrong preset, bad keys
  torch.save({"weight": tsd, "epoch": 1, "iterations": 1}, tmp_path / "full.pt")
  data = (tmp_path / "full.pt").read_bytes()
  (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
  with pytest.raises(dw.CheckpointError, match=r"cut\.pt.*truncated"):
    dw.read_state_dict(tmp_path / "cut.pt")
  clip_like = {"visual.conv1.weight": torch.zeros(8, 3, 4, 4), "positional_embedding": torch.zeros(5, 8),
               "transformer.resblocks.0.attn.in_proj_weight": torch.zeros(24, 8)}
  torch.save(clip_like, tmp_path / "ViT-B-32.pt")
  with pytest.raises(dw.CheckpointError, match=r"ViT-B-32\.pt: matches no DSRNet variant"):
    dw.load_dsrnet(tmp_path / "ViT-B-32.pt", vgg_weights=False)
  with pytest.raises(dw.CheckpointError, match="not dsrnet_l"):
    dw.load_dsrnet(tmp_path / "full.pt", "dsrnet_l", vgg_weights=False)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    dw.read_state_dict(tmp_path / "nope.pt")
  broken = dict(sd)
  del broken["middle_blks.0.a_l"]
  broken["encoders.0.0.block1.0.seq.1.weight"] = np.zeros((3, 3, 1, 1), np.float32)
  broken["extra.weight"] = np.zeros(1, np.float32)
  with pytest.raises(dw.CheckpointError) as e:
    dw.convert_state_dict(broken, small)
  msg = str(e.value)
  assert "middle_blks.0.a_l" in msg and "encoders.0.0.block1.0.seq.1.weight" in msg and "extra.weight" in msg


def test_vgg_weights_lookup_errors(tmp_path, monkeypatch):
  monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
  with pytest.raises(FileNotFoundError) as e:
    dw.resolve_vgg_weights(None)
  msg = str(e.value)
  assert "--vgg_weights" in msg and str(tmp_path / "th" / "hub" / "checkpoints" / dw.VGG19_FILE) in msg
  assert dw.VGG19_URL in msg
  with pytest.raises(FileNotFoundError, match="nope.pth"):
    dw.resolve_vgg_weights(tmp_path / "nope.pth")
  cached = tmp_path / "th" / "hub" / "checkpoints" / dw.VGG19_FILE
  cached.parent.mkdir(parents=True)
  cached.write_bytes(b"x")
  assert dw.resolve_vgg_weights(None) == cached  # found where torchvision caches it
  assert dw.resolve_vgg_weights(str(cached)) == cached


def test_init_from_dsrnet_into_paper_layout():
  src_model = models.build_model("dsrnet_l", width=8, enc_blocks=(1, 1), middle_blocks=2, dec_blocks=(1, 1),
                                 lrm_blocks=(1, 1))
  sd = {k: np.full(v.shape, 0.5, np.float32) for k, v in _fake_sd(src_model).items()}
  target = models.build_model("paper_conv", width=8, enc_blocks=(1, 1), middle_blocks=1, dec_blocks=(1, 1), hf_blocks=1)
  shapes = jax.eval_shape(target.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))
  trainable, _ = models.split_params(shapes["params"])
  trainable = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), trainable)
  new, loaded, fresh = dw.init_from_state_dict(sd, src_model, trainable)
  assert "enc0_0/expand1/kernel" in loaded and "mid_0/b_t" in loaded and "ending/kernel" in loaded
  assert "intro/kernel" in fresh and "hf/fuse/kernel" in fresh and "enc0_ica/gamma_a" in fresh
  assert float(new["mid_0"]["b_t"][0]) == 0.5 and float(new["hf"]["fuse"]["kernel"].max()) == 0.0
  assert len(loaded) + len(fresh) == len(jax.tree.leaves(trainable))


@pytest.mark.slow
@needs_official
def test_full_dsrnet_l_parity_small_input():
  """Full official dsrnet_l (124.6M params, all random) at one small input (slow: ~1 min)."""
  torch = pytest.importorskip("torch")
  arch, vgg_mod, _ = dsrnet_ref.import_official()
  torch.manual_seed(0)
  net = arch.dsrnet_l().eval()
  dsrnet_ref.randomize_(net, seed=5)
  dsrnet_ref.set_vgg_weights(None, seed=6)
  vgg = vgg_mod.Vgg19().eval()
  sd = {k: v.numpy() for k, v in net.state_dict().items()}
  assert dw.infer_variant(sd)[0] == "dsrnet_l"
  model = models.build_model("dsrnet_l")
  vgg_sd = {"features." + k: v.numpy() for k, v in vgg.vgg_pretrained_features.state_dict().items()}
  from backbones_jax import vgg as vgg_lib
  params = models.merge_params(dw.convert_state_dict(sd, model), {"vgg": vgg_lib.load_torchvision_vgg(vgg_sd, 19)[1]})
  x = np.random.default_rng(1).uniform(size=(1, 32, 48, 3)).astype(np.float32)
  ours = _compile(model, params, x.shape)(params, x)
  ref = dsrnet_ref.official_forward(net, vgg, torch.from_numpy(x).permute(0, 3, 1, 2))
  for k, r in zip(("T", "R", "RR"), ref):
    err = float(np.abs(np.asarray(ours[k]) - r.permute(0, 2, 3, 1).numpy()).max())
    assert err < TOL, (k, err)


def test_train_init_from_dsrnet_pt(tmp_path, capsys):
  """`train.derefl --init_from X.pt`: tiny preset takes the tensors that match, logs loaded / fresh."""
  torch = pytest.importorskip("torch")
  from train import derefl as train_derefl

  src = models.build_model("dsrnet_s", width=8, enc_blocks=(1, 1), middle_blocks=1, dec_blocks=(1, 1),
                           lrm_blocks=(1, 1))
  sd = {k: torch.full(v.shape, 0.25) for k, v in _fake_sd(src).items()}
  torch.save({"weight": sd, "epoch": 1, "iterations": 10}, tmp_path / "dsrnet_small.pt")
  tiny = models.build_model("tiny")
  shapes = jax.eval_shape(tiny.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))
  trainable = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), models.split_params(shapes["params"])[0])
  params, loaded, fresh, info = train_derefl.load_init_from(str(tmp_path / "dsrnet_small.pt"), tiny, trainable)
  assert info["variant"] == "custom" and "enc0_0/b_t" in loaded and "down1/kernel" in loaded
  assert "intro/kernel" in fresh and "hf/head/kernel" in fresh
  assert float(params["enc0_0"]["expand1"]["kernel"].min()) == 0.25
  assert train_derefl._init_from_flag(["--init_from", "a.pt", "--x"]) == ["--config.init_from=a.pt", "--x"]
  # a missing file: one error line, exit 2, nothing written
  with pytest.raises(SystemExit) as e:
    train_derefl.main(["--init_from", str(tmp_path / "nope.pt"), f"--workdir={tmp_path / 'run'}"])
  assert e.value.code == 2 and "init_from" in capsys.readouterr().err and not (tmp_path / "run").exists()
