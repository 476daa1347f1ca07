"""Run a batch of independent environments on every local device, one shard each.

Environments never interact, so a batch splits across devices with no communication: each
device runs the same compiled program on its own slice (`jax.shard_map`). On a CPU, XLA
exposes one device unless asked for more; `use_host_devices(n)` asks for `n`, and each runs
on its own thread, which is how a simulation uses every core (XLA's own threading gains
little for this step: docs/benchmarks.md).
"""
from __future__ import annotations

import os
import re

import numpy as np

_FLAG = "--xla_force_host_platform_device_count"


def use_host_devices(n: int) -> None:
    """Ask XLA for `n` CPU devices. Takes effect only if called before JAX starts its
    backends (before the first computation); check `jax.local_device_count()` after."""
    if n < 1:
        raise ValueError(f"host devices: {n!r}: need at least 1")
    flags = re.sub(rf"{_FLAG}=\d+", "", os.environ.get("XLA_FLAGS", "")).strip()
    os.environ["XLA_FLAGS"] = f"{flags} {_FLAG}={n}".strip()


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity where the OS reports one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def host_devices_requested() -> bool:
    """Whether ``XLA_FLAGS`` already names a host device count (the caller's choice stands)."""
    return _FLAG in os.environ.get("XLA_FLAGS", "")


def shard_envs(fn, n_devices: int | None = None, n_shared: int = 0):
    """``fn(*args)`` with every argument and output split along its leading (environment)
    axis over `n_devices` local devices (default: all), except the last ``n_shared`` arguments
    (pytrees every device gets whole, e.g. shared params). The leading size must divide evenly;
    `fn` sees its device's slice and must treat environments independently."""
    import jax
    from jax.sharding import Mesh, PartitionSpec as P

    devices = jax.local_devices()[: n_devices or jax.local_device_count()]
    if len(devices) == 1:
        return jax.jit(fn)
    mesh = Mesh(np.asarray(devices), ("envs",))

    def sharded(*args):
        k = len(args) - n_shared
        specs = tuple([P("envs")] * k + [P()] * n_shared)
        return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=P("envs"), check_vma=False)(*args)

    return jax.jit(sharded)
