"""``bes-serve pool=engines``: the router in front of OpenAI-compatible engines.

Per request: authenticate, check the limits, count the prompt's tokens, take a snapshot of every
engine (requests forwarded and unfinished, their prompt tokens, tokens streamed so far, KV in use,
the engine's own gauges when it publishes them), let the router choose a model (``model:
"auto"``) or honour the one named, pick the engine inside the model by the simulator's rule,
forward, and account. An engine that fails (connection refused, 5xx, timeout) is masked for
``pool.cooldown_s`` and the request is retried once on the router's next choice without it;
a background task probes masked engines and brings them back. Streams are passed through event
by event. Every accepted request ends as exactly one of completed, failed or rejected:
``accepted == completed + failed + rejected + in_progress``, exported in ``/healthz`` and
``/metrics``.
"""
import asyncio
import contextlib
import hmac
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from bes_jax.serving.engines.base import Engine, EngineError, chunk_tokens
from bes_jax.serving.engines.view import LiveSnapshot, choose_replica, engines_for

log = logging.getLogger("bes_jax.serving.engines")

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0,
                   3.0, 5.0, 7.5, 10.0, 20.0, 30.0, 60.0)
ROUTES = {"/v1/completions": "completions", "/v1/chat/completions": "chat"}
#: request fields that are bes_jax's, removed before forwarding
BES_FIELDS = ("task",)


@dataclass
class EngineSettings:
    """``pool.*`` of ``conf/pool/engines.yaml`` (see there for each meaning)."""

    placement: str = "concurrent"
    n_gpus: int = 1
    queue_capacity: int = 64
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 512
    context_overflow: str = "truncate"
    cooldown_s: float = 5.0
    health_interval_s: float = 1.0
    probe_timeout_s: float = 1.0
    connect_timeout_s: float = 2.0
    read_timeout_s: float = 60.0
    metrics_interval_s: float = 0.5
    metrics_timeout_s: float = 0.2
    scrape_metrics: bool = True
    gauge_max_age_s: float = 2.0
    tokenizer: Optional[str] = None
    chars_per_token: float = 4.0
    retries: int = 1

    def check(self):
        if self.placement not in ("concurrent", "exclusive"):
            raise ValueError(f"pool.placement = {self.placement!r}: must be 'concurrent' or 'exclusive'")
        if self.context_overflow not in ("truncate", "reject"):
            raise ValueError(f"pool.context_overflow = {self.context_overflow!r}: must be 'truncate' or 'reject'")
        for k in ("n_gpus", "queue_capacity", "max_num_seqs", "max_num_batched_tokens"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"pool.{k} = {getattr(self, k)!r}: must be >= 1")
        for k in ("cooldown_s", "health_interval_s", "probe_timeout_s", "connect_timeout_s", "read_timeout_s",
                  "metrics_interval_s", "metrics_timeout_s", "chars_per_token"):
            if not float(getattr(self, k)) > 0:
                raise ValueError(f"pool.{k} = {getattr(self, k)!r}: must be > 0")
        if int(self.retries) < 0:
            raise ValueError(f"pool.retries = {self.retries!r}: must be >= 0")


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None, headers: Optional[dict] = None,
                 bes: Optional[dict] = None, body: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers, self.bes, self.body = headers or {}, bes, body

    def payload(self) -> dict:
        out = dict(self.body) if self.body else {"error": {"message": self.message, "type": self.type,
                                                            "param": self.param, "code": self.code}}
        if self.bes is not None:
            out["bes"] = self.bes
        return out


@dataclass
class Flight:
    """One request forwarded to an engine and not finished."""

    rid: int
    task: int
    prompt_tokens: int
    out_mean: float
    sent: float
    streamed: bool
    first_token: Optional[float] = None
    generated: int = 0
    first_event_at: Optional[float] = None


class Slot:
    """An engine and what the router knows of it."""

    def __init__(self, index: int, engine: Engine, model: int, k: int, server: int):
        self.index, self.engine, self.model, self.k, self.server = index, engine, model, k, server
        self.label = f"{engine.model}#{k}"
        self.flights: dict[int, Flight] = {}
        self.masked_until: Optional[float] = None  # None: in service
        self.mask_reason: Optional[str] = None
        self.gauges: dict = {}
        self.gauges_at = -math.inf
        self.forwarded = self.completed = self.failed = 0
        self.last_error: Optional[str] = None

    @property
    def masked(self) -> bool:
        return self.masked_until is not None


class Counters:
    def __init__(self, model_names):
        self.accepted = self.completed = self.failed = self.rejected = 0
        self.bad_request = self.unauthorized = self.retries = 0
        self.deadline_met = self.deadline_missed = 0
        self.by_model = {m: {"completed": 0, "failed": 0, "rejected": 0} for m in model_names}

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("accepted", "completed", "failed", "rejected", "bad_request",
                                           "unauthorized", "retries", "deadline_met", "deadline_missed")}
        d["in_progress"] = self.accepted - self.completed - self.failed - self.rejected
        d["by_model"] = self.by_model
        return d


class Metrics:
    """Prometheus metrics in a registry of their own."""

    def __init__(self, model_names, engine_labels):
        import prometheus_client
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        prometheus_client.disable_created_metrics()
        self.registry = r = CollectorRegistry()
        self.accepted = Counter("bes_accepted", "Requests accepted for routing (valid, authorised)", registry=r)
        self.completed = Counter("bes_completed", "Accepted requests answered by an engine", registry=r)
        self.failed = Counter("bes_failed", "Accepted requests answered with an error (engine failure after "
                              "the retry, engine refusal, timeout, client gone)", registry=r)
        self.rejected = Counter("bes_rejected", "Accepted requests refused with 503 (overload, no engine, "
                                "shutting down)", registry=r)
        self.bad = Counter("bes_bad_requests", "Requests refused with 4xx before routing", ["reason"], registry=r)
        self.unauthorized = Counter("bes_unauthorized", "Requests refused with 401", registry=r)
        self.requests = Counter("bes_requests", "Requests by serving model and outcome", ["model", "outcome"],
                                registry=r)
        self.decisions = Counter("bes_decisions", "Routing decisions by model and kind (routed, explicit, retry)",
                                 ["model", "decision"], registry=r)
        self.retries = Counter("bes_retries", "Requests retried on another engine", ["from_model", "to_model"],
                               registry=r)
        self.masks = Counter("bes_engine_masks", "Times an engine was masked", ["engine", "reason"], registry=r)
        self.masked = Gauge("bes_engine_masked", "1 while an engine is masked", ["engine"], registry=r)
        self.inflight = Gauge("bes_engine_inflight", "Requests forwarded and unfinished", ["engine"], registry=r)
        self.engine_gauge = Gauge("bes_engine_reported", "The engine's own gauges (vLLM: running, waiting, "
                                  "kv_usage)", ["engine", "gauge"], registry=r)
        self.ttft = Histogram("bes_ttft_seconds", "Arrival to first streamed token, by model", ["model"],
                              buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("bes_e2e_seconds", "Arrival to last byte from the engine, by model", ["model"],
                             buckets=LATENCY_BUCKETS, registry=r)
        for m in model_names:
            self.e2e.labels(m)
            for o in ("completed", "failed", "rejected"):
                self.requests.labels(m, o)
        for e in engine_labels:
            self.masked.labels(e).set(0)
            self.inflight.labels(e).set(0)


def parse_client_keys(keys, env: Optional[str]) -> list[str]:
    """Client API keys from ``serve.api_keys`` and the environment variable ``serve.api_keys_env``
    (comma separated). Empty: no authentication."""
    out = [str(k) for k in (keys or []) if str(k)]
    if env:
        if env not in os.environ:
            raise ValueError(f"serve.api_keys_env = {env!r}: environment variable not set")
        out += [k.strip() for k in os.environ[env].split(",") if k.strip()]
    return out


class PromptCounter:
    """Prompt tokens: the engine's tokenizer when given (``pool.tokenizer``, a local directory or
    a cached hub name; loaded offline), else ``ceil(characters / pool.chars_per_token)``."""

    def __init__(self, tokenizer: Optional[str], chars_per_token: float):
        self.chars_per_token = float(chars_per_token)
        self.tok = None
        if tokenizer:
            from transformers import AutoTokenizer
            try:
                self.tok = AutoTokenizer.from_pretrained(tokenizer)
            except Exception as e:
                raise ValueError(f"pool.tokenizer = {tokenizer!r}: could not load it ({type(e).__name__}: {e})") from None
        self.source = f"tokenizer {tokenizer}" if tokenizer else f"estimate: characters / {self.chars_per_token:g}"

    def _estimate(self, text: str) -> int:
        return max(1, math.ceil(len(text) / self.chars_per_token))

    def text(self, text: str) -> int:
        if self.tok is None:
            return self._estimate(text)
        return len(self.tok(text, add_special_tokens=True)["input_ids"])

    def chat(self, messages: list) -> int:
        if self.tok is not None and getattr(self.tok, "chat_template", None):
            try:
                ids = self.tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
                if isinstance(ids, dict) or hasattr(ids, "keys"):
                    ids = ids["input_ids"]
                return len(ids)
            except Exception:
                pass
        text = " ".join(_content_text(m.get("content")) for m in messages if isinstance(m, dict))
        return self.text(text)


def _content_text(c) -> str:
    if isinstance(c, str):
        return c
    if isinstance(c, list):  # content parts
        return " ".join(p.get("text", "") for p in c if isinstance(p, dict))
    return ""


class EngineService:
    """Routing, forwarding and accounting over engines; the HTTP layer wraps :meth:`forward`."""

    def __init__(self, engines: list[Engine], profile, router_cfg: dict, serve_settings, settings: EngineSettings,
                 client_keys: Optional[list[str]] = None):
        from bes_jax.serving.observation import RateEstimator
        from bes_jax.serving.routing import make_live_router
        from bes_jax.serving.server import serving_sim_config

        settings.check()
        self.profile, self.serve, self.settings = profile, serve_settings, settings
        names = profile.model_names
        counts = [0] * len(names)
        self.slots: list[Slot] = []
        for e in engines:
            if e.model not in names:
                raise ValueError(f"engine {e.name}: model {e.model!r} is not in profile {profile.name!r} ({names})")
            m = names.index(e.model)
            k = counts[m]
            counts[m] += 1
            server = len(self.slots) if settings.placement == "concurrent" else k % int(settings.n_gpus)
            self.slots.append(Slot(len(self.slots), e, m, k, server))
        missing = [n for n, c in zip(names, counts) if c == 0]
        if missing:
            raise ValueError(f"no engine for model(s) {missing} of profile {profile.name!r}")
        self.replica_counts = tuple(counts)
        self.n_servers = len(self.slots) if settings.placement == "concurrent" else int(settings.n_gpus)

        class _Layout:  # what serving_sim_config reads of a pool
            placement, n_gpus = settings.placement, self.n_servers
            replica_counts, queue_capacity = self.replica_counts, int(settings.queue_capacity)
        import dataclasses
        sim = serving_sim_config(_Layout, router_cfg, serve_settings, profile)
        engine_view = {"max_num_seqs": int(settings.max_num_seqs),
                       "max_num_batched_tokens": int(settings.max_num_batched_tokens),
                       "context_overflow": settings.context_overflow}
        if dict(router_cfg).get("name") == "policy":
            # a policy reads the observation it was trained on: continuous batching, and its engine
            # settings (which the prediction and the observation's denominators use)
            from bes_jax.agents.export import policy_observation_settings
            pol = policy_observation_settings(router_cfg["path"])
            if pol.get("batching", "request") != "continuous":
                raise ValueError(f"router.path = {router_cfg['path']!r}: the policy was trained with batching="
                                 f"{pol.get('batching', 'request')!r}; pool=engines routes continuously batching "
                                 "engines and needs a policy trained with sim.batching=continuous")
            for k in engine_view:
                if k in pol and pol[k] != engine_view[k]:
                    log.warning("router=policy: the policy at %s was trained with %s = %r; the router uses it "
                                "(pool.%s = %r is ignored for the observation)", router_cfg["path"], k, pol[k], k,
                                engine_view[k])
                    engine_view[k] = pol[k]
        self.sim_config = dataclasses.replace(sim, batching="continuous", **engine_view)
        self.engines = engines_for(profile, self.sim_config)
        self.rate = RateEstimator(self.sim_config.ewma_alpha, self.sim_config.ref_rate)
        self.deadlines = np.asarray(self.sim_config.task_deadlines(profile), np.float64)
        self.router = make_live_router(router_cfg, profile, self.deadlines, self.replica_counts, self.rate,
                                       seed=serve_settings.seed)
        self.router.engines = self.engines
        self.default_task = serve_settings.default_task or profile.task_names[0]
        if self.default_task not in profile.task_names:
            raise ValueError(f"serve.default_task = {self.default_task!r}: not a task of profile {profile.name!r} "
                             f"({profile.task_names})")
        self.counter = PromptCounter(settings.tokenizer, settings.chars_per_token)
        self.max_tokens_limit = int(serve_settings.max_tokens_limit or int(np.min(self.engines.ctx_max)))
        self.client_keys = list(client_keys or [])
        self.counters = Counters(names)
        self.metrics = Metrics(names, [s.label for s in self.slots])
        self._t0 = time.monotonic()
        self._rid = 0
        self.draining = False
        self._tasks: list[asyncio.Task] = []
        self._idle = asyncio.Event()  # set while nothing is in flight (drain waits on it)
        self._idle.set()

    # ------------------------------------------------------------------ lifecycle
    def now(self) -> float:
        return time.monotonic() - self._t0

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()  # the serving loop (drain() from another thread goes here)
        await asyncio.gather(*(s.engine.start() for s in self.slots))
        ok = await asyncio.gather(*(s.engine.health() for s in self.slots))
        for s, good in zip(self.slots, ok):
            if not good:
                self._mask(s, "down at start")
        self._tasks = [asyncio.create_task(self._probe_loop(), name="bes-probe")]
        if self.settings.scrape_metrics:
            self._tasks.append(asyncio.create_task(self._scrape_loop(), name="bes-scrape"))

    async def drain(self, timeout: Optional[float] = None) -> bool:
        """Refuse new requests (503) and wait until every forwarded one has finished."""
        self.draining = True
        timeout = float(self.serve.drain_timeout_s if timeout is None else timeout)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            log.warning("drain: %d requests still in flight after %.1f s", self._in_flight(), timeout)
            return False

    async def stop(self) -> None:
        await self.drain()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await asyncio.gather(*(s.engine.close() for s in self.slots), return_exceptions=True)

    def _in_flight(self) -> int:
        return sum(len(s.flights) for s in self.slots)

    # ------------------------------------------------------------------ masking and probing
    def _mask(self, s: Slot, reason: str) -> None:
        first = not s.masked
        s.masked_until = self.now() + float(self.settings.cooldown_s)
        s.mask_reason = reason
        if first:
            log.warning("engine %s masked for %.1f s: %s", s.engine.name, self.settings.cooldown_s, reason)
            self.metrics.masks.labels(s.label, reason.split(":")[0][:40]).inc()
            self.metrics.masked.labels(s.label).set(1)

    def _unmask(self, s: Slot) -> None:
        log.warning("engine %s back in service after %s", s.engine.name, s.mask_reason)
        s.masked_until, s.mask_reason = None, None
        self.metrics.masked.labels(s.label).set(0)

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(float(self.settings.health_interval_s))
            due = [(s, s.masked_until) for s in self.slots if not s.masked or self.now() >= s.masked_until]
            ok = await asyncio.gather(*(s.engine.health() for s, _ in due), return_exceptions=True)
            for (s, until), good in zip(due, ok):
                good = good is True
                if s.masked_until != until:
                    continue  # masked (again) by a request while the probe ran: that is newer news
                if s.masked and good:
                    self._unmask(s)
                elif not good:
                    self._mask(s, "health probe failed")

    async def _scrape_loop(self) -> None:
        while True:
            live = [s for s in self.slots if not s.masked]
            res = await asyncio.gather(*(s.engine.metrics() for s in live), return_exceptions=True)
            t = self.now()
            for s, g in zip(live, res):
                if isinstance(g, dict) and g:
                    s.gauges, s.gauges_at = g, t
                    for k, v in g.items():
                        self.metrics.engine_gauge.labels(s.label, k).set(v)
            await asyncio.sleep(float(self.settings.metrics_interval_s))

    # ------------------------------------------------------------------ the routing view
    def snapshot(self, now: Optional[float] = None, pending_prompt: int = 1) -> LiveSnapshot:
        """What the router knows of every engine at ``now`` (docs/serving.md, "What the router sees")."""
        now = self.now() if now is None else now
        S = int(self.settings.max_num_seqs)
        R = len(self.slots)
        n_run, n_wait = np.zeros(R, np.int64), np.zeros(R, np.int64)
        kv, wp, oa = np.zeros(R), np.zeros(R), np.zeros(R)
        for i, s in enumerate(self.slots):
            fl = list(s.flights.values())  # send order
            run_ours = min(len(fl), S)
            g = s.gauges if now - s.gauges_at <= self.settings.gauge_max_age_s else {}
            if "running" in g or "waiting" in g:
                # the engine's own counts (other clients included), never fewer than ours
                r_ = min(max(int(round(g.get("running", 0))), run_ours), S)
                w_ = max(int(round(g.get("waiting", 0))), len(fl) - r_)
            else:
                r_, w_ = run_ours, len(fl) - run_ours
            n_run[i], n_wait[i] = r_, w_
            if "kv_usage" in g:
                kv[i] = float(g["kv_usage"]) * float(self.engines.kv_tokens[s.model])
            else:
                kv[i] = sum(f.prompt_tokens + f.generated for f in fl[:r_])
            wp[i] = sum(f.prompt_tokens for f in fl[r_:])
            extra = r_ + w_ - len(fl)
            oa[i] = sum(f.out_mean for f in fl) + (extra * float(np.mean(self.engines.mean_output)) if extra > 0 else 0.0)
        # a live engine's iteration boundaries are not visible: every server reads idle (residual 0)
        return LiveSnapshot(
            now=now, replica_model=np.array([s.model for s in self.slots], np.int64),
            replica_server=np.array([s.server for s in self.slots], np.int64),
            valid=np.array([not s.masked for s in self.slots], bool), n_wait=n_wait, n_run=n_run,
            kv_in_use=kv, wait_prompt=wp, out_mean_sum=oa,
            server_busy=np.zeros(self.n_servers, bool), server_busy_until=np.full(self.n_servers, now),
            pending_prompt=int(pending_prompt), n_models=self.profile.n_models)

    # ------------------------------------------------------------------ request checks
    def authorise(self, header: Optional[str]) -> None:
        if not self.client_keys:
            return
        token = ""
        if header and header.lower().startswith("bearer "):
            token = header[7:].strip()
        if not any(hmac.compare_digest(token.encode(), k.encode()) for k in self.client_keys):
            self.counters.unauthorized += 1
            self.metrics.unauthorized.inc()
            raise ApiError(401, "missing or invalid API key (send 'Authorization: Bearer <key>')",
                           "authentication_error", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    def _bad(self, e: ApiError) -> ApiError:
        self.counters.bad_request += 1
        self.metrics.bad.labels(e.param or "body").inc()
        return e

    def parse(self, kind: str, body: Any):
        """``(explicit model index or None, task, prompt tokens, upstream body)``."""
        if not isinstance(body, dict):
            raise self._bad(ApiError(400, "request body must be a JSON object"))
        names = self.profile.model_names
        model = body.get("model", "auto")
        if not isinstance(model, str):
            raise self._bad(ApiError(400, f"'model' must be a string ('auto' or one of {names})", param="model"))
        if model != "auto" and model not in names:
            raise self._bad(ApiError(404, f"model {model!r} does not exist; use 'auto' or one of {names}",
                                     param="model", code="model_not_found"))
        task = body.get("task", self.default_task)
        if not isinstance(task, str) or task not in self.profile.task_names:
            raise self._bad(ApiError(400, f"unknown task {task!r}; choose from {self.profile.task_names}",
                                     param="task"))
        t = self.profile.task_index(task)
        lim = self.max_tokens_limit
        for key in ("max_tokens", "max_completion_tokens"):
            v = body.get(key)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= lim:
                raise self._bad(ApiError(400, f"'{key}' must be an integer in 1..{lim} (serve.max_tokens_limit), "
                                              f"got {v!r}", param=key, code="max_tokens_limit"))
        if kind == "completions":
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            if not isinstance(prompt, str):
                raise self._bad(ApiError(400, "'prompt' must be a string (or a list holding one string)",
                                         param="prompt"))
            if not prompt:
                raise self._bad(ApiError(400, "'prompt' is empty", param="prompt"))
            n_prompt = self.counter.text(prompt)
        else:
            msgs = body.get("messages")
            if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
                raise self._bad(ApiError(400, "'messages' must be a non-empty list of message objects",
                                         param="messages"))
            n_prompt = self.counter.chat(msgs)
        cap = self.serve.max_prompt_tokens
        if cap is not None and n_prompt > int(cap):
            raise self._bad(ApiError(400, f"prompt is {n_prompt} tokens ({self.counter.source}); the limit is "
                                          f"{int(cap)} (serve.max_prompt_tokens)", param="prompt",
                                     code="prompt_too_long"))
        up = {k: v for k, v in body.items() if k not in BES_FIELDS}
        return (None if model == "auto" else names.index(model)), t, n_prompt, up

    # ------------------------------------------------------------------ routing
    def _route(self, explicit, t: int, n_prompt: int, exclude: set, retry_of: Optional[int] = None):
        """``(slot, model, decision)``; raises ApiError 503 (counted by the caller) when nothing can take it."""
        now = self.now()
        snap = self.snapshot(now, n_prompt)
        if exclude:
            valid = snap.valid.copy()
            valid[list(exclude)] = False
            snap = _replace(snap, valid=valid)
        if retry_of is None:
            self.rate.observe(now)
        if explicit is not None:
            m, decision = explicit, "explicit"
        else:
            m = int(self.router.choose(snap, t))
            decision = "routed" if retry_of is None else "retry"
        r = choose_replica(snap, m)
        names = self.profile.model_names
        if r < 0:
            why = "every engine of it is masked" + (" (or was tried)" if exclude else "")
            raise ApiError(503, f"model {names[m]!r} is unavailable: {why}; retry later", "unavailable",
                           code="model_unavailable", headers={"Retry-After": str(self._retry_after())},
                           bes={"model": names[m], "decision": decision, "arrival_s": now})
        if snap.n_wait[r] >= self.engines.queue_capacity:
            raise ApiError(503, f"overloaded: engine {self.slots[r].label} has {int(snap.n_wait[r])} requests "
                                f"waiting (pool.queue_capacity = {self.engines.queue_capacity}); retry later",
                           "overloaded",
                           code="queue_full", headers={"Retry-After": str(self._retry_after())},
                           bes={"model": names[m], "decision": decision, "arrival_s": now})
        return self.slots[r], m, decision

    def _retry_after(self) -> int:
        return max(1, int(math.ceil(float(self.settings.cooldown_s) / 2)))

    def _facts(self, s: Slot, t: int, decision: str, arrival: float, n_prompt: int, **kw) -> dict:
        return {"model": s.engine.model, "engine": s.label, "router": "explicit" if decision == "explicit"
                else self.router.name, "decision": decision, "task": self.profile.task_names[t],
                "arrival_s": arrival, "prompt_tokens_counted": n_prompt,
                "deadline_s": float(self.deadlines[t]), **kw}

    def _headers(self, facts: dict) -> dict:
        return {"x-bes-model": facts["model"], "x-bes-router": str(facts["router"]),
                "x-bes-decision": facts["decision"], "x-bes-engine": facts["engine"],
                "x-bes-task": facts["task"]}

    # ------------------------------------------------------------------ accounting
    def _open(self, s: Slot, t: int, n_prompt: int, streamed: bool) -> Flight:
        self._rid += 1
        f = Flight(self._rid, t, n_prompt, float(self.engines.mean_output[t]), self.now(), streamed)
        s.flights[f.rid] = f
        s.forwarded += 1
        self._idle.clear()
        self.metrics.inflight.labels(s.label).set(len(s.flights))
        return f

    def _close(self, s: Slot, f: Flight) -> None:
        s.flights.pop(f.rid, None)
        self.metrics.inflight.labels(s.label).set(len(s.flights))
        if self._in_flight() == 0:
            self._idle.set()

    def _accept(self) -> None:
        self.counters.accepted += 1
        self.metrics.accepted.inc()

    def _done(self, outcome: str, model: Optional[str], label: str | None = None) -> None:
        c = self.counters
        setattr(c, outcome, getattr(c, outcome) + 1)
        getattr(self.metrics, outcome).inc()
        if model is not None:
            c.by_model[model][outcome] += 1
            self.metrics.requests.labels(model, label or outcome).inc()

    def _record_latency(self, model: str, t: int, arrival: float, ttft: Optional[float]) -> float:
        e2e = self.now() - arrival
        self.metrics.e2e.labels(model).observe(e2e)
        if ttft is not None:
            self.metrics.ttft.labels(model).observe(ttft)
        if e2e <= float(self.deadlines[t]):
            self.counters.deadline_met += 1
        else:
            self.counters.deadline_missed += 1
        return e2e

    # ------------------------------------------------------------------ forwarding
    async def forward(self, path: str, body: Any, *, disconnected=None):
        """Answer one request: a dict (JSON response) or ``(headers, async iterator of SSE bytes)``
        for a stream. Raises :class:`ApiError` for every refusal or failure, already counted."""
        kind = ROUTES[path]
        if self.draining:
            self._accept()
            self._done("rejected", None)
            raise ApiError(503, "server is shutting down; retry on another instance", "unavailable",
                           code="shutting_down", headers={"Retry-After": "5"})
        explicit, t, n_prompt, up = self.parse(kind, body)
        stream = bool(up.get("stream", False))
        arrival = self.now()
        self._accept()
        tried: set[int] = set()
        retry_of = None
        last: Optional[EngineError] = None
        names = self.profile.model_names
        for attempt in range(1 + int(self.settings.retries)):
            try:
                s, m, decision = self._route(explicit, t, n_prompt, tried, retry_of)
            except ApiError as e:
                if last is not None:  # the retry found nothing: the engine's failure is the answer
                    break
                self._done("rejected", (e.bes or {}).get("model"))
                raise
            self.metrics.decisions.labels(names[m], decision).inc()
            if retry_of is not None:
                self.counters.retries += 1
                self.metrics.retries.labels(names[retry_of], names[m]).inc()
            facts = self._facts(s, t, decision, arrival, n_prompt)
            try:
                if stream:
                    return await self._open_stream(s, path, up, kind, t, arrival, n_prompt, facts)
                return await self._submit(s, path, up, t, arrival, n_prompt, facts, disconnected)
            except EngineError as e:
                if not e.engine_fault:  # the engine refused the request itself: pass its answer on
                    self._done("failed", names[m], "failed")
                    raise ApiError(e.status or 502, e.message, "engine_error", code="engine_rejected",
                                   bes={**facts, "error": e.message}, body=_engine_body(e))
                self._mask(s, f"{e.kind}: {e.message}")
                s.failed += 1
                s.last_error = e.message
                last = e
                tried.add(s.index)
                retry_of = m
            except ApiError:
                raise  # already counted (a client that went away)
            except asyncio.CancelledError:
                self._done("failed", names[m], "cancelled")
                raise
            except Exception as e:  # never leave an accepted request uncounted
                log.exception("forwarding to %s failed", s.label)
                self._done("failed", names[m])
                raise ApiError(500, f"internal error while forwarding: {type(e).__name__}: {e}", "internal_error",
                               bes=facts) from None
        # every attempt failed on engine faults
        model_name = names[retry_of] if retry_of is not None else None
        self._done("failed", model_name)
        status, code = {"timeout": (504, "engine_timeout"), "connect": (503, "engine_unreachable")}.get(
            last.kind, (502, "engine_failed"))
        raise ApiError(status, f"{last.message}; the engine is masked for {self.settings.cooldown_s:g} s"
                               + (" and the retry found no other engine" if len(tried) < 2 else " (retried once)"),
                       "engine_error", code=code, headers={"Retry-After": str(self._retry_after())},
                       bes={"model": model_name, "arrival_s": arrival, "engines_tried": len(tried),
                            "task": self.profile.task_names[t]})

    async def _submit(self, s: Slot, path, up, t, arrival, n_prompt, facts, disconnected):
        f = self._open(s, t, n_prompt, streamed=False)
        timeout = float(self.serve.request_timeout_s)
        try:
            job = asyncio.ensure_future(s.engine.submit(path, up))
            waiters = {job}
            watch = None
            if disconnected is not None:
                watch = asyncio.ensure_future(_wait_disconnect(disconnected))
                waiters.add(watch)
            done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if watch is not None and not watch.done():
                watch.cancel()
            if job not in done:
                job.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await job
                if watch is not None and watch in done:  # the client went away: stop the engine's work
                    self._done("failed", s.engine.model, "cancelled")
                    raise ApiError(499, "client closed the request", "cancelled", code="client_closed")
                raise EngineError("timeout", f"engine {s.label} did not answer within {timeout:g} s "
                                             "(serve.request_timeout_s)")
            reply = job.result()
        finally:
            self._close(s, f)
        s.completed += 1
        e2e = self._record_latency(s.engine.model, t, arrival, None)
        self._done("completed", s.engine.model)
        data = dict(reply.body)
        usage = data.get("usage") or {}
        data["model"] = s.engine.model
        data["bes"] = {**facts, "e2e_s": e2e, "ttft_s": None, "prompt_tokens": usage.get("prompt_tokens"),
                       "completion_tokens": usage.get("completion_tokens"),
                       "deadline_met": bool(e2e <= facts["deadline_s"])}
        return data, self._headers(facts)

    async def _open_stream(self, s: Slot, path, up, kind, t, arrival, n_prompt, facts):
        """Connect to the engine (failures here are retried); then hand the events to the client."""
        f = self._open(s, t, n_prompt, streamed=True)
        stack = contextlib.AsyncExitStack()
        timeout = float(self.serve.request_timeout_s)
        try:
            events = (await asyncio.wait_for(stack.enter_async_context(s.engine.stream(path, up)), timeout)).__aiter__()
            try:  # the first event too: an engine that fails before it is retried elsewhere
                first = await asyncio.wait_for(events.__anext__(), timeout)
                f.first_event_at = self.now()  # its arrival, not when the client starts reading
            except StopAsyncIteration:
                first = None
        except asyncio.TimeoutError:
            await stack.aclose()
            self._close(s, f)
            raise EngineError("timeout", f"engine {s.label} did not start its stream within "
                                         f"{self.serve.request_timeout_s:g} s") from None
        except BaseException:
            await stack.aclose()
            self._close(s, f)
            raise
        return self._relay(s, f, stack, _chain(first, events), kind, t, arrival, facts), self._headers(facts)

    async def _relay(self, s: Slot, f: Flight, stack, events, kind, t, arrival, facts):
        model = s.engine.model
        outcome = None
        usage = {}
        try:
            async for ev in events:
                data = ev[5:].strip() if ev.startswith("data:") else None
                if data == "[DONE]":
                    continue  # sent after the facts chunk
                if data is not None:
                    try:
                        d = json.loads(data)
                    except ValueError:
                        d = None
                    if isinstance(d, dict):
                        n = chunk_tokens(d, kind)
                        if n and f.first_token is None:
                            f.first_token = f.first_event_at if f.generated == 0 and f.first_event_at else self.now()
                        f.first_event_at = None
                        f.generated += n
                        if d.get("usage"):
                            usage = d["usage"]
                        if "model" in d:
                            d["model"] = model
                        ev = "data: " + json.dumps(d, separators=(",", ":"))
                yield (ev + "\n\n").encode()
            outcome = "completed"
            ttft = None if f.first_token is None else f.first_token - arrival
            e2e = self._record_latency(model, t, arrival, ttft)
            bes = {**facts, "ttft_s": ttft, "e2e_s": e2e, "tokens_streamed": f.generated,
                   "prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens"),
                   "deadline_met": bool(e2e <= facts["deadline_s"])}
            obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
            yield ("data: " + json.dumps({"object": obj, "model": model, "choices": [], "bes": bes},
                                         separators=(",", ":")) + "\n\n").encode()
            yield b"data: [DONE]\n\n"
        except EngineError as e:  # mid-stream: the client already has part of the answer
            outcome = "failed"
            self._mask(s, f"{e.kind}: {e.message}")
            err = {"error": {"message": f"{e.message} (after {f.generated} tokens)", "type": "engine_error",
                             "code": "engine_failed_mid_stream", "param": None}, "bes": facts}
            yield ("data: " + json.dumps(err) + "\n\n").encode()
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "cancelled"  # the client went away: closing the upstream stream stops the engine
            raise
        finally:
            with contextlib.suppress(BaseException):
                await stack.aclose()
            self._close(s, f)
            if outcome == "completed":
                s.completed += 1
                self._done("completed", model)
            else:
                s.failed += 1
                self._done("failed", model, "cancelled" if outcome in (None, "cancelled") else "failed")

    # ------------------------------------------------------------------ reports
    def health(self) -> dict:
        live = [not s.masked for s in self.slots]
        snap = self.snapshot()
        per_model = {}
        for m, n in enumerate(self.profile.model_names):
            per_model[n] = {"engines": [self._slot_report(s, snap) for s in self.slots if s.model == m],
                            "alive": any(live[s.index] for s in self.slots if s.model == m)}
        alive_models = [v["alive"] for v in per_model.values()]
        return {"status": "ok" if all(live) else ("degraded" if any(alive_models) else "down"),
                "draining": self.draining, "router": self.router.name, "profile": self.profile.name,
                "profile_source": self.profile.source, "batching": "continuous", "models": per_model,
                "tasks": self.profile.task_names, "default_task": self.default_task,
                "pool": {"kind": "engines", "models": self.profile.model_names, "placement": self.settings.placement,
                         "n_gpus": self.n_servers, "replicas": list(self.replica_counts),
                         "queue_capacity": int(self.settings.queue_capacity),
                         "max_num_seqs": int(self.settings.max_num_seqs),
                         "max_num_batched_tokens": int(self.settings.max_num_batched_tokens),
                         "context_overflow": self.settings.context_overflow,
                         "prompt_tokens": self.counter.source},
                "deadlines_s": [float(x) for x in self.deadlines],
                "deadline_scale": float(self.serve.deadline_scale),
                "limits": {"max_tokens_limit": self.max_tokens_limit,
                           "max_prompt_tokens": self.serve.max_prompt_tokens,
                           "max_body_bytes": int(self.serve.max_body_bytes)},
                "sim_config": self.sim_config.to_dict(),
                "counters": self.counters.as_dict(), "uptime_s": self.now()}

    def _slot_report(self, s: Slot, snap) -> dict:
        i = s.index
        return {"engine": s.label, "url": getattr(s.engine, "url", None), "masked": s.masked,
                "mask_reason": s.mask_reason, "in_flight": len(s.flights), "running": int(snap.n_run[i]),
                "waiting": int(snap.n_wait[i]), "kv_in_use": float(snap.kv_in_use[i]),
                "engine_gauges": s.gauges, "forwarded": s.forwarded, "completed": s.completed,
                "failed": s.failed, "last_error": s.last_error}

    def metrics_text(self) -> bytes:
        from prometheus_client import generate_latest
        return generate_latest(self.metrics.registry)


def _replace(snap, **kw):
    import dataclasses
    return dataclasses.replace(snap, **kw)


def _engine_body(e: EngineError) -> Optional[dict]:
    if isinstance(e.body, dict) and isinstance(e.body.get("error"), dict):
        return {"error": e.body["error"]}
    return {"error": {"message": e.message, "type": "engine_error", "param": None, "code": "engine_rejected"}}


async def _chain(first, rest):
    if first is not None:
        yield first
    async for ev in rest:
        yield ev


async def _wait_disconnect(is_disconnected) -> None:
    while not await is_disconnected():
        await asyncio.sleep(0.05)


# ----------------------------------------------------------------------------- HTTP

def create_engine_app(service: EngineService, *, manage: bool = True):
    """The FastAPI app of ``pool=engines``; with ``manage`` it starts the service's probes and
    drains and closes it on shutdown."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response, StreamingResponse

    @asynccontextmanager
    async def lifespan(app):
        if manage:
            await service.start()
        yield
        if manage:
            await service.stop()

    app = FastAPI(title="bes_jax router over engines", lifespan=lifespan)
    app.state.service = service

    def error(e: ApiError):
        return JSONResponse(e.payload(), status_code=e.status, headers=e.headers)

    async def handle(request: Request, path: str):
        try:
            service.authorise(request.headers.get("authorization"))
            limit = int(service.serve.max_body_bytes)
            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise service._bad(ApiError(413, f"request body is {declared} bytes; the limit is {limit} "
                                                 "(serve.max_body_bytes)", param="body", code="body_too_large"))
            raw = await request.body()
            if len(raw) > limit:
                raise service._bad(ApiError(413, f"request body is {len(raw)} bytes; the limit is {limit} "
                                                 "(serve.max_body_bytes)", param="body", code="body_too_large"))
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as ex:
                service.counters.bad_request += 1
                service.metrics.bad.labels("json").inc()
                raise ApiError(400, f"malformed JSON body: {ex}")
            out = await service.forward(path, body, disconnected=request.is_disconnected)
        except ApiError as e:
            return error(e)
        result, headers = out
        if isinstance(result, dict):
            return JSONResponse(result, headers=headers)
        return StreamingResponse(result, media_type="text/event-stream",
                                 headers={**headers, "Cache-Control": "no-cache"})

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await handle(request, "/v1/completions")

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await handle(request, "/v1/chat/completions")

    @app.get("/v1/models")
    async def models(request: Request):
        try:
            service.authorise(request.headers.get("authorization"))
        except ApiError as e:
            return error(e)
        return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "bes_jax"}
                                           for n in ["auto"] + service.profile.model_names]}

    @app.get("/healthz")
    async def healthz():
        h = service.health()
        return JSONResponse(h, status_code=200 if h["status"] != "down" else 503)

    @app.get("/metrics")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST
        return Response(service.metrics_text(), media_type=CONTENT_TYPE_LATEST)

    return app


def profile_at_start(pool: dict):
    """Without ``pool.profile``: a quick ``bes-profile --engine`` of the first engine of every
    model (model names from the ``pool.urls`` mapping, else the engines' own model ids), kept in
    memory. Good enough to start; a profile measured with care (``bes-profile --engine``, more
    points and repeats) is what the routing deserves."""
    from bes_jax.profile import profile_from_dict
    from bes_jax.serving.engines.config import parse_engine_urls
    from bes_jax.serving.engines.profiler import run_engine_profile
    urls = pool.get("urls")
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
        if isinstance(urls, (DictConfig, ListConfig)):
            urls = OmegaConf.to_container(urls, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(urls, dict):
        names = list(urls)
    else:
        urls = [urls] if isinstance(urls, str) else urls
        names = [f"model-{i}" for i in range(len(urls or []))] or ["model-0"]
    entries = parse_engine_urls(urls, names, api_key=pool.get("engine_api_key"),
                                api_key_env=pool.get("engine_api_key_env"))
    first = [next(e for e in entries if e.model == n) for n in names]
    log.warning("pool.profile not given: profiling %d engines now (quick; use bes-profile --engine for a careful "
                "profile)", len(first))
    doc = run_engine_profile([e.url for e in first], names=names if isinstance(urls, dict) else None,
                             prompt_lens=(8, 64, 256), concurrencies=(1, 8), decode_prompt_lens=(16,),
                             decode_tokens=8, repeats=1, chars_per_token=1.0,
                             max_num_batched_tokens=int(pool.get("max_num_batched_tokens") or 512),
                             name="profiled-at-start", api_keys=[e.api_key for e in first],
                             log=lambda msg: log.info("%s", msg))
    return profile_from_dict(doc, "<profiled at start by bes-serve>")


def build_engine_service(c: dict) -> EngineService:
    """An :class:`EngineService` from the composed ``serve.yaml`` with ``pool=engines`` (a dict)."""
    from bes_jax.profile import load_profile
    from bes_jax.serving.engines.config import parse_engine_urls
    from bes_jax.serving.engines.http import HttpEngine
    from bes_jax.serving.server import ServeSettings

    pool = dict(c["pool"])
    known = set(EngineSettings.__dataclass_fields__) | {"kind", "urls", "profile", "engine_api_key",
                                                        "engine_api_key_env"}
    unknown = sorted(set(pool) - known)
    if unknown:
        raise ValueError(f"pool: unknown field(s) {unknown} for pool=engines; known: {sorted(known)}")
    settings = EngineSettings(**{k: v for k, v in pool.items() if k in EngineSettings.__dataclass_fields__})
    settings.check()
    s = dict(c.get("serve") or {})
    unknown = sorted(set(s) - set(ServeSettings.__dataclass_fields__))
    if unknown:
        raise ValueError(f"serve: unknown field(s) {unknown}; known: {sorted(ServeSettings.__dataclass_fields__)}")
    if pool.get("profile"):
        profile = load_profile(pool["profile"])
    else:
        profile = profile_at_start(pool)
    entries = parse_engine_urls(pool.get("urls"), profile.model_names, api_key=pool.get("engine_api_key"),
                                api_key_env=pool.get("engine_api_key_env"))
    k_of = {}
    engines = []
    for e in entries:
        k = k_of.get(e.model, 0)
        k_of[e.model] = k + 1
        engines.append(HttpEngine(e.model, e.url, index=k, api_key=e.api_key, served_model=e.served_model,
                                  connect_timeout_s=settings.connect_timeout_s,
                                  read_timeout_s=settings.read_timeout_s, probe_timeout_s=settings.probe_timeout_s,
                                  metrics_timeout_s=settings.metrics_timeout_s,
                                  scrape_metrics=settings.scrape_metrics))
    serve = ServeSettings(**s)
    keys = parse_client_keys(serve.api_keys, serve.api_keys_env)
    return EngineService(engines, profile, dict(c["router"]), serve, settings, client_keys=keys)
