"""VGG16/19 feature nets: torchvision-layout parity, exact parameter counts, loader errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from backbones_jax import vgg


# torchvision.models.vgg `cfgs` ('D' = VGG16, 'E' = VGG19), written out here independently of the
# library: channel counts, "M" = MaxPool2d(2, 2). features = Conv2d(3x3, padding=1) + ReLU per number.
TORCHVISION_CFGS = {
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
# torchvision's ImageNet normalisation (the VGG weights' transforms), written out independently.
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def _torch_features(depth):
  """torch nn.Sequential built as torchvision's make_layers(cfg) does: keys features.N.weight/bias."""
  torch = pytest.importorskip("torch")
  nn = torch.nn
  layers, c_in = [], 3
  for v in TORCHVISION_CFGS[depth]:
    if v == "M":
      layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    else:
      layers += [nn.Conv2d(c_in, v, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
      c_in = v
  return nn.Sequential(*layers)


def _torch_taps(features, x):
  """Run the torch Sequential, naming every ReLU output relu{block}_{index} (block = pools seen + 1)."""
  torch = pytest.importorskip("torch")
  out, block, index = {}, 1, 0
  with torch.no_grad():
    for layer in features:
      x = layer(x)
      if isinstance(layer, torch.nn.MaxPool2d):
        block, index = block + 1, 0
      elif isinstance(layer, torch.nn.ReLU):
        index += 1
        out[f"relu{block}_{index}"] = x.permute(0, 2, 3, 1).numpy()
  return out


@pytest.mark.parametrize("depth", [16, 19])
def test_parity_with_torchvision_layout(depth):
  torch = pytest.importorskip("torch")
  torch.manual_seed(depth)
  feats = _torch_features(depth).eval()
  sd = {"features." + k: v.detach().numpy() for k, v in feats.state_dict().items()}
  rng = np.random.default_rng(0)
  x01 = rng.uniform(size=(2, 32, 48, 3)).astype(np.float32)
  ref = _torch_taps(feats, torch.from_numpy((x01 - MEAN) / STD).permute(0, 3, 1, 2).contiguous())
  assert len(ref) == depth - 3  # 13 / 16 conv+ReLU taps
  taps = tuple(ref)
  model, params = vgg.load_torchvision_vgg(sd, depth, taps=taps)
  ours = jax.jit(lambda p, x: vgg.vgg_features(model, p, x))(params, x01)
  assert set(ours) == set(taps)
  for name in taps:
    scale = max(1.0, float(np.abs(ref[name]).max()))
    np.testing.assert_allclose(np.asarray(ours[name]) / scale, ref[name] / scale, atol=1e-5, err_msg=name)


def test_pth_file_roundtrip_and_default_taps(tmp_path):
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  feats = _torch_features(19)
  path = tmp_path / "vgg19.pth"
  # Full torchvision checkpoints also carry classifier.* keys; they must be ignored.
  sd = {"features." + k: v for k, v in feats.state_dict().items()}
  sd["classifier.0.weight"] = torch.zeros(4, 4)
  torch.save(sd, path)
  model, params = vgg.load_torchvision_vgg(str(path), 19)
  x = jnp.asarray(np.random.default_rng(1).uniform(size=(1, 32, 32, 3)), jnp.float32)
  out = vgg.vgg_features(model, params, x)
  assert list(out) == list(vgg.DEFAULT_TAPS)
  assert [v.shape for v in out.values()] == [(1, 32, 32, 64), (1, 16, 16, 128), (1, 8, 8, 256),
                                             (1, 4, 4, 512), (1, 2, 2, 512)]
  np.testing.assert_allclose(params["conv1_1"]["kernel"],
                             sd["features.0.weight"].numpy().transpose(2, 3, 1, 0))
  # The state dict of ``vgg.features`` alone (keys "N.weight") loads to the same params.
  _, params2 = vgg.load_torchvision_vgg(dict(feats.state_dict()), 19)
  jax.tree.map(np.testing.assert_array_equal, params, params2)


@pytest.mark.parametrize("depth,expected", [(16, 14_714_688), (19, 20_024_384)])
def test_param_count_exact(depth, expected):
  model = vgg.VGG(depth=depth, taps=(vgg.all_taps(depth)[-1],))
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  assert vgg.param_count(shapes["params"]) == expected


def test_stops_after_last_requested_tap():
  model, params = vgg.init_vgg(19, seed=0, width_divisor=8)
  shallow = vgg.VGG(depth=19, taps=("relu1_2", "relu2_1"), width_divisor=8)
  x = jnp.ones((1, 16, 16, 3))
  out = shallow.apply({"params": params}, x)
  assert set(out) == {"relu1_2", "relu2_1"}
  hlo = jax.jit(lambda p: shallow.apply({"params": p}, x)).lower(params).as_text()
  assert hlo.count("convolution(") == 3  # conv1_1, conv1_2, conv2_1 only


def test_loader_errors_name_the_keys(tmp_path):
  sd = {k: np.zeros(s.shape, np.float32) for k, s in _shapes_sd(19).items()}
  bad = dict(sd)
  del bad["features.0.bias"]
  bad["features.99.weight"] = np.zeros((1,), np.float32)
  bad["features.2.weight"] = np.zeros((64, 3, 3, 3), np.float32)
  with pytest.raises(ValueError) as e:
    vgg.load_torchvision_vgg(bad, 19)
  msg = str(e.value)
  assert "features.0.bias" in msg and "features.99.weight" in msg and "features.2.weight" in msg
  with pytest.raises(ValueError, match="unexpected keys"):
    vgg.load_torchvision_vgg(sd, 16)  # a VGG19 state dict is not a VGG16 one
  with pytest.raises(FileNotFoundError, match="vgg19"):
    vgg.load_torchvision_vgg(str(tmp_path / "nope.pth"), 19)
  with pytest.raises(ValueError, match="16 or 19"):
    vgg.load_torchvision_vgg(sd, 11)
  with pytest.raises(ValueError, match="valid taps"):
    vgg.VGG(depth=16, taps=("relu3_4",)).init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
  with pytest.raises(ValueError, match="NHWC"):
    vgg.imagenet_normalize(jnp.zeros((1, 3, 8, 8)))


def _shapes_sd(depth):
  model = vgg.VGG(depth=depth, taps=(vgg.all_taps(depth)[-1],))
  p = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))["params"]
  out = {}
  for key, (name, leaf) in vgg.torchvision_key_table(depth).items():
    s = p[name][leaf].shape
    out[key] = jax.ShapeDtypeStruct(vgg._torch_shape(s, leaf), jnp.float32)
  return out
