"""Reference discrete-event simulator: the ground truth the JAX simulator is tested against.

Plain Python with a heap of batch completions and a ``collections.deque`` per replica, float64
clocks, written from ``docs/simulator.md`` alone; every rule there (replica choice and its
tie-breaks, queue capacity, FIFO batching with ``B_max``, batch latency as the max over members,
``drop_expired`` batch formation, exclusive GPU sharing, hard/soft rewards, the ``greedy``
router and its prediction heuristic, the ``paper``/``rich`` observation) is implemented here a
second time, on purpose. The routing view (replica choice, prediction, observation) lives in
:mod:`bes_jax.reference.routing_view`, numpy code the live server uses too, so that what a
served policy reads is what this twin gives.

What it deliberately does *not* share with the JAX simulator (``bes_jax.env``): any code at all
except the profile tables (``bes_jax.profile``) and the config dataclass
(``bes_jax.sim_config``). No JAX, no fixed-shape arrays, no outcome ring, no imports from
``bes_jax.env``, ``bes_jax.routers`` or ``bes_jax.eval``; so a mistake in one simulator is not
repeated in the other and the request-by-request comparison means something. It favours
obvious code over speed (about 1.5 s for 100k requests on one core).

Status codes: ``QUEUED``, ``SERVED``, ``DROPPED``, ``REJECTED`` (also as the ``STATUS`` dict).
A served request is *completed* once the clock reaches its finish time, *in flight* before.

Routing to a model with no replica (``SimConfig.replicas`` entry 0): the doc gives such a model
``pred = inf`` but says nothing about a router that picks it anyway; here the request is
``REJECTED`` at its arrival (``finish = arrival``, reward ``-miss_penalty``, ``replica = -1``),
like a request routed to a full queue.

With ``cfg.autoscale`` the reactive autoscaler (docs/simulator.md "Autoscaler") runs at every
arrival, from :mod:`bes_jax.reference.autoscaler`; the routing view then sees only the replicas
that are up, and the result adds ``gpu_seconds``, ``n_scale_up``, ``n_scale_down`` and the
scaling log.
"""
from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Union

import numpy as np

from bes_jax.profile import Profile
from bes_jax.reference import routing_view as rv
from bes_jax.reference.autoscaler import ReferenceAutoscaler
from bes_jax.sim_config import SimConfig

QUEUED, SERVED, DROPPED, REJECTED = 1, 2, 3, 4
STATUS = {"QUEUED": QUEUED, "SERVED": SERVED, "DROPPED": DROPPED, "REJECTED": REJECTED}
WAIT_CAP = rv.WAIT_CAP


@dataclass
class _Replica:
    model: int
    k: int        # index among the model's replicas
    gpu: int      # k mod n_gpus
    server: int   # the server that runs its batches
    queue: deque = field(default_factory=deque)  # request indices, FIFO
    inflight: int = 0


@dataclass
class _Server:
    busy: bool = False
    until: float = -math.inf  # busy-until while busy, else the time it last went idle
    replica: int = -1         # replica whose batch is running


@dataclass(frozen=True)
class View:
    """What a router may look at when deciding request ``i`` (arrays are copies)."""

    i: int
    now: float
    task: int
    deadline: float          # the pending task's deadline (seconds, scaled)
    observation: np.ndarray  # exactly the observation recorded for request i
    load: np.ndarray         # [M] (queued + in flight) / (B_max * R_m), 0 without replicas
    replica: np.ndarray      # [M] replica the routing rule would pick (-1: no replica)
    wait: np.ndarray         # [M] predicted wait before start (inf: cannot take it)
    predicted: np.ndarray    # [M] predicted completion time (inf: cannot take it)
    greedy: int = -1         # the model ``greedy`` would pick for this request


@dataclass
class ReferenceResult:
    """Per-request outcomes of one run (index = decision number).

    ``model``: chosen model; ``replica``: global replica index (model-major: model 0's replicas
    first), -1 if rejected; ``gpu``: that replica's GPU, -1 if rejected; ``status``: one of the
    codes; ``start``: batch start (NaN unless served); ``finish``: time the outcome is realised
    (completion, drop time, arrival for rejected; NaN while queued); ``latency``: finish -
    arrival for served, else NaN; ``reward``: realised value, NaN while unresolved (queued or in
    flight at the end of a run without drain); ``met_deadline``: completed with latency <= d;
    ``observations``: [n, obs size], built at each arrival; ``clock``: simulation time at the
    end (the last arrival, or inf after a drain).
    """

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
    gpu: np.ndarray = None
    #: with ``cfg.autoscale``: GPU-seconds from the first to the last arrival, the replicas
    #: added / removed, and the scaling log ``[(time, "up" | "down" | "release", k)]``
    gpu_seconds: float = None
    n_scale_up: int = None
    n_scale_down: int = None
    autoscale_log: list = None

    @property
    def completed(self) -> np.ndarray:
        return (self.status == SERVED) & (self.finish <= self.clock)

    @property
    def in_flight(self) -> np.ndarray:
        return (self.status == SERVED) & (self.finish > self.clock)


Actions = Union[np.ndarray, str, Callable[[int, View], int]]


class ReferenceSimulator:
    """``ReferenceSimulator(profile, cfg).run(times, tasks, actions, drain=True)``."""

    def __init__(self, profile: Profile, cfg: SimConfig):
        self.p, self.cfg = profile, cfg
        self.M, self.T, self.B = profile.n_models, profile.n_tasks, profile.b_max
        self.lat = np.asarray(profile.latency, np.float64)
        self.q = np.asarray(profile.quality, np.float64)
        self.d = np.asarray(cfg.task_deadlines(profile), np.float64)
        self.counts = cfg.replica_counts(self.M)
        self.obs_size = self.T + self.M + 1 + (self.M + 1 if cfg.obs_mode == "rich" else 0)

    # ------------------------------------------------------------------ values
    def value(self, m: int, t: int, latency: float) -> float:
        """Reward of a request of task t served by model m with the given latency."""
        c, d, q = self.cfg, self.d[t], self.q[m, t]
        if latency <= d:
            v = q
        elif c.deadline_kind == "hard":
            v = -c.miss_penalty
        elif c.soft_decay == "linear":
            v = q * max(0.0, 1.0 - (latency - d) / (c.soft_slack * d))
        else:
            v = q * math.exp(-(latency - d) / (c.soft_tau * d))
        return float(v - c.latency_weight * latency / d)

    # ------------------------------------------------------------------ run
    def run(self, times, tasks, actions: Actions, drain: bool = True) -> ReferenceResult:
        """Route request i at times[i] with actions[i] (an int array, "greedy", or f(i, view)).

        After decision i every event with time <= times[i+1] is processed in time order; after
        the last decision everything is processed (``drain``) or nothing more (the clock stays
        at the last arrival and unfinished requests stay queued / in flight).
        """
        times = np.asarray(times, np.float64).reshape(-1)
        tasks = np.asarray(tasks).reshape(-1).astype(np.int64)
        n = times.size
        self._check_inputs(times, tasks, actions)
        cfg, B = self.cfg, self.B

        # ---- layout
        reps: list[_Replica] = []
        for m in range(self.M):
            for k in range(self.counts[m]):
                gpu = cfg.gpu_of_replica(m, k)
                server = gpu if cfg.placement == "exclusive" else len(reps)
                reps.append(_Replica(m, k, gpu, server))
        n_servers = cfg.n_gpus if cfg.placement == "exclusive" else len(reps)
        servers = [_Server() for _ in range(n_servers)]
        members = [[r for r, rep in enumerate(reps) if rep.server == s] for s in range(n_servers)]
        self._reps, self._servers = reps, servers
        heap: list[tuple[float, int]] = []  # (completion time, server); one entry per busy server

        # ---- per-request record
        model = np.full(n, -1, np.int64)
        replica = np.full(n, -1, np.int64)
        gpu = np.full(n, -1, np.int64)
        status = np.full(n, QUEUED, np.int64)
        start = np.full(n, np.nan)
        finish = np.full(n, np.nan)
        reward = np.full(n, np.nan)
        observations = np.zeros((n, self.obs_size))
        miss = -float(cfg.miss_penalty)

        def form(s: int, T: float) -> None:
            """Server s is idle at time T: form batches while one of its replicas has a queue."""
            sv = servers[s]
            while not sv.busy:
                cands = [r for r in members[s] if reps[r].queue]
                if not cands:
                    return
                # concurrent: the only replica; exclusive: oldest head, then model, then replica
                r = min(cands, key=lambda r: (times[reps[r].queue[0]], reps[r].model, reps[r].k))
                rep = reps[r]
                taken = []
                while rep.queue and len(taken) < B:
                    i = rep.queue.popleft()
                    if cfg.drop_expired and T - times[i] > self.d[tasks[i]]:
                        status[i], finish[i], reward[i] = DROPPED, T, miss
                    else:
                        taken.append(i)
                if not taken:  # everything queued had expired: idle at T, look again
                    sv.until = T
                    continue
                b = len(taken)
                lam = max(self.lat[rep.model, tasks[i], b - 1] for i in taken)
                end = T + lam
                for i in taken:
                    status[i], start[i], finish[i] = SERVED, T, end
                    reward[i] = self.value(rep.model, int(tasks[i]), end - times[i])
                rep.inflight = b
                sv.busy, sv.until, sv.replica = True, end, r
                heapq.heappush(heap, (end, s))

        def advance(limit: float) -> None:
            """Process every batch completion with time <= limit, in (time, server) order."""
            while heap and heap[0][0] <= limit:
                T, s = heapq.heappop(heap)
                sv = servers[s]
                sv.busy = False  # sv.until == T: the time it went idle
                reps[sv.replica].inflight = 0
                sv.replica = -1
                form(s, T)

        gap_ewma = 1.0 / cfg.ref_rate
        greedy = isinstance(actions, str)
        # the autoscaler (docs/simulator.md "Autoscaler"): the pool is the served model's replicas
        auto = ReferenceAutoscaler(cfg, float(times[0])) if cfg.autoscale and n else None
        self._auto = auto
        for i in range(n):
            now = float(times[i])
            advance(now)
            if i > 0:
                gap_ewma = cfg.ewma_alpha * (now - times[i - 1]) + (1.0 - cfg.ewma_alpha) * gap_ewma
            if auto is not None:
                auto.at_arrival(now, [len(r.queue) + r.inflight for r in reps],
                                [not servers[r.server].busy for r in reps],
                                [servers[r.server].until for r in reps],
                                1.0 / gap_ewma if gap_ewma > 0 else math.inf)
            t = int(tasks[i])
            snap = self._snapshot(now)
            wait, pred, chosen = rv.predict(snap, self.lat[:, t, :])
            load = rv.model_load(snap, self.counts)
            rate = 1.0 / gap_ewma if gap_ewma > 0 else math.inf  # IEEE 1/0 (only with alpha = 1, gap 0)
            obs = rv.build_observation(cfg.obs_mode, snap, t, self.T, rate / cfg.ref_rate,
                                       deadline=float(self.d[t]), replica_counts=self.counts, wait=wait)
            observations[i] = obs
            if greedy:
                a = self.greedy_choice(t, now, pred)
            elif callable(actions):
                view = View(i, now, t, float(self.d[t]), obs.copy(), load, chosen.copy(), wait, pred,
                            self.greedy_choice(t, now, pred))
                a = actions(i, view)
            else:
                a = actions[i]
            a = self._check_action(i, a)
            model[i] = a
            r = int(chosen[a])
            if r < 0 or len(reps[r].queue) >= cfg.queue_capacity:
                status[i], finish[i], reward[i] = REJECTED, now, miss
                continue
            replica[i], gpu[i] = r, reps[r].gpu
            reps[r].queue.append(i)
            s = reps[r].server
            if not servers[s].busy:
                form(s, now)

        clock = float(times[-1]) if n else 0.0
        scaled = {}
        if auto is not None:
            scaled = dict(gpu_seconds=auto.gpu_seconds(clock), n_scale_up=auto.n_up, n_scale_down=auto.n_down,
                          autoscale_log=list(auto.log))
        if drain:
            advance(math.inf)
            clock = math.inf
        served = status == SERVED
        latency = np.where(served, finish - times, np.nan)
        done = served & (finish <= clock)
        reward = np.where(served & ~done, np.nan, reward)  # in flight: not realised yet
        met = done & (latency <= self.d[tasks])
        return ReferenceResult(model, replica, status, start, finish, latency, reward, met,
                               observations, clock, gpu, **scaled)

    # ------------------------------------------------------------------ checks
    def _check_inputs(self, times, tasks, actions):
        n = times.size
        if tasks.size != n:
            raise ValueError(f"tasks has {tasks.size} entries, times has {n}")
        if n and not np.isfinite(times).all():
            raise ValueError("arrival times must be finite")
        if n > 1 and (np.diff(times) < 0).any():
            j = int(np.nonzero(np.diff(times) < 0)[0][0]) + 1
            raise ValueError(f"arrival times must be non-decreasing: times[{j}] = {times[j]} < {times[j - 1]}")
        if n and (tasks.min() < 0 or tasks.max() >= self.T):
            raise ValueError(f"task indices must be in 0..{self.T - 1}, got {tasks.min()}..{tasks.max()}")
        if isinstance(actions, str):
            if actions != "greedy":
                raise ValueError(f"actions = {actions!r}: the only named router is 'greedy'")
        elif not callable(actions) and np.asarray(actions).reshape(-1).size != n:
            raise ValueError(f"actions has {np.asarray(actions).size} entries, times has {n}")

    def _check_action(self, i, a) -> int:
        a_int = int(a)
        if a_int != a or not 0 <= a_int < self.M:
            raise ValueError(f"action for request {i} = {a!r}: must be a model index in 0..{self.M - 1}")
        return a_int

    # ------------------------------------------------------------------ routing view
    def _snapshot(self, now: float) -> rv.Snapshot:
        """The state a router sees at ``now`` (every replica is alive here, except, with the
        autoscaler, those that are not up: starting, draining or off)."""
        reps, servers = self._reps, self._servers
        auto = getattr(self, "_auto", None)
        valid = (np.ones(len(reps), bool) if auto is None
                 else np.array([auto.routable(r.k, now) for r in reps], bool))
        return rv.Snapshot(
            now=now, replica_model=np.array([r.model for r in reps], np.int64),
            replica_server=np.array([r.server for r in reps], np.int64),
            queue_len=np.array([len(r.queue) for r in reps], np.int64),
            inflight=np.array([r.inflight for r in reps], np.int64), valid=valid,
            server_busy=np.array([s.busy for s in servers], bool),
            server_free_at=np.array([s.until for s in servers], np.float64),
            queue_capacity=self.cfg.queue_capacity, b_max=self.B, n_models=self.M)

    def greedy_choice(self, t: int, now: float, pred: np.ndarray) -> int:
        """Best quality (ties: lower index) predicted on time; else the earliest predicted."""
        return rv.greedy_choice(pred, now, self.q[:, t], float(self.d[t]))
