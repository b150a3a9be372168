"""The official DSRNet (../shared/peers/dsrnet) importable on CPU, for parity tests and benchmarks.

torchvision does not import beside the torch wheel used here, so a small stand-in module is
registered as ``torchvision`` / ``torchvision.models`` whose ``vgg19()`` returns an object with
``.features``: torchvision's VGG19 layer list (Conv2d 3x3 pad 1 + ReLU(inplace=True) per cfg
entry, MaxPool2d(2, 2) at each 'M'), written here from torchvision's published cfg 'E'. The
peers folder is only read, never copied.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

PEERS = Path(__file__).resolve().parents[2] / ".." / "shared" / "peers"
DSRNET_DIR = (PEERS / "dsrnet").resolve()

# torchvision.models.vgg cfgs["E"] (VGG19): channel counts, "M" = max-pool.
VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
             512, 512, 512, 512, "M"]
# torchvision's ImageNet normalisation constants (transforms of the VGG weights).
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

_VGG_STATE: dict = {"state_dict": None, "seed": 0}


def available() -> bool:
  return (DSRNET_DIR / "models" / "arch" / "dsrnet.py").is_file()


def torchvision_vgg19_features():
  """torch ``nn.Sequential`` with torchvision's ``vgg19().features`` layout and keys (``N.weight``)."""
  import torch.nn as nn

  layers, c_in = [], 3
  for v in VGG19_CFG:
    if v == "M":
      layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    else:
      layers += [nn.Conv2d(c_in, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
      c_in = v
  return nn.Sequential(*layers)


def set_vgg_weights(state_dict=None, seed: int = 0) -> None:
  """What the stand-in's ``vgg19()`` loads next: a ``features.N.*`` state dict, or random (seed)."""
  _VGG_STATE["state_dict"], _VGG_STATE["seed"] = state_dict, seed


def _install_torchvision_standin() -> None:
  import torch

  class _VGG19(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.features = torchvision_vgg19_features()

  def vgg19(pretrained=False, weights=None, **unused):
    torch.manual_seed(_VGG_STATE["seed"])
    net = _VGG19()
    if _VGG_STATE["state_dict"] is not None:
      net.load_state_dict(_VGG_STATE["state_dict"], strict=False)
    return net

  tv = types.ModuleType("torchvision")
  tv_models = types.ModuleType("torchvision.models")
  tv_models.vgg19 = vgg19
  tv_models.vgg16 = lambda *a, **k: (_ for _ in ()).throw(NotImplementedError("vgg16 stand-in"))
  tv.models = tv_models
  sys.modules["torchvision"] = tv
  sys.modules["torchvision.models"] = tv_models


def import_official():
  """-> (models.arch module, models.vgg module, models.losses module) of the official code."""
  if not available():
    raise FileNotFoundError(f"official DSRNet code not found at {DSRNET_DIR}")
  try:
    import torchvision  # noqa: F401
    if not hasattr(torchvision, "models") or not hasattr(torchvision.models, "vgg19"):
      raise ImportError
  except Exception:  # noqa: BLE001 - torchvision absent or broken beside this torch
    for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
      del sys.modules[k]
    _install_torchvision_standin()
  if str(DSRNET_DIR) not in sys.path:
    sys.path.insert(0, str(DSRNET_DIR))
  import importlib

  arch = importlib.import_module("models.arch")
  vgg = importlib.import_module("models.vgg")
  losses = importlib.import_module("models.losses")
  return arch, vgg, losses


def randomize_(module, seed: int = 0, scale: float = 0.2) -> None:
  """Every parameter of a torch module random: zero-init residual scales, biases and LayerNorms included."""
  import torch

  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      leaf = name.rsplit(".", 1)[-1]
      if leaf in ("a_l", "a_r", "b_l", "b_r", "a", "b"):  # residual scales (zeros in the official init)
        p.copy_(torch.randn(p.shape, generator=g) * scale)
      elif p.ndim >= 2:  # conv kernels: fan-in scaled
        p.copy_(torch.randn(p.shape, generator=g) * (1.0 / p[0].numel()) ** 0.5)
      elif leaf == "weight":  # LayerNorm gains
        p.copy_(1.0 + torch.randn(p.shape, generator=g) * scale)
      else:
        p.copy_(torch.randn(p.shape, generator=g) * scale)


def official_forward(net, vgg, x_nchw):
  """The official forward call (dsrnet_model_sirs.py): ``net(I, vgg(I))`` on the raw [0, 1] input."""
  import torch

  with torch.no_grad():
    return net(x_nchw, vgg(x_nchw))
