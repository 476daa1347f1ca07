"""Rough sustainable rate of each static model: the scale workloads are expressed in."""
from __future__ import annotations

import numpy as np

from bes_jax.profile import Profile
from bes_jax.sim_config import SimConfig


def static_capacity(profile: Profile, cfg: SimConfig) -> np.ndarray:
    """[M] requests/s each model sustains alone, within deadlines, over its replicas.

    Per task: the best throughput b / L[m, t, b] over batch sizes whose latency leaves room to
    wait for one batch (2 L <= deadline); averaged over tasks. A scale, not a guarantee.
    """
    d = np.asarray(cfg.task_deadlines(profile))
    reps = np.asarray(cfg.replica_counts(profile.n_models), np.float64)
    b = np.arange(1, profile.b_max + 1)
    caps = np.zeros(profile.n_models)
    for m in range(profile.n_models):
        per_task = []
        for t in range(profile.n_tasks):
            lat = profile.latency[m, t]
            ok = 2 * lat <= d[t]
            per_task.append((b[ok] / lat[ok]).max() if ok.any() else 0.0)
        caps[m] = np.mean(per_task) * reps[m]
    return caps
