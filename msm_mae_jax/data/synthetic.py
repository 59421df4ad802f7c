"""A deterministic generator of labelled 16 kHz audio: the built-in data of the demo and tests.

Six sound classes that differ in pitch structure, timbre, envelope and noisiness, so a good
audio representation separates them while simple statistics do not:

- harmonic:   a harmonic tone (random f0, spectral slope, vibrato) with an ADSR envelope;
- chirp:      a frequency sweep (up or down, linear or exponential) with a few harmonics;
- am_fm:      a sinusoid with slow amplitude and frequency modulation;
- noise_burst: band-pass filtered noise in one or more bursts;
- percussive: a train of decaying resonant strikes (clicks exciting a damped resonator);
- vowel:      a glottal pulse train shaped by vowel formants (a crude voiced vowel).

Every clip draws its own parameters from `np.random.default_rng((seed, index))`, has a random
onset/duration inside the clip, a random level (-35..-12 dBFS RMS, peaks below 0.99), so
loudness says nothing about the class, and a background noise floor at a random SNR.
Shape letters: S samples.
"""

from __future__ import annotations

import functools

import numpy as np

SAMPLE_RATE = 16000
CLASS_NAMES: list[str] = ["harmonic", "chirp", "am_fm", "noise_burst", "percussive", "vowel"]

# (F1, F2, F3) in Hz of a few vowels (Peterson & Barney averages, rounded).
_VOWEL_FORMANTS = (
    (730, 1090, 2440),
    (270, 2290, 3010),
    (300, 870, 2240),
    (530, 1840, 2480),
    (570, 840, 2410),
    (660, 1720, 2410),
)


def num_classes() -> int:
    return len(CLASS_NAMES)


def label_of(index: int) -> int:
    """Class of clip `index`: classes cycle with the index, so any n clips are balanced."""
    return int(index) % len(CLASS_NAMES)


def make_clip(index: int, seed: int, seconds: float) -> tuple[np.ndarray, int]:
    """Clip `index` of the dataset `seed`: (float32 wav [S] at 16 kHz in [-1, 1], label)."""
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    rng = np.random.default_rng((int(seed) & 0xFFFFFFFF, int(index)))
    label = label_of(index)
    n = max(1, int(round(seconds * SAMPLE_RATE)))
    # The event fills 40-100% of the clip at a random onset.
    ev_n = max(1, int(n * rng.uniform(0.4, 1.0)))
    onset = int(rng.integers(0, n - ev_n + 1))
    t_S = np.arange(ev_n, dtype=np.float64) / SAMPLE_RATE
    event_S = _GENERATORS[label](rng, t_S)
    event_S = event_S / (np.sqrt(np.mean(event_S**2)) + 1e-12)

    wav_S = np.zeros(n, np.float64)
    wav_S[onset : onset + ev_n] = event_S
    snr_db = rng.uniform(10.0, 40.0)
    wav_S += _colored_noise(rng, n) * 10 ** (-snr_db / 20)
    level_db = rng.uniform(-35.0, -12.0)
    wav_S *= 10 ** (level_db / 20) / (np.sqrt(np.mean(wav_S**2)) + 1e-12)
    peak = np.abs(wav_S).max()
    if peak > 0.99:  # scale peaky clips down rather than clipping them
        wav_S *= 0.99 / peak
    return wav_S.astype(np.float32), label


@functools.lru_cache(maxsize=2048)
def _cached_clip(index: int, seed: int, seconds: float) -> tuple[np.ndarray, int]:
    wav, label = make_clip(index, seed, seconds)
    wav.setflags(write=False)  # shared between callers
    return wav, label


def make_clip_cached(index: int, seed: int, seconds: float) -> tuple[np.ndarray, int]:
    """`make_clip` memoised (read-only arrays): training re-reads the same clips every epoch,
    and generating them costs more than the model step of a small encoder."""
    return _cached_clip(int(index), int(seed), float(seconds))


def make_dataset(n: int, seed: int, seconds: float) -> tuple[list[np.ndarray], np.ndarray]:
    """Clips 0..n-1 of dataset `seed`: (list of float32 wavs, int64 labels [n])."""
    clips = [make_clip(i, seed, seconds) for i in range(n)]
    return [w for w, _ in clips], np.asarray([y for _, y in clips], np.int64)


# ---- class generators: (rng, t_S seconds) -> float64 [S] (any scale) ---------------------------


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _adsr(rng: np.random.Generator, n: int) -> np.ndarray:
    a, d, r = (max(1, int(n * f)) for f in rng.uniform([0.005, 0.05, 0.05], [0.15, 0.3, 0.4]))
    s = rng.uniform(0.3, 0.9)
    env = np.full(n, s)
    env[:a] = np.linspace(0, 1, a)
    d_end = min(n, a + d)
    env[a:d_end] = np.linspace(1, s, d_end - a)
    env[max(0, n - r) :] *= np.linspace(1, 0, min(r, n))
    return env


def _harmonic(rng: np.random.Generator, t_S: np.ndarray) -> np.ndarray:
    f0 = _log_uniform(rng, 80, 800)
    slope = rng.uniform(0.5, 2.5)  # amplitude of harmonic k ~ k^-slope
    vib_rate, vib_depth = rng.uniform(3, 7), rng.uniform(0, 0.02)
    phase_S = 2 * np.pi * np.cumsum(f0 * (1 + vib_depth * np.sin(2 * np.pi * vib_rate * t_S)))
    phase_S /= SAMPLE_RATE
    x = np.zeros_like(t_S)
    for k in range(1, int(min(20, 7000 // f0)) + 1):
        x += k**-slope * np.sin(k * phase_S + rng.uniform(0, 2 * np.pi))
    return x * _adsr(rng, len(t_S))


def _chirp(rng: np.random.Generator, t_S: np.ndarray) -> np.ndarray:
    f_a, f_b = _log_uniform(rng, 150, 600), _log_uniform(rng, 1200, 5000)
    f_start, f_end = (f_a, f_b) if rng.random() < 0.5 else (f_b, f_a)
    dur = max(t_S[-1], 1.0 / SAMPLE_RATE)
    if rng.random() < 0.5:
        f_S = f_start + (f_end - f_start) * t_S / dur
    else:
        f_S = f_start * (f_end / f_start) ** (t_S / dur)
    phase_S = 2 * np.pi * np.cumsum(f_S) / SAMPLE_RATE
    x = np.sin(phase_S) + rng.uniform(0, 0.5) * np.sin(2 * phase_S) * (2 * f_S.max() < 7900)
    ramp = min(len(t_S), 160)
    env = np.ones_like(t_S)
    env[:ramp], env[len(t_S) - ramp :] = np.linspace(0, 1, ramp), np.linspace(1, 0, ramp)
    return x * env


def _am_fm(rng: np.random.Generator, t_S: np.ndarray) -> np.ndarray:
    fc = _log_uniform(rng, 300, 3000)
    am_rate, am_depth = rng.uniform(2, 12), rng.uniform(0.5, 1.0)
    fm_rate, fm_dev = rng.uniform(0.5, 6), rng.uniform(0.02, 0.2) * fc
    f_S = fc + fm_dev * np.sin(2 * np.pi * fm_rate * t_S + rng.uniform(0, 2 * np.pi))
    phase_S = 2 * np.pi * np.cumsum(f_S) / SAMPLE_RATE
    am_S = 1 - am_depth * 0.5 * (1 + np.sin(2 * np.pi * am_rate * t_S))
    return np.sin(phase_S) * am_S


def _noise_burst(rng: np.random.Generator, t_S: np.ndarray) -> np.ndarray:
    n = len(t_S)
    fc, q = _log_uniform(rng, 300, 5000), rng.uniform(1.0, 6.0)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spec *= np.exp(-0.5 * ((f - fc) / (fc / q)) ** 2)
    x = np.fft.irfft(spec, n)
    env = np.zeros(n)
    for _ in range(int(rng.integers(1, 4))):  # 1-3 bursts
        length = max(1, int(n * rng.uniform(0.15, 0.5)))
        start = int(rng.integers(0, n - length + 1))
        env[start : start + length] = np.maximum(env[start : start + length], np.hanning(length))
    return x * env


def _percussive(rng: np.random.Generator, t_S: np.ndarray) -> np.ndarray:
    n = len(t_S)
    rate = rng.uniform(2, 10)  # strikes per second
    f_res, decay = _log_uniform(rng, 150, 4000), rng.uniform(10, 60)  # Hz, 1/s
    tail_n = min(n, int(SAMPLE_RATE * 5 / decay))
    tt = np.arange(tail_n) / SAMPLE_RATE
    strike = np.exp(-decay * tt) * np.sin(2 * np.pi * f_res * tt)
    strike[: min(tail_n, 16)] += rng.standard_normal(min(tail_n, 16))  # the click of the attack
    x = np.zeros(n + tail_n)
    pos = 0.0
    while pos < n:
        i = int(pos)
        x[i : i + tail_n] += strike * rng.uniform(0.5, 1.0)
        pos += SAMPLE_RATE / rate * rng.uniform(0.7, 1.3)
    return x[:n]


def _vowel(rng: np.random.Generator, t_S: np.ndarray) -> np.ndarray:
    n = len(t_S)
    f0 = _log_uniform(rng, 90, 300) * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(3, 6) * t_S))
    phase_S = np.cumsum(f0) / SAMPLE_RATE
    # Glottal source: a sawtooth-like pulse train (rich harmonics, -6 dB/octave).
    src = (phase_S % 1.0) - 0.5
    src = np.diff(src, prepend=src[0]) + 0.02 * rng.standard_normal(n)
    formants = np.asarray(_VOWEL_FORMANTS[int(rng.integers(len(_VOWEL_FORMANTS)))], float)
    formants *= rng.uniform(0.9, 1.15)  # speaker variation
    spec = np.fft.rfft(src)
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    gain = sum(
        1.0 / (1 + ((f - fk) / (0.06 * fk + 40)) ** 2) * 0.7**k for k, fk in enumerate(formants)
    )
    x = np.fft.irfft(spec * gain, n)
    return x * _adsr(rng, n)


def _colored_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """White, pink or brown background noise (unit RMS)."""
    exponent = rng.choice([0.0, 1.0, 2.0])
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spec[1:] /= f[1:] ** (exponent / 2)
    spec[0] = 0
    x = np.fft.irfft(spec, n)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


_GENERATORS = (_harmonic, _chirp, _am_fm, _noise_burst, _percussive, _vowel)
assert len(_GENERATORS) == len(CLASS_NAMES)
