"""bes-validate: arrivals, the simulator replay, the verdict, and an end-to-end run against a live
server that passes with the right profile and fails with a wrong one."""
from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bes_jax.profile import profile_from_dict
from bes_jax.sim_config import SimConfig

pytestmark = pytest.mark.serial  # timing: run alone (README), not beside other tests


def small_profile(b_max=2):
    lat = np.array([[[0.1, 0.15]], [[0.3, 0.4]]])
    return profile_from_dict({
        "name": "v", "hardware": {"name": "t"},
        "models": [{"name": "a", "params": 1}, {"name": "b", "params": 2}],
        "tasks": [{"name": "t0", "metric": "acc", "deadline_s": 0.5, "prompt_len": 4, "output_len": 1}],
        "B_max": b_max, "latency_s": lat.tolist(), "quality": [[0.5], [0.8]],
        "provenance": {"latency": "test", "quality": "test"}}, "v")


def test_simulate_replays_fixed_choices_with_fifo_batching():
    from bes_jax.serving.validate import REJECTED, SERVED, simulate
    p = small_profile()
    cfg = SimConfig(placement="concurrent", n_gpus=1, queue_capacity=1)
    times = np.array([0.0, 0.01, 0.02, 0.03, 0.5])
    res, name = simulate(p, cfg, times, np.zeros(5, int), np.zeros(5, int))
    assert name == "bes_jax.reference.simulator.ReferenceSimulator"
    # r0 alone at 0 (0.1 s); r1 queued, r2 rejected (capacity 1); r1 then a batch of one at 0.1;
    # r3 arrives at 0.03: queue full again -> rejected; r4 idle -> alone at 0.5
    assert res["status"].tolist() == [SERVED, SERVED, REJECTED, REJECTED, SERVED]
    np.testing.assert_allclose(res["start"][[0, 1, 4]], [0.0, 0.1, 0.5])
    np.testing.assert_allclose(res["finish"][[0, 1, 4]], [0.1, 0.2, 0.6])
    cfg2 = SimConfig(placement="exclusive", n_gpus=1, queue_capacity=4)
    res, _ = simulate(p, cfg2, np.array([0.0, 0.01, 0.02, 0.03]), np.zeros(4, int), np.array([1, 0, 0, 1]))
    # device busy with model b until 0.3; then model a's batch of 2 (oldest head), then b
    np.testing.assert_allclose(res["start"], [0.0, 0.3, 0.3, 0.45])
    np.testing.assert_allclose(res["finish"], [0.3, 0.45, 0.45, 0.75])


def test_compare_verdict_against_tolerances():
    from bes_jax.serving.validate import compare
    sim = {"availability": 0.95, "latency_p50": 0.100, "latency_p99": 0.2, "performance": 0.6}
    ok = compare({**sim, "availability": 0.94, "latency_p50": 0.104}, sim)  # -1 point, +4%
    assert ok["passed"] and ok["availability_within_tolerance"] and ok["p50_within_tolerance"]
    assert ok["availability_gap_points"] == pytest.approx(-1.0) and ok["latency_p50_rel"] == pytest.approx(0.04)
    slow = compare({**sim, "latency_p50": 0.106}, sim)  # +6% > 5%
    assert not slow["passed"] and slow["availability_within_tolerance"] and not slow["p50_within_tolerance"]
    worse = compare({**sim, "availability": 0.92}, sim)  # -3 points > 2
    assert not worse["passed"] and not worse["availability_within_tolerance"]
    assert compare({**sim, "availability": 0.92}, sim, {"availability_points": 5.0})["passed"]
    nothing = compare({**sim, "latency_p50": float("nan")}, sim)  # nothing served live: not within
    assert not nothing["passed"]


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


def scaled_profile(profile, factor):
    """The same profile with every latency multiplied by ``factor`` (a deliberately wrong one)."""
    import dataclasses
    return dataclasses.replace(profile, latency=np.asarray(profile.latency) * factor)


#: Tolerances for a 40-request run on a shared CPU. The profile is measured right before the
#: run (a committed one was measured with the cores idle: under other load live batches take
#: 2-5x longer and no profile made elsewhere predicts them); a profile 5x off fails either way.
TEST_TOL = {"availability_points": 15.0, "latency_p50_rel": 0.5}


def test_validate_end_to_end_against_live_server(tmp_path):
    """The whole path with real (tiny) models: load, HTTP, replay, report files, counters."""
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
    assert rep["n_requests"] == 40 and rep["http_status"] == {"200": 40} and rep["sim"]["n_served"] == 40
    C = rep["comparison"]
    assert C["tolerances"] == {"availability_points": 2.0, "latency_p50_rel": 0.05}
    assert C["passed"] == (C["availability_within_tolerance"] and C["p50_within_tolerance"])
    assert ("verdict: PASSED" if C["passed"] else "verdict: FAILED") in (tmp_path / "v" / "report.md").read_text()
    for f in ("report.md", "report.json", "latency.png", "requests.json"):
        assert (tmp_path / "v" / f).stat().st_size > 0
    c = svc.counters
    assert c.accepted == c.completed + c.failed == 40


def scaled_profile(profile, factor):
    """The same profile with every latency multiplied by ``factor`` (a deliberately wrong one)."""
    import dataclasses
    return dataclasses.replace(profile, latency=np.asarray(profile.latency) * factor)


#: looser than bes-validate's 2 points / 5%: on 2 busy cores the worker's wake-up and the
#: hand-off add up to about 10% to a batch (the report's service ratio); a profile 5x off is far
#: outside either way
TEST_TOL = {"availability_points": 5.0, "latency_p50_rel": 0.25}


def test_validate_passes_with_the_right_profile_and_fails_with_a_wrong_one(tmp_path):
    """Live latency and availability within the stated tolerances of the simulator's, and not
    with a profile 5x too slow or too fast.

    The live pool runs through HTTP, its queues, batching and worker threads as always, but each
    batch takes the profile's ``max L[m, t, b]`` (a sleep) instead of a real decode: on a CPU
    shared with other work real batches take 1.4-5x their profile (measured while writing this
    test), which no profile made beforehand predicts; a model that keeps to its profile makes
    the verdict a test of the pool and simulator agreeing, not of how busy the machine is. At
    60 req/s queues build and batches form, so a pool that batched differently from the
    simulator would fail here too.
    """
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("matplotlib")
    import time

    from bes_jax.profile import load_profile
    from bes_jax.serving.pool import build_pool
    from bes_jax.serving.server import ServerThread, Service, ServeSettings, create_app
    from bes_jax.serving.validate import analyse, validate
    profile = load_profile("tiny-cpu")
    task_of = {t.prompt_len: i for i, t in enumerate(profile.tasks)}
    assert len(task_of) == profile.n_tasks  # prompt length tells the task

    def keeps_to_profile(m, prompts, n_out, device_index=0):
        b = len(prompts)
        time.sleep(max(profile.latency[m, task_of[len(p)], b - 1] for p in prompts))
        return [[5] * n_out for _ in prompts]

    pool = build_pool({"preset": "tiny", "num_threads": 1, "queue_capacity": 16}, profile)
    pool.generate = keeps_to_profile
    svc = Service(pool, profile, {"name": "greedy"}, ServeSettings())
    tol = {f"tol_{k}": v for k, v in TEST_TOL.items()}  # as +tol_...= overrides on the command line
    with ServerThread(create_app(svc)) as srv:
        cfg = SimpleNamespace(url=srv.url, n_requests=120, rate=60.0, seed=1, client_timeout_s=30.0,
                              out_dir=str(tmp_path / "v"), get=lambda k, d=None: tol.get(k, d))
        rep = validate(cfg)
        health = httpx.get(f"{srv.url}/healthz", timeout=10).json()
    assert rep["http_status"] == {"200": 120}
    C = rep["comparison"]
    assert C["tolerances"] == TEST_TOL
    assert abs(C["latency_p50_rel"]) <= TEST_TOL["latency_p50_rel"], (C, rep["service_ratio"])
    assert abs(C["availability_gap_points"]) <= TEST_TOL["availability_points"], (C, rep["service_ratio"])
    assert C["passed"] and "verdict: PASSED" in (tmp_path / "v" / "report.md").read_text()

    # the same live requests replayed with a deliberately wrong profile: the verdict is a failure
    rec = json.loads((tmp_path / "v" / "requests.json").read_text())
    again, _ = analyse(profile, health, rec, TEST_TOL)
    assert again["comparison"]["passed"] and again["sim"] == rep["sim"]
    slow, _ = analyse(scaled_profile(profile, 5.0), health, rec, TEST_TOL)
    assert not slow["comparison"]["passed"] and not slow["comparison"]["p50_within_tolerance"]
    assert slow["comparison"]["latency_p50_rel"] < -0.5  # live far faster than the simulator
    # batches 5x longer miss deadlines in the simulator that the live pool met
    assert not slow["comparison"]["availability_within_tolerance"], slow["comparison"]
    fast, _ = analyse(scaled_profile(profile, 1 / 5), health, rec, TEST_TOL)
    assert not fast["comparison"]["passed"] and not fast["comparison"]["p50_within_tolerance"]
    assert fast["comparison"]["latency_p50_rel"] > 1.0  # live far slower than the simulator
