"""Helpers shared by the backbones tests (a uniquely named module, not a conftest)."""
import numpy as np

WIDTH = 128  # OpenAI-format checkpoints imply heads = width // 64, so 128 gives 2 heads.


def hf_to_openai(sd, n_vision_layers, n_text_layers):
  """HF PyTorch CLIP state dict -> OpenAI CLIP state dict (written independently of convert.py)."""
  import torch  # pylint: disable=g-import-not-at-top
  out = {
      "visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
      "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
      "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
      "visual.ln_pre.weight": sd["vision_model.pre_layrnorm.weight"],
      "visual.ln_pre.bias": sd["vision_model.pre_layrnorm.bias"],
      "visual.ln_post.weight": sd["vision_model.post_layernorm.weight"],
      "visual.ln_post.bias": sd["vision_model.post_layernorm.bias"],
      "visual.proj": sd["visual_projection.weight"].T.contiguous(),
      "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
      "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
      "ln_final.weight": sd["text_model.final_layer_norm.weight"],
      "ln_final.bias": sd["text_model.final_layer_norm.bias"],
      "text_projection": sd["text_projection.weight"].T.contiguous(),
      "logit_scale": sd["logit_scale"],
  }
  for hf, oa, n in (("vision_model", "visual.transformer", n_vision_layers),
                    ("text_model", "transformer", n_text_layers)):
    for i in range(n):
      p, q = f"{hf}.encoder.layers.{i}.", f"{oa}.resblocks.{i}."
      out[q + "attn.in_proj_weight"] = torch.cat(
          [sd[p + f"self_attn.{x}_proj.weight"] for x in "qkv"], 0)
      out[q + "attn.in_proj_bias"] = torch.cat([sd[p + f"self_attn.{x}_proj.bias"] for x in "qkv"])
      for a, b in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                   ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
        out[q + a + ".weight"] = sd[p + b + ".weight"]
        out[q + a + ".bias"] = sd[p + b + ".bias"]
  return out


def torch_features(model, images, ids, mask):
  """Projected image / text embeddings of a transformers CLIPModel (4.x or 5.x outputs)."""
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    img = model.get_image_features(pixel_values=torch.tensor(images.transpose(0, 3, 1, 2)))
    txt = model.get_text_features(input_ids=torch.tensor(ids, dtype=torch.long),
                                  attention_mask=torch.tensor(mask, dtype=torch.long))
  img = getattr(img, "pooler_output", img)
  txt = getattr(txt, "pooler_output", txt)
  return img.numpy(), txt.numpy()
