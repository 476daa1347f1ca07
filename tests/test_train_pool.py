"""`TrainingPool`: router sets trained in worker processes are the ones the calling process
would train (same numbers, bit for bit), so `scripts/reproduce.py` may train in the background."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from bes_jax.eval.train_pool import TrainingPool

ES = ["sim=default", "learner=es", "train_family.bank_size=4", "es.population=4", "es.workloads=2",
      "es.episode_decisions=200", "es.generations=2", "es.chunk_generations=1"]
DQN = ["sim=default", "train_family.bank_size=4", "dqn.iterations=100", "dqn.chunk_iterations=100",
       "dqn.learning_starts=50", "dqn.n_envs=4"]


def _leaves(routers):
    return [np.asarray(x) for x in jax.tree.leaves((routers.params, routers.obs_stats))]


def test_worker_trained_routers_equal_in_process_ones():
    """Also: while the caller waits for the first set, it trains the set queued last itself (one
    worker starts at most three: the one it runs and two in its queue), keyed as submitted."""
    seeds = [0, 1]
    sets = {"es": ES, "dqn": DQN, "dqn bank 1": DQN + ["seed=1"], "dqn bank 2": DQN + ["seed=2"]}
    with TrainingPool(seeds, jobs=0) as here:
        local = {name: here.get(o) for name, o in sets.items()}
    # then the worker (after this process, so that it finds the measured capacity and the compiled
    # programs in the run's caches: a test of the numbers, not of training side by side)
    with TrainingPool(seeds, jobs=1) as pool:
        for name, o in sets.items():
            pool.submit(o, label=name)
        remote = {name: pool.get(o) for name, o in sets.items()}
        assert sets["dqn bank 2"] in pool.trained_here and ES not in pool.trained_here
    for name in local:
        (_, r_l), (s_r, r_r) = local[name], remote[name]
        assert len(r_l) == len(r_r) == len(seeds)
        a, b = _leaves(r_l), _leaves(r_r)
        assert len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b))
        assert all(np.array_equal(x, y) for x, y in zip(a, b)), f"{name}: worker-trained parameters differ"
        # the seeds differ from each other (a pool that trained one seed twice would pass the above only by luck)
        assert not all(np.array_equal(x[0], x[1]) for x in a), name
        # the rebuilt routers decide as the in-process ones do, along a short episode
        env, params = s_r["env"], s_r["base_params"]
        for rl, rr in zip(r_l, r_r):
            key = jax.random.PRNGKey(3)
            obs, state = env.reset(key, params)
            for _ in range(8):
                key, k_act, k_step = jax.random.split(key, 3)
                a = rl.act(k_act, obs, state, params)
                assert int(a) == int(rr.act(k_act, obs, state, params))
                obs, state, *_ = env.step(k_step, state, a, params)


def test_pool_rejects_bad_arguments():
    with pytest.raises(ValueError, match="training jobs = -1"):
        TrainingPool([0], jobs=-1)
    with pytest.raises(ValueError, match="seeds = \\[\\]"):
        TrainingPool([], jobs=0)
