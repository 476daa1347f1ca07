"""Routing view of the live pool in numpy, following docs/simulator.md to the letter.

* :func:`choose_replica` — the replica a request for model ``m`` joins;
* :func:`predict` — per model the predicted wait and completion (used by ``greedy`` and by the
  ``rich`` observation);
* :class:`RateEstimator` — the EWMA of inter-arrival gaps;
* :func:`build_observation` — the ``paper`` / ``rich`` observation a learned policy reads.

Everything takes a :class:`bes_jax.serving.pool.Snapshot` (or any object with the same fields),
so it is testable without torch.
"""
from __future__ import annotations

import numpy as np

OBS_MODES = ("paper", "rich")


def choose_replica(snap, m: int) -> int:
    """Fewest queued + in flight; ties: earliest ``max(busy_until, now)``; then lowest index.

    Returns the flat replica index, or -1 when model ``m`` has no live replica.
    """
    idx = np.nonzero((snap.replica_model == m) & snap.valid)[0]
    if idx.size == 0:
        return -1
    count = snap.queue_len[idx] + snap.inflight[idx]
    free = np.maximum(snap.server_free_at[snap.replica_server[idx]], snap.now)
    order = np.lexsort((idx, free, count))  # last key is primary
    return int(idx[order[0]])


def predict(snap, latency_mt: np.ndarray):
    """Per model ``(wait, pred_finish, replica)`` for a pending request of one task.

    ``latency_mt`` is ``L[:, t, :]`` (``[M, B_max]``) for the pending task ``t``. A model with no
    live replica or whose chosen replica's queue is full gets ``wait = pred = +inf``.
    """
    M, B = snap.n_models, snap.b_max
    wait = np.full(M, np.inf)
    pred = np.full(M, np.inf)
    rep = np.full(M, -1, np.int64)
    for m in range(M):
        r = choose_replica(snap, m)
        rep[m] = r
        if r < 0:
            continue
        q = int(snap.queue_len[r])
        if q >= snap.queue_capacity:
            continue
        s = snap.replica_server[r]
        busy = bool(snap.server_busy[s])
        F = float(snap.server_free_at[s]) if busy else snap.now
        w = (F - snap.now) + (q // B) * float(latency_mt[m, B - 1])
        own = float(latency_mt[m, B - 1]) if busy else float(latency_mt[m, 0])
        wait[m] = w
        pred[m] = snap.now + w + own
    return wait, pred, rep


def greedy_choice(snap, latency: np.ndarray, quality: np.ndarray, task: int, deadline: float) -> int:
    """Highest quality with ``pred - now <= d`` (ties: lower index); else smallest ``pred``."""
    _, pred, _ = predict(snap, latency[:, task, :])
    meets = pred - snap.now <= deadline
    if meets.any():
        q = np.where(meets, quality[:, task], -np.inf)
        return int(np.argmax(q))
    return int(np.argmin(pred))


class RateEstimator:
    """Rate = 1 / g with ``g <- alpha * gap + (1 - alpha) * g``, ``g0 = 1 / ref_rate``.

    :meth:`observe` is called once per arrival, in arrival order; the first arrival has no gap
    and leaves ``g`` unchanged.
    """

    def __init__(self, ewma_alpha: float = 0.05, ref_rate: float = 100.0):
        self.alpha, self.ref_rate = float(ewma_alpha), float(ref_rate)
        self.g = 1.0 / self.ref_rate
        self.last: float | None = None

    def observe(self, now: float) -> float:
        if self.last is not None:
            gap = max(0.0, now - self.last)
            self.g = self.alpha * gap + (1.0 - self.alpha) * self.g
        self.last = now
        return self.normalised_rate

    @property
    def normalised_rate(self) -> float:
        return (1.0 / self.g) / self.ref_rate


def build_observation(mode: str, snap, task: int, n_tasks: int, rate_norm: float,
                      latency: np.ndarray | None = None, deadline: float | None = None,
                      replica_counts=None) -> np.ndarray:
    """``paper``: one-hot task, per-model load, rate; ``rich`` adds per-model wait / d and d."""
    if mode not in OBS_MODES:
        raise ValueError(f"observation mode {mode!r}: must be one of {OBS_MODES}")
    M, B = snap.n_models, snap.b_max
    onehot = np.zeros(n_tasks)
    onehot[task] = 1.0
    in_sys = np.zeros(M)
    np.add.at(in_sys, snap.replica_model, (snap.queue_len + snap.inflight).astype(np.float64))
    if replica_counts is None:
        replica_counts = np.bincount(snap.replica_model, minlength=M)
    rc = np.asarray(replica_counts, np.float64)
    load = np.where(rc > 0, in_sys / np.maximum(B * rc, 1.0), 0.0)
    parts = [onehot, load, np.array([rate_norm])]
    if mode == "rich":
        if latency is None or deadline is None:
            raise ValueError("rich observation needs the latency table and the task deadline")
        wait, _, _ = predict(snap, latency[:, task, :])
        parts += [wait / deadline, np.array([deadline])]
    return np.concatenate(parts).astype(np.float32)
