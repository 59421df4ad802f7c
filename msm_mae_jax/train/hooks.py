"""In-training evaluators (hooks): the training loop only asks each whether it is due and runs it.

A hook runs every `every_steps` steps and once more after the last step of the run (the final
call), so the end state is always evaluated. `run` is called on every process (its jitted work
spans all devices); it returns the scalars to log, on process 0 only.

Configured hooks (`build_hooks`), chosen by their config keys:
  figures  `figure_every_steps`, `figure_clips`: reconstruction figures of fixed training
           clips, as PNG files under WORKDIR/figures and TensorBoard images.
  probe    `probe.*`: the closed-form ridge few-shot probe (train/fewshot.py) on clip
           embeddings of held-out synthetic labelled clips.

Shape letters: B clips, F mel bins, T frames, N patches, P values per patch, D width.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from msm_mae_jax.core import fs
from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.model.config import ModelConfig
from msm_mae_jax.model.frames import encode_frames
from msm_mae_jax.train import fewshot, metrics
from msm_mae_jax.train.state import Setup, TrainState


class Hook(abc.ABC):
    """An in-training evaluator."""

    name: str = "hook"
    every_steps: int = 0

    def due(self, step: int, total_steps: int) -> bool:
        """Every `every_steps` steps and at the last step (the final call of the run)."""
        return self.every_steps > 0 and (step % self.every_steps == 0 or step == total_steps)

    @abc.abstractmethod
    def run(self, step: int, state: TrainState) -> dict[str, float]:
        """Evaluates `state` after `step` updates; the scalars to log (empty off process 0)."""

    def close(self) -> None:  # noqa: B027 (optional override)
        """Releases what the hook holds; called once when the run ends, however it ends."""


def check_config(config: ml_collections.ConfigDict, process_count: int) -> None:
    """The hooks' config keys, checked before anything compiles."""
    b_local = int(config.batch_size) // process_count
    if int(config.figure_every_steps) > 0 and not 1 <= int(config.figure_clips) <= b_local:
        raise ConfigError(
            f"config.figure_clips={config.figure_clips} must be in [1, {b_local}] (the "
            "per-process batch)"
        )
    if int(config.probe.every_steps) > 0 and config.probe.task != "synthetic":
        raise ConfigError(
            f"config.probe.task={config.probe.task!r}: the in-training probe supports "
            "'synthetic' only (evaluate.py runs any task on a saved checkpoint)"
        )


def build_hooks(
    config: ml_collections.ConfigDict,
    setup: Setup,
    norm_stats: NormStats,
    workdir: str,
    writer: metrics.MetricWriter,
) -> list[Hook]:
    """The hooks the config switches on, in the order they run."""
    check_config(config, jax.process_count())
    hooks: list[Hook] = []
    if int(config.figure_every_steps) > 0:
        hooks.append(FigureHook(config, setup, norm_stats, workdir, writer))
    if int(config.probe.every_steps) > 0:
        hooks.append(ProbeHook(config, setup, norm_stats))
    return hooks


# ---- reconstruction figures -----------------------------------------------------------------
def reconstruct_fn(setup: Setup) -> Callable:
    """Jitted (params, lms_B1FT, key) -> (pred_BNP, mask_BN), replicated outputs."""

    def fn(params, lms_B1FT, key):
        with nn.logical_axis_rules(setup.rules):
            _, pred_BNP, mask_BN = setup.model.apply({"params": params}, lms_B1FT, key)
        return pred_BNP, mask_BN

    return jax.jit(
        fn,
        in_shardings=(
            setup.state_shardings.params,
            setup.replicated_sharding,
            setup.replicated_sharding,
        ),
        out_shardings=setup.replicated_sharding,
    )


class FigureHook(Hook):
    """Input / masked / reconstruction of fixed clips: the first `figure_clips` of process 0's
    first training batch (the same on every process), masked with one fixed key."""

    name = "figures"

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        setup: Setup,
        norm_stats: NormStats,
        workdir: str,
        writer: metrics.MetricWriter,
    ):
        from msm_mae_jax.data import pipeline  # noqa: PLC0415 (TF: only when used)

        self.every_steps = int(config.figure_every_steps)
        self.setup, self.writer = setup, writer
        self.directory = fs.join(workdir, "figures")
        n = int(config.figure_clips)
        first = next(
            pipeline.train_iterator(
                config,
                norm_stats,
                process_index=0,
                process_count=jax.process_count(),
                start_step=0,
            )
        )
        if "lms" in first:
            self.lms_B1FT = np.asarray(first["lms"][:n], np.float32)
        else:  # data.logmel_on_device: the crop windows' log-mels as the step computes them
            from msm_mae_jax.data.device_frontend import normalized_log_mel  # noqa: PLC0415

            wav, frames = first["wav"][:n], first["frames"][:n]
            self.lms_B1FT = np.asarray(normalized_log_mel(wav, frames, norm_stats), np.float32)
        # Valid frames per clip when the pipeline reports them: the figure leaves out padding.
        self.frames_B = np.asarray(first["frames"][:n]) if "frames" in first else None
        self.inputs = (
            setup.replicated(self.lms_B1FT),
            setup.replicated(np.asarray(jax.random.PRNGKey(int(config.seed) + 1))),
        )
        self.reconstruct = reconstruct_fn(setup)

    def run(self, step: int, state: TrainState) -> dict[str, float]:
        from msm_mae_jax.train import figures  # noqa: PLC0415 (matplotlib: only when used)

        with self.setup.activate():
            pred_BNP, mask_BN = self.reconstruct(state.params, *self.inputs)
        pred_BNP, mask_BN = np.asarray(pred_BNP), np.asarray(mask_BN)
        if jax.process_index() == 0:
            fig = figures.reconstruction_figure(
                self.lms_B1FT,
                pred_BNP,
                mask_BN,
                self.setup.model_config,
                frames_B=self.frames_B,
                title=f"step {step}",
            )
            png = figures.png_bytes(fig)
            figures.write_file(fs.join(self.directory, f"recon_{step:08d}.png"), png)
            self.writer.write_png(step, "reconstruction", png)
        return {}


# ---- ridge few-shot probe -------------------------------------------------------------------
def probe_data(
    config: ml_collections.ConfigDict, mc: ModelConfig, norm_stats: NormStats
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train lms, train labels, test lms, test labels) of the in-training probe: normalised
    log-mels [N, 1, F, T] of the built-in synthetic labelled clips, T the model's input width."""
    task = str(config.probe.task)
    if task != "synthetic":
        raise ConfigError(
            f"config.probe.task={task!r}: the in-training probe supports 'synthetic' only; "
            "evaluate.py runs any task on a saved checkpoint"
        )
    from msm_mae_jax.data import audio, synthetic  # noqa: PLC0415 (librosa: only when used)

    n_tr, n_te = int(config.probe.max_train), int(config.probe.max_test)
    T = mc.input_size[1]
    seconds = audio.samples_for_frames(T) / audio.SAMPLE_RATE + 1e-3
    wavs, labels = synthetic.make_dataset(
        n_tr + n_te, seed=int(config.seed) + 7919, seconds=seconds
    )
    wav_BS = np.stack([w[: int(round(seconds * audio.SAMPLE_RATE))] for w in wavs])
    lms = []
    for i in range(0, len(wav_BS), 64):  # bounded memory
        lms.append(np.asarray(audio.log_mel_jax(jnp.asarray(wav_BS[i : i + 64]))))
    lms_BFT = np.concatenate(lms)[..., :T]
    if lms_BFT.shape[-1] < T:
        raise ValueError(f"probe clips give {lms_BFT.shape[-1]} frames, need {T}")
    lms_B1FT = np.asarray(norm_stats.normalize(lms_BFT), np.float32)[:, None]
    y = np.asarray(labels, np.int64)
    return lms_B1FT[:n_tr], y[:n_tr], lms_B1FT[n_tr:], y[n_tr:]


def clip_embedding_fn(setup: Setup) -> Callable:
    """Jitted (encoder params, lms_B1FT) -> clip embeddings [B, F'*D]: the frame features of
    `model.frames.encode_frames` (the layout every feature user sees), mean over time."""
    mc = setup.model_config

    def fn(enc_params, lms_B1FT):
        with nn.logical_axis_rules(setup.rules):
            frames_BTD = encode_frames(enc_params, lms_B1FT[:, 0], mc)
        return frames_BTD.mean(axis=1)

    return jax.jit(
        fn,
        in_shardings=(setup.state_shardings.params["encoder"], setup.replicated_sharding),
        out_shardings=setup.replicated_sharding,
    )


class ProbeHook(Hook):
    """Ridge few-shot accuracy of clip embeddings (best over the l2 sweep) and its l2."""

    name = "probe"

    def __init__(self, config: ml_collections.ConfigDict, setup: Setup, norm_stats: NormStats):
        self.every_steps = int(config.probe.every_steps)
        self.setup = setup
        tr_x, self.train_y, te_x, self.test_y = probe_data(config, setup.model_config, norm_stats)
        self.train_x = setup.replicated(tr_x)
        self.test_x = setup.replicated(te_x)
        self.embed = clip_embedding_fn(setup)

    def run(self, step: int, state: TrainState) -> dict[str, float]:
        with self.setup.activate():
            f_train = np.asarray(self.embed(state.params["encoder"], self.train_x))
            f_test = np.asarray(self.embed(state.params["encoder"], self.test_x))
        if jax.process_index() != 0:
            return {}
        res = fewshot.ridge_fewshot(f_train, self.train_y, f_test, self.test_y)
        return {"probe/accuracy": res["best_accuracy"], "probe/best_l2": res["best_l2"]}
