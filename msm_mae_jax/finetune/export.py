"""The fine-tuned model on disk: the encoder artifact `Runtime.load` reads, the head beside it.

    DIR/msm_mae.json, DIR/encoder/   the encoder artifact (`model.artifact`), its metadata
                                     extended with a "finetune" entry (task, classes, head)
    DIR/head.npz                     the head's parameters ('norm/scale', 'fc/kernel', ...),
                                     written and checksummed as part of the artifact

`load(DIR)` gives a `FinetunedModel` whose `logits(wavs)` run the whole clips through the
same path as the fine-tuning evaluation (log-mel, the stored normalisation, units, pooling,
head); `Runtime.load(DIR)` gives the encoder's features as for any exported model.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.finetune import data, model
from msm_mae_jax.model import artifact
from msm_mae_jax.model.config import ModelConfig

HEAD_FILE = "head.npz"


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = np.asarray(v, np.float32)
    return out


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for k, v in flat.items():
        node = tree
        *parents, leaf = k.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = np.asarray(v)
    return tree


def save(path: str, job, params: Any, extra: dict | None = None) -> str:
    """Writes the fine-tuned encoder (float32, the artifact format) and head; returns path."""
    c, task = job.config, job.task
    mc = job.model_config.replace(dtype="float32", remat=False)
    head = model.HeadConfig.from_config(c.head, task.num_classes, mc)
    info = {
        "task": task.spec,
        "label": task.label,
        "classes": list(task.class_names),
        "multilabel": bool(task.multilabel),
        "head": dataclasses.asdict(head),
        "source": job.source,
        "unit_sec": job.store.unit_sec,
        **(extra or {}),
    }
    head = io.BytesIO()
    np.savez(head, **_flatten(params["head"]))
    # One artifact with the head inside: a rewrite replaces both at once, never one of them.
    return artifact.save_model_dir(
        path,
        mc,
        params["encoder"],
        job.stats,
        source=job.source,
        extra={"finetune": info},
        files={HEAD_FILE: head.getvalue()},
    )


@dataclasses.dataclass
class FinetunedModel:
    """A fine-tuned classifier: `logits(wav_BS)` / `predict(wav_BS)` on 16 kHz waveforms."""

    model_config: ModelConfig
    head: model.HeadConfig
    params: dict  # {'encoder', 'head'}
    norm_stats: NormStats
    classes: list[str]
    multilabel: bool
    meta: dict

    def logits(self, wavs, batch_size: int = 16) -> np.ndarray:
        """Whole clips (a list of 1-D float waveforms, any lengths, or [B, S]) -> [B, C]."""
        wavs = [np.asarray(w, np.float32) for w in wavs]
        unit_sec = float(self.meta["finetune"].get("unit_sec") or 0.0)
        if unit_sec > 0:  # the clips were fitted to this length in fine-tuning
            wavs = [data.fit_length(w, int(round(unit_sec * 16000))) for w in wavs]
        store = data.ClipStore(data.log_mels(wavs), unit_sec)
        out = np.zeros((len(store.lms), self.head.num_classes), np.float32)
        fu = self.model_config.input_size[1]
        for pos, x, valid in data.eval_batches(
            store, np.arange(len(store.lms)), batch_size, fu, self.norm_stats
        ):
            out[pos] = np.asarray(_logits(self.params, x, valid, self.model_config, self.head))[
                : len(pos)
            ]
        return out

    def predict(self, wavs) -> np.ndarray:
        """Class probabilities [B, C] (softmax, or sigmoid when multi-label)."""
        lg = jnp.asarray(self.logits(wavs))
        return np.asarray(jax.nn.sigmoid(lg) if self.multilabel else jax.nn.softmax(lg, -1))


_logits = jax.jit(model.logits, static_argnames=("mc", "head"))


def load(path: str) -> FinetunedModel:
    """Reads a directory written by `save`."""
    mc, enc, stats, meta = artifact.load_model_dir(path)
    info = meta.get("finetune")
    head_path = os.path.join(path, HEAD_FILE)
    if info is None or not os.path.isfile(head_path):
        raise FileNotFoundError(f"{path}: not a fine-tuned model (no {HEAD_FILE} / finetune meta)")
    with np.load(io.BytesIO(artifact.read_file(path, HEAD_FILE, meta))) as z:
        head_params = _unflatten({k: z[k] for k in z.files})
    head = model.HeadConfig(**info["head"])
    return FinetunedModel(
        mc,
        head,
        {"encoder": enc, "head": head_params},
        stats,
        list(info["classes"]),
        bool(info["multilabel"]),
        meta,
    )
