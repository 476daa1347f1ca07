"""Reductions over a short, static last axis, written as elementwise operations.

XLA:CPU runs a reduction as its own kernel (a library call for some shapes), with a fixed cost
of tens of microseconds per call on small batched shapes such as ``[N, models, replicas]``;
the simulator's hot path has several per step. Unrolled over the few entries of the axis, the
same reduction is a chain of elementwise operations that XLA fuses into its neighbours
(measured: docs/benchmarks.md). Results are bit-identical to the `jnp` reductions for min,
max and boolean ones; integer sums are exact.
"""
from __future__ import annotations

from functools import reduce

import jax.numpy as jnp


def _entries(x):
    return [x[..., j] for j in range(x.shape[-1])]


def min_last(x):
    """`x.min(axis=-1)`."""
    return reduce(jnp.minimum, _entries(x))


def max_last(x):
    """`x.max(axis=-1)`."""
    return reduce(jnp.maximum, _entries(x))


def any_last(x):
    """`x.any(axis=-1)` for a boolean `x`."""
    return reduce(jnp.logical_or, _entries(x))


def sum_last(x):
    """`x.sum(axis=-1)` (left to right: exact for integers)."""
    return reduce(jnp.add, _entries(x))


def first_true(x):
    """`jnp.argmax(x, axis=-1)` for a boolean `x`: the first True entry, 0 if none."""
    k = jnp.zeros(x.shape[:-1], jnp.int32)
    for j in reversed(range(x.shape[-1])):
        k = jnp.where(x[..., j], j, k)
    return k

