"""A local TFDS builder over a folder of audio files (offline `tfds:` sources and tests).

    root/<split>/**/<file>   (splits = sub-directories named train/validation/test/...)
    root/**/<file>           (no split folders: everything is 'train')

Each example: `audio` (float32 mono at `sample_rate`, read with `audio_io.load_audio`),
`label` (class index; the class is the file's parent folder name, or with `label_from='prefix'`
the part of the file name before the first '_', as in FSDD's `7_jackson_32.wav`) and `path`.
Unusable files are skipped with a warning. Build it once, then read it like any TFDS dataset:

    build_audio_folder(root, data_dir)                # download_and_prepare, no network
    training config: data.source = 'tfds:audio_folder:train', data.tfds_data_dir = data_dir
    evaluation task: parse_task('tfds:audio_folder', tfds_data_dir=data_dir)
"""

from __future__ import annotations

import logging
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from msm_mae_jax.data import audio_io

log = logging.getLogger(__name__)
SPLIT_NAMES = ("train", "validation", "valid", "test")


def _label_of(root: str, path: str, label_from: str) -> str:
    if label_from == "prefix":
        return os.path.basename(path).split("_")[0]
    return os.path.basename(os.path.dirname(path)) or os.path.basename(root)


def _scan(root: str) -> dict[str, list[str]]:
    """split -> sorted audio files."""
    subdirs = [d for d in SPLIT_NAMES if os.path.isdir(os.path.join(root, d))]
    split_dirs = {d: os.path.join(root, d) for d in subdirs} or {"train": root}
    out = {}
    for split, d in split_dirs.items():
        files = []
        for dirpath, dirnames, filenames in os.walk(d):
            dirnames.sort()
            files += [os.path.join(dirpath, f) for f in filenames if audio_io.is_audio_file(f)]
        out[split] = sorted(files)
    return out


class AudioFolder(tfds.core.GeneratorBasedBuilder):
    """Audio files of a local folder as a TFDS dataset."""

    # tfds derives this from the package via importlib_resources (not a dependency here).
    code_path = epath.Path(__file__)
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def __init__(
        self,
        *,
        root_dir: str | None = None,
        sample_rate: int = 16000,
        label_from: str = "parent",
        **kwargs,
    ):
        if label_from not in ("parent", "prefix"):
            raise ValueError(f"label_from={label_from!r}; expected 'parent' or 'prefix'")
        self._root_dir = root_dir
        self._sample_rate = int(sample_rate)
        self._label_from = label_from
        self._class_names: list[str] | None = None
        if root_dir is not None:
            files = [f for fs in _scan(root_dir).values() for f in fs]
            if not files:
                raise ValueError(f"{root_dir}: no audio files to build a dataset from")
            self._class_names = sorted({_label_of(root_dir, f, label_from) for f in files})
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        # Reading a prepared dataset restores class names from the stored metadata.
        label = (
            tfds.features.ClassLabel(names=self._class_names)
            if self._class_names
            else tfds.features.ClassLabel(num_classes=1)
        )
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "audio": tfds.features.Audio(
                        shape=(None,), dtype=np.float32, sample_rate=self._sample_rate
                    ),
                    "label": label,
                    "path": tfds.features.Text(),
                }
            ),
            supervised_keys=("audio", "label"),
        )

    def _split_generators(self, dl_manager):  # noqa: ANN001, ANN202
        if self._root_dir is None:
            raise ValueError("AudioFolder needs root_dir to be built")
        return {
            split: self._generate_examples(files) for split, files in _scan(self._root_dir).items()
        }

    def _generate_examples(self, files: list[str]):  # noqa: ANN202
        for path in files:
            try:
                wav = audio_io.load_audio(path, sr=self._sample_rate)
            except audio_io.AudioError as e:
                log.warning("skipping %s", e)
                continue
            rel = os.path.relpath(path, self._root_dir)
            yield (
                rel,
                {
                    "audio": wav,
                    "label": _label_of(self._root_dir, path, self._label_from),
                    "path": rel,
                },
            )


def build_audio_folder(
    root_dir: str, data_dir: str, *, sample_rate: int = 16000, label_from: str = "parent"
) -> AudioFolder:
    """Builds (download_and_prepare, offline) the folder's dataset into data_dir."""
    builder = AudioFolder(
        root_dir=root_dir, sample_rate=sample_rate, label_from=label_from, data_dir=data_dir
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    return builder
