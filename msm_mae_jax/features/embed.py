"""Embeddings of audio files: files, folders and globs -> scene (and frame) embeddings.

    items = find_audio(["clips/", "more/*.flac", "one.wav"])
    result = embed_files(Runtime.load("runs/base"), items, frames=True)
    save_npz(result, "embeddings.npz")

Any format soundfile reads, any rate and channel count (`audio_io.load_audio`: mono, 16 kHz).
Files are sorted by duration (from their headers) and encoded in batches of similar length,
so the runtime compiles a bounded number of functions and pads little. A file longer than
the runtime's chunk (33 s for 80x208 models) that is alone in its batch is read block by block
(`audio_io.iter_blocks`, `Runtime.stream_features`): a recording of any length is embedded in
the memory of one chunk, with the features of the whole file in one piece. A file that cannot be
read is skipped and reported with its reason, never fatal; no usable file at all is a
DataError. The .npz layout (`save_npz`):

    paths [N] str, scene float32 [N, D]: one row per embedded file, in input order
    skipped_paths [K] str, skipped_reasons [K] str
    with frames: frames float32 [sum T_i, D], timestamps_ms float32 [sum T_i],
    frame_offsets int64 [N + 1] (file i: frames[frame_offsets[i]:frame_offsets[i + 1]])

Shape letters: N files, T time steps, D width.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import glob
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from msm_mae_jax.core import fs, outputs, paths
from msm_mae_jax.core.errors import DataError
from msm_mae_jax.data import audio, audio_io


@dataclasses.dataclass
class Embeddings:
    """Embeddings of the usable files (input order) and what was skipped."""

    paths: list[str]
    scene_ND: np.ndarray
    frames: list[np.ndarray] | None = None  # [T_i, D] per file
    timestamps_ms: list[np.ndarray] | None = None  # [T_i] per file
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (path, reason)

    def arrays(self) -> dict[str, np.ndarray]:
        """The .npz contents (module docstring)."""
        out = {
            "paths": np.array(self.paths, dtype=str),
            "scene": np.asarray(self.scene_ND, np.float32),
            "skipped_paths": np.array([p for p, _ in self.skipped], dtype=str),
            "skipped_reasons": np.array([r for _, r in self.skipped], dtype=str),
        }
        if self.frames is not None:
            lengths = [len(f) for f in self.frames]
            out["frames"] = np.concatenate(self.frames).astype(np.float32)
            out["frame_offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            out["timestamps_ms"] = np.concatenate(self.timestamps_ms).astype(np.float32)
        return out


def find_audio(inputs: Sequence[str]) -> list[tuple[str, str]]:
    """(path to read, name to report) of every input file, in order, without duplicates.

    A file is taken as given (whatever its extension); a folder is searched recursively for
    audio extensions, its files named relative to it; a glob's matches are taken as the glob
    returns them (audio extensions only; matched folders are searched). DataError naming an
    input that matches nothing.
    """
    items: list[tuple[str, str]] = []
    seen: set[str] = set()
    for arg in inputs:
        if fs.isfile(arg) or paths.not_regular(arg):  # a FIFO given by name: skipped when read
            found = [(arg, arg)]
        elif fs.isdir(arg):
            found = [(p, fs.relpath(p, arg)) for p in _audio_under(arg)]
        elif glob.has_magic(arg):
            found = []
            for m in fs.glob(arg):
                if fs.isdir(m):
                    found += [(p, p) for p in _audio_under(m)]
                elif audio_io.is_audio_file(m):
                    found.append((m, m))
        else:
            raise DataError(f"{arg}: no such file or folder")
        if not found:
            raise DataError(
                f"{arg}: no audio file found (extensions: "
                f"{', '.join(sorted(audio_io.AUDIO_EXTENSIONS))})"
            )
        for path, name in found:
            key = path if fs.is_remote(path) else os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                items.append((path, name))
    names = [n for _, n in items]
    if len(set(names)) < len(names):  # two folders with the same relative file: full paths
        dup = {n for n in names if names.count(n) > 1}
        items = [(p, p if n in dup else n) for p, n in items]
    return items


def _audio_under(folder: str) -> list[str]:
    if fs.is_remote(folder):
        return [p for p in fs.walk_files(folder) if audio_io.is_audio_file(p)]
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        found += [os.path.join(dirpath, f) for f in sorted(filenames) if audio_io.is_audio_file(f)]
    return found


def plan_batches(
    frames_N: Sequence[int], unit_frames: int, batch_size: int, max_units: int
) -> list[list[int]]:
    """Indices into frames_N, shortest first, in batches of at most `batch_size` clips whose
    padded work (clips x units of the longest) stays within `max_units` (one clip at least)."""
    order = sorted(range(len(frames_N)), key=lambda i: frames_N[i])
    batches: list[list[int]] = []
    for i in order:
        units = -(-int(frames_N[i]) // unit_frames)
        last = batches[-1] if batches else None
        if last and len(last) < batch_size and (len(last) + 1) * units <= max_units:
            last.append(i)
        else:
            batches.append([i])
    return batches


def embed_files(
    runtime: Any,
    items: Sequence[tuple[str, str]],
    *,
    frames: bool = False,
    batch_size: int = 32,
    max_units: int = 0,
    normalization: Any = "default",
    progress: bool = True,
    workers: int = 4,
) -> Embeddings:
    """Embeds (path, name) items (`find_audio`) with a `Runtime`; bad files are skipped.

    max_units: most encoder units (input widths) per call, 0: 8 per clip of `batch_size`.
    With 'batch' normalisation each batch is normalised by its own statistics.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    max_units = max_units or 8 * batch_size
    skipped: dict[int, str] = {}
    length: dict[int, int] = {}  # item -> log-mel frames at 16 kHz, from the header
    for i, (path, _) in enumerate(items):
        try:
            info = audio_io.audio_info(path)
            length[i] = audio.num_frames(round(info.seconds * audio.SAMPLE_RATE))
        except audio_io.AudioError as e:
            skipped[i] = str(e)
    keys = list(length)
    plan = plan_batches([length[k] for k in keys], runtime.unit_frames, batch_size, max_units)
    batches = [[keys[j] for j in b] for b in plan]
    # item -> (scene [D], frames [T, D] and timestamps [T] when asked for, else None)
    results: dict[int, tuple[np.ndarray, Any, Any]] = {}
    bar = tqdm(total=len(items), unit="file", file=sys.stderr, disable=not progress)
    bar.update(len(skipped))
    # A file alone in its batch and longer than a chunk is read block by block (its memory
    # does not grow with its length); the others are read whole, a batch ahead.
    streamed = {b[0] for b in batches if len(b) == 1 and length[b[0]] > runtime.chunk_frames}
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:

        def submit(batch: list[int]) -> list[concurrent.futures.Future]:
            if batch[0] in streamed:
                return []
            return [pool.submit(audio_io.load_audio, items[i][0]) for i in batch]

        pending = submit(batches[0]) if batches else []
        for k, batch in enumerate(batches):
            futures, pending = pending, submit(batches[k + 1]) if k + 1 < len(batches) else []
            if batch[0] in streamed:
                try:
                    results[batch[0]] = _embed_stream(
                        runtime, items[batch[0]][0], frames, normalization
                    )
                except audio_io.AudioError as e:
                    skipped[batch[0]] = str(e)
                bar.update(1)
                continue
            wavs, ok = [], []
            for i, fut in zip(batch, futures, strict=True):
                try:
                    wavs.append(fut.result())
                    ok.append(i)
                except audio_io.AudioError as e:
                    skipped[i] = str(e)
            if wavs:
                feats, ts = runtime.timestamp_embeddings(wavs, normalization=normalization)
                for i, f, t in zip(ok, feats, ts, strict=True):
                    results[i] = (f.mean(axis=0), f if frames else None, t if frames else None)
            bar.update(len(batch))
    bar.close()
    if not results:
        reasons = "; ".join(list(skipped.values())[:3])
        raise DataError(f"none of the {len(items)} input file(s) is usable audio: {reasons}")
    done = sorted(results)
    return Embeddings(
        paths=[items[i][1] for i in done],
        scene_ND=np.stack([results[i][0] for i in done]).astype(np.float32),
        frames=[results[i][1] for i in done] if frames else None,
        timestamps_ms=[results[i][2] for i in done] if frames else None,
        skipped=[(items[i][1], skipped[i]) for i in sorted(skipped)],
    )


def _embed_stream(
    runtime: Any, path: str, frames: bool, normalization: Any
) -> tuple[np.ndarray, Any, Any]:
    """(scene, frames, timestamps) of one long file read block by block."""
    from msm_mae_jax.features.clips import patch_timestamps_ms

    out = runtime.stream_features(lambda: audio_io.iter_blocks(path), normalization, frames)
    if not frames:
        return out.scene, None, None
    ts = patch_timestamps_ms(out.samples, audio.SAMPLE_RATE, len(out.frames), runtime.model_config)
    return out.scene, out.frames, ts


def save_npz(result: Embeddings, out: str | os.PathLike) -> str:
    """Writes `result.arrays()` to `out` (a local path or a URL): beside, then swapped in
    (`core.outputs.writing`)."""
    out = os.fspath(out)
    with outputs.writing(out, "wb") as f:
        np.savez(f, **result.arrays())
    return out
