"""The live router's view of the pool: the reference simulator's own numpy code
(:mod:`bes_jax.reference.routing_view`), so that a served policy reads exactly the observation
it was trained on (replica choice, predicted wait, rate estimate, caps included).

Everything takes a snapshot of the pool (:class:`Snapshot` or any object with its fields), so
it is testable without torch.
"""
from __future__ import annotations

import numpy as np

from bes_jax.reference import routing_view as _view
from bes_jax.reference.routing_view import (OBS_MODES, WAIT_CAP, RateEstimator, Snapshot,  # noqa: F401
                                            build_observation, choose_replica, predict)


def greedy_choice(snap, latency: np.ndarray, quality: np.ndarray, task: int, deadline: float) -> int:
    """``greedy`` on the live pool: highest quality predicted on time, else the earliest."""
    _, pred, _ = predict(snap, latency[:, task, :])
    return _view.greedy_choice(pred, snap.now, quality[:, task], deadline)
