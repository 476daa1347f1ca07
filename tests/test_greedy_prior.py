"""A policy anchored on greedy (`es.greedy_prior`): a new network routes exactly as greedy, and an
exported one makes the same decisions in the JAX simulator and in the reference twin (the numpy
router, given the twin's greedy choice), in both serving models."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bes_jax import workloads as W
from bes_jax.agents.es import ES, ESConfig, charged_scores, member_utility
from bes_jax.agents.export import export_policy
from bes_jax.agents.network import prior_gate_weight
from bes_jax.agents.numpy_router import Router as NumpyRouter
from bes_jax.env import ServingEnv, make_serving_env
from bes_jax.eval.replay import run_jax_on_arrivals, run_reference_on_arrivals
from bes_jax.eval.rollout import make_evaluate, metric_windows
from bes_jax.profile import load_profile
from bes_jax.routers import Router, greedy
from bes_jax.sim_config import SimConfig


def _small_es(beta, **cfg):
    prof = load_profile("opt-a100-80gb")
    env = ServingEnv(prof, SimConfig(queue_capacity=16, obs_mode="rich"))
    bank = W.stack_workloads([W.poisson(r, n_tasks=prof.n_tasks) for r in (5.0, 40.0)])
    base = env.make_params(jax.tree.map(lambda x: x[0], bank))
    es = ES(ESConfig(population=4, workloads=2, episode_decisions=200, hidden=(8,), greedy_prior=beta, **cfg),
            env, base, bank)
    return es, bank


def _greedy_performance(es, bank, keys, index):
    """greedy's evaluation `performance` on bank entries ``index`` with ``keys`` (one each)."""
    sub = jax.tree.map(lambda x: x[np.asarray(index)], bank)
    p = es.env.make_params(jax.tree.map(lambda x: x[0], sub)).replace(workload=sub)
    axes = jax.tree.map(lambda _: None, p).replace(workload=jax.tree.map(lambda _: 0, sub))
    ev = make_evaluate(es.env, greedy(), 200, 5.0, metric_windows(200, 5.0, sub), params_axis=axes)
    m = jax.jit(ev)(keys, p)
    return np.asarray(m["performance"]), np.asarray(m["per_model_share"])


def _episodes_vs_greedy(beta, perturbs, with_greedy=True):
    """Per perturbation of a new network's weights: its episode (score, share, overrule) on both
    bank entries; and greedy's evaluation on the same keys (``with_greedy``; it does not depend
    on ``beta``)."""
    es, bank = _small_es(beta)
    ts = jax.jit(es.init)(jax.random.PRNGKey(0))
    theta = es.flat(ts.params)
    key = jax.random.PRNGKey(3)
    episodes = jax.jit(es.episodes)
    runs = []
    for perturb in perturbs:
        th = theta + perturb * jax.random.normal(jax.random.PRNGKey(5), theta.shape)
        score, share, over, _, _ = episodes(th[None], jnp.array([0, 1]), key, ts.obs_stats, theta)
        runs.append((np.asarray(score[0]), np.asarray(share[0]), np.asarray(over[0])))
    return runs, (_greedy_performance(es, bank, jax.random.split(key, 2), [0, 1]) if with_greedy else None)


def test_a_new_network_with_the_prior_routes_as_greedy():
    ((score, share, over), (score1, share1, over1)), (g_score, g_share) = _episodes_vs_greedy(0.5, (0.0, 0.5))
    np.testing.assert_array_equal(over, 0.0)  # no decision overrules greedy
    np.testing.assert_allclose(score, g_score, rtol=1e-6)
    np.testing.assert_allclose(share, g_share, atol=1e-6)
    assert (g_share > 0.02).sum() >= 2  # greedy mixes models on these loads: a real check
    # a perturbed network overrules greedy on some decisions, and then routes differently
    assert (over1 > 0.02).all() and (over1 < 0.98).all() and not np.allclose(share1, g_share, atol=0.01)
    # without the prior the same initial network routes by its random output layer
    ((score0, share0, _),), _ = _episodes_vs_greedy(0.0, (0.0,), with_greedy=False)
    assert not np.allclose(share0, g_share, atol=0.05)


def test_shortfall_cost_charges_members_below_greedy_on_its_own_episodes():
    """`es.shortfall_cost`: greedy routes each generation's episodes beside the members (the
    logged greedy score is greedy's evaluation on the generation's bank entries and keys), and a
    member that loses to greedy on one workload ranks below one that ties it everywhere, although
    its mean score is higher."""
    # members far from greedy (sigma 1): a member standing in for greedy would not score as greedy
    es, bank = _small_es(0.5, shortfall_cost=1.0, generations=1, chunk_generations=1, sigma=1.0)
    ts = jax.jit(es.init)(jax.random.PRNGKey(0))
    _, logs = jax.jit(es.train_chunk)(ts)
    _, _, k_idx, k_run = jax.random.split(ts.key, 4)  # as the generation splits its key
    index = np.asarray(jax.random.randint(k_idx, (2,), 0, 2))
    g_perf, _ = _greedy_performance(es, bank, jax.random.split(k_run, 2), index)
    np.testing.assert_allclose(float(logs["greedy_score"][0]), g_perf.mean(), rtol=1e-5)
    assert float(logs["overrule"][0]) > 0.05 and float(logs["shortfall"][0]) > 0
    # the charge itself: member 0 ties greedy, member 1 gains 0.3 on workload 0 and loses 0.1 on 1
    greedy_w = jnp.array([0.5, 0.6])
    score = jnp.stack([greedy_w, greedy_w + jnp.array([0.3, -0.1]), greedy_w - 0.2, greedy_w - 0.3])
    assert float(charged_scores(score, jnp.zeros_like(score), greedy_w, 0.0, 0.0).mean(1)[1]) > float(score[0].mean())
    r0 = member_utility(charged_scores(score, jnp.zeros_like(score), greedy_w, 0.0, 0.0), "mean")
    r5 = member_utility(charged_scores(score, jnp.zeros_like(score), greedy_w, 0.0, 5.0), "mean")
    assert r0[1] > r0[0] and r5[1] < r5[0]
    above = (greedy_w + 0.1)[None]  # never below greedy: never charged
    np.testing.assert_allclose(charged_scores(above, jnp.zeros_like(above), greedy_w, 0.0, 5.0), above)
    with pytest.raises(ValueError, match="es config: field 'shortfall_cost' = 1.0.*needs greedy_prior"):
        ESConfig(shortfall_cost=1.0)
    es0, _ = _small_es(0.5)
    with pytest.raises(ValueError, match="'shortfall_cost' is traced but es config field 'shortfall_cost' = 0"):
        es0.init(jax.random.PRNGKey(0), {"shortfall_cost": 2.0})


@pytest.mark.parametrize("batching", ["request", "continuous"])
def test_exported_prior_policy_decides_the_same_in_the_twin(tmp_path, batching):
    prof = load_profile("opt-a100-80gb")
    cont = batching == "continuous"
    cfg = SimConfig(obs_mode="rich", batching=batching, queue_capacity=16,
                    **({"max_num_seqs": 8, "max_num_batched_tokens": 512} if cont else {}))
    env = make_serving_env(prof, cfg)
    rng = np.random.default_rng(0)
    D, M = env.obs_size, env.n_models
    # a network whose margins sometimes beat the prior: neither greedy nor the network alone
    params = {"params": {"hidden_0": {"kernel": rng.normal(0, 1, (D, 8)).astype(np.float32),
                                      "bias": np.zeros(8, np.float32)},
                         "out": {"kernel": rng.normal(0, 0.5, (8, M)).astype(np.float32),
                                 "bias": np.zeros(M, np.float32)}}}
    mean, var = np.zeros(D), np.ones(D)
    dirs = {}
    for name, beta, gate in (("prior", 1.5, "none"), ("alone", 0.0, "none"), ("gated", 0.05, "load")):
        dirs[name] = export_policy(tmp_path / name, params, mean, var, obs_mode="rich", hidden=[8], profile=prof,
                                   sim_config=cfg.to_dict(), train_config={}, greedy_prior=beta, prior_gate=gate)
    assert NumpyRouter.load(dirs["prior"]).greedy_prior == 1.5
    assert NumpyRouter.load(dirs["gated"]).prior_gate == "load"
    n = 300
    wp = W.poisson(280.0 if cont else 25.0, n_tasks=prof.n_tasks)  # about 3x static OPT-6.7B's capacity
    key = jax.random.PRNGKey(1)
    if cont:
        times, tasks, prompt, output = W.sample_arrivals(key, wp, n + 1, tokens=True, profile=prof)
        tok = {"prompt": prompt, "output": output}
    else:
        times, tasks = W.sample_arrivals(key, wp, n + 1)
        tok = {}
    times, tasks = np.asarray(times, np.float64) - float(times[0]), np.asarray(tasks, np.int64)
    models = {}
    for name, d in dirs.items():
        rc = {"name": "policy", "path": str(d)}
        _, a = run_jax_on_arrivals(prof, cfg, rc, times, tasks, n, **tok)
        _, b = run_reference_on_arrivals(prof, cfg, rc, times, tasks, n, **tok)
        np.testing.assert_array_equal(a["model"], b["model"], err_msg=name)
        np.testing.assert_array_equal(a["status"], b["status"], err_msg=name)
        models[name] = a["model"]
    _, g = run_reference_on_arrivals(prof, cfg, {"name": "greedy"}, times, tasks, n, **tok)
    # the prior changed decisions, and the network overruled greedy on some
    assert (models["prior"] != models["alone"]).mean() > 0.05
    assert 0 < (models["prior"] != g["model"]).mean() < 0.95
    # the load gate (a weaker prior, the network's say scaled by greedy's model's load) overrules too
    assert 0 < (models["gated"] != g["model"]).mean() < 0.95
    assert (models["gated"] != models["prior"]).mean() > 0.02


def _bias_network(es, ts, favour: int, margin: float):
    """``ts.params`` with a zero network whose output prefers model ``favour`` by ``margin``."""
    out = ts.params["params"]["out"]
    bias = jnp.zeros_like(out["bias"]).at[favour].set(margin)
    return {"params": {**ts.params["params"], "out": {"kernel": jnp.zeros_like(out["kernel"]), "bias": bias}}}


def test_load_gate_keeps_greedy_where_its_model_is_idle():
    """`es.prior_gate=load`: a network that always prefers the smallest model overrules greedy
    on every decision without the gate, but with it only where greedy's model holds requests;
    ES's training episodes and its exported router (`greedy_policy`) route alike; the numpy
    router computes the same weights."""
    runs = {}
    for gate in ("none", "load"):
        es, bank = _small_es(0.5, prior_gate=gate)
        ts = jax.jit(es.init)(jax.random.PRNGKey(0))
        params = _bias_network(es, ts, 0, 20.0)
        key = jax.random.PRNGKey(3)
        score, share, over, _, _ = jax.jit(es.episodes)(es.flat(params)[None], jnp.array([0, 1]), key,
                                                        ts.obs_stats, es.flat(params))
        runs[gate] = np.asarray(score[0]), np.asarray(share[0]), np.asarray(over[0])
        p = es.env.make_params(jax.tree.map(lambda x: x[0], bank)).replace(workload=bank)
        axes = jax.tree.map(lambda _: None, p).replace(workload=jax.tree.map(lambda _: 0, bank))
        ev = make_evaluate(es.env, Router("es", es.greedy_policy(params, ts.obs_stats)), 200, 5.0,
                           metric_windows(200, 5.0, bank), params_axis=axes)
        m = jax.jit(ev)(jax.random.split(key, 2), p)
        np.testing.assert_allclose(runs[gate][0], np.asarray(m["performance"]), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(runs["none"][1][:, 0], 1.0)  # ungated: the network's choice everywhere
    g_perf, g_share = _greedy_performance(es, bank, jax.random.split(key, 2), [0, 1])
    gated_over = runs["load"][2]
    # at 5 req/s greedy's model is mostly idle: the gated policy stays near greedy; at 40 it is loaded
    assert gated_over[0] < 0.5 * (1.0 - g_share[0, 0]) and gated_over[1] > gated_over[0]
    assert abs(runs["load"][0][0] - g_perf[0]) < abs(runs["none"][0][0] - g_perf[0])
    # the weight itself, JAX and numpy: the load column of greedy's choice, clipped to [0, 1]
    T, M = 3, 3
    obs = np.zeros((4, T + M + 1), np.float32)
    obs[:, T:T + M] = [[0.0, 0.5, 2.0], [0.3, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    g = np.array([2, 0, 1, 1])
    w = np.asarray(prior_gate_weight(jnp.asarray(obs), jnp.asarray(g), T, "load"))[:, 0]
    np.testing.assert_allclose(w, [1.0, 0.3, 0.0, 1.0])
    assert prior_gate_weight(jnp.asarray(obs), jnp.asarray(g), T, "none") is None
    with pytest.raises(ValueError, match="es config: field 'prior_gate' = 'load'.*needs greedy_prior"):
        ESConfig(prior_gate="load")
    with pytest.raises(ValueError, match="es config: field 'prior_gate' = 'queue'"):
        ESConfig(greedy_prior=1.0, prior_gate="queue")


def test_numpy_router_needs_greedy_choice_with_a_prior(tmp_path):
    prof = load_profile("opt-a100-80gb")
    D = 10
    params = {"params": {"hidden_0": {"kernel": np.zeros((D, 2), np.float32), "bias": np.zeros(2, np.float32)},
                         "out": {"kernel": np.zeros((2, 3), np.float32), "bias": np.zeros(3, np.float32)}}}
    d = export_policy(tmp_path / "p", params, np.zeros(D), np.ones(D), obs_mode="rich", hidden=[2], profile=prof,
                      sim_config={}, train_config={}, greedy_prior=0.25)
    r = NumpyRouter.load(d)
    with pytest.raises(ValueError, match="greedy_prior = 0.25.*pass greedy="):
        r.act(np.zeros(D))
    assert r.act(np.zeros(D), greedy=2) == 2  # the network is indifferent: greedy's choice
    with pytest.raises(ValueError, match="es config: field 'greedy_prior'"):
        ESConfig(greedy_prior=-1.0)
    with pytest.raises(ValueError, match="es config: field 'overrule_cost' = 0.1.*needs greedy_prior"):
        ESConfig(overrule_cost=0.1)


def test_dqn_deployed_prior_is_the_exported_policy(tmp_path):
    """`dqn.greedy_prior` / `dqn.prior_gate` change the deployed policy only: DQN's
    `greedy_policy` with them routes as the exported policy (metadata `greedy_prior`,
    `prior_gate`) does, stays greedy where greedy's model is idle (load gate), and the network
    alone (prior 0) overrules greedy everywhere it prefers another model."""
    from bes_jax.agents.dqn import DQN, DQNConfig
    from bes_jax.agents.policy import load_policy_router

    prof = load_profile("opt-a100-80gb")
    env = ServingEnv(prof, SimConfig(queue_capacity=16, obs_mode="rich"))
    bank = W.stack_workloads([W.poisson(r, n_tasks=prof.n_tasks) for r in (5.0, 40.0)])
    p = env.make_params(jax.tree.map(lambda x: x[0], bank)).replace(workload=bank)
    axes = jax.tree.map(lambda _: None, p).replace(workload=jax.tree.map(lambda _: 0, bank))
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    n = 200

    def evaluate(router):
        ev = make_evaluate(env, router, n, 5.0, metric_windows(n, 5.0, bank), params_axis=axes)
        m = jax.jit(ev)(keys, p)
        return np.asarray(m["performance"]), np.asarray(m["per_model_share"])

    perf, share = {}, {}
    for name, beta, gate in (("alone", 0.0, "none"), ("gated", 0.5, "load")):
        dqn = DQN(DQNConfig(n_envs=2, iterations=100, chunk_iterations=100, hidden=(8,), greedy_prior=beta,
                            prior_gate=gate), env, env.make_params(jax.tree.map(lambda x: x[0], bank)), bank)
        ts = jax.jit(dqn.init)(jax.random.PRNGKey(0))
        out = ts.params["params"]["out"]  # a network that prefers the smallest model by a wide margin
        params = {"params": {**ts.params["params"], "out": {"kernel": jnp.zeros_like(out["kernel"]),
                                                            "bias": jnp.zeros_like(out["bias"]).at[0].set(20.0)}}}
        perf[name], share[name] = evaluate(Router(name, dqn.greedy_policy(params, ts.obs_stats)))
        d = export_policy(tmp_path / name, params, ts.obs_stats.mean, ts.obs_stats.var, obs_mode="rich", hidden=[8],
                          profile=prof, sim_config=env.cfg.to_dict(), train_config={}, greedy_prior=beta, prior_gate=gate)
        np.testing.assert_allclose(evaluate(load_policy_router(d, prof))[0], perf[name], rtol=1e-6, atol=1e-7)
    g_perf, g_share = evaluate(greedy())
    np.testing.assert_allclose(share["alone"][:, 0], 1.0)  # the network alone: the smallest model everywhere
    # gated: at 5 req/s greedy's model is mostly idle, so the policy is near greedy; at 40 it overrules more
    assert abs(share["gated"][0, 0] - g_share[0, 0]) < 0.5 * abs(share["alone"][0, 0] - g_share[0, 0])
    assert share["gated"][1, 0] > share["gated"][0, 0]
    with pytest.raises(ValueError, match="dqn config: field 'prior_gate' = 'load'.*needs greedy_prior"):
        DQNConfig(prior_gate="load")
    with pytest.raises(ValueError, match="dqn config: field 'greedy_prior' = -1"):
        DQNConfig(greedy_prior=-1.0)
