"""Reflection removal by inter-layer complementarity (Huang et al., arXiv 2505.12641v1): `python -m train.derefl`.

Presets (select with `--config=train/configs/derefl.py:<preset>`; override any field with
`--config.<key>=<value>`):

  demo   python -m train.derefl
         Offline, the default. Trains the `tiny` model for a few minutes on CPU on pairs
         synthesised on the device (DSRNet recipe) from crops of scikit-image's bundled photos
         and procedural images, then evaluates on held-out synthetic mixes of other photos and
         prints PSNR/SSIM of the model and of the identity baseline (the input itself).

  paper  python -m train.derefl --config=train/configs/derefl.py:paper \
             --config.data.root=/data/reflection --config.vgg_weights=/weights/vgg19-dcbb9e9d.pth
         Needs the DSRNet data layout (see derefl_jax/data.py, docs/derefl.md) and torchvision's
         VGG19 weights. Aims at the paper's numbers (PSNR/SSIM): Real20 25.12/.828,
         Objects 27.07/.930, Postcard 26.43/.931, Wild 27.96/.922, Nature 27.03/.853.
         Model: the exact `dsrnet_l` network + the paper's additions (complementarity attention,
         G(T_hat, R_low_hat) after the heads with inverse modulation, frequency losses); every
         addition is a switch in `config.variant` whose default is the paper's reading (the
         alternatives: docs/derefl_model.md "Paper switches"). Cost (derefl_jax.complexity.count, the
         one counter; 224x224, batch 1, frozen VGG19 in the FLOPs): 131,737,051 trainable params,
         554.0 GFLOPs (dsrnet_l: 124,602,022 / 510.8; docs/derefl_model.md "Cost").
         Training defaults and their sources. arXiv 2505.12641v1 builds on DSRNet's recipe; every
         DSRNet number below was read in the official code (github.com/mingcv/DSRNet at commit
         7953e40: train_sirs.py, train_sirs_4000.py, scripts.sh, options/net_options/train_options.py,
         models/dsrnet_model_sirs.py, data/sirs_dataset.py):
           optimiser Adam(betas 0.9/0.999, weight decay 0), lr 1e-4 constant, batch 1
             ........................................ train_options.py defaults (--lr, --wd,
             --batchSize), dsrnet_model_sirs.py (torch.optim.Adam); scripts.sh does not override them
           data mix 0.6 synthetic VOC / 0.2 real (Zhang et al. 2018) / 0.2 Nature (Li et al.
             2020), 4000 pairs an epoch ............. train_sirs_4000.py FusionDataset (the
             Nature-trained dsrnet_l_4000 model; the paper reports Nature too). train_sirs.py
             (dsrnet_l_epoch18) uses 0.7 VOC / 0.3 real: the `dsrnet_l` preset below
           resize the shorter side to an even 224-448 px (BICUBIC), horizontal flip p = 0.5,
             rotation by 90/180/270 with p = 0.5, crop 224 ..... sirs_dataset.py
             paired_data_transforms (--fineSize 224,224); here: random scale 1-2x of the crop
             (data.scale_min/max) and rotation_aug on the device
           synthetic mixes ........................ sirs_dataset.py ReflectionSynthesis
             (derefl_jax.synthesis, recipe=dsrnet)
           losses: pixel + gradient on T and R, VGG x0.01, exclusion, reconstruction x0.2 with RR
             ........................................ dsrnet_model_sirs.py get_loss; --lambda_vgg 0.01
             --lambda_rec 0.2 in scripts.sh
           low/high-frequency losses 1.0 each ...... the paper names them but gives no weights we
             could find: 1.0 is our choice
           num_steps 200k, checkpoint/eval every 5k/10k: our choice. DSRNet trains 50 epochs
             (train_sirs.py `while engine.epoch < 50`), saves and evaluates every epoch, and its
             released files are single epochs (18, 33): keep = best validation PSNR reads that;
             validation = the first test set (Real20): our choice. The paper's v1 gives no epoch count.
         Where our data lacks a part: without Nature pairs set --config.data.weights_nature=0 (the
         sampler renormalises the others); data.data_dir reads the same data from prepared tfds sets.
         `--init_from dsrnet_l_epoch18.pt` starts it from released DSRNet weights wherever the
         path and shape match (the log lists loaded and fresh tensors).

  dsrnet_l / dsrnet_l_nature
         python -m train.derefl --config=train/configs/derefl.py:dsrnet_l --init_from dsrnet_l_epoch18.pt \
             --config.data.root=/data/reflection
         Exact DSRNet-L (ICCV 2023) with its loss set (pixel + gradient on T and R, VGG 0.01,
         exclusion, reconstruction 0.2 with RR), Adam 1e-4, batch 1, data mix 0.7 VOC / 0.3 real
         for dsrnet_l (train_sirs.py) and 0.6 / 0.2 / 0.2 with Nature for dsrnet_l_nature
         (train_sirs_4000.py) (124,602,022 trainable params,
         510.8 GFLOPs at 224x224 by derefl_jax.complexity.count): fine-tunes the released
         weights (or trains from scratch without --init_from). VGG19 from --config.vgg_weights or
         $TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth. DSRNet's numbers (PSNR/SSIM): Real20
         24.23/.820, Objects 26.28/.914, Postcard 24.56/.908, Wild 25.68/.896.

Model fields set to None take the model preset's value (derefl_jax.models.PRESETS).
"""
import ml_collections

from train.config_lib import select_preset


def _model(preset: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "preset": preset,
      # None -> the preset's value; set to override (e.g. --config.model.width=16).
      "width": None, "enc_blocks": None, "middle_blocks": None, "dec_blocks": None, "attention": None,
      "max_heads": None, "hf_blocks": None, "hf_kernel": None, "use_prior": None,
      "vgg_width_divisor": None, "t_residual": None, "stem": None, "prior_normalize": None, "shared_b": None,
      "lrm_blocks": None,
      # True: every block's activations recomputed in the backward (derefl_jax.models.remat_call): same
      # params and numbers, about 3x less activation memory, ~1/3 more compute (dsrnet_l/paper at 224² on a
      # 24 GB CPU host need it). May change on resume.
      "remat": None,
      # With remat: recompute only the blocks on feature maps at most this many times smaller than the input
      # (4: full, 1/2, 1/4 resolution); the rest keep their activations. None/0 = every block. DSRNet-L at 224²:
      # 4 -> 0.11 of the recomputation's 0.43 TFLOPs saved, XLA temp 2.5 -> 3.5 GB (docs/derefl.md). May change on
      # resume.
      "remat_max_stride": None,
  })


def _loss(**overrides) -> ml_collections.ConfigDict:
  # Keys are derefl_jax.losses.DEFAULT_LOSS_CONFIG's.
  base = {"t_pixel": 1.0, "r_pixel": 1.0, "vgg": 0.01, "exclusion": 1.0, "recons": 0.2, "low_freq": 1.0,
          "high_freq": 1.0, "mean_kernel": 11, "exclusion_levels": 3, "low_freq_grad": 1.0}
  base.update(overrides)
  return ml_collections.ConfigDict(base)


def _common() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.vgg_weights = ""  # torchvision VGG19 state dict (.pth); "" -> random VGG (demo only)
  c.init_from = ""  # DSRNet .pt/.ckpt to start from (also: --init_from FILE); "" = random init
  c.zero_init_head = True  # output conv zero-initialised: T = I, R_low = 0 at step 0 (see train/derefl.py)
  c.synthesis = ml_collections.ConfigDict({
      "recipe": "dsrnet",     # "dsrnet" | "zhang"
      "pad_mode": "constant",  # DSRNet's blur border (scipy convolve2d 'same' = zeros); dsrnet only
      "screen_prob": 0.7,
      "clean_prob": 0.0,       # share of synthetic pairs left without a reflection (I = T, R = 0)
  })
  c.optim = ml_collections.ConfigDict({
      "lr": 1e-4, "b1": 0.9, "b2": 0.999, "weight_decay": 0.0, "warmup_steps": 0,
      "schedule": "constant",  # "constant" | "cosine"
      "grad_clip": 0.0,        # global-norm clip; 0 = off
  })
  c.checkpoint = ml_collections.ConfigDict({"every_steps": 1000, "max_to_keep": 3})
  c.log_every_steps = 100
  # keep=best_val scores the validation set every eval.every_steps (0 = num_steps // 4).
  c.eval = ml_collections.ConfigDict({"batch_size": 8, "grid_rows": 4, "every_steps": 0})
  # The paper's additions over DSRNet-L as switches (train.derefl.VARIANT_CHOICES); None = the preset's
  # own behaviour. `paper` sets each to the paper's reading; --ablate flips them one at a time.
  c.variant = ml_collections.ConfigDict({
      "g_position": None,     # "after_heads" (paper: G(T_hat, R_low_hat) after the heads) | "before_heads"
      "freq_target": None,    # "prediction" (paper: targets from T_hat) | "ground_truth" (GT T, stop_gradient)
      "r_pixel_mask": None,   # False (paper: R loss on every pair) | True (only synthetic pairs)
      "prior": None,          # "feature_pyramid" (DSRNet's VGG pyramid stem) | "current" (per-level injection)
      "middle_blocks": None,  # 12 (DSRNet-L) | 8 (the earlier `paper` layout)
      "rotation_aug": None,   # True (random 90-degree rotations) | False
      "keep": None,           # "best_val" (best validation PSNR) | "last" (the final step)
  }, type_safe=False)
  return c


def _demo() -> ml_collections.ConfigDict:
  c = _common()
  c.model = _model("tiny")
  # The demo's VGG is random: a perceptual loss on it means little (vgg=0). In a few hundred steps
  # the exclusion term mostly fights the T pixel loss; the demo drops it and weights T x3
  # (measured: 19.11/0.763 vs 18.80/0.751 with the paper's weights, identity 17.59/0.758).
  c.loss = _loss(vgg=0.0, exclusion=0.0, t_pixel=3.0)
  c.data = ml_collections.ConfigDict({
      "source": "demo", "root": "", "data_dir": "", "crop": 48, "eval_crop": 64, "batch_size": 8, "pool_size": 512,
      "eval_pairs": 48,
      "test_sets": ("demo",), "weights_synthetic": 0.6, "weights_real": 0.2, "weights_nature": 0.2,
      "scale_min": 1.0, "scale_max": 2.0, "num_workers": 4,
  })
  c.synthesis.pad_mode = "reflect"  # 64 px crops: zero borders would be a large share of the image
  # Every synthetic input carries a reflection (on the demo's data I is 39.7 levels brighter than T
  # on average), so a model trained only on such mixes darkens clean photos by about that much
  # (32-41 levels measured). Half of the pairs without a reflection: 7-15 levels, and a better demo
  # score (19.69 / 0.7859 vs 19.11 / 0.7632; 0.2 gave 21-31 levels, 19.80 / 0.7855).
  # docs/derefl.md "Demo on clean photos".
  c.synthesis.clean_prob = 0.5
  c.optim.lr = 3e-3
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 30
  c.optim.grad_clip = 1.0
  c.num_steps = 300
  c.log_every_steps = 50
  c.checkpoint.every_steps = 300
  c.checkpoint.max_to_keep = 1
  return c


def _paper() -> ml_collections.ConfigDict:
  c = _common()
  c.model = _model("paper")
  c.loss = _loss()
  c.data = ml_collections.ConfigDict({
      "source": "files", "root": "",  # required: the data root with train/ and test/
      "data_dir": "",  # prepared tfds datasets (docs/data.md), prepared from root on first use
      "crop": 224, "eval_crop": 0, "batch_size": 1, "pool_size": 0, "eval_pairs": 0,
      "test_sets": ("real20", "objects", "postcard", "wild", "nature"),
      # DSRNet train_sirs_4000.py's fusion: 0.6 synthetic (VOC), 0.2 real (Zhang et al.), 0.2 nature (Li et al.)
      "weights_synthetic": 0.6, "weights_real": 0.2, "weights_nature": 0.2,
      "scale_min": 1.0, "scale_max": 2.0, "num_workers": 8,
  })
  c.optim.lr = 1e-4  # Adam 1e-4, batch 1 (DSRNet)
  c.num_steps = 200_000
  c.log_every_steps = 100
  c.checkpoint.every_steps = 5000
  c.eval.batch_size = 1
  c.zero_init_head = False  # the dsrnet_l network: T = ending(f_T) (no T = I residual to start from)
  c.eval.every_steps = 10_000  # keep=best_val: score the validation set (first test set) this often
  # The paper's reading of every switch (train.derefl.VARIANT_CHOICES; alternatives and reasons in
  # docs/derefl_model.md "Paper switches").
  c.variant.update({"g_position": "after_heads", "freq_target": "prediction", "r_pixel_mask": False,
                    "prior": "feature_pyramid", "middle_blocks": 12, "rotation_aug": True, "keep": "best_val"})
  return c


def _dsrnet(model_preset: str) -> ml_collections.ConfigDict:
  c = _paper()
  c.model = _model(model_preset)
  if model_preset == "dsrnet_l":  # train_sirs.py (dsrnet_l_epoch18): FusionDataset [0.7 VOC, 0.3 real]
    c.data.update({"weights_synthetic": 0.7, "weights_real": 0.3, "weights_nature": 0.0})
  c.variant.update({k: None for k in c.variant})  # exact DSRNet: no paper switch applies
  c.eval.every_steps = 0
  c.loss = _loss(low_freq=0.0, high_freq=0.0)  # DSRNet's set: no frequency-split terms
  c.zero_init_head = False  # DSRNet's head is an ordinary conv (T = ending(f_T))
  return c


PRESETS = {"demo": _demo, "paper": _paper, "dsrnet_l": lambda: _dsrnet("dsrnet_l"),
           "dsrnet_l_nature": lambda: _dsrnet("dsrnet_l_nature")}


def get_config(preset: str = "demo") -> ml_collections.ConfigDict:
  return select_preset(PRESETS, preset)
