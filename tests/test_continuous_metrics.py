"""Continuous-batching metrics (docs/simulator.md "Metrics") on a hand-built outcome record;
request-mode metrics and reports keep their keys."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from bes_jax import workloads as W
from bes_jax.env import DROPPED, EMPTY, REJECTED, RUNNING, SERVED, ContinuousOutcomes, ContinuousServingEnv, Outcomes
from bes_jax.eval.metrics import CONTINUOUS_METRICS, SCALAR_METRICS, metrics_kwargs, run_metrics, to_report
from bes_jax.profile import profile_from_dict
from bes_jax.sim_config import SimConfig
from conftest import continuous_profile_dict

nan = np.nan
# decision: arrival, task, status, start, first_token, finish, prompt, output
ROWS = [
    (0.0, 0, SERVED, 0.0, 1.0, 3.0, 10, 3),     # ttft 1, e2e 3, tpot 1
    (1.0, 1, SERVED, 2.0, 4.0, 4.0, 20, 1),     # ttft 3, e2e 3, no tpot (o = 1)
    (2.0, 0, SERVED, 2.0, 2.5, 6.0, 4, 8),      # ttft 0.5, e2e 4 (late), tpot 0.5
    (3.0, 0, DROPPED, nan, nan, 5.0, 5, 5),
    (4.0, 1, REJECTED, nan, nan, 4.0, 5, 5),
    (4.0, 0, RUNNING, 4.0, nan, nan, 5, 5),
]
QUALITY = jnp.asarray([[0.5, 0.6], [0.7, 0.8]])
DEADLINE = jnp.asarray([3.5, 10.0])


def outcomes(continuous=True, empty=2):
    a, t, s, st, ft, fi, p, o = (np.asarray(x) for x in zip(*ROWS))
    n = len(ROWS)
    pad = lambda x, v: jnp.asarray(np.concatenate([x, np.full(empty, v, x.dtype)]))
    common = dict(
        decision=pad(np.arange(n, dtype=np.int32), -1), arrival=pad(a.astype(np.float32), nan),
        task=pad(t.astype(np.int32), 0), model=pad(np.zeros(n, np.int32), -1), replica=pad(np.zeros(n, np.int32), -1),
        start=pad(st.astype(np.float32), nan), finish=pad(fi.astype(np.float32), nan),
        reward=pad(np.where(s == SERVED, 0.5, -0.25).astype(np.float32), nan),
        status=pad(s.astype(np.int8), EMPTY))
    if not continuous:
        return Outcomes(**common)
    return ContinuousOutcomes(**common, first_token=pad(ft.astype(np.float32), nan),
                              prompt=pad(p.astype(np.int32), 0), prompt_in=pad(p.astype(np.int32), 0),
                              output=pad(o.astype(np.int32), 0))


def metrics(**kw):
    return run_metrics(outcomes(), QUALITY, DEADLINE, jnp.inf, 2, 10.0, 4, **kw)


def test_hand_worked_continuous_metrics():
    m = metrics(ttft_deadline=jnp.asarray([0.75, jnp.inf]), tpot_deadline=jnp.asarray([jnp.inf, jnp.inf]),
                kv_pool=jnp.asarray(200.0))
    span = 4.0
    want = {
        "ttft_p50": 1.0, "ttft_p90": 2.6, "ttft_p99": 2.96,      # of [0.5, 1, 3], linear interpolation
        "tpot_p50": 0.75, "tpot_p90": 0.95, "tpot_p99": 0.995,   # of [0.5, 1] (o = 1 has none)
        "e2e_p50": 3.0, "e2e_p90": 3.8, "e2e_p99": 3.98, "latency_p50": 3.0,
        "output_tokens_per_s": (3 + 1 + 8) / span,
        "kv_utilisation": (13 * 3 + 21 * 2 + 12 * 4) / (200.0 * span),
        # r0 misses its TTFT deadline, r2 its end-to-end one: only r1 meets every deadline
        "slo_goodput": 1 / span, "availability": 1 / 6,
    }
    for k, v in want.items():
        assert float(m[k]) == pytest.approx(v, rel=1e-6), k
    assert (int(m["n_completed"]), int(m["n_dropped"]), int(m["n_rejected"]), int(m["n_in_system"])) == (3, 1, 1, 1)
    # without TTFT deadlines r0 meets its deadline too
    m = metrics()
    assert float(m["availability"]) == pytest.approx(2 / 6) and float(m["slo_goodput"]) == pytest.approx(2 / span)
    assert np.isnan(float(m["kv_utilisation"]))  # no pool given
    # a TPOT deadline below r0's TPOT (1) but above r2's (0.5) removes r0
    m = metrics(tpot_deadline=jnp.asarray([0.75, 0.75]))
    assert float(m["availability"]) == pytest.approx(1 / 6)


def test_reports_request_mode_unchanged_and_continuous_extended():
    req = run_metrics(outcomes(continuous=False), QUALITY, DEADLINE, jnp.inf, 2, 10.0, 4)
    assert not set(CONTINUOUS_METRICS) & set(req)
    rep = to_report(req, ["a", "b"], 10.0)
    assert [k for k in rep if k not in ("per_model_share", "windows")] == list(SCALAR_METRICS)
    # same request-level numbers from the continuous record (no TTFT/TPOT deadlines given)
    cont = metrics()
    for k in SCALAR_METRICS:
        if k != "n_in_system":  # RUNNING only exists in the continuous record
            assert float(cont[k]) == pytest.approx(float(req[k]), nan_ok=True), k
    rep = to_report(cont, ["a", "b"], 10.0)
    assert set(CONTINUOUS_METRICS) <= set(rep)


def test_metrics_kwargs_from_params():
    prof = profile_from_dict(continuous_profile_dict(), "c.json")
    cfg = SimConfig(batching="continuous", replicas=(1, 2, 0), n_gpus=2, outcome_slots=1024,
                    ttft_deadlines=(0.5, 1.0), deadline_scale=2.0)
    env = ContinuousServingEnv(prof, cfg)
    kw = metrics_kwargs(env.make_params(W.poisson(10.0, n_tasks=2)))
    assert float(kw["kv_pool"]) == 1 * 3000 + 2 * 2000
    np.testing.assert_allclose(np.asarray(kw["ttft_deadline"]), [1.0, 2.0])
    assert np.isinf(np.asarray(kw["tpot_deadline"])).all()
