"""AlphaCLIP: zero alpha conv == CLIP, alpha path by hand, checkpoint loading vs a torch reference."""
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from backbones_jax import alpha_clip, clip, convert

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backbones_testlib import WIDTH, hf_to_openai, torch_features  # noqa: E402  pylint: disable=g-import-not-at-top

SMALL = dict(width=32, layers=1, heads=2, image_size=32, patch_size=8, vocab_size=32,
             context_length=8, projection_dim=16)


def _patches(x, p):
  """(B, H, W, C) -> (B, N, p*p*C) in row-major (h, w, c) order."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def test_zero_alpha_conv_equals_clip():
  spec = alpha_clip.tiny_alpha_clip_spec(**SMALL)
  model, params = alpha_clip.init_alpha_clip(spec, seed=0)
  assert not np.any(np.asarray(params["vision_model"]["embeddings"]["conv1_alpha"]["kernel"]))
  clip_model = clip.CLIP(clip.tiny_clip_spec(**SMALL))
  vision = jax.tree.map(lambda x: x, params["vision_model"])
  del vision["embeddings"]["conv1_alpha"]
  # get_image_features only reads the vision tower and its projection.
  clip_params = {"vision_model": vision, "visual_projection": params["visual_projection"],
                 "logit_scale": np.float32(0.0)}
  rng = np.random.RandomState(0)
  images = rng.randn(2, 32, 32, 3).astype(np.float32)
  alpha = rng.randn(2, 32, 32, 1).astype(np.float32)
  got = np.asarray(alpha_clip.encode_image(model, params, images, alpha))
  want = np.asarray(clip.encode_image(clip_model, clip_params, images))
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_alpha_embedding_matches_numpy():
  spec = alpha_clip.tiny_alpha_clip_spec(**SMALL).vision
  emb = clip.CLIPVisionEmbeddings(spec, alpha=True)
  rng = np.random.RandomState(1)
  images = rng.randn(2, 32, 32, 3).astype(np.float32)
  alpha = rng.randn(2, 32, 32, 1).astype(np.float32)
  params = emb.init(jax.random.key(0), images, alpha)["params"]
  params = jax.tree.map(lambda x: x + rng.randn(*x.shape).astype(np.float32) * 0.1, params)
  got = np.asarray(emb.apply({"params": params}, images, alpha))
  w_rgb = np.asarray(params["patch_embedding"]["kernel"]).reshape(-1, 32)   # (p*p*3, D) HWIO
  w_a = np.asarray(params["conv1_alpha"]["kernel"]).reshape(-1, 32)        # (p*p*1, D)
  tokens = _patches(images, 8) @ w_rgb + _patches(alpha, 8) @ w_a
  cls = np.broadcast_to(np.asarray(params["class_embedding"]), (2, 1, 32))
  want = np.concatenate([cls, tokens], 1) + np.asarray(params["position_embedding"]["embedding"])
  assert got.shape == (2, 17, 32)
  np.testing.assert_allclose(got, want, atol=1e-5)


def _torch_alpha_reference(torch_clip, w_alpha, images, alpha):
  """AlphaCLIP's visual forward in torch from the HF modules + an alpha conv (all tokens)."""
  vm = torch_clip.vision_model
  with torch.no_grad():
    px = torch.tensor(images.transpose(0, 3, 1, 2))
    al = torch.tensor(alpha.transpose(0, 3, 1, 2))
    e = vm.embeddings.patch_embedding(px) + torch.nn.functional.conv2d(al, w_alpha, stride=8)
    e = e.flatten(2).transpose(1, 2)
    cls = vm.embeddings.class_embedding.expand(e.shape[0], 1, -1)
    h = torch.cat([cls, e], 1) + vm.embeddings.position_embedding.weight[None]
    h = vm.encoder(inputs_embeds=vm.pre_layrnorm(h)).last_hidden_state
    return torch_clip.visual_projection(vm.post_layernorm(h)).numpy()


def _alpha_checkpoint(torch_clip, w_alpha):
  """The tiny CLIP's visual weights as an AlphaCLIP release names them."""
  oa = hf_to_openai(torch_clip.state_dict(), 2, 2)
  visual = {}
  for k, v in oa.items():
    if k.startswith("visual."):
      k = k[len("visual."):].replace("attn.in_proj_weight", "attn.in_proj.weight")
      visual["module." + k.replace("attn.in_proj_bias", "attn.in_proj.bias")] = v
  visual["module.conv1_alpha.weight"] = w_alpha
  return oa, visual


def test_alpha_clip_checkpoint_parity(tmp_path, torch_clip, clip_inputs):
  torch.manual_seed(1)
  w_alpha = torch.randn(WIDTH, 1, 8, 8) * 0.1
  oa, visual = _alpha_checkpoint(torch_clip, w_alpha)
  torch.save(visual, tmp_path / "alpha_visual.pth")
  torch.save(oa, tmp_path / "clip.pt")
  images, ids, mask = clip_inputs
  alpha = np.random.RandomState(2).randn(3, 32, 32, 1).astype(np.float32)
  want_tokens = _torch_alpha_reference(torch_clip, w_alpha, images, alpha)

  model, params = alpha_clip.load_alpha_clip(tmp_path / "alpha_visual.pth", tmp_path / "clip.pt")
  got = np.asarray(alpha_clip.encode_image(model, params, images, alpha))
  np.testing.assert_allclose(got, want_tokens[:, 0], atol=1e-5)
  tokens = np.asarray(alpha_clip.encode_image(model, params, images, alpha, return_tokens=True))
  assert tokens.shape == (3, 17, 24)
  np.testing.assert_allclose(tokens, want_tokens, atol=1e-5)
  _, want_txt = torch_features(torch_clip, images, ids, mask)
  np.testing.assert_allclose(np.asarray(alpha_clip.encode_text(model, params, ids, mask)),
                             want_txt, atol=1e-5)

  # Vision-only load (no CLIP checkpoint): same image features, no text tower.
  vmodel, vparams = alpha_clip.load_alpha_clip(tmp_path / "alpha_visual.pth")
  assert vmodel.spec.text is None and "text_model" not in vparams
  np.testing.assert_allclose(np.asarray(alpha_clip.encode_image(vmodel, vparams, images, alpha)),
                             got, atol=1e-6)
  with pytest.raises(ValueError, match="no text tower"):
    alpha_clip.encode_text(vmodel, vparams, ids)


def test_alpha_clip_loading_errors(tmp_path, torch_clip):
  w_alpha = torch.zeros(WIDTH, 1, 8, 8)
  oa, visual = _alpha_checkpoint(torch_clip, w_alpha)
  no_alpha = {k: v for k, v in visual.items() if "conv1_alpha" not in k}
  torch.save(no_alpha, tmp_path / "plain.pth")
  with pytest.raises(convert.CheckpointMismatchError, match="no conv1_alpha"):
    alpha_clip.load_alpha_clip(tmp_path / "plain.pth")
  bad = dict(visual)
  bad["module.conv1_alpha.weight"] = torch.zeros(WIDTH, 2, 8, 8)
  bad["module.transformer.resblocks.0.attn.lora_A"] = torch.zeros(2, 2)
  del bad["module.ln_post.bias"]
  torch.save(bad, tmp_path / "bad.pth")
  with pytest.raises(convert.CheckpointMismatchError) as err:
    alpha_clip.load_alpha_clip(tmp_path / "bad.pth")
  msg = str(err.value)
  assert "vision_model/post_layernorm/bias" in msg
  assert "visual.transformer.resblocks.0.attn.lora_A" in msg
  assert "conv1_alpha/kernel: checkpoint (8, 8, 2, 128) vs model (8, 8, 1, 128)" in msg
  torch.save(visual, tmp_path / "ok.pth")
  with pytest.raises(convert.CheckpointMismatchError, match="does not fit preset ViT-L/14"):
    alpha_clip.load_alpha_clip(tmp_path / "ok.pth", preset="ViT-L/14")
  with pytest.raises(FileNotFoundError):
    alpha_clip.load_alpha_clip(tmp_path / "missing.pth")
  with pytest.raises(ValueError, match="unknown AlphaCLIP preset"):
    alpha_clip.alpha_clip_spec("ViT-B/32")
  model, params = alpha_clip.init_alpha_clip(alpha_clip.tiny_alpha_clip_spec(**SMALL))
  with pytest.raises(ValueError, match=r"alpha must be NHWC"):
    alpha_clip.encode_image(model, params, np.zeros((1, 32, 32, 3)), np.zeros((1, 32, 32, 3)))


def test_normalize_alpha():
  m = np.random.RandomState(0).rand(2, 4, 4)
  np.testing.assert_allclose(np.asarray(alpha_clip.normalize_alpha(m)),
                             ((m - 0.5) / 0.26)[..., None], atol=1e-6)


# CLIP vision towers (ViT + projection) as counted by test_clip's preset test, whose totals
# equal transformers' published CLIPModel sizes.
CLIP_VISION_PARAMS = {"ViT-B/16": 86_192_640, "ViT-L/14": 303_966_208}


@pytest.mark.parametrize("name", sorted(CLIP_VISION_PARAMS))
def test_preset_parameter_counts(name):
  """AlphaCLIP vision towers = CLIP's + p*p*width (conv1_alpha): ~86M (B/16), ~304M (L/14)."""
  spec = alpha_clip.alpha_clip_spec(name)
  n = clip.count_params(alpha_clip.abstract_params(alpha_clip.AlphaCLIP(spec)))
  v = spec.vision
  assert n == CLIP_VISION_PARAMS[name] + v.patch_size ** 2 * v.hidden_size
  assert abs(n / {"ViT-B/16": 86e6, "ViT-L/14": 304e6}[name] - 1) < 0.005
  assert alpha_clip.alpha_clip_spec("ViT-L/14@336").vision.image_size == 336
