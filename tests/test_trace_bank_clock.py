"""The clock across episode ends: when the learner switches an environment to another workload
of its bank, the new workload starts at the current clock (never before it), for every kind,
and every decision still resolves exactly once."""
from __future__ import annotations

from functools import partial

import jax
import numpy as np
import pytest

from bes_jax import workloads as W
from bes_jax.agents.dqn import DQNConfig, make_train
from bes_jax.env import ServingEnv, resolved_mask
from bes_jax.env.state import DROPPED, REJECTED, SERVED
from bes_jax.sim_config import SimConfig
from conftest import TRACES

AZURE = TRACES / "AzureLLMInferenceTrace_code.csv"
EPISODE, ITERS, N_ENVS = 50, 300, 8


def _bursty_times(n=3000, seed=0):
    gaps = np.random.default_rng(seed).gamma(0.25, 4.0, n - 1)  # CV 2
    return np.concatenate([[0.0], np.cumsum(gaps)])


def _bank(n_tasks):
    """Trace replays at 20 and 200 req/s (bursty synthetic times, and the Azure code trace when
    ../shared/traces holds it) at several start offsets, and two schedules, padded alike."""
    traces = [_bursty_times()]
    if AZURE.exists():
        traces.append(W.load_trace_times(AZURE)[:3000])
    pad = dict(pad_windows=4, pad_trace=max(t.size for t in traces), pad_mix=1)
    bank = [W.schedule([5.0, 0.0, 80.0, 20.0], 0.5, cv=2.0, n_tasks=n_tasks, start_offset=0.7, **pad),
            W.poisson(60.0, n_tasks=n_tasks, **pad)]
    for times in traces:
        bank += [W.trace(times=times, target_mean_rate=20.0, n_tasks=n_tasks, **pad),
                 W.trace(times=times, target_mean_rate=200.0, n_tasks=n_tasks, **pad),
                 W.trace(times=times, target_mean_rate=200.0, n_tasks=n_tasks, start_offset=3.0, **pad),
                 W.trace(times=times, target_mean_rate=20.0, n_tasks=n_tasks, start_offset=40.0, **pad)]
    return W.stack_workloads(bank)


def _switch_after(first, second, n, m=20):
    """Clock after `n` arrivals of `first`, then the next `m` once `second` is installed."""
    keys = jax.random.split(jax.random.PRNGKey(1), n + m)
    ws, _, _ = W.workload_init(keys[0], first)
    ws = jax.lax.scan(lambda ws, k: (W.workload_next(k, ws, first)[0], None), ws, keys[1:n])[0]
    ws_new = W.workload_restart(ws)
    after = jax.lax.scan(lambda ws, k: W.workload_next(k, ws, second)[:2], ws_new, keys[n:])[1]
    return ws.t, after


@pytest.mark.parametrize("rates", [(20.0, 200.0), (200.0, 20.0)])
def test_a_trace_installed_mid_run_continues_from_the_clock(rates):
    times = _bursty_times()
    a, b = (W.trace(times=times, target_mean_rate=r, n_tasks=2, start_offset=1.5) for r in rates)
    now, after = map(np.asarray, _switch_after(a, b, 500))
    assert now > 2.0
    # exactly the new trace's own first arrivals, shifted to start at the clock
    expect, _ = W.sample_arrivals(0, b, after.size)
    np.testing.assert_allclose(after - now, expect, rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(np.concatenate([[now], after])) >= 0)


def test_a_schedule_installed_mid_run_starts_at_its_own_offset():
    a = W.poisson(20.0, n_tasks=2)
    b = W.schedule([0.0, 50.0], 10.0, n_tasks=2, start_offset=2.0)  # silent for 8 s from its start
    now, after = map(np.asarray, _switch_after(a, b, 500))
    assert after[0] >= now + 8.0 and np.all(np.diff(after) >= 0)


def _run(profile):
    env = ServingEnv(profile, SimConfig(queue_capacity=8, outcome_slots=512, episode_len=EPISODE))
    bank = _bank(profile.n_tasks)
    base = env.make_params(jax.tree.map(lambda x: x[0], bank))
    cfg = DQNConfig(n_envs=N_ENVS, iterations=ITERS, chunk_iterations=1, batch_size=32, learning_starts=50,
                    hidden=(16,), eps_decay_fraction=0.5)
    fns = make_train(cfg, env, base, bank)
    init, chunk = fns.init, fns.train_chunk
    axes = jax.tree.map(lambda _: None, base).replace(workload=jax.tree.map(lambda _: 0, bank))

    @jax.jit
    def run(key):
        ts = init(key)

        def body(ts, _):
            ts, logs = chunk(ts)
            st = ts.env_state
            return ts, (st.now, jax.vmap(resolved_mask)(st), ts.workload_index, logs["realised_reward"][-1])

        ts, trail = jax.lax.scan(body, ts, None, length=ITERS)
        p = base.replace(workload=jax.tree.map(lambda x: x[ts.workload_index], bank))
        return ts, trail, env.drain_batch(ts.env_state, p, axes)

    ts, (now, resolved, index, realised), drained = run(jax.random.PRNGKey(0))
    now0 = np.asarray(ts.env_state.outcomes.arrival[:, :1]).T  # first arrival of each env
    return (np.concatenate([now0, np.asarray(now)]), np.asarray(resolved), np.asarray(index),
            np.asarray(realised), ts.env_state, drained)


def test_training_across_episode_ends_keeps_the_clock_and_resolves_each_decision_once(synthetic_profile):
    now, resolved, index, realised, final, drained = _run(synthetic_profile)

    # the bank was switched several times per environment, trace to trace included
    switched = index[1:] != index[:-1]
    assert switched.sum(0).min() >= 3, switched.sum(0)
    assert (switched & (index[:-1] >= 2) & (index[1:] >= 2)).sum() >= 5  # entries 2.. are traces
    # every inter-arrival gap is >= 0: the clock never runs backwards
    gaps = np.diff(now, axis=0)
    assert gaps.min() >= 0.0, (gaps.min(), np.unravel_index(np.argmin(gaps), gaps.shape))
    o = final.outcomes
    n_dec = ITERS
    np.testing.assert_array_equal(np.asarray(o.decision[:, :n_dec]), np.broadcast_to(np.arange(n_dec), (N_ENVS, n_dec)))
    assert np.all(np.diff(np.asarray(o.arrival[:, :n_dec]), axis=1) >= 0)
    # a decision resolves once: never un-resolved later in training ...
    r = resolved[:, :, :n_dec]
    assert not np.any(r[:-1] & ~r[1:]), "a resolved decision became unresolved (the clock went back)"
    # ... and every one is resolved by the end (during training or when the run is drained)
    status = np.asarray(drained.outcomes.status[:, :n_dec])
    assert np.isin(status, [SERVED, DROPPED, REJECTED]).all()
    became = r[0].sum() + (r[1:] & ~r[:-1]).sum() + (~r[-1]).sum()
    assert became == N_ENVS * n_dec
    # the rewards realised step by step are exactly those of the resolved decisions, once each
    done_reward = np.where(r[-1], np.asarray(o.reward[:, :n_dec]), 0.0).sum()
    np.testing.assert_allclose(realised.sum() * N_ENVS, done_reward, rtol=1e-4, atol=1e-3)
