"""The MSM-MAE log-mel front end, in TensorFlow (for tf.data) and in jax.numpy (on device).

Definition (the official one, see nnAudio's MelSpectrogram as configured by nttcslab/msm-mae):
16 kHz mono waveform -> STFT with a periodic Hann window of 400 samples, hop 160, `center=True`
with reflect padding of 200 samples at both ends -> power (|X|^2) over 201 bins -> Slaney mel
basis (80 bands, 50-8000 Hz, Slaney area normalisation, `librosa.filters.mel`'s) ->
`log(mel + 1.1920929e-07)`. Output layout [..., F=80, T] with T = 1 + S // 160.

`center=False` (both functions) frames the input as given, without padding: frame t covers
samples [160 t, 160 t + 400), T = 1 + (S - 400) // 160 (S >= 400). The training pipeline uses
it on waveform windows that already hold the clip's reflect padding (`crops.py`), so a crop's
frames equal the clip's centred log-mel frames without computing the rest of the clip.

Short inputs: the padding follows numpy's (and so librosa's) `mode='reflect'` for every length,
including S <= 200 where one reflection is not enough (numpy keeps reflecting, i.e. the
signal is extended periodically with period 2(S-1); a single sample is repeated). Both
functions therefore agree with librosa for any S >= 1; S = 0 is an error.

Precision: everything runs in float32 (as the official nnAudio front end). librosa computes the
FFT in float64, so the two agree to ~1e-5 on real recordings; in bands more than ~100 dB below
the loudest component of a frame (e.g. far from a full-scale pure tone) float32 FFT rounding
shows, reaching ~1e-3 in the log for a full-scale sweep.

Shape letters: S samples, T frames, F mel bins, W window samples (400), K frequency bins (201).
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING

import numpy as np

from msm_mae_jax.data.tf_setup import tensorflow

if TYPE_CHECKING:  # both frameworks are imported lazily: TF-only users never load jax
    import jax
    import tensorflow as tf

SAMPLE_RATE = 16000
N_FFT = 400
WIN_LENGTH = 400
HOP_LENGTH = 160
N_MELS = 80
FMIN = 50.0
FMAX = 8000.0
LOG_OFFSET = 1.1920929e-07  # float32 machine epsilon, as the official code
N_FREQS = N_FFT // 2 + 1
_PAD = N_FFT // 2
# Waveforms are full scale in [-1, 1] (integer PCM is read scaled into it and cannot exceed
# it; float files and arrays hold samples as they are). Beyond this peak a waveform is
# mis-scaled (integer values written as float, say): using it would silently distort the
# normalisation statistics and everything learnt from them, so it is refused like a corrupt
# file (`audio_io`) or a bad argument (the runtime, HEAR). Real recordings that clip a little
# after processing stay far below.
MAX_ABS_SAMPLE = 16.0


def num_frames(samples: int) -> int:
    """Number of log-mel frames for a waveform of `samples` samples (center=True)."""
    return 1 + int(samples) // HOP_LENGTH


def num_frames_uncentered(samples: int) -> int:
    """Number of frames of a waveform of `samples` >= 400 samples framed with center=False."""
    return 1 + (int(samples) - N_FFT) // HOP_LENGTH


def samples_for_frames(frames: int) -> int:
    """Smallest waveform length that yields `frames` frames."""
    return max(0, (int(frames) - 1) * HOP_LENGTH)


# librosa's Slaney basis for the constants above, as `write_mel_basis` stores it in the package.
MEL_BASIS_FILE = os.path.join(os.path.dirname(__file__), "mel_basis_slaney_16k_400_80_50_8000.npy")


@functools.lru_cache(maxsize=1)
def mel_basis() -> np.ndarray:
    """Slaney mel basis as float32 [K=201, F=80] (librosa's [80, 201], transposed).

    Read from MEL_BASIS_FILE, librosa's own output: importing librosa (scipy.signal, numba)
    would add ~1.2 s to the start of every process; tests/test_audio.py checks that the file
    equals `librosa_mel_basis()` bit for bit."""
    out = np.load(MEL_BASIS_FILE)
    if out.shape != (N_FREQS, N_MELS) or out.dtype != np.float32:
        raise ValueError(f"{MEL_BASIS_FILE}: {out.dtype} {out.shape}, not a mel basis")
    out.setflags(write=False)
    return out


def librosa_mel_basis() -> np.ndarray:
    """The mel basis computed by `librosa.filters.mel` now (float32 [K=201, F=80])."""
    import librosa  # noqa: PLC0415 (slow to import; only to write or check the stored basis)

    m_FK = librosa.filters.mel(
        sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX, htk=False, norm="slaney"
    )
    return np.ascontiguousarray(m_FK.T, dtype=np.float32)


def write_mel_basis(path: str = MEL_BASIS_FILE) -> None:
    """Stores `librosa_mel_basis()` (after a change of the constants or of librosa)."""
    np.save(path, librosa_mel_basis())


@functools.lru_cache(maxsize=1)
def hann_window() -> np.ndarray:
    """Periodic Hann window of 400 samples (scipy `get_window('hann', 400, fftbins=True)`)."""
    n = np.arange(WIN_LENGTH, dtype=np.float64)
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / WIN_LENGTH)
    return w.astype(np.float32)


def reflect_index(i: np.ndarray, samples: int) -> np.ndarray:
    """numpy's `mode='reflect'` index of positions `i` (any integers) into `samples` samples:
    mirrored at both ends, repeated for positions farther than a clip length (period
    2 (S - 1)); a single sample is repeated."""
    if samples == 1:
        return np.zeros_like(i)
    period = 2 * (samples - 1)
    j = np.mod(i, period)
    return np.where(j < samples, j, period - j)


def reflect_indices(samples: int) -> np.ndarray:
    """Indices into a length-`samples` signal giving numpy's reflect padding by 200 each side."""
    return _reflect_indices_np(samples, _PAD)


def _reflect_indices_np(samples: int, pad: int) -> np.ndarray:
    if samples <= 0:
        raise ValueError(f"log-mel needs at least one sample, got a waveform of {samples} samples")
    return reflect_index(np.arange(-pad, samples + pad), samples)


def _frame_indices(samples: int) -> np.ndarray:
    """[T, W] indices into the reflect-padded signal (length samples + 400)."""
    t = num_frames(samples)
    return np.arange(t)[:, None] * HOP_LENGTH + np.arange(N_FFT)[None, :]


# ----------------------------------------------------------------------------------------------
# TensorFlow
# ----------------------------------------------------------------------------------------------


def log_mel(wav: np.ndarray | tf.Tensor, center: bool = True) -> tf.Tensor:
    """Log-mel of float32 waveforms [..., S] at 16 kHz -> tf.float32 [..., 80, T].

    T = 1 + S // 160 (center=True), 1 + (S - 400) // 160 (center=False, S >= 400). Pure TF ops:
    works eagerly and inside `tf.data.Dataset.map` / `tf.function`, with static or dynamic S
    (the rank must be known). The STFT is a 400-point real FFT of the windowed frames (faster
    on CPU here than a DFT matmul, and float32-exact). Raises ValueError (static S) or
    tf.errors.InvalidArgumentError (dynamic S) for an input too short to frame.
    """
    tf = tensorflow()
    wav = tf.convert_to_tensor(wav)
    if wav.dtype != tf.float32:
        wav = tf.cast(wav, tf.float32)
    rank = wav.shape.rank
    if rank is None or rank == 0:
        raise ValueError(
            f"log_mel expects a waveform [..., samples] of known rank, got {wav.shape}"
        )
    min_s = 1 if center else N_FFT
    static_s = wav.shape[-1]
    if static_s is not None and static_s < min_s:
        raise ValueError(_too_short(static_s, center))
    if static_s is None:
        check = tf.debugging.assert_greater_equal(
            tf.shape(wav)[-1], min_s, message=_too_short(None, center)
        )
        with tf.control_dependencies([check]):  # fail here, before any gather sees S = 0
            wav = tf.identity(wav)
    s = tf.shape(wav)[-1]
    if center:
        paddings = [[0, 0]] * (rank - 1) + [[_PAD, _PAD]]
        reflect_once = lambda: tf.pad(wav, paddings, mode="REFLECT")  # contiguous copy, fast
        reflect_many = lambda: tf.gather(wav, _reflect_indices_tf(s), axis=-1)  # S <= 200
        if static_s is not None:
            padded = reflect_once() if static_s > _PAD else reflect_many()
        else:
            padded = tf.cond(s > _PAD, reflect_once, reflect_many)
        frames_TW = _frames_tf(padded, s)
    else:
        frames_TW = _frames_tf(wav, s - N_FFT)
    spec_TK = tf.signal.rfft(frames_TW * tf.constant(hann_window()), fft_length=[N_FFT])
    power_TK = tf.math.square(tf.math.real(spec_TK)) + tf.math.square(tf.math.imag(spec_TK))
    mel_TF = tf.linalg.matmul(power_TK, tf.constant(mel_basis()))
    lms_TF = tf.math.log(mel_TF + LOG_OFFSET)
    return tf.linalg.matrix_transpose(lms_TF)


def _too_short(samples: int | None, center: bool) -> str:
    got = "fewer" if samples is None else str(samples)
    if center:
        return f"log-mel needs at least one sample, got {got}"
    return f"log-mel with center=False needs at least {N_FFT} samples, got {got}"


def _frames_tf(padded: tf.Tensor, s: tf.Tensor) -> tf.Tensor:
    """[..., S + 400] reflect-padded waveform -> frames [..., T, 400], T = 1 + S // 160.

    Frame t is padded[160 t : 160 t + 400] = three hop-aligned pieces, each a plain reshape
    of a contiguous slice: [160 t, +160), [160 (t+1), +160) and the second half of
    [160 t + 240, +160). One concat instead of tf.signal.frame's gather (~2x faster on CPU).
    Every slice ends at or before 400 + 160 * (S // 160) <= S + 400.
    """
    tf = tensorflow()
    t = 1 + s // HOP_LENGTH
    shape = tf.concat([tf.shape(padded)[:-1], [t, HOP_LENGTH]], axis=0)

    def piece(start: int) -> tf.Tensor:
        return tf.reshape(padded[..., start : start + t * HOP_LENGTH], shape)

    rest = N_FFT - 2 * HOP_LENGTH  # 80
    return tf.concat(
        [piece(0), piece(HOP_LENGTH), piece(N_FFT - HOP_LENGTH)[..., HOP_LENGTH - rest :]],
        axis=-1,
    )


def _reflect_indices_tf(s: tf.Tensor) -> tf.Tensor:
    """TF twin of `_reflect_indices_np` for a (possibly dynamic) scalar length s >= 1."""
    tf = tensorflow()
    i = tf.range(-_PAD, s + _PAD)
    period = tf.maximum(2 * (s - 1), 1)  # s == 1: period 1 maps every index to 0
    j = tf.math.floormod(i, period)
    return tf.where(j < s, j, period - j)


# ----------------------------------------------------------------------------------------------
# JAX
# ----------------------------------------------------------------------------------------------


def log_mel_jax(wav: np.ndarray | jax.Array, center: bool = True) -> jax.Array:
    """Log-mel in jax.numpy: float32 [..., S] -> jnp.float32 [..., 80, T]. Jittable.

    T as `log_mel` (center=True: 1 + S // 160; center=False: 1 + (S - 400) // 160).

    S is static under jit, so padding and framing are one precomputed gather. The STFT is a
    400-point real FFT (a float32 DFT matmul doubles the error in quiet bands, see the module
    notes); the mel matmul runs at HIGHEST precision so GPUs (TF32) and TPUs (bf16 passes) give
    the float32 feature.
    """
    import jax
    import jax.numpy as jnp

    wav = jnp.asarray(wav, dtype=jnp.float32)
    if wav.ndim == 0:
        raise ValueError("log_mel_jax expects a waveform [..., samples], got a scalar")
    s = wav.shape[-1]
    if s < (1 if center else N_FFT):
        raise ValueError(_too_short(s, center))
    if center:
        idx_TW = reflect_indices(s)[_frame_indices(s)]
    else:
        idx_TW = _frame_indices(s - N_FFT)
    frames_TW = jnp.take(wav, jnp.asarray(idx_TW, dtype=jnp.int32), axis=-1)
    spec_TK = jnp.fft.rfft(frames_TW * jnp.asarray(hann_window()), n=N_FFT, axis=-1)
    power_TK = jnp.square(spec_TK.real) + jnp.square(spec_TK.imag)
    mel_TF = jnp.matmul(power_TK, jnp.asarray(mel_basis()), precision=jax.lax.Precision.HIGHEST)
    lms_TF = jnp.log(mel_TF + LOG_OFFSET)
    return jnp.swapaxes(lms_TF, -1, -2)
