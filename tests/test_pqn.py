"""PQN: lambda-returns by hand, delayed rewards attached to their own decisions, a probe whose
right answer is known (rewards arrive several decisions late), seeds x learning rates in one
program, checkpoint resume equal to an uninterrupted run, export with the same decisions."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bes_jax import workloads as W
from bes_jax.agents.dqn import DQN, DQNConfig
from bes_jax.agents.export import export_policy
from bes_jax.agents.network import normalize
from bes_jax.agents.numpy_router import Router as NumpyRouter
from bes_jax.agents.policy import load_policy_router
from bes_jax.agents.pqn import PQN, PQNConfig, lambda_returns, outcome_rewards
from bes_jax.agents.trainer import run_training
from bes_jax.env import ServingEnv
from bes_jax.profile import profile_from_dict
from bes_jax.sim_config import SimConfig
from conftest import synthetic_profile_dict


def test_lambda_returns_by_hand():
    g, lam = 0.5, 0.8
    r = jnp.array([[1.0], [2.0], [0.0], [4.0]])
    ok = jnp.array([[True], [True], [False], [True]])   # decision 2's reward is not known yet
    done = jnp.array([[False], [True], [False], [False]])  # decision 1 ended an episode (time limit)
    q = jnp.array([[10.0], [20.0], [30.0], [40.0]])      # max_a Q(s_{t+1}, a)
    got = np.asarray(lambda_returns(r, ok, done, q, g, lam))[:, 0]
    G3 = 4.0 + g * 40.0                       # last decision: bootstrap only
    G2 = 0.0 + g * ((1 - lam) * 30.0 + lam * G3)   # (unresolved: weighs 0 in the loss)
    G1 = 2.0 + g * 20.0                       # episode ended: bootstrap, no lambda through the end
    G0 = 1.0 + g * ((1 - lam) * 10.0 + lam * G1)
    np.testing.assert_allclose(got, [G0, G1, G2, G3], rtol=1e-6)
    # lambda is cut before an unresolved decision: a decision followed by one whose reward is unknown bootstraps
    got = np.asarray(lambda_returns(r, ok.at[1].set(False), done.at[1].set(False), q, g, lam))[:, 0]
    assert got[0] == pytest.approx(1.0 + g * 10.0)


def _probe_profile():
    """Every model takes the same 0.3 s (any batch size) and meets every deadline, so the best
    model is the most accurate one on every task, whatever the load: the known answer."""
    d = synthetic_profile_dict()
    lat = np.full_like(np.asarray(d["latency_s"]), 0.3)
    d["latency_s"] = lat.tolist()
    for t in d["tasks"]:
        t["deadline_s"] = 30.0
    return profile_from_dict(d, "probe.json")


PROBE = dict(n_envs=64, iterations=1536, chunk_iterations=512, rollout_len=16, delay_rollouts=3, minibatches=4, epochs=1,
             hidden=(32, 32), lr=3e-3, gamma=0.5, lam=0.65, eps_decay_fraction=0.5)


@pytest.fixture(scope="module")
def probe():
    prof = _probe_profile()
    env = ServingEnv(prof, SimConfig(queue_capacity=16, outcome_slots=256, episode_len=200))
    bank = W.stack_workloads([W.poisson(20.0, n_tasks=prof.n_tasks)])  # ~6 arrivals per service time
    base = env.make_params(jax.tree.map(lambda x: x[0], bank))
    learner = PQN(PQNConfig(**PROBE), env, base, bank)
    ts, logs = jax.jit(learner.train)(jax.random.PRNGKey(0))
    return prof, env, base, bank, learner, ts, logs


def test_rewards_are_delayed_and_attached_to_their_own_decision(probe):
    prof, env, base, bank, learner, ts, logs = probe
    o = jax.tree.map(np.asarray, ts.env_state.outcomes)
    # the probe's rewards are delayed: a request resolves several decisions after it was routed
    n0 = 5
    done = (o.status[n0] == 2) & (o.finish[n0] <= float(ts.env_state.now[n0]))
    arr = np.sort(o.arrival[n0][o.decision[n0] >= 0])
    later = np.searchsorted(arr, o.finish[n0][done]) - np.searchsorted(arr, o.arrival[n0][done], side="right")
    assert later.mean() >= 3, later.mean()
    # the rollout about to be trained on (the oldest of the ring): each resolved reward is its own decision's
    slot = int(ts.n_rollouts) % learner.cfg.delay_rollouts
    ro = jax.tree.map(lambda x: np.asarray(x[slot]), ts.rollouts)
    reward, resolved = map(np.asarray, outcome_rewards(ts.env_state, jnp.asarray(ro.decision)))
    assert resolved.mean() > 0.9
    H = env.slots
    n = np.broadcast_to(np.arange(ro.decision.shape[1]), ro.decision.shape)
    s = ro.decision % H
    np.testing.assert_array_equal(o.decision[n, s][resolved], ro.decision[resolved])
    np.testing.assert_array_equal(o.model[n, s][resolved], ro.action[resolved])   # the action taken
    np.testing.assert_array_equal(o.task[n, s][resolved], ro.obs[..., :env.n_tasks].argmax(-1)[resolved])
    q = np.asarray(base.quality)[ro.action, ro.obs[..., :env.n_tasks].argmax(-1)]
    np.testing.assert_allclose(reward[resolved], q[resolved], rtol=1e-6)  # never late: reward = quality
    assert (reward[~resolved] == 0).all()
    assert np.nanmin(np.asarray(logs["frac_resolved"])) > 0.9


def test_probe_learns_the_known_best_model_and_q_ordering(probe):
    prof, env, base, bank, learner, ts, logs = probe
    slot = int(ts.n_rollouts) % learner.cfg.delay_rollouts
    obs = jnp.asarray(np.asarray(ts.rollouts.obs[slot]).reshape(-1, env.obs_size))
    q = np.asarray(learner.network.apply(ts.params, normalize(jnp.asarray(obs), ts.obs_stats.mean, ts.obs_stats.var)))
    task = np.asarray(obs[:, :env.n_tasks]).argmax(-1)
    quality = np.asarray(prof.quality)
    for t in np.unique(task):
        order = np.argsort(quality[:, t])
        qt = q[task == t]
        assert (qt.argmax(1) == order[-1]).mean() > 0.98, (t, qt[:5])
        # Q increases with quality, and the gap tracks the immediate reward gap (same future)
        assert (np.diff(qt[:, order], axis=1) > 0).mean() > 0.95
        gap = (qt[:, order[-1]] - qt[:, order[0]]).mean()
        assert gap == pytest.approx(quality[order[-1], t] - quality[order[0], t], abs=0.08)


def test_seeds_and_learning_rates_vmap_in_one_program(probe):
    prof, env, base, bank, _, _, _ = probe
    keys = jnp.stack([jax.random.PRNGKey(0), jax.random.PRNGKey(1)] * 2)
    lrs = jnp.array([1e-3, 1e-3, 1e-2, 1e-2])
    pqn = PQN(PQNConfig(**{**PROBE, "n_envs": 16, "iterations": 64, "chunk_iterations": 64, "minibatches": 2}),
              env, base, bank)
    dqn = DQN(DQNConfig(n_envs=8, iterations=40, chunk_iterations=40, batch_size=16, learning_starts=8, hidden=(8,)),
              env, base, bank)
    for learner in (pqn, dqn):
        f = jax.jit(jax.vmap(learner.train))
        ts, _ = f(keys, {"lr": lrs})
        assert f._cache_size() == 1
        np.testing.assert_allclose(np.asarray(ts.hp["lr"]), np.asarray(lrs))
        k = np.asarray(jax.tree.leaves(ts.params)[0]).reshape(4, -1)
        assert not np.allclose(k[0], k[2]) and not np.allclose(k[1], k[3])  # the lr changes the result
        assert not np.allclose(k[0], k[1])                                  # so does the seed


def test_resume_equals_uninterrupted_and_export_makes_the_same_decisions(probe, tmp_path):
    prof, env, base, bank, _, ts_probe, _ = probe
    learner = PQN(PQNConfig(**{**PROBE, "n_envs": 16, "iterations": 96, "chunk_iterations": 32, "minibatches": 2}),
                  env, base, bank)
    key, fp, quiet = jax.random.PRNGKey(5), {"test": "pqn"}, (lambda *_: None)
    full, _ = run_training(learner.init, learner.train_chunk, 3, key, tmp_path / "a", fingerprint=fp, log=quiet)
    run_training(learner.init, learner.train_chunk, 1, key, tmp_path / "b", fingerprint=fp, log=quiet)
    resumed, hist = run_training(learner.init, learner.train_chunk, 3, key, tmp_path / "b", fingerprint=fp, log=quiet)
    assert [h["chunk"] for h in hist] == [0, 1, 2]
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b, equal_nan=True)), full, resumed)
    assert all(jax.tree.leaves(same))
    assert jax.tree.structure(full) == jax.tree.structure(resumed)

    # export the probe's trained LayerNorm network: numpy and JAX routers decide as the learner does
    ts = ts_probe
    out = export_policy(tmp_path / "policy", ts.params, ts.obs_stats.mean, ts.obs_stats.var, obs_mode=env.cfg.obs_mode,
                        hidden=PROBE["hidden"], profile=prof, sim_config={}, train_config={}, layer_norm=True)
    npr, jr = NumpyRouter.load(out), load_policy_router(out, prof)
    act = learner.greedy_policy(ts.params, ts.obs_stats)
    obs = np.asarray(ts.rollouts.obs).reshape(-1, env.obs_size)[:3000]
    obs = obs + np.random.default_rng(0).normal(0, 0.3, obs.shape).astype(np.float32)
    jax_a = np.asarray(jax.vmap(lambda o: act(None, o, None, None))(jnp.asarray(obs)))
    exp_a = np.asarray(jax.vmap(lambda o: jr.act(None, o, None, None))(jnp.asarray(obs)))
    np_q = npr.q_values(obs)
    top2 = np.sort(np_q, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-4
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(npr.act(obs)[clear], jax_a[clear])
    np.testing.assert_array_equal(exp_a[clear], jax_a[clear])
    jq = np.asarray(learner.network.apply(ts.params, normalize(jnp.asarray(obs), ts.obs_stats.mean, ts.obs_stats.var)))
    np.testing.assert_allclose(np_q, jq, rtol=1e-4, atol=1e-4)
