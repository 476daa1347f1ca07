"""Reference twin of the reactive autoscaler (docs/simulator.md "Autoscaler (`autoscale`)").

Plain Python over the pool of the served model's replicas (``k = 0..G-1``, replica ``k`` on GPU
``k``), written from the doc, sharing no code with ``bes_jax.env.autoscaler``. The reference
simulator calls :meth:`ReferenceAutoscaler.at_arrival` at every arrival after processing the
events up to it and updating the rate estimate, and routes only to :meth:`routable` replicas.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class _Slot:
    alloc: bool = False
    draining: bool = False
    ready_at: float = math.nan
    alloc_at: float = math.nan
    down_at: float = math.nan


@dataclass
class ReferenceAutoscaler:
    """``ReferenceAutoscaler(cfg, t0)``: the initial replicas allocated and ready at ``t0``."""

    cfg: object
    t0: float
    slots: list = field(default_factory=list)
    log: list = field(default_factory=list)  # (time, "up" | "down" | "release", k)

    def __post_init__(self):
        c = self.cfg
        self.size = c.n_gpus
        self.slots = [_Slot() for _ in range(self.size)]
        for k in range(c.autoscale_initial_replicas):
            s = self.slots[k]
            s.alloc, s.ready_at, s.alloc_at = True, self.t0, self.t0
        self.next_decision = self.t0 + c.autoscale_interval_s
        self.last_action = self.t0
        self.released_gpu_s = 0.0
        self.n_up = self.n_down = 0

    # ------------------------------------------------------------------ queries
    def routable(self, k: int, now: float) -> bool:
        s = self.slots[k]
        return s.alloc and not s.draining and s.ready_at <= now

    def allocated(self) -> int:
        return sum(s.alloc for s in self.slots)

    def gpu_seconds(self, t_end: float) -> float:
        return self.released_gpu_s + sum(t_end - s.alloc_at for s in self.slots if s.alloc)

    # ------------------------------------------------------------------ one arrival
    def at_arrival(self, now: float, in_system, idle, idle_since, rate: float) -> None:
        """``in_system[k]`` queued + in flight, ``idle[k]`` its server runs no batch,
        ``idle_since[k]`` when that server last went idle; ``rate`` the EWMA rate estimate."""
        self._release(in_system, idle, idle_since)
        if now >= self.next_decision:
            self._decide(now, in_system, rate)
            self.next_decision = now + self.cfg.autoscale_interval_s
            self._release(in_system, idle, idle_since)

    def _release(self, in_system, idle, idle_since) -> None:
        for k, s in enumerate(self.slots):
            if s.alloc and s.draining and in_system[k] == 0 and idle[k]:
                at = max(s.down_at, idle_since[k])
                self.released_gpu_s += at - s.alloc_at
                s.alloc, s.draining = False, False
                self.log.append((float(at), "release", k))

    def _decide(self, now: float, in_system, rate: float) -> None:
        c = self.cfg
        load = rate if c.autoscale_metric == "rate" else float(sum(in_system))
        if math.isinf(load):  # rate estimate 1 / 0 (only with ewma_alpha = 1 and a zero gap)
            desired = self.size
        else:
            desired = min(max(math.ceil(load / c.autoscale_target), c.autoscale_min), self.size)
        active = [k for k, s in enumerate(self.slots) if s.alloc and not s.draining]
        if desired > len(active):
            off = [k for k, s in enumerate(self.slots) if not s.alloc]
            add = off[:desired - len(active)]
            for k in add:
                s = self.slots[k]
                s.alloc, s.draining = True, False
                s.ready_at, s.alloc_at = now + c.autoscale_spinup_s, now
                self.log.append((now, "up", k))
            if add:
                self.n_up += len(add)
                self.last_action = now
        elif desired < len(active) and now - self.last_action >= c.autoscale_cooldown_s:
            # starting replicas first (the latest ready time), ties to the highest index
            order = sorted(active, key=lambda k: (self.slots[k].ready_at, k), reverse=True)
            for k in order[:len(active) - desired]:
                s = self.slots[k]
                s.draining, s.down_at = True, now
                self.log.append((now, "down", k))
            self.n_down += len(active) - desired
            self.last_action = now
