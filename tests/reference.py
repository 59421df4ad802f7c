"""Independent references shared by the tests (written from REFERENCE.md, not from the package)."""

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
