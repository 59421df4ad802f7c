"""Steady-state throughput of the production MSM-MAE train step (`train.state.Setup`).

Measures, in one process and one run:

- samples/s of the jitted, donated train step (forward, backward, AdamW update, metrics),
  compile time separately: by default `Setup.train_step_lean`, the step the training loop
  runs between log steps; with --full-metrics `Setup.train_step` (log steps: also the
  l2_params / l2_updates norms);
- model FLOPs per step, two ways: XLA's cost analysis of the compiled step, and the analytic
  matmul count below. The analytic count is the one used for FLOP/s and MFU (it counts only
  the model's matrix products, the convention of MFU figures; XLA's count also includes
  elementwise work and, on some backends, counts fused ops differently);
- a float32 GEMM with XLA of the model's dominant shape ([B*K, D] x [D, 4D], the encoder MLP),
  jitted and timed the same way, and the step's FLOP/s as a fraction of it;
- on GPU/TPU: MFU against the device's dense bf16 peak (table below);
- peak memory from the compiled step's memory analysis;
- with --torch: bench/torch_reference.py's eager PyTorch step (AdamW, same shapes, batch and
  thread count), interleaved with the JAX step (JAX, torch, GEMM, JAX, torch, ... so that
  other load on a shared machine hits both alike), and the JAX/PyTorch ratio. Both arms start
  from the same weights and batch; their first steps, on the same masking noise, must give
  the same loss (`LOSS_RTOL`), else the benchmark exits with an error instead of timing
  different work.

Analytic FLOPs (multiply-add = 2 FLOPs). A block of width d, MLP width m and t tokens costs
forward 2*t*(3d^2 + d^2 + 2dm) (qkv, proj, fc1, fc2) + 4*t^2*d (q k^T and attn v). With
N patches, K = int(N * (1 - mask_ratio)) kept (+1 [CLS]), P pixels per patch, encoder (D)
and decoder (Dd) widths:
    forward = 2*N*P*D (patch embedding, all patches) + L * block(K+1, D)
              + 2*(K+1)*D*Dd (decoder embedding) + Ld * block(N+1, Dd) + 2*(N+1)*Dd*P
    step    = 3 * forward - 2*N*P*D (no gradient with respect to the input log-mels).

Usage:
    python bench/train_step.py --variant base_208 --batch 64 --steps 5 --torch --repeats 3
    python bench/train_step.py --variant base_208 --batch 512 --dtype bfloat16   # GPU: MFU
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

from bench.common import check_same_work, machine_info  # noqa: E402
from msm_mae_jax.core.config_files import load_config  # noqa: E402
from msm_mae_jax.model.config import ModelConfig  # noqa: E402
from msm_mae_jax.model.masking import masking_noise  # noqa: E402
from msm_mae_jax.train import optim  # noqa: E402
from msm_mae_jax.train.state import Setup  # noqa: E402

# Dense bf16 peak FLOP/s of known accelerators (no sparsity), for MFU.
PEAK_BF16_FLOPS = {
    "H100 SXM": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,  # plain "H100" device names are the SXM parts
    "H200": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A10G": 70e12,
    "L40S": 362e12,
    "L4": 121e12,
    "V100": 125e12,  # fp16 tensor cores (no bf16)
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}


def device_peak_bf16(device: jax.Device) -> tuple[str, float] | None:
    """(name matched, dense bf16 peak) of an accelerator, None on CPU or unknown devices."""
    if device.platform == "cpu":
        return None
    kind = device.device_kind
    for name in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):  # most specific first
        if name.lower() in kind.lower():
            return name, PEAK_BF16_FLOPS[name]
    return None


def _block_flops(tokens: int, width: int, mlp: int) -> int:
    return 2 * tokens * (4 * width * width + 2 * width * mlp) + 4 * tokens * tokens * width


def analytic_flops(c: ModelConfig, batch: int) -> dict[str, int]:
    """Matmul FLOPs of one training step (see the module docstring)."""
    N, P, D, Dd = c.num_patches, c.patch_dim, c.embed_dim, c.decoder_embed_dim
    cls = int(c.use_cls_token)
    k = int(N * (1 - c.mask_ratio)) + cls
    n = N + cls
    patch = 2 * N * P * D
    enc = c.depth * _block_flops(k, D, int(D * c.mlp_ratio))
    dec = 2 * k * D * Dd + c.decoder_depth * _block_flops(n, Dd, int(Dd * c.mlp_ratio))
    dec += 2 * n * Dd * P
    forward = patch + enc + dec
    return {"forward": batch * forward, "step": batch * (3 * forward - patch)}


def make_setup(variant: str, batch: int, dtype: str) -> Setup:
    config = load_config(variant)
    config.batch_size = batch
    config.grad_accum_steps = 1
    config.model.dtype = dtype
    config.total_steps = 10_000
    config.warmup_steps = 100
    config.steps_per_epoch = 100
    schedule = optim.resolve_schedule(config)
    return Setup(config, schedule)


# First-step losses of the two arms may differ by float32 summation order only (~1e-7
# measured); a bfloat16 JAX arm against PyTorch's float32 by its rounding.
LOSS_RTOL = {"float32": 1e-4, "bfloat16": 3e-2}


class JaxStep:
    """The compiled production step with its state, timed `steps` at a time."""

    def __init__(
        self, variant: str, batch: int, dtype: str, seed: int = 0, full_metrics: bool = False
    ):
        self.setup = setup = make_setup(variant, batch, dtype)
        step_fn = setup.train_step if full_metrics else setup.train_step_lean
        self.model_config = setup.model_config
        rng = np.random.default_rng(seed)
        lms = rng.standard_normal(setup.batch_shape, dtype=np.float32)
        with setup.activate():
            self.state = setup.init_state(seed)
            self.lms = setup.global_batch(lms)
            t0 = time.perf_counter()
            lowered = step_fn.lower(self.state, self.lms)
            t1 = time.perf_counter()
            self.compiled = lowered.compile()
            t2 = time.perf_counter()
        self.trace_s, self.compile_s = t1 - t0, t2 - t1
        self.metrics = None
        self.lms_host = lms

    def first_step(self) -> tuple[dict, np.ndarray, float]:
        """Runs the next step: (its parameters on the host before it, the masking noise it
        drew, its loss)."""
        params = jax.tree.map(np.array, jax.device_get(self.state.params))  # state is donated
        # The key of the step as Setup._train_step draws it (no accumulation here).
        key = jax.random.fold_in(self.state.rng, self.state.step)
        noise = np.asarray(
            masking_noise(key, self.lms_host.shape[0], self.model_config.num_patches)
        )
        self.run(1)
        return params, noise, float(self.metrics["loss"])

    def cost_flops(self) -> float | None:
        try:
            cost = self.compiled.cost_analysis()
        except Exception:  # not every backend implements it
            return None
        if isinstance(cost, list | tuple):
            cost = cost[0] if cost else None
        return float(cost["flops"]) if cost and "flops" in cost else None

    def memory(self) -> dict[str, int] | None:
        try:
            m = self.compiled.memory_analysis()
        except Exception:
            return None
        if m is None:
            return None
        fields = (
            "argument_size_in_bytes",
            "output_size_in_bytes",
            "temp_size_in_bytes",
            "alias_size_in_bytes",
            "generated_code_size_in_bytes",
        )
        out = {f: int(getattr(m, f)) for f in fields if hasattr(m, f)}
        # Live at once: arguments + outputs + temporaries, minus outputs aliased to
        # donated arguments (the new state reuses the old state's buffers).
        out["peak_bytes"] = (
            out.get("argument_size_in_bytes", 0)
            + out.get("output_size_in_bytes", 0)
            + out.get("temp_size_in_bytes", 0)
            - out.get("alias_size_in_bytes", 0)
        )
        return out

    def run(self, steps: int) -> float:
        """Seconds per step over `steps` consecutive steps (after the previous ones)."""
        jax.block_until_ready(self.state)
        t0 = time.perf_counter()
        for _ in range(steps):
            self.state, self.metrics = self.compiled(self.state, self.lms)
        jax.block_until_ready((self.state, self.metrics))
        return (time.perf_counter() - t0) / steps


class Gemm:
    """XLA float32 GEMM [M, D] x [D, H], jitted; FLOP/s of back-to-back calls."""

    def __init__(self, m: int, d: int, h: int):
        rng = np.random.default_rng(1)
        self.a = jnp.asarray(rng.standard_normal((m, d), dtype=np.float32))
        self.b = jnp.asarray(rng.standard_normal((d, h), dtype=np.float32))
        self.f = jax.jit(jnp.dot)
        self.flops = 2 * m * d * h
        self.shape = (m, d, h)
        jax.block_until_ready(self.f(self.a, self.b))

    def run(self, seconds: float = 1.0) -> float:
        n, t0 = 0, time.perf_counter()
        while True:
            out = self.f(self.a, self.b)
            n += 1
            if n % 4 == 0:
                jax.block_until_ready(out)
                dt = time.perf_counter() - t0
                if dt >= seconds:
                    return self.flops * n / dt


class TorchStep:
    """bench/torch_reference.py's step with the same shapes, batch and thread count, from the
    JAX arm's weights and batch; `first_loss` is its first step's, on the JAX arm's noise."""

    def __init__(
        self, c: ModelConfig, threads: int, params: dict, lms: np.ndarray, noise: np.ndarray
    ):
        import torch

        from bench import torch_reference as tr

        torch.set_num_threads(threads)
        torch.manual_seed(0)
        self.torch = torch
        self.model = tr.TorchMAE(c).train().load_jax_params(params)
        self.opt = tr.make_optimizer(self.model)
        self.x = torch.from_numpy(np.asarray(lms, np.float32))
        self.first_loss = float(self._step(torch.tensor(noise)))
        self.run(1)  # warm-up

    def _step(self, noise=None):
        """One update; its loss tensor (read only for the check, not in the timed loop)."""
        self.opt.zero_grad(set_to_none=True)
        loss = self.model(self.x, noise=noise)[0]
        loss.backward()
        self.opt.step()
        return loss.detach()

    def run(self, steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            self._step()  # fresh random masking, as the official loop
        return (time.perf_counter() - t0) / steps


def check_same_loss(jax_loss: float, torch_loss: float, dtype: str) -> float:
    """|difference| / |PyTorch's| of the arms' first-step losses; SystemExit above
    LOSS_RTOL[dtype] (the arms would not be doing the same work)."""
    err = abs(jax_loss - torch_loss) / max(abs(torch_loss), 1e-30)
    what = f"first-step losses (JAX {jax_loss:.6g}, PyTorch {torch_loss:.6g})"
    return check_same_work("bench/train_step.py", what, err, LOSS_RTOL[dtype])


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default="base_208", help="configs/msm_mae.py variant")
    ap.add_argument("--batch", type=int, default=64, help="global batch")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--torch", action="store_true", help="also time the PyTorch reference")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch threads")
    ap.add_argument("--gemm-seconds", type=float, default=1.0)
    ap.add_argument("--json", default="", help="write the figures to this file")
    ap.add_argument(
        "--full-metrics",
        action="store_true",
        help="time the log-step variant (Setup.train_step) instead of Setup.train_step_lean",
    )
    a = ap.parse_args(argv)

    load_start = _load()
    js = JaxStep(a.variant, a.batch, a.dtype, full_metrics=a.full_metrics)
    c = js.model_config
    dev = jax.devices()[0]
    flops = analytic_flops(c, a.batch)
    xla_flops = js.cost_flops()
    mem = js.memory()
    cls = int(c.use_cls_token)
    tokens = a.batch * (int(c.num_patches * (1 - c.mask_ratio)) + cls)
    gemm = Gemm(tokens, c.embed_dim, int(c.embed_dim * c.mlp_ratio))
    ts = loss_err = jax_loss = None
    if a.torch:
        params, noise, jax_loss = js.first_step()
        ts = TorchStep(c, a.threads, params, js.lms_host, noise)
        del params
        loss_err = check_same_loss(jax_loss, ts.first_loss, a.dtype)
    js.run(a.warmup)

    # Wall and process CPU seconds per step; on a shared machine the CPU time is the steadier
    # figure (other load delays an arm's wall clock, not its CPU time).
    jax_s, torch_s, gemm_fs, jax_c, torch_c = [], [], [], [], []
    for _ in range(a.repeats):
        c0 = time.process_time()
        jax_s.append(js.run(a.steps))
        jax_c.append((time.process_time() - c0) / a.steps)
        if ts is not None:
            time.sleep(0.2)  # let OpenMP workers stop spinning before the next arm
            c0 = time.process_time()
            torch_s.append(ts.run(a.steps))
            torch_c.append((time.process_time() - c0) / a.steps)
            time.sleep(0.2)
        gemm_fs.append(gemm.run(a.gemm_seconds))
    step_s = statistics.median(jax_s)
    gemm_rate = statistics.median(gemm_fs)
    r = {
        "variant": a.variant,
        "batch": a.batch,
        "dtype": a.dtype,
        "step_fn": "train_step" if a.full_metrics else "train_step_lean",
        "steps": a.steps,
        "repeats": a.repeats,
        "device": f"{dev.platform}:{dev.device_kind}",
        "num_devices": jax.device_count(),
        "step_s": step_s,
        "step_s_all": jax_s,
        "step_cpu_s_all": jax_c,
        "samples_per_s": a.batch / step_s,
        "compile_s": js.compile_s,
        "trace_lower_s": js.trace_s,
        "flops_per_step_analytic": flops["step"],
        "flops_per_step_xla": xla_flops,
        "flops_per_s": flops["step"] / step_s,
        "gemm_shape": list(gemm.shape),
        "gemm_flops_per_s": gemm_rate,
        "gemm_flops_per_s_all": gemm_fs,
        "flops_ratio_to_gemm": flops["step"] / step_s / gemm_rate,
        "memory": mem,
        "loss": float(js.metrics["loss"]),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_avg_start": load_start,
        "load_avg_end": _load(),
        "machine": machine_info(),
        "keep_heap": HEAP_KEPT,
    }
    peak = device_peak_bf16(dev)
    if peak is not None:
        r["peak_bf16_flops"] = peak[1]
        r["mfu"] = r["flops_per_s"] / (peak[1] * jax.device_count())
    if ts is not None:
        import torch

        t = statistics.median(torch_s)
        r.update(
            torch=torch.__version__,
            torch_threads=a.threads,
            torch_step_s=t,
            torch_step_s_all=torch_s,
            torch_step_cpu_s_all=torch_c,
            jax_over_torch_rounds=[t / j for t, j in zip(torch_s, jax_s, strict=True)],
            jax_over_torch_cpu=statistics.median(torch_c) / statistics.median(jax_c),
            torch_samples_per_s=a.batch / t,
            jax_over_torch=t / step_s,
            first_loss_jax=jax_loss,
            first_loss_torch=ts.first_loss,
            first_loss_rel_diff=loss_err,
        )

    gf = 1e9
    print(
        f"{a.variant} batch {a.batch} {a.dtype} on {r['device']} x{r['num_devices']}, "
        f"Setup.{r['step_fn']}"
    )
    print(f"  compile {js.compile_s:.1f} s (trace+lower {js.trace_s:.1f} s)")
    print(
        f"  JAX step {step_s * 1e3:.1f} ms = {r['samples_per_s']:.2f} samples/s "
        f"(per repeat: {', '.join(f'{x * 1e3:.0f}' for x in jax_s)} ms)"
    )
    xla_txt = f"{xla_flops / gf:.1f}" if xla_flops else "n/a"
    print(
        f"  FLOPs/step: analytic {flops['step'] / gf:.1f} G (used), XLA cost analysis {xla_txt} G"
    )
    print(
        f"  achieved {r['flops_per_s'] / gf:.1f} GFLOP/s; XLA f32 GEMM {gemm.shape} "
        f"{gemm_rate / gf:.1f} GFLOP/s; ratio {r['flops_ratio_to_gemm']:.3f}"
    )
    if "mfu" in r:
        print(f"  MFU {r['mfu']:.3f} of {peak[0]} bf16 peak {peak[1] / 1e12:.0f} TFLOP/s")
    if mem:
        print(
            f"  memory: peak {mem['peak_bytes'] / 2**20:.0f} MiB (temp "
            f"{mem.get('temp_size_in_bytes', 0) / 2**20:.0f} MiB, args "
            f"{mem.get('argument_size_in_bytes', 0) / 2**20:.0f} MiB)"
        )
    if ts is not None:
        print(
            f"  PyTorch {r['torch']} ({a.threads} threads) step {r['torch_step_s'] * 1e3:.1f} ms "
            f"= {r['torch_samples_per_s']:.2f} samples/s (per repeat: "
            f"{', '.join(f'{x * 1e3:.0f}' for x in torch_s)} ms); first-step loss equal to "
            f"JAX's within {loss_err:.1e}"
        )
        rounds = r["jax_over_torch_rounds"]
        print(
            f"  JAX/PyTorch samples/s: {r['jax_over_torch']:.3f} (rounds {min(rounds):.3f}-"
            f"{max(rounds):.3f}); per CPU-second {r['jax_over_torch_cpu']:.3f} "
            f"({statistics.median(jax_c):.2f} vs {statistics.median(torch_c):.2f} CPU-s/step)"
        )
    print(f"  load average: start {load_start}, end {r['load_avg_end']}; keep_heap {HEAP_KEPT}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=2)
    return r


if __name__ == "__main__":
    main()
