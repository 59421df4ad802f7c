"""MSM-MAE pre-training configs.

Use: `python train.py --config configs/msm_mae.py:VARIANT --workdir DIR --config.key=value`.
Variants: base_208 (default, the paper's 80x208p16x16 ViT-B), base_512, base_608, small_208,
large_208, tiny (seconds per step on a CPU: tests), demo (a small encoder that `make demo`
pre-trains in a few CPU minutes) and fsdd_small (a small encoder pre-trained on the FSDD
recordings for the README's result).
Every key the code reads is declared here.
"""

import ml_collections

from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.model.config import encoder_variant

VARIANTS = (
    "base_208",
    "base_512",
    "base_608",
    "small_208",
    "large_208",
    "tiny",
    "demo",
    "fsdd_small",
)


def _model(variant: str, frames: int) -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    m.input_size = (80, frames)  # (mel bins, frames)
    m.patch_size = (16, 16)
    m.update(encoder_variant(variant))  # embed_dim, depth, num_heads
    m.mlp_ratio = 4.0
    m.decoder_embed_dim = 384
    m.decoder_depth = 4
    m.decoder_num_heads = 6
    m.use_cls_token = True
    m.decoder_pos_embed = "1d"
    m.norm_pix_loss = False
    m.mask_ratio = 0.75
    m.dtype = "float32"  # compute dtype ('bfloat16' on GPU/TPU); params stay float32
    m.remat = False
    return m


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "base_208"
    if variant not in VARIANTS:
        raise ConfigError(f"unknown config variant {variant!r}; known: {list(VARIANTS)}")
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.seed = 0
    # Further pre-training: start from these weights instead of random ones (step 0, a fresh
    # optimizer): converted official weights, an export (encoder only) or a training workdir
    # (newest step, or DIR@STEP); local or gs://. '' = random init. Also --init-from.
    c.init_from = ""

    # ---- schedule (global batch; steps per epoch from the dataset size unless given) -----
    c.batch_size = 512
    c.grad_accum_steps = 1  # micro-batches per update; batch_size is the effective batch
    c.total_steps = 0  # > 0 wins over epochs
    c.epochs = 100.0
    c.steps_per_epoch = 0  # 0: number of training clips // batch_size
    c.warmup_epochs = 10.0
    c.warmup_steps = -1  # >= 0 wins over warmup_epochs

    # ---- optimiser (AdamW as the official recipe) -------------------------------------
    c.optim = ml_collections.ConfigDict()
    c.optim.blr = 1.5e-4  # lr = blr * batch_size / 128
    c.optim.lr = 0.0  # > 0: absolute lr, ignores blr
    c.optim.min_lr = 0.0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.95
    c.optim.weight_decay = 0.05
    c.optim.grad_clip_norm = 0.0  # 0: off

    # ---- model ---------------------------------------------------------------------------
    frames = {"base_512": 512, "base_608": 608}.get(variant, 208)
    enc = {
        "small_208": "small",
        "large_208": "large",
        "tiny": "tiny",
        "demo": "tiny",
        "fsdd_small": "tiny",
    }.get(variant, "base")
    c.model = _model(enc, frames)

    # ---- data ------------------------------------------------------------------------------
    c.data = ml_collections.ConfigDict()
    # 'synthetic', 'files:/dir/or/glob', 'tfds:name:split', 'lms:/dir/of/shards'
    c.data.source = "synthetic"
    c.data.shuffle_buffer = 2048
    c.data.max_clip_seconds = 30.0  # longer files: a random window of this length is read
    c.data.norm_stats_crops = 10000  # random crops sampled for the dataset mean/std
    # 'official': over the crops with their zero padding, as the official code (the default);
    # 'frames': over the crops' real frames only (README "Notes on fidelity").
    c.data.norm_stats_method = "official"
    # With init_from: keep the source's statistics instead of computing them on this data.
    c.data.norm_from_init = False
    c.data.norm_mean = 0.0  # used only when norm_std > 0 (explicit statistics)
    c.data.norm_std = 0.0
    c.data.tfds_audio_key = "audio"
    c.data.tfds_sample_rate = 0  # 0: read from the dataset's audio feature
    c.data.tfds_data_dir = ""
    c.data.synthetic_clips = 1024  # clips of the built-in generator per epoch
    c.data.synthetic_seconds = 3.0
    c.data.synthetic_seed = 0  # content of the built-in clips (independent of c.seed)
    c.data.file_pattern = "*"  # files:/dir sources: glob below the dir (recursive)
    c.data.prefetch = 2
    # True: the host yields waveform crops ("wav", "frames") and the jitted train step computes
    # the log-mel and normalisation on the accelerator (data/device_frontend.py, equal to the
    # host front end); the host then only decodes audio. Audio sources only (files, synthetic,
    # tfds): an lms: source holds log-mels already (a ConfigError).
    c.data.logmel_on_device = False

    # ---- distribution -----------------------------------------------------------------------
    # Mesh axes (name, size); one size may be -1 (all remaining devices). Tuples, so that
    # --config.mesh="(('data',-1),('fsdp',4),('tensor',1))" can override them.
    c.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))
    # Logical axis name -> mesh axes (None: replicated).
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
    # Multi-host: '' auto-detects (TPU pod / SLURM / env); or 'host:port' explicitly.
    c.coordinator_address = ""
    c.num_processes = 0
    c.process_id = -1

    # ---- logging, checkpoints, figures, probe ------------------------------------------------
    c.log_every_steps = 50
    c.ckpt_every_steps = 1000
    c.keep_checkpoints = 3
    c.figure_every_steps = 5000  # 0: off
    c.figure_clips = 4
    c.probe = ml_collections.ConfigDict()
    c.probe.every_steps = 0  # 0: off; ridge few-shot probe on frozen features
    c.probe.task = "synthetic"  # 'synthetic' or an evaluate.py task spec (csv:/folder:)
    c.probe.label = "label"
    c.probe.max_train = 512
    c.probe.max_test = 512

    if variant in ("tiny", "demo"):
        c.model.decoder_embed_dim = 64
        c.model.decoder_depth = 1
        c.model.decoder_num_heads = 4
        c.batch_size = 16
        c.total_steps = 200
        c.warmup_steps = 20
        c.optim.lr = 1e-3
        c.data.synthetic_clips = 512
        c.data.shuffle_buffer = 256
        c.data.norm_stats_crops = 256
        c.log_every_steps = 10
        c.ckpt_every_steps = 100
        c.figure_every_steps = 100
        c.probe.every_steps = 100
        c.probe.max_train = 256
        c.probe.max_test = 128
    if variant == "demo":  # tiny's recipe, a 128-wide 4-block encoder, ~2 CPU minutes
        c.model.embed_dim, c.model.depth, c.model.num_heads = 128, 4, 4
        c.batch_size = 32
        c.total_steps = 1000
        c.warmup_steps = 100
        c.data.synthetic_clips = 1024
        c.log_every_steps = 50
        c.ckpt_every_steps = 500
        c.figure_every_steps = 250
        c.probe.every_steps = 250
    elif variant == "fsdd_small":
        # FSDD training takes (5-49) only; see README "Results". 90% of the clips are
        # shorter than 0.6 s, so a 96-frame input (0.96 s) instead of mostly padding.
        c.model.input_size = (80, 96)
        c.model.embed_dim, c.model.depth, c.model.num_heads = 192, 6, 3
        c.model.decoder_embed_dim = 128
        c.model.decoder_depth = 2
        c.model.decoder_num_heads = 4
        c.data.source = "files:../shared/data/fsdd/recordings"
        c.data.file_pattern = "*_[5-9].wav,*_[1-4][0-9].wav"
        c.batch_size = 64
        c.total_steps = 3000
        c.warmup_steps = 300
        c.optim.lr = 5e-4
        c.log_every_steps = 50
        c.ckpt_every_steps = 500
        c.figure_every_steps = 1000
    return c
