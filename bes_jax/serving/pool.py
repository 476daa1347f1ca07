"""A live pool of OPT models served with the simulator's batching rules (docs/simulator.md).

Layout, routing inside a model and batch formation follow ``docs/simulator.md`` exactly:

* model ``m`` has ``R_m`` replicas; replica ``k`` lives on device ("GPU") ``k mod n_gpus``;
* a *server* runs one batch at a time: in ``concurrent`` placement every replica is its own
  server, in ``exclusive`` placement every device is one server shared by its replicas (on a
  CPU this is a per-device lock: only one batch of any model runs on it at a time);
* every replica has a FIFO queue of at most ``queue_capacity`` requests;
* when a server is idle and one of its replicas has a non-empty queue it forms a batch at once
  with the first ``min(len(queue), B_max)`` requests (exclusive: from the replica whose oldest
  queued request arrived first; ties lowest model index, then lowest replica index).

Batch formation runs under the pool lock at the event that makes it possible (an arrival at an
idle server or a batch completion), exactly as in the simulator; one worker thread per
(model, replica) then runs the batch it was handed. A batch is a greedy decode of exactly
``max(n_out)`` new tokens (every request gets its own ``n_out`` tokens).

Weights are random (from ``OPTConfig`` at the preset's dimensions, seeded) unless a hub name or
a local directory is given, in which case ``from_pretrained`` loads them together with the real
OPT tokenizer. Random-weight pools use :class:`ByteTokenizer`, which needs no files.

On a CPU all "devices" are the same cores: ``torch.set_num_threads`` is set once for the
process, and replicas that run at the same time (``concurrent`` placement, or several devices)
share those cores and slow each other down. Use ``exclusive`` placement on one device to get
latencies that match a profile measured one batch at a time.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)

PLACEMENTS = ("concurrent", "exclusive")

# OPT's reserved ids: <s>=0, <pad>=1, </s>=2, <unk>=3.
PAD_ID, BOS_ID, EOS_ID = 1, 2, 2


@dataclass(frozen=True)
class ModelSpec:
    """Dimensions of one OPT-architecture model."""

    name: str
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int = 50272
    max_positions: int = 2048
    hub_id: Optional[str] = None  # where real weights live, when asked for
    #: for tiny models: the OPT size they stand in for (qualities are borrowed from it)
    stands_in_for: Optional[str] = None

    def opt_config(self):
        from transformers import OPTConfig
        return OPTConfig(vocab_size=self.vocab, hidden_size=self.hidden, num_hidden_layers=self.layers,
                         num_attention_heads=self.heads, ffn_dim=self.ffn,
                         max_position_embeddings=self.max_positions, word_embed_proj_dim=self.hidden,
                         do_layer_norm_before=True, pad_token_id=PAD_ID, bos_token_id=BOS_ID,
                         eos_token_id=EOS_ID, dropout=0.0, attention_dropout=0.0)


#: OPT paper Table 1 (see ../shared/docs/OPT_FACTS.md) and a tiny family for CPU runs.
#: The tiny sizes are chosen for a clear latency ratio (about 1 : 4 : 12 at batch 1 on one CPU
#: thread) while a batch of 8 on the large one stays under about 0.2 s.
PRESETS: dict[str, ModelSpec] = {
    "opt-125m": ModelSpec("opt-125m", 768, 12, 12, 3072, hub_id="facebook/opt-125m"),
    "opt-1.3b": ModelSpec("opt-1.3b", 2048, 24, 32, 8192, hub_id="facebook/opt-1.3b"),
    "opt-6.7b": ModelSpec("opt-6.7b", 4096, 32, 32, 16384, hub_id="facebook/opt-6.7b"),
    "tiny-s": ModelSpec("tiny-s", 64, 2, 2, 256, vocab=260, max_positions=512, stands_in_for="opt-125m"),
    "tiny-m": ModelSpec("tiny-m", 256, 4, 4, 1024, vocab=260, max_positions=512, stands_in_for="opt-1.3b"),
    "tiny-l": ModelSpec("tiny-l", 512, 6, 8, 2048, vocab=260, max_positions=512, stands_in_for="opt-6.7b"),
}
POOL_PRESETS = {"tiny": ("tiny-s", "tiny-m", "tiny-l"), "opt": ("opt-125m", "opt-1.3b", "opt-6.7b")}


def param_count(spec: ModelSpec) -> int:
    """Parameters of an OPT model with tied embeddings (the position table has 2 extra rows)."""
    h, f = spec.hidden, spec.ffn
    per_layer = 4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h
    return spec.vocab * h + (spec.max_positions + 2) * h + spec.layers * per_layer + 2 * h


# ----------------------------------------------------------------------------- tokenizer

class ByteTokenizer:
    """Offline tokenizer: one token per UTF-8 byte, id = byte + 4 (ids 0..3 are OPT's specials).

    Works for any vocabulary of at least 260 ids, so it maps into the tiny models' vocabulary
    and into the real OPT one alike. Decoding drops ids outside the byte range.
    """

    offset = 4
    pad_id = PAD_ID

    def __init__(self, vocab_size: int = 260):
        if vocab_size < 256 + self.offset:
            raise ValueError(f"ByteTokenizer needs a vocabulary of at least {256 + self.offset} ids, got {vocab_size}")
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        return [b + self.offset for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        data = bytes(int(i) - self.offset for i in ids if self.offset <= int(i) < self.offset + 256)
        return data.decode("utf-8", errors="replace")


class HFTokenizer:
    """The real OPT tokenizer (only used when weights come from the hub or a local directory)."""

    pad_id = PAD_ID

    def __init__(self, source: str):
        from transformers import AutoTokenizer
        self.tok = AutoTokenizer.from_pretrained(source)
        self.vocab_size = len(self.tok)

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=True)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)


# ----------------------------------------------------------------------------- requests

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


class _Replica:
    def __init__(self, index: int, model: int, k: int, server: int, device_index: int):
        self.index, self.model, self.k, self.server, self.device_index = index, model, k, server, device_index
        self.queue: deque[Request] = deque()
        self.inflight: list[Request] = []
        self.pending: Optional[list[Request]] = None  # batch formed, waiting for the worker
        self.alive = True
        self.fault: Optional[str] = None
        self.thread: Optional[threading.Thread] = None
        self.runner: Optional[_ChildRunner] = None
        self.batches = 0


class _Server:
    def __init__(self, index: int):
        self.index = index
        self.busy = False
        self.free_at = 0.0  # busy_until while busy; the time it last went idle otherwise
        self.replicas: list[_Replica] = []


# ----------------------------------------------------------------------------- running a batch

def greedy_decode(model, prompts: Sequence[Sequence[int]], n_out: int, dev: str) -> list[list[int]]:
    """Greedy decode of exactly ``n_out`` new tokens for a left-padded batch (KV cache)."""
    import torch
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p):] = 1
    ids, mask = ids.to(dev), mask.to(dev)
    out = []
    with torch.inference_mode():
        res = model(input_ids=ids, attention_mask=mask, use_cache=True)
        for step in range(n_out):
            nxt = res.logits[:, -1, :].argmax(dim=-1, keepdim=True)
            out.append(nxt)
            if step == n_out - 1:
                break
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
            res = model(input_ids=nxt, attention_mask=mask, past_key_values=res.past_key_values, use_cache=True)
    return torch.cat(out, dim=1).cpu().tolist() if out else [[] for _ in prompts]


def load_model(spec: ModelSpec, weights: str, source: Optional[str], dtype: str, device: str, seed: int):
    import torch
    from transformers import OPTForCausalLM
    dt = getattr(torch, dtype)
    if weights == "pretrained":
        model = OPTForCausalLM.from_pretrained(source, dtype=dt)
    else:
        torch.manual_seed(seed)
        model = OPTForCausalLM(spec.opt_config()).to(dt)
    return model.to(device).eval()


def _child_main(rx, tx) -> None:
    """A model process: receives ``(load_args, num_threads)``, loads the model, then runs
    ``(prompts, n_out)`` batches until ``None`` or end of input."""
    import torch
    load_args, num_threads = rx.recv()
    torch.set_num_threads(max(1, int(num_threads)))
    try:
        model = load_model(*load_args)
        dev = load_args[4]
        tx.send(("ready", None))
    except Exception as e:  # reported to the parent, which refuses to start
        tx.send(("err", f"{type(e).__name__}: {e}"))
        return
    while True:
        try:
            msg = rx.recv()
        except EOFError:
            return
        if msg is None:
            return
        prompts, n_out = msg
        try:
            t0 = time.perf_counter()
            toks = greedy_decode(model, prompts, n_out, dev)
            tx.send(("ok", (toks, time.perf_counter() - t0)))
        except Exception as e:
            tx.send(("err", f"{type(e).__name__}: {e}"))


class _ChildRunner:
    """One model process per replica (``executor: process``): batches run outside this
    interpreter, so the HTTP event loop and the model never compete for one GIL. The process is
    ``python -m bes_jax.serving.pool`` talking over two pipes (no re-import of the caller's main)."""

    def __init__(self, load_args: tuple, num_threads: int):
        import subprocess
        import sys
        from multiprocessing.connection import Connection
        c_r, p_w = os.pipe()  # parent -> child
        p_r, c_w = os.pipe()  # child -> parent
        self.proc = subprocess.Popen([sys.executable, "-m", "bes_jax.serving.pool", str(c_r), str(c_w)],
                                     pass_fds=(c_r, c_w))
        os.close(c_r)
        os.close(c_w)
        self.tx, self.rx = Connection(p_w, readable=False), Connection(p_r, writable=False)
        self.tx.send((load_args, num_threads))

    def wait_ready(self, timeout: float = 300.0) -> None:
        if not self.rx.poll(timeout):
            raise RuntimeError("model process did not start in time")
        kind, info = self.rx.recv()
        if kind != "ready":
            raise RuntimeError(f"model process failed to load: {info}")

    def run(self, prompts, n_out: int):
        """Tokens of the batch; ``self.last_compute`` is the decode time inside the process."""
        self.tx.send(([list(p) for p in prompts], int(n_out)))
        kind, val = self.rx.recv()  # EOFError if the process died
        if kind != "ok":
            raise RuntimeError(f"model process: {val}")
        toks, self.last_compute = val
        return toks

    def close(self) -> None:
        try:
            self.tx.send(None)
        except OSError:
            pass
        try:
            self.proc.wait(5)
        except Exception:
            self.proc.kill()
        self.tx.close()
        self.rx.close()


# ----------------------------------------------------------------------------- the pool

def pick_device(device: str = "auto") -> str:
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def setup_threads(num_threads: int = 0) -> int:
    """CPU threads for torch ops; 0 = all cores. Every worker shares them (one process)."""
    import torch
    n = int(num_threads) if num_threads and num_threads > 0 else (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine() or "unknown CPU"


def hardware_name(device: str) -> str:
    import torch
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return f"{cpu_name()} ({torch.get_num_threads()} threads)"


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

        # layout
        self.replicas: list[_Replica] = []
        for m, R in enumerate(self.replica_counts):
            for k in range(R):
                dev = k % self.n_gpus
                self.replicas.append(_Replica(len(self.replicas), m, k, -1, dev))
        if placement == "concurrent":
            self.servers = [_Server(i) for i in range(len(self.replicas))]
            for r in self.replicas:
                r.server = r.index
        else:
            self.servers = [_Server(g) for g in range(self.n_gpus)]
            for r in self.replicas:
                r.server = r.device_index
        for r in self.replicas:
            self.servers[r.server].replicas.append(r)

        # models (one set of weights per model and device; replicas on one device share it)
        self._models: dict[tuple[int, int], object] = {}
        self.tokenizer = self._load_tokenizer()
        if executor == "process":
            for r in self.replicas:  # start every model process, then wait for all of them
                r.runner = _ChildRunner(self._load_args(r.model, r.device_index), self.num_threads)
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
        import torch
        if self.device.startswith("cuda") and self.device == "cuda":
            return f"cuda:{device_index % max(1, torch.cuda.device_count())}"
        return self.device

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

    def _run_batch(self, r: "_Replica", prompts, n_out: int):
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

    def _try_form(self, s: _Server, now: float) -> None:
        if s.busy or self._stopping:
            return
        cands = [r for r in s.replicas if r.alive and r.queue]
        if not cands:
            return
        # exclusive: the replica whose oldest queued request arrived first (then model, replica)
        r = min(cands, key=lambda r: (r.queue[0].arrival, r.model, r.k))
        b = min(len(r.queue), self.b_max)
        batch = [r.queue.popleft() for _ in range(b)]
        for q in batch:
            q.start = now
            q.batch_size = b
        s.busy = True
        s.free_at = now + self._batch_time(r.model, batch)
        r.pending = batch
        self._cv.notify_all()

    def _fail(self, req: Request, exc: BaseException) -> None:
        if not req.future.done():
            req.future.set_exception(exc)

    # ------------------------------------------------------------------ worker
    def _worker(self, r: _Replica) -> None:
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


if __name__ == "__main__":  # a model process of ``executor: process``
    import sys
    from multiprocessing.connection import Connection
    _child_main(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
