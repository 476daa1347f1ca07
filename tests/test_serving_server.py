"""bes-serve on a real uvicorn (loopback, free port): API, errors, overload, timeouts, crashes,
counters, metrics, the official openai client, the policy router and the Hydra config."""
from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
pytest.importorskip("prometheus_client")

from bes_jax import CONF_DIR  # noqa: E402
from bes_jax.profile import profile_from_dict  # noqa: E402
from bes_jax.serving.pool import Pool  # noqa: E402
from bes_jax.serving.server import ServerThread, Service, ServeSettings, create_app  # noqa: E402

NAMES = ["tiny-s", "tiny-m", "tiny-l"]


def tiny_profile(b_max=4):
    lat = np.array([[0.002, 0.004], [0.006, 0.01], [0.02, 0.04]])[:, :, None] * (1 + 0.3 * np.arange(b_max))
    return profile_from_dict({
        "name": "tiny-test", "hardware": {"name": "test"},
        "models": [{"name": n, "params": 10 ** (5 + i)} for i, n in enumerate(NAMES)],
        "tasks": [{"name": "piqa", "metric": "acc", "deadline_s": 5.0, "prompt_len": 16, "output_len": 2},
                  {"name": "lambada", "metric": "acc", "deadline_s": 5.0, "prompt_len": 24, "output_len": 3}],
        "B_max": b_max, "latency_s": lat.tolist(),
        "quality": [[0.63, 0.38], [0.72, 0.58], [0.76, 0.68]],
        "provenance": {"latency": "test", "quality": "test"}}, "tiny-test")


class Gate:
    """Wraps pool.generate: batches of the gated models wait until released."""

    def __init__(self, pool):
        self.real, self.gated, self.open = pool.generate, set(), threading.Event()
        self.open.set()
        pool.generate = self

    def close(self, *models):
        self.gated = set(models)
        self.open.clear()

    def release(self):
        self.open.set()

    def __call__(self, m, prompts, n_out, device_index=0):
        if m in self.gated:
            assert self.open.wait(30)
        return self.real(m, prompts, n_out, device_index)


@pytest.fixture(scope="module")
def served():
    profile = tiny_profile()
    pool = Pool(NAMES, placement="concurrent", n_gpus=1, queue_capacity=3, b_max=profile.b_max,
                num_threads=1, latency=profile.latency)
    gate = Gate(pool)
    svc = Service(pool, profile, {"name": "greedy"}, ServeSettings(request_timeout_s=20.0))
    with ServerThread(create_app(svc)) as srv:
        with httpx.Client(base_url=srv.url, timeout=30) as client:
            yield svc, srv, client, gate


def post(client, body):
    return client.post("/v1/completions", content=body if isinstance(body, (bytes, str)) else json.dumps(body))


def test_completion_auto_and_explicit(served):
    svc, srv, client, _ = served
    r = post(client, {"model": "auto", "prompt": "Which way is up?", "task": "lambada"})
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["object"] == "text_completion" and d["model"] in NAMES
    assert d["bes"]["task"] == "lambada" and d["bes"]["router"] == "greedy"
    assert d["usage"]["completion_tokens"] == 3  # the task's output length by default
    assert d["bes"]["deadline_met"] is True and d["bes"]["latency_s"] >= d["bes"]["queue_wait_s"] >= 0
    r = post(client, {"model": "tiny-m", "prompt": ["hello"], "max_tokens": 5})
    d = r.json()
    assert r.status_code == 200 and d["model"] == "tiny-m" and d["bes"]["router"] == "explicit"
    assert d["bes"]["task"] == "piqa"  # default task: the profile's first
    assert d["usage"] == {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["default_task"] == "piqa"
    assert client.get("/v1/models").json()["data"][0]["id"] == "auto"


@pytest.mark.parametrize("body,status,param", [
    (b"{not json", 400, None),
    ({"model": "auto", "prompt": "x", "task": "mmlu"}, 400, "task"),
    ({"model": "opt-175b", "prompt": "x"}, 404, "model"),
    ({"model": "auto", "prompt": "x" * 600}, 400, "prompt"),
    ({"model": "auto", "prompt": ""}, 400, "prompt"),
    ({"model": "auto", "prompt": 42}, 400, "prompt"),
    ({"model": "auto", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "auto", "prompt": "x", "max_tokens": "10"}, 400, "max_tokens"),
    ({"model": "auto", "prompt": "x", "max_tokens": 10_000}, 400, "max_tokens"),
    ({"model": "auto", "prompt": "x", "stream": True}, 400, "stream"),
    ([1, 2], 400, None),
])
def test_bad_requests_get_clear_4xx(served, body, status, param):
    _, _, client, _ = served
    r = post(client, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["param"] == param


def test_overload_503_with_retry_after_then_all_answered(served):
    svc, srv, client, gate = served
    gate.close(0)
    try:
        with ThreadPoolExecutor(4) as ex:
            futs = []
            # 4 client threads: a batch of one in flight, then 3 queued (capacity 3); the
            # other 3 requests are sent once the gate opens
            for i in range(4 + 3):
                futs.append(ex.submit(post, client, {"model": "tiny-s", "prompt": f"req {i}"}))
                time.sleep(0.05) if i == 0 else None
            deadline = time.time() + 10
            while svc.pool.queue_lengths()["tiny-s"] < 3 and time.time() < deadline:
                time.sleep(0.02)
            r = post(client, {"model": "tiny-s", "prompt": "one too many"})
            assert r.status_code == 503, r.text
            assert int(r.headers["Retry-After"]) >= 1
            assert r.json()["error"]["code"] == "queue_full"
            gate.release()
            assert [f.result(30).status_code for f in futs] == [200] * 7
    finally:
        gate.release()


def test_timeout_answers_504_and_leaves_the_queue(served):
    svc, srv, client, gate = served
    old = svc.settings.request_timeout_s
    svc.settings.request_timeout_s = 0.4
    gate.close(1)
    try:
        with ThreadPoolExecutor(2) as ex:
            a = ex.submit(post, client, {"model": "tiny-m", "prompt": "first"})
            time.sleep(0.1)
            b = ex.submit(post, client, {"model": "tiny-m", "prompt": "second"})
            ra, rb = a.result(10), b.result(10)
        assert ra.status_code == rb.status_code == 504
        assert svc.pool.queue_lengths()["tiny-m"] == 0  # the queued one was removed
    finally:
        svc.settings.request_timeout_s = old
        gate.release()


def test_openai_client_integration(served):
    openai = pytest.importorskip("openai")
    _, srv, _, _ = served
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0)
    resp = client.completions.create(model="auto", prompt="The capital of France is", max_tokens=4,
                                     extra_body={"task": "piqa"})
    assert resp.model in NAMES and len(resp.choices) == 1 and isinstance(resp.choices[0].text, str)
    assert resp.usage.completion_tokens == 4
    bes = resp.model_extra["bes"]
    assert bes["task"] == "piqa" and bes["model"] == resp.model
    resp = client.completions.create(model="tiny-l", prompt="Hi", max_tokens=2)
    assert resp.model == "tiny-l"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="auto", prompt="Hi", max_tokens=2, extra_body={"task": "nope"})
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="Hi", max_tokens=2)


def test_crash_is_masked_and_queued_requests_answered(served):
    svc, srv, client, gate = served
    gate.close(2)
    try:
        with ThreadPoolExecutor(4) as ex:
            first = ex.submit(post, client, {"model": "tiny-l", "prompt": "in flight"})
            time.sleep(0.2)
            queued = [ex.submit(post, client, {"model": "tiny-l", "prompt": f"queued {i}"}) for i in range(3)]
            deadline = time.time() + 10
            while svc.pool.queue_lengths()["tiny-l"] < 3 and time.time() < deadline:
                time.sleep(0.02)
            svc.pool.inject_fault("tiny-l")  # the next batch (the three queued) crashes
            gate.release()
            assert first.result(10).status_code == 200
            res = [f.result(10) for f in queued]
        assert [r.status_code for r in res] == [503] * 3
        assert {r.json()["error"]["code"] for r in res} == {"worker_failed"}
        assert all(r.json()["bes"]["model"] == "tiny-l" for r in res)
    finally:
        gate.release()
    r = post(client, {"model": "tiny-l", "prompt": "again"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"
    for _ in range(5):  # greedy would pick tiny-l (best quality, generous deadline): masked now
        r = post(client, {"model": "auto", "prompt": "still served?"})
        assert r.status_code == 200 and r.json()["model"] != "tiny-l"
    assert client.get("/healthz").json()["status"] == "degraded"


def test_counters_invariant_and_metrics(served):
    svc, srv, client, _ = served
    c = svc.counters
    assert c.accepted > 0 and c.rejected >= 2 and c.failed >= 5 and c.bad_request >= 10
    assert c.accepted == c.completed + c.failed
    text = client.get("/metrics").text
    vals = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            vals[k] = float(v)
    assert vals["bes_accepted_total"] == vals["bes_completed_total"] + vals["bes_failed_total"]
    assert vals["bes_rejected_total"] == c.rejected
    assert vals['bes_replicas_alive{model="tiny-l"}'] == 0
    assert 'bes_queue_length{model="tiny-s"}' in vals
    assert any(k.startswith("bes_latency_seconds_bucket") for k in vals)
    assert vals['bes_requests_total{model="tiny-m",outcome="timeout"}'] == 2


def write_policy(path, obs_size, n_models=3, prefer=2):
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    k1 = rng.normal(size=(obs_size, 8)).astype(np.float32)
    k2 = np.zeros((8, n_models), np.float32)
    b2 = np.zeros(n_models, np.float32)
    b2[prefer] = 1.0
    np.savez(path / "weights.npz", **{"hidden_0/kernel": k1, "hidden_0/bias": np.zeros(8, np.float32),
                                      "out/kernel": k2, "out/bias": b2})
    meta = {"obs_mode": "rich", "obs_size": obs_size, "hidden": [8],
            "obs_norm": {"mean": [0.0] * obs_size, "var": [1.0] * obs_size},
            "model_names": NAMES, "task_names": ["arc_easy", "piqa", "winogrande", "lambada"],
            "sim_config": {"ewma_alpha": 0.1, "ref_rate": 50.0}}
    (path / "metadata.json").write_text(json.dumps(meta))


def test_hydra_config_policy_router(tmp_path):
    """`bes-serve pool=tiny router=policy router.path=DIR` composes and routes with the policy."""
    hydra = pytest.importorskip("hydra")
    from hydra import compose, initialize_config_dir
    from fastapi.testclient import TestClient

    from bes_jax.serving.server import build_service
    write_policy(tmp_path / "pol", obs_size=4 + 2 * 3 + 2)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="serve", overrides=["pool=tiny", "router=policy",
                                                      f"router.path={tmp_path / 'pol'}", "pool.warmup=false",
                                                      "server.port=0", "pool.executor=thread"])
    assert cfg.server.host == "127.0.0.1" and cfg.pool.placement == "exclusive"
    svc = build_service(cfg)
    assert svc.router.obs_mode == "rich" and svc.rate.alpha == 0.1 and svc.rate.ref_rate == 50.0
    with TestClient(create_app(svc)) as tc:
        r = tc.post("/v1/completions", json={"model": "auto", "prompt": "policy says", "task": "winogrande"})
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "tiny-l" and r.json()["bes"]["router"].startswith("policy:")
    # a policy for other models is refused with a clear message
    bad = tmp_path / "bad"
    write_policy(bad, obs_size=12)
    meta = json.loads((bad / "metadata.json").read_text())
    meta["model_names"] = ["a", "b", "c"]
    (bad / "metadata.json").write_text(json.dumps(meta))
    from bes_jax.serving.routing import make_live_router
    with pytest.raises(ValueError, match="routes models"):
        make_live_router({"name": "policy", "path": str(bad)}, svc.profile, svc.deadlines,
                         svc.pool.replica_counts, svc.rate)
    svc.pool.stop()
