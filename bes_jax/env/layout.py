"""Which server runs which replica: one rule for both serving models (docs/simulator.md "Layout").

Replica ``r = m * R_max + k`` is replica ``k`` of model ``m`` on GPU ``k mod n_gpus``. A server
is a GPU under ``exclusive`` (its replicas share it) and a replica under ``concurrent``.
"""
from __future__ import annotations

import numpy as np


def server_layout(cfg, n_models: int, r_max: int):
    """``(n_servers, server_of [R], server_members [S, W])``; members in ascending replica index
    (= (model, k) order, so "lowest model index" tie-breaks fall out of argmin's first index),
    padded with -1."""
    gpu = np.array([cfg.gpu_of_replica(m, k) for m in range(n_models) for k in range(r_max)])
    if cfg.placement == "exclusive":
        members = [np.nonzero(gpu == g)[0] for g in range(cfg.n_gpus)]
        width = max(len(x) for x in members)
        return cfg.n_gpus, gpu, np.stack([np.pad(x, (0, width - len(x)), constant_values=-1) for x in members])
    n = n_models * r_max
    return n, np.arange(n), np.arange(n)[:, None]
