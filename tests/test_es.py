"""Evolution strategies: an episode's score is exactly the evaluation's `performance` (with and
without the warm-up), a probe whose right answer is known, seeds x sigmas in one program, the
population split over two CPU devices gives the same run, bad configs are refused."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bes_jax import workloads as W
from bes_jax.agents.es import ES, ESConfig, centred_ranks, es_config_from, member_utility
from bes_jax.env import ServingEnv
from bes_jax.eval.rollout import make_evaluate, metric_windows
from bes_jax.profile import profile_from_dict
from bes_jax.routers import Router
from bes_jax.sim_config import SimConfig
from conftest import synthetic_profile_dict


def _probe_profile():
    """Every model takes the same 0.3 s and meets every deadline: the most accurate model is
    the right answer for every task, whatever the load."""
    d = synthetic_profile_dict()
    d["latency_s"] = np.full_like(np.asarray(d["latency_s"]), 0.3).tolist()
    for t in d["tasks"]:
        t["deadline_s"] = 30.0
    return profile_from_dict(d, "probe.json")


@pytest.fixture(scope="module")
def setting():
    prof = profile_from_dict(synthetic_profile_dict(), "synthetic.json")
    env = ServingEnv(prof, SimConfig(queue_capacity=16))
    bank = W.stack_workloads([W.poisson(r, n_tasks=prof.n_tasks) for r in (2.0, 8.0, 30.0)])
    base = env.make_params(jax.tree.map(lambda x: x[0], bank))
    return prof, env, bank, base


@pytest.mark.parametrize("warmup", [0, 40])
def test_episode_score_is_the_evaluation_performance(setting, warmup):
    """A network's ES score on a bank entry is the `performance` `make_evaluate` measures for it
    over the same requests: with a warm-up routed by the same network, over warm-up + episode."""
    prof, env, bank, base = setting
    es = ES(ESConfig(population=4, workloads=3, episode_decisions=60, warmup_decisions=warmup, hidden=(8,)),
            env, base, bank)
    ts = jax.jit(es.init)(jax.random.PRNGKey(0))
    theta = es.flat(ts.params)
    other = theta + 0.3 * jax.random.normal(jax.random.PRNGKey(1), theta.shape)
    index, key = jnp.array([0, 1, 2]), jax.random.PRNGKey(9)
    score, share, _, _, _ = jax.jit(es.episodes)(jnp.stack([theta, other]), index, key, ts.obs_stats, theta)
    n = 60 + warmup
    p = es.env.make_params(jax.tree.map(lambda x: x[0], bank)).replace(workload=bank)  # one entry per run
    axes = jax.tree.map(lambda _: None, p).replace(workload=jax.tree.map(lambda _: 0, bank))
    ev = make_evaluate(es.env, Router("es", es.greedy_policy(ts.params, ts.obs_stats)), n, 5.0,
                       metric_windows(n, 5.0, bank), params_axis=axes)
    m = jax.jit(ev)(jax.random.split(key, 3), p)
    np.testing.assert_allclose(np.asarray(score[0]), np.asarray(m["performance"]), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(share[0]), np.asarray(m["per_model_share"]), atol=1e-6)
    # the perturbed network routes differently, so it scores differently on some entry
    assert not np.allclose(np.asarray(score[0]), np.asarray(score[1]))


def test_probe_learns_the_known_best_model():
    prof = _probe_profile()
    env = ServingEnv(prof, SimConfig(queue_capacity=16))
    bank = W.stack_workloads([W.poisson(r, n_tasks=prof.n_tasks) for r in (5.0, 20.0)])
    base = env.make_params(jax.tree.map(lambda x: x[0], bank))
    cfg = ESConfig(population=16, workloads=2, episode_decisions=60, generations=40, chunk_generations=20,
                   sigma=0.1, lr=0.05, hidden=(8,))
    es = ES(cfg, env, base, bank)
    ts, logs = jax.jit(es.train)(jax.random.PRNGKey(0))
    best = int(np.argmax(np.asarray(prof.quality).sum(1)))  # most accurate on every task
    share = np.asarray(logs["share"]).reshape(-1, env.n_models)
    fit = np.asarray(logs["fitness"]).ravel()
    peak = float(np.asarray(prof.quality).max(0).mean())  # uniform task mix, every request on time
    assert share[-5:, best].mean() > 0.98, share[-5:]
    assert fit[-5:].mean() == pytest.approx(peak, abs=0.01), (fit[-5:], peak)
    assert share[0, best] < 0.8 and fit[0] < peak - 0.03  # it started elsewhere: the learner moved it


def test_seeds_and_sigmas_vmap_in_one_program_and_train_seeds_gives_its_runs(setting):
    """Seeds x sigmas vmap in one program; `train_seeds` trains ES one seed per program (it vmaps
    badly over seeds) or vmapped, and both give that program's states, stacked the same way (the
    same four runs, so its vmapped program is the one compiled here)."""
    from bes_jax.agents.training import train_seeds

    prof, env, bank, base = setting
    es = ES(ESConfig(population=4, workloads=2, episode_decisions=30, generations=2, chunk_generations=1,
                     hidden=(4,)), env, base, bank)
    keys = jnp.stack([jax.random.PRNGKey(0), jax.random.PRNGKey(1)] * 2)
    sig = jnp.array([0.05, 0.05, 0.5, 0.5])
    f = jax.jit(jax.vmap(es.train))
    ts, _ = f(keys, {"sigma": sig})
    assert f._cache_size() == 1
    np.testing.assert_allclose(np.asarray(ts.hp["sigma"]), np.asarray(sig))
    k = np.asarray(jax.vmap(es.flat)(ts.params))
    assert not np.allclose(k[0], k[2]) and not np.allclose(k[0], k[1])
    np.testing.assert_array_equal(np.asarray(ts.generation), [2, 2, 2, 2])
    # train_seeds: by default one program per seed for ES (sigma from the config, 0.05: runs 0 and 1)
    assert es.vmap_seeds is False
    lines = []
    one_each, _ = train_seeds(es, [0, 1], log=lines.append)
    together, _ = train_seeds(es, [0, 1, 0, 1], sequential=False, hp={"sigma": sig})
    assert len(lines) == 2 and "seed 1 trained (2/2)" in lines[1]
    a, b = np.asarray(jax.vmap(es.flat)(one_each.params)), np.asarray(jax.vmap(es.flat)(together.params))
    assert a.shape == (2,) + k.shape[1:] and b.shape == k.shape
    np.testing.assert_allclose(a, k[:2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b, k, rtol=1e-5, atol=1e-6)


def test_centred_ranks_and_bad_configs():
    np.testing.assert_allclose(np.asarray(centred_ranks(jnp.array([3.0, -1.0, 10.0, 0.5]))),
                               [1 / 6, -0.5, 0.5, -1 / 6], atol=1e-6)
    for bad, field in (({"population": 5}, "population"), ({"population": 2}, "population"),
                       ({"sigma": 0.0}, "sigma"), ({"generations": 15}, "generations"),
                       ({"warmup_decisions": -1}, "warmup_decisions"), ({"devices": 3}, "population"),
                       ({"mask_wait_x": 1.0}, "mask_wait_x"), ({"externality_price": 5.0}, "externality_price"),
                       ({"fitness": "median"}, "fitness")):
        with pytest.raises(ValueError, match=f"es config: field '{field}'"):
            ESConfig(**bad)
    with pytest.raises(ValueError, match="unknown field"):
        es_config_from({"popsize": 8})
    assert es_config_from({"hidden": [4, 4], "externality_price": None}).hidden == (4, 4)


def test_per_workload_fitness_gives_every_workload_an_equal_say():
    # member 0 is best on the light load (small spread), member 1 on the overload (large spread)
    score = jnp.array([[0.68, 0.10], [0.59, 0.50], [0.62, 0.11], [0.60, 0.12]])
    mean = np.asarray(member_utility(score, "mean"))
    assert mean.argmax() == 1 and mean[0] < mean[1]  # the overload's spread decides alone
    pw = np.asarray(member_utility(score, "per_workload"))
    # ranks per workload: light [3, 0, 2, 1], overload [0, 3, 1, 2] -> mean centred ranks
    np.testing.assert_allclose(pw, (np.array([3, 0, 2, 1]) + np.array([0, 3, 1, 2])) / 6 - 0.5, atol=1e-6)
    assert pw[0] == pw[1]  # best on one workload each, last / first on the other: tied
    with pytest.raises(ValueError, match="fitness"):
        member_utility(score, "median")


SCRIPT = textwrap.dedent("""
    from bes_jax.env.devices import use_host_devices
    use_host_devices(2)
    import jax, jax.numpy as jnp, numpy as np
    from bes_jax import workloads as W
    from bes_jax.agents.es import ES, ESConfig
    from bes_jax.env import ServingEnv
    from bes_jax.profile import load_profile
    from bes_jax.sim_config import SimConfig
    assert jax.local_device_count() == 2
    prof = load_profile("opt-a100-80gb")
    env = ServingEnv(prof, SimConfig(queue_capacity=16))
    bank = W.stack_workloads([W.poisson(r, n_tasks=prof.n_tasks) for r in (5.0, 40.0)])
    base = env.make_params(jax.tree.map(lambda x: x[0], bank))
    kw = dict(population=4, workloads=2, episode_decisions=40, warmup_decisions=20, generations=2,
              chunk_generations=1, hidden=(4,))
    runs = [jax.jit(ES(ESConfig(**kw, devices=d), env, base, bank).train)(jax.random.PRNGKey(0)) for d in (1, 2)]
    for a, b in zip(jax.tree.leaves(runs[0]), jax.tree.leaves(runs[1])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    print("same")
""")


def test_population_split_over_two_cpu_devices_gives_the_same_run():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("same")


def test_init_from_an_exported_policy_starts_from_its_weights(setting, tmp_path):
    from bes_jax.agents.dqn import DQN, DQNConfig
    from bes_jax.agents.export import export_policy
    from bes_jax.agents.numpy_router import PolicyFormatError

    prof, env, bank, base = setting
    dqn = DQN(DQNConfig(n_envs=4, iterations=20, chunk_iterations=20, batch_size=8, learning_starts=4, hidden=(8,)),
              env, base, bank)
    ts, _ = jax.jit(dqn.train)(jax.random.PRNGKey(3))
    out = export_policy(tmp_path / "dqn", ts.params, ts.obs_stats.mean, ts.obs_stats.var, obs_mode=env.cfg.obs_mode,
                        hidden=(8,), profile=prof, sim_config={}, train_config={})
    es = ES(ESConfig(population=4, workloads=2, episode_decisions=30, hidden=(8,), init_from=str(out)), env, base, bank)
    start = es.init(jax.random.PRNGKey(0))
    np.testing.assert_allclose(np.asarray(es.flat(start.params)), np.asarray(es.flat(ts.params)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(start.obs_stats.var), np.asarray(ts.obs_stats.var), rtol=1e-6)
    with pytest.raises(PolicyFormatError, match=r"field 'hidden' = \[8\].*es.hidden=\[8\]"):
        ES(ESConfig(population=4, workloads=2, episode_decisions=30, hidden=(16,), init_from=str(out)), env, base, bank)
    # a network trained without the greedy prior means something else with one
    with pytest.raises(PolicyFormatError, match=r"field 'greedy_prior' = 0.0, this learner's es.greedy_prior = 1.0"):
        ES(ESConfig(population=4, workloads=2, episode_decisions=30, hidden=(8,), init_from=str(out), greedy_prior=1.0),
           env, base, bank)
