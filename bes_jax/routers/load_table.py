"""A router that picks, by the observed arrival rate, which of several routers decides.

No single baseline is best at every load: greedy is best near capacity, a middle-sized static
model under moderate overload, the smallest model under heavy overload (docs/results.md, the
best-static lines). A load table holds, for a grid of arrival rates, the candidate router that
scored best there (`bes_jax.eval.load_table.fit_load_table` measures it in the simulator on the
training family's Poisson workloads); at each decision it reads the environment's arrival-rate
estimate (the EWMA of inter-arrival gaps both serving models keep, ``state.ewma_gap``) and lets
the candidate of the nearest grid rate (on a log scale) route the request.
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np

from bes_jax.routers.baselines import Router


def bin_edges(rates) -> np.ndarray:
    """The geometric midpoints between consecutive grid rates: a rate belongs to the grid point
    nearest it on a log scale. `rates` must be positive and strictly increasing."""
    r = np.asarray(rates, np.float64)
    if r.ndim != 1 or r.size < 1 or not np.all(np.isfinite(r)) or np.any(r <= 0) or np.any(np.diff(r) <= 0):
        raise ValueError(f"load table rates = {r.tolist()}: need one or more positive, finite, strictly "
                         "increasing arrival rates (req/s)")
    return np.sqrt(r[:-1] * r[1:])


def load_table(candidates: Sequence[Router], rates, choice, name: str = "load-table") -> Router:
    """A router that hands each decision to ``candidates[choice[i]]``, ``i`` the grid rate in
    `rates` (req/s, increasing) nearest the observed arrival rate on a log scale (below the
    first: the first; above the last: the last)."""
    candidates = list(candidates)
    if not candidates:
        raise ValueError("load table: no candidate routers")
    edges = jnp.asarray(bin_edges(rates), jnp.float32)
    c = np.asarray(choice)
    if c.shape != (len(edges) + 1,) or not np.issubdtype(c.dtype, np.integer) or c.min() < 0 or c.max() >= len(candidates):
        raise ValueError(f"load table choice = {c.tolist()}: need one candidate index in [0, {len(candidates)}) "
                         f"per grid rate ({len(edges) + 1})")
    choice_j = jnp.asarray(c, jnp.int32)

    def act(key, obs, state, params):
        rate = 1.0 / state.ewma_gap
        pick = choice_j[jnp.searchsorted(edges, rate.astype(edges.dtype))]
        acts = jnp.stack([jnp.asarray(r.act(key, obs, state, params), jnp.int32) for r in candidates])
        return acts[pick]

    return Router(name, act)
