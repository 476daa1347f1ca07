"""Fit a load table (`bes_jax.routers.load_table`): which candidate router scores best at each
arrival rate of a grid, measured in the simulator.

The fit sees only the workloads it is given (by default Poisson arrivals with a uniform task
mix, the training family's simplest kind) and its own seeds: give it training rates and
training seeds, never the test set's evaluation seeds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from bes_jax.profile import Profile
from bes_jax.routers import Router
from bes_jax.routers.load_table import bin_edges, load_table
from bes_jax.sim_config import SimConfig


@dataclass(frozen=True)
class LoadTable:
    """A fitted table: at ``rates[i]`` (req/s) candidate ``names[choice[i]]`` scored best;
    ``scores[c, i]``: candidate ``c``'s mean `metric` there."""
    rates: np.ndarray
    names: tuple
    choice: np.ndarray
    scores: np.ndarray
    metric: str

    def router(self, candidates: Sequence[Router], name: str = "load-table") -> Router:
        """The jittable router of this table over `candidates` (the routers it was fit on, by name)."""
        got = tuple(r.name for r in candidates)
        if got != self.names:
            raise ValueError(f"load table fit on routers {list(self.names)}, given {list(got)}")
        return load_table(candidates, self.rates, self.choice, name)

    def summary(self) -> list:
        """``[(rate, chosen router's name, its score)]``, one per grid rate."""
        return [(float(r), self.names[int(c)], float(self.scores[int(c), i]))
                for i, (r, c) in enumerate(zip(self.rates, self.choice))]


def fit_load_table(profile: Profile, sim_cfg: SimConfig, candidates: Sequence[Router], rates, *,
                   seeds=(0,), n_decisions: int = 3000, window_s: float = 5.0, metric: str = "performance",
                   workload=None) -> LoadTable:
    """Run every candidate at every rate of `rates` (req/s, increasing; `workload(rate)` builds
    the workload, default Poisson with a uniform task mix) for every seed, and keep at each rate
    the candidate with the highest mean `metric` (a tie goes to the earlier candidate)."""
    from bes_jax.eval.sweep import sweep_rates

    candidates = list(candidates)
    names = tuple(r.name for r in candidates)
    if not candidates or len(set(names)) != len(names):
        raise ValueError(f"load table candidates {list(names)}: need one or more routers with distinct names")
    rates = np.asarray(rates, np.float64)
    bin_edges(rates)  # refuses a bad grid before anything runs
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("load table seeds = (): need at least one seed")
    scores = []
    for r in candidates:
        out = sweep_rates(profile, sim_cfg, r, rates, n_decisions=n_decisions, seeds=seeds, window_s=window_s,
                          workload=workload)
        if metric not in out:
            raise ValueError(f"load table metric = {metric!r}: choose from "
                             f"{sorted(k for k in out if k != 'rates')}")
        scores.append(np.asarray(out[metric], np.float64).mean(-1))
    scores = np.stack(scores)
    return LoadTable(rates, names, np.argmax(scores, axis=0).astype(np.int32), scores, metric)
