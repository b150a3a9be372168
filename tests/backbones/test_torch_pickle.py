"""Tests for backbones_jax.torch_pickle: torch.save / torch.jit.save files read without torch."""
import collections
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from backbones_jax import torch_pickle as tp

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]
# Shared fixtures live next to the repository (../shared/fixtures), never inside it.
FIXTURES = next((p for p in (REPO.parent / "shared" / "fixtures", REPO / "shared" / "fixtures")
                 if p.is_dir()), REPO.parent / "shared" / "fixtures")


def _np(t):
  t = t.detach()
  return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


def _objects():
  g = torch.Generator().manual_seed(0)
  base = torch.randn(6, 5, generator=g)
  return [
      {"y": torch.tensor(3), "mvrec": torch.randn(27, 3, 8, generator=g).half()},
      {
          "transposed": base.t(),                    # non-contiguous strides
          "sliced": torch.arange(20)[3:15:3],        # storage offset + stride
          "shared_view": base[2:4],                  # shares the storage of "transposed"
          "bf16": torch.randn(3, generator=g).bfloat16(),
          "param": torch.nn.Parameter(torch.randn(2, 2, generator=g)),
          "bool": torch.tensor([True, False]),
          "int8": torch.tensor([-3, 4], dtype=torch.int8),
          "empty": torch.zeros(0, 4),
          "scalar": torch.tensor(2.5, dtype=torch.float64),
          "nested": collections.OrderedDict(a=[torch.ones(2), 7, "text", (1.5, None)]),
      },
  ]


def _assert_same(ref, got):
  if isinstance(ref, torch.Tensor):
    assert isinstance(got, np.ndarray)
    want = _np(ref)
    assert got.shape == want.shape
    if ref.dtype == torch.bfloat16:
      assert str(got.dtype) == "bfloat16"
    else:
      assert got.dtype == want.dtype
    np.testing.assert_array_equal(got.astype(want.dtype), want)
  elif isinstance(ref, dict):
    assert type(got) is type(ref) and list(got) == list(ref)
    for k in ref:
      _assert_same(ref[k], got[k])
  elif isinstance(ref, (list, tuple)):
    assert type(got) is type(ref) and len(got) == len(ref)
    for a, b in zip(ref, got):
      _assert_same(a, b)
  else:
    assert got == ref


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_load_torch_file_matches_torch(tmp_path, zip_format):
  objs = _objects()
  path = tmp_path / "objs.pt"
  torch.save(objs, path, _use_new_zipfile_serialization=zip_format)
  got = tp.load_torch_file(path)
  _assert_same(objs, got)
  assert got[0]["mvrec"].dtype == np.float16


def test_loaded_arrays_are_independent_copies(tmp_path):
  base = torch.arange(12.0).reshape(3, 4)
  torch.save({"a": base, "b": base[1]}, tmp_path / "x.pt")
  got = tp.load_torch_file(tmp_path / "x.pt")
  got["a"][1, 0] = -1.0
  assert got["b"][0] == 4.0
  assert got["a"].flags.writeable


def test_mvrec_official_features():
  path = FIXTURES / "mvrec_official" / "transistor_query.pt"
  if not path.exists():
    pytest.skip("official MVREC fixture not available")
  got = tp.load_torch_file(path)
  ref = torch.load(path, map_location="cpu", weights_only=False)
  assert len(got) == len(ref) == 21
  for a, b in zip(got, ref):
    assert int(a["y"]) == int(b["y"])
    assert a["mvrec"].dtype == np.float16 and a["mvrec"].shape == (27, 3, 768)
    np.testing.assert_array_equal(a["mvrec"], b["mvrec"].numpy())


class _Tiny(torch.nn.Module):

  def __init__(self):
    super().__init__()
    self.fc = torch.nn.Linear(3, 4)
    self.seq = torch.nn.Sequential(torch.nn.Conv2d(4, 2, 1), torch.nn.Flatten(), torch.nn.LayerNorm(2))
    self.register_buffer("buf", torch.arange(3.0))
    self.plain = torch.zeros(2)  # neither parameter nor buffer: not in the state dict

  def forward(self, x):
    h = self.fc(x)[:, :, None, None]
    return self.seq(h).sum() + self.buf.sum() + self.plain.sum()


@pytest.mark.parametrize("how", ["state_dict", "wrapped", "legacy", "trace", "script", "half"])
def test_load_state_dict_forms(tmp_path, how):
  torch.manual_seed(0)
  model = _Tiny()
  path = tmp_path / "m.pt"
  if how == "state_dict":
    torch.save(model.state_dict(), path)
  elif how == "wrapped":
    torch.save({"epoch": 3, "state_dict": model.state_dict(), "opt": {"lr": 0.1}}, path)
  elif how == "legacy":
    torch.save(model.state_dict(), path, _use_new_zipfile_serialization=False)
  elif how == "trace":
    torch.jit.save(torch.jit.trace(model, torch.ones(1, 3)), path)
  elif how == "script":
    torch.jit.save(torch.jit.script(model), path)
  elif how == "half":
    torch.jit.save(torch.jit.trace(model.half(), torch.ones(1, 3).half()), path)
  ref = (torch.jit.load(path) if how in ("trace", "script", "half") else model).state_dict()
  got = tp.load_state_dict(path)
  assert set(got) == set(ref) == {"fc.weight", "fc.bias", "seq.0.weight", "seq.0.bias",
                                  "seq.2.weight", "seq.2.bias", "buf"}
  for k, v in ref.items():
    assert got[k].dtype == _np(v).dtype
    np.testing.assert_array_equal(got[k], _np(v))


def test_load_state_dict_safetensors(tmp_path):
  from safetensors.torch import save_file
  tensors = {"a": torch.randn(2, 3), "b": torch.randn(4).bfloat16(), "c": torch.arange(5)}
  save_file(tensors, tmp_path / "m.safetensors")
  got = tp.load_state_dict(tmp_path / "m.safetensors")
  for k, v in tensors.items():
    np.testing.assert_array_equal(got[k].astype(_np(v).dtype), _np(v))


def test_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="no such"):
    tp.load_torch_file(tmp_path / "missing.pt")
  (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
  with pytest.raises(tp.TorchFileError, match="not a torch file"):
    tp.load_torch_file(tmp_path / "junk.pt")
  with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
    z.writestr("x/readme.txt", "hi")
  with pytest.raises(tp.TorchFileError, match="not a torch archive"):
    tp.load_state_dict(tmp_path / "other.zip")
  # A whole pickled module would need torch to rebuild: refused, naming the class.
  torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
  with pytest.raises(tp.TorchFileError, match=r"torch\.nn\.modules\.linear\.Linear"):
    tp.load_torch_file(tmp_path / "module.pt")
  torch.save({"epoch": 1, "config": {"a": 1}}, tmp_path / "nostate.pt")
  with pytest.raises(tp.TorchFileError, match="top-level keys"):
    tp.load_state_dict(tmp_path / "nostate.pt")
  torch.jit.save(torch.jit.trace(_Tiny(), torch.ones(1, 3)), tmp_path / "ts.pt")
  with pytest.raises(tp.TorchFileError, match="load_state_dict"):
    tp.load_torch_file(tmp_path / "ts.pt")


def test_works_without_torch(tmp_path):
  torch.save({"w": torch.ones(2, 3).half()}, tmp_path / "w.pt")
  code = ("import sys; sys.modules['torch'] = None\n"
          "from backbones_jax.torch_pickle import load_state_dict\n"
          f"sd = load_state_dict({str(tmp_path / 'w.pt')!r})\n"
          "assert sd['w'].dtype.name == 'float16' and sd['w'].shape == (2, 3), sd\n"
          "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n")
  env = dict(os.environ, PYTHONPATH=str(REPO))
  subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
