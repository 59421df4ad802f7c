"""The config rules: every numeric key of every bundled variant has one, the variants pass,
and for each key a value its rule forbids (or NaN/inf for any number) is refused naming it."""

import copy
import math

import pytest

from msm_mae_jax.core import config_checks, config_files
from msm_mae_jax.core.errors import ConfigError
from msm_mae_jax.finetune import config_rules as finetune_rules
from msm_mae_jax.train import config_rules as train_rules

FAMILIES = {"msm_mae.py": train_rules, "finetune.py": finetune_rules}


def _variants():
    for name, rules in FAMILIES.items():
        path, _ = config_files.resolve(f"{name}:")
        for variant in config_files.file_variants(path):
            yield name, variant, rules


def _numeric(value) -> bool:
    return any(True for _ in config_checks.numbers(value)) and not isinstance(value, str)


@pytest.mark.parametrize("name,variant,rules", list(_variants()))
def test_every_numeric_key_has_a_rule_and_the_variants_pass(name, variant, rules):
    config = config_files.load_config(f"{name}:{variant}")
    flat = config_checks.flatten(config)
    structural = {"mesh", "sharding_rules"}  # (name, size) pairs, checked when the mesh is built
    unruled = sorted(k for k, v in flat.items() if _numeric(v) and k not in structural)
    assert [k for k in unruled if k not in rules.RULES] == []
    assert [k for k in rules.RULES if k not in flat] == []  # no rule for a key that is gone
    rules.check_config(config)


CANDIDATES = (-1e9, -2, -1, -0.5, 0, 0.5, 1, 1.5, 1e9)


def _forbidden(rule: config_checks.Rule, value) -> list:
    """The candidate values of the key's type that its rule forbids."""
    if isinstance(value, tuple):
        cands = [tuple(type(v)(c) for v in value) for c in CANDIDATES] + [value[::-1]]
    else:
        cands = [type(value)(c) for c in CANDIDATES]
    return [c for c in cands if not rule.ok(c)]


def _set(config, key, value):
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[leaf] = value


@pytest.mark.parametrize("name,rules", list(FAMILIES.items()))
def test_each_forbidden_value_is_refused_naming_the_key(name, rules):
    base = config_files.load_config(f"{name}:tiny")
    flat = config_checks.flatten(base)
    for key, rule in rules.RULES.items():
        forbidden = _forbidden(rule, flat[key])
        assert forbidden or rule is config_checks.ANY, key  # every rule forbids something
        for bad in forbidden:
            config = copy.deepcopy(base)
            _set(config, key, bad)
            with pytest.raises(ConfigError, match=rf"^config\.{key}="):
                rules.check_config(config)
        if isinstance(flat[key], float):
            for bad in (math.nan, math.inf):
                config = copy.deepcopy(base)
                _set(config, key, bad)
                with pytest.raises(ConfigError, match=rf"config\.{key}=.*not a finite number"):
                    rules.check_config(config)


def test_the_reported_cases_are_refused():
    """`total_steps=-5` used to train `epochs` worth of steps, `optim.lr=-1` to take `blr`."""
    for key, value in (("total_steps", -5), ("optim.lr", -1.0), ("warmup_steps", -2)):
        c = config_files.load_config("tiny", {key: value})
        with pytest.raises(ConfigError, match=rf"config\.{key}={value}"):
            train_rules.check_config(c)
    c = config_files.load_config("finetune.py:tiny", {"early_stop_patience": -2})
    with pytest.raises(ConfigError, match="early_stop_patience=-2 must be >= -1"):
        finetune_rules.check_config(c)
