"""The training bank as environment parameters: every learner draws episodes from it the same way.

A bank is a stacked pytree of workloads (leading axis ``n_bank``) and, optionally, per-task
deadlines ``[n_bank, T]`` (one policy learns to serve a range of deadlines; the rich observation
carries the current task's deadline).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class Bank(NamedTuple):
    n: int                                # entries in the bank
    params: Callable                      # index [...] -> EnvParams with those entries' leaves
    axes: object                          # the EnvParams `in_axes` for a batch of entries


def make_bank(base_params, workload_bank, deadline_bank=None) -> Bank:
    """:class:`Bank` over ``base_params``; a ``deadline_bank`` of the wrong shape is an error."""
    n_bank = jax.tree.leaves(workload_bank)[0].shape[0]
    axes = jax.tree.map(lambda _: None, base_params).replace(workload=jax.tree.map(lambda _: 0, workload_bank))
    if deadline_bank is not None:
        deadline_bank = jnp.asarray(deadline_bank, base_params.deadline.dtype)
        need = (n_bank,) + base_params.deadline.shape
        if deadline_bank.shape != need:
            raise ValueError(f"deadline_bank: shape {deadline_bank.shape}, need {need} "
                             "(one deadline per task for every workload of the bank)")
        axes = axes.replace(deadline=0)

    def params(index):
        p = base_params.replace(workload=jax.tree.map(lambda x: x[index], workload_bank))
        return p if deadline_bank is None else p.replace(deadline=deadline_bank[index])

    return Bank(n_bank, params, axes)
