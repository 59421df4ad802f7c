"""The README's traffic table: per sample FLOPs and bytes of the compiled ViT-B step and its
roofline bounds, from two `msm-mae plan --breakdown --json` files (before and after a change
to the program), one row per plan. Bytes are XLA's count (all memory spaces, the planner's
roofline) and the breakdown's HBM part of it.

    python scripts/traffic_table.py scripts/plan_tpu/traffic_before.json \
        scripts/plan_tpu/traffic_after.json
"""

import json
import sys

MODELS = {"base_208": "ViT-B 80x208"}


def _key(p: dict) -> tuple:
    return p["slice"], p["variant"], p["batch"], tuple(sorted(p["mesh"].items()))


def _rate(p: dict, seconds: float) -> float:
    return p["batch"] / seconds


def _change(a: float, b: float, fmt: str) -> str:
    return f"{fmt.format(a)} → {fmt.format(b)}" if fmt.format(a) != fmt.format(b) else fmt.format(a)


def rows(before: list[dict], after: list[dict]) -> list[str]:
    old = {_key(p): p for p in before}
    out = []
    for p in after:
        q = old.get(_key(p))
        if q is None or p["analysis"] is None or q["analysis"] is None:
            continue
        per = p["batch"] / p["chips"]
        peak_s = {"v4": 275e12, "v5e": 197e12, "v5p": 459e12, "v6e": 918e12}[p["chip"]]
        compute = _rate(p, p["analysis"]["flops"] / peak_s)
        xla = [_rate(x, x["roofline"]["step_seconds"]) for x in (q, p)]
        hbm = [_rate(x, x["roofline"]["hbm_step_seconds"]) for x in (q, p)]
        cells = [
            p["slice"],
            MODELS.get(p["variant"], p["variant"]),
            f"{per:g}",
            _change(q["per_sample"]["flops"] / 1e9, p["per_sample"]["flops"] / 1e9, "{:.2f}"),
            _change(q["per_sample"]["bytes"] / 1e6, p["per_sample"]["bytes"] / 1e6, "{:.0f}"),
            _change(
                q["per_sample"]["hbm_bytes"] / 1e6, p["per_sample"]["hbm_bytes"] / 1e6, "{:.1f}"
            ),
            _change(*xla, "{:,.0f}"),
            _change(*hbm, "{:,.0f}"),
            f"{compute:,.0f}",
        ]
        out.append("| " + " | ".join(cells) + " |")
    return out


def main(before_path: str, after_path: str) -> None:
    before = json.load(open(before_path))["plans"]
    after = json.load(open(after_path))["plans"]
    print(
        "| slice | model | samples/chip | GFLOP/sample | MB/sample, XLA's count "
        "| MB/sample to/from HBM | samples/s ≤ (XLA's bytes) | samples/s ≤ (HBM part) "
        "| compute alone ≤ (after) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for line in rows(before, after):
        print(line)


if __name__ == "__main__":
    main(*sys.argv[1:3])
