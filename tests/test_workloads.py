"""Workloads inside jit: rates, burstiness, schedules, trace replay, task mixes, vmap."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bes_jax import workloads as W
from conftest import TRACES

KEY = jax.random.PRNGKey(0)


def gaps(wp, n=6000, key=KEY):
    t, tasks = W.sample_arrivals(key, wp, n)
    return np.diff(t), tasks, t


def test_poisson_rate_and_cv():
    g, tasks, _ = gaps(W.poisson(50.0, n_tasks=4))
    assert abs(1 / g.mean() - 50) < 50 * 0.05
    assert abs(g.std() / g.mean() - 1.0) < 0.06
    assert np.allclose(np.bincount(tasks, minlength=4) / tasks.size, 0.25, atol=0.03)


@pytest.mark.parametrize("cv", [0.5, 2.0, 3.0])
def test_gamma_mean_and_cv(cv):
    g, _, _ = gaps(W.gamma(20.0, cv, n_tasks=2), n=20000)
    assert abs(1 / g.mean() - 20) < 20 * 0.06
    assert abs(g.std() / g.mean() - cv) < 0.1 * cv


def test_schedule_follows_its_windows():
    wp = W.schedule([10.0, 100.0], window_s=20.0, n_tasks=2)
    _, _, t = gaps(wp, n=4000)
    counts = np.histogram(t, bins=np.arange(0, 80.1, 20.0))[0]
    np.testing.assert_allclose(counts / 20.0, [10, 100, 10, 100], rtol=0.25)


def test_trace_replay_exact_rescaled_and_wraps():
    times = np.array([0.0, 0.5, 0.7, 2.0, 2.25])
    tasks = np.array([1, 0, 1, 1, 0])
    _, got_tasks, t = gaps(W.trace(times=times, tasks=tasks, n_tasks=2), n=12)
    period = 2.25 + 2.25 / 4
    np.testing.assert_allclose(t[:5], times)
    np.testing.assert_allclose(t[5:10], times + period)
    np.testing.assert_array_equal(got_tasks[:10], np.tile(tasks, 2))
    _, _, t2 = gaps(W.trace(times=times, target_mean_rate=8.0, n_tasks=2), n=5)
    np.testing.assert_allclose(t2, times * (4 / 2.25) / 8.0, rtol=1e-6)


def test_mix_schedule_switches_tasks():
    wp = W.poisson(100.0, n_tasks=2, mix=[[1.0, 0.0], [0.0, 1.0]], mix_window_s=5.0)
    _, tasks, t = gaps(wp, n=2000)
    phase = (np.floor(t / 5.0) % 2).astype(int)
    assert (tasks == phase).mean() > 0.99


def test_vmap_over_workloads_and_determinism():
    wps = W.stack_workloads([W.poisson(5.0, n_tasks=2), W.schedule([1.0, 50.0, 200.0], 3.0, n_tasks=2),
                             W.trace(times=np.arange(7) * 0.1, n_tasks=2)])

    @jax.jit
    def first(key, wp):
        ws, t0, _ = W.workload_init(key, wp)
        ws, t1, _ = W.workload_next(key, ws, wp)
        return t1

    t = jax.vmap(first, in_axes=(None, 0))(KEY, wps)
    assert t.shape == (3,) and np.isclose(float(t[2]), 0.1)
    np.testing.assert_array_equal(np.asarray(jax.vmap(first, in_axes=(None, 0))(KEY, wps)), np.asarray(t))


def test_builder_errors_name_the_argument():
    with pytest.raises(ValueError, match="rates"):
        W.poisson(-1.0, n_tasks=2)
    with pytest.raises(ValueError, match="mix"):
        W.poisson(1.0, n_tasks=2, mix=[0.7, 0.7])
    with pytest.raises(ValueError, match="mix"):
        W.poisson(1.0, n_tasks=3, mix=[0.5, 0.5])
    with pytest.raises(ValueError, match=r"times\[2\]"):
        W.trace(times=[0.0, 1.0, 0.5])


@pytest.mark.skipif(not (TRACES / "maf2019_invitro_500fn_min480-959.csv").exists(), reason="traces absent")
def test_maf_workload_mean_rate_and_time_scale():
    path = TRACES / "maf2019_invitro_500fn_min480-959.csv"
    wp = W.maf(path, target_mean_rate=40.0, time_scale=6.0, minutes=[0, 30], n_tasks=4)
    assert float(wp.window_s) == 10.0 and int(wp.n_windows) == 30
    assert np.isclose(float(np.asarray(wp.rates)[:30].mean()), 40.0)
    _, _, t = gaps(wp, n=6000)
    assert abs(6000 / t[-1] - 40.0) < 40 * 0.1
