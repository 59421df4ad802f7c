"""bench/op_profile.py: its HLO parse sees every matrix product and its timeline adds up."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from bench.op_profile import Op, parse_hlo, summarise, timeline
from bench.train_step import analytic_flops
from msm_mae_jax.core.config_files import load_config
from msm_mae_jax.model.config import ModelConfig
from tests.conftest import ROOT


def test_parse_counts_plain_batched_and_fused_products():
    def f(a_MK, b_KN, q_BNE, k_BME):
        s_BNM = jnp.einsum("bne,bme->bnm", q_BNE, k_BME)
        o_BNE = jnp.einsum("bnm,bme->bne", jax.nn.softmax(s_BNM), k_BME)
        return jnp.tanh(a_MK @ b_KN), o_BNE

    args = [jnp.ones(s) for s in ((32, 48), (48, 16), (4, 8, 16), (4, 8, 16))]
    ops = parse_hlo(jax.jit(f).lower(*args).compile().as_text())
    expected = 2 * 32 * 48 * 16 + 2 * (2 * 4 * 8 * 8 * 16)  # the GEMM, both attention products
    assert sum(op.flops for op in ops.values()) == expected
    shapes = {s for op in ops.values() for s in op.shapes}
    assert "(32, 48) x (48, 16) -> (32, 16)" in shapes
    assert {op.kind for op in ops.values() if op.flops} <= {"library", "xla_dot"}
    assert all(op.flops == 0 for op in ops.values() if op.kind == "other")


HLO = """HloModule m

%inner (a: f32[6,5], b: f32[5,3]) -> f32[6,3] {
  %a = f32[6,5]{1,0} parameter(0)
  %b = f32[5,3]{1,0} parameter(1)
  ROOT %dot.9 = f32[6,3]{1,0} dot(%a, %b), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%attn (q: f32[2,4,8], k: f32[2,4,8]) -> f32[2,4,8] {
  %q = f32[2,4,8]{2,1,0} parameter(0)
  %k = f32[2,4,8]{2,1,0} parameter(1)
  %s = f32[2,4,4]{2,1,0} dot(%q, %k), lhs_batch_dims={0}, lhs_contracting_dims={2}, rhs_batch_dims={0}, rhs_contracting_dims={2}
  %e = f32[2,4,4]{2,1,0} exponential(%s)
  ROOT %o = f32[2,4,8]{2,1,0} dot(%e, %k), lhs_batch_dims={0}, lhs_contracting_dims={2}, rhs_batch_dims={0}, rhs_contracting_dims={1}
}

%outer (x: f32[6,5], y: f32[5,3]) -> f32[6,3] {
  %x = f32[6,5]{1,0} parameter(0)
  %y = f32[5,3]{1,0} parameter(1)
  ROOT %c = f32[6,3]{1,0} call(%x, %y), to_apply=%inner, calls=%inner
}

ENTRY %main (p0: f32[2,4,8], p1: f32[6,5], p2: f32[5,3]) -> f32[6,3] {
  %p0 = f32[2,4,8]{2,1,0} parameter(0)
  %p1 = f32[6,5]{1,0} parameter(1)
  %p2 = f32[5,3]{1,0} parameter(2)
  %ynn_fusion = f32[2,4,8]{2,1,0} fusion(%p0, %p0), kind=kCustom, calls=%attn, backend_config={"fusion_config":{"kind":"__ynn_fusion"}}
  %nested = f32[6,3]{1,0} fusion(%p1, %p2), kind=kLoop, calls=%outer
  %dot.1 = f32[6,3]{1,0} dot(%p1, %p2), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %add = f32[6,3]{1,0} add(%nested, %dot.1)
}
"""  # noqa: E501 (HLO instructions are one line each)


def test_parse_of_fusions_with_several_and_nested_products():
    ops = parse_hlo(HLO)
    assert ops["ynn_fusion"] == Op(
        "library",
        2 * 2 * 4 * 4 * 8 + 2 * 2 * 4 * 8 * 4,
        ("(2, 4, 8) x (2, 4, 8) -> (2, 4, 4)", "(2, 4, 4) x (2, 4, 8) -> (2, 4, 8)"),
    )
    assert ops["nested"] == Op("xla_dot", 2 * 6 * 3 * 5, ("(6, 5) x (5, 3) -> (6, 3)",))
    assert ops["dot.1"] == ops["nested"]
    assert ops["add"] == Op("other", 0, ())


def test_timeline_splits_the_wall_clock_by_what_runs():
    ops = {
        "g1": Op("library", 10, ("a",)),
        "g2": Op("library", 10, ("b",)),
        "e": Op("other", 0, ()),
    }
    # g1 0-10, g2 5-12 (two products 5-10), e 11-15 (both 11-12), nothing 15-20, e 20-21.
    events = [("g1", 0.0, 10.0), ("g2", 5.0, 7.0), ("e", 11.0, 4.0), ("e", 20.0, 1.0)]
    t = timeline(events, ops)
    assert t == {
        "products_only": 11.0,
        "other_only": 4.0,
        "both": 1.0,
        "two_products": 5.0,
        "idle": 5.0,
    }
    s = summarise(events, ops, executions=1)
    assert s["kinds_ms"] == {"library": 17.0 / 1e3, "other": 5.0 / 1e3}
    assert [p["shape"] for p in s["products"]] == ["a", "b"]
    # Two executions of the same program: the same counts and GFLOP per execution.
    twice = summarise(events + [(n, t + 100.0, d) for n, t, d in events], ops, executions=2)
    assert [(p["count"], p["gflop"]) for p in twice["products"]] == [(1, 1e-8), (1, 1e-8)]


@pytest.mark.slow
@pytest.mark.parametrize("what", ["step", "encoder"])
def test_profile_of_the_tiny_model_accounts_for_every_product(tmp_path, what):
    out = tmp_path / "p.json"
    cmd = [sys.executable, "bench/op_profile.py", "--what", what, "--variant", "tiny"]
    cmd += ["--batch", "8", "--units", "4", "--executions", "2", "--json", str(out)]
    env = dict(os.environ, XLA_FLAGS="")  # one CPU device
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    if what == "step":
        c = ModelConfig(**load_config("tiny").model.to_dict())
        assert r["analytic_gflop"] == pytest.approx(analytic_flops(c, 8)["step"] / 1e9)
    assert r["hlo_gflop"] == pytest.approx(r["analytic_gflop"], rel=0.01)
    # Every product op was traced once per execution: the traced GFLOP are the program's.
    assert r["product_gflop"] == pytest.approx(r["hlo_gflop"], rel=1e-6)
    assert r["kinds_ms"]["library"] > 0 and r["kinds_ms"]["other"] > 0
    assert sum(p["count"] for p in r["products"]) >= 4
    assert f"products {r['hlo_gflop']:.1f} GFLOP" in proc.stdout
