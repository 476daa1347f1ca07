"""The JAX simulator against the independent reference simulator, request by request.

Arrival times and latencies are multiples of 2^-10 s, so float32 (JAX) and float64 (reference)
clocks are both exact and every start/finish must agree to the last bit; rewards to 1e-5.
"""
from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bes_jax import workloads as W
from bes_jax.env import ServingEnv
from bes_jax.profile import profile_from_dict
from bes_jax.reference.simulator import ReferenceSimulator
from bes_jax.routers import greedy_action
from bes_jax.sim_config import SimConfig
from conftest import synthetic_profile_dict

Q = 1.0 / 1024
N = 160


def quantized_profile(seed):
    d = synthetic_profile_dict(n_models=3, n_tasks=2, b_max=4, seed=seed)
    d["latency_s"] = (np.maximum(np.round(np.asarray(d["latency_s"]) / Q), 1) * Q).tolist()
    d["tasks"][0]["deadline_s"] = 0.25
    d["tasks"][1]["deadline_s"] = 0.4
    return profile_from_dict(d, "quantized.json")


def arrivals(rng, kind, n, rate):
    if kind == "poisson":
        gaps = rng.exponential(1.0 / rate, n)
    else:  # bursty: alternating quiet and burst phases
        phase = (np.arange(n) // 20) % 2
        gaps = rng.exponential(np.where(phase == 1, 0.2 / rate, 3.0 / rate))
    times = np.round(np.cumsum(gaps) / Q) * Q
    times -= times[0]  # trace replay starts its clock at the first arrival
    return times, rng.integers(0, 2, n)


def jax_runner(profile, cfg):
    env = ServingEnv(profile, cfg)

    @jax.jit
    def run(params, actions, use_greedy):
        def body(carry, _):
            obs, st = carry
            a = jnp.where(use_greedy, greedy_action(st, params), actions[st.decision])
            nxt, st, _, _, _ = env.step(jax.random.PRNGKey(0), st, a, params)
            return (nxt, st), (a, obs)
        obs, st = env.reset(jax.random.PRNGKey(0), params)
        (obs, st), (acts, seen) = jax.lax.scan(body, (obs, st), None, length=N)
        return env.drain(st, params), acts, seen
    return env, run


STATIC = list(itertools.product(["concurrent", "exclusive"], [False, True], [3, 12]))


@pytest.mark.parametrize("placement,drop_expired,capacity", STATIC)
def test_same_per_request_outcomes(placement, drop_expired, capacity):
    profile = quantized_profile(seed=capacity)
    base = SimConfig(placement=placement, drop_expired=drop_expired, queue_capacity=capacity, n_gpus=2,
                     replicas=(2, 1, 2), outcome_slots=N + 1, episode_len=N, obs_mode="rich", ewma_alpha=0.2,
                     ref_rate=40.0)
    env, run = jax_runner(profile, base)
    rng = np.random.default_rng(hash((placement, drop_expired, capacity)) % 2**32)
    variants = [("hard", "linear", 0.0, 0.0), ("hard", "linear", 0.5, 0.1)]
    if not drop_expired:
        variants += [("soft", "linear", 0.0, 0.0), ("soft", "exp", 0.2, 0.05)]
    checked = 0
    for (kind, decay, penalty, lat_w), wl_kind, policy in itertools.product(
            variants, ["poisson", "bursty"], ["random", "greedy"]):
        cfg = dataclasses.replace(base, deadline_kind=kind, soft_decay=decay, miss_penalty=penalty, latency_weight=lat_w)
        rate = float(rng.choice([8.0, 30.0, 90.0]))
        times, tasks = arrivals(rng, wl_kind, N, rate)
        actions = rng.integers(0, 3, N)
        # reward settings are params: one compiled program serves every variant
        params = ServingEnv(profile, cfg).make_params(W.trace(times=times, tasks=tasks, n_tasks=2))
        st, acts, seen = run(params, jnp.asarray(actions, jnp.int32), policy == "greedy")
        ref = ReferenceSimulator(profile, cfg).run(times, tasks, "greedy" if policy == "greedy" else actions, drain=True)
        o = jax.tree.map(np.asarray, st.outcomes)
        order = np.argsort(o.decision)[-N:]
        ctx = f"{placement} drop={drop_expired} cap={capacity} {kind}/{decay} pen={penalty} lw={lat_w} {wl_kind} {policy}"
        np.testing.assert_array_equal(o.model[order], ref.model, err_msg=ctx)
        np.testing.assert_array_equal(o.status[order], ref.status, err_msg=ctx)
        np.testing.assert_array_equal(o.start[order], ref.start, err_msg=ctx)
        np.testing.assert_array_equal(o.finish[order], ref.finish, err_msg=ctx)
        np.testing.assert_allclose(o.reward[order], ref.reward, rtol=1e-5, atol=1e-6, err_msg=ctx)
        # the observation each decision was made on: one-hot, loads, rate, capped wait / d, d
        np.testing.assert_allclose(np.asarray(seen), ref.observations, rtol=1e-6, atol=1e-6, err_msg=ctx)
        checked += 1
    assert checked == len(variants) * 4


@pytest.mark.parametrize("placement,drop_expired", [("concurrent", False), ("exclusive", True)])
def test_batched_event_loop_matches_reference(placement, drop_expired):
    """`step_batch` over many environments, each with its own bursty arrivals: the event loop
    compacts the (environment, server) pairs that have an event into fewer lanes than pairs,
    and processes several servers of one environment in the same iteration."""
    n_envs, n = 160, 120
    d = synthetic_profile_dict(n_models=3, n_tasks=2, b_max=16, seed=5)
    d["latency_s"] = (np.maximum(np.round(np.asarray(d["latency_s"]) / Q), 1) * Q).tolist()
    d["tasks"][0]["deadline_s"], d["tasks"][1]["deadline_s"] = 0.25, 0.4
    profile = profile_from_dict(d, "quantized.json")
    cfg = SimConfig(placement=placement, drop_expired=drop_expired, queue_capacity=24, n_gpus=2,
                    replicas=(2, 1, 2), outcome_slots=256, episode_len=n)
    env = ServingEnv(profile, cfg)
    assert env.loop_lanes(n_envs) < n_envs * env.n_servers
    rng = np.random.default_rng(11)
    traces = [arrivals(rng, "bursty", n, float(rng.choice([30.0, 90.0, 300.0]))) for _ in range(n_envs)]
    actions = rng.integers(0, 3, (n_envs, n))
    wps = W.stack_workloads([W.trace(times=t, tasks=k, n_tasks=2) for t, k in traces])
    params = env.make_params(W.trace(times=traces[0][0], tasks=traces[0][1], n_tasks=2)).replace(workload=wps)
    axes = jax.tree.map(lambda _: None, params).replace(workload=jax.tree.map(lambda _: 0, wps))

    @jax.jit
    def run(params, actions):
        keys = jax.random.split(jax.random.PRNGKey(0), n_envs)
        _, st = jax.vmap(env.reset, in_axes=(0, axes))(keys, params)

        def body(st, _):
            a = actions[jnp.arange(n_envs), st.decision]
            _, st, _, _, _ = env.step_batch(keys, st, a, params, axes)
            return st, None
        st, _ = jax.lax.scan(body, st, None, length=n)
        return env.drain_batch(st, params, axes)

    o = jax.tree.map(np.asarray, run(params, jnp.asarray(actions, jnp.int32)).outcomes)
    long_queues = 0
    for i, (times, tasks) in enumerate(traces):
        ref = ReferenceSimulator(profile, cfg).run(times, tasks, actions[i], drain=True)
        order = np.argsort(o.decision[i])[-n:]
        for field in ("model", "status", "start", "finish"):
            np.testing.assert_array_equal(getattr(o, field)[i][order], getattr(ref, field), err_msg=f"env {i} {field}")
        np.testing.assert_allclose(o.reward[i][order], ref.reward, rtol=1e-5, atol=1e-6, err_msg=f"env {i}")
        served = o.status[i] == 2
        _, counts = np.unique(np.stack([o.replica[i][served], o.start[i][served]]), axis=1, return_counts=True)
        long_queues += int((counts > 8).sum())
    assert long_queues > 0  # large batches were formed too
