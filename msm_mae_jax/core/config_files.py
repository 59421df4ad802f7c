"""Config files: finding them from any directory, loading a variant, applying overrides.

A spec is `[FILE][:VARIANT]`. Which file it names:

- no FILE (`tiny`, or nothing): the command's default bundled config (`msm_mae.py`);
- a FILE without a path separator (`msm_mae.py`, `msm_mae`, `finetune.py`): the bundled
  config of that name, never a file of the current directory;
- a FILE with a separator (`./mine.py`, `configs/msm_mae.py`, `/abs/x.py`, `~/x.py`): that
  file on disk, the only way a file of the user's is run; where it does not exist and it is
  `configs/NAME.py` (the checkout's folder of bundled configs), the bundled NAME.py.

The project's `configs/` folder is installed as the package `msm_mae_jax.configs`, so the
same spec works from any directory and in a non-editable install. Each file defines
`get_config(variant)` returning an `ml_collections.ConfigDict` and a `VARIANTS` tuple.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
from typing import Any

import ml_collections

from msm_mae_jax.core.errors import ConfigError

DEFAULT_FILE = "msm_mae.py"


@functools.cache
def bundled_dir() -> str:
    """The installed `configs/` folder (msm_mae_jax.configs), else the checkout's."""
    spec = importlib.util.find_spec("msm_mae_jax.configs")
    if spec is not None and spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(root, "configs")


def bundled_files() -> list[str]:
    """Names of the bundled config files (those defining get_config)."""
    d = bundled_dir()
    return sorted(f for f in os.listdir(d) if f.endswith(".py") and not f.startswith("_"))


def split_spec(spec: str, default_file: str = DEFAULT_FILE) -> tuple[str, str]:
    """'path.py:variant' | 'path.py' | 'variant' -> (file part, variant part)."""
    spec = str(spec or "").strip()
    if ":" in spec:
        path, _, variant = spec.rpartition(":")
        return path or default_file, variant
    if spec.endswith(".py") or is_path(spec):
        return spec, ""
    return default_file, spec


def is_path(name: str) -> bool:
    """Whether a config FILE is written as a path (holds a separator): only those are read
    from disk; a bare name means a bundled config."""
    seps = {"/", os.sep, os.altsep} - {None}
    return name.startswith("~") or any(s in name for s in seps)


def resolve_file(path: str) -> str:
    """The config file a FILE part names (see the module docstring); ConfigError if none."""
    bundled_names = ", ".join(bundled_files())
    if not is_path(path):
        name = path if path.endswith(".py") else path + ".py"
        bundled = os.path.join(bundled_dir(), name)
        if os.path.isfile(bundled):
            return bundled
        raise ConfigError(
            f"config file {path!r} is not a bundled config ({bundled_names}); a config file "
            f"of your own is named by its path, e.g. ./{name}"
        )
    expanded = os.path.expanduser(path)
    if os.path.isfile(expanded):
        return os.path.abspath(expanded)
    parent, name = os.path.split(os.path.normpath(expanded))
    bundled = os.path.join(bundled_dir(), name)
    if os.path.basename(parent) == "configs" and os.path.isfile(bundled):
        return bundled
    raise ConfigError(
        f"config file {path!r} not found (relative paths start at {os.getcwd()}; the bundled "
        f"configs, named without a path: {bundled_names})"
    )


def file_variants(path: str) -> tuple[str, ...]:
    """The VARIANTS tuple a config file declares (read without running the file)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "VARIANTS" for t in node.targets
        ):
            try:
                return tuple(ast.literal_eval(node.value))
            except ValueError:
                break
    return ()


def resolve(spec: str, default_file: str = DEFAULT_FILE) -> tuple[str, str]:
    """(absolute config file, variant) of a spec; ConfigError naming the bad part."""
    path, variant = split_spec(spec, default_file)
    path = resolve_file(path)
    known = file_variants(path)
    if variant and known and variant not in known:
        raise ConfigError(
            f"unknown config variant {variant!r} in {os.path.basename(path)}; "
            f"known: {', '.join(known)}"
        )
    return path, variant


def load_file(path: str, variant: str = "") -> ml_collections.ConfigDict:
    """Runs `get_config(variant or None)` of a config file."""
    mod_spec = importlib.util.spec_from_file_location(f"_msm_mae_config_{abs(hash(path))}", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod.get_config(variant or None)


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any], where: str):
    """Dotted `key: value` overrides; every key must be declared in the config."""
    for key, value in (overrides or {}).items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
                raise ConfigError(f"unknown config key {key!r} in {where}")
            node = node[p]
        if leaf not in node:
            raise ConfigError(f"unknown config key {key!r} in {where}")
        node[leaf] = value
    return config


def load_config(
    spec: str = "", overrides: dict[str, Any] | None = None, default_file: str = DEFAULT_FILE
) -> ml_collections.ConfigDict:
    """'configs/msm_mae.py:tiny' (or 'msm_mae:tiny', or just 'tiny') -> its ConfigDict.

    Overrides must name declared keys, as `--config.key=value` does on the command line.
    """
    path, variant = resolve(spec, default_file)
    return apply_overrides(load_file(path, variant), overrides or {}, path)
