"""Throughput of the tf.data log-mel pipeline vs a librosa loop, on the same 10 s clips.

Both arms start from the same 16 kHz int16 WAV files written to a temporary directory (so file
reading and decoding are counted on both sides; the files sit in the page cache after the
warm-up) and end with float32 log-mels [80, 1001] in host memory:

- tfdata:         audio_io.load_audio in tf.numpy_function (how the 'files' source decodes any
                  soundfile format; parallel map) -> batch -> audio.log_mel on the batch
                  (parallel map) -> prefetch. The headline number.
- tfdata_decode_wav: the same with TF's own tf.io.read_file + tf.audio.decode_wav (slower here).
- librosa:       for each file: soundfile.read -> librosa.feature.melspectrogram (the
                 reference definition) -> log, one clip at a time.

Usage: python bench/data_pipeline.py [--clips 96] [--seconds 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from msm_mae_jax.data import (
    audio,  # noqa: E402
    audio_io,  # noqa: E402
)


def write_clips(directory: pathlib.Path, n: int, seconds: float, seed: int) -> list[str]:
    """n clips of tones in noise with a decaying envelope, int16 WAV at 16 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * audio.SAMPLE_RATE)) / audio.SAMPLE_RATE
    paths = []
    for i in range(n):
        f0 = rng.uniform(80, 2000)
        y = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 5))
        y = 0.3 * y * np.exp(-t * rng.uniform(0.1, 1.0)) + 0.02 * rng.standard_normal(t.size)
        path = directory / f"clip_{i:04d}.wav"
        sf.write(path, np.clip(y, -1, 1).astype(np.float32), audio.SAMPLE_RATE, subtype="PCM_16")
        paths.append(str(path))
    return paths


def tfdata_dataset(paths: list[str], batch: int, via_soundfile: bool):  # noqa: ANN201
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(paths)
    if via_soundfile:

        def decode(path):  # noqa: ANN001, ANN202
            wav = tf.numpy_function(
                lambda p: audio_io.load_audio(p.decode()), [path], tf.float32, stateful=False
            )
            return tf.ensure_shape(wav, [None])
    else:

        def decode(path):  # noqa: ANN001, ANN202
            wav, _ = tf.audio.decode_wav(tf.io.read_file(path), desired_channels=1)
            return wav[:, 0]

    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch, drop_remainder=False)  # equal-length clips: one STFT per batch
    ds = ds.map(audio.log_mel, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(2)


def run_tfdata(paths: list[str], batch: int, via_soundfile: bool) -> tuple[float, int, float]:
    """(seconds, clips) of the steady state, and the start-up latency (first batch).

    A training pipeline runs for hours, so its throughput is the steady state: the clock
    starts when the first batch arrives (graph tracing, thread pools and the first fill of
    the prefetch buffers are reported separately as start-up).
    """
    n = 0
    t0 = time.perf_counter()
    it = tfdata_dataset(paths, batch, via_soundfile).as_numpy_iterator()
    first = next(it)
    start = time.perf_counter()
    for lms_BFT in it:
        assert lms_BFT.shape[1] == audio.N_MELS and np.isfinite(lms_BFT).all()
        n += lms_BFT.shape[0]
    assert np.isfinite(first).all()
    return time.perf_counter() - start, n, start - t0


def librosa_log_mel(y: np.ndarray) -> np.ndarray:
    import librosa

    m = librosa.feature.melspectrogram(
        y=y, sr=audio.SAMPLE_RATE, n_fft=audio.N_FFT, hop_length=audio.HOP_LENGTH,
        win_length=audio.WIN_LENGTH, window="hann", center=True, pad_mode="reflect", power=2.0,
        n_mels=audio.N_MELS, fmin=audio.FMIN, fmax=audio.FMAX, htk=False, norm="slaney",
    )  # fmt: skip
    return np.log(m + audio.LOG_OFFSET).astype(np.float32)


def run_librosa(paths: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    for path in paths:
        y, _ = sf.read(path, dtype="float32")
        lms_FT = librosa_log_mel(y)
        assert np.isfinite(lms_FT).all()
    return time.perf_counter() - start, len(paths)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clips", type=int, default=96, help="distinct 10 s clips (WAV files)")
    p.add_argument("--passes", type=int, default=4, help="times each arm reads every clip")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="TF thread pools")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per arm; best is kept")
    p.add_argument("--json", type=str, default="", help="write the numbers to this file")
    args = p.parse_args(argv)

    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="msm_mae_bench_") as tmp:
        paths = write_clips(pathlib.Path(tmp), args.clips, args.seconds, seed=0)
        # Warm-up: numba compilation in librosa, tf.function tracing, page cache.
        run_librosa(paths[:2])
        run_tfdata(paths[: 2 * args.batch], args.batch, via_soundfile=False)
        run_tfdata(paths[: 2 * args.batch], args.batch, via_soundfile=True)
        stream = paths * args.passes
        # Same clips, same output for every arm; check before timing.
        y, _ = sf.read(paths[0], dtype="float32")
        first = next(tfdata_dataset(paths[:1], 1, False).as_numpy_iterator())[0]
        max_diff = float(np.abs(first - librosa_log_mel(y)).max())

        best = {"tfdata": np.inf, "tfdata_wav": np.inf, "librosa": np.inf}
        startup = []
        for _ in range(args.repeats):  # interleaved, so load changes hit all arms alike
            t, n, t_first = run_tfdata(stream, args.batch, via_soundfile=True)
            best["tfdata"] = min(best["tfdata"], t / n)
            startup.append(t_first)
            t, n, _ = run_tfdata(stream, args.batch, via_soundfile=False)
            best["tfdata_wav"] = min(best["tfdata_wav"], t / n)
            t, n = run_librosa(stream)
            best["librosa"] = min(best["librosa"], t / n)

    result = {
        "tfdata_clips_per_s": 1.0 / best["tfdata"],
        "tfdata_decode_wav_clips_per_s": 1.0 / best["tfdata_wav"],
        "librosa_clips_per_s": 1.0 / best["librosa"],
    }
    result["ratio"] = result["tfdata_clips_per_s"] / result["librosa_clips_per_s"]
    result["ratio_decode_wav"] = (
        result["tfdata_decode_wav_clips_per_s"] / result["librosa_clips_per_s"]
    )
    result.update(
        clips=args.clips, passes=args.passes, tfdata_startup_s=float(np.median(startup)),
        seconds=args.seconds, batch=args.batch, threads=args.threads,
        cpus=os.cpu_count(), max_abs_diff_vs_librosa=max_diff, load_avg=os.getloadavg()[0],
    )  # fmt: skip
    r = result
    print(
        f"{args.clips} clips of {args.seconds:g} s x {args.passes} passes, batch {args.batch}, "
        f"{args.threads} TF threads,"
        f" {os.cpu_count()} CPUs (load avg {result['load_avg']:.2f})\n"
        f"  tf.data (audio_io.load_audio):    {r['tfdata_clips_per_s']:8.1f} clips/s "
        f"(steady state; start-up {r['tfdata_startup_s']:.2f} s)\n"
        f"  tf.data (tf.audio.decode_wav):    {r['tfdata_decode_wav_clips_per_s']:8.1f} clips/s\n"
        f"  librosa loop (soundfile.read):    {result['librosa_clips_per_s']:8.1f} clips/s\n"
        f"  ratio tf.data / librosa:          {result['ratio']:8.2f}x"
        f"  (with decode_wav: {r['ratio_decode_wav']:.2f}x)\n"
        f"  max |log-mel difference| vs librosa on clip 0: {max_diff:.2e}"
    )
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
