"""Fine-tuning configs: a pre-trained MSM-MAE encoder + a linear head on a labelled task.

Use: `python finetune.py --checkpoint DIR --task SPEC --out FILE.json
      --config configs/finetune.py:VARIANT --config.key=value`.
Variants: base (default; the recipe below), frozen (the encoder frozen, no augmentation: a
linear probe trained by the fine-tuning machinery), fsdd (the README's FSDD result with
configs/msm_mae.py:fsdd_small), tiny (tests: a few steps, small batches).

Where the values come from (read from the reference code):
- [AudioMAE] facebookresearch/AudioMAE `main_finetune_as.py` / `ft_as.sh`: AdamW with
  layer-wise lr decay 0.75 (MAE `util/lr_decay.py`), lr = blr x batch / 256 with blr 1e-3,
  weight decay 5e-4, min_lr 1e-6, drop path 0.1, head init trunc-normal std 2e-5, LayerNorm
  on pooled features (fc_norm), BCE for multi-label, weighted sampling for AudioSet
  (`dataset/audioset/gen_weight.py`), label smoothing 0.1 (optional here).
- [EVAR] nttcslab/eval-audio-repr `finetune.py` + `config/m2d.yaml`, run with the settings of
  nttcslab/m2d `util/ft-spc.sh` / `ft-as20k.sh`: SpecAugment frequency mask 30 bins, time mask
  48 frames (SPCV2; 192 for 10 s AudioSet clips), mixup alpha 0.3, random resized crop on,
  warm-up 5 epochs then cosine, batch 128, the mean of the frame features (`encode_lms`) as the
  clip feature, best validation epoch scored on test, several seeds. (EVAR's M2D runs use SGD
  lr 0.5-2.0 without layer decay: optim.name='sgd', optim.lr=0.5, optim.layer_decay=1.0.)
- [EVAR linear] the linear evaluation's early stopping: patience 20 evaluations (EVAR's
  fine-tuning default is -1, no early stopping; the best validation model is kept either way).
Every key the code reads is declared here.
"""

import ml_collections

from msm_mae_jax.core.errors import ConfigError

VARIANTS = ("base", "frozen", "fsdd", "tiny")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "base"
    if variant not in VARIANTS:
        raise ConfigError(f"unknown config variant {variant!r}; known: {list(VARIANTS)}")
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.seed = 0  # run k of a fold uses seed + k (head init, data order, augmentation)
    c.num_seeds = 3  # runs per fold; the results report mean ± std over them

    # ---- schedule ---------------------------------------------------------------------------
    c.batch_size = 128  # global; [EVAR] ft_bs 128
    c.grad_accum_steps = 1  # micro-batches per update (batch_size is the effective batch)
    c.epochs = 100.0
    c.warmup_epochs = 5.0  # [EVAR] warmup_epochs 5 ([AudioMAE] 4)
    c.eval_every_steps = 0  # validation every N steps; 0: every epoch
    c.early_stop_patience = 20  # evaluations without a better valid score; -1: never stop
    c.freeze_encoder = False  # True: only the head learns (a linear probe)

    # ---- optimiser ------------------------------------------------------------------------------
    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"  # 'adamw' ([AudioMAE]) or 'sgd' (momentum; [EVAR] M2D runs)
    c.optim.lr = 0.0  # > 0: absolute lr, ignores blr
    c.optim.blr = 1e-3  # lr = blr * batch_size / 256 [AudioMAE ft_as.sh]
    c.optim.min_lr = 1e-6  # [AudioMAE]
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999  # torch AdamW defaults, as [AudioMAE]
    c.optim.momentum = 0.9  # sgd only [EVAR]
    c.optim.weight_decay = 5e-4  # [AudioMAE] (decoupled; not on biases, norms, [CLS])
    c.optim.layer_decay = 0.75  # [AudioMAE] / MAE / BEiT; 1.0: off
    c.optim.grad_clip_norm = 0.0  # 0: off ([AudioMAE] clip_grad None)

    # ---- model and head -------------------------------------------------------------------------
    c.model = ml_collections.ConfigDict()
    c.model.dtype = "float32"  # compute dtype ('bfloat16' on GPU/TPU); params stay float32
    c.model.remat = False  # rematerialise each block in the backward pass
    c.model.drop_path = 0.1  # stochastic depth, rising linearly over the blocks [AudioMAE]
    c.head = ml_collections.ConfigDict()
    c.head.pooling = "mean"  # 'mean' of the frame features [EVAR] or 'cls' token
    c.head.norm = "layernorm"  # LayerNorm before the linear layer [AudioMAE fc_norm]; 'none'
    c.head.init_std = 2e-5  # [AudioMAE] trunc_normal_(head.weight, std=2e-5)
    c.label_smoothing = 0.0  # [AudioMAE] uses 0.1

    # ---- augmentation (on normalised log-mels, training only) ---------------------------------
    c.augment = ml_collections.ConfigDict()
    c.augment.mixup = 0.3  # Beta(alpha, alpha); 0: off [EVAR ft-spc.sh]
    c.augment.freq_mask = 30  # mel bins [EVAR ft-spc.sh]; 0: off
    c.augment.time_mask = 48  # frames [EVAR ft-spc.sh]; 0: off
    c.augment.rrc = True  # random resized crop [EVAR --rrc True]
    c.augment.rrc_canvas = (1.0, 1.5)  # virtual canvas (F, T) scale [EVAR RandomResizeCrop]
    c.augment.rrc_freq_scale = (0.6, 1.5)
    c.augment.rrc_time_scale = (0.6, 1.5)

    # ---- data -------------------------------------------------------------------------------
    c.data = ml_collections.ConfigDict()
    c.data.crop_frames = 0  # training crop in frames; 0: the model's input width
    c.data.time_shift = True  # crops at random offsets (else from the clip's start)
    c.data.unit_sec = 0.0  # > 0: clips fitted to this length first (EVAR); 0: whole clips
    c.data.norm = "task"  # log-mel statistics: the task's training clips, or 'checkpoint'
    c.data.balanced = False  # class-balanced sampling [AudioMAE weight_sampler, AudioSet]
    c.data.eval_batch_size = 64  # clips per evaluation call

    # ---- logging, checkpoints, export ----------------------------------------------------------
    c.log_every_steps = 50
    c.ckpt_every_steps = 0  # 0: after every evaluation
    c.keep_checkpoints = 2
    c.tensorboard = True
    c.export = True  # write each run's best model (encoder artifact + head) to RUN/export

    # ---- distribution (as configs/msm_mae.py) ------------------------------------------------
    c.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))
    c.sharding_rules = (
        ("batch", ("data", "fsdp")),
        ("embed", "fsdp"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("qkv", "tensor"),
        ("patch", None),
        ("seq", None),
        ("kv", None),
    )
    c.coordinator_address = ""
    c.num_processes = 0
    c.process_id = -1

    if variant == "frozen":
        c.freeze_encoder = True
        c.model.drop_path = 0.0
        c.augment.mixup, c.augment.freq_mask, c.augment.time_mask = 0.0, 0, 0
        c.augment.rrc = False
        c.data.time_shift = False
        c.optim.lr = 1e-3
        c.optim.weight_decay = 0.0
    elif variant == "fsdd":
        # FSDD digits / speakers with configs/msm_mae.py:fsdd_small (80x96, 192 wide, 6 blocks)
        # on a CPU budget: 2,430 training clips of 0.2-2.3 s, 20 epochs. Mixup, random resized
        # crops and time shifts slow convergence in a schedule this short (measured with small
        # encoders on FSDD digits: 8 epochs, 98% without time shift vs 94% with it; mixup + rrc
        # cost ~20 points at 10 epochs), so only SpecAugment and drop path regularise here.
        c.batch_size = 64
        c.epochs = 20.0
        c.warmup_epochs = 2.0
        c.early_stop_patience = 5
        c.optim.lr = 1e-3
        c.augment.mixup = 0.0
        c.augment.rrc = False
        c.augment.freq_mask = 16
        c.augment.time_mask = 24
        c.data.time_shift = False
        c.log_every_steps = 100
    elif variant == "tiny":
        c.batch_size = 8
        c.epochs = 2.0
        c.warmup_epochs = 0.5
        c.num_seeds = 1
        c.optim.lr = 1e-3
        c.augment.freq_mask = 8
        c.augment.time_mask = 16
        c.data.eval_batch_size = 8
        c.log_every_steps = 1
        c.tensorboard = False
    return c
