"""A stand-in for the FSDD recordings, written from the synthetic generator.

Same layout as FSDD: 8 kHz mono 16-bit WAVs named `{label}_{speaker}_{take}.wav`, the same six
speakers, labels "0".."5" (the generator's six classes; FSDD has digits 0-9) and takes 0..14
(FSDD: 0..49). Clip durations vary (0.3-0.7 s, FSDD: 0.2-2.2 s), so clips of one folder differ
in length as recordings do. Tests pick names that exist in both corpora.
"""

import pathlib

import numpy as np
import soundfile as sf
import soxr

from msm_mae_jax.data import synthetic

SAMPLE_RATE = 8000
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
LABELS = tuple(str(c) for c in range(synthetic.num_classes()))
TAKES = range(15)


def write(root: pathlib.Path) -> pathlib.Path:
    """Writes the stand-in corpus into `root` (540 clips, 4.5 MB); returns `root`."""
    root.mkdir(parents=True, exist_ok=True)
    for s, speaker in enumerate(SPEAKERS):
        for take in TAKES:
            for label in LABELS:
                index = take * len(LABELS) + int(label)  # the generator's class is index % 6
                seconds = np.random.default_rng((s, take, int(label))).uniform(0.3, 0.7)
                wav, y = synthetic.make_clip(index, seed=100 + s, seconds=seconds)
                assert synthetic.CLASS_NAMES[y] == synthetic.CLASS_NAMES[int(label)]
                wav8k = soxr.resample(wav, synthetic.SAMPLE_RATE, SAMPLE_RATE)
                sf.write(root / f"{label}_{speaker}_{take}.wav", wav8k, SAMPLE_RATE, "PCM_16")
    return root
