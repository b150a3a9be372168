"""LCDH: online cross-modal hashing with a CLIP teacher distilled into a lightweight student.

Run commands (a rerun with the same --workdir resumes the stream after the last finished round):

  # demo (default): fully offline; synthetic shapes/tags data generated into the workdir; a tiny
  # CLIP (conv image tower on 2x2-folded pixels, 2-layer text transformer) first pretrained
  # contrastively (600 steps of 128 pairs) on a disjoint synthetic corpus and cached in
  # <workdir>/clip; small CNN student, 16/32 bits, 4 rounds. Measured on the shared 2-core VM
  # under load (docs/lcdh.md, "Measured: the demo"): the pretraining 57 CPU-seconds (user+sys,
  # compile included; 31.8 s wall on the idle VM, 60-83 s under load); the whole run 184-192 CPU-s,
  # 124 s wall idle, 236 s under load; a rerun
  # with the CLIP cached 125-127 CPU-s, 100-137 s wall.
  python -m train.lcdh
  python -m train.lcdh --config=train/configs/lcdh.py:demo --workdir=runs/lcdh_demo
  # four seeds sharing one pretrained CLIP (the docs/lcdh.md table):
  python -m train.lcdh --workdir=runs/lcdh_s0 --config.seed=0 --config.clip.pretrain.cache_dir=runs/clip
  python -m train.lcdh --config=train/configs/lcdh.py:tiny   # smoke run (tests, notebook)

  # real benchmarks (GPU/TPU). Data under data_root in the DCMH or DCHMT .mat layout (see
  # docs/lcdh.md and lcdh_jax/data.py); CLIP = Hugging Face hub id or local dir; VGG16 = a
  # torchvision vgg16 state dict (e.g. vgg16-397923af.pth).
  python -m train.lcdh --config=train/configs/lcdh.py:mirflickr \
      --config.data_root=data/mirflickr --config.student.vgg_weights=weights/vgg16-397923af.pth
  python -m train.lcdh --config=train/configs/lcdh.py:nuswide --config.data_root=data/nuswide
  python -m train.lcdh --config=train/configs/lcdh.py:iapr --config.data_root=data/iapr
  python -m train.lcdh --config=train/configs/lcdh.py:coco --config.data_root=data/coco

Targets: NONE. LCDH's own results table (and its method section) was not reachable, so no preset
has a number it must reach. The published numbers below are context, each with what it is; none
is a target, because none was measured under this preset's protocol (``REFERENCES`` holds them as
data, with the same labels):

* DCHMT (Tu et al., ACM MM 2022), MIRFlickr-25K, mAP I->T .826/.827/.844 and T->I .812/.814/.828
  at 16/32/64 bits. Table number not verified here (paper not re-read). Protocol: OFFLINE DCMH
  split (2000 queries, 10000 training, 18015 database), trained once on all training data; one
  final figure, no rounds. Not comparable: no stream, and a different training set size.
* MITH (ACM MM 2023), MIRFlickr-25K, I->T .846/.865/.872 and T->I .823/.839/.847 at 16/32/64
  bits. Table not verified here. Protocol: OFFLINE, as DCHMT. Not comparable, for the same reason.
* OH-ELS (online hashing on hand-made features), MIRFlickr-25K, .811/.836/.843 and
  .853/.861/.869 (I->T and T->I, as recorded in the project's design notes; table not verified) at
  16/32/64 bits. Protocol: ONLINE but CLASS-INCREMENTAL chunks, and the figure is the AVERAGE
  OVER ROUNDS, not the last round. Not comparable with this preset's last-round mAP on a random
  (non-class-incremental) stream.

What the run reports (results.json): per round and last round, mAP@all, precision@N and PR curves
for both directions; compare like with like (last round vs last round, average vs average:
results.json also holds each run's average over rounds).
"""
from __future__ import annotations

import ml_collections

from train import config_lib

# Published numbers for context (docstring). None is a target: see "comparable".
REFERENCES = (
    {"method": "DCHMT", "paper": "Tu et al., Differentiable Cross-modal Hashing via Multimodal "
     "Transformers, ACM MM 2022", "table": "not verified here", "dataset": "mirflickr",
     "protocol": "offline DCMH split 2000/10000/18015, trained once", "figure": "final (no rounds)",
     "bits": (16, 32, 64), "map_i2t": (.826, .827, .844), "map_t2i": (.812, .814, .828),
     "comparable": False},
    {"method": "MITH", "paper": "MITH, ACM MM 2023", "table": "not verified here",
     "dataset": "mirflickr", "protocol": "offline DCMH split 2000/10000/18015, trained once",
     "figure": "final (no rounds)", "bits": (16, 32, 64), "map_i2t": (.846, .865, .872),
     "map_t2i": (.823, .839, .847), "comparable": False},
    {"method": "OH-ELS", "paper": "OH-ELS (online hashing, hand-made features)",
     "table": "not verified here", "dataset": "mirflickr",
     "protocol": "online, class-incremental chunks", "figure": "average over rounds",
     "bits": (16, 32, 64), "map_i2t": (.811, .836, .843), "map_t2i": (.853, .861, .869),
     "comparable": False},
)


def _base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dataset = "synthetic"         # synthetic | mirflickr | nuswide | iapr | coco
  c.data_root = ""                # "" -> <workdir>/data for synthetic, data/<dataset> otherwise
  c.data_dir = ""                 # prepared tfds datasets (docs/data.md); "" -> read data_root directly
  c.data_cache_gb = 4.0           # with data_dir: GB of decoded images kept for their next visit
                                  # (image-file layouts; anchors, later rounds, encoding); 0 = none
  c.tag_vocab = ""                # words of the BoW dims, one a line; "" -> <data_root>/tag_vocab.txt
                                  # if present. Needed (as the teacher's text) when there are no captions
  c.bits = (16, 32, 64, 128)      # one teacher + one student stream per code length
  c.cache_dir = ""                # CLIP feature cache; "" -> <workdir>/features

  c.synthetic = ml_collections.ConfigDict()
  c.synthetic.num_samples = 1400
  c.synthetic.image_size = 32
  c.synthetic.max_objects = 2

  c.split = ml_collections.ConfigDict()
  c.split.num_query = 2000        # held-out queries (DCMH protocol)
  c.split.num_train = 10000       # offline teacher training set (first items of the database)

  c.stream = ml_collections.ConfigDict()
  c.stream.chunk_size = 2000      # DOCH: the database arrives in chunks of 2000
  c.stream.merge_remainder = True  # a last partial chunk joins the one before (LEMON: 18015 -> 8x2000 + 2015)
  c.stream.num_rounds = 0         # 0 = every chunk of the database
  c.stream.num_anchors = 500      # anchors from old chunks mixed into each round's pool
  c.stream.reencode = False       # True: re-encode the whole database after every round

  c.clip = ml_collections.ConfigDict()
  c.clip.name = "openai/clip-vit-base-patch32"  # hub id, local HF dir, OpenAI .pt, or "tiny"
  c.clip.tokenizer = ""            # "" -> clip.name; required when clip.name is an OpenAI .pt file
  c.clip.tiny_width = 64          # only for name="tiny" (random weights, offline demo)
  c.clip.tiny_layers = 2
  c.clip.tiny_image_size = 32
  c.clip.tiny_projection_dim = 64
  c.clip.batch_size = 64
  c.clip.preprocess = "clip"      # clip: shorter side bicubic + centre crop (OpenAI); squash: old bilinear squash

  c.teacher = ml_collections.ConfigDict()
  c.teacher.width = 512
  c.teacher.num_heads = 8
  c.teacher.dropout = 0.1
  c.teacher.steps = 3000
  c.teacher.batch_size = 128
  c.teacher.lr = 1e-3
  c.teacher.weight_decay = 1e-4
  c.teacher.w_label = 1.0
  c.teacher.w_contrast = 0.2
  c.teacher.w_quant = 0.1
  c.teacher.w_balance = 0.1
  c.teacher.temperature = 0.2

  c.student = ml_collections.ConfigDict()
  c.student.backbone = "vgg16"     # vgg16 | small_cnn
  c.student.vgg_weights = ""       # torchvision vgg16 state dict; required for vgg16 unless
  c.student.allow_random_vgg = False  # ... this is True (train VGG16 from scratch)
  c.student.cnn_widths = (32, 64, 128)
  c.student.image_size = 224
  c.student.image_hidden = 512
  c.student.text_hidden = 512
  c.student.steps_per_round = 500
  c.student.batch_size = 64
  c.student.data_threads = 8       # grain read-ahead threads (image decoding)
  c.student.lr = 1e-4
  c.student.backbone_lr_mult = 0.1  # VGG/CNN backbone learning-rate multiplier
  c.student.weight_decay = 1e-4
  c.student.w_distill = 1.0        # lambda1 (teacher distillation)
  c.student.w_label = 1.0          # lambda2 (label likelihood)
  c.student.w_contrast = 0.2
  c.student.w_quant = 0.1
  c.student.w_balance = 0.1
  c.student.distill_mode = "likelihood"  # likelihood | mse
  c.student.teacher_sim_mode = "threshold"  # threshold | soft
  c.student.teacher_sim_threshold = 0.0
  c.student.likelihood_scale = 0.5  # c in Theta = c * F @ B.T (DCMH 1/2)
  c.student.temperature = 0.2

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 128
  c.eval.top_k = 0                 # 0 = rank the whole database (DCMH calc_map)
  c.eval.pr_curve = True
  c.eval.precision_n_max = 1000   # precision@N for every N = 1..precision_n_max (capped at the database) ...
  c.eval.precision_ns = ()        # ... unless a grid is given here, e.g. (200, 500, 1000, 2000, 5000, 10000)
  c.eval.round_png = True         # also a PNG per round (K<bits>/rounds/round_<r>.png) beside its JSON

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 1000  # teacher; the student stream saves after every round
  c.checkpoint.max_to_keep = 2
  c.log_every_steps = 50
  return c


def demo() -> ml_collections.ConfigDict:
  c = _base()
  c.dataset = "synthetic"
  c.bits = (16, 32)
  c.synthetic.num_samples = 1400
  c.split.num_query = 200
  c.split.num_train = 600
  c.stream.chunk_size = 300       # 1200 database items -> 4 rounds
  c.stream.num_anchors = 96
  c.clip.name = "tiny"
  c.clip.batch_size = 100
  c.clip.tiny_patch_size = 8      # 16 patches of 8x8 at 32 px (ViT tower only)
  c.clip.tiny_image_tower = "cnn"  # "cnn": small conv net (lcdh_jax.pretrain.ConvCLIP) | "vit"
  c.clip.tiny_cnn_widths = (32, 64)  # after space_to_depth=2: 16x16x12 -> 8x8x32 -> 4x4x64
  c.clip.tiny_layers = 2          # text transformer layers; 1 is ~20% cheaper but a weaker teacher
  # The tiny CLIP is pretrained (symmetric InfoNCE, lcdh_jax.pretrain) on a synthetic
  # image-caption corpus disjoint from the demo data, then cached; steps=0: random weights.
  c.clip.pretrain = ml_collections.ConfigDict()
  c.clip.pretrain.steps = 600
  c.clip.pretrain.batch_size = 128
  c.clip.pretrain.lr = 3e-3
  c.clip.pretrain.weight_decay = 0.05
  c.clip.pretrain.warmup_steps = 40
  c.clip.pretrain.num_samples = 4000
  c.clip.pretrain.image_size = 32
  c.clip.pretrain.max_objects = 2
  c.clip.pretrain.space_to_depth = 2  # fold 2x2 pixel blocks into channels first (docs/lcdh.md)
  c.clip.pretrain.seed = 0         # corpus stream (seed, 1) and init; not the run's seed
  c.clip.pretrain.cache_dir = ""   # "" -> <workdir>/clip
  c.teacher.width = 64
  c.teacher.num_heads = 4
  c.teacher.steps = 1000
  c.teacher.batch_size = 64
  c.teacher.lr = 3e-3
  c.student.backbone = "small_cnn"
  c.student.cnn_widths = (16, 32, 64)
  c.student.image_size = 32
  c.student.image_hidden = 128
  c.student.text_hidden = 128
  c.student.steps_per_round = 100
  c.student.batch_size = 64
  c.student.data_threads = 2
  c.student.lr = 3e-3
  c.student.backbone_lr_mult = 1.0
  c.eval.batch_size = 100
  c.checkpoint.every_steps = 1000
  c.log_every_steps = 50
  return c


def tiny() -> ml_collections.ConfigDict:
  """Smallest useful run (tests, notebook smoke runs): 16 bits, 3 rounds of 100 items."""
  c = demo()
  c.bits = (16,)
  c.synthetic.num_samples = 360
  c.split.num_query = 60
  c.split.num_train = 150
  c.stream.chunk_size = 100
  c.stream.num_anchors = 32
  c.clip.tiny_width = 32
  c.clip.tiny_projection_dim = 32
  c.clip.batch_size = 120
  c.clip.tiny_cnn_widths = (8, 16, 32)
  c.clip.pretrain.steps = 60       # a smoke run: the pipeline, not a useful CLIP
  c.clip.pretrain.batch_size = 64
  c.clip.pretrain.num_samples = 640
  c.clip.pretrain.warmup_steps = 40  # shorter warmups collapsed the embeddings
  c.teacher.width = 32
  c.teacher.steps = 100
  c.teacher.batch_size = 32
  c.student.cnn_widths = (8, 16, 32)
  c.student.image_hidden = 64
  c.student.text_hidden = 64
  c.student.steps_per_round = 80
  c.student.batch_size = 32
  c.eval.batch_size = 60
  return c


def mirflickr() -> ml_collections.ConfigDict:
  c = _base()
  c.dataset = "mirflickr"          # 20,015 pairs, 24 labels, 1386-d tags
  c.bits = (16, 32, 64, 128)
  c.split.num_query, c.split.num_train = 2000, 10000
  return c


def nuswide() -> ml_collections.ConfigDict:
  c = _base()
  c.dataset = "nuswide"            # top-21 concepts, 1000-d tags
  c.bits = (16, 32, 64, 128)
  c.split.num_query, c.split.num_train = 2100, 10500
  c.stream.chunk_size = 10000      # 190k database items: larger chunks keep the round count sane
  return c


def iapr() -> ml_collections.ConfigDict:
  c = _base()
  c.dataset = "iapr"               # 20,000 pairs, 255 labels, 2912-d BoW
  c.bits = (16, 32, 64, 128)
  c.split.num_query, c.split.num_train = 2000, 10000
  return c


def coco() -> ml_collections.ConfigDict:
  c = _base()
  c.dataset = "coco"               # 122,218 pairs, 80 labels
  c.bits = (16, 32, 64, 128)
  c.split.num_query, c.split.num_train = 5000, 10000
  c.stream.chunk_size = 10000
  return c


PRESETS = {"demo": demo, "tiny": tiny, "mirflickr": mirflickr, "nuswide": nuswide, "iapr": iapr, "coco": coco}


def get_config(preset: str = "demo") -> ml_collections.ConfigDict:
  return config_lib.select_preset(PRESETS, preset)
