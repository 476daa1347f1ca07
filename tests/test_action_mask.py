"""Replay sampling, and the learner's action mask (`dqn.mask_wait_x`): one rule, applied the same
way in training, by the JAX policy, by an exported policy in JAX (`bes-eval router=policy`) and
by the numpy router that serves it."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bes_jax import workloads as W
from bes_jax.agents.dqn import DQNConfig, make_train
from bes_jax.agents.export import export_policy
from bes_jax.agents.network import WAIT_CAP, wait_mask
from bes_jax.agents.numpy_router import Router as NumpyRouter
from bes_jax.agents.policy import load_policy_router
from bes_jax.env import ServingEnv
from bes_jax.sim_config import SimConfig


def rich_obs(wait, T=4):
    """A rich observation (one-hot, loads, rate, wait / d per model, d) with the given waits."""
    return np.concatenate([np.eye(T)[1], [0.5, 0.2, 1.0], [0.7], wait, [0.3]]).astype(np.float32)


def test_models_waiting_past_the_threshold_are_left_out():
    obs = np.stack([rich_obs([0.2, 0.5, 3.0]), rich_obs([2.0, 5.0, WAIT_CAP]), rich_obs([0.1, 0.9, 0.99]),
                    rich_obs([WAIT_CAP, 4.0, 4.0])])
    # the last two: none below the threshold, so only the soonest start (ties: all of them)
    np.testing.assert_array_equal(np.asarray(wait_mask(jnp.asarray(obs), 4, 3, 1.0)),
                                  [[True, True, False], [True, False, False], [True, True, True], [False, True, True]])
    # a full queue reads as the cap: left out even with a threshold above the cap
    np.testing.assert_array_equal(np.asarray(wait_mask(jnp.asarray(obs[1:2]), 4, 3, 50.0)), [[True, True, False]])


def test_trained_masked_policy_decides_the_same_everywhere(synthetic_profile, tmp_path):
    env = ServingEnv(synthetic_profile, SimConfig(queue_capacity=8, outcome_slots=256, episode_len=100,
                                                  obs_mode="rich", n_gpus=2))
    bank = W.stack_workloads([W.poisson(r, n_tasks=2) for r in (20.0, 200.0, 600.0)])
    base = env.make_params(jax.tree.map(lambda x: x[0], bank))
    cfg = DQNConfig(n_envs=4, iterations=300, chunk_iterations=100, batch_size=32, learning_starts=50,
                    hidden=(16,), mask_wait_x=1.0)
    fns = make_train(cfg, env, base, bank)
    ts = jax.jit(fns.train_chunk)(jax.jit(fns.init)(jax.random.PRNGKey(0)))[0]
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(ts.params))
    # collected actions respect the mask (exploration included)
    o = np.asarray(ts.replay.obs).reshape(-1, env.obs_size)
    a = np.asarray(ts.replay.action).reshape(-1)
    used = np.abs(o).sum(1) > 0
    ok = np.asarray(wait_mask(jnp.asarray(o[used]), env.n_tasks, env.n_models, 1.0))
    assert ok[np.arange(used.sum()), a[used]].all() and (~ok).any()
    out = export_policy(tmp_path / "p", ts.params, ts.obs_stats.mean, ts.obs_stats.var, obs_mode="rich",
                        hidden=cfg.hidden, profile=synthetic_profile, sim_config={}, train_config={},
                        mask_wait_x=cfg.mask_wait_x)
    npr, jr, act = NumpyRouter.load(out), load_policy_router(out, synthetic_profile), fns.greedy_policy(ts.params, ts.obs_stats)
    obs = o[used][:1500]
    jax_a = np.asarray(jax.vmap(lambda x: act(None, x, None, None))(jnp.asarray(obs)))
    exp_a = np.asarray(jax.vmap(lambda x: jr.act(None, x, None, None))(jnp.asarray(obs)))
    np_a = npr.act(obs)
    q = np.where(npr.allowed(obs), npr.q_values(obs), -np.inf)
    top2 = np.sort(q, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-5
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(np_a[clear], jax_a[clear])
    np.testing.assert_array_equal(exp_a[clear], jax_a[clear])
    allowed = npr.allowed(obs)
    assert allowed[np.arange(len(obs)), np_a].all() and allowed[np.arange(len(obs)), exp_a].all()


def test_replay_sampling_flags_unresolved_picks():
    """`jax.random.choice` with probabilities returns an entry of probability 0 a few times per
    million draws; the learner must never train on such an (unrealised, NaN) reward."""
    from bes_jax.agents.dqn import sample_resolved

    ready = jnp.asarray(np.random.default_rng(0).random(32768) < 0.9)
    idx, valid = jax.jit(jax.vmap(lambda k: sample_resolved(k, ready, 128)))(jax.random.split(jax.random.PRNGKey(0), 20000))
    idx, valid = np.asarray(idx), np.asarray(valid)
    np.testing.assert_array_equal(valid, np.asarray(ready)[idx])
    assert (~valid).sum() > 0  # the case happens, and it is flagged
