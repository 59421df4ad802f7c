"""Device mesh and logical-axis sharding, as MaxText / flax lm1b do it.

The model names the axes of its parameters and activations ('batch', 'embed', 'mlp', ...);
`config.sharding_rules` maps those logical names to mesh axes; `config.mesh` gives the mesh
axes and their sizes (one may be -1: all remaining devices).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from msm_mae_jax.core.errors import ConfigError

Rules = tuple[tuple[str, Any], ...]


def parse_mesh_spec(spec: Sequence, num_devices: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """[('data', -1), ('fsdp', 2)] -> (names, sizes) with the -1 inferred from num_devices."""
    try:
        pairs = [(str(name), int(size)) for name, size in spec]
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config.mesh={spec!r} must be a list of (axis name, size)") from e
    if not pairs:
        raise ConfigError("config.mesh is empty; expected e.g. [('data', -1)]")
    names = tuple(n for n, _ in pairs)
    if len(set(names)) != len(names):
        raise ConfigError(f"config.mesh has repeated axis names: {names}")
    sizes = [s for _, s in pairs]
    if sum(s == -1 for s in sizes) > 1:
        raise ConfigError(f"config.mesh={pairs}: at most one axis size may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise ConfigError(f"config.mesh={pairs}: sizes must be positive or -1")
    known = math.prod(s for s in sizes if s != -1)
    if num_devices % known:
        raise ConfigError(
            f"config.mesh={pairs}: the product of the given sizes ({known}) does "
            f"not divide the number of devices ({num_devices})"
        )
    sizes = [num_devices // known if s == -1 else s for s in sizes]
    return names, tuple(sizes)


def make_mesh(spec: Sequence, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with Auto axis types (sharding constraints are hints to GSPMD).

    When the sizes multiply to fewer devices than available (single process only), the first
    devices are used: handy to compare 1-device and n-device runs in one process.
    """
    devices = list(jax.devices() if devices is None else devices)
    names, sizes = parse_mesh_spec(spec, len(devices))
    n = math.prod(sizes)
    if n < len(devices):
        if jax.process_count() > 1:
            raise ConfigError(
                f"config.mesh={list(zip(names, sizes, strict=True))} uses {n} of "
                f"{len(devices)} devices; multi-process runs must use them all"
            )
        devices = devices[:n]
    auto = (jax.sharding.AxisType.Auto,) * len(names)
    return jax.make_mesh(sizes, names, axis_types=auto, devices=devices)


def parse_rules(rules: Sequence, mesh: Mesh) -> Rules:
    """Validates config.sharding_rules against the mesh; returns flax-style rule tuples."""
    out = []
    for item in rules:
        try:
            name, axes = item
        except (TypeError, ValueError) as e:
            raise ConfigError(
                f"config.sharding_rules entry {item!r} must be "
                "(logical name, mesh axis | tuple of mesh axes | None)"
            ) from e
        if isinstance(axes, list):
            axes = tuple(axes)
        for a in axes if isinstance(axes, tuple) else (axes,):
            if a is not None and a not in mesh.axis_names:
                raise ConfigError(
                    f"config.sharding_rules maps {name!r} to mesh axis {a!r}, "
                    f"which config.mesh does not have ({mesh.axis_names})"
                )
        out.append((str(name), axes))
    return tuple(out)


def _axes_size(mesh: Mesh, axes) -> int:
    if axes is None:
        return 1
    axes = axes if isinstance(axes, tuple) else (axes,)
    return math.prod(mesh.shape[a] for a in axes)


def batch_axes(rules: Rules) -> Any:
    """Mesh axes of the logical 'batch' axis (None when replicated)."""
    return dict(rules).get("batch")


def batch_shards(mesh: Mesh, rules: Rules) -> int:
    """How many pieces the global batch is split into."""
    return _axes_size(mesh, batch_axes(rules))


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int = 4) -> NamedSharding:
    """Leading (batch) dimension split over the 'batch' mesh axes, the rest replicated."""
    return NamedSharding(mesh, P(batch_axes(rules), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def spec_for_shape(logical: P | None, shape: Sequence[int], mesh: Mesh, rules: Rules) -> P:
    """Logical PartitionSpec -> mesh PartitionSpec; a dimension whose size the mesh axes do
    not divide is replicated instead (e.g. a 4-row table over an 8-way fsdp axis)."""
    if logical is None or len(shape) == 0:
        return P()
    mesh_spec = nn.logical_to_mesh_axes(tuple(logical), rules)
    mesh_spec = tuple(mesh_spec) + (None,) * (len(shape) - len(mesh_spec))
    fixed = [
        ax if dim % _axes_size(mesh, ax) == 0 else None
        for ax, dim in zip(mesh_spec, shape, strict=True)
    ]
    return P(*fixed)


def param_shardings(boxed_abstract: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for an (abstract) tree whose leaves may be nn.Partitioned boxes;
    returns an unboxed tree of NamedSharding."""
    specs = nn.get_partition_spec(boxed_abstract)
    shapes = nn.meta.unbox(boxed_abstract)
    return jax.tree.map(
        lambda s, x: NamedSharding(mesh, spec_for_shape(s, x.shape, mesh, rules)),
        specs,
        shapes,
        is_leaf=lambda s: isinstance(s, P) or s is None,
    )


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Any) -> Iterator[None]:
    """The mesh and the logical-axis rules, both active: for tracing and running the model."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield
