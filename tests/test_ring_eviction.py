"""The outcome ring is a record, not the simulation: with a small ring (training's default
2048 slots) a request can stay in the system for more than ``outcome_slots`` later decisions
under deep overload (most arrivals rejected at once), and its slot is then reused. The
simulated dynamics must not depend on that: per-step rewards and queues equal those of a run
whose ring holds every decision; the reused slot holds the newer decision's exact record (the
older request's completion never writes over it); and every overwrite of an unresolved
decision is counted in ``state.evicted`` (docs/simulator.md "Outcome ring").
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bes_jax import workloads as W
from bes_jax.env import make_serving_env
from bes_jax.profile import profile_from_dict
from bes_jax.sim_config import SimConfig
from conftest import continuous_profile_dict, synthetic_profile_dict

N = 1200
H_SMALL = 96


@pytest.fixture(scope="module", autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _run(env, params, actions, key):
    obs, st = env.reset(key, params)

    def body(st, xs):
        k, a = xs
        _, st, r, _, _ = env.step(k, st, a, params)
        return st, (r, st.queue_len, env.running(st))

    keys = jax.random.split(jax.random.fold_in(key, 1), actions.shape[0])
    st, trace = jax.jit(lambda s: jax.lax.scan(body, s, (keys, actions)))(st)
    return st, trace, env.drain(st, params)


CASES = {
    "request": (lambda: profile_from_dict(synthetic_profile_dict(), "synthetic.json"),
                SimConfig(batching="request", queue_capacity=8, placement="exclusive", n_gpus=1), 400.0),
    "continuous": (lambda: profile_from_dict(continuous_profile_dict(), "continuous.json"),
                   SimConfig(batching="continuous", queue_capacity=8, max_num_seqs=4, max_num_batched_tokens=64,
                             placement="exclusive", n_gpus=1), 4000.0),
    "continuous-concurrent-drop": (lambda: profile_from_dict(continuous_profile_dict(), "continuous.json"),
                                   SimConfig(batching="continuous", queue_capacity=8, max_num_seqs=4,
                                             max_num_batched_tokens=64, placement="concurrent", n_gpus=1,
                                             drop_expired=True), 4000.0),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_small_ring_changes_nothing_but_the_record(name):
    make_profile, base, rate = CASES[name]
    profile = make_profile()
    small = make_serving_env(profile, dataclasses.replace(base, outcome_slots=H_SMALL, episode_len=10 * N))
    big = make_serving_env(profile, dataclasses.replace(base, outcome_slots=N + 2, episode_len=10 * N))
    params_s = small.make_params(W.poisson(rate, n_tasks=profile.n_tasks))
    params_b = big.make_params(W.poisson(rate, n_tasks=profile.n_tasks))
    rng = np.random.default_rng(0)
    # mostly the slowest model (long-lived requests), some of the others
    actions = jnp.asarray(np.where(rng.random(N) < 0.8, profile.n_models - 1, rng.integers(0, profile.n_models, N)),
                          jnp.int32)
    key = jax.random.PRNGKey(3)
    st_s, tr_s, end_s = _run(small, params_s, actions, key)
    st_b, tr_b, end_b = _run(big, params_b, actions, key)

    # the dynamics: identical step by step
    for a, b in zip(tr_s, tr_b):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    ob, os_ = end_b.outcomes, end_s.outcomes
    arrival, finish = np.asarray(ob.arrival), np.asarray(ob.finish)
    assert np.all(np.asarray(ob.decision)[:N] == np.arange(N)), "the big ring holds every decision"
    # decision d is overwritten when d + H is routed (its clock: d + H's arrival); it is lost
    # if not resolved by then (finish still unknown, or later than that clock)
    d = np.arange(N - H_SMALL)
    expected = int(np.sum(~(finish[d] <= arrival[d + H_SMALL])))
    assert expected >= 20, f"the case must overload the small ring (only {expected} evictions)"
    assert int(st_s.evicted) == expected
    assert int(end_s.evicted) == expected
    assert int(st_b.evicted) == 0

    # every slot of the small ring holds its newest decision's exact record
    ids = np.asarray(os_.decision)
    assert np.all(ids >= N - H_SMALL)
    for field in dataclasses.fields(ob):
        a = np.asarray(getattr(os_, field.name))
        b = np.asarray(getattr(ob, field.name))[ids]
        np.testing.assert_array_equal(a, b, err_msg=f"{name}: outcome field {field.name}")
