"""What a resumed run may change: the config of the checkpoint against the config given now.

A resumed run continues the same optimisation: its batches are `step x batch_size` into the
seeded data order and its schedule is the one it started with. Changing a key that defines
these (batch size, seed, data source, schedule, optimiser) silently makes a different run,
so it is refused unless the user allows it (`msm-mae train --allow-config-change`). Keys in
`SAFE_TO_CHANGE` only say how the run is observed or laid out on devices and always pass.
"""

from __future__ import annotations

import json
from typing import Any

from msm_mae_jax.core.errors import ConfigError

# Keys (or key prefixes, ending in '.') that a resumed run may change freely.
SAFE_TO_CHANGE = (
    "log_every_steps",
    "ckpt_every_steps",
    "keep_checkpoints",
    "figure_every_steps",
    "figure_clips",
    "probe.",
    # Devices and processes: restoring re-shards, the data order does not depend on them for
    # the synthetic and files sources.
    "mesh",
    "sharding_rules",
    "coordinator_address",
    "num_processes",
    "process_id",
    "data.prefetch",
    "model.remat",  # recomputation in the backward pass: same numbers
)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix[:-1]: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}."))
    return out


def _safe(key: str) -> bool:
    return any(key == s or (s.endswith(".") and key.startswith(s)) for s in SAFE_TO_CHANGE)


def changed_keys(saved: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """(key, saved value, current value) of keys that differ and are not safe to change.

    Values are compared as JSON (tuples and lists alike). Keys that only one side has (a
    config written by another version of the code) are not differences."""
    norm = lambda d: _flatten(json.loads(json.dumps(d, default=str)))  # noqa: E731
    old, new = norm(saved), norm(current)
    return [
        (k, old[k], new[k])
        for k in sorted(old.keys() & new.keys())
        if old[k] != new[k] and not _safe(k)
    ]


def check_config_change(
    saved: dict, current: dict, where: str, allow: bool
) -> list[tuple[str, Any, Any]]:
    """The unsafe changes; ConfigError naming them unless `allow`."""
    changes = changed_keys(saved, current)
    if changes and not allow:
        raise ConfigError(
            f"{where} was trained with another config: {describe_changes(changes)}. Resume "
            "with the same values, use a new workdir, or pass --allow-config-change "
            "(msm-mae train) to continue with the new values (the data position becomes "
            "step x the new batch size)"
        )
    return changes


def describe_changes(changes: list[tuple[str, Any, Any]]) -> str:
    return ", ".join(f"{k} {old!r} -> {new!r}" for k, old, new in changes)
