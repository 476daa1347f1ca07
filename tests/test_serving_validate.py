"""bes-validate: arrivals, the simulator replay and an end-to-end run against a live server."""
from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bes_jax.profile import profile_from_dict
from bes_jax.sim_config import SimConfig


def small_profile(b_max=2):
    lat = np.array([[[0.1, 0.15]], [[0.3, 0.4]]])
    return profile_from_dict({
        "name": "v", "hardware": {"name": "t"},
        "models": [{"name": "a", "params": 1}, {"name": "b", "params": 2}],
        "tasks": [{"name": "t0", "metric": "acc", "deadline_s": 0.5, "prompt_len": 4, "output_len": 1}],
        "B_max": b_max, "latency_s": lat.tolist(), "quality": [[0.5], [0.8]],
        "provenance": {"latency": "test", "quality": "test"}}, "v")


def test_fallback_replay_follows_fifo_batching():
    from bes_jax.serving.validate import REJECTED, SERVED, replay_fallback
    p = small_profile()
    cfg = SimConfig(placement="concurrent", n_gpus=1, queue_capacity=1)
    times = np.array([0.0, 0.01, 0.02, 0.03, 0.5])
    res = replay_fallback(p, cfg, times, np.zeros(5, int), np.zeros(5, int))
    # r0 alone at 0 (0.1 s); r1 queued, r2 rejected (capacity 1); r1 then a batch of one at 0.1;
    # r3 arrives at 0.03: queue full again -> rejected; r4 idle -> alone at 0.5
    assert res["status"].tolist() == [SERVED, SERVED, REJECTED, REJECTED, SERVED]
    np.testing.assert_allclose(res["start"][[0, 1, 4]], [0.0, 0.1, 0.5])
    np.testing.assert_allclose(res["finish"][[0, 1, 4]], [0.1, 0.2, 0.6])
    cfg2 = SimConfig(placement="exclusive", n_gpus=1, queue_capacity=4)
    res = replay_fallback(p, cfg2, np.array([0.0, 0.01, 0.02, 0.03]), np.zeros(4, int), np.array([1, 0, 0, 1]))
    # device busy with model b until 0.3; then model a's batch of 2 (oldest head), then b
    np.testing.assert_allclose(res["start"], [0.0, 0.3, 0.3, 0.45])
    np.testing.assert_allclose(res["finish"], [0.3, 0.45, 0.45, 0.75])


def test_arrivals_and_summary():
    from bes_jax.serving.validate import make_arrivals, prompt_for, summarise
    t, k, src = make_arrivals(2000, 50.0, 4, seed=3)
    assert t[0] == 0 and np.all(np.diff(t) >= 0) and set(np.unique(k)) <= {0, 1, 2, 3}
    assert 40 < len(t) / t[-1] < 60
    assert len(prompt_for("piqa", 37, 5)) == 37
    p = small_profile()
    s = summarise(p, [0.5], np.zeros(3, int), np.array([0, 1, 1]), np.array([True, True, False]),
                  np.array([0.1, 0.7, np.inf]))
    assert s["availability"] == pytest.approx(1 / 3) and s["performance"] == pytest.approx(0.5 / 3)
    assert s["per_model_share"] == {"a": pytest.approx(1 / 3), "b": pytest.approx(2 / 3)}


def test_validate_end_to_end_against_live_server(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    pytest.importorskip("matplotlib")
    from bes_jax.profile import load_profile
    from bes_jax.serving.pool import build_pool
    from bes_jax.serving.server import ServerThread, Service, ServeSettings, create_app
    from bes_jax.serving.validate import validate
    profile = load_profile("tiny-cpu")
    pool = build_pool({"preset": "tiny", "num_threads": 1, "queue_capacity": 16}, profile)
    svc = Service(pool, profile, {"name": "greedy"}, ServeSettings())
    with ServerThread(create_app(svc)) as srv:
        cfg = SimpleNamespace(url=srv.url, n_requests=40, rate=15.0, seed=0, client_timeout_s=30.0,
                              out_dir=str(tmp_path / "v"), get=lambda k, d=None: None)
        rep = validate(cfg)
    assert rep["n_requests"] == 40 and rep["http_status"] == {"200": 40}
    assert rep["live"]["per_model_share"] == rep["sim"]["per_model_share"]
    assert 0 <= rep["live"]["availability"] <= 1 and rep["sim"]["n_served"] == 40
    for f in ("report.md", "report.json", "latency.png", "requests.json"):
        assert (tmp_path / "v" / f).stat().st_size > 0
    c = svc.counters
    assert c.accepted == c.completed + c.failed == 40
