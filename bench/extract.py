"""Feature-extraction throughput: `runtime.Runtime.encode` on 10 s clips vs PyTorch eager.

JAX arm: a randomly initialised encoder in `Runtime(model_config, params, norm_stats)`;
`encode(wav_BS)` on a batch of 10 s, 16 kHz clips: on-device log-mel, normalisation, units of
the model's input width, encoder, '(f t) d -> t (f d)', features back in host memory (numpy).
Compiled and warmed up before timing. Throughput = audio seconds per wall-clock second.

PyTorch arm (when torch is installed): what the official feature extractor does per batch,
in eager PyTorch with bench/torch_reference.py's encoder, the JAX arm's weights and the same
thread count: log-mel
(torch.stft, reflect-padded, Slaney mel matrix from `audio.mel_basis`, log(x + eps)),
normalisation, zero-padding of the last unit, then one encoder call per 208-frame unit of
the whole batch (the official runtime's loop; its masking at ratio 0 still shuffles the
tokens), '(f t) d -> t (f d)', concatenation, the padded frames' steps removed, features
converted to numpy. A 10 s clip (1001 frames) is 5 units there.

Before timing, both arms encode the clips once more, the PyTorch arm without the shuffle, and
the features must agree (`FEATURE_RTOL` of the largest value); otherwise the benchmark exits
with an error instead of comparing the speed of different work.

Note: `Runtime.encode` rounds the number of units up to a bucket (2^k or 3 * 2^k; one
compiled function per bucket), so a 10 s clip runs 6 units on the JAX side. The encoder-only figures
(`jax_units_per_s`, `torch_units_per_s`, same unit batch on both sides) separate that from
the speed of the encoder itself.

Usage: python bench/extract.py [--variant base_208] [--batch 8] [--seconds 10] [--json out]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from msm_mae_jax.core import cpu_heap  # noqa: E402
from msm_mae_jax.train import xla_flags  # noqa: E402

xla_flags.set_default_xla_flags()
HEAP_KEPT = cpu_heap.keep_heap()  # both arms share the process's malloc settings

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import check_same_work, machine_info, model_config_for  # noqa: E402
from msm_mae_jax.data import audio  # noqa: E402
from msm_mae_jax.data.normalization import NormStats  # noqa: E402
from msm_mae_jax.features.runtime import Runtime, bucket_size  # noqa: E402
from msm_mae_jax.model import mae  # noqa: E402
from msm_mae_jax.model.config import ModelConfig  # noqa: E402

NORM = NormStats(-7.1, 4.2)  # any fixed statistics; the figures do not depend on them
# The arms' features may differ by float32 summation order only (measured ~1e-6 relative).
FEATURE_RTOL = 1e-4


def clips(batch: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Tones in noise, float32 [B, S] at 16 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * audio.SAMPLE_RATE)) / audio.SAMPLE_RATE
    f0 = rng.uniform(100, 2000, size=(batch, 1))
    y = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.05 * rng.standard_normal((batch, t.size))
    return y.astype(np.float32)


def _timed(fn, repeats: int) -> float:
    """Seconds per call: the median of `repeats` calls."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class JaxArm:
    def __init__(self, c: ModelConfig, wav_BS: np.ndarray):
        self.full_params = mae.init_params(c, jax.random.key(0))
        self.rt = Runtime(c, self.full_params["encoder"], NORM)
        self.wav = wav_BS
        t0 = time.perf_counter()
        self.out = self.rt.encode(wav_BS)  # compiles
        self.compile_s = time.perf_counter() - t0
        self.rt.encode(wav_BS)
        # Encoder alone on a unit batch (the cost the bucketing multiplies).
        enc = mae.Encoder(c)
        self._enc = jax.jit(lambda p, x: enc.apply({"params": p}, x).x_BKD)
        self._params = self.rt._params

    def encode(self) -> np.ndarray:
        return self.rt.encode(self.wav)

    def encoder_units(self, x_U1FT: jax.Array) -> None:
        jax.block_until_ready(self._enc(self._params, x_U1FT))


class TorchArm:
    """The official runtime's recipe in eager PyTorch (see the module docstring)."""

    def __init__(self, c: ModelConfig, threads: int, params: dict):
        import torch

        from bench import torch_reference as tr

        torch.set_num_threads(threads)
        torch.manual_seed(0)
        self.torch = torch
        self.c = c
        self.model = tr.TorchMAE(c).eval().load_jax_params(params)
        self.mel_FK = torch.tensor(audio.mel_basis().T.copy())  # [80, 201]
        self.window = torch.hann_window(audio.N_FFT, periodic=True)

    def log_mel(self, wav_BS):
        torch = self.torch
        spec = torch.stft(
            wav_BS,
            audio.N_FFT,
            audio.HOP_LENGTH,
            window=self.window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        power_BKT = spec.real.square() + spec.imag.square()
        return torch.log(self.mel_FK @ power_BKT + audio.LOG_OFFSET)

    def encode(self, wav: np.ndarray, shuffle: bool = True) -> np.ndarray:
        """Features [B, T, F*D]; shuffle=False keeps the tokens in order (for the check)."""
        torch = self.torch
        c = self.c
        with torch.no_grad():
            lms_BFT = (self.log_mel(torch.from_numpy(wav)) - NORM.mean) / NORM.std
            fu = c.input_size[1]
            frames = lms_BFT.shape[-1]
            pad = fu - frames % fu  # as the official runtime (a whole unit when divisible)
            lms_BFT = torch.nn.functional.pad(lms_BFT, (0, pad))
            gf, _ = c.grid_size
            B, n = lms_BFT.shape[0], c.num_patches
            noise = None if shuffle else torch.arange(n, dtype=torch.float32).expand(B, n)
            feats = []
            for i in range(lms_BFT.shape[-1] // fu):
                x = lms_BFT[:, None, :, i * fu : (i + 1) * fu]
                emb = self.model.forward_encoder(x, 0.0, noise)[0][:, int(c.use_cls_token) :]
                B, _, D = emb.shape
                emb = emb.reshape(B, gf, -1, D).permute(0, 2, 1, 3).reshape(B, -1, gf * D)
                feats.append(emb)
            steps = -(-frames // c.patch_size[1])  # the padded frames' steps removed
            return torch.cat(feats, dim=1)[:, :steps].numpy()

    def encoder_units(self, x_U1FT: np.ndarray) -> None:
        with self.torch.no_grad():
            self.model.forward_encoder(self.torch.from_numpy(x_U1FT), 0.0)


def check_same_features(jax_BTE: np.ndarray, torch_BTE: np.ndarray) -> float:
    """Max |difference| / max |value| of the two arms' features; SystemExit when the shapes
    differ or it exceeds FEATURE_RTOL (the arms would not be doing the same work)."""
    if jax_BTE.shape != torch_BTE.shape:
        raise SystemExit(
            f"bench/extract.py: the arms' features differ in shape: JAX {jax_BTE.shape}, "
            f"PyTorch {torch_BTE.shape}"
        )
    err = float(np.abs(jax_BTE - torch_BTE).max() / max(np.abs(torch_BTE).max(), 1e-30))
    return check_same_work(
        "bench/extract.py", "features (max difference / largest value)", err, FEATURE_RTOL
    )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default="base_208", help="configs/msm_mae.py variant")
    ap.add_argument("--batch", type=int, default=8, help="clips per encode call")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch threads")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json", default="")
    a = ap.parse_args(argv)

    c = model_config_for(a.variant)
    wav = clips(a.batch, a.seconds)
    audio_s = a.batch * a.seconds
    frames = audio.num_frames(wav.shape[1])
    fu = c.input_size[1]
    units_official = frames // fu + 1
    units_jax = bucket_size(-(-frames // fu))
    x_U1FT = np.random.default_rng(1).standard_normal(
        (a.batch * units_official, 1, *c.input_size), dtype=np.float32
    )
    load_start = [round(x, 2) for x in os.getloadavg()]
    ja = JaxArm(c, wav)
    x_jax = jnp.asarray(x_U1FT)
    ja.encoder_units(x_jax)
    ta = None
    if not a.no_torch:
        try:
            ta = TorchArm(c, a.threads, ja.full_params)
        except ImportError:
            ta = None
    feature_err = None
    if ta is not None:
        # The check's encode is also the PyTorch arm's warm-up (same shapes).
        feature_err = check_same_features(np.asarray(ja.out), ta.encode(wav, shuffle=False))
        ta.encoder_units(x_U1FT)

    # Wall and process CPU seconds per batch; on a shared machine the CPU time is the steadier
    # figure (other load delays an arm's wall clock, not its CPU time).
    jt, tt, jut, tut, jc, tc = [], [], [], [], [], []
    for _ in range(a.repeats):
        c0 = time.process_time()
        jt.append(_timed(ja.encode, 1))
        jc.append(time.process_time() - c0)
        jut.append(_timed(lambda: ja.encoder_units(x_jax), 1))
        if ta is not None:
            time.sleep(0.2)  # let OpenMP workers stop spinning before the next arm
            c0 = time.process_time()
            tt.append(_timed(lambda: ta.encode(wav), 1))
            tc.append(time.process_time() - c0)
            tut.append(_timed(lambda: ta.encoder_units(x_U1FT), 1))
            time.sleep(0.2)
    units = a.batch * units_official
    r = {
        "variant": a.variant,
        "batch": a.batch,
        "clip_seconds": a.seconds,
        "frames_per_clip": frames,
        "units_per_clip_jax": units_jax,
        "units_per_clip_official": units_official,
        "compile_s": ja.compile_s,
        "jax_s": statistics.median(jt),
        "jax_s_all": jt,
        "jax_cpu_s_all": jc,
        "audio_s_per_s": audio_s / statistics.median(jt),
        "jax_units_per_s": units / statistics.median(jut),
        "feature_shape": list(ja.out.shape),
        "load_avg_start": load_start,
    }
    print(
        f"{a.variant}: {a.batch} clips x {a.seconds:g} s ({frames} frames: {units_jax} units "
        f"in Runtime.encode, {units_official} in the official loop), features "
        f"{tuple(ja.out.shape)}"
    )
    print(
        f"  JAX Runtime.encode: {r['jax_s'] * 1e3:.0f} ms/batch = {r['audio_s_per_s']:.1f} "
        f"audio s/s (compile {ja.compile_s:.1f} s); encoder alone "
        f"{r['jax_units_per_s']:.1f} units/s ({units} units in one call)"
    )
    if ta is not None:
        t = statistics.median(tt)
        r.update(
            torch=ta.torch.__version__,
            torch_threads=a.threads,
            torch_s=t,
            torch_s_all=tt,
            torch_cpu_s_all=tc,
            jax_over_torch_rounds=[t / j for t, j in zip(tt, jt, strict=True)],
            jax_over_torch_cpu=statistics.median(tc) / statistics.median(jc),
            torch_audio_s_per_s=audio_s / t,
            torch_units_per_s=units / statistics.median(tut),
            jax_over_torch=t / r["jax_s"],
            feature_max_rel_diff=feature_err,
        )
        r["encoder_jax_over_torch"] = r["jax_units_per_s"] / r["torch_units_per_s"]
        print(
            f"  PyTorch ({a.threads} threads): {t * 1e3:.0f} ms/batch = "
            f"{r['torch_audio_s_per_s']:.1f} audio s/s; encoder alone "
            f"{r['torch_units_per_s']:.1f} units/s; features equal to JAX's within "
            f"{feature_err:.1e} of the largest value"
        )
        rounds = r["jax_over_torch_rounds"]
        print(
            f"  JAX/PyTorch: extraction {r['jax_over_torch']:.2f}x (rounds "
            f"{min(rounds):.2f}-{max(rounds):.2f}; CPU time {r['jax_over_torch_cpu']:.2f}x: "
            f"{statistics.median(jc):.1f} vs {statistics.median(tc):.1f} CPU-s), "
            f"encoder on equal units ({units} in one call, not the runtime's groups) "
            f"{r['encoder_jax_over_torch']:.2f}x"
        )
    r["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    r["machine"] = machine_info()
    r["keep_heap"] = HEAP_KEPT
    print(f"  load average: start {load_start}, end {r['load_avg_end']}; keep_heap {HEAP_KEPT}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=2)
    return r


if __name__ == "__main__":
    main()
