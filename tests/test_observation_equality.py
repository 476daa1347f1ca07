"""One observation everywhere: the JAX simulator's, the reference twin's and the live server's.

For random states (random routing at light, heavy and overloading rates, both placements,
full queues included) the live observation built from a snapshot of the JAX state, with the
live server's rate estimator, equals the JAX observation to 1e-6; the reference twin's is
checked against JAX request by request in test_sim_vs_reference.py.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bes_jax import workloads as W
from bes_jax.env import ServingEnv
from bes_jax.profile import profile_from_dict
from bes_jax.reference.routing_view import WAIT_CAP, Snapshot
from bes_jax.serving.observation import RateEstimator, build_observation, greedy_choice
from bes_jax.sim_config import SimConfig
from conftest import synthetic_profile_dict

N = 300


def live_snapshot(env: ServingEnv, st, params) -> Snapshot:
    """What the live pool's snapshot holds, read off a JAX state."""
    st = jax.tree.map(np.asarray, st)
    now = float(st.now)
    busy = st.busy & (st.free_at > now)
    return Snapshot(now=now, replica_model=np.arange(env.n_replicas) // env.r_max,
                    replica_server=np.asarray(env.server_of), queue_len=st.queue_len,
                    inflight=np.asarray(env.running(jax.tree.map(jnp.asarray, st))),
                    valid=np.asarray(params.replica_valid), server_busy=busy,
                    server_free_at=st.free_at.astype(np.float64), queue_capacity=env.capacity,
                    b_max=env.b_max, n_models=env.n_models)


@pytest.mark.parametrize("placement", ["exclusive", "concurrent"])
def test_live_observation_equals_jax(placement):
    profile = profile_from_dict(synthetic_profile_dict(n_models=3, n_tasks=2, b_max=4, seed=3), "p.json")
    cfg = SimConfig(placement=placement, n_gpus=2, replicas=(2, 1, 2), queue_capacity=6, obs_mode="rich",
                    ewma_alpha=0.1, ref_rate=30.0, outcome_slots=N + 1, episode_len=N)
    env = ServingEnv(profile, cfg)
    rng = np.random.default_rng(0)
    checked_cap = 0
    for rate in (5.0, 60.0, 400.0):
        params = env.make_params(W.poisson(rate, n_tasks=2))
        actions = jnp.asarray(rng.integers(0, 3, N), jnp.int32)

        @jax.jit
        def run(params, actions):
            def body(carry, a):
                obs, st = carry
                nxt, st2, _, _, _ = env.step(jax.random.PRNGKey(1), st, a, params)
                return (nxt, st2), (obs, st)
            obs, st = env.reset(jax.random.PRNGKey(2), params)
            return jax.lax.scan(body, (obs, st), actions)[1]

        obs, states = run(params, actions)
        obs = np.asarray(obs)
        rate_est = RateEstimator(cfg.ewma_alpha, cfg.ref_rate)
        deadlines = np.asarray(params.deadline, np.float64)
        for i in range(N):
            st = jax.tree.map(lambda x: x[i], states)
            snap = live_snapshot(env, st, params)
            task = int(st.task)
            rate_est.observe(snap.now)
            live = build_observation("rich", snap, task, profile.n_tasks, rate_est.normalised_rate,
                                     np.asarray(params.latency, np.float64), float(deadlines[task]),
                                     np.asarray(params.replica_count))
            np.testing.assert_allclose(live, obs[i], rtol=1e-6, atol=1e-6, err_msg=f"{placement} rate {rate} step {i}")
            assert np.isfinite(live).all()
            # greedy on the live view picks what the JAX predictor ranks
            g = greedy_choice(snap, np.asarray(params.latency, np.float64), np.asarray(params.quality, np.float64),
                              task, float(deadlines[task]))
            pred = np.asarray(st.predicted_finish)
            d = deadlines[task]
            meets = pred - snap.now <= d
            expect = int(np.argmax(np.where(meets, profile.quality[:, task], -np.inf))) if meets.any() else int(np.argmin(pred))
            assert g == expect
            checked_cap += int((live[profile.n_tasks + env.n_models + 1:profile.n_tasks + 2 * env.n_models + 1] == WAIT_CAP).any())
    assert checked_cap > 0  # overload reached: some model's wait is capped (full queue or long wait)
