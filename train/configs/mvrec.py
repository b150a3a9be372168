"""MVREC: few-shot defect multi-classification (AlphaCLIP multi-view features + Zip-Adapter(-F)).

Run commands (results.json, a printed category x K table, confusion-matrix PNGs in --workdir;
a rerun with the same --workdir skips the categories already evaluated):

  # demo (default): fully offline; a synthetic defect dataset in the MVTec-FS layout is generated
  # into the workdir, features from a tiny random AlphaCLIP (32 px), the whole protocol
  # (K = 1/3/5, seeds 0..4, zero-shot, Tip-Adapter(-F), Zip-Adapter(-F)); ~2 min on a 2-core CPU.
  python -m train.mvrec
  python -m train.mvrec --config=train/configs/mvrec.py:demo --workdir=runs/mvrec_demo

  # official MVREC feature buffers (<category>_{support,query}.pt or the official
  # 14_mvtec_<category>_data_{support,query}.pt names), every category found in the directory:
  python -m train.mvrec --config=train/configs/mvrec.py:official_features \
      --config.features_dir=path/to/buffer/mso/AlphaClip_ViT-L

  # real MVTec-FS: images under data_root (MVTec-FS image/ archive or plain MVTec AD), the
  # annotation CSVs under config_root (<category>_config1/{train,valid}.csv), an AlphaCLIP
  # ViT-L/14 visual checkpoint (clip_l14_grit20m_fultune_2xe.pth) and, for zero-shot prompts,
  # OpenAI's ViT-L-14.pt. Feature extraction wants a GPU/TPU (27 views per instance).
  python -m train.mvrec --config=train/configs/mvrec.py:mvtec_fs --config.data_root=data/MVTec_FS \
      --config.config_root=data/MVTec_FS/CONFIG \
      --config.alpha_clip.visual_ckpt=weights/clip_l14_grit20m_fultune_2xe.pth \
      --config.alpha_clip.clip_ckpt=weights/ViT-L-14.pt

  # the same, reading prepared tfds records (docs/data.md): categories missing from data_dir are
  # prepared there from data_root/config_root on the first run; later runs need only data_dir.
  # Features and their cache entries are the same as from the raw files.
  python -m train.mvrec --config=train/configs/mvrec.py:mvtec_fs --config.data_dir=tfds \
      --config.data_root=data/MVTec_FS --config.config_root=data/MVTec_FS/CONFIG \
      --config.alpha_clip.visual_ckpt=weights/clip_l14_grit20m_fultune_2xe.pth

Paper anchors (official logs, ViT-L/14, mean over the 14 MVTec-FS categories, 1/3/5-shot):
Zip-Adapter 71.71 / 79.50 / 82.87, Zip-Adapter-F 73.65 / 86.05 / 89.70. On the official transistor
buffers the official_features preset reproduces the official per-sampling accuracies of the
training-free Zip-Adapter exactly (docs/mvrec.md).
"""
from __future__ import annotations

import ml_collections

from train import config_lib


def _base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.source = "synthetic"          # synthetic | mvtec_fs | official_features
  c.data_root = ""                # images (mvtec_fs) or the synthetic dataset ("" -> <workdir>/data)
  c.config_root = ""              # MVTec-FS CSV root ("" -> <data_root>/CONFIG or <data_root>)
  c.features_dir = ""             # official_features: directory of the official .pt buffers
  c.categories = ()               # () = every category found
  c.cache_dir = ""                # feature cache ("" -> <workdir>/features)
  c.data_dir = ""                 # prepared tfds datasets (docs/data.md; prepared from data_root on first use)

  c.views = ml_collections.ConfigDict()
  c.views.method = "mso"          # the 27 official multi-scale/offset views
  c.views.crop_sizes = (256.0, 384.0, 512.0)  # absolute px on the image
  c.views.resize = (512, 224)     # crop -> 512 -> 224 (PIL bicubic, image and mask: the official chain)
  c.views.batch_size = 8          # instances per jitted AlphaCLIP call (x 27 views)

  c.alpha_clip = ml_collections.ConfigDict()
  c.alpha_clip.preset = "ViT-L/14"  # ViT-B/16 | ViT-L/14 | ViT-L/14@336 | tiny (random) | "" (any checkpoint)
  c.alpha_clip.visual_ckpt = ""   # AlphaCLIP visual .pth
  c.alpha_clip.clip_ckpt = ""     # optional OpenAI CLIP .pt (text tower, for zero-shot prompts)
  c.alpha_clip.tokenizer = "openai/clip-vit-large-patch14"  # HF tokenizer (local dir or cached id)
  c.alpha_clip.tiny_width = 32
  c.alpha_clip.tiny_layers = 2
  c.alpha_clip.tiny_image_size = 32
  c.alpha_clip.tiny_patch_size = 8
  c.alpha_clip.tiny_projection_dim = 32
  c.alpha_clip.tiny_embed_scale = 10.0  # random demo weights only: patch embedding x10 ...
  c.alpha_clip.tiny_alpha_std = 0.2     # ... and a random conv1_alpha, so random features see crop + mask
  c.prompt = "a photo of a {} defect"  # zero-shot class prompt ("_" in class names -> " ")

  c.protocol = ml_collections.ConfigDict()
  c.protocol.shots = (1, 3, 5)
  c.protocol.seeds = (0, 1, 2, 3, 4)
  c.protocol.classifiers = ("zero_shot", "tip_adapter", "tip_adapter_f", "zip_adapter", "zip_adapter_f")
  c.protocol.precision = "float32"  # float32 | bfloat16 | official (fp16 rounding as the official AMP run)
  c.protocol.num_devices = 0        # 0 = all local devices (on CPU at most one per core)

  c.zip_f = ml_collections.ConfigDict()  # Zip-Adapter-F, the official train_compact recipe
  c.zip_f.steps = 500
  c.zip_f.lr = 1e-4
  c.zip_f.end_lr = 1e-5
  c.zip_f.eps = 1e-6
  c.zip_f.weight_decay = 0.01
  c.zip_f.beta = 1.0

  c.tip_f = ml_collections.ConfigDict()  # Tip-Adapter-F (Zhang et al. 2022), full batch on all views
  c.tip_f.steps = 200
  c.tip_f.lr = 1e-3
  c.tip_f.eps = 1e-4
  c.tip_f.alpha = 1.0
  c.tip_f.beta = 5.5

  c.synthetic = ml_collections.ConfigDict()
  c.synthetic.categories = ("weave", "speckle", "disc")
  c.synthetic.image_size = 128
  c.synthetic.n_train = 6
  c.synthetic.n_valid = 5

  c.plots = True                  # confusion-matrix PNGs
  c.log_every_steps = 1           # one metrics.jsonl row per category
  c.checkpoint = ml_collections.ConfigDict()  # per-category results are the resumable state
  c.checkpoint.every_steps = 1
  c.checkpoint.max_to_keep = 1
  return c


def demo() -> ml_collections.ConfigDict:
  c = _base()
  c.source = "synthetic"
  c.alpha_clip.preset = "tiny"
  c.alpha_clip.tokenizer = "word"
  c.views.crop_sizes = (32.0, 48.0, 64.0)  # official sizes scaled from 1024 px to 128 px images
  c.views.resize = (64, 32)
  c.views.batch_size = 16
  return c


def mvtec_fs() -> ml_collections.ConfigDict:
  c = _base()
  c.source = "mvtec_fs"
  return c


def official_features() -> ml_collections.ConfigDict:
  c = _base()
  c.source = "official_features"
  c.protocol.classifiers = ("tip_adapter", "tip_adapter_f", "zip_adapter", "zip_adapter_f")
  c.protocol.precision = "official"
  return c


PRESETS = {"demo": demo, "mvtec_fs": mvtec_fs, "official_features": official_features}


def get_config(preset: str = "demo") -> ml_collections.ConfigDict:
  return config_lib.select_preset(PRESETS, preset)
