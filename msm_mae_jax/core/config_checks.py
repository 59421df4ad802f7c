"""Config values checked before a run starts: one line naming the key, never a silent
reinterpretation (a negative step count read as "take epochs", a negative lr as "take blr").

Each config family (pre-training, fine-tuning) has a table of `Rule`s, one per numeric key:
what the key's value may be, including its sentinels ("0: from epochs", "-1: never").
`check` applies a table to a config: every number must be finite (NaN and inf mean nothing
anywhere), every key of the table must satisfy its rule. Tables are checked against the
bundled configs by the tests, so a new numeric key without a rule is noticed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from msm_mae_jax.core.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a value may be: `ok(value)`, described by `what` ("> 0", "in [0, 1)", ...)."""

    ok: Callable[[Any], bool]
    what: str


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def greater(lo: float, note: str = "") -> Rule:
    return Rule(lambda v: _num(v) and v > lo, f"> {lo:g}{note}")


def at_least(lo: float, note: str = "") -> Rule:
    return Rule(lambda v: _num(v) and v >= lo, f">= {lo:g}{note}")


def in_range(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Rule:
    def ok(v: Any) -> bool:
        return _num(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)

    return Rule(ok, f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}")


def each(rule: Rule, n: int) -> Rule:
    """A tuple of `n` numbers, each satisfying `rule`."""
    return Rule(
        lambda v: isinstance(v, (tuple, list)) and len(v) == n and all(rule.ok(x) for x in v),
        f"{n} numbers, each {rule.what}",
    )


def interval() -> Rule:
    """A (low, high) pair of positive numbers, low <= high."""
    return Rule(
        lambda v: (
            isinstance(v, (tuple, list))
            and len(v) == 2
            and all(_num(x) and x > 0 for x in v)
            and v[0] <= v[1]
        ),
        "a pair (low, high) with 0 < low <= high",
    )


ANY = Rule(_num, "a number")
POSITIVE = greater(0)
NON_NEGATIVE = at_least(0)
FRACTION = in_range(0, 1, hi_open=True)  # [0, 1)


def numbers(value: Any) -> Iterator[float]:
    """The numbers in a value, also inside nested tuples/lists (e.g. the mesh)."""
    if isinstance(value, (tuple, list)):
        for v in value:
            yield from numbers(v)
    elif _num(value):
        yield value


def flatten(config: Mapping, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of every leaf of a (nested) ConfigDict or dict."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if hasattr(v, "items"):  # a ConfigDict or a dict
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check(config: Mapping, rules: Mapping[str, Rule]) -> None:
    """ConfigError naming the first key whose value is not finite or breaks its rule."""
    flat = flatten(config)
    for key, value in flat.items():
        if any(isinstance(x, float) and not math.isfinite(x) for x in numbers(value)):
            raise ConfigError(f"config.{key}={value!r}: not a finite number")
    for key, rule in rules.items():
        if key in flat and not rule.ok(flat[key]):
            raise ConfigError(f"config.{key}={flat[key]!r} must be {rule.what}")
