"""Workloads inside jit: rates, burstiness, schedules, trace replay, task mixes, vmap.

Every workload here uses the same padding (PADS) and every `sample_arrivals` call the same
`N`, so the scan is compiled once for the module.
"""
from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bes_jax import workloads as W
from conftest import TRACES

KEY = jax.random.PRNGKey(0)
N = 20000
PADS = dict(pad_windows=4, pad_trace=8, pad_mix=2)
MAF = TRACES / "maf2019_invitro_500fn_min480-959.csv"
AZURE = TRACES / "AzureLLMInferenceTrace_code.csv"


def arrivals(wp, key=KEY):
    return W.sample_arrivals(key, wp, N)


@contextlib.contextmanager
def x64():
    if hasattr(jax, "enable_x64"):
        with jax.enable_x64(True):
            yield
    else:  # pragma: no cover - older/newer spelling
        old = jax.config.jax_enable_x64
        jax.config.update("jax_enable_x64", True)
        try:
            yield
        finally:
            jax.config.update("jax_enable_x64", old)


def test_gamma_sampler_mean_and_cv():
    shapes = jnp.asarray([0.05, 1 / 9, 0.25, 0.7, 1.0, 4.0, 25.0])
    keys = jax.random.split(KEY, 40000)
    x = np.asarray(jax.jit(jax.vmap(jax.vmap(W.gamma_unit_mean, (0, None)), (None, 0)))(keys, shapes), np.float64)
    assert np.isfinite(x).all() and (x >= 0).all()
    for s, row in zip(np.asarray(shapes), x):
        cv = 1 / np.sqrt(s)
        assert abs(row.mean() - 1) < 5 * cv / np.sqrt(row.size) + 0.01, (s, row.mean())
        assert abs(row.std() / row.mean() - cv) < 0.08 * cv, (s, row.std() / row.mean())


def test_poisson_rate_cv_and_uniform_tasks():
    t, tasks = arrivals(W.poisson(50.0, n_tasks=2, **PADS))
    g = np.diff(t)
    assert t[0] > 0 and (g >= 0).all()
    assert abs(1 / g.mean() - 50) < 50 * 5 / np.sqrt(N)
    assert abs(g.std() / g.mean() - 1.0) < 0.04
    np.testing.assert_allclose(np.bincount(tasks, minlength=2) / N, 0.5, atol=0.015)


@pytest.mark.parametrize("cv", [0.5, 3.0])
def test_gamma_workload_mean_and_cv(cv):
    t, _ = arrivals(W.gamma(20.0, cv, n_tasks=2, **PADS))
    g = np.diff(t)
    assert abs(1 / g.mean() - 20) < 20 * 5 * cv / np.sqrt(N)
    assert abs(g.std() / g.mean() - cv) < 0.1 * cv


def test_schedule_follows_its_windows_and_offset():
    wp = W.schedule([10.0, 100.0], window_s=20.0, n_tasks=2, **PADS)
    t, _ = arrivals(wp)
    cycles = int(t[-1] // 40) - 1
    counts = np.histogram(t, bins=np.arange(0, 40 * cycles + 1, 20.0))[0].reshape(cycles, 2).sum(0)
    np.testing.assert_allclose(counts / (20.0 * cycles), [10, 100], rtol=0.05)
    # start_offset = 20: the env starts in the 100/s window
    t, _ = arrivals(W.schedule([10.0, 100.0], 20.0, n_tasks=2, start_offset=20.0, **PADS))
    assert abs(np.sum(t < 20.0) / 20.0 - 100) < 20


def test_schedule_zero_rate_windows_do_not_stall():
    t, _ = arrivals(W.schedule([5.0, 0.0, 0.0, 20.0], window_s=10.0, n_tasks=2, **PADS))
    w = (np.floor(t / 10.0) % 4).astype(int)
    assert t[-1] < N / 10 * 40 / 20 * 1.2  # about 250 arrivals per 40 s cycle
    assert np.sum(w == 2) == 0  # reachable only by a 10 s gap at rate 5
    assert np.sum(w == 1) < 0.02 * N  # only gaps that cross from window 0
    np.testing.assert_allclose(np.sum(w == 3) / (t[-1] / 40 * 10), 20, rtol=0.05)


def test_trace_replay_exact_rescaled_offset_and_wraps():
    times = np.array([0.0, 0.5, 0.7, 2.0, 2.25])
    tasks = np.array([1, 0, -1, 1, 0])
    period = 2.25 + 2.25 / 4
    t, got = arrivals(W.trace(times=times, tasks=tasks, n_tasks=2, **PADS))
    f = jnp.result_type(float)
    expect = (times[None, :] + period * np.arange(4)[:, None]).ravel()
    np.testing.assert_allclose(t[:20], expect, rtol=1e-6)
    np.testing.assert_array_equal(t[:5], np.asarray(jnp.asarray(times, f)))  # first lap bit-exact
    np.testing.assert_array_equal(got[:20].reshape(4, 5)[:, [0, 1, 3, 4]], np.tile(tasks[[0, 1, 3, 4]], (4, 1)))
    assert set(got[2::5]) == {0, 1}  # -1 entries are drawn from the mix
    # rescaled to 8 req/s: mean rate (n-1)/span = 4/2.25 becomes 8
    t, _ = arrivals(W.trace(times, target_mean_rate=8.0, n_tasks=2, **PADS))
    np.testing.assert_allclose(t[:5], times * (4 / 2.25) / 8.0, rtol=1e-6)
    assert abs(N / t[-1] - 8.0) < 0.01
    # start offset: the env clock starts at trace time 0.6 (also 0.6 + 3 periods)
    for off in (0.6, 0.6 + 3 * period):
        t, _ = arrivals(W.trace(times, start_offset=off, n_tasks=2, **PADS))
        np.testing.assert_allclose(t[:6], [0.1, 1.4, 1.65, period - 0.6, period - 0.1, period + 0.1], rtol=1e-5)


@pytest.mark.skipif(not AZURE.exists(), reason="../shared/traces absent")
def test_azure_trace_replay_reproduces_rescaled_trace():
    src = W.load_azure_llm_trace(AZURE)["times_s"]
    wp = W.trace(AZURE, target_mean_rate=10.0, n_tasks=3)
    t, tasks = W.sample_arrivals(KEY, wp, N)
    scaled = src * (src.size - 1) / src[-1] / 10.0
    f = jnp.result_type(float)
    np.testing.assert_array_equal(t[:src.size], np.asarray(jnp.asarray(scaled, f), np.float64))
    period = scaled[-1] + scaled[-1] / (src.size - 1)
    np.testing.assert_allclose(t[src.size:2 * src.size], scaled + period, rtol=1e-6)
    assert (np.diff(t) >= 0).all() and set(np.unique(tasks)) == {0, 1, 2}


def test_mix_schedule_switches_tasks():
    wp = W.poisson(100.0, n_tasks=2, mix=[[1.0, 0.0], [0.0, 1.0]], mix_window_s=5.0, **PADS)
    t, tasks = arrivals(wp)
    phase = (np.floor(t / 5.0) % 2).astype(int)
    np.testing.assert_array_equal(tasks, phase)
    wp2 = W.with_task_mix(W.poisson(100.0, n_tasks=2, **PADS), [[0.9, 0.1], [0.2, 0.8]], mix_window_s=5.0, pad_mix=2)
    t, tasks = arrivals(wp2)
    phase = (np.floor(t / 5.0) % 2).astype(int)
    np.testing.assert_allclose([tasks[phase == 0].mean(), tasks[phase == 1].mean()], [0.1, 0.8], atol=0.02)


def _run_steps(key, wp, n=6):
    ws, t0, k0 = W.workload_init(key, wp)

    def body(ws, k):
        ws, t, task = W.workload_next(k, ws, wp)
        return ws, (t, task)

    _, (ts, tasks) = jax.lax.scan(body, ws, jax.random.split(jax.random.fold_in(key, 1), n))
    return jnp.concatenate([t0[None], ts]), jnp.concatenate([k0[None], tasks])


def test_vmap_over_keys_and_params_matches_single_envs():
    wps = W.stack_workloads([W.poisson(5.0, n_tasks=2), W.gamma(50.0, 2.5, n_tasks=2, mix=[0.1, 0.9]),
                             W.schedule([1.0, 50.0, 200.0], 3.0, n_tasks=2, start_offset=4.0),
                             W.trace(times=np.arange(7) * 0.1, tasks=[0, 1, 0, 1, 0, 1, 0], n_tasks=2,
                                     start_offset=0.25)])
    assert wps.rates.shape == (4, 3) and wps.trace_times.shape == (4, 7)
    keys = jax.random.split(KEY, 4)
    run = jax.jit(jax.vmap(_run_steps))
    t, tasks = run(keys, wps)
    for i in range(4):
        ti, ki = jax.jit(_run_steps)(keys[i], jax.tree.map(lambda x: x[i], wps))
        np.testing.assert_allclose(np.asarray(t[i]), np.asarray(ti), rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(tasks[i]), np.asarray(ki))
    # trace 0, 0.1, ..., 0.6 (period 0.7) from 0.25: entries 3..6, then 0..2 of the next lap
    np.testing.assert_allclose(np.asarray(t[3]), [0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(tasks[3]), [1, 0, 1, 0, 0, 1, 0])
    # deterministic for a key, different for another
    np.testing.assert_array_equal(np.asarray(run(keys, wps)[0]), np.asarray(t))
    t2 = run(jax.random.split(jax.random.PRNGKey(1), 4), wps)[0]
    assert not np.allclose(np.asarray(t2[:3]), np.asarray(t[:3]))
    np.testing.assert_allclose(np.asarray(t2[3]), np.asarray(t[3]))  # trace times do not depend on the key


def test_x64_mode_uses_double_precision():
    with x64():
        wp = W.gamma(1e6, 2.0, n_tasks=2)
        assert wp.rates.dtype == jnp.float64 and wp.trace_times.dtype == jnp.float64
        ws, t0, task0 = jax.eval_shape(W.workload_init, KEY, wp)
        ws, t1, task1 = jax.eval_shape(W.workload_next, KEY, ws, wp)
        assert t0.dtype == t1.dtype == ws.t.dtype == jnp.float64 and task0.dtype == task1.dtype == jnp.int32
        t, _ = W.sample_arrivals(KEY, W.trace(times=[0.0, 1e-9, 1e4], n_tasks=1), 3)
        assert t[1] == 1e-9  # lost in float32 next to 1e4; kept in float64


def test_builder_errors_name_the_argument():
    cases = [
        (lambda: W.poisson(-1.0, n_tasks=2), "rate = -1.0"),
        (lambda: W.gamma(1.0, 0.0, n_tasks=2), "cv = 0.0"),
        (lambda: W.schedule([1.0, -2.0], 5.0, n_tasks=2), "rates = [1.0, -2.0]"),
        (lambda: W.schedule([1.0], 0.0, n_tasks=2), "window_s = 0.0"),
        (lambda: W.poisson(1.0, n_tasks=2, mix=[0.7, 0.7]), "mix = [[0.7, 0.7]]: row 0 sums to 1.4"),
        (lambda: W.poisson(1.0, n_tasks=3, mix=[0.5, 0.5]), "n_tasks = 3"),
        (lambda: W.poisson(1.0, n_tasks=2, mix=[1.5, -0.5]), "mix = [[1.5, -0.5]]"),
        (lambda: W.poisson(1.0), "n_tasks = None"),
        (lambda: W.poisson(1.0, n_tasks=2, pad_windows=0), "pad_windows = 0"),
        (lambda: W.schedule([1.0, 2.0, 3.0], 1.0, n_tasks=2, pad_windows=2), "pad_windows = 2"),
        (lambda: W.trace(times=[0.0, 1.0, 0.5], n_tasks=2), "times[2] = 0.5"),
        (lambda: W.trace(times=[0.0, 1.0], tasks=[0], n_tasks=2), "tasks has shape (1,)"),
        (lambda: W.trace(times=[0.0, 1.0], tasks=[0, 2], n_tasks=2), "tasks[1] = 2"),
        (lambda: W.trace(times=[0.0, 1.0], target_mean_rate=-3, n_tasks=2), "target_mean_rate = -3"),
        (lambda: W.maf(counts=[1.0, 2.0], time_scale=0, n_tasks=2), "time_scale = 0"),
        (lambda: W.stack_workloads([W.poisson(1.0, n_tasks=2), W.poisson(1.0, n_tasks=3)]), "numbers of tasks"),
        (lambda: W.sample_workload_family(0, 2, n_tasks=2, kinds=["weird"]), "kinds = ['weird']"),
        (lambda: W.sample_workload_family(0, 2, n_tasks=2, kinds=["gamma"], cv_range=(2, 1)), "cv_range = [2.0, 1.0]"),
    ]
    for fn, text in cases:
        with pytest.raises(ValueError) as e:
            fn()
        assert text in str(e.value), (text, str(e.value))


def test_maf_counts_workload_mean_rate_and_time_scale():
    counts = np.array([100.0, 300.0, 0.0, 200.0])
    wp = W.maf(counts=counts, target_mean_rate=40.0, time_scale=6.0, n_tasks=2, **PADS)
    assert float(wp.window_s) == 10.0 and int(wp.n_windows) == 4
    np.testing.assert_allclose(np.asarray(wp.rates), counts / counts.mean() * 40.0, rtol=1e-6)
    t, _ = arrivals(wp)
    assert abs(N / t[-1] - 40.0) < 40 * 0.05
    w = (np.floor(t / 10.0) % 4).astype(int)
    share = np.bincount(w, minlength=4) / N
    np.testing.assert_allclose(share, [1 / 6, 1 / 2, 0.0, 1 / 3], atol=0.02)


@pytest.mark.skipif(not MAF.exists(), reason="../shared/traces absent")
def test_maf_file_workload():
    wp = W.maf(MAF, target_mean_rate=40.0, time_scale=6.0, minutes=[0, 30], n_tasks=4)
    assert float(wp.window_s) == 10.0 and int(wp.n_windows) == 30
    assert np.isclose(float(np.asarray(wp.rates).mean()), 40.0)
    src = W.load_maf_minute_counts(MAF, minutes=(0, 30))
    np.testing.assert_allclose(np.asarray(wp.rates), src / src.mean() * 40.0, rtol=1e-6)


def test_sample_workload_family():
    counts = np.r_[np.full(20, 100.0), np.full(20, 400.0)]
    kw = dict(n_tasks=3, rate_range=(5.0, 50.0), cv_range=(1.5, 3.0), kinds=("poisson", "gamma", "maf", "trace"),
              maf_counts=counts, maf_slice_minutes=10, time_scale_range=(2.0, 8.0), trace_times=np.arange(6) * 0.3,
              dirichlet_alpha=1.0, mix_prob=0.5, mix_rows=2)
    fam, info = W.sample_workload_family(7, 24, return_info=True, **kw)
    fam2 = W.sample_workload_family(7, 24, **kw)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), fam, fam2)
    assert fam.rates.shape == (24, 10) and fam.mix.shape == (24, 2, 3) and fam.trace_times.shape == (24, 6)
    assert {d["kind"] for d in info} == {"poisson", "gamma", "maf", "trace"}
    assert all(5.0 <= d["rate"] <= 50.0 for d in info)
    assert all(1.5 <= d["cv"] <= 3.0 for d in info if d["kind"] == "gamma")
    assert any(d["mix"] is None for d in info) and any(d["mix"] is not None for d in info)
    np.testing.assert_allclose(np.asarray(fam.mix).sum(-1)[np.asarray(fam.n_mix) == 2], 1.0, rtol=1e-5)
    for i, d in enumerate(info):
        if d["kind"] == "maf":
            r = np.asarray(fam.rates[i])
            assert np.isclose(r.mean(), d["rate"], rtol=1e-5) and np.isclose(float(fam.window_s[i]), 60 / d["time_scale"])
    t, _ = jax.jit(jax.vmap(_run_steps))(jax.random.split(KEY, 24), fam)
    assert np.isfinite(np.asarray(t)).all() and (np.diff(np.asarray(t), axis=1) >= 0).all()
    other = W.sample_workload_family(jax.random.PRNGKey(3), 24, **kw)
    assert not np.array_equal(np.asarray(other.rates), np.asarray(fam.rates))


def test_plot_series_follows_schedule():
    from bes_jax.workloads.plot import maf_rate_series

    counts = np.array([100.0, 400.0, 200.0, 300.0])
    s = maf_rate_series(counts, target_mean_rate=500.0, time_scale=6.0, n_arrivals=N, seed=1)
    assert s["times"][-1] > 40.0  # the 20000 arrivals cover the 4 windows
    np.testing.assert_allclose(s["arrivals_per_s"], s["rates"], rtol=0.06)
