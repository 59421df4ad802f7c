"""`--config PATH[:VARIANT]` and `--config.key=value` on an argparse command line.

The spec is resolved with `core.config_files` (bundled configs from any directory, unknown
variants listed); the overrides are parsed by ml_collections' `config_flags` (the same value
syntax as `DEFINE_config_file`: `--config.mesh="(('data',-1),('fsdp',4),('tensor',1))"`,
`--config.model.remat` / `--config.model.noremat` for booleans, `--config.key value`) on a
private absl FlagValues, so nothing global is touched. Unknown keys are caught first, with a
suggestion, and every mistake is a ConfigError naming the key and the value.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence
from typing import Any

import ml_collections

from msm_mae_jax.core import config_files
from msm_mae_jax.core.errors import ConfigError

_OVERRIDE = re.compile(r"^--(?P<no>no)?config\.(?P<key>[^=\s]+)(?P<eq>=)?(?P<value>.*)$", re.S)


def flatten(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of every leaf."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, ml_collections.ConfigDict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _lookup(config: ml_collections.ConfigDict, key: str) -> tuple[bool, Any]:
    """(found, value) of a dotted key; a ConfigDict counts as found."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _field(config: ml_collections.ConfigDict, key: str, where: str) -> Any:
    """The current value of an override's key; ConfigError with a suggestion if unknown."""
    found, value = _lookup(config, key)
    if found:
        return value
    close = difflib.get_close_matches(key, list(flatten(config)), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"unknown config key {key!r} in {where}{hint} (every key is declared in "
        "the config file; `--help` lists the common ones)"
    )


def override_tokens(config: ml_collections.ConfigDict, extras: Sequence[str]) -> list[str]:
    """Checks the `--config.key[=value]`, `--config.key value` and `--[no]config.flag`
    arguments left over by argparse; -> the tokens for absl. Problems are ConfigErrors."""
    tokens, i = [], 0
    while i < len(extras):
        tok = extras[i]
        m = _OVERRIDE.match(tok)
        if not m:
            raise ConfigError(
                f"unrecognized argument {tok!r} (config overrides are --config.KEY=VALUE)"
            )
        value = _field(config, m["key"], tok)
        if m["no"] and (m["eq"] is not None or not isinstance(value, bool)):
            raise ConfigError(f"{tok}: --noconfig.KEY only switches off a boolean key")
        tokens.append(tok)
        i += 1
        if m["eq"] is None and not isinstance(value, bool):
            if i >= len(extras) or extras[i].startswith("--"):
                raise ConfigError(f"{tok} needs a value: {tok}=VALUE")
            tokens.append(extras[i])
            i += 1
    return tokens


def override_keys(extras: Sequence[str]) -> set[str]:
    """The dotted keys that `--config.KEY[=VALUE]` / `--noconfig.KEY` arguments set."""
    return {m["key"] for tok in extras if (m := _OVERRIDE.match(tok))}


def parse_config(
    spec: str, extras: Sequence[str], default_file: str = config_files.DEFAULT_FILE
) -> ml_collections.ConfigDict:
    """The locked ConfigDict of `spec` with the overrides in `extras` applied."""
    from absl import flags
    from ml_collections import config_flags

    path, variant = config_files.resolve(spec, default_file)
    config = config_files.load_file(path, variant)
    tokens = override_tokens(config, extras)
    argv = ["msm-mae", *tokens]
    fv = flags.FlagValues()
    try:
        holder = config_flags.DEFINE_config_dict(
            "config", config, flag_values=fv, lock_config=True, sys_argv=argv
        )
        rest = fv(argv)
    except flags.Error as e:  # bad values, unsupported types, conflicting overrides
        raise ConfigError(_flag_message(config, str(e))) from None
    if rest[1:]:
        raise ConfigError(f"unexpected argument(s) {rest[1:]} after the config overrides")
    return holder.value


def _flag_message(config: ml_collections.ConfigDict, msg: str) -> str:
    """absl's 'flag --config.k=v: detail' -> 'bad value 'v' for config key k (int, default..)'."""
    m = re.match(r"flag --config\.(?P<key>[^=\s]+)=(?P<value>.*?): (?P<detail>.*)$", msg, re.S)
    if not m:
        return msg
    _, current = _lookup(config, m["key"])
    if isinstance(current, ml_collections.ConfigDict):
        return f"config key {m['key']} is a group of keys: set {m['key']}.KEY=VALUE instead"
    kind = type(current).__name__
    return (
        f"bad value {m['value']!r} for config key {m['key']} ({kind}, default "
        f"{current!r}): {m['detail']}"
    )


COMMON_KEYS = (
    "seed",
    "batch_size",
    "grad_accum_steps",
    "total_steps",
    "epochs",
    "warmup_steps",
    "warmup_epochs",
    "optim.blr",
    "optim.lr",
    "model.dtype",
    "model.remat",
    "mesh",
    "data.source",
    "data.norm_stats_method",
    "init_from",
    "log_every_steps",
    "ckpt_every_steps",
    "figure_every_steps",
    "probe.every_steps",
)


def help_epilog(spec: str, default_file: str = config_files.DEFAULT_FILE) -> str:
    """The variants of the spec's config file and the common keys with their defaults."""
    try:
        path, variant = config_files.resolve(spec, default_file)
        config = config_files.load_file(path, variant)
    except ConfigError as e:
        return f"config: {e}"
    name = os.path.basename(path)
    variants = config_files.file_variants(path)
    values = flatten(config)
    width = max(len(k) for k in COMMON_KEYS)
    rows = [f"  {k:<{width}}  {values[k]!r}" for k in COMMON_KEYS if k in values]
    shown = variant or str(config.get("variant", "") or "the default variant")
    return "\n".join(
        [
            f"config variants of {name} (--config {name}:VARIANT, or just VARIANT):",
            f"  {', '.join(variants) or '(none declared)'}",
            "",
            f"common keys, --config.KEY=VALUE (values of {shown}; `--config VARIANT --help`",
            "shows another variant's):",
            *rows,
            "",
            f"Every key declared in {name} can be set the same way; tuples as",
            "  --config.mesh=\"(('data',-1),('fsdp',4),('tensor',1))\"",
        ]
    )
