"""TensorFlow Datasets audio as a data source: training shards per host, ordered clips for tasks.

`tfds:name[:version]:split` for training; evaluation tasks open several splits of a dataset
(concatenated in the given order). Integer PCM is scaled to [-1, 1) (/32768 for int16, as
soundfile reads PCM files), channels are averaged and the rate converted to 16 kHz with soxr.
Training crops a window of each clip (`crops.py`) drawn from (seed, process, local position).
A clip shorter than one hop or with NaN/Inf samples is skipped and counted in training; in
evaluation an empty or non-finite clip is an `AudioError` naming it (a labelled clip cannot
silently disappear).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from msm_mae_jax.core.errors import DataError
from msm_mae_jax.data import audio, audio_io, crops
from msm_mae_jax.data.source_base import (
    BIG,
    AudioSource,
    SkipReport,
    SourceSpec,
    epoch_seed,
    mix_seed,
)
from msm_mae_jax.data.tf_setup import plain, tensorflow

_INT_SCALE = {np.int16: 1 / 32768, np.int32: 1 / 2**31, np.int64: 1 / 2**31}


def _problem(wav: np.ndarray, min_samples: int) -> str:
    """Why a decoded clip cannot be used ('' when it can)."""
    if wav.size < max(min_samples, 1):
        return f"too short ({wav.size} samples)"
    if not np.isfinite(wav).all():
        return "NaN/Inf sample values"
    return ""


class TfdsSource(AudioSource):
    """The audio feature of a TFDS dataset's splits, read in order (clip i over the splits)."""

    def __init__(
        self,
        name: str,
        splits: Sequence[str],
        *,
        audio_key: str = "audio",
        sample_rate: int = 0,
        data_dir: str | None = None,
        shuffle_buffer: int = 2048,
        spec: str = "",
    ):
        tensorflow()  # GPUs hidden before tfds touches TF
        import tensorflow_datasets as tfds

        from msm_mae_jax.data import tfds_audio_folder  # noqa: F401 (registers 'audio_folder')

        self.dataset, self.splits = name, list(splits)
        self.spec = spec or f"tfds:{name}"
        self.audio_key, self.data_dir = audio_key, data_dir or None
        self.shuffle_buffer = int(shuffle_buffer)
        self.report = SkipReport(self.spec)
        try:
            self._builder = tfds.builder(name, data_dir=self.data_dir)
        except Exception as e:  # tfds raises several types for unknown or unprepared datasets
            raise DataError(f"data source {self.spec!r}: cannot open TFDS dataset ({e})") from e
        self.info = self._builder.info
        features = self.info.features
        if audio_key not in features:
            raise DataError(
                f"data source {self.spec!r}: no audio feature {audio_key!r}; "
                f"features: {sorted(features.keys())}"
            )
        rate = int(sample_rate) or int(getattr(features[audio_key], "sample_rate", 0) or 0)
        if rate <= 0:
            raise DataError(
                f"data source {self.spec!r}: the sample rate of {audio_key!r} is unknown; "
                "set config.data.tfds_sample_rate"
            )
        self.sample_rate = rate
        self._scale = _INT_SCALE.get(np.dtype(features[audio_key].np_dtype).type, 1.0)
        self.counts = [self._split_size(s) for s in self.splits]

    @classmethod
    def from_spec(cls, spec: SourceSpec, data_config: Any) -> TfdsSource:
        return cls(
            spec.name,
            [spec.split],
            audio_key=data_config.tfds_audio_key,
            sample_rate=int(data_config.tfds_sample_rate),
            data_dir=data_config.tfds_data_dir or None,
            shuffle_buffer=int(data_config.shuffle_buffer),
            spec=spec.spec,
        )

    def _split_size(self, split: str, host: int = 0) -> int:
        try:
            n = int(self.info.splits[split].num_examples)
        except Exception as e:  # unknown split names and bad slices raise several types
            raise DataError(f"data source {self.spec!r}: cannot read split {split!r} ({e})") from e
        if n == 0:
            raise DataError(f"data source {self.spec!r}: split {split!r} is empty on host {host}")
        return n

    def _read(self, split: str, decoders: dict | None = None) -> Any:
        try:
            return self._builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
        except Exception as e:
            raise DataError(f"data source {self.spec!r}: cannot read split {split!r} ({e})") from e

    def _mono(self, ex: dict) -> Any:
        """tf: the example's audio as float32 mono at the dataset's rate."""
        tf = tensorflow()
        wav = tf.cast(ex[self.audio_key], tf.float32)
        if self._scale != 1.0:
            wav = wav * self._scale
        if wav.shape.rank == 2:  # [S, C] -> mono
            wav = tf.reduce_mean(wav, axis=-1)
        return wav

    # ---- training ------------------------------------------------------------------------------

    @property
    def total_examples(self) -> int:
        return sum(self.counts)

    def _host_split(self, p: int, n: int) -> str:
        import tensorflow_datasets as tfds

        split = "+".join(self.splits)
        return tfds.even_splits(split, n=n)[p] if n > 1 else split

    def num_examples_per_process(self, process_count: int) -> list[int]:
        return [
            self._split_size(self._host_split(p, process_count), p) for p in range(process_count)
        ]

    def batches(
        self,
        *,
        seed: int,
        process_index: int,
        process_count: int,
        local_batch: int,
        start_step: int,
        frames: int,
    ) -> Any:
        tf = tensorflow()
        split = self._host_split(process_index, process_count)
        n_local = self._split_size(split, process_index)
        base = self._read(split)
        host_seed = mix_seed(seed, process_index, 1)
        crop_seed = mix_seed(seed, process_index, 2)
        buf, sr, report, spec = self.shuffle_buffer, self.sample_rate, self.report, self.spec
        min_samples = audio.HOP_LENGTH * sr // audio.SAMPLE_RATE
        width = crops.window_samples(frames)

        def crop(wav, pos) -> tuple[np.ndarray, np.int32, bool]:  # noqa: ANN001
            wav = np.asarray(wav, np.float32)
            problem = _problem(wav, min_samples)
            if problem:
                where = f"{spec} example at position {int(pos)}"
                report.add(where, f"{where}: {problem}")
                return np.zeros(width, np.float32), np.int32(0), False
            wav = audio_io.resample(wav, sr, audio.SAMPLE_RATE)
            window = np.zeros(width, np.float32)
            n = crops.window_of_wave(wav, float(crops.uniform(crop_seed, pos)), window)
            return window, np.int32(n), True

        def load(p, ex):  # noqa: ANN001, ANN202
            window, n, ok = tf.numpy_function(
                crop, [self._mono(ex), p], (tf.float32, tf.int32, tf.bool), stateful=False
            )
            window.set_shape([width])
            n.set_shape([])
            ok.set_shape([])
            return window, n, ok

        def epoch(e):  # noqa: ANN001, ANN202
            return base.shuffle(buf, seed=epoch_seed(host_seed, e), reshuffle_each_iteration=False)

        start = start_step * local_batch
        epoch0, offset = divmod(start, n_local)
        recs = tf.data.Dataset.range(epoch0, BIG).flat_map(plain(epoch)).skip(offset)
        pos = tf.data.Dataset.range(start, BIG)
        ds = tf.data.Dataset.zip(pos, recs).map(plain(load), tf.data.AUTOTUNE)
        ds = ds.filter(plain(lambda w, n, ok: ok)).batch(local_batch, drop_remainder=True)
        return ds.map(plain(lambda w, n, ok: {"wav": w, "frames": n}))

    # ---- evaluation ----------------------------------------------------------------------------

    def name(self, i: int) -> str:
        for split, count in zip(self.splits, self.counts, strict=True):
            if i < count:
                return f"tfds:{self.dataset} {split}[{i}]"
            i -= count
        return f"tfds:{self.dataset} [{i}]"

    def _waves(self) -> Iterator[np.ndarray]:
        for split in self.splits:
            yield from self._read(split).map(plain(self._mono)).as_numpy_iterator()

    def iterate(
        self, indices: Sequence[int], max_seconds: float | None = None
    ) -> Iterator[np.ndarray]:
        """One pass over the splits: `indices` must increase."""
        wanted = np.asarray(indices)
        if np.any(np.diff(wanted) <= 0):
            raise ValueError("TfdsSource.iterate needs increasing indices (one pass in order)")
        pos = 0
        for i, wav in enumerate(self._waves()):
            if pos == len(wanted):
                return
            if i != wanted[pos]:
                continue
            pos += 1
            if max_seconds is not None:
                wav = wav[: int(round(max_seconds * self.sample_rate))]
            problem = _problem(wav, 1)
            if problem:
                raise audio_io.AudioError(f"{self.name(i)}: {problem}")
            yield audio_io.resample(wav, self.sample_rate, audio.SAMPLE_RATE)

    def feature_values(self, key: str) -> list:
        """Values of a scalar feature of every clip, in clip order (the audio is not decoded)."""
        import tensorflow_datasets as tfds

        skip = {self.audio_key: tfds.decode.SkipDecoding()}
        values = []
        for split in self.splits:
            ds = self._read(split, decoders=skip).map(plain(lambda e: e[key]))
            values += [np.asarray(v).item() for v in ds.as_numpy_iterator()]
        return values

    def identity(self) -> str:
        return f"tfds:{self.dataset}:{','.join(self.splits)}:{self.data_dir or ''}"
