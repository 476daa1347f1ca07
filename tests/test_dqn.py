"""The learner: probe environments with a known answer, exact delayed-reward attachment,
checkpoint resume equal to an uninterrupted run, export round trip."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bes_jax import workloads as W
from bes_jax.agents.dqn import DQNConfig, make_train
from bes_jax.agents.export import export_policy
from bes_jax.agents.numpy_router import PolicyFormatError, Router as NumpyRouter
from bes_jax.agents.policy import load_policy_router
from bes_jax.agents.trainer import run_training
from bes_jax.env import ServingEnv, resolved_mask
from bes_jax.profile import profile_from_dict
from bes_jax.sim_config import SimConfig
from conftest import synthetic_profile_dict

SMALL = dict(n_envs=8, iterations=1200, chunk_iterations=400, batch_size=64, learning_starts=200,
             hidden=(32, 32), lr=3e-3, gamma=0.5, eps_decay_fraction=0.5)


def _trained(profile, rate, cfg=SimConfig(queue_capacity=8, outcome_slots=256, episode_len=200), **dqn):
    env = ServingEnv(profile, cfg)
    bank = W.stack_workloads([W.poisson(rate, n_tasks=profile.n_tasks)])
    base = env.make_params(jax.tree.map(lambda x: x[0], bank))
    fns = make_train(DQNConfig(**{**SMALL, **dqn}), env, base, bank)
    ts, _ = jax.jit(fns.train)(jax.random.PRNGKey(0))
    return env, base, ts, fns.greedy_policy


def _choices(env, base, ts, policy, n=200, counts=False):
    """The policy's choices per task along its own rollout at the trained load (in distribution)."""
    act = policy(ts.params, ts.obs_stats)

    @jax.jit
    def rollout(key):
        obs, st = env.reset(key, base)

        def body(carry, k):
            obs, st = carry
            a = act(None, obs, st, base)
            task = st.task
            obs, st, *_ = env.step(k, st, a, base)
            return (obs, st), (task, a)
        return jax.lax.scan(body, (obs, st), jax.random.split(key, n))[1]

    tasks, actions = map(np.asarray, rollout(jax.random.PRNGKey(123)))
    if counts:
        return {int(t): np.bincount(actions[20:][tasks[20:] == t], minlength=env.n_models) for t in np.unique(tasks)}
    out = {}
    for t, a in zip(tasks[20:], actions[20:]):
        out.setdefault(int(t), set()).add(int(a))
    return out


def test_no_load_means_the_best_model():
    prof = profile_from_dict(synthetic_profile_dict(), "probe.json")
    env, base, ts, policy = _trained(prof, rate=0.5)
    choices = _choices(env, base, ts, policy)
    best = int(np.argmax(prof.quality[:, 0]))
    assert choices and all(c == {best} for c in choices.values()), choices


def test_a_model_that_always_misses_is_never_chosen():
    d = synthetic_profile_dict()
    d["latency_s"][2] = (np.asarray(d["latency_s"][2]) + 10.0).tolist()  # far beyond every deadline
    prof = profile_from_dict(d, "probe.json")
    env, base, ts, policy = _trained(prof, rate=0.5)
    choices = _choices(env, base, ts, policy)
    assert all(2 not in c for c in choices.values()), choices
    assert all(c == {1} for c in choices.values()), choices  # the best model that makes it


def test_a_task_where_the_small_model_is_as_good_gets_the_small_model():
    d = synthetic_profile_dict()
    q = np.asarray(d["quality"])
    q[:, 1] = 0.7  # every model is equally good on task 1
    d["quality"] = q.tolist()
    prof = profile_from_dict(d, "probe.json")
    # a latency term breaks the quality tie: reward gap about 0.065 on either task
    cfg = SimConfig(queue_capacity=8, outcome_slots=256, episode_len=200, latency_weight=0.2)
    env, base, ts, policy = _trained(prof, rate=0.5, cfg=cfg, iterations=2000)
    counts = _choices(env, base, ts, policy, counts=True)
    assert counts[1][2] == 0 and counts[1][0] >= 0.8 * counts[1].sum(), counts  # the small model
    assert counts[0][2] >= 0.8 * counts[0].sum(), counts  # on the other task quality still wins


@pytest.fixture(scope="module")
def short_run(synthetic_profile):
    env = ServingEnv(synthetic_profile, SimConfig(queue_capacity=8, outcome_slots=256, episode_len=100, obs_mode="rich"))
    bank = W.stack_workloads([W.poisson(r, n_tasks=2) for r in (20.0, 80.0, 200.0)])
    base = env.make_params(jax.tree.map(lambda x: x[0], bank))
    cfg = DQNConfig(n_envs=4, iterations=300, chunk_iterations=100, batch_size=32, learning_starts=50, hidden=(16,))
    return env, base, bank, cfg, make_train(cfg, env, base, bank)


def test_delayed_rewards_attach_to_their_own_decision(short_run):
    env, base, bank, cfg, fns = short_run
    ts = jax.jit(fns.train_chunk)(jax.jit(fns.init)(jax.random.PRNGKey(1)))[0]
    ready = np.asarray(jax.vmap(resolved_mask)(ts.env_state))
    o = jax.tree.map(np.asarray, ts.env_state.outcomes)
    assert ready.sum() > 100
    # the action stored in each replay slot is the model the simulator recorded for that decision
    np.testing.assert_array_equal(np.asarray(ts.replay.action)[ready], o.model[ready])
    # the stored observation's task one-hot is the task the simulator recorded
    T = env.n_tasks
    np.testing.assert_array_equal(np.asarray(ts.replay.obs)[..., :T].argmax(-1)[ready], o.task[ready])
    # realised rewards are finite; unrealised ones are not yet known
    assert np.isfinite(o.reward[ready]).all()
    used = o.decision >= 0
    pending = used & ~ready & (o.status == 1)
    assert np.isnan(o.reward[pending]).all()


def test_resume_equals_uninterrupted(short_run, tmp_path):
    env, base, bank, cfg, fns = short_run
    init, chunk = fns.init, fns.train_chunk
    key = jax.random.PRNGKey(5)
    fp = {"test": 1}
    full, _ = run_training(init, chunk, 3, key, tmp_path / "a", fingerprint=fp, log=lambda *_: None)
    run_training(init, chunk, 1, key, tmp_path / "b", fingerprint=fp, log=lambda *_: None)  # "killed" after 1 chunk
    resumed, hist = run_training(init, chunk, 3, key, tmp_path / "b", fingerprint=fp, log=lambda *_: None)
    assert [h["chunk"] for h in hist] == [0, 1, 2]
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b, equal_nan=True)), full, resumed)
    assert all(jax.tree.leaves(same))
    from bes_jax.agents.trainer import CheckpointError
    with pytest.raises(CheckpointError, match="fingerprint"):
        run_training(init, chunk, 3, key, tmp_path / "b", fingerprint={"test": 2}, log=lambda *_: None)


def test_export_round_trip_makes_the_same_decisions(short_run, tmp_path, synthetic_profile):
    env, base, bank, cfg, fns = short_run
    policy = fns.greedy_policy
    ts = jax.jit(fns.train_chunk)(jax.jit(fns.init)(jax.random.PRNGKey(2)))[0]
    out = export_policy(tmp_path / "policy", ts.params, ts.obs_stats.mean, ts.obs_stats.var, obs_mode="rich",
                        hidden=cfg.hidden, profile=synthetic_profile, sim_config={}, train_config={})
    npr = NumpyRouter.load(out)
    jr = load_policy_router(out, synthetic_profile)
    act = policy(ts.params, ts.obs_stats)
    obs = np.asarray(ts.replay.obs).reshape(-1, env.obs_size)[:2000]
    obs = obs + np.random.default_rng(0).normal(0, 0.3, obs.shape).astype(np.float32)
    jax_a = np.asarray(jax.vmap(lambda o: act(None, o, None, None))(jnp.asarray(obs)))
    exp_a = np.asarray(jax.vmap(lambda o: jr.act(None, o, None, None))(jnp.asarray(obs)))
    np_a = npr.act(obs)
    q = npr.q_values(obs)
    top2 = np.sort(q, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-5  # float ties may break either way
    np.testing.assert_array_equal(np_a[clear], jax_a[clear])
    np.testing.assert_array_equal(exp_a[clear], jax_a[clear])
    assert clear.mean() > 0.99
    import subprocess, sys
    code = f"import sys; from bes_jax.agents.numpy_router import Router; Router.load({str(out)!r}); print('jax' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    (out / "metadata.json").write_text("{")
    with pytest.raises(PolicyFormatError, match="metadata.json"):
        NumpyRouter.load(out)


def test_trained_over_a_range_of_deadlines_the_policy_follows_the_deadline():
    """A deadline bank: at the tight deadlines the large model always misses, at the loose ones
    it is the best choice; one policy must tell them apart from its observation."""
    prof = profile_from_dict(synthetic_profile_dict(), "probe.json")
    env = ServingEnv(prof, SimConfig(queue_capacity=8, outcome_slots=256, episode_len=200, obs_mode="rich"))
    bank = W.stack_workloads([W.poisson(0.5, n_tasks=prof.n_tasks)] * 2)
    base = env.make_params(jax.tree.map(lambda x: x[0], bank))
    tight, loose = base.deadline * 0.25, base.deadline
    assert (prof.latency[2, :, 0] > np.asarray(tight)).all() and (prof.latency[1, :, 0] < np.asarray(tight)).all()
    fns = make_train(DQNConfig(**SMALL), env, base, bank, jnp.stack([tight, loose]))
    ts, policy = jax.jit(fns.train)(jax.random.PRNGKey(0))[0], fns.greedy_policy
    at_loose = _choices(env, base.replace(deadline=loose), ts, policy)
    at_tight = _choices(env, base.replace(deadline=tight), ts, policy)
    assert at_loose and all(c == {2} for c in at_loose.values()), at_loose
    assert at_tight and all(c == {1} for c in at_tight.values()), at_tight
    with pytest.raises(ValueError, match="deadline_bank: shape"):
        make_train(DQNConfig(**SMALL), env, base, bank, jnp.stack([tight, loose, loose]))
