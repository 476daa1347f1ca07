"""pool=engines without real models: URL config, the continuous routing view, the iteration fit,
and the gateway against scripted OpenAI-compatible fakes (auth, limits, key forwarding, masking
and retry, recovery, vLLM gauges, streaming, disconnects, drain, the counters invariant)."""
import asyncio
import json
import os
import time

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
pytest.importorskip("prometheus_client")

from bes_jax.serving.engines.config import parse_engine_urls  # noqa: E402
from bes_jax.serving.engines.gateway import EngineService, EngineSettings, create_engine_app  # noqa: E402
from bes_jax.serving.engines.http import HttpEngine, parse_engine_metrics  # noqa: E402
from bes_jax.serving.engines import view  # noqa: E402
from bes_jax.serving.server import ServerThread, ServeSettings  # noqa: E402

NAMES = ["e-s", "e-m", "e-l"]
ITS = [[0.001, 0.0001, 0.002, 1e-6, 2e-5], [0.001, 0.0002, 0.006, 3e-6, 6e-5], [0.001, 0.0004, 0.02, 1e-5, 2e-4]]


def engine_profile_dict(its=ITS, deadline=5.0):
    return {
        "name": "engines-test", "hardware": {"name": "test"},
        "models": [{"name": n, "params": 10 ** (5 + i), "ctx_max": 1024, "kv_tokens": 8192,
                    "iteration": dict(zip(view.ITERATION_KEYS, it))} for i, (n, it) in enumerate(zip(NAMES, its))],
        "tasks": [{"name": "short", "metric": "acc", "deadline_s": deadline, "prompt_len": 16, "output_len": 4},
                  {"name": "long", "metric": "acc", "deadline_s": deadline, "prompt_len": 128, "output_len": 8}],
        "B_max": 2, "latency_s": [[[0.01, 0.02], [0.02, 0.03]]] * 3,
        "quality": [[0.5, 0.4], [0.6, 0.5], [0.7, 0.6]],
        "provenance": {"latency": "test", "quality": "test"}}


@pytest.fixture
def profile(tmp_path):
    p = tmp_path / "engines.json"
    p.write_text(json.dumps(engine_profile_dict()))
    from bes_jax.profile import load_profile
    return load_profile(p)


# ----------------------------------------------------------------------------- config

def test_url_forms_and_errors(monkeypatch):
    e = parse_engine_urls(["http://h:1", "http://h:2/v1", "http://h:3/"], NAMES)
    assert [(x.model, x.url) for x in e] == [("e-s", "http://h:1"), ("e-m", "http://h:2"), ("e-l", "http://h:3")]
    e = parse_engine_urls([["http://h:1", "http://h:4"], "http://h:2", ["http://h:3"]], NAMES)
    assert [x.model for x in e] == ["e-s", "e-s", "e-m", "e-l"]
    monkeypatch.setenv("ENGINE_KEY", "sekrit")
    e = parse_engine_urls({"e-l": "http://h:3", "e-s": {"url": "http://h:1", "api_key_env": "ENGINE_KEY"},
                           "e-m": ["http://h:2"]}, NAMES, api_key="default")
    assert [x.model for x in e] == ["e-s", "e-m", "e-l"] and e[0].api_key == "sekrit" and e[1].api_key == "default"
    assert "sekrit" not in repr(e)
    with pytest.raises(ValueError, match="2 entries, the profile has 3 models"):
        parse_engine_urls(["http://h:1", "http://h:2"], NAMES)
    with pytest.raises(ValueError, match=r"not in the profile"):
        parse_engine_urls({"e-s": "http://h:1", "e-m": "http://h:2", "e-l": "http://h:3", "gpt": "http://h:4"}, NAMES)
    with pytest.raises(ValueError, match=r"no engine for model\(s\) \['e-l'\]"):
        parse_engine_urls({"e-s": "http://h:1", "e-m": "http://h:2"}, NAMES)
    with pytest.raises(ValueError, match=r"pool.urls\['e-m'\]\[0\] = 'ftp://x'"):
        parse_engine_urls(["http://h:1", "ftp://x", "http://h:3"], NAMES)
    with pytest.raises(ValueError, match="listed for both"):
        parse_engine_urls(["http://h:1", "http://h:1", "http://h:3"], NAMES)
    with pytest.raises(ValueError, match="NOPE_KEY"):
        parse_engine_urls(["http://h:1", "http://h:2", "http://h:3"], NAMES, api_key_env="NOPE_KEY")
    with pytest.raises(ValueError, match="pool.urls is required"):
        parse_engine_urls("???", NAMES)


def test_vllm_gauges_parsed():
    text = ('# HELP vllm:num_requests_running r\n# TYPE vllm:num_requests_running gauge\n'
            'vllm:num_requests_running{model_name="a"} 3.0\n'
            '# HELP vllm:num_requests_waiting w\n# TYPE vllm:num_requests_waiting gauge\n'
            'vllm:num_requests_waiting{model_name="a"} 2.0\n'
            '# HELP vllm:kv_cache_usage_perc k\n# TYPE vllm:kv_cache_usage_perc gauge\n'
            'vllm:kv_cache_usage_perc{model_name="a"} 0.25\n'
            '# HELP other x\n# TYPE other gauge\nother 7\n')
    assert parse_engine_metrics(text) == {"running": 3.0, "waiting": 2.0, "kv_usage": 0.25}
    old = '# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc 0.5\n'
    assert parse_engine_metrics(old) == {"kv_usage": 0.5}


# ----------------------------------------------------------------------------- the routing view

def test_live_view_is_the_reference_view(profile):
    """The gateway's snapshot of its engines, filled from what it forwarded, is the reference
    twin's Snapshot of the same state, and greedy / the rich observation are the reference's."""
    from bes_jax.reference import routing_view_continuous as ref
    engines = [HttpEngine(n, f"http://127.0.0.1:{9 + i}", index=0) for i, n in enumerate(["e-s", "e-s", "e-m", "e-l"])]
    for i, e in enumerate(engines):
        e.index = i
    st = EngineSettings(max_num_seqs=2, max_num_batched_tokens=64, queue_capacity=3)
    svc = EngineService(engines, profile, {"name": "greedy"}, ServeSettings(), st)
    # e-s#0: three requests (two running: the first max_num_seqs sent; one waiting); e-s#1: one,
    # streaming with 5 tokens so far; e-m: none; e-l: three with the last waiting
    for p in (10, 20, 30):
        svc._open(svc.slots[0], 0, p, False)
    g = svc._open(svc.slots[1], 1, 40, True)
    g.generated = 5
    h = [svc._open(svc.slots[3], t, p, True) for t, p in ((0, 7), (1, 8), (1, 9))]
    h[0].generated = 2
    snap = svc.snapshot(pending_prompt=12)
    o = svc.engines.mean_output  # [4, 8]
    expect = ref.Snapshot(
        now=snap.now, replica_model=np.array([0, 0, 1, 2]), replica_server=np.arange(4), valid=np.ones(4, bool),
        n_wait=np.array([1, 0, 0, 1]), n_run=np.array([2, 1, 0, 2]),
        kv_in_use=np.array([10 + 20, 40 + 5, 0, 7 + 2 + 8]), wait_prompt=np.array([30, 0, 0, 9]),
        out_mean_sum=np.array([3 * o[0], o[1], 0, o[0] + 2 * o[1]]),
        server_busy=np.zeros(4, bool), server_busy_until=np.full(4, snap.now))
    for k in ("replica_model", "replica_server", "valid", "n_wait", "n_run", "kv_in_use", "wait_prompt",
              "out_mean_sum", "server_busy"):
        np.testing.assert_allclose(getattr(snap, k), getattr(expect, k), err_msg=k)
    eng = ref.Engines.from_profile(profile, svc.sim_config)
    assert eng.max_num_seqs == 2 and eng.queue_capacity == 3 and list(eng.replica_count) == [2, 1, 1]
    for task in (0, 1):
        pred, ttft, rep = ref.predict(expect, eng, task, 12.0)
        # the replica choice prefers e-s#1 (1 in system vs 3)
        assert rep[0] == 1
        want = ref.greedy_choice(pred, ttft, eng, task)
        assert svc.router.choose(snap, task) == want
        for mode in ("paper", "rich"):
            live = ref.build_observation(mode, snap, svc.engines, task, 12.0, 0.3)
            np.testing.assert_allclose(live, ref.build_observation(mode, expect, eng, task, 12.0, 0.3))
    # the policy router reads that same observation (rich, T + 4M + 3 inputs)
    from bes_jax.serving.routing import PolicyRouter
    obs = PolicyRouter.observation(type("P", (), {"obs_mode": "rich", "engines": svc.engines, "rate": svc.rate})(),
                                   snap, 1)
    np.testing.assert_allclose(obs, ref.build_observation("rich", expect, eng, 1, 12.0, svc.rate.normalised_rate))
    assert obs.shape == (2 + 4 * 3 + 3,)
    # a masked engine is invalid in the view; a waiting queue at capacity makes a model unpredictable
    svc.slots[3].masked_until = 1e9
    for p in (1, 2, 3, 4):
        svc._open(svc.slots[2], 0, p, False)
    snap = svc.snapshot(pending_prompt=12)
    assert not snap.valid[3] and snap.n_run[2] == 2 and snap.n_wait[2] == 2
    pred = ref.predict(snap, svc.engines, 0, 12.0)[0]
    assert np.isinf(pred[2]) and np.isfinite(pred[1])  # e-l's only engine masked; e-m has room
    svc._open(svc.slots[2], 0, 5, False)
    pred = ref.predict(svc.snapshot(pending_prompt=12), svc.engines, 0, 12.0)[0]
    assert np.isinf(pred[1])


def test_engines_need_a_continuous_profile(tmp_path):
    d = engine_profile_dict()
    del d["models"][1]["kv_tokens"]
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    from bes_jax.profile import load_profile
    with pytest.raises(ValueError, match=r"models\[1\].kv_tokens"):
        EngineService([HttpEngine(n, f"http://127.0.0.1:{9 + i}") for i, n in enumerate(NAMES)], load_profile(p),
                      {"name": "greedy"}, ServeSettings(), EngineSettings())


# ----------------------------------------------------------------------------- the iteration fit

def test_fit_recovers_known_coefficients():
    from bes_jax.serving.engines.profiler import batch_latency, fit_iteration, iteration_time
    true = np.array([0.002, 0.0005, 0.004, 2e-6, 5e-5])
    n = np.array([1, 1, 1, 1, 1, 4, 16, 32, 4, 16, 32])
    P = np.array([8, 64, 256, 512, 1024, 0, 0, 0, 0, 0, 0])
    D = np.where(P > 0, 0, n)
    C = np.where(P > 0, P, n * np.array([0, 0, 0, 0, 0, 20, 20, 20, 300, 300, 300]))
    y = iteration_time(true, n, C, P, D)
    coef, err = fit_iteration(n, C, P, D, y)
    assert err["rms_rel_error"] < 1e-3
    np.testing.assert_allclose(iteration_time(coef[:5], n, C, P, D), y, rtol=1e-3)
    assert (coef >= 0).all() and coef.shape == (6,)
    # a per-request overhead on the points that are whole requests (one-token completions):
    # recovered apart from the iteration's own fixed time, which the decode points pin down
    whole = (P > 0).astype(float)
    coef, err = fit_iteration(n, C, P, D, y + 0.004 * whole, whole=whole)
    assert err["rms_rel_error"] < 1e-3
    assert abs(coef[5] - 0.004) < 2e-4 and abs(coef[0] - 0.002) < 2e-4, coef
    # the request-level table: grows with batch size and output length
    assert batch_latency(true, 32, 8, 4, 512) > batch_latency(true, 32, 8, 1, 512) > batch_latency(true, 32, 2, 1, 512)


# ----------------------------------------------------------------------------- the gateway on fakes

class Fake:
    """A scripted OpenAI-compatible engine: ``mode`` = ok, 500, hang; records headers."""

    def __init__(self, name, tokens=3, gap=0.0, gauges=None):
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
        self.name, self.mode, self.tokens, self.gap, self.gauges = name, "ok", tokens, gap, gauges
        self.headers, self.bodies, self.arrivals, self.cancelled = [], [], [], 0
        app = FastAPI()
        self.app = app

        @app.get("/health")
        async def health():
            return JSONResponse({"ok": True}, status_code=200 if self.mode != "down" else 503)

        @app.get("/v1/models")
        async def models():
            return {"data": [{"id": f"served/{name}"}]}

        @app.get("/metrics")
        async def metrics():
            if self.gauges is None:
                return PlainTextResponse("not here", status_code=404)
            return PlainTextResponse("".join(f"# TYPE vllm:{k} gauge\nvllm:{k} {v}\n" for k, v in self.gauges.items()))

        async def answer(request: Request, kind):
            self.headers.append(dict(request.headers))
            body = await request.json()
            self.bodies.append(body)
            self.arrivals.append(time.monotonic())
            if self.mode == "500":
                return JSONResponse({"error": {"message": "boom"}}, status_code=500)
            if self.mode == "400":
                return JSONResponse({"error": {"message": "context too long", "code": "ctx"}}, status_code=400)
            if self.mode == "hang":  # longer than the gateway waits, short enough for a quick teardown
                await asyncio.sleep(2.0)
            obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
            if body.get("stream"):
                async def gen():
                    try:
                        for i in range(self.tokens):
                            await asyncio.sleep(self.gap)
                            ch = {"delta": {"content": "x"}} if kind == "chat" else {"text": "x"}
                            yield f"data: {json.dumps({'id': 'c', 'object': obj, 'model': body['model'], 'choices': [{'index': 0, **ch}]})}\n\n"
                        yield f"data: {json.dumps({'id': 'c', 'object': obj, 'model': body['model'], 'choices': [{'index': 0, 'text': '', 'finish_reason': 'length'}], 'usage': {'prompt_tokens': 5, 'completion_tokens': self.tokens}})}\n\n"
                        yield "data: [DONE]\n\n"
                    except asyncio.CancelledError:
                        self.cancelled += 1
                        raise
                return StreamingResponse(gen(), media_type="text/event-stream")
            await asyncio.sleep(self.gap * self.tokens)
            if kind == "chat":
                ch = {"index": 0, "message": {"role": "assistant", "content": "x" * self.tokens}, "finish_reason": "length"}
            else:
                ch = {"index": 0, "text": "x" * self.tokens, "finish_reason": "length"}
            return {"id": "c", "object": obj.replace(".chunk", ""), "model": body["model"], "choices": [ch],
                    "usage": {"prompt_tokens": 5, "completion_tokens": self.tokens, "total_tokens": 5 + self.tokens}}

        @app.post("/v1/completions")
        async def completions(request: Request):
            return await answer(request, "completions")

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            return await answer(request, "chat")


@pytest.fixture
def fakes():
    fs = [Fake(n) for n in ("a", "b", "c", "d")]
    srvs = [ServerThread(f.app).__enter__() for f in fs]
    yield fs, srvs
    for s in srvs:
        s.__exit__(None, None, None)


def gateway(profile, srvs, *, urls=None, router=None, serve=None, settings=None, keys=None, engine_key=None):
    urls = urls or [[srvs[0].url, srvs[3].url], srvs[1].url, srvs[2].url]
    entries = parse_engine_urls(urls, NAMES, api_key=engine_key)
    k = {}
    engines = []
    for e in entries:
        engines.append(HttpEngine(e.model, e.url, index=k.setdefault(e.model, 0), api_key=e.api_key,
                                  read_timeout_s=5.0, metrics_timeout_s=0.5))
        k[e.model] += 1
    st = settings or EngineSettings(cooldown_s=0.6, health_interval_s=0.2, metrics_interval_s=0.1)
    svc = EngineService(engines, profile, router or {"name": "greedy"}, serve or ServeSettings(request_timeout_s=5.0),
                        st, client_keys=keys)
    return svc


def counters_add_up(svc):
    c = svc.counters
    assert c.accepted == c.completed + c.failed + c.rejected, c.as_dict()


def metric_values(text):
    vals = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            vals[k] = float(v)
    return vals


def test_routes_forwards_streams_and_accounts(profile, fakes):
    fs, srvs = fakes
    svc = gateway(profile, srvs)
    with ServerThread(create_engine_app(svc)) as gw, httpx.Client(base_url=gw.url, timeout=10) as c:
        r = c.post("/v1/completions", json={"model": "auto", "prompt": "hello", "task": "long", "max_tokens": 4})
        assert r.status_code == 200, r.text
        d = r.json()
        # greedy with a generous deadline: the best model; the answer names it, the router and why
        assert d["model"] == "e-l" and r.headers["x-bes-model"] == "e-l" and r.headers["x-bes-router"] == "greedy"
        assert r.headers["x-bes-decision"] == "routed" and d["bes"]["task"] == "long"
        # the engine saw its own model id and no bes_jax field
        assert fs[2].bodies[-1]["model"] == "served/c" and "task" not in fs[2].bodies[-1]
        r = c.post("/v1/chat/completions", json={"model": "e-s", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200 and r.json()["model"] == "e-s" and r.headers["x-bes-decision"] == "explicit"
        assert r.json()["choices"][0]["message"]["content"] == "xxx"
        with c.stream("POST", "/v1/completions", json={"model": "e-m", "prompt": "p", "stream": True}) as s:
            assert s.headers["x-bes-model"] == "e-m"
            events = [line for line in s.iter_lines() if line.startswith("data:")]
        assert events[-1] == "data: [DONE]"
        chunks = [json.loads(e[5:]) for e in events[:-1]]
        assert [ch["choices"][0]["text"] for ch in chunks[:3]] == ["x", "x", "x"]
        assert all(ch["model"] == "e-m" for ch in chunks)
        facts = chunks[-1]["bes"]
        assert facts["tokens_streamed"] == 3 and facts["ttft_s"] <= facts["e2e_s"] and facts["model"] == "e-m"
        h = c.get("/healthz").json()
        assert h["status"] == "ok" and h["counters"]["in_progress"] == 0 and h["batching"] == "continuous"
        vals = metric_values(c.get("/metrics").text)
    counters_add_up(svc)
    assert svc.counters.completed == 3
    assert vals["bes_accepted_total"] == 3 == vals["bes_completed_total"]
    assert vals['bes_decisions_total{decision="explicit",model="e-s"}'] == 1
    assert vals['bes_ttft_seconds_count{model="e-m"}'] == 1


def test_auth_limits_and_engine_keys(profile, fakes):
    fs, srvs = fakes
    serve = ServeSettings(request_timeout_s=5.0, max_tokens_limit=16, max_body_bytes=2000, max_prompt_tokens=50)
    svc = gateway(profile, srvs, serve=serve, keys=["k1", "k2"], engine_key="engine-secret")
    with ServerThread(create_engine_app(svc)) as gw, httpx.Client(base_url=gw.url, timeout=10) as c:
        body = {"model": "e-s", "prompt": "hello"}
        r = c.post("/v1/completions", json=body)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.post("/v1/completions", json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.get("/v1/models").status_code == 401
        ok = {"Authorization": "Bearer k2"}
        assert c.post("/v1/completions", json=body, headers=ok).status_code == 200
        assert fs[0].headers[-1]["authorization"] == "Bearer engine-secret"  # the engine's key, not the client's
        r = c.post("/v1/completions", json={**body, "max_tokens": 17}, headers=ok)
        assert r.status_code == 400 and "serve.max_tokens_limit" in r.json()["error"]["message"]
        r = c.post("/v1/completions", json={**body, "prompt": "x" * 400}, headers=ok)  # 100 tokens at 4 chars each
        assert r.status_code == 400 and r.json()["error"]["code"] == "prompt_too_long"
        assert "serve.max_prompt_tokens" in r.json()["error"]["message"]
        r = c.post("/v1/completions", content=json.dumps({**body, "prompt": "y" * 3000}), headers=ok)
        assert r.status_code == 413 and "serve.max_body_bytes" in r.json()["error"]["message"]
        assert c.post("/v1/completions", json={"model": "gpt-9", "prompt": "x"}, headers=ok).status_code == 404
        r = c.post("/v1/chat/completions", json={"model": "auto", "messages": "hi"}, headers=ok)
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
        fs[0].mode = "400"  # the engine refuses: its answer is passed on, the engine stays in service
        r = c.post("/v1/completions", json=body, headers=ok)
        assert r.status_code == 400 and r.json()["error"]["message"] == "context too long"
        assert not svc.slots[0].masked
        health = c.get("/healthz").text
    assert "engine-secret" not in health and "k2" not in health
    counters_add_up(svc)
    assert svc.counters.unauthorized == 3 and svc.counters.failed == 1


def test_engine_fault_masks_retries_and_recovers(profile, fakes):
    fs, srvs = fakes
    svc = gateway(profile, srvs)
    with ServerThread(create_engine_app(svc)) as gw, httpx.Client(base_url=gw.url, timeout=10) as c:
        fs[2].mode = "500"  # the large model's only engine fails: masked, retried on greedy's next choice
        r = c.post("/v1/completions", json={"model": "auto", "prompt": "x", "task": "short"})
        assert r.status_code == 200 and r.json()["model"] == "e-m" and r.headers["x-bes-decision"] == "retry"
        assert svc.slots[3].masked  # slots: e-s#0, e-s#1, e-m#0, e-l#0
        r = c.post("/v1/completions", json={"model": "e-l", "prompt": "x"})  # explicit, no other engine
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"
        assert int(r.headers["retry-after"]) >= 1
        # explicit model with two engines: the failing one is masked, its twin answers
        fs[0].mode = "500"
        r = c.post("/v1/completions", json={"model": "e-s", "prompt": "x"})
        assert r.status_code == 200 and r.headers["x-bes-engine"] == "e-s#1"
        fs[3].mode = "500"
        r = c.post("/v1/completions", json={"model": "e-s", "prompt": "x"})
        assert r.status_code == 502 and r.json()["error"]["code"] == "engine_failed"
        assert "HTTP 500" in r.json()["error"]["message"]
        # a connection refused: masked and retried like a 5xx
        for f in fs:
            f.mode = "ok"
        deadline = time.time() + 10
        while any(s.masked for s in svc.slots) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(s.masked for s in svc.slots), "health probes did not bring the engines back"
        srvs[2].__exit__(None, None, None)  # the large model's engine goes away
        r = c.post("/v1/completions", json={"model": "auto", "prompt": "x"})
        assert r.status_code == 200 and r.json()["model"] == "e-m" and svc.slots[3].masked
        # masked by the failed request (connection refused) or, if it came first, by the probe
        assert "unreachable" in svc.slots[3].mask_reason or "probe" in svc.slots[3].mask_reason
        h = c.get("/healthz").json()
        assert h["status"] == "degraded" and h["models"]["e-l"]["engines"][0]["masked"]
        vals = metric_values(c.get("/metrics").text)
    counters_add_up(svc)
    assert vals['bes_engine_masked{engine="e-l#0"}'] == 1
    assert vals["bes_accepted_total"] == vals["bes_completed_total"] + vals["bes_failed_total"] + vals["bes_rejected_total"]
    # two retries at least (the large model's 5xx, the small model's twin); the refused connection
    # is a third unless the probe masked that engine first
    assert sum(v for k, v in vals.items() if k.startswith("bes_retries_total")) == svc.counters.retries >= 2


def test_timeout_overload_and_gauges(profile, fakes):
    fs, srvs = fakes
    fs[1].gauges = {"num_requests_running": 3, "num_requests_waiting": 5, "kv_cache_usage_perc": 0.5}
    settings = EngineSettings(cooldown_s=30, health_interval_s=0.2, metrics_interval_s=0.1, queue_capacity=5,
                              max_num_seqs=4)
    svc = gateway(profile, srvs, urls=[srvs[0].url, srvs[1].url, srvs[2].url],
                  serve=ServeSettings(request_timeout_s=0.5), settings=settings)
    with ServerThread(create_engine_app(svc)) as gw, httpx.Client(base_url=gw.url, timeout=10) as c:
        deadline = time.time() + 5
        while not svc.slots[1].gauges and time.time() < deadline:
            time.sleep(0.05)
        s = svc.snapshot()
        # the engine's own gauges: 3 running, 5 waiting (other clients' requests included), KV 50%
        assert s.n_run[1] == 3 and s.n_wait[1] == 5 and s.kv_in_use[1] == pytest.approx(0.5 * 8192)
        r = c.post("/v1/completions", json={"model": "e-m", "prompt": "x"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "queue_full" and "retry-after" in r.headers
        vals = metric_values(c.get("/metrics").text)
        assert vals['bes_engine_reported{engine="e-m#0",gauge="waiting"}'] == 5
        fs[2].mode = "hang"  # times out: masked, retried; the retry is told not to wait on it again
        r = c.post("/v1/completions", json={"model": "auto", "prompt": "x", "task": "short"})
        assert r.status_code == 200 and r.headers["x-bes-decision"] == "retry" and svc.slots[2].masked
        r = c.post("/v1/completions", json={"model": "e-l", "prompt": "x"})
        assert r.status_code == 503
    counters_add_up(svc)
    assert svc.counters.rejected == 2


def test_client_disconnect_cancels_upstream_and_drain(profile, fakes):
    fs, srvs = fakes
    fs[1].tokens, fs[1].gap = 200, 0.02
    svc = gateway(profile, srvs)
    with ServerThread(create_engine_app(svc)) as gw:
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            with c.stream("POST", "/v1/completions", json={"model": "e-m", "prompt": "p", "stream": True}) as s:
                for i, line in enumerate(s.iter_lines()):
                    if i >= 6:
                        break  # the client hangs up after a few tokens
        deadline = time.time() + 5
        while (svc._in_flight() or not fs[1].cancelled) and time.time() < deadline:
            time.sleep(0.05)
        assert svc._in_flight() == 0 and fs[1].cancelled == 1
        assert svc.counters.failed == 1
        # a plain request whose client gives up: the gateway notices and drops the upstream call
        with httpx.Client(base_url=gw.url, timeout=0.3) as c:
            with pytest.raises(httpx.ReadTimeout):
                c.post("/v1/completions", json={"model": "e-m", "prompt": "p"})  # 200 x 20 ms upstream
        deadline = time.time() + 5
        while svc._in_flight() and time.time() < deadline:
            time.sleep(0.05)
        assert svc._in_flight() == 0 and svc.counters.failed == 2
        # drain: in-flight requests finish, new ones get 503
        fs[1].tokens, fs[1].gap = 10, 0.05
        import threading
        out = {}

        def slow():
            with httpx.Client(base_url=gw.url, timeout=10) as c2:
                out["r"] = c2.post("/v1/completions", json={"model": "e-m", "prompt": "p"})
        th = threading.Thread(target=slow)
        th.start()
        deadline = time.time() + 5
        while not svc._in_flight() and time.time() < deadline:
            time.sleep(0.01)
        fut = asyncio.run_coroutine_threadsafe(svc.drain(5.0), svc.loop)
        time.sleep(0.05)
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            r = c.post("/v1/completions", json={"model": "e-s", "prompt": "late"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
        assert fut.result(10) is True
        th.join(10)
        assert out["r"].status_code == 200
    counters_add_up(svc)


def test_in_process_pool_behind_the_engine_interface():
    """The request-level PyTorch pool is an Engine too: whole answers, a one-chunk stream, health."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from bes_jax.serving.engines.base import Engine, EngineError
    from bes_jax.serving.engines.pool_engine import PoolEngine
    from bes_jax.serving.pool import Pool
    pool = Pool(["tiny-s"], placement="concurrent", n_gpus=1, queue_capacity=4, b_max=2, num_threads=1,
                executor="thread").start()
    try:
        eng = PoolEngine(pool, "tiny-s")
        assert isinstance(eng, Engine)

        async def go():
            r = await eng.submit("/v1/completions", {"prompt": "hello", "max_tokens": 3})
            async with eng.stream("/v1/completions", {"prompt": "hello", "max_tokens": 3, "stream": True}) as ev:
                events = [e async for e in ev]
            with pytest.raises(EngineError) as e:
                await eng.submit("/v1/chat/completions", {"messages": []})
            return r, events, e.value, await eng.health()
        r, events, err, healthy = asyncio.run(go())
        assert r.body["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        assert r.body["model"] == "tiny-s" and healthy and err.kind == "client" and err.status == 404
        assert len(events) == 3 and events[-1] == "data: [DONE]"
        assert json.loads(events[0][5:])["choices"][0]["text"] == r.body["choices"][0]["text"]
    finally:
        pool.stop()


def write_continuous_policy(path, prefer, obs_size=2 + 4 * 3 + 3, batching="continuous", greedy_prior=0.0,
                            prior_gate="none"):
    path.mkdir(parents=True, exist_ok=True)
    k1 = np.random.default_rng(0).normal(size=(obs_size, 8)).astype(np.float32)
    b2 = np.zeros(3, np.float32)
    b2[prefer] = 1.0
    np.savez(path / "weights.npz", **{"hidden_0/kernel": k1, "hidden_0/bias": np.zeros(8, np.float32),
                                      "out/kernel": np.zeros((8, 3), np.float32), "out/bias": b2})
    (path / "metadata.json").write_text(json.dumps({
        "obs_mode": "rich", "obs_size": obs_size, "hidden": [8],
        "obs_norm": {"mean": [0.0] * obs_size, "var": [1.0] * obs_size}, "model_names": NAMES,
        "task_names": ["short", "long"], "greedy_prior": greedy_prior, "prior_gate": prior_gate,
        "sim_config": {"batching": batching, "ewma_alpha": 0.1, "ref_rate": 50.0, "max_num_seqs": 8}}))


def test_every_router_over_engines(profile, fakes, tmp_path):
    """static, random, weighted, greedy and policy all route over engines (a policy anchored on
    greedy with a weight above its own margin routes as greedy; below it, as its network, unless
    gated by the load of greedy's engine, idle between these one-at-a-time requests); a policy trained in request
    mode is refused at start, naming the setting."""
    fs, srvs = fakes
    write_continuous_policy(tmp_path / "pol", prefer=1)
    write_continuous_policy(tmp_path / "anchored", prefer=1, greedy_prior=2.0)
    write_continuous_policy(tmp_path / "weak", prefer=1, greedy_prior=0.5)
    write_continuous_policy(tmp_path / "gated", prefer=1, greedy_prior=0.5, prior_gate="load")
    cases = [({"name": "static", "model": "e-s"}, {"e-s"}), ({"name": "weighted", "weights": [0, 0, 1]}, {"e-l"}),
             ({"name": "random"}, set(NAMES)), ({"name": "greedy"}, {"e-l"}),
             ({"name": "policy", "path": str(tmp_path / "pol")}, {"e-m"}),
             ({"name": "policy", "path": str(tmp_path / "anchored")}, {"e-l"}),
             ({"name": "policy", "path": str(tmp_path / "weak")}, {"e-m"}),
             ({"name": "policy", "path": str(tmp_path / "gated")}, {"e-l"})]
    for router, allowed in cases:
        svc = gateway(profile, srvs, router=router)

        async def go():
            await svc.start()
            try:
                return [await svc.forward("/v1/completions", {"model": "auto", "prompt": f"r{i}"}) for i in range(6)]
            finally:
                await svc.stop()
        out = asyncio.run(go())
        served = {d["model"] for d, _ in out}
        assert served <= allowed and served, (router, served)
        assert all(h["x-bes-router"] == svc.router.name for _, h in out)
        counters_add_up(svc)
    svc = gateway(profile, srvs, router={"name": "policy", "path": str(tmp_path / "pol")})
    assert svc.sim_config.max_num_seqs == 8 and svc.rate.alpha == 0.1  # the policy's training settings
    write_continuous_policy(tmp_path / "req", prefer=1, obs_size=2 + 2 * 3 + 2, batching="request")
    with pytest.raises(ValueError, match="trained with batching='request'"):
        gateway(profile, srvs, router={"name": "policy", "path": str(tmp_path / "req")})


def test_engine_profiler_probes_as_traffic_is_served(fakes):
    """bes-profile --engine times streamed answers by default (as bes-serve forwards a streamed
    request), sends every probe a prompt no earlier probe began with (no prefix cache can serve
    a prefill), pauses before each prefill probe so it finds the engine idle, and addresses one
    model of a multi-model server with URL#MODEL."""
    from bes_jax.serving.engines.profiler import measure_engine
    fs, srvs = fakes
    kw = dict(prompt_lens=(8, 64), concurrencies=(1, 3), decode_prompt_lens=(16, 40), decode_tokens=2, repeats=2,
              chars_per_token=1.0, log=lambda *a: None)
    raw = asyncio.run(measure_engine(srvs[0].url, stream=True, idle_s=0.05, **kw))
    probes = [(b, t) for b, t in zip(fs[0].bodies, fs[0].arrivals) if b.get("prompt") != "probe"]  # not discover()'s
    assert raw["streamed"] and all(b.get("stream") for b, _ in probes)
    assert len(raw["prefill"]) == 2 and all(pt["prompt_tokens"] == 5 for pt in raw["prefill"])  # the usage chunk's count
    heads = [b["prompt"][:8] for b, _ in probes]
    assert len(heads) == 1 + 2 * 2 + 2 * 2 * 2 * (1 + 3) and len(set(heads)) == len(heads), heads
    prefill = [t for b, t in probes if b["max_tokens"] == 1]
    assert len(prefill) == 4 and min(np.diff(prefill)) >= 0.05
    fs[1].bodies.clear()
    raw = asyncio.run(measure_engine(srvs[1].url + "#served/b", stream=False, idle_s=0.0, **kw))
    assert raw["model_id"] == "served/b" and not raw["streamed"] and not any(b.get("stream") for b in fs[1].bodies)
    with pytest.raises(RuntimeError, match=r"lists \['served/c'\], not 'served/x'"):
        asyncio.run(measure_engine(srvs[2].url + "#served/x", **kw))


def test_serve_without_a_profile_profiles_the_engines_at_start(fakes):
    """`bes-serve pool=engines pool.urls=...` with no pool.profile: a quick profile of each
    model's first engine, names from the mapping's keys (or the engines' model ids)."""
    from bes_jax.serving.engines.gateway import build_engine_service
    fs, srvs = fakes
    base = {"router": {"name": "greedy"}, "serve": {"request_timeout_s": 5.0}}
    svc = build_engine_service({**base, "pool": {"kind": "engines", "urls": {
        "tiny": srvs[0].url, "mid": [srvs[1].url, srvs[3].url], "big": srvs[2].url}}})
    assert svc.profile.model_names == ["tiny", "mid", "big"] and svc.profile.supports_continuous
    assert svc.replica_counts == (1, 2, 1) and "PLACEHOLDER" in svc.profile.provenance["quality"]
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['warmup'\]"):
        build_engine_service({**base, "pool": {"kind": "engines", "urls": [srvs[0].url], "warmup": True}})
