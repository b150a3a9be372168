"""Cost of the `paper` preset vs DSRNet-L and DSIT-large: parameters and FLOPs at the same input size.

    python benchmarks/derefl_cost.py --sizes 224 384 [--dsit_dir DIR] [--out docs/derefl_cost.json]

* ours (`paper`, `dsrnet_l`): ``derefl_jax.complexity.count`` (the one counter: XLA cost analysis of
  the lowered forward, frozen VGG19 included).
* DSRNet-L, official PyTorch code (``../shared/peers/dsrnet``, imported as tests/derefl/dsrnet_ref.py
  does): parameters counted exactly (``numel``), FLOPs with ``torch.utils.flop_counter.FlopCounterMode``
  (convolutions and matrix products only, 2 FLOPs per multiply-add) of ``net(I, vgg(I))``.
* DSIT-large (NeurIPS 2024, github.com/mingcv/DSIT, ``models/arch/__init__.py:dsit_large``): the
  official source in ``--dsit_dir`` (a checkout; read, not copied), built with random weights (a
  ``timm.models.layers`` stand-in and no Swin checkpoint read), parameters counted exactly
  (trainable vs the frozen Swin-L prior), FLOPs with the same FlopCounterMode.

To compare FLOPs with one method, ours are also counted the torch way for DSRNet-L (the official
code computes the same network: parity tests in tests/derefl/test_dsrnet.py), so the table gives
the XLA count of paper / dsrnet_l and the torch count of DSRNet-L / DSIT; ratios use like with like.
"""
from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "derefl"))


def ours(size: int) -> dict:
  from derefl_jax import complexity
  return {p: complexity.count(p, size, size) for p in ("paper", "dsrnet_l")}


def _torch_flops(fn) -> float:
  from torch.utils.flop_counter import FlopCounterMode
  import torch
  with torch.no_grad(), FlopCounterMode(display=False) as fc:
    fn()
  return float(fc.get_total_flops())


def dsrnet_official(size: int) -> dict:
  import torch
  import dsrnet_ref
  arch, vgg_mod, _ = dsrnet_ref.import_official()
  net = arch.dsrnet_l().eval()
  vgg = vgg_mod.Vgg19(requires_grad=False).eval()
  x = torch.rand(1, 3, size, size)
  flops = _torch_flops(lambda: net(x, vgg(x)))
  return {"trainable_params": sum(p.numel() for p in net.parameters()),
          "frozen_params": sum(p.numel() for p in vgg.parameters()), "flops": flops, "gflops": flops / 1e9,
          "source": "official DSRNet code (../shared/peers/dsrnet), FlopCounterMode (conv/matmul)"}


def _timm_standin() -> None:
  """``timm.models.layers`` names DSIT imports: to_2tuple, trunc_normal_, DropPath (eval: identity)."""
  import torch
  import torch.nn as nn
  if "timm" in sys.modules:
    return

  class DropPath(nn.Module):
    def __init__(self, drop_prob=0.0):
      super().__init__()
      self.drop_prob = drop_prob

    def forward(self, x):
      return x

  layers = types.ModuleType("timm.models.layers")
  layers.to_2tuple = lambda x: tuple(x) if isinstance(x, (tuple, list)) else (x, x)
  layers.trunc_normal_ = lambda t, std=1.0, **kw: torch.nn.init.trunc_normal_(t, std=std)
  layers.DropPath = DropPath
  timm = types.ModuleType("timm")
  models = types.ModuleType("timm.models")
  timm.models, models.layers = models, layers
  sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers})


def dsit_official(size: int, dsit_dir: str) -> dict:
  import torch
  _timm_standin()
  for k in [k for k in sys.modules if k == "models" or k.startswith("models.")]:
    del sys.modules[k]  # DSRNet's `models` package may be imported already
  import importlib
  import importlib.util
  # Packages `models` / `models.arch` from the checkout without running models/__init__.py (training code).
  pkg_dir = Path(dsit_dir).resolve() / "models"
  for name, path in (("models", pkg_dir), ("models.arch", pkg_dir / "arch")):
    mod = types.ModuleType(name)
    mod.__path__ = [str(path)]
    sys.modules[name] = mod
  swin = importlib.import_module("models.arch.swin_det")
  orig_load = torch.load
  torch.load = lambda *a, **k: {"model": {}}  # no Swin checkpoint here: random weights
  try:
    orig_lsd = swin.SwinTransformer.load_state_dict
    swin.SwinTransformer.load_state_dict = lambda self, sd, strict=True: None
    arch = types.SimpleNamespace(dsit_large=None)
    spec = importlib.util.spec_from_file_location("models.arch", pkg_dir / "arch" / "__init__.py",
                                                  submodule_search_locations=[str(pkg_dir / "arch")])
    arch = importlib.util.module_from_spec(spec)
    sys.modules["models.arch"] = arch
    spec.loader.exec_module(arch)
    net = arch.dsit_large(types.SimpleNamespace(backbone_weight_path=""))
    net.eval()  # DSIT.train() returns None: no chaining
  finally:
    torch.load = orig_load
    swin.SwinTransformer.load_state_dict = orig_lsd
  net.device = "cpu"
  total = sum(p.numel() for p in net.parameters())
  frozen = sum(p.numel() for p in net.swin_prior.parameters())
  x = torch.rand(1, 3, size, size)
  try:
    flops = _torch_flops(lambda: net(x))
  except Exception as e:  # noqa: BLE001 - sizes its windows do not support
    flops = float("nan")
    print(f"DSIT forward at {size}: {type(e).__name__}: {e}")
  return {"trainable_params": total - frozen, "frozen_params": frozen, "total_params": total,
          "flops": flops, "gflops": flops / 1e9,
          "source": "official DSIT code (github.com/mingcv/DSIT), FlopCounterMode (conv/matmul)"}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--sizes", type=int, nargs="+", default=[224])
  ap.add_argument("--dsit_dir", default="", help="checkout of github.com/mingcv/DSIT (omit to skip DSIT)")
  ap.add_argument("--out", default="")
  args = ap.parse_args(argv)
  res = {str(s): {"ours": ours(s), "dsrnet_official": dsrnet_official(s)} for s in args.sizes}
  if args.dsit_dir:  # after DSRNet: both name their package `models`
    for s in args.sizes:
      res[str(s)]["dsit_official"] = dsit_official(s, args.dsit_dir)
  for s in args.sizes:
    r = res[str(s)]
    o, d = r["ours"], r["dsrnet_official"]
    print(f"--- {s}x{s}")
    for k, v in o.items():
      print(f"ours {k:9s}: {v['trainable_params']:>12,} trainable  {v['gflops']:8.1f} GFLOPs (XLA lowered)")
    print(f"DSRNet-L official: {d['trainable_params']:>12,} trainable  {d['gflops']:8.1f} GFLOPs (torch conv/matmul)")
    if "dsit_official" in r:
      t = r["dsit_official"]
      print(f"DSIT-large official: {t['trainable_params']:>12,} trainable + {t['frozen_params']:,} frozen Swin-L  "
            f"{t['gflops']:8.1f} GFLOPs (torch conv/matmul)")
  if args.out:
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
  return res


if __name__ == "__main__":
  main()
