"""Audio files cut short (an interrupted download or copy): the header promises more samples
than the file holds.

Such a file is read as far as it goes, with a warning naming it (once per file and process):
the samples that are there are real audio, and this is what the reference pipelines do
(soundfile and librosa, which EVAR and the official code read with, return them without a
word), so numbers stay comparable with theirs; the warning says which files to fetch again.
libsndfile hides a cut WAV (it shortens the frame count to what is there), so the WAV header's
own data size is read here (`wav_declared_frames`); a cut FLAC reads until its decoder loses
sync, and `read_what_decodes` keeps the frames decoded before that.
"""

from __future__ import annotations

import logging
import struct
import threading

import numpy as np

log = logging.getLogger("msm_mae_jax.data.audio_io")

BLOCK = 4096  # frames per read when salvaging a file whose decoder fails part-way
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # streaming writers' "length not known" data sizes
_WARNED: set[str] = set()
_LOCK = threading.Lock()


def wav_declared_frames(path: str) -> int | None:
    """The frames a local RIFF/WAVE file's header promises (its data chunk's size over the
    frame size), or None: not a WAV, a URL, a size left open, or a header that cannot be read
    (libsndfile then says what is wrong)."""
    if "://" in path:
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(64 * 1024)
    except OSError:
        return None
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, block_align = 12, 0
    while pos + 8 <= len(head):
        cid, size = head[pos : pos + 4], struct.unpack("<I", head[pos + 4 : pos + 8])[0]
        if cid == b"fmt " and pos + 22 <= len(head):
            block_align = struct.unpack("<H", head[pos + 20 : pos + 22])[0]
        elif cid == b"data":
            if size in _UNKNOWN_SIZES or block_align <= 0:
                return None
            return size // block_align
        pos += 8 + size + (size & 1)
    return None


def warn_cut(name: str, got: int, declared: int, samplerate: int) -> None:
    """The warning for a file cut short (once per file in a process)."""
    with _LOCK:
        if name in _WARNED:
            return
        _WARNED.add(name)
    log.warning(
        "%s: cut short: %d of the %d samples its header promises are there (%.2f of %.2f s); "
        "using those (an interrupted download or copy? fetch it again)",
        name,
        got,
        declared,
        got / samplerate,
        declared / samplerate,
    )


def read_what_decodes(f, count: int, errors: tuple, start: int) -> np.ndarray:  # noqa: ANN001
    """float32 [n <= count, C]: the frames from `start` of the SoundFile `f` that decode, read
    block by block until the decoder fails or the file ends (none when it cannot even seek
    there)."""
    blocks, got = [], 0
    try:
        f.seek(start)
    except errors:
        return np.zeros((0, f.channels), np.float32)
    while got < count:
        try:
            block = f.read(min(BLOCK, count - got), dtype="float32", always_2d=True)
        except errors:
            break
        if not block.shape[0]:
            break
        blocks.append(block)
        got += block.shape[0]
    if not blocks:
        return np.zeros((0, f.channels), np.float32)
    return np.concatenate(blocks)


def read(f, name: str, start: int, count: int, frames: int, sr: int, errors: tuple) -> np.ndarray:  # noqa: ANN001
    """float32 [<= count, C] from `start` of the open SoundFile `f` (`frames` in its header
    as libsndfile reports it): all `count` frames of a whole file; what is there of a file cut
    short, with the warning. A read that fails part-way keeps what decoded before the
    failure; one that decodes nothing raises the read error."""
    declared = wav_declared_frames(name) or frames  # libsndfile hides a cut WAV's true size
    try:
        data_SC = f.read(count, dtype="float32", always_2d=True)
    except errors as e:  # a cut FLAC: its decoder loses sync where the data ends
        data_SC = read_what_decodes(f, count, errors, start)
        if not data_SC.shape[0]:
            raise e from None
        warn_cut(name, start + data_SC.shape[0], declared, sr)
        return data_SC
    if declared > frames or data_SC.shape[0] < count:
        warn_cut(name, min(frames, start + data_SC.shape[0]), declared, sr)
    return data_SC
