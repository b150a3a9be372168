"""CLIP in Flax vs transformers' PyTorch CLIPModel; checkpoint loading and its errors."""
import json
import os
import sys
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from backbones_jax import clip, convert

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backbones_testlib import WIDTH, hf_to_openai, torch_features  # noqa: E402  pylint: disable=g-import-not-at-top

TOL = 1e-5


def _save_hf(model, directory, fmt):
  os.makedirs(directory, exist_ok=True)
  if fmt == "safetensors":
    model.save_pretrained(directory)
    assert os.path.exists(os.path.join(directory, "model.safetensors"))
  else:  # transformers 5 no longer writes pytorch_model.bin itself
    model.config.to_json_file(os.path.join(directory, "config.json"))
    torch.save(model.state_dict(), os.path.join(directory, "pytorch_model.bin"))
  return directory


def _assert_parity(model, params, torch_model, inputs):
  images, ids, mask = inputs
  want_img, want_txt = torch_features(torch_model, images, ids, mask)
  got_img = np.asarray(clip.encode_image(model, params, images))
  got_txt = np.asarray(clip.encode_text(model, params, ids, mask))
  assert got_img.shape == want_img.shape and got_txt.shape == want_txt.shape
  np.testing.assert_allclose(got_img, want_img, atol=TOL, rtol=0)
  np.testing.assert_allclose(got_txt, want_txt, atol=TOL, rtol=0)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_hf_checkpoint_parity(tmp_path, torch_clip, clip_inputs, tiny_spec, fmt):
  directory = _save_hf(torch_clip, tmp_path / fmt, fmt)
  model, params = clip.load_clip(str(directory))
  assert model.spec == tiny_spec
  _assert_parity(model, params, torch_clip, clip_inputs)
  # Full forward: logits are exp(logit_scale) * cosine similarities.
  out = model.apply({"params": params}, clip_inputs[0], clip_inputs[1], clip_inputs[2])
  i = out["image_embeds"] / np.linalg.norm(out["image_embeds"], axis=-1, keepdims=True)
  t = out["text_embeds"] / np.linalg.norm(out["text_embeds"], axis=-1, keepdims=True)
  scale = float(torch_clip.logit_scale.detach().exp())
  np.testing.assert_allclose(out["logits_per_image"], scale * i @ t.T, rtol=1e-5)


def test_param_tree_names(tiny_spec):
  model = clip.CLIP(tiny_spec)
  flat = convert.flatten(clip.abstract_params(model))
  for name in ["text_model/embeddings/token_embedding/embedding",
               "text_model/embeddings/position_embedding/embedding",
               "text_model/encoder/layers/0/self_attn/q_proj/kernel",
               "text_model/encoder/layers/1/mlp/fc2/bias",
               "text_model/final_layer_norm/scale",
               "vision_model/embeddings/patch_embedding/kernel",
               "vision_model/embeddings/class_embedding",
               "vision_model/embeddings/position_embedding/embedding",
               "vision_model/pre_layrnorm/scale", "vision_model/post_layernorm/bias",
               "visual_projection/kernel", "text_projection/kernel", "logit_scale"]:
    assert name in flat, name
  assert flat["vision_model/embeddings/patch_embedding/kernel"].shape == (8, 8, 3, 128)
  assert flat["text_model/encoder/layers/0/self_attn/q_proj/kernel"].shape == (128, 128)
  assert flat["logit_scale"].shape == ()
  assert model == clip.CLIP(tiny_spec) and hash(model) == hash(clip.CLIP(tiny_spec))


@pytest.mark.parametrize("form", ["state_dict", "torchscript"])
def test_openai_checkpoint_parity(tmp_path, torch_clip, clip_inputs, tiny_spec, form):
  sd = hf_to_openai(torch_clip.state_dict(), 2, 2)
  path = tmp_path / "ViT-tiny.pt"
  if form == "state_dict":
    torch.save(sd, path)
  else:  # OpenAI's released .pt files are TorchScript archives
    root = torch.nn.Module()
    for name, t in sd.items():
      *mods, leaf = name.split(".")
      mod = root
      for m in mods:
        if not hasattr(mod, m):
          mod.add_module(m, torch.nn.Module())
        mod = getattr(mod, m)
      mod.register_parameter(leaf, torch.nn.Parameter(t.clone()))
    torch.jit.save(torch.jit.script(root), path)
  model, params = clip.load_clip(str(path))
  # Inferred from shapes: everything but the EOS id equals the HF config.
  assert model.spec.vision == tiny_spec.vision
  assert model.spec.projection_dim == tiny_spec.projection_dim
  assert model.spec.text.max_position_embeddings == 16 and model.spec.text.vocab_size == 64
  _assert_parity(model, params, torch_clip, clip_inputs)


def test_flax_msgpack_and_bf16(tmp_path, torch_clip, clip_inputs, tiny_spec):
  ref_model, ref_params = clip.load_clip(str(_save_hf(torch_clip, tmp_path / "st", "safetensors")))
  d = tmp_path / "flax"
  d.mkdir()
  torch_clip.config.to_json_file(d / "config.json")
  (d / "flax_model.msgpack").write_bytes(flax.serialization.msgpack_serialize(
      jax.tree.map(np.asarray, ref_params)))
  model, params = clip.load_clip(str(d))
  _assert_parity(model, params, torch_clip, clip_inputs)
  # bf16 compute with fp32 params stays close to fp32.
  bf_model, bf_params = clip.load_clip(str(d), dtype=jnp.bfloat16)
  assert jax.tree.leaves(bf_params)[0].dtype == jnp.float32
  want = np.asarray(clip.encode_image(ref_model, ref_params, clip_inputs[0]))
  got = np.asarray(clip.encode_image(bf_model, bf_params, clip_inputs[0]))
  cos = (got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
  assert got.dtype == np.float32 and np.all(cos > 0.99), cos


def test_eos_pooling_semantics(torch_clip, tiny_spec):
  """eos_token_id == 2 (legacy HF configs) pools at argmax(ids); otherwise at the first EOS."""
  sd = {k: v.numpy() for k, v in torch_clip.state_dict().items()}
  # Row 1: argmax is position 1 (62) but the first id 5 is at position 3.
  ids = np.array([[0, 5, 7, 9, 5, 5], [0, 62, 9, 5, 7, 5]], np.int32)
  got = {}
  for eos_id in (5, 2):
    cfg = tiny_spec.to_hf_config()
    cfg.text_config.eos_token_id = eos_id
    tm = transformers.CLIPModel(cfg).eval()
    tm.load_state_dict(torch_clip.state_dict())
    spec = clip.CLIPSpec.from_hf_config(cfg)
    assert spec.text.eos_token_id == eos_id
    model = clip.CLIP(spec)
    flat = convert.convert_state_dict(sd, convert.HF_CLIP_TABLE,
                                      convert.flatten(clip.abstract_params(model)),
                                      ignore=convert.HF_IGNORED)
    with torch.no_grad():
      want = tm.get_text_features(input_ids=torch.tensor(ids, dtype=torch.long))
    want = getattr(want, "pooler_output", want).numpy()
    got[eos_id] = np.asarray(clip.encode_text(model, convert.unflatten(flat), ids))
    np.testing.assert_allclose(got[eos_id], want, atol=TOL)
  assert not np.allclose(got[5][1], got[2][1], atol=1e-3)  # the two rules really differ here


def test_loading_errors(tmp_path, torch_clip, tiny_spec):
  sd = {k: v.numpy() for k, v in torch_clip.state_dict().items()}
  expected = convert.flatten(clip.abstract_params(clip.CLIP(tiny_spec)))
  bad = dict(sd)
  del bad["vision_model.post_layernorm.bias"]
  bad["text_model.extra_head.weight"] = np.zeros((2, 2), np.float32)
  bad["text_projection.weight"] = np.zeros((5, 128), np.float32)
  with pytest.raises(convert.CheckpointMismatchError) as err:
    convert.convert_state_dict(bad, convert.HF_CLIP_TABLE, expected, ignore=convert.HF_IGNORED)
  msg = str(err.value)
  assert "missing keys (1): vision_model/post_layernorm/bias" in msg
  assert "text_model.extra_head.weight" in msg
  assert "text_projection/kernel: checkpoint (128, 5) vs model (128, 24)" in msg
  # Same through load_clip on a directory.
  d = tmp_path / "bad"
  d.mkdir()
  torch_clip.config.to_json_file(d / "config.json")
  torch.save({k: torch.tensor(v) for k, v in bad.items()}, d / "pytorch_model.bin")
  with pytest.raises(convert.CheckpointMismatchError, match="post_layernorm"):
    clip.load_clip(str(d))
  # Directory without weights / without config; missing files; hub ids are never guessed from
  # paths.
  e = tmp_path / "empty"
  e.mkdir()
  (e / "config.json").write_text(json.dumps(torch_clip.config.to_dict()))
  with pytest.raises(FileNotFoundError, match="has no weights"):
    clip.load_clip(str(e))
  with pytest.raises(FileNotFoundError, match="no config.json"):
    clip.load_clip(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="no such CLIP checkpoint"):
    clip.load_clip(str(tmp_path / "nope.pt"))
  with pytest.raises(FileNotFoundError, match="hub"):  # offline (HF_HUB_OFFLINE=1 in tests)
    clip.load_clip("not-a-user/not-a-clip-model")
  # A non-CLIP .pt
  torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
  with pytest.raises(convert.CheckpointMismatchError, match="not an OpenAI CLIP"):
    clip.load_clip(str(tmp_path / "other.pt"))


def test_corrupt_weight_files_name_the_file_and_format(tmp_path, torch_clip):
  """Random bytes, a truncated safetensors and a truncated torch zip: an error naming the file and
  the format it should have had, never OverflowError / a reshape error."""
  import safetensors.numpy as stn
  rng = np.random.default_rng(0)
  (tmp_path / "random.safetensors").write_bytes(rng.bytes(2000))
  (tmp_path / "random.pt").write_bytes(rng.bytes(2000))
  (tmp_path / "empty.pt").write_bytes(b"")
  stn.save_file({"w": np.ones((64, 64), np.float32)}, str(tmp_path / "good.safetensors"))
  full = (tmp_path / "good.safetensors").read_bytes()
  (tmp_path / "truncated.safetensors").write_bytes(full[:len(full) // 2])
  torch.save({k: v for k, v in torch_clip.state_dict().items()}, tmp_path / "full.pt")
  full = (tmp_path / "full.pt").read_bytes()
  (tmp_path / "truncated.pt").write_bytes(full[:len(full) // 2])
  cases = {"random.safetensors": "safetensors file", "truncated.safetensors": "safetensors file",
           "random.pt": "PyTorch checkpoint", "empty.pt": "PyTorch checkpoint",
           "truncated.pt": "PyTorch checkpoint"}
  for name, fmt in cases.items():
    with pytest.raises(convert.CheckpointFormatError) as err:
      clip.load_clip(str(tmp_path / name))
    msg = str(err.value)
    assert msg.startswith(str(tmp_path / name)) and fmt in msg and "truncated, corrupt" in msg, msg
  # The same inside a Hugging Face directory, and a broken config.json / msgpack.
  d = tmp_path / "hf"
  d.mkdir()
  torch_clip.config.to_json_file(d / "config.json")
  (d / "model.safetensors").write_bytes((tmp_path / "truncated.safetensors").read_bytes())
  with pytest.raises(convert.CheckpointFormatError, match=r"hf/model.safetensors cannot be read as a safetensors"):
    clip.load_clip(str(d))
  (d / "model.safetensors").unlink()
  (d / "flax_model.msgpack").write_bytes(rng.bytes(300))
  with pytest.raises(convert.CheckpointFormatError, match=r"flax_model.msgpack cannot be read as Flax msgpack"):
    clip.load_clip(str(d))
  (d / "config.json").write_text("{not json")
  with pytest.raises(convert.CheckpointFormatError, match=r"config.json is not valid JSON"):
    clip.load_clip(str(d))


def test_lcdh_teacher_from_openai_pt_with_a_separate_tokenizer(tmp_path):
  """train.lcdh with clip.name=<OpenAI .pt> and clip.tokenizer=<BPE dir>: the .pt is never used as
  the tokenizer directory, and the text features are the .pt model on the given tokenizer's ids."""
  import transformers
  from backbones_jax.tokenizer import CLIPTokenizer
  from lcdh_jax import data as data_lib
  from lcdh_jax import synthetic
  from train import config_lib, lcdh
  from train.configs import lcdh as lcdh_config
  # A tiny OpenAI-format CLIP with OpenAI's 77-token context, and a byte-level BPE vocabulary of
  # 518 tokens (bytes, bytes</w>, 4 merges, start, end: the end token has the highest id, as
  # OpenAI's argmax pooling needs).
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
  chars = [chr(b) for b in bs] + [chr(256 + n) for n in range(256 - len(bs))]
  merges = [("p", "h"), ("o", "t"), ("ph", "ot"), ("phot", "o</w>")]
  vocab = chars + [ch + "</w>" for ch in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
  spec = clip.tiny_clip_spec(width=WIDTH, layers=1, heads=2, image_size=32, patch_size=8,
                             vocab_size=len(vocab), context_length=77, projection_dim=24)
  torch.manual_seed(1)
  hf = transformers.CLIPModel(spec.to_hf_config()).eval()
  pt = tmp_path / "ViT-tiny.pt"
  torch.save(hf_to_openai(hf.state_dict(), 1, 1), pt)
  tok_dir = tmp_path / "tokenizer"
  tok_dir.mkdir()
  (tok_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
  (tok_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
  c = lcdh_config.get_config("tiny")
  c.clip.name, c.clip.batch_size = str(pt), 4
  with pytest.raises(config_lib.ConfigError, match="holds no tokenizer: pass --config.clip.tokenizer"):
    lcdh._validate(c)  # pylint: disable=protected-access
  c.clip.tokenizer = str(tok_dir)
  lcdh._validate(c)  # pylint: disable=protected-access
  syn = synthetic.make_synthetic(num_samples=5, image_size=32, seed=0, max_objects=1)
  d = data_lib.CrossModalData(name="synthetic", images=syn.images, tags=syn.tags,
                              labels=syn.labels.astype(np.float32), captions=syn.captions)
  feats = lcdh.clip_features(c, d, str(tmp_path / "wd"))
  model, params = clip.load_clip(str(pt))
  ids, mask = CLIPTokenizer(str(tok_dir))(list(d.captions))
  assert ids.shape == (5, 77) and ids.max() == len(vocab) - 1
  want = np.asarray(clip.encode_text(model, params, ids, mask))
  assert feats["text"].shape == (5, 24) and feats["image"].shape == (5, 24)
  np.testing.assert_allclose(feats["text"], want, rtol=1e-5, atol=1e-5)


SMALL = clip.tiny_clip_spec(width=16, layers=1, heads=2, image_size=32, patch_size=8,
                            vocab_size=32, context_length=16, projection_dim=8)


def test_input_errors():
  model, params = clip.init_clip(SMALL, seed=1)
  with pytest.raises(ValueError, match="NCHW"):
    clip.encode_image(model, params, np.zeros((2, 3, 32, 32), np.float32))
  with pytest.raises(ValueError, match=r"\(B, 32, 32, 3\)"):
    clip.encode_image(model, params, np.zeros((2, 16, 16, 3), np.float32))
  with pytest.raises(ValueError, match="max_position_embeddings"):
    clip.encode_text(model, params, np.zeros((1, 17), np.int32))
  with pytest.raises(ValueError, match="integer"):
    clip.encode_text(model, params, np.zeros((1, 4), np.float32))
  with pytest.raises(ValueError, match="channels-last"):
    clip.normalize(np.zeros((1, 3, 4, 4)))
  with pytest.raises(ValueError, match="not divisible"):
    clip.CLIPVisionSpec(hidden_size=30, num_attention_heads=4)
  with pytest.raises(ValueError, match="hidden_act"):
    clip.CLIPTextSpec(hidden_act="swish2")
  with pytest.raises(ValueError, match="unknown CLIP preset"):
    clip.clip_spec("ViT-H/14")


def test_normalize():
  x = np.random.RandomState(0).rand(2, 4, 4, 3).astype(np.float32)
  want = (x - np.array(clip.CLIP_MEAN)) / np.array(clip.CLIP_STD)
  np.testing.assert_allclose(np.asarray(clip.normalize(x)), want, atol=1e-6)


def test_encode_sharded_batch():
  """A batch sharded over the (fake) devices gives the same embeddings as one device."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  model, params = clip.init_clip(SMALL, seed=2)
  images = np.random.RandomState(3).randn(8, 32, 32, 3).astype(np.float32)
  mesh = Mesh(np.array(jax.devices()), ("data",))
  sharded = jax.device_put(images, NamedSharding(mesh, P("data")))
  want = np.asarray(clip.encode_image(model, params, images))
  np.testing.assert_allclose(np.asarray(clip.encode_image(model, params, sharded)), want,
                             atol=1e-5)


def test_preset_parameter_counts():
  """Real-size presets under eval_shape. Totals equal transformers' CLIPModel counts for
  openai/clip-vit-base-patch32 (151,277,313) and clip-vit-large-patch14 (427,616,513); the
  vision towers (ViT + projection) match the published ~86M (B/16) and ~304M (L/14) to 0.5%."""
  counts = {}
  for name in ("ViT-B/32", "ViT-B/16", "ViT-L/14"):
    p = clip.abstract_params(clip.CLIP(clip.clip_spec(name)))
    counts[name] = (clip.count_params(p),
                    clip.count_params(p["vision_model"]) + clip.count_params(p["visual_projection"]))
  assert counts["ViT-B/32"][0] == 151_277_313
  assert counts["ViT-L/14"][0] == 427_616_513
  assert abs(counts["ViT-B/16"][1] / 86e6 - 1) < 0.005
  assert abs(counts["ViT-L/14"][1] / 304e6 - 1) < 0.005


def test_remat_same_params_and_gradients():
  """remat=True keeps the parameter names and gives the same gradients."""
  plain, params = clip.init_clip(SMALL, seed=4)
  remat = clip.CLIP(SMALL, remat=True)
  assert jax.tree.structure(clip.abstract_params(remat)) == jax.tree.structure(params)
  images = np.random.RandomState(5).randn(2, 32, 32, 3).astype(np.float32)

  def loss(model, p):
    return jnp.sum(model.apply({"params": p}, images, method=clip.CLIP.get_image_features) ** 2)

  g_plain = jax.jit(jax.grad(lambda p: loss(plain, p)))(params)
  g_remat = jax.jit(jax.grad(lambda p: loss(remat, p)))(params)
  for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_pooled_only_matches_full_last_layer():
  """pooled_only runs the last block for the pooled token alone: same pooled output as the
  full block (vision: class token; text: EOS token, with padding and the causal mask)."""
  model, params = clip.init_clip(SMALL, seed=6)
  variables = {"params": params}
  images = np.random.RandomState(7).randn(3, 32, 32, 3).astype(np.float32)
  full, hidden = model.apply(variables, images, method=lambda m, x: m.vision_model(x))
  fast, fast_hidden = model.apply(variables, images,
                                  method=lambda m, x: m.vision_model(x, pooled_only=True))
  assert hidden.shape == (3, 1 + SMALL.vision.num_patches, SMALL.vision.hidden_size)
  assert fast_hidden.shape == (3, 1, SMALL.vision.hidden_size)
  np.testing.assert_allclose(fast, full, atol=1e-6, rtol=0)
  np.testing.assert_allclose(fast_hidden[:, 0], hidden[:, 0], atol=1e-6, rtol=0)

  eos = SMALL.text.eos_token_id
  ids = np.random.RandomState(8).randint(1, eos, size=(3, SMALL.text.max_position_embeddings))
  lengths = np.array([2, 5, SMALL.text.max_position_embeddings - 1])
  mask = (np.arange(ids.shape[1])[None] <= lengths[:, None]).astype(np.int32)
  ids[np.arange(3), lengths] = eos
  ids = np.where(mask > 0, ids, eos).astype(np.int32)
  text = lambda m, i, a, p: m.text_model(i, a, pooled_only=p)[0]
  full = model.apply(variables, ids, mask, False, method=text)
  fast = model.apply(variables, ids, mask, True, method=text)
  np.testing.assert_allclose(fast, full, atol=1e-6, rtol=0)
  with pytest.raises(ValueError, match="all_tokens"):
    model.apply(variables, images, method=lambda m, x: m.vision_model(
        x, all_tokens=True, pooled_only=True))


def test_attention_matches_numpy_softmax_attention():
  """CLIPAttention (softmax normalised after the value product) == softmax(q k^T / sqrt d) v in
  numpy, with a mask that leaves one query row fully masked (uniform weights, as softmax)."""
  rng = np.random.RandomState(9)
  batch, length, dim, heads = 2, 5, 8, 2
  x = rng.randn(batch, length, dim).astype(np.float32)
  mask = np.tril(np.ones((length, length), bool))[None, None].repeat(batch, 0)
  mask[1, 0, 2, :] = False  # a query that may attend to nothing
  attn = clip.CLIPAttention(heads)
  params = attn.init(jax.random.key(0), x)["params"]
  params = jax.tree.map(lambda p: p + 0.1 * rng.randn(*p.shape).astype(np.float32), params)
  got = np.asarray(attn.apply({"params": params}, x, mask))

  def proj(name, t):
    return t @ np.asarray(params[name]["kernel"]) + np.asarray(params[name]["bias"])

  hd = dim // heads
  split = lambda t: t.reshape(batch, length, heads, hd).transpose(0, 2, 1, 3)
  q, k, v = (split(proj(n, x)) for n in ("q_proj", "k_proj", "v_proj"))
  s = np.where(mask, q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd), -np.inf)
  s = np.where(mask.any(-1, keepdims=True), s, 0.0)  # all masked: softmax of equal logits
  w = np.exp(s - s.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  want = proj("out_proj", (w @ v).transpose(0, 2, 1, 3).reshape(batch, length, dim))
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
