"""Double DQN at scale: several env steps per gradient step (update_every), uniform replay
sampling that only ever trains on realised rewards, attached to their own decisions."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bes_jax import workloads as W
from bes_jax.agents.dqn import DQN, DQNConfig, resolved_at
from bes_jax.env import ServingEnv, resolved_mask
from bes_jax.sim_config import SimConfig


def test_update_every_and_uniform_sampling_train_on_realised_rewards_only(synthetic_profile):
    env = ServingEnv(synthetic_profile, SimConfig(queue_capacity=8, outcome_slots=256, episode_len=100, obs_mode="rich"))
    bank = W.stack_workloads([W.poisson(r, n_tasks=2) for r in (20.0, 200.0)])
    base = env.make_params(jax.tree.map(lambda x: x[0], bank))
    cfg = DQNConfig(n_envs=8, iterations=200, chunk_iterations=100, update_every=4, updates_per_iteration=2,
                    batch_size=32, learning_starts=0, hidden=(16,), sampling="uniform")
    learner = DQN(cfg, env, base, bank)
    assert learner.grad_steps_per_chunk == 50 and learner.env_steps_per_chunk == 800
    ts, logs = jax.jit(learner.train)(jax.random.PRNGKey(1))
    assert int(ts.iteration) == 200 and int(ts.n_updates) == 200 // 4 * 2  # 16 transitions per gradient step
    assert np.isfinite(np.asarray(ts.params["params"]["out"]["kernel"])).all()
    # a uniformly drawn slot is valid exactly when the simulator has realised its reward
    ready = np.asarray(jax.vmap(resolved_mask)(ts.env_state))
    e, h = np.meshgrid(np.arange(8), np.arange(env.slots), indexing="ij")
    np.testing.assert_array_equal(np.asarray(resolved_at(ts.env_state, jnp.asarray(e.ravel()), jnp.asarray(h.ravel()))),
                                  ready.ravel())
    assert 0 < ready.mean() < 1  # unused slots and pending rewards are not sampleable
    # ... and the replay slot of each realised reward holds its own decision's action and task
    o = jax.tree.map(np.asarray, ts.env_state.outcomes)
    np.testing.assert_array_equal(np.asarray(ts.replay.action)[ready], o.model[ready])
    np.testing.assert_array_equal(np.asarray(ts.replay.obs)[..., :env.n_tasks].argmax(-1)[ready], o.task[ready])
    fv = np.asarray(logs["frac_valid"])
    assert fv.shape == (2, 25) and 0 < fv[-1].mean() <= 1
