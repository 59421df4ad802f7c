"""Where the time of a compiled CPU program goes: per op kind, per matrix-product shape.

Profiles the production ViT-B train step (`--what step`, bench/train_step.py's `JaxStep`) or
the encoder on a batch of units (`--what encoder`, feature extraction) with `jax.profiler`,
and reads the optimized HLO of the same executable to know what each traced op is:

- timeline (wall clock per execution): time when only matrix-product ops run, only other ops
  run, both, two products at once (XLA:CPU runs independent ops concurrently, each on the
  shared thread pool), nothing;
- ops by kind: products in a GEMM-library fusion (YNNPACK/oneDNN `kCustom` fusions), XLA's own
  dots, everything else (element-wise, copies, reductions), as event time per execution;
- products by shape: count, event ms, GFLOP (from the HLO's dot dimensions) and GFLOP/s. Event
  time of concurrent products overlaps, so a shape's GFLOP/s is a lower bound of its rate
  where the timeline shows products at once (the encoder's forward pass has none).

The GFLOP of all products are checked against the analytic count of `bench/train_step.py`
(matrix products only) before anything is printed: a parse that misses products fails.

Usage:
    python bench/op_profile.py --what step --variant base_208 --batch 64
    python bench/op_profile.py --what encoder --variant base_208 --units 32
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import gzip
import json
import math
import os
import pathlib
import re
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from msm_mae_jax.core import cpu_heap  # noqa: E402
from msm_mae_jax.plan import hlo  # noqa: E402
from msm_mae_jax.train import xla_flags  # noqa: E402

xla_flags.set_default_xla_flags()
HEAP_KEPT = cpu_heap.keep_heap()

LIBRARY_FUSIONS = ("__ynn_fusion", "__onednn_fusion", "__xnn_fusion")


@dataclasses.dataclass(frozen=True)
class Op:
    """One instruction of the entry computation: its kind and its products."""

    kind: str  # "library" | "xla_dot" | "other"
    flops: int  # of its matrix products (0 for "other")
    shapes: tuple[str, ...]  # one 'lhs x rhs -> out' per product


def _dot(i: hlo.Instruction, shapes: dict[str, str]) -> tuple[int, str]:
    """FLOPs and 'lhs x rhs -> out' of a dot instruction (`shapes`: its computation's)."""
    lhs, rhs, out = (hlo.arrays(t)[0].dims for t in (*(shapes[o] for o in i.operands), i.shape))
    contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", i.line)[1]
    k = math.prod(lhs[int(d)] for d in contracting.split(",") if d)
    return 2 * math.prod(out) * k, f"{lhs} x {rhs} -> {out}"


def parse_hlo(text: str) -> dict[str, Op]:
    """The ops an optimized HLO module runs (`hlo.Module.top_level`) -> `Op`; a fusion's
    products are those of every computation it calls."""
    module = hlo.parse_module(text)
    ops: dict[str, Op] = {}
    for comp, i in module.top_level():
        if i.opcode == "dot":
            flops, shape = _dot(i, module.shapes[comp])
            ops[i.name] = Op("xla_dot", flops, (shape,))
            continue
        prods = [
            _dot(j, module.shapes[c])
            for c in module.called_closure(i)
            for j in module.computations[c]
            if j.opcode == "dot"
        ]
        if not prods:
            ops[i.name] = Op("other", 0, ())
            continue
        kind = "library" if any(tag in i.line for tag in LIBRARY_FUSIONS) else "xla_dot"
        ops[i.name] = Op(kind, sum(f for f, _ in prods), tuple(s for _, s in prods))
    return ops


def read_events(trace_dir: str, ops: dict[str, Op]) -> list[tuple[str, float, float]]:
    """(name, start µs, duration µs) of the traced events that are instructions in `ops`."""
    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))
    if not files:
        raise FileNotFoundError(f"{trace_dir}: jax.profiler wrote no trace")
    with gzip.open(files[-1]) as f:
        events = json.load(f)["traceEvents"]
    return [
        (e["name"], float(e["ts"]), float(e["dur"]))
        for e in events
        if e.get("ph") == "X" and e.get("name") in ops
    ]


def timeline(events: list[tuple[str, float, float]], ops: dict[str, Op]) -> dict[str, float]:
    """Wall-clock µs with: only products, only other ops, both, >= 2 products, none."""
    edges = []
    for name, t0, dur in events:
        product = ops[name].kind != "other"
        edges += [(t0, 1, product), (t0 + dur, -1, product)]
    edges.sort(key=lambda e: (e[0], e[1]))
    out = dict.fromkeys(("products_only", "other_only", "both", "two_products", "idle"), 0.0)
    n_prod = n_other = 0
    last = edges[0][0] if edges else 0.0
    for t, step, product in edges:
        span = t - last
        if n_prod and n_other:
            out["both"] += span
        elif n_prod:
            out["products_only"] += span
        elif n_other:
            out["other_only"] += span
        else:
            out["idle"] += span
        if n_prod >= 2:
            out["two_products"] += span
        if product:
            n_prod += step
        else:
            n_other += step
        last = t
    return out


def summarise(events, ops: dict[str, Op], executions: int) -> dict:
    """Per-execution figures (ms, GFLOP) of the traced events."""
    by_kind: collections.Counter = collections.Counter()
    by_shape: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0.0])
    for name, _, dur in events:
        op = ops[name]
        by_kind[op.kind] += dur / 1e3 / executions
        if op.flops:
            row = by_shape[" + ".join(op.shapes)]  # count, ms, GFLOP
            row[0] += 1 / executions
            row[1] += dur / 1e3 / executions
            row[2] += op.flops / 1e9 / executions
    span = timeline(events, ops)
    shapes = [
        {"shape": k, "count": round(c, 2), "ms": ms, "gflop": gf, "gflop_per_s": gf / ms * 1e3}
        for k, (c, ms, gf) in sorted(by_shape.items(), key=lambda kv: -kv[1][1])
        if ms > 0
    ]
    return {
        "timeline_ms": {k: v / 1e3 / executions for k, v in span.items()},
        "kinds_ms": dict(by_kind),
        "products": shapes,
        "product_gflop": sum(s["gflop"] for s in shapes),
    }


def program(what: str, variant: str, batch: int, units: int):
    """(run(n) -> seconds, compiled executable, analytic matmul FLOPs per execution)."""
    import jax
    import numpy as np

    from bench.common import model_config_for
    from bench.train_step import JaxStep, analytic_flops

    if what == "step":
        s = JaxStep(variant, batch, "float32")
        return s.run, s.compiled, analytic_flops(s.model_config, batch)["step"]
    from msm_mae_jax.model import mae

    c = model_config_for(variant)
    params = mae.init_params(c, jax.random.key(0))["encoder"]
    encoder = mae.Encoder(c)
    fn = jax.jit(lambda p, x: encoder.apply({"params": p}, x, mask_ratio=0.0).x_BKD)
    x = jax.numpy.asarray(np.random.default_rng(0).standard_normal((units, 1, *c.input_size)))
    x = x.astype(jax.numpy.float32)
    compiled = fn.lower(params, x).compile()

    def run(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            jax.block_until_ready(compiled(params, x))
        return (time.perf_counter() - t0) / n

    n, p, d = c.num_patches + int(c.use_cls_token), c.patch_dim, c.embed_dim
    block = 2 * n * (4 * d * d + 2 * d * int(d * c.mlp_ratio)) + 4 * n * n * d
    return run, compiled, units * (2 * c.num_patches * p * d + c.depth * block)


def profile(what: str, variant: str, batch: int, units: int, executions: int) -> dict:
    import jax

    run, compiled, analytic = program(what, variant, batch, units)
    run(2)  # warm-up
    ops = parse_hlo(compiled.as_text())
    parsed = sum(op.flops for op in ops.values())
    if abs(parsed - analytic) > 0.01 * analytic:
        raise SystemExit(
            f"op_profile: the HLO's products count {parsed / 1e9:.2f} GFLOP, the analytic "
            f"count {analytic / 1e9:.2f}: the parse does not see every product"
        )
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        wall = run(executions)
        jax.profiler.stop_trace()
        events = read_events(trace_dir, ops)
    out = summarise(events, ops, executions)
    out.update(
        what=what,
        variant=variant,
        batch=batch if what == "step" else units,
        executions=executions,
        wall_ms=wall * 1e3,
        hlo_gflop=parsed / 1e9,
        analytic_gflop=analytic / 1e9,
    )
    return out


def report(r: dict) -> str:
    unit = "batch" if r["what"] == "step" else "units"
    lines = [
        f"{r['what']} {r['variant']} {unit} {r['batch']}: {r['wall_ms']:.0f} ms per execution "
        f"(profiled), products {r['hlo_gflop']:.1f} GFLOP "
        f"({r['hlo_gflop'] / r['wall_ms'] * 1e3:.1f} GFLOP/s of wall clock)",
        "  timeline: " + ", ".join(f"{k} {v:.0f} ms" for k, v in r["timeline_ms"].items()),
        "  event time by kind: " + ", ".join(f"{k} {v:.0f} ms" for k, v in r["kinds_ms"].items()),
        "  products by shape (event ms, GFLOP, GFLOP/s):",
    ]
    for s in r["products"][:20]:
        lines.append(
            f"    {s['ms']:8.1f} ms {s['gflop']:7.2f} GF {s['gflop_per_s']:6.1f} GF/s "
            f"x{s['count']:g}  {s['shape']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--what", choices=("step", "encoder"), default="step")
    ap.add_argument("--variant", default="base_208", help="configs/msm_mae.py variant")
    ap.add_argument("--batch", type=int, default=64, help="step: global batch")
    ap.add_argument("--units", type=int, default=32, help="encoder: units per call")
    ap.add_argument("--executions", type=int, default=2, help="profiled executions")
    ap.add_argument("--json", default="", help="write the figures to this file")
    a = ap.parse_args(argv)
    if a.batch < 1 or a.units < 1 or a.executions < 1:
        ap.error("--batch, --units and --executions must be >= 1")
    r = profile(a.what, a.variant, a.batch, a.units, a.executions)
    print(report(r))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=1)
    return r


if __name__ == "__main__":
    main()
