"""A live pool of OPT models served with the simulator's batching rules (docs/simulator.md).

The pool owns what is live: the models (in this process or one process per replica), one worker
thread per replica, the lock under which requests are queued and batches formed, and the
routing view (:class:`Snapshot`). The rules themselves (layout, FIFO queues, batch formation)
are in :mod:`bes_jax.serving.scheduler`; model specs in :mod:`~bes_jax.serving.models`,
tokenizers in :mod:`~bes_jax.serving.tokenizers`, the batch decode in
:mod:`~bes_jax.serving.decode`, model processes in :mod:`~bes_jax.serving.runner` and devices in
:mod:`~bes_jax.serving.devices`.

A batch is a greedy decode of exactly ``max(n_out)`` new tokens (every request gets its own
``n_out`` tokens). Random-weight pools use :class:`ByteTokenizer`, which needs no files; pools
with real weights (``weights="pretrained"``) use the real OPT tokenizer.

On a CPU all "devices" are the same cores, and replicas that run at the same time
(``concurrent`` placement, or several devices) share those cores and slow each other down. Use
``exclusive`` placement on one device to get latencies that match a profile measured one batch
at a time.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from bes_jax.serving.decode import greedy_decode
from bes_jax.serving.devices import pick_device, setup_threads, torch_device
from bes_jax.serving.models import POOL_PRESETS, PRESETS, load_model
from bes_jax.serving.runner import ChildRunner
from bes_jax.serving.scheduler import PLACEMENTS, Replica, Request, Server, build_layout, form_batch
from bes_jax.serving.tokenizers import ByteTokenizer, HFTokenizer

log = logging.getLogger(__name__)


class WorkerCrashed(RuntimeError):
    """The replica that held a request failed; the request was not served."""


class ModelUnavailable(RuntimeError):
    """Every replica of the chosen model is down."""


class QueueFull(RuntimeError):
    """The chosen replica's queue holds ``queue_capacity`` requests already."""

    def __init__(self, model: str, replica: int, capacity: int):
        super().__init__(f"queue of model {model!r} (replica {replica}) is full ({capacity} requests)")
        self.model, self.replica, self.capacity = model, replica, capacity


@dataclass
class Result:
    token_ids: list[int]
    text: str


@dataclass
class Snapshot:
    """Live state in the simulator's terms, taken under the pool lock at one arrival."""

    now: float
    replica_model: np.ndarray  # [R] model index of every replica (flat, model-major)
    replica_server: np.ndarray  # [R] server index
    queue_len: np.ndarray  # [R]
    inflight: np.ndarray  # [R]
    valid: np.ndarray  # [R] bool: alive
    server_busy: np.ndarray  # [S] bool
    server_free_at: np.ndarray  # [S] busy_until if busy, else the time it last went idle
    queue_capacity: int
    b_max: int
    n_models: int


class Pool:
    """Models, replicas, queues and workers.

    ``latency`` (``[M, T, B_max]``, seconds) is the profile table used to set ``busy_until`` of a
    running batch (what the router's prediction reads); without it the pool uses the time the
    batch started plus the mean measured time of the model's earlier batches.
    """

    def __init__(self, model_names: Sequence[str], *, weights: str = "random",
                 sources: Optional[dict] = None, placement: str = "exclusive", n_gpus: int = 1,
                 replicas: Optional[Sequence[int]] = None, queue_capacity: int = 64, b_max: int = 8,
                 device: str = "auto", dtype: str = "auto", num_threads: int = 0, seed: int = 0,
                 latency: Optional[np.ndarray] = None, executor: str = "thread",
                 preset: str = "custom"):
        import torch
        if placement not in PLACEMENTS:
            raise ValueError(f"pool.placement = {placement!r}: must be one of {PLACEMENTS}")
        if executor not in ("thread", "process"):
            raise ValueError(f"pool.executor = {executor!r}: must be 'thread' or 'process'")
        self.executor = executor
        if weights not in ("random", "pretrained"):
            raise ValueError(f"pool.weights = {weights!r}: must be 'random' or 'pretrained'")
        for n in model_names:
            if n not in PRESETS:
                raise ValueError(f"pool model {n!r}: unknown preset (known: {sorted(PRESETS)})")
        if int(b_max) < 1 or int(queue_capacity) < 1 or int(n_gpus) < 1:
            raise ValueError("pool: b_max, queue_capacity and n_gpus must be >= 1")
        self.preset = preset
        self.model_names = list(model_names)
        self.specs = [PRESETS[n] for n in model_names]
        self.weights = weights
        self.sources = dict(sources or {})
        self.placement, self.n_gpus = placement, int(n_gpus)
        self.queue_capacity, self.b_max = int(queue_capacity), int(b_max)
        M = len(self.specs)
        self.replica_counts = tuple(int(r) for r in (replicas if replicas is not None else (self.n_gpus,) * M))
        if len(self.replica_counts) != M or any(r < 0 for r in self.replica_counts) or sum(self.replica_counts) == 0:
            raise ValueError(f"pool.replicas = {list(self.replica_counts)}: need one non-negative count per model "
                             f"({self.model_names}) and at least one replica")
        self.device = pick_device(device)
        self.num_threads = setup_threads(num_threads) if self.device == "cpu" else torch.get_num_threads()
        if dtype == "auto":
            dtype = "float16" if self.device.startswith("cuda") else "float32"
        self.dtype = getattr(torch, dtype)
        self.seed = int(seed)
        self.latency = None if latency is None else np.asarray(latency, np.float64)
        self._measured: list[list[float]] = [[] for _ in range(M)]

        # layout (bes_jax.serving.scheduler)
        self.replicas, self.servers = build_layout(self.replica_counts, self.n_gpus, placement)

        # models (one set of weights per model and device; replicas on one device share it)
        self._models: dict[tuple[int, int], object] = {}
        self.tokenizer = self._load_tokenizer()
        if executor == "process":
            for r in self.replicas:  # start every model process, then wait for all of them
                r.runner = ChildRunner(self._load_args(r.model, r.device_index), self.num_threads)
            for r in self.replicas:
                r.runner.wait_ready()
        else:
            for r in self.replicas:
                key = (r.model, r.device_index)
                if key not in self._models:
                    self._models[key] = self._load_model(r.model, r.device_index)

        self._cv = threading.Condition()
        self._t0 = time.monotonic()
        self._next_rid = 0
        self._stopping = False
        self._started = False
        self.on_complete: Optional[Callable[[Request], None]] = None

    # ------------------------------------------------------------------ loading
    def _torch_device(self, device_index: int) -> str:
        return torch_device(self.device, device_index)

    def _source(self, m: int) -> str:
        spec = self.specs[m]
        src = self.sources.get(spec.name) or spec.hub_id
        if not src:
            raise ValueError(f"pool model {spec.name!r}: no real weights exist for this preset; "
                             f"use pool.weights=random or give pool.sources.{spec.name}=<hub name or dir>")
        return src

    def _load_tokenizer(self):
        if self.weights == "pretrained":
            return HFTokenizer(self._source(0))
        return ByteTokenizer(min(s.vocab for s in self.specs))

    def _load_args(self, m: int, device_index: int) -> tuple:
        src = self._source(m) if self.weights == "pretrained" else None
        return (self.specs[m], self.weights, src, str(self.dtype).replace("torch.", ""),
                self._torch_device(device_index), self.seed + m)

    def _load_model(self, m: int, device_index: int):
        return load_model(*self._load_args(m, device_index))

    def max_prompt_tokens(self, n_out: int) -> int:
        return min(s.max_positions for s in self.specs) - int(n_out)

    # ------------------------------------------------------------------ generation
    def generate(self, m: int, prompts: Sequence[Sequence[int]], n_out: int, device_index: int = 0) -> list[list[int]]:
        """Greedy decode of exactly ``n_out`` new tokens for a left-padded batch (in this process)."""
        if (m, device_index) not in self._models:
            self._models[(m, device_index)] = self._load_model(m, device_index)
        return greedy_decode(self._models[(m, device_index)], prompts, n_out, self._torch_device(device_index))

    def _run_batch(self, r: "Replica", prompts, n_out: int):
        if r.runner is not None:
            return r.runner.run(prompts, n_out)
        return self.generate(r.model, prompts, n_out, r.device_index)

    def warmup(self, prompt_len: int = 16, n_out: int = 2) -> None:
        prompt = [ByteTokenizer.offset + 65] * prompt_len
        if self.executor == "process":
            for r in self.replicas:
                for b in sorted({1, self.b_max}):
                    r.runner.run([prompt] * b, n_out)
            return
        for (m, dev) in self._models:
            for b in sorted({1, self.b_max}):
                self.generate(m, [prompt] * b, n_out, dev)

    # ------------------------------------------------------------------ lifecycle
    def now(self) -> float:
        return time.monotonic() - self._t0

    def start(self) -> "Pool":
        if self._started:
            return self
        self._started = True
        self._t0 = time.monotonic()
        for s in self.servers:
            s.free_at = 0.0
        for r in self.replicas:
            r.thread = threading.Thread(target=self._worker, args=(r,), daemon=True,
                                        name=f"worker-{self.model_names[r.model]}-{r.k}")
            r.thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._stopping = True
            for r in self.replicas:
                for req in list(r.queue):
                    self._fail(req, RuntimeError("server shutting down"))
                r.queue.clear()
            self._cv.notify_all()
        for r in self.replicas:
            if r.thread is not None:
                r.thread.join(timeout)
            if r.runner is not None:
                r.runner.close()

    # ------------------------------------------------------------------ state for routing
    def snapshot(self, now: Optional[float] = None) -> Snapshot:
        """Call with the lock held (inside :meth:`submit`'s chooser) or accept a racy view."""
        now = self.now() if now is None else now
        return Snapshot(
            now=now,
            replica_model=np.array([r.model for r in self.replicas], np.int64),
            replica_server=np.array([r.server for r in self.replicas], np.int64),
            queue_len=np.array([len(r.queue) for r in self.replicas], np.int64),
            inflight=np.array([len(r.inflight) + (len(r.pending) if r.pending else 0) for r in self.replicas], np.int64),
            valid=np.array([r.alive for r in self.replicas], bool),
            server_busy=np.array([s.busy for s in self.servers], bool),
            # a batch that overruns its predicted end is still busy: it frees up no earlier than now
            server_free_at=np.array([max(s.free_at, now) if s.busy else s.free_at for s in self.servers], np.float64),
            queue_capacity=self.queue_capacity, b_max=self.b_max, n_models=len(self.specs))

    def alive_models(self) -> np.ndarray:
        alive = np.zeros(len(self.specs), bool)
        for r in self.replicas:
            alive[r.model] |= r.alive
        return alive

    def queue_lengths(self) -> dict[str, int]:
        out = {n: 0 for n in self.model_names}
        for r in self.replicas:
            out[self.model_names[r.model]] += len(r.queue)
        return out

    def inflight_counts(self) -> dict[str, int]:
        out = {n: 0 for n in self.model_names}
        for r in self.replicas:
            out[self.model_names[r.model]] += len(r.inflight) + (len(r.pending) if r.pending else 0)
        return out

    def choose_replica(self, snap: Snapshot, m: int) -> int:
        from bes_jax.serving.observation import choose_replica
        return choose_replica(snap, m)

    # ------------------------------------------------------------------ submission
    def submit(self, task: int, prompt_ids: Sequence[int], n_out: int,
               choose: Callable[[Snapshot], int]) -> Request:
        """Route one request: ``choose(snapshot) -> model index`` runs under the pool lock.

        Raises :class:`QueueFull` (rejected), :class:`ModelUnavailable` (no live replica) or
        whatever ``choose`` raises; otherwise the request is queued and its ``future`` resolves
        to a :class:`Result` or fails with :class:`WorkerCrashed`.
        """
        with self._cv:
            if self._stopping:
                raise ModelUnavailable("server shutting down")
            now = self.now()
            snap = self.snapshot(now)
            m = int(choose(snap))
            if not 0 <= m < len(self.specs):
                raise ValueError(f"router chose model index {m}, pool has {len(self.specs)} models")
            ri = self.choose_replica(snap, m)
            if ri < 0:
                raise ModelUnavailable(f"model {self.model_names[m]!r} has no live replica")
            r = self.replicas[ri]
            if len(r.queue) >= self.queue_capacity:
                raise QueueFull(self.model_names[m], r.k, self.queue_capacity)
            req = Request(self._next_rid, int(task), list(prompt_ids), int(n_out), now, m, ri)
            self._next_rid += 1
            r.queue.append(req)
            self._try_form(self.servers[r.server], now)
            return req

    def cancel(self, req: Request) -> bool:
        """Remove a request that is still queued (e.g. it timed out); False once it has started."""
        with self._cv:
            r = self.replicas[req.replica]
            try:
                r.queue.remove(req)
            except ValueError:
                return False
            return True

    def inject_fault(self, model: str, replica: int = 0, message: str = "injected fault") -> None:
        """The replica's next batch raises (to test crash handling)."""
        m = self.model_names.index(model)
        with self._cv:
            for r in self.replicas:
                if r.model == m and r.k == replica:
                    r.fault = message
                    return
        raise ValueError(f"model {model!r} has no replica {replica}")

    # ------------------------------------------------------------------ batching (lock held)
    def _batch_time(self, m: int, batch: list[Request]) -> float:
        b = len(batch)
        if self.latency is not None:
            bi = min(b, self.latency.shape[2]) - 1
            return float(max(self.latency[m, q.task, bi] for q in batch))
        seen = self._measured[m]
        return float(np.mean(seen[-20:])) if seen else 0.0

    def _try_form(self, s: Server, now: float) -> None:
        if self._stopping:
            return
        if form_batch(s, now, self.b_max, self._batch_time) is not None:
            self._cv.notify_all()

    def _fail(self, req: Request, exc: BaseException) -> None:
        if not req.future.done():
            req.future.set_exception(exc)

    # ------------------------------------------------------------------ worker
    def _worker(self, r: Replica) -> None:
        while True:
            with self._cv:
                while r.pending is None and not self._stopping and r.alive:
                    self._cv.wait()
                if r.pending is None:
                    return
                batch, r.pending = r.pending, None
                r.inflight = batch
                fault, r.fault = r.fault, None
            n_out = max(q.n_out for q in batch)
            t0 = time.monotonic()
            try:
                if fault:
                    raise RuntimeError(fault)
                toks = self._run_batch(r, [q.prompt_ids for q in batch], n_out)
                err = None
            except Exception as e:  # the replica is lost: mask it and answer its requests
                err = e
            took = time.monotonic() - t0
            with self._cv:
                now = self.now()
                s = self.servers[r.server]
                s.busy = False
                s.free_at = now
                r.inflight = []
                r.batches += 1
                if err is None:
                    self._measured[r.model].append(took)
                    compute = r.runner.last_compute if r.runner is not None else took
                    for q in batch:
                        q.finish = now
                        q.compute = compute
                else:
                    log.error("worker %s replica %d crashed: %s", self.model_names[r.model], r.k, err)
                    r.alive = False
                    lost = batch + list(r.queue)
                    r.queue.clear()
                    for q in lost:
                        q.finish = now
                        self._fail(q, WorkerCrashed(f"replica {r.k} of model {self.model_names[r.model]!r} "
                                                    f"failed: {err}"))
                self._try_form(s, now)
                self._cv.notify_all()
            if err is None:
                for q, t in zip(batch, toks):
                    t = t[:q.n_out]
                    if not q.future.done():
                        q.future.set_result(Result(t, self.tokenizer.decode(t)))
                    if self.on_complete is not None:
                        self.on_complete(q)
            else:
                return


def build_pool(cfg, profile=None) -> Pool:
    """A pool from a ``conf/pool/*.yaml`` node (dict-like); ``profile`` gives B_max and latencies."""
    cfg = dict(cfg)
    names = cfg.get("models") or POOL_PRESETS.get(cfg.get("preset", ""), None)
    if not names:
        raise ValueError(f"pool.models is empty and pool.preset = {cfg.get('preset')!r} is not one of {sorted(POOL_PRESETS)}")
    names = list(names)
    latency = None
    b_max = cfg.get("b_max")
    if profile is not None:
        if list(profile.model_names) != names:
            raise ValueError(f"pool.models = {names} but profile {profile.name!r} has models {profile.model_names}")
        latency = profile.latency
        b_max = b_max or profile.b_max
        if int(b_max) != profile.b_max:
            raise ValueError(f"pool.b_max = {b_max} but profile {profile.name!r} has B_max = {profile.b_max}")
    replicas = cfg.get("replicas")
    return Pool(names, weights=cfg.get("weights", "random"), sources=cfg.get("sources") or None,
                placement=cfg.get("placement", "exclusive"), n_gpus=int(cfg.get("n_gpus", 1)),
                replicas=None if replicas is None else list(replicas),
                queue_capacity=int(cfg.get("queue_capacity", 64)), b_max=int(b_max or 8),
                device=cfg.get("device", "auto"), dtype=cfg.get("dtype", "auto"),
                num_threads=int(cfg.get("num_threads", 0) or 0), seed=int(cfg.get("seed", 0)),
                latency=latency, executor=str(cfg.get("executor", "thread")),
                preset=str(cfg.get("preset", "custom")))
