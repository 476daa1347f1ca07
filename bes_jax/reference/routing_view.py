"""What a router sees of a serving system, in numpy: replica choice, predicted wait and
completion, the rate estimate and the observation (docs/simulator.md, "Routing" to
"Prediction").

One implementation shared by the reference simulator and the live server, so that a policy
served in front of real replicas reads exactly the inputs the simulators gave it in training
(the JAX simulator computes the same numbers its own way; the cross-check tests compare them).
Everything takes a :class:`Snapshot` or any object with the same fields.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

OBS_MODES = ("paper", "rich")
WAIT_CAP = 10.0  # rich observation: predicted wait in deadlines, capped (a full queue reads as 10)


@dataclass(frozen=True)
class Snapshot:
    """The serving state at one arrival, in the simulator's terms."""

    now: float
    replica_model: np.ndarray   # [R] model index of every replica (flat, model-major)
    replica_server: np.ndarray  # [R] server that runs its batches (its GPU under `exclusive`)
    queue_len: np.ndarray       # [R] requests queued
    inflight: np.ndarray        # [R] requests in its running batch
    valid: np.ndarray           # [R] bool: alive (can take requests)
    server_busy: np.ndarray     # [S] bool
    server_free_at: np.ndarray  # [S] busy-until if busy, else the time it last went idle
    queue_capacity: int
    b_max: int
    n_models: int


def choose_replica(snap, m: int) -> int:
    """Fewest queued + in flight; ties: earliest ``max(free_at, now)``; then lowest index.

    Returns the flat replica index, or -1 when model ``m`` has no live replica.
    """
    idx = np.nonzero((snap.replica_model == m) & snap.valid)[0]
    if idx.size == 0:
        return -1
    count = snap.queue_len[idx] + snap.inflight[idx]
    free = np.maximum(snap.server_free_at[snap.replica_server[idx]], snap.now)
    order = np.lexsort((idx, free, count))  # last key is primary
    return int(idx[order[0]])


def queued_work(latency_mt: np.ndarray, m: int, q: int, b_max: int) -> float:
    """Seconds to serve ``q`` queued requests of model ``m`` in FIFO batches of ``b_max``, each
    taken as the pending task (``latency_mt`` = ``L[:, t, :]``)."""
    full, rest = divmod(int(q), b_max)
    return full * float(latency_mt[m, b_max - 1]) + (float(latency_mt[m, rest - 1]) if rest else 0.0)


def predict(snap, latency_mt: np.ndarray):
    """Per model ``(wait, pred_finish, replica)`` for a pending request of one task.

    ``latency_mt`` is ``L[:, t, :]`` (``[M, B_max]``) for the pending task ``t``. The wait is the
    server's running batch, the chosen replica's full batches ahead, and every request queued on
    the other replicas of the same server (they all arrived earlier, so a GPU that serves the
    oldest queued request first serves them before this one). A model with no live replica, or
    whose chosen replica's queue is full, gets ``wait = pred = +inf``.
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
        for o in np.nonzero(snap.replica_server == s)[0]:
            if o != r:
                w += queued_work(latency_mt, int(snap.replica_model[o]), int(snap.queue_len[o]), B)
        own = float(latency_mt[m, B - 1]) if busy else float(latency_mt[m, 0])
        wait[m] = w
        pred[m] = snap.now + w + own
    return wait, pred, rep


def greedy_choice(pred: np.ndarray, now: float, quality_t: np.ndarray, deadline: float) -> int:
    """Highest quality with ``pred - now <= d`` (ties: lower index); else smallest ``pred``
    (ties: lower index). ``quality_t`` is ``q[:, t]``."""
    meets = pred - now <= deadline
    if meets.any():
        return int(np.argmax(np.where(meets, quality_t, -np.inf)))
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
        rate = 1.0 / self.g if self.g > 0 else math.inf  # IEEE 1/0 (only with alpha = 1, gap 0)
        return rate / self.ref_rate


def model_load(snap, replica_counts=None) -> np.ndarray:
    """[M] (queued + in flight over a model's replicas) / (B_max * R_m); 0 without replicas."""
    M, B = snap.n_models, snap.b_max
    in_sys = np.zeros(M)
    np.add.at(in_sys, snap.replica_model, (snap.queue_len + snap.inflight).astype(np.float64))
    if replica_counts is None:
        replica_counts = np.bincount(snap.replica_model, minlength=M)
    rc = np.asarray(replica_counts, np.float64)
    return np.where(rc > 0, in_sys / np.maximum(B * rc, 1.0), 0.0)


def build_observation(mode: str, snap, task: int, n_tasks: int, rate_norm: float,
                      latency: np.ndarray | None = None, deadline: float | None = None,
                      replica_counts=None, wait: np.ndarray | None = None) -> np.ndarray:
    """``paper``: one-hot task, per-model load, rate; ``rich`` adds per model
    ``min(wait / d, WAIT_CAP)`` and the deadline ``d``. Float64; ``wait`` may be passed when
    already predicted (else it is computed from ``latency`` = ``L[m, t, b]``)."""
    if mode not in OBS_MODES:
        raise ValueError(f"observation mode {mode!r}: must be one of {OBS_MODES}")
    onehot = np.zeros(n_tasks)
    onehot[task] = 1.0
    parts = [onehot, model_load(snap, replica_counts), np.array([rate_norm], np.float64)]
    if mode == "rich":
        if deadline is None or (wait is None and latency is None):
            raise ValueError("rich observation needs the latency table (or the predicted wait) and the task deadline")
        if wait is None:
            wait, _, _ = predict(snap, latency[:, task, :])
        parts += [np.minimum(np.asarray(wait, np.float64) / deadline, WAIT_CAP), np.array([deadline], np.float64)]
    return np.concatenate(parts)
