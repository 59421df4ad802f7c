"""What a model on disk is, for an embedding cache and a resumed fine-tuning job: a digest
that changes whenever a file that defines the model does.

A training workdir, an exported or a converted model folder: the absolute path, then the
name, size and version (mtime, or a URL's generation) of every file below `checkpoints/`
(a workdir) or the folder (a model folder). Logs and figures of a workdir are not part of it.
"""

from __future__ import annotations

import hashlib

from msm_mae_jax.core import fs


def checkpoint_identity(path: str) -> str:
    """Path plus size and mtime of every file that defines the model (not logs or figures)."""
    path = fs.absolute(path)
    h = hashlib.sha256(path.encode())
    ckpts = fs.join(path, "checkpoints")
    root = ckpts if fs.isdir(ckpts) else path
    for f, size, version in fs.stamps(root):
        h.update(f"{fs.relpath(f, path)}\0{size}\0{version}\n".encode())
    return h.hexdigest()
