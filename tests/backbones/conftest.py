"""Shared fixtures for the CLIP / AlphaCLIP tests: a tiny random transformers CLIPModel."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backbones_testlib import WIDTH  # noqa: E402  pylint: disable=g-import-not-at-top


@pytest.fixture(scope="session")
def tiny_spec():
  from backbones_jax import clip  # pylint: disable=g-import-not-at-top
  return clip.tiny_clip_spec(width=WIDTH, layers=2, heads=2, image_size=32, patch_size=8,
                             vocab_size=64, context_length=16, projection_dim=24)


@pytest.fixture(scope="session")
def torch_clip(tiny_spec):
  """A random transformers CLIPModel (eval mode) matching ``tiny_spec``; biases/LN perturbed."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  model = transformers.CLIPModel(tiny_spec.to_hf_config()).eval()
  with torch.no_grad():
    for p in model.parameters():  # LayerNorm scales 1 and biases 0 would hide mapping bugs
      p.add_(torch.randn_like(p) * 0.05)
  return model


@pytest.fixture(scope="session")
def clip_inputs(tiny_spec):
  rng = np.random.RandomState(0)
  images = rng.randn(3, 32, 32, 3).astype(np.float32)
  eos = tiny_spec.text.eos_token_id
  ids = rng.randint(1, eos - 1, size=(3, 16)).astype(np.int32)
  lengths = np.array([5, 9, 15])
  mask = (np.arange(16)[None] <= lengths[:, None]).astype(np.int32)
  ids[np.arange(3), lengths] = eos
  ids = np.where(mask > 0, ids, eos)  # HF tokenizer pads with the EOS id
  return images, ids, mask
