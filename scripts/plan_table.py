"""The TPU plan table of docs/training.md from `msm-mae plan --json` files: one row per (slice,
model, mesh), slices as that table orders them; besides the roofline (the planner's), the rate
the FLOPs alone allow (batch / (FLOPs / peak)).

    python scripts/plan_table.py scripts/plan_tpu/*.json
"""

import json
import sys

from msm_mae_jax.plan.chips import CHIPS

SLICES = ("v4-8", "v4-32", "v5e-16", "v5e-256", "v5p-128")
MODELS = {"base_208": "ViT-B 80x208", "base_608": "ViT-B 80x608", "large_208": "ViT-L 80x208"}
GiB = 2**30


def mesh_text(mesh: dict) -> str:
    return " × ".join(f"{k} {v}" for k, v in mesh.items() if v > 1)


def row(p: dict) -> str:
    a = p["analysis"]
    r = p["roofline"]
    if a is None:
        mem = f"needs {p['memory_bytes'] / GiB:.0f}" if p["memory_bytes"] else "-"
        cells = [mem, "**no**", "-", "-", "-", "-", "-"]
    else:
        m = a["memory"]
        cells = [
            f"{m['total'] / GiB:.1f} ({m['argument'] / GiB:.1f} + {m['temp'] / GiB:.1f})",
            "yes",
            f"{a['flops'] / 1e12:.2f}",
            f"{r['samples_per_second']:,.0f} ({r['bound']})",
            f"{p['batch'] / (a['flops'] / CHIPS[p['chip']].peak_bf16_flops):,.0f}",
            f"{r['audioset_100_epochs_hours']:.2f}",
            f"{a['compile_seconds']:.0f}",
        ]
    head = [
        p["slice"],
        MODELS.get(p["variant"], p["variant"]),
        str(p["batch"]),
        mesh_text(p["mesh"]),
    ]
    return "| " + " | ".join(head + cells) + " |"


def main(paths: list[str]) -> None:
    plans = [p for path in paths for p in json.load(open(path))["plans"]]
    order = {(s, m): i for i, (s, m) in enumerate((s, m) for s in SLICES for m in MODELS)}
    plans.sort(key=lambda p: (order.get((p["slice"], p["variant"]), 99), p["mesh"]["fsdp"]))
    print(
        "| slice | model | batch | mesh | GiB/chip: total (args + temp) | fits | TFLOP/chip/step "
        "| samples/s ≤ (bound) | compute alone ≤ | AS-2M × 100 ep. h ≥ | compile s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for p in plans:
        print(row(p))


if __name__ == "__main__":
    main(sys.argv[1:])
