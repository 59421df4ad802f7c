"""Independent references shared by the tests (written from REFERENCE.md, not from the package)."""

import math

import librosa
import numpy as np

LOG_OFFSET = 1.1920929e-07  # float32 machine epsilon, as the official front end


def librosa_log_mel(y: np.ndarray, sr: int = 16000) -> np.ndarray:
    """The official log-mel spelled out with librosa: [80, 1 + len(y) // 160], float64."""
    m = librosa.feature.melspectrogram(
        y=y, sr=sr, n_fft=400, hop_length=160, win_length=400, window="hann", center=True,
        pad_mode="reflect", power=2.0, n_mels=80, fmin=50, fmax=8000, htk=False, norm="slaney",
    )  # fmt: skip
    return np.log(m + LOG_OFFSET)


def sincos_2d_table(D: int, gf: int, gt: int, cls: bool) -> np.ndarray:
    """MAE's 2-D sin-cos table, loop by loop: row f*gt + t (after a zero [CLS] row); channels
    [0, D/2) encode t, [D/2, D) encode f; each half is [sin(pos * w_k)]_k ++ [cos(pos * w_k)]_k,
    w_k = 1 / 10000^(k / (D/4)). float64 [gf*gt (+1), D]."""
    rows = [[0.0] * D] if cls else []
    q = D // 4
    for f in range(gf):
        for t in range(gt):
            row = []
            for pos in (t, f):
                row += [math.sin(pos / 10000 ** (k / q)) for k in range(q)]
                row += [math.cos(pos / 10000 ** (k / q)) for k in range(q)]
            rows.append(row)
    return np.array(rows)


def sinusoid_1d_table(D: int, n: int, cls: bool) -> np.ndarray:
    """The decoder's interleaved 1-D table, loop by loop: angle(p, j) = p / 10000^(2*(j//2)/D),
    sin at even j, cos at odd j (after a zero [CLS] row). float64 [n (+1), D]."""
    rows = [[0.0] * D] if cls else []
    for p in range(n):
        row = []
        for j in range(D):
            angle = p / 10000 ** (2 * (j // 2) / D)
            row.append(math.sin(angle) if j % 2 == 0 else math.cos(angle))
        rows.append(row)
    return np.array(rows)
