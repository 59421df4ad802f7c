"""Further pre-training: the weights a run starts from (`config.init_from`, `--init-from SRC`).

SRC, a local path or a URL (gs://...), is one of
- converted official weights (`msm-mae convert`): the encoder artifact and the decoder kept
  beside it (`decoder_params.npz`): both are taken;
- an export (`msm-mae export`, or converted without a decoder): the encoder only; the decoder
  starts from its initialiser (the one a run from scratch with the same seed has);
- a training workdir: the parameters of its newest checkpoint, or of step N with `DIR@N`
  (never its optimizer state or step).

The run starts at step 0 with a fresh optimizer and its own schedule. The source's model must
be the run's but for the input size: its positional tables are the fixed sin-cos ones, never
parameters, and are computed for the run's grid (`model/posembed.py`), so no parameter depends
on it. Any other difference (width, depth, heads, patch, [CLS], the decoder's shape and table
where the decoder is taken) is one line naming the key and the first parameter whose shape
differs, with both shapes.

The parameters go straight into the run's shardings: orbax reads each device's shard of a
workdir's or an export's arrays (under fsdp no process reads or holds more than its shards);
the converted decoder, one small `.npz`, is read by each process and placed shard by shard.
`record` gives what the run keeps in every checkpoint's metadata: the source, its kind, step
and a checksum of the parameters taken (SHA-256 over their `model.checksums`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from msm_mae_jax.core import fs
from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.model import artifact, checksums, convert, mae, orbax_quiet
from msm_mae_jax.model.config import ModelConfig
from msm_mae_jax.train import checkpoint_meta, checkpoints
from msm_mae_jax.train.config_rules import split_init_from

# Keys of the model that define its parameters (or what they mean); the input size may differ.
ENCODER_KEYS = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "use_cls_token")
DECODER_KEYS = ("decoder_embed_dim", "decoder_depth", "decoder_num_heads", "decoder_pos_embed")
KINDS = {
    "converted": "converted official weights",
    "export": "the export",
    "workdir": "the training run",
}


@dataclasses.dataclass(frozen=True)
class InitSource:
    """What `open_source` found at SRC, from its metadata (no array read yet)."""

    spec: str  # as given
    kind: str  # 'converted', 'export' or 'workdir'
    path: str  # absolute path or URL
    step: int | None  # the workdir's checkpoint step
    model_config: ModelConfig
    norm_stats: NormStats | None  # None: per-batch normalisation (converted that way)
    has_decoder: bool

    def describe(self) -> str:
        where = self.path if self.step is None else f"{self.path} step {self.step}"
        return f"{KINDS[self.kind]} {where}"


def _fail(spec: str, why: str) -> ConfigError:
    return ConfigError(f"config.init_from={spec!r}: {why}")


def open_source(spec: str) -> InitSource:
    """The source at `spec` from its metadata; ConfigError (one line) when it is none of the
    kinds, or damaged."""
    path, step = split_init_from(spec)
    path = fs.absolute(path)
    if not fs.exists(path):
        raise _fail(spec, f"{path} does not exist")
    if artifact.is_model_dir(path):
        if step is not None:
            raise _fail(spec, "@STEP names a checkpoint of a training workdir; this is a model")
        return _artifact_source(spec, path)
    if fs.isdir(checkpoints.checkpoint_dir(path)):
        return _workdir_source(spec, path, step)
    hint = " (official .pth weights: convert them first, msm-mae convert)" * path.endswith(".pth")
    raise _fail(
        spec,
        f"{path} is neither a model directory (msm-mae convert / export: no "
        f"{artifact.META_FILE}) nor a training workdir (no checkpoints/){hint}",
    )


def _artifact_source(spec: str, path: str) -> InitSource:
    try:
        meta = artifact.load_meta(path)
        model_config = ModelConfig.from_dict(meta["model"])
        stats = NormStats.from_dict(meta["norm_stats"])
    except (ValueError, KeyError, TypeError) as e:  # DataError (not JSON) passes as it is
        raise _fail(spec, f"{artifact.META_FILE} is damaged ({type(e).__name__}: {e})") from None
    decoder = bool(meta.get("decoder_params")) and fs.isfile(
        fs.join(path, convert.DECODER_SIDE_FILE)
    )
    kind = "converted" if str(meta.get("source", "")).startswith("converted") else "export"
    per_batch = meta.get("normalization") == "per_batch"
    return InitSource(spec, kind, path, None, model_config, None if per_batch else stats, decoder)


def _workdir_source(spec: str, path: str, step: int | None) -> InitSource:
    ckpt = checkpoints.Checkpointer(path, read_only=True, async_save=False)
    try:
        steps = sorted(ckpt.all_steps())
        if not steps:
            raise _fail(spec, f"{ckpt.directory} holds no complete checkpoint")
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise _fail(spec, f"{ckpt.directory} has no step {step}; it has {steps}")
        try:
            meta = ckpt.restore_meta(step)
            model_config, stats = checkpoint_meta.model_objects(meta, f"{ckpt.directory}/{step}")
        except checkpoint_meta.MetaError as e:
            raise _fail(spec, f"{e} (another step: DIR@STEP)") from None
    finally:
        ckpt.close()
    return InitSource(spec, "workdir", path, step, model_config, stats, True)


# ---- the architecture ------------------------------------------------------------------------
def check_architecture(source: InitSource, model_config: ModelConfig) -> None:
    """ConfigError naming the first difference other than the input size (the decoder's keys
    count only where the decoder is taken)."""
    keys = ENCODER_KEYS + (DECODER_KEYS if source.has_decoder else ())
    theirs, ours = source.model_config.to_dict(), model_config.to_dict()
    diff = [k for k in keys if theirs[k] != ours[k]]
    if not diff:
        return
    what = ", ".join(f"model.{k} is {theirs[k]!r} in the source and {ours[k]!r} here" for k in diff)
    shapes = _first_shape_difference(source.model_config, model_config, source.has_decoder)
    raise _fail(
        source.spec,
        f"another model: {what}"
        + (f"; {shapes}" if shapes else " (same shapes, other computations)")
        + " (only the input size may differ: its positional tables are fixed, not learned)",
    )


def _shapes(config: ModelConfig, decoder: bool) -> dict[str, tuple[int, ...]]:
    params = nn.unbox(mae.abstract_params(config))
    if not decoder:
        params = {"encoder": params["encoder"]}
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {checksums.path_name(p): tuple(x.shape) for p, x in flat}


def _first_shape_difference(theirs: ModelConfig, ours: ModelConfig, decoder: bool) -> str:
    a, b = _shapes(theirs, decoder), _shapes(ours, decoder)
    names = sorted(set(a) | set(b), key=lambda n: (not n.startswith("encoder/"), n))
    for name in names:
        if a.get(name) != b.get(name):
            sa = a.get(name, "absent")
            sb = b.get(name, "absent")
            return f"parameter {name} has shape {sa} in the source and {sb} in this run's model"
    return ""


# ---- the parameters --------------------------------------------------------------------------
def load_params(source: InitSource, abstract_params: Any) -> dict[str, Any]:
    """{'encoder': ..., 'decoder': ... or None} of the source as jax arrays in the shardings
    of `abstract_params` (the run's {'encoder', 'decoder'} ShapeDtypeStructs with shardings);
    checked against the checksums saved with them. One line (ConfigError) when they do not
    read."""
    try:
        if source.kind == "workdir":
            return _workdir_params(source, abstract_params)
        return _artifact_params(source, abstract_params)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 (orbax/tensorstore raise many kinds)
        raise _fail(
            source.spec, f"its parameters do not read ({checkpoints.describe_error(e)})"
        ) from None


def _artifact_params(source: InitSource, abstract: Any) -> dict[str, Any]:
    orbax_quiet.install()
    with ocp.StandardCheckpointer() as ckptr:
        encoder = ckptr.restore(fs.join(source.path, artifact.PARAMS_DIR), abstract["encoder"])
    meta = artifact.load_meta(source.path)
    bad = checksums.first_mismatch(encoder, meta.get("checksums", {}).get("arrays"))
    if bad:
        raise _fail(source.spec, f"{bad}; the model is damaged, export or convert it again")
    decoder = None
    if source.has_decoder:
        decoder = _place(convert.load_decoder_params(source.path), abstract["decoder"], source.spec)
    return {"encoder": encoder, "decoder": decoder}


def _place(tree: Any, abstract: Any, spec: str) -> Any:
    """A nested dict of numpy arrays -> the tree of `abstract`, each built shard by shard."""
    stored = {checksums.path_name(p): a for p, a in jax.tree_util.tree_flatten_with_path(tree)[0]}
    flat, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    out = []
    for path, want in flat:
        name = checksums.path_name(path)
        a = stored.get(name)
        if a is None or a.shape != want.shape:
            got = "absent" if a is None else a.shape
            raise _fail(
                spec, f"{convert.DECODER_SIDE_FILE}: {name} is {got}, expected {want.shape}"
            )
        a = np.asarray(a, want.dtype)
        out.append(jax.make_array_from_callback(want.shape, want.sharding, lambda i, a=a: a[i]))
    return jax.tree_util.tree_unflatten(treedef, out)


def _workdir_params(source: InitSource, abstract: Any) -> dict[str, Any]:
    step_dir = fs.join(checkpoints.checkpoint_dir(source.path), str(source.step))
    target = {"params": abstract}
    args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding), target)
    orbax_quiet.install()
    with checkpoints.quiet_read_only_notices(), ocp.PyTreeCheckpointer() as ptc:
        out = ptc.restore(
            fs.join(step_dir, "state"),
            args=ocp.args.PyTreeRestore(item=target, restore_args=args, partial_restore=True),
        )
    ckpt = checkpoints.Checkpointer(source.path, read_only=True, async_save=False)
    try:
        recorded = ckpt.restore_checksums(source.step)
    finally:
        ckpt.close()
    bad = checksums.first_mismatch(out, recorded)
    if bad:
        raise _fail(source.spec, f"step {source.step}: {bad} (another step: DIR@STEP)")
    return dict(out["params"])


def record(source: InitSource, params: dict[str, Any]) -> dict[str, Any]:
    """What a run started from `source` records (checkpoint metadata `init_from`)."""
    taken = {k: v for k, v in params.items() if v is not None}
    sums = checksums.tree_checksums(taken)
    digest = hashlib.sha256("".join(f"{k}={v}\n" for k, v in sorted(sums.items())).encode())
    return {
        "spec": source.spec,
        "kind": source.kind,
        "path": source.path,
        "step": source.step,
        "decoder": "source" if params.get("decoder") is not None else "initialised",
        "checksum": digest.hexdigest(),
    }


def start_line(source: InitSource, rec: dict[str, Any], stats_from_source: bool) -> str:
    """The console line of a run started from `source`."""
    taken = (
        "encoder and decoder"
        if rec["decoder"] == "source"
        else "encoder only: the decoder starts from its initialiser"
    )
    stats = "the source's" if stats_from_source else "computed on this run's data"
    return (
        f"initialised from {source.describe()} ({taken}; parameters sha256 "
        f"{rec['checksum'][:16]}); step 0, a fresh optimizer; normalisation statistics {stats}"
    )
