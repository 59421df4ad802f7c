"""Training-time augmentations of normalised log-mel crops, on the device (jittable).

The MSM-MAE family's fine-tuning recipe (nttcslab/eval-audio-repr `finetune.py`, used by
nttcslab/m2d `util/ft-*.sh`; facebookresearch/AudioMAE `main_finetune_as.py`):

- mixup: per example lambda ~ Beta(alpha, alpha) and a partner from a random permutation of
  the (global) batch (EVAR's `Mixup`); inputs, targets and the valid-frame masks are mixed
  (the masks as a union). EVAR mixes waveforms, AudioMAE fbank features; here the normalised
  log-mels. Lambda and the permutation are drawn on the host (`sample_mixup`).
- SpecAugment: one frequency and one time mask per example, torchaudio's `mask_along_axis`
  formula: width = floor(u1 * param), start = floor(u2 * (size - u1 * param)), masked with 0
  (the dataset mean after normalisation). torchaudio draws one mask per call, i.e. per batch in
  EVAR; here every example has its own (AudioMAE masks per example in its dataset).
- random resized crop (BYOL-A / EVAR `RandomResizeCrop`): the input is centred on a virtual
  canvas (1.0 x F, 1.5 x T by default), a crop of random size (0.6-1.5 x F, 0.6-1.5 x T) at a
  random position is resized back to F x T. EVAR resizes bicubically; here bilinearly
  (align_corners=True), as the product of two interpolation matrices.

Order as EVAR: mixup, then SpecAugment, then the random resized crop.

Shape letters: B batch, F mel bins, T frames, C classes.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

_STREAM_MIXUP = 3  # numpy stream of a run seed (data.py uses 1 and 2)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Static augmentation settings (from `config.augment`)."""

    mixup: float = 0.0  # Beta(alpha, alpha); 0: off
    freq_mask: int = 0  # max frequency-mask width in mel bins; 0: off
    time_mask: int = 0  # max time-mask width in frames; 0: off
    rrc: bool = False
    rrc_canvas: tuple[float, float] = (1.0, 1.5)
    rrc_freq_scale: tuple[float, float] = (0.6, 1.5)
    rrc_time_scale: tuple[float, float] = (0.6, 1.5)

    @classmethod
    def from_config(cls, a) -> AugmentConfig:
        return cls(
            mixup=float(a.mixup),
            freq_mask=int(a.freq_mask),
            time_mask=int(a.time_mask),
            rrc=bool(a.rrc),
            rrc_canvas=tuple(float(v) for v in a.rrc_canvas),
            rrc_freq_scale=tuple(float(v) for v in a.rrc_freq_scale),
            rrc_time_scale=tuple(float(v) for v in a.rrc_time_scale),
        )

    @property
    def active(self) -> bool:
        return self.mixup > 0 or self.freq_mask > 0 or self.time_mask > 0 or self.rrc


# ---- mixup ------------------------------------------------------------------------------------
def sample_mixup(seed: int, step: int, batch: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(lambda_B ~ Beta(alpha, alpha) float32, partner permutation_B int32) of one step, drawn
    on the host from (seed, step): Beta sampling compiles to a large rejection loop on device."""
    rng = np.random.default_rng([int(seed), _STREAM_MIXUP, int(step)])
    lam_B = rng.beta(alpha, alpha, batch).astype(np.float32)
    return lam_B, rng.permutation(batch).astype(np.int32)


def apply_mixup(
    x_BFT: jax.Array, y_BC: jax.Array, valid_BT: jax.Array, lam_B: jax.Array, perm_B: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """x = lam x + (1 - lam) x[perm], the same for the targets; valid = valid | valid[perm]."""
    lx = lam_B.astype(x_BFT.dtype)[:, None, None]
    x = lx * x_BFT + (1 - lx) * x_BFT[perm_B]
    ly = lam_B[:, None]
    y = ly * y_BC + (1 - ly) * y_BC[perm_B]
    return x, y, valid_BT | valid_BT[perm_B]


# ---- SpecAugment --------------------------------------------------------------------------------
def mask_span(u_width: jax.Array, u_start: jax.Array, size: int, param: int):
    """torchaudio's `mask_along_axis` from its two uniforms -> (start, end) int32, end exclusive.
    A param above the axis size is clamped to it."""
    param = min(int(param), int(size))
    value = u_width * param
    start = jnp.floor(u_start * (size - value)).astype(jnp.int32)
    return start, start + jnp.floor(value).astype(jnp.int32)


def _mask_axis(key: jax.Array, x: jax.Array, axis: int, param: int) -> jax.Array:
    B, size = x.shape[0], x.shape[axis]
    u_BW = jax.random.uniform(key, (B, 2))
    start_B, end_B = mask_span(u_BW[:, 0], u_BW[:, 1], size, param)
    pos = jnp.arange(size)
    masked_BS = (pos[None] >= start_B[:, None]) & (pos[None] < end_B[:, None])
    shape = [B] + [1] * (x.ndim - 1)
    shape[axis] = size
    return jnp.where(masked_BS.reshape(shape), jnp.zeros((), x.dtype), x)


def spec_augment(key: jax.Array, x_BFT: jax.Array, freq_mask: int, time_mask: int) -> jax.Array:
    """One frequency mask (width < freq_mask) and one time mask (< time_mask) per example."""
    k_f, k_t = jax.random.split(key)
    if freq_mask > 0:
        x_BFT = _mask_axis(k_f, x_BFT, 1, freq_mask)
    if time_mask > 0:
        x_BFT = _mask_axis(k_t, x_BFT, 2, time_mask)
    return x_BFT


# ---- random resized crop -----------------------------------------------------------------------
def rrc_params(
    key: jax.Array,
    batch: int,
    size: tuple[int, int],
    canvas: tuple[float, float],
    freq_scale: tuple[float, float],
    time_scale: tuple[float, float],
) -> jax.Array:
    """Per example crop (i, j, h, w) on the virtual canvas, as EVAR's `get_params`: [B, 4] int32.

    h = clip(int(U(freq_scale) F), 1, canvas_h), w likewise; i uniform in 0..canvas_h - h."""
    F, T = size
    ch, cw = int(F * canvas[0]), int(T * canvas[1])
    u = jax.random.uniform(key, (batch, 4))
    h = jnp.clip(jnp.floor((freq_scale[0] + u[:, 0] * (freq_scale[1] - freq_scale[0])) * F), 1, ch)
    w = jnp.clip(jnp.floor((time_scale[0] + u[:, 1] * (time_scale[1] - time_scale[0])) * T), 1, cw)
    i = jnp.floor(u[:, 2] * (ch - h + 1))
    j = jnp.floor(u[:, 3] * (cw - w + 1))
    return jnp.stack([i, j, h, w], axis=1).astype(jnp.int32)


def resize_matrix(start: jax.Array, length: jax.Array, n: int, offset: int) -> jax.Array:
    """Bilinear (align_corners=True) weights [n_out=n, n_in=n] that resample canvas positions
    start .. start + length - 1 onto n outputs; the input sits at canvas offset `offset` and is
    zero outside. A hat kernel: w[o, k] = max(0, 1 - |src_o - k|)."""
    o = jnp.arange(n, dtype=jnp.float32)
    step = (length.astype(jnp.float32) - 1) / max(n - 1, 1)
    src = start.astype(jnp.float32) + o * step - offset
    k = jnp.arange(n, dtype=jnp.float32)
    return jnp.maximum(0.0, 1.0 - jnp.abs(src[:, None] - k[None, :]))


def random_resized_crop(
    key: jax.Array, x_BFT: jax.Array, valid_BT: jax.Array, cfg: AugmentConfig
) -> tuple[jax.Array, jax.Array]:
    """Resized crops [B, F, T]; a frame is valid when real frames contribute to it."""
    B, F, T = x_BFT.shape
    p = rrc_params(key, B, (F, T), cfg.rrc_canvas, cfg.rrc_freq_scale, cfg.rrc_time_scale)
    y0 = (int(F * cfg.rrc_canvas[0]) - F) // 2
    x0 = (int(T * cfg.rrc_canvas[1]) - T) // 2
    wf_BOF = jax.vmap(lambda s, n: resize_matrix(s, n, F, y0))(p[:, 0], p[:, 2])
    wt_BPT = jax.vmap(lambda s, n: resize_matrix(s, n, T, x0))(p[:, 1], p[:, 3])
    x = jnp.einsum("bof,bft,bpt->bop", wf_BOF, x_BFT.astype(jnp.float32), wt_BPT)
    valid = jnp.einsum("bpt,bt->bp", wt_BPT, valid_BT.astype(jnp.float32)) > 0
    return x.astype(x_BFT.dtype), valid


# ---- all of it ----------------------------------------------------------------------------------
def augment(
    key: jax.Array,
    x_BFT: jax.Array,
    y_BC: jax.Array,
    valid_BT: jax.Array,
    cfg: AugmentConfig,
    lam_B: jax.Array | None = None,
    perm_B: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """mixup (with `sample_mixup`'s draws) -> SpecAugment -> random resized crop, as enabled."""
    k_spec, k_rrc = jax.random.split(key)
    if cfg.mixup > 0:
        x_BFT, y_BC, valid_BT = apply_mixup(x_BFT, y_BC, valid_BT, lam_B, perm_B)
    if cfg.freq_mask > 0 or cfg.time_mask > 0:
        x_BFT = spec_augment(k_spec, x_BFT, cfg.freq_mask, cfg.time_mask)
    if cfg.rrc:
        x_BFT, valid_BT = random_resized_crop(k_rrc, x_BFT, valid_BT, cfg)
    return x_BFT, y_BC, valid_BT
