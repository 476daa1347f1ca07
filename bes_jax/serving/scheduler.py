"""The simulator's layout and batching rules (docs/simulator.md), with no models or threads.

Kept apart from the pool so the rules that make the live pool comparable to the simulator sit
in one small place, next to nothing else, and can be read against the doc line by line:

* model ``m`` has ``R_m`` replicas; replica ``k`` lives on device ("GPU") ``k mod n_gpus``;
* a *server* runs one batch at a time: in ``concurrent`` placement every replica is its own
  server, in ``exclusive`` placement every device is one server shared by its replicas (on a
  CPU this is a per-device lock: only one batch of any model runs on it at a time);
* every replica has a FIFO queue (the pool enforces ``queue_capacity`` at submission);
* when a server is idle and one of its replicas has a non-empty queue it forms a batch at once
  with the first ``min(len(queue), B_max)`` requests (exclusive: from the replica whose oldest
  queued request arrived first; ties lowest model index, then lowest replica index).

The pool calls :func:`form_batch` under its lock at the event that makes a batch possible (an
arrival at an idle server or a batch completion), exactly as the simulator does.
"""
from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

PLACEMENTS = ("concurrent", "exclusive")


@dataclass
class Request:
    rid: int
    task: int
    prompt_ids: list[int]
    n_out: int
    arrival: float  # pool clock (seconds since the pool started)
    model: int = -1
    replica: int = -1
    start: float = float("nan")
    finish: float = float("nan")
    batch_size: int = 0
    compute: float = float("nan")  # seconds the model spent decoding this request's batch
    future: Future = field(default_factory=Future)

    @property
    def queue_wait(self) -> float:
        return self.start - self.arrival

    @property
    def latency(self) -> float:
        return self.finish - self.arrival


class Replica:
    """One copy of a model: its queue, its batch in flight and (in the pool) its worker."""

    def __init__(self, index: int, model: int, k: int, server: int, device_index: int):
        self.index, self.model, self.k, self.server, self.device_index = index, model, k, server, device_index
        self.queue: deque[Request] = deque()
        self.inflight: list[Request] = []
        self.pending: Optional[list[Request]] = None  # batch formed, waiting for the worker
        self.alive = True
        self.fault: Optional[str] = None
        self.thread: Optional[threading.Thread] = None
        self.runner = None  # a bes_jax.serving.runner.ChildRunner with executor "process"
        self.batches = 0


class Server:
    """What runs one batch at a time: a replica (concurrent) or a device (exclusive)."""

    def __init__(self, index: int):
        self.index = index
        self.busy = False
        self.free_at = 0.0  # busy_until while busy; the time it last went idle otherwise
        self.replicas: list[Replica] = []


def build_layout(replica_counts: Sequence[int], n_gpus: int, placement: str) -> tuple[list[Replica], list[Server]]:
    """Replicas (flat, model-major) and the servers that run their batches."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement = {placement!r}: must be one of {PLACEMENTS}")
    replicas: list[Replica] = []
    for m, R in enumerate(replica_counts):
        for k in range(R):
            replicas.append(Replica(len(replicas), m, k, -1, k % n_gpus))
    if placement == "concurrent":
        servers = [Server(i) for i in range(len(replicas))]
        for r in replicas:
            r.server = r.index
    else:
        servers = [Server(g) for g in range(n_gpus)]
        for r in replicas:
            r.server = r.device_index
    for r in replicas:
        servers[r.server].replicas.append(r)
    return replicas, servers


def form_batch(s: Server, now: float, b_max: int,
               batch_time: Callable[[int, list[Request]], float]) -> Optional[Replica]:
    """If ``s`` is idle and has queued work, form its next batch at ``now``.

    The batch is handed to the replica as ``pending``; the server is busy until ``now +
    batch_time(model, batch)`` (what the router's prediction reads). Returns the replica, or
    None when nothing was formed."""
    if s.busy:
        return None
    cands = [r for r in s.replicas if r.alive and r.queue]
    if not cands:
        return None
    # exclusive: the replica whose oldest queued request arrived first (then model, replica)
    r = min(cands, key=lambda r: (r.queue[0].arrival, r.model, r.k))
    b = min(len(r.queue), b_max)
    batch = [r.queue.popleft() for _ in range(b)]
    for q in batch:
        q.start = now
        q.batch_size = b
    s.busy = True
    s.free_at = now + batch_time(r.model, batch)
    r.pending = batch
    return r
