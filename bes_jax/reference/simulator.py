"""Reference discrete-event simulator: the ground truth the JAX simulator is tested against.

Plain Python with a heap of batch completions and a deque per replica, float64 clocks,
written from docs/simulator.md alone. It shares nothing with `bes_jax.env` (only the profile
loader and the config dataclass), so an error in one is not repeated in the other. It is
slow on purpose: obvious code, one request at a time.
"""
from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from bes_jax.profile import Profile
from bes_jax.sim_config import SimConfig

QUEUED, SERVED, DROPPED, REJECTED = 1, 2, 3, 4
WAIT_CAP = 10.0  # rich observation: predicted wait in deadlines, capped (a full queue reads as 10)


@dataclass
class _Replica:
    model: int
    k: int
    server: int
    queue: deque = field(default_factory=deque)
    inflight: int = 0


@dataclass
class _Server:
    busy: bool = False
    until: float = 0.0  # busy-until, or the time it last went idle
    replica: int = -1


@dataclass
class View:
    """What a router may look at when deciding request i (read-only)."""

    i: int
    now: float
    task: int
    observation: np.ndarray
    wait: np.ndarray       # [M] predicted wait before start (inf: impossible)
    predicted: np.ndarray  # [M] predicted completion time (inf: impossible)


@dataclass
class ReferenceResult:
    model: np.ndarray
    replica: np.ndarray
    status: np.ndarray
    start: np.ndarray
    finish: np.ndarray
    latency: np.ndarray
    reward: np.ndarray
    met_deadline: np.ndarray
    observations: np.ndarray
    clock: float


class ReferenceSimulator:
    def __init__(self, profile: Profile, cfg: SimConfig):
        self.p, self.cfg = profile, cfg
        self.M, self.T, self.B = profile.n_models, profile.n_tasks, profile.b_max
        self.lat = np.asarray(profile.latency, np.float64)
        self.q = np.asarray(profile.quality, np.float64)
        self.d = np.asarray(cfg.task_deadlines(profile), np.float64)
        self.counts = cfg.replica_counts(self.M)

    # ------------------------------------------------------------------ values
    def value(self, m, t, latency):
        c, d, q = self.cfg, self.d[t], self.q[m, t]
        if latency <= d:
            v = q
        elif c.deadline_kind == "hard":
            v = -c.miss_penalty
        elif c.soft_decay == "linear":
            v = q * max(0.0, 1.0 - (latency - d) / (c.soft_slack * d))
        else:
            v = q * np.exp(-(latency - d) / (c.soft_tau * d))
        return v - c.latency_weight * latency / d

    # ------------------------------------------------------------------ run
    def run(self, times, tasks, actions, drain: bool = True) -> ReferenceResult:
        """Route request i at times[i] with actions[i] (an int array, "greedy", or f(i, view))."""
        times = np.asarray(times, np.float64)
        tasks = np.asarray(tasks, np.int64)
        n = times.size
        if tasks.size != n:
            raise ValueError(f"tasks has {tasks.size} entries, times has {n}")
        cfg = self.cfg
        reps: list[_Replica] = []
        by_model: list[list[int]] = []
        for m in range(self.M):
            ids = []
            for k in range(self.counts[m]):
                server = k % cfg.n_gpus if cfg.placement == "exclusive" else len(reps)
                ids.append(len(reps))
                reps.append(_Replica(m, k, server))
            by_model.append(ids)
        n_servers = cfg.n_gpus if cfg.placement == "exclusive" else len(reps)
        servers = [_Server() for _ in range(n_servers)]
        members = [[r for r, rep in enumerate(reps) if rep.server == s] for s in range(n_servers)]
        self._reps, self._servers, self._members = reps, servers, members
        heap: list[tuple[float, int]] = []

        model = np.full(n, -1, np.int64)
        replica = np.full(n, -1, np.int64)
        status = np.full(n, QUEUED, np.int64)
        start = np.full(n, np.nan)
        finish = np.full(n, np.nan)
        reward = np.full(n, np.nan)
        obs_size = self.T + self.M + 1 + (self.M + 1 if cfg.obs_mode == "rich" else 0)
        observations = np.zeros((n, obs_size))
        self._arr, self._task = times, tasks
        self._status, self._start, self._finish, self._reward, self._model = status, start, finish, reward, model

        def form(s: int, T: float):
            """Form batches on idle server s at time T while it has queued work."""
            sv = servers[s]
            while not sv.busy:
                cands = [r for r in members[s] if reps[r].queue]
                if not cands:
                    return
                r = min(cands, key=lambda r: (times[reps[r].queue[0]], reps[r].model, reps[r].k))
                rep = reps[r]
                taken, dropped = [], []
                while rep.queue and len(taken) < self.B:
                    i = rep.queue.popleft()
                    if cfg.drop_expired and T - times[i] > self.d[tasks[i]]:
                        dropped.append(i)
                    else:
                        taken.append(i)
                for i in dropped:
                    status[i], finish[i], reward[i] = DROPPED, T, -cfg.miss_penalty
                if not taken:
                    sv.until = T
                    continue
                b = len(taken)
                lam = max(self.lat[rep.model, tasks[i], b - 1] for i in taken)
                for i in taken:
                    status[i], start[i], finish[i] = SERVED, T, T + lam
                    reward[i] = self.value(rep.model, tasks[i], T + lam - times[i])
                rep.inflight = b
                sv.busy, sv.until, sv.replica = True, T + lam, r
                heapq.heappush(heap, (T + lam, s))

        def advance(limit: float):
            while heap and heap[0][0] <= limit:
                T, s = heapq.heappop(heap)
                sv = servers[s]
                sv.busy = False
                reps[sv.replica].inflight = 0
                form(s, T)

        gap_ewma = 1.0 / cfg.ref_rate
        for i in range(n):
            now = times[i]
            advance(now)
            if i > 0:
                gap_ewma = cfg.ewma_alpha * (now - times[i - 1]) + (1 - cfg.ewma_alpha) * gap_ewma
            t = int(tasks[i])
            chosen, wait, pred = self._routing_view(by_model, now, t)
            obs = self._observation(by_model, now, t, gap_ewma, wait)
            observations[i] = obs
            if isinstance(actions, str) and actions == "greedy":
                a = self._greedy(t, now, pred)
            elif callable(actions):
                a = int(actions(i, View(i, now, t, obs, wait, pred)))
            else:
                a = int(actions[i])
            model[i] = a
            r = chosen[a]
            if r < 0 or len(reps[r].queue) >= cfg.queue_capacity:
                status[i], finish[i], reward[i] = REJECTED, now, -cfg.miss_penalty
                continue
            replica[i] = r
            reps[r].queue.append(i)
            s = reps[r].server
            if not servers[s].busy:
                form(s, now)
        clock = times[-1] if n else 0.0
        if drain:
            advance(np.inf)
            clock = np.inf
        latency = np.where(status == SERVED, finish - times, np.nan)
        done = (status == SERVED) & (finish <= clock)
        met = done & (latency <= self.d[tasks])
        return ReferenceResult(model, replica, status, start, finish, latency, reward, met, observations, clock)

    # ------------------------------------------------------------------ routing view
    def _pick(self, ids, now):
        best, key = -1, None
        for r in ids:
            rep = self._reps[r]
            sv = self._servers[rep.server]
            k = (len(rep.queue) + rep.inflight, max(sv.until, now), r)
            if key is None or k < key:
                best, key = r, k
        return best

    def _routing_view(self, by_model, now, t):
        chosen = np.full(self.M, -1)
        wait = np.full(self.M, np.inf)
        pred = np.full(self.M, np.inf)
        for m in range(self.M):
            r = self._pick(by_model[m], now)
            chosen[m] = r
            if r < 0:
                continue
            rep = self._reps[r]
            q = len(rep.queue)
            if q >= self.cfg.queue_capacity:
                continue
            sv = self._servers[rep.server]
            F = sv.until if sv.busy else now
            wait[m] = (F - now) + (q // self.B) * self.lat[m, t, self.B - 1]
            own = self.lat[m, t, self.B - 1] if sv.busy else self.lat[m, t, 0]
            pred[m] = now + wait[m] + own
        return chosen, wait, pred

    def _greedy(self, t, now, pred):
        ok = [m for m in range(self.M) if pred[m] - now <= self.d[t]]
        if ok:
            return max(ok, key=lambda m: (self.q[m, t], -m))
        return int(np.argmin(pred))

    def _observation(self, by_model, now, t, gap_ewma, wait):
        onehot = np.zeros(self.T)
        onehot[t] = 1.0
        load = np.zeros(self.M)
        for m in range(self.M):
            if self.counts[m] > 0:
                n_sys = sum(len(self._reps[r].queue) + self._reps[r].inflight for r in by_model[m])
                load[m] = n_sys / (self.B * self.counts[m])
        parts = [onehot, load, [(1.0 / gap_ewma) / self.cfg.ref_rate]]
        if self.cfg.obs_mode == "rich":
            parts += [np.minimum(wait / self.d[t], WAIT_CAP), [self.d[t]]]
        return np.concatenate(parts)
