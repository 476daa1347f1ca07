"""Reference twin of continuous (iteration-level) batching: the ground truth the JAX simulator's
``batching: continuous`` mode is tested against.

Plain Python, float64 clocks, a heap of iteration ends (one entry per busy server), a deque
waiting queue and an admission-ordered running list per replica; written from
``docs/simulator.md`` ("Continuous batching") alone, sharing no code with ``bes_jax.env``. The
routing view (replica choice, prediction, observation, greedy) is
:mod:`bes_jax.reference.routing_view_continuous`, the numpy code the live router uses too.

Status codes: ``QUEUED`` (waiting), ``RUNNING`` (admitted, not completed), ``SERVED``
(completed), ``DROPPED``, ``REJECTED``. Without ``drain`` the run stops at the last arrival (or
at ``until``) and whatever is still waiting or running keeps that status with an unrealised
(NaN) reward.

Choices the doc leaves to an implementation: prompts must have >= 1 token (the doc's first token
comes at the end of the prefill, so an empty prompt would never emit one); a router that picks a
model with no replica gets the request ``REJECTED`` (after the context rule, so its
``prompt_tokens`` is still as served).
"""
from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Union

import numpy as np

from bes_jax.profile import Profile
from bes_jax.reference import routing_view_continuous as rvc
from bes_jax.sim_config import SimConfig

QUEUED, SERVED, DROPPED, REJECTED, RUNNING = 1, 2, 3, 4, 5
STATUS = {"QUEUED": QUEUED, "SERVED": SERVED, "DROPPED": DROPPED, "REJECTED": REJECTED, "RUNNING": RUNNING}


@dataclass
class _Seq:
    i: int      # request index
    p: int      # prompt tokens as served
    o: int      # output tokens
    f: int = 0  # prompt tokens prefilled
    g: int = 0  # tokens generated


@dataclass
class _Replica:
    model: int
    k: int
    gpu: int
    server: int
    waiting: deque = field(default_factory=deque)  # request indices, FIFO
    running: list = field(default_factory=list)    # _Seq, admission order
    reserved: int = 0                              # Σ_running (p + o)
    # what the routing view reads, kept up to date at every change (not recomputed per decision)
    kv_used: int = 0                               # Σ_running (f + g)
    wait_prompt: int = 0                           # Σ_waiting p
    per_task: np.ndarray = None                    # [T] waiting + running requests per task


@dataclass
class _Server:
    busy: bool = False
    until: float = 0.0     # end of the running iteration (meaningful while busy)
    replica: int = -1      # replica whose iteration is running
    last: int = -1         # replica served last (exclusive round-robin)
    batch: list = field(default_factory=list)  # [(seq, c)] of the running iteration, c = -1: decode


@dataclass(frozen=True)
class View:
    """What a router callable sees when deciding request ``i`` (arrays are copies)."""

    i: int
    now: float
    task: int
    prompt: int              # p_in, the pending request's prompt tokens
    deadline: float
    observation: np.ndarray
    snapshot: rvc.Snapshot
    replica: np.ndarray      # [M] replica the routing rule picks (-1: none)
    pred: np.ndarray         # [M] predicted end-to-end latency (inf: cannot take it)
    pred_ttft: np.ndarray    # [M] predicted TTFT
    greedy: int = -1         # the model ``greedy`` would pick for this request


@dataclass
class ContinuousResult:
    """Per-request outcomes of one run (index = decision number).

    ``model`` chosen; ``replica`` global (model-major) index and ``gpu``, -1 when rejected;
    ``status`` a code; ``start`` admission time; ``first_token`` end of the iteration that
    finished its prefill; ``finish`` completion (SERVED), drop time (DROPPED), arrival
    (REJECTED), NaN otherwise; ``latency`` = e2e, ``ttft``, ``tpot`` (NaN unless completed;
    tpot NaN for one output token); ``reward`` NaN while unrealised; ``met_deadline``;
    ``prompt_tokens`` as served (``p_in`` when the context rule rejected it), ``prompt_in``,
    ``output_tokens``; ``generated`` tokens generated at the end of the run;
    ``observations`` [n, obs size]; ``clock`` the last arrival, or inf after a drain;
    ``final_reserved`` [R] KV reservation per replica at the end; ``trace``: with
    ``trace=True``, one dict per iteration (``server, replica, start, end, n, decode, prefill,
    context, reserved`` the replica's reservation during it, ``kv_in_use`` at its start);
    ``admission_stops``: how often admission stopped at a waiting head, by reason.
    """

    model: np.ndarray
    replica: np.ndarray
    gpu: np.ndarray
    status: np.ndarray
    start: np.ndarray
    first_token: np.ndarray
    finish: np.ndarray
    latency: np.ndarray
    ttft: np.ndarray
    tpot: np.ndarray
    reward: np.ndarray
    met_deadline: np.ndarray
    prompt_tokens: np.ndarray
    prompt_in: np.ndarray
    output_tokens: np.ndarray
    generated: np.ndarray
    observations: np.ndarray
    clock: float
    final_reserved: np.ndarray
    kv_budget: np.ndarray      # [R] kv_tokens of each replica's model
    trace: list | None = None
    admission_stops: dict | None = None  # times admission stopped at a head: {"max_num_seqs", "kv"}

    @property
    def completed(self) -> np.ndarray:
        return self.status == SERVED


Actions = Union[np.ndarray, str, Callable[[int, View], int]]


class ContinuousReferenceSimulator:
    """``ContinuousReferenceSimulator(profile, cfg).run(times, tasks, prompts, outputs, actions)``."""

    def __init__(self, profile: Profile, cfg: SimConfig):
        profile.require_continuous()
        self.p, self.cfg = profile, cfg
        self.M, self.T = profile.n_models, profile.n_tasks
        self.eng = rvc.Engines.from_profile(profile, cfg)
        self.it = self.eng.iteration
        self.q = np.asarray(profile.quality, np.float64)
        self.d = self.eng.deadline
        ttft = cfg.optional_task_deadlines("ttft_deadlines", self.T)
        tpot = cfg.optional_task_deadlines("tpot_deadlines", self.T)
        self.ttft_d = None if ttft is None else np.asarray(ttft, np.float64)
        self.tpot_d = None if tpot is None else np.asarray(tpot, np.float64)
        self.counts = cfg.replica_counts(self.M)
        self.obs_size = rvc.observation_size(cfg.obs_mode, self.T, self.M)

    # ------------------------------------------------------------------ values
    def value(self, m: int, t: int, e2e: float, met: bool) -> float:
        """Reward of a completed request (``met``: every configured deadline holds)."""
        c, d, q = self.cfg, self.d[t], self.q[m, t]
        if c.deadline_kind == "hard":
            v = q if met else -c.miss_penalty
        elif e2e <= d:
            v = q
        elif c.soft_decay == "linear":
            v = q * max(0.0, 1.0 - (e2e - d) / (c.soft_slack * d))
        else:
            v = q * math.exp(-(e2e - d) / (c.soft_tau * d))
        return float(v - c.latency_weight * e2e / d)

    def meets(self, t: int, o: int, e2e: float, ttft: float) -> bool:
        ok = e2e <= self.d[t]
        if self.ttft_d is not None:
            ok = ok and ttft <= self.ttft_d[t]
        if self.tpot_d is not None and o > 1:
            ok = ok and (e2e - ttft) / (o - 1) <= self.tpot_d[t]
        return bool(ok)

    def iteration_time(self, m: int, n: int, C: int, tokens: int) -> float:
        fixed, per_seq, weights, per_kv, per_tok = (float(x) for x in self.it[m])
        return fixed + per_seq * n + max(weights + per_kv * C, per_tok * tokens)

    # ------------------------------------------------------------------ run
    def run(self, times, tasks, prompts, outputs, actions: Actions, drain: bool = True,
            trace: bool = False, until: float | None = None) -> ContinuousResult:
        """Route request i (arrival ``times[i]``, task, prompt and output tokens) with
        ``actions[i]`` (an int array, ``"greedy"``, or ``f(i, view) -> model``).

        After the last decision: ``drain`` processes every event (clock = inf); else ``until``
        (>= the last arrival, e.g. the next arrival a simulator would advance to) processes
        the events with time <= until (clock = until); else nothing more (clock = last arrival).
        """
        times = np.asarray(times, np.float64).reshape(-1)
        n = times.size
        tasks = self._int_array(tasks, "tasks", n)
        prompts = self._int_array(prompts, "prompts", n)
        outputs = self._int_array(outputs, "outputs", n)
        self._check_inputs(times, tasks, prompts, outputs, actions)
        cfg, eng = self.cfg, self.eng
        S, K = cfg.max_num_seqs, cfg.max_num_batched_tokens
        exclusive = cfg.placement == "exclusive"
        overhead = eng.request_overhead  # [M] docs/simulator.md "Per-request overhead"

        reps: list[_Replica] = []
        for m in range(self.M):
            for k in range(self.counts[m]):
                gpu = cfg.gpu_of_replica(m, k)
                reps.append(_Replica(m, k, gpu, gpu if exclusive else len(reps), per_task=np.zeros(self.T, np.int64)))
        n_servers = cfg.n_gpus if exclusive else len(reps)
        servers = [_Server() for _ in range(n_servers)]
        members = [[r for r, rep in enumerate(reps) if rep.server == s] for s in range(n_servers)]
        heap: list[tuple[float, int]] = []
        iters: list | None = [] if trace else None
        stops = {"max_num_seqs": 0, "kv": 0}

        model = np.full(n, -1, np.int64)
        replica = np.full(n, -1, np.int64)
        gpu = np.full(n, -1, np.int64)
        status = np.full(n, QUEUED, np.int64)
        start = np.full(n, np.nan)
        first = np.full(n, np.nan)
        finish = np.full(n, np.nan)
        reward = np.full(n, np.nan)
        met = np.zeros(n, bool)
        served_p = prompts.copy()
        generated = np.zeros(n, np.int64)
        observations = np.zeros((n, self.obs_size))
        miss = -float(cfg.miss_penalty)
        kv_budget = np.array([int(eng.kv_tokens[rep.model]) for rep in reps], np.int64)

        def admit(r: int, T: float) -> None:
            rep = reps[r]
            while rep.waiting:
                h = rep.waiting[0]
                if cfg.drop_expired and T - times[h] > self.d[tasks[h]]:
                    rep.waiting.popleft()
                    rep.wait_prompt -= int(served_p[h])
                    rep.per_task[tasks[h]] -= 1
                    status[h], finish[h], reward[h] = DROPPED, T, miss
                elif len(rep.running) < S and rep.reserved + served_p[h] + outputs[h] <= kv_budget[r]:
                    rep.waiting.popleft()
                    rep.running.append(_Seq(h, int(served_p[h]), int(outputs[h])))
                    rep.reserved += int(served_p[h] + outputs[h])
                    rep.wait_prompt -= int(served_p[h])
                    status[h], start[h] = RUNNING, T
                else:
                    stops["max_num_seqs" if len(rep.running) >= S else "kv"] += 1
                    return

        def begin(s: int, r: int, T: float) -> None:
            """Start one iteration of replica r (non-empty running set) on idle server s at T."""
            rep, sv = reps[r], servers[s]
            batch, budget = [], K
            decodes = [q for q in rep.running if q.f == q.p]
            budget -= len(decodes)
            P, C = 0, 0
            for q in rep.running:
                if q.f == q.p:
                    batch.append((q, -1))
                    C += q.p + q.g
                elif budget > 0:
                    c = min(q.p - q.f, budget)
                    budget -= c
                    P += c
                    C += q.f + c
                    batch.append((q, c))
            tau = self.iteration_time(rep.model, len(batch), C, P + len(decodes))
            sv.busy, sv.until, sv.replica, sv.batch = True, T + tau, r, batch
            heapq.heappush(heap, (T + tau, s))
            if iters is not None:
                iters.append(dict(server=s, replica=r, start=T, end=T + tau, n=len(batch), decode=len(decodes),
                                  prefill=P, context=C, reserved=rep.reserved,
                                  kv_in_use=sum(q.f + q.g for q in rep.running)))

        def end(s: int, E: float) -> None:
            sv = servers[s]
            r, rep = sv.replica, reps[sv.replica]
            seen = E + overhead[rep.model]  # when the client sees what the engine emitted at E
            for q, c in sv.batch:
                if c < 0:
                    q.g += 1
                else:
                    q.f += c
                    if q.f == q.p:
                        q.g = 1
                        first[q.i] = seen
                generated[q.i] = q.g
            keep = []
            for q in rep.running:
                if q.g == q.o:
                    i, t = q.i, int(tasks[q.i])
                    e2e, ttft = seen - times[i], first[i] - times[i]
                    ok = self.meets(t, q.o, e2e, ttft)
                    status[i], finish[i], met[i] = SERVED, seen, ok
                    reward[i] = self.value(rep.model, t, e2e, ok)
                    rep.reserved -= q.p + q.o
                    rep.per_task[t] -= 1
                else:
                    keep.append(q)
            rep.running = keep
            rep.kv_used = sum(q.f + q.g for q in keep)
            sv.busy, sv.replica, sv.batch, sv.last = False, -1, [], r
            for r2 in members[s]:
                admit(r2, E)
            mem = members[s]
            j = mem.index(r)
            for step in range(1, len(mem) + 1):
                cand = mem[(j + step) % len(mem)]
                if reps[cand].running:
                    begin(s, cand, E)
                    return

        def advance(limit: float) -> None:
            while heap and heap[0][0] <= limit:
                E, s = heapq.heappop(heap)
                end(s, E)

        rate = rvc.RateEstimator(cfg.ewma_alpha, cfg.ref_rate)
        greedy = isinstance(actions, str)
        for i in range(n):
            now = float(times[i])
            advance(now)
            rate_norm = rate.observe(now)
            t, p_in, o = int(tasks[i]), int(prompts[i]), int(outputs[i])
            snap = self._snapshot(now, reps, servers)
            pred, pred_ttft, chosen = rvc.predict(snap, eng, t, p_in)
            obs = rvc.build_observation(cfg.obs_mode, snap, eng, t, p_in, rate_norm, pred)
            observations[i] = obs
            if greedy:
                a = rvc.greedy_choice(pred, pred_ttft, eng, t)
            elif callable(actions):
                a = actions(i, View(i, now, t, p_in, float(self.d[t]), obs.copy(), snap, chosen.copy(),
                                    pred.copy(), pred_ttft.copy(), rvc.greedy_choice(pred, pred_ttft, eng, t)))
            else:
                a = actions[i]
            a = self._check_action(i, a)
            model[i] = a
            ctx = int(eng.ctx_max[a])
            ok = True
            if p_in + o > ctx:
                if cfg.context_overflow == "truncate" and o < ctx:
                    served_p[i] = ctx - o
                else:
                    ok = False
            r = int(chosen[a])
            if (not ok or served_p[i] + o > eng.kv_tokens[a] or r < 0
                    or len(reps[r].waiting) >= cfg.queue_capacity):
                status[i], finish[i], reward[i] = REJECTED, now, miss
                continue
            rep = reps[r]
            replica[i], gpu[i] = r, rep.gpu
            rep.waiting.append(i)
            rep.wait_prompt += int(served_p[i])
            rep.per_task[t] += 1
            s = rep.server
            if not servers[s].busy:
                admit(r, now)
                begin(s, r, now)

        clock = float(times[-1]) if n else 0.0
        if drain:
            advance(math.inf)
            clock = math.inf
        elif until is not None:
            if not until >= clock:
                raise ValueError(f"until = {until}: must be >= the last arrival ({clock})")
            advance(float(until))
            clock = float(until)
        done = status == SERVED
        e2e = np.where(done, finish - times, np.nan)
        ttft = np.where(done, first - times, np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            tpot = np.where(done & (outputs > 1), (e2e - ttft) / np.maximum(outputs - 1, 1), np.nan)
        return ContinuousResult(model, replica, gpu, status, start, first, finish, e2e, ttft, tpot, reward, met,
                                served_p, prompts.copy(), outputs.copy(), generated, observations, clock,
                                np.array([rep.reserved for rep in reps], np.int64), kv_budget, iters, stops)

    # ------------------------------------------------------------------ routing view
    def _snapshot(self, now, reps, servers) -> rvc.Snapshot:
        R = len(reps)
        return rvc.Snapshot(
            now=now, replica_model=np.array([rep.model for rep in reps], np.int64),
            replica_server=np.array([rep.server for rep in reps], np.int64), valid=np.ones(R, bool),
            n_wait=np.array([len(rep.waiting) for rep in reps], np.int64),
            n_run=np.array([len(rep.running) for rep in reps], np.int64),
            kv_in_use=np.array([rep.kv_used for rep in reps], np.int64),
            wait_prompt=np.array([rep.wait_prompt for rep in reps], np.int64),
            out_mean_sum=np.array([rep.per_task for rep in reps]).reshape(R, self.T) @ self.eng.mean_output,
            server_busy=np.array([sv.busy for sv in servers], bool),
            server_busy_until=np.array([sv.until for sv in servers], np.float64))

    # ------------------------------------------------------------------ checks
    @staticmethod
    def _int_array(x, name, n) -> np.ndarray:
        a = np.asarray(x).reshape(-1)
        if a.size != n:
            raise ValueError(f"{name} has {a.size} entries, times has {n}")
        if a.size and not np.issubdtype(a.dtype, np.integer):
            if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
                j = int(np.nonzero(~np.isfinite(a) | (a != np.round(a)))[0][0])
                raise ValueError(f"{name}[{j}] = {a[j]!r}: must be an integer")
        return a.astype(np.int64)

    def _check_inputs(self, times, tasks, prompts, outputs, actions):
        n = times.size
        if n and not np.isfinite(times).all():
            j = int(np.nonzero(~np.isfinite(times))[0][0])
            raise ValueError(f"times[{j}] = {times[j]}: arrival times must be finite")
        if n > 1 and (np.diff(times) < 0).any():
            j = int(np.nonzero(np.diff(times) < 0)[0][0]) + 1
            raise ValueError(f"arrival times must be non-decreasing: times[{j}] = {times[j]} < {times[j - 1]}")
        if n and (tasks.min() < 0 or tasks.max() >= self.T):
            j = int(np.nonzero((tasks < 0) | (tasks >= self.T))[0][0])
            raise ValueError(f"tasks[{j}] = {tasks[j]}: task indices must be in 0..{self.T - 1}")
        for name, a in (("prompts", prompts), ("outputs", outputs)):
            if n and a.min() < 1:
                j = int(np.nonzero(a < 1)[0][0])
                raise ValueError(f"{name}[{j}] = {a[j]}: token counts must be >= 1")
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
