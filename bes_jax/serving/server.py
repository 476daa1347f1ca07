"""``bes-serve``: an OpenAI-compatible completions server in front of the live pool.

Run ``bes-serve pool=tiny router=greedy server.port=8000`` (Hydra config ``conf/serve.yaml``).
Endpoints: ``POST /v1/completions``, ``GET /v1/models``, ``GET /healthz``, ``GET /metrics``.
``bes-serve pool=engines pool.urls=[...] pool.profile=FILE`` routes over OpenAI-compatible engines
instead (``bes_jax.serving.engines.gateway``, chat completions and streaming too).
See docs/serving.md for the API, the metrics and the overload behaviour.
"""
import asyncio
import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from bes_jax import CONF_DIR
from bes_jax.profile import Profile, load_profile
from bes_jax.serving.observation import RateEstimator
from bes_jax.serving.pool import ModelUnavailable, Pool, QueueFull, WorkerCrashed, build_pool
from bes_jax.serving.routing import LiveRouter, make_live_router
from bes_jax.sim_config import SimConfig

log = logging.getLogger("bes_jax.serving")

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
                   1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)


@dataclass
class ServeSettings:
    request_timeout_s: float = 30.0
    #: largest accepted max_tokens; None: 64 on the in-process pool, the smallest ctx_max with engines
    max_tokens_limit: Optional[int] = 64
    default_task: Optional[str] = None  # None: the profile's first task
    deadline_scale: float = 1.0
    ewma_alpha: Optional[float] = None  # None: the policy's training value, else 0.05
    ref_rate: Optional[float] = None  # None: the policy's training value, else 100
    seed: int = 0
    #: Python's thread switch interval; short so a worker waiting for the GIL (held by the HTTP
    #: event loop) resumes quickly; None leaves Python's default (5 ms)
    gil_switch_interval_s: Optional[float] = 0.0005
    #: client API keys (``Authorization: Bearer``); empty and no env: no authentication
    api_keys: Optional[list] = None
    #: an environment variable holding comma-separated client API keys
    api_keys_env: Optional[str] = None
    #: largest request body accepted (413 above)
    max_body_bytes: int = 1_048_576
    #: largest prompt in tokens (None: only the model's context limit)
    max_prompt_tokens: Optional[int] = None
    #: shutdown waits this long for forwarded requests to finish
    drain_timeout_s: float = 30.0


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None, headers: Optional[dict] = None,
                 bes: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}
        self.bes = bes  # routing facts of a refused/failed request (chosen model, arrival)


@dataclass
class Counters:
    accepted: int = 0
    completed: int = 0
    failed: int = 0
    rejected: int = 0
    bad_request: int = 0
    deadline_met: int = 0
    deadline_missed: int = 0
    by_model: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("accepted", "completed", "failed", "rejected", "bad_request",
                                           "deadline_met", "deadline_missed")}
        d["in_progress"] = self.accepted - self.completed - self.failed
        d["by_model"] = self.by_model
        return d


class Metrics:
    """Prometheus metrics in a registry of their own (several apps can live in one process)."""

    def __init__(self, model_names):
        import prometheus_client
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        prometheus_client.disable_created_metrics()  # no *_created series: plain counters
        self.registry = r = CollectorRegistry()
        self.requests = Counter("bes_requests", "Requests by chosen model and outcome "
                                "(on_time, late, failed, timeout, rejected)", ["model", "outcome"], registry=r)
        self.accepted = Counter("bes_accepted", "Requests accepted into a queue", registry=r)
        self.completed = Counter("bes_completed", "Accepted requests answered with a completion", registry=r)
        self.failed = Counter("bes_failed", "Accepted requests answered with an error (crash, timeout)", registry=r)
        self.rejected = Counter("bes_rejected", "Requests refused with 503 (queue full, model down)", registry=r)
        self.bad = Counter("bes_bad_requests", "Requests refused with 4xx", ["reason"], registry=r)
        self.misses = Counter("bes_deadline_misses", "Completed requests that missed their deadline",
                              ["model", "task"], registry=r)
        self.latency = Histogram("bes_latency_seconds", "Arrival to completion in the pool, by model",
                                 ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("bes_queue_wait_seconds", "Arrival to batch start, by model",
                                    ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_len = Gauge("bes_queue_length", "Requests queued, by model", ["model"], registry=r)
        self.inflight = Gauge("bes_inflight", "Requests in a running batch, by model", ["model"], registry=r)
        self.alive = Gauge("bes_replicas_alive", "Live replicas, by model", ["model"], registry=r)
        for m in model_names:
            for o in ("on_time", "late", "failed", "timeout", "rejected"):
                self.requests.labels(m, o)
            self.latency.labels(m)


def serving_sim_config(pool, router_cfg: dict, settings: ServeSettings, profile: Profile) -> SimConfig:
    """The simulator's view of this server: the pool's layout, ``serve.*`` settings and, for
    ``router=policy``, the policy's observation settings (``adopt_policy_sim_config``, as
    `bes-eval` adopts them); ``serve.ewma_alpha`` / ``serve.ref_rate`` / ``serve.deadline_scale``
    when set are kept."""
    from bes_jax.agents.export import adopt_policy_sim_config
    from bes_jax.routers.factory import parse_router_config
    from bes_jax.serving.routing import stand_ins

    set_here = {k: float(getattr(settings, k)) for k in ("ewma_alpha", "ref_rate") if getattr(settings, k) is not None}
    cfg = SimConfig(placement=pool.placement, n_gpus=int(pool.n_gpus), replicas=tuple(pool.replica_counts),
                    queue_capacity=int(pool.queue_capacity), deadline_scale=float(settings.deadline_scale), **set_here)
    spec = parse_router_config(router_cfg, profile.model_names, where="the pool",
                               stand_ins=stand_ins(profile.model_names))
    if spec.name == "policy":
        cfg = adopt_policy_sim_config(spec.path, cfg, explicit={"deadline_scale", *set_here}, prefix="serve.",
                                      note=log.warning)
    return cfg


class Service:
    """Routing, admission, accounting; the HTTP layer is a thin wrapper around :meth:`complete`."""

    def __init__(self, pool: Pool, profile: Profile, router_cfg: dict, settings: ServeSettings):
        self.pool, self.profile, self.settings = pool, profile, settings
        self.sim_config = serving_sim_config(pool, router_cfg, settings, profile)
        self.rate = RateEstimator(self.sim_config.ewma_alpha, self.sim_config.ref_rate)
        self.deadlines = np.asarray(self.sim_config.task_deadlines(profile), np.float64)
        self.router: LiveRouter = make_live_router(router_cfg, profile, self.deadlines, pool.replica_counts,
                                                   self.rate, seed=settings.seed)
        self.default_task = settings.default_task or profile.task_names[0]
        if self.default_task not in profile.task_names:
            raise ValueError(f"default_task = {self.default_task!r}: not a task of profile {profile.name!r} "
                             f"({profile.task_names})")
        self.counters = Counters(by_model={m: {"on_time": 0, "late": 0, "failed": 0, "rejected": 0}
                                           for m in profile.model_names})
        self.metrics = Metrics(profile.model_names)
        self._rid = 0

    # ------------------------------------------------------------------ request parsing
    def parse(self, body: Any):
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        names = self.profile.model_names
        model = body.get("model", "auto")
        if not isinstance(model, str):
            raise ApiError(400, f"'model' must be a string ('auto' or one of {names})", param="model")
        if model != "auto" and model not in names:
            raise ApiError(404, f"model {model!r} does not exist; use 'auto' or one of {names}",
                           param="model", code="model_not_found")
        task = body.get("task", self.default_task)
        if not isinstance(task, str) or task not in self.profile.task_names:
            raise ApiError(400, f"unknown task {task!r}; choose from {self.profile.task_names}", param="task")
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, "'prompt' must be a string (or a list holding one string)", param="prompt")
        t = self.profile.task_index(task)
        default_out = self.profile.tasks[t].output_len
        max_tokens = body.get("max_tokens", default_out)
        if max_tokens is None:
            max_tokens = default_out
        lim = int(self.settings.max_tokens_limit or 64)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= lim:
            raise ApiError(400, f"'max_tokens' must be an integer in 1..{lim}, got {max_tokens!r}", param="max_tokens")
        if body.get("n", 1) != 1:
            raise ApiError(400, "only n=1 is supported", param="n")
        if body.get("stream", False):
            raise ApiError(400, "streaming is not supported", param="stream")
        ids = self.pool.tokenizer.encode(prompt)
        if not ids:
            raise ApiError(400, "'prompt' is empty", param="prompt")
        limit = self.pool.max_prompt_tokens(max_tokens)
        if len(ids) > limit:
            raise ApiError(400, f"prompt is {len(ids)} tokens; at most {limit} fit with max_tokens={max_tokens}",
                           param="prompt", code="context_length_exceeded")
        return model, t, ids, max_tokens

    # ------------------------------------------------------------------ one request
    def _retry_after(self, m: int, t: int) -> int:
        return max(1, int(math.ceil(float(self.profile.latency[m, t, -1]))))

    async def complete(self, body: Any) -> dict:
        try:
            model, t, ids, n_out = self.parse(body)
        except ApiError as e:
            self.counters.bad_request += 1
            self.metrics.bad.labels(e.param or "body").inc()
            raise
        explicit = None if model == "auto" else self.profile.model_index(model)
        chosen = {}

        def choose(snap):
            chosen["now"] = snap.now
            self.rate.observe(snap.now)
            m = explicit if explicit is not None else self.router.choose(snap, t)
            chosen["m"] = m
            return m

        names = self.profile.model_names

        def facts():
            m = chosen.get("m")
            return {"model": names[m] if m is not None else None, "task": self.profile.task_names[t],
                    "arrival_s": chosen.get("now")}
        try:
            req = self.pool.submit(t, ids, n_out, choose)
        except QueueFull as e:
            self._reject(chosen.get("m"))
            raise ApiError(503, f"overloaded: {e}; retry later", "overloaded", code="queue_full",
                           headers={"Retry-After": str(self._retry_after(chosen["m"], t))}, bes=facts())
        except ModelUnavailable as e:
            self._reject(chosen.get("m"))
            raise ApiError(503, f"unavailable: {e}", "unavailable", code="model_unavailable",
                           headers={"Retry-After": "1"}, bes=facts())
        c, mt = self.counters, self.metrics
        c.accepted += 1
        mt.accepted.inc()
        mname = names[req.model]
        try:
            res = await asyncio.wait_for(asyncio.wrap_future(req.future), self.settings.request_timeout_s)
        except asyncio.TimeoutError:
            self.pool.cancel(req)
            self._fail(mname, "timeout")
            raise ApiError(504, f"request timed out after {self.settings.request_timeout_s} s "
                           f"(model {mname}); it was not served", "timeout", code="timeout", bes=facts())
        except WorkerCrashed as e:
            self._fail(mname, "failed")
            raise ApiError(503, f"worker failed: {e}; the replica is masked out of routing, retry",
                           "worker_failed", code="worker_failed", headers={"Retry-After": "1"}, bes=facts())
        except Exception as e:  # never leave an accepted request without an answer
            self._fail(mname, "failed")
            raise ApiError(500, f"internal error: {e}", "internal_error", bes=facts())
        d = float(self.deadlines[t])
        lat = float(req.latency)
        met = lat <= d
        c.completed += 1
        mt.completed.inc()
        outcome = "on_time" if met else "late"
        c.by_model[mname][outcome] += 1
        mt.requests.labels(mname, outcome).inc()
        mt.latency.labels(mname).observe(lat)
        mt.queue_wait.labels(mname).observe(float(req.queue_wait))
        if met:
            c.deadline_met += 1
        else:
            c.deadline_missed += 1
            mt.misses.labels(mname, self.profile.task_names[t]).inc()
        self._rid += 1
        return {
            "id": f"cmpl-{req.rid}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": mname,
            "choices": [{"text": res.text, "index": 0, "logprobs": None, "finish_reason": "length"}],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": len(res.token_ids),
                      "total_tokens": len(ids) + len(res.token_ids)},
            "bes": {"model": mname, "task": self.profile.task_names[t], "router": "explicit" if explicit is not None
                    else self.router.name, "replica": self.pool.replicas[req.replica].k,
                    "arrival_s": req.arrival, "queue_wait_s": float(req.queue_wait),
                    "service_s": float(req.finish - req.start), "latency_s": lat, "deadline_s": d,
                    "deadline_met": bool(met), "batch_size": req.batch_size,
                    "compute_s": float(req.compute)},
        }

    def _reject(self, m):
        self.counters.rejected += 1
        self.metrics.rejected.inc()
        if m is not None:
            name = self.profile.model_names[m]
            self.counters.by_model[name]["rejected"] += 1
            self.metrics.requests.labels(name, "rejected").inc()

    def _fail(self, mname, outcome):
        self.counters.failed += 1
        self.metrics.failed.inc()
        self.counters.by_model[mname]["failed"] += 1
        self.metrics.requests.labels(mname, outcome).inc()

    def health(self) -> dict:
        alive = self.pool.alive_models()
        return {"status": "ok" if alive.all() else ("degraded" if alive.any() else "down"),
                "router": self.router.name, "profile": self.profile.name,
                "models": {n: {"alive": bool(a), "queued": q, "in_flight": f}
                           for (n, a), q, f in zip(zip(self.profile.model_names, alive),
                                                   self.pool.queue_lengths().values(),
                                                   self.pool.inflight_counts().values())},
                "tasks": self.profile.task_names, "default_task": self.default_task,
                "profile_source": self.profile.source,
                "pool": {"models": self.pool.model_names, "placement": self.pool.placement,
                         "n_gpus": self.pool.n_gpus, "replicas": list(self.pool.replica_counts),
                         "queue_capacity": self.pool.queue_capacity, "b_max": self.pool.b_max,
                         "device": self.pool.device, "num_threads": self.pool.num_threads},
                "deadlines_s": [float(x) for x in self.deadlines],
                "deadline_scale": float(self.settings.deadline_scale),
                "sim_config": self.sim_config.to_dict(),
                "counters": self.counters.as_dict(), "uptime_s": self.pool.now()}

    def metrics_text(self) -> bytes:
        from prometheus_client import generate_latest
        q, f = self.pool.queue_lengths(), self.pool.inflight_counts()
        alive = {n: 0 for n in self.profile.model_names}
        for r in self.pool.replicas:
            alive[self.profile.model_names[r.model]] += int(r.alive)
        for n in self.profile.model_names:
            self.metrics.queue_len.labels(n).set(q[n])
            self.metrics.inflight.labels(n).set(f[n])
            self.metrics.alive.labels(n).set(alive[n])
        return generate_latest(self.metrics.registry)


def create_app(service: Service, *, manage_pool: bool = True):
    """The FastAPI app. With ``manage_pool`` the app starts the pool and stops it on shutdown."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response

    @asynccontextmanager
    async def lifespan(app):
        if manage_pool:
            service.pool.start()
        yield
        if manage_pool:
            service.pool.stop()

    app = FastAPI(title="bes_jax serving", lifespan=lifespan)
    app.state.service = service
    from bes_jax.serving.engines.gateway import parse_client_keys
    keys = parse_client_keys(service.settings.api_keys, service.settings.api_keys_env)

    def refused(request: Request, raw: bytes):
        """401 without a valid client key, 413 above serve.max_body_bytes; None when fine."""
        import hmac
        if keys:
            h = request.headers.get("authorization") or ""
            tok = h[7:].strip() if h.lower().startswith("bearer ") else ""
            if not any(hmac.compare_digest(tok.encode(), k.encode()) for k in keys):
                return error(ApiError(401, "missing or invalid API key (send 'Authorization: Bearer <key>')",
                                      "authentication_error", code="invalid_api_key",
                                      headers={"WWW-Authenticate": "Bearer"}))
        lim = int(service.settings.max_body_bytes)
        if len(raw) > lim:
            service.counters.bad_request += 1
            service.metrics.bad.labels("body").inc()
            return error(ApiError(413, f"request body is {len(raw)} bytes; the limit is {lim} (serve.max_body_bytes)",
                                  param="body", code="body_too_large"))
        return None

    def error(e: ApiError):
        body = {"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}}
        if e.bes is not None:
            body["bes"] = e.bes
        return JSONResponse(body, status_code=e.status, headers=e.headers)

    @app.post("/v1/completions")
    async def completions(request: Request):
        raw = await request.body()
        bad = refused(request, raw)
        if bad is not None:
            return bad
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as ex:
            service.counters.bad_request += 1
            service.metrics.bad.labels("json").inc()
            return error(ApiError(400, f"malformed JSON body: {ex}"))
        try:
            return JSONResponse(await service.complete(body))
        except ApiError as e:
            return error(e)

    @app.get("/v1/models")
    async def models():
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


def is_engines_pool(cfg) -> bool:
    """``pool=engines``: the router in front of OpenAI-compatible engines (``pool.kind``)."""
    return (cfg.get("pool") or {}).get("kind") == "engines"


def build_service(cfg):
    """Pool + profile + router from the composed ``conf/serve.yaml`` (a dict or DictConfig): a
    :class:`Service` over the in-process pool, or with ``pool=engines`` an
    ``engines.gateway.EngineService`` over HTTP engines."""
    from omegaconf import OmegaConf
    c = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else cfg
    if is_engines_pool(c):
        from bes_jax.serving.engines.gateway import build_engine_service
        return build_engine_service(c)
    pool_cfg = dict(c["pool"])
    profile = load_profile(pool_cfg.get("profile") or "tiny-cpu")
    pool = build_pool(pool_cfg, profile)
    if pool_cfg.get("warmup", True):
        pool.warmup()
    s = dict(c.get("serve") or {})
    settings = ServeSettings(**{k: v for k, v in s.items() if k in ServeSettings.__dataclass_fields__})
    unknown = sorted(set(s) - set(ServeSettings.__dataclass_fields__))
    if unknown:
        raise ValueError(f"serve: unknown field(s) {unknown}; known: {sorted(ServeSettings.__dataclass_fields__)}")
    if settings.gil_switch_interval_s:
        import sys
        sys.setswitchinterval(float(settings.gil_switch_interval_s))
    return Service(pool, profile, dict(c["router"]), settings)


def _run(cfg) -> None:
    import uvicorn
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        service = build_service(cfg)
    except (ValueError, RuntimeError, KeyError) as e:
        raise SystemExit(f"bes-serve: error: {e}")
    if not isinstance(service, Service):  # pool=engines
        from bes_jax.serving.engines.gateway import create_engine_app
        log.info("routing %s over %d engines with router %s on %s:%s", service.profile.model_names,
                 len(service.slots), service.router.name, cfg.server.host, cfg.server.port)
        uvicorn.run(create_engine_app(service), host=cfg.server.host, port=int(cfg.server.port),
                    log_level=str(cfg.server.get("log_level", "warning")),
                    timeout_graceful_shutdown=int(service.serve.drain_timeout_s))
        return
    log.info("serving %s with router %s on %s:%s (device %s, %d threads, placement %s)",
             service.profile.model_names, service.router.name, cfg.server.host, cfg.server.port,
             service.pool.device, service.pool.num_threads, service.pool.placement)
    uvicorn.run(create_app(service), host=cfg.server.host, port=int(cfg.server.port),
                log_level=str(cfg.server.get("log_level", "warning")))


def main() -> None:
    import hydra
    hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="serve")(_run)()


if __name__ == "__main__":
    main()


class ServerThread:
    """Run an app with uvicorn in a background thread (tests, ``bes-validate --serve``)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import socket
        import threading

        import uvicorn
        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.host, self.port = host, port
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level))
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="uvicorn")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self):
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() - t0 > 60:
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)
