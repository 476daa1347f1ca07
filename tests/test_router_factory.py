"""The one router factory (config parsed once, JAX or live router built from it), the JAX
`weighted` router's replica mask, and the one function that adopts a policy's observation
settings (`bes-eval`, `bes-serve`)."""
from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest

from bes_jax.profile import load_profile
from bes_jax.sim_config import SimConfig


def test_weighted_never_picks_a_model_without_replicas():
    import jax

    from bes_jax.env import ServingEnv
    from bes_jax.routers import make_router, uniform_random, weighted
    from bes_jax.workloads import poisson

    profile = load_profile("opt-a100-80gb")
    env = ServingEnv(profile, SimConfig(n_gpus=2, replicas=(2, 0, 2)))
    params = env.make_params(poisson(10.0, n_tasks=profile.n_tasks))
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    for router in (weighted([0.2, 0.6, 0.2]), make_router({"name": "weighted", "weights": [0.2, 0.6, 0.2]}, profile),
                   uniform_random()):
        picks = np.asarray(jax.vmap(lambda k: router.act(k, None, None, params))(keys))
        counts = np.bincount(picks, minlength=3)
        assert counts[1] == 0, (router.name, counts)
        assert counts[0] > 1500 and counts[2] > 1500, (router.name, counts)  # the rest keeps its proportions
    # nothing weighted has a replica: the largest weight's model (the simulator then rejects it)
    picks = np.asarray(jax.vmap(lambda k: weighted([0.0, 1.0, 0.0]).act(k, None, None, params))(keys[:50]))
    assert (picks == 1).all()


def _live(cfg):
    from bes_jax.routers.factory import make_live_router
    from bes_jax.serving.observation import RateEstimator

    profile = load_profile("tiny-cpu")
    return make_live_router(cfg, profile, profile.deadlines, (1, 1, 1), RateEstimator(0.05, 100.0))


def test_one_parser_for_jax_and_live_routers():
    from bes_jax.routers.factory import RouterSpec, make_router, parse_router_config

    names = ["a", "b", "c"]
    assert parse_router_config({"name": "weighted", "weights": [1, 0, 3]}, names) == \
        RouterSpec("weighted", weights=(1.0, 0.0, 3.0))
    assert parse_router_config({"name": "static", "model": "opt-6.7b"}, names,
                               stand_ins={"opt-6.7b": "c"}).label == "static:c"
    assert parse_router_config({"name": "policy", "path": "p"}, names).label == "policy:p"
    jax_profile = load_profile("opt-a100-80gb")
    bad = [({"name": "weighted", "weights": [1.0]}, "router.weights = [1.0]: need 3 non-negative weights"),
           ({"name": "weighted", "weights": [1, -1, 1]}, "router.weights = [1, -1, 1]: need 3 non-negative"),
           ({"name": "weighted", "weights": [0, 0, 0]}, "with a positive sum"),
           ({"name": "weighted", "weights": ["x", 1, 1]}, "router.weights = ['x', 1, 1]"),
           ({"name": "policy"}, "router.path is required for router=policy"),
           ({"name": "policy", "path": "???"}, "router.path is required for router=policy"),
           ({"name": "fastest"}, "router.name = 'fastest': unknown router"),
           ({"name": "greedy", "temperature": 1}, "unknown field(s) ['temperature']"),
           ({"name": "static", "model": "opt-175b"}, "router.model = 'opt-175b': not a model of")]
    for cfg, msg in bad:
        with pytest.raises(ValueError, match=re.escape(msg)):
            make_router(cfg, jax_profile)
        with pytest.raises(ValueError, match=re.escape(msg)):
            _live(cfg)
    # the same config builds the same router on both sides
    assert make_router({"name": "weighted", "weights": [0.2, 0.3, 0.5]}, jax_profile).name == \
        _live({"name": "weighted", "weights": [0.2, 0.3, 0.5]}).name == "weighted:0.2,0.3,0.5"
    assert make_router({"name": "static", "model": "opt-6.7b"}, jax_profile).name == "static:opt-6.7b"
    assert _live({"name": "static", "model": "opt-6.7b"}).name == "static:tiny-l"  # its stand-in
    assert _live({"name": "random"}).name == "random" and _live({"name": "greedy"}).name == "greedy"


def _policy(path, obs_mode, **sim):
    from bes_jax.agents.export import export_policy

    profile = load_profile("tiny-cpu")
    M, T = profile.n_models, profile.n_tasks
    size = T + M + 1 + (M + 1 if obs_mode == "rich" else 0)
    params = {"params": {"hidden_0": {"kernel": np.ones((size, 4)), "bias": np.zeros(4)},
                         "out": {"kernel": np.zeros((4, M)), "bias": np.arange(M, dtype=float)}}}
    return export_policy(path, params, np.zeros(size), np.ones(size), obs_mode=obs_mode, hidden=[4], profile=profile,
                         sim_config=SimConfig(obs_mode=obs_mode, **sim).to_dict(), train_config={})


def test_adopt_policy_sim_config(tmp_path):
    from bes_jax.agents.export import adopt_policy_sim_config

    rich = _policy(tmp_path / "rich", "rich", ewma_alpha=0.2, ref_rate=40.0, deadline_scale=1.5,
                   deadlines=(1.0, 2.0, 3.0, 4.0))
    notes = []
    user = SimConfig(obs_mode="paper", n_gpus=2, queue_capacity=7)
    out = adopt_policy_sim_config(rich, user, note=notes.append)
    assert (out.obs_mode, out.ewma_alpha, out.ref_rate, out.deadline_scale, out.deadlines) == \
        ("rich", 0.2, 40.0, 1.5, (1.0, 2.0, 3.0, 4.0))
    assert (out.n_gpus, out.queue_capacity) == (2, 7)  # the deployment stays the user's
    assert len(notes) == 5 and any("sim.ewma_alpha = 0.05 -> 0.2" in n for n in notes), notes
    # settings the user set on purpose are kept (and said so); obs_mode cannot be
    notes.clear()
    out = adopt_policy_sim_config(rich, user, explicit={"deadline_scale", "obs_mode"}, note=notes.append)
    assert (out.obs_mode, out.deadline_scale, out.ewma_alpha) == ("rich", 1.0, 0.2)
    assert any("sim.deadline_scale = 1.0 kept as set" in n and "1.5" in n for n in notes), notes
    # a paper policy does not see deadlines: they stay the user's
    paper = _policy(tmp_path / "paper", "paper", ewma_alpha=0.3, deadline_scale=3.0)
    out = adopt_policy_sim_config(paper, SimConfig(obs_mode="rich"), note=notes.append)
    assert (out.obs_mode, out.ewma_alpha, out.ref_rate, out.deadline_scale) == ("paper", 0.3, 100.0, 1.0)
    # nothing to change: the same config back, no note
    notes.clear()
    same = SimConfig(obs_mode="paper", ewma_alpha=0.3)
    assert adopt_policy_sim_config(paper, same, note=notes.append) is same and notes == []


def test_bes_serve_adopts_through_the_same_function(tmp_path):
    """The live server's simulator view (rate estimator, deadlines, /healthz sim_config)."""
    from bes_jax.serving.server import ServeSettings, serving_sim_config

    rich = _policy(tmp_path / "rich", "rich", ewma_alpha=0.2, ref_rate=40.0, deadline_scale=1.5)
    pool = SimpleNamespace(placement="exclusive", n_gpus=1, replica_counts=(1, 1, 1), queue_capacity=5)
    profile = load_profile("tiny-cpu")
    cfg = serving_sim_config(pool, {"name": "policy", "path": str(rich)}, ServeSettings(), profile)
    # serve.deadline_scale is always set (conf/serve.yaml), so it stays; the rest is the policy's
    assert (cfg.obs_mode, cfg.ewma_alpha, cfg.ref_rate, cfg.deadline_scale) == ("rich", 0.2, 40.0, 1.0)
    assert (cfg.placement, cfg.replicas, cfg.queue_capacity) == ("exclusive", (1, 1, 1), 5)
    cfg = serving_sim_config(pool, {"name": "policy", "path": str(rich)}, ServeSettings(ref_rate=70.0), profile)
    assert (cfg.ewma_alpha, cfg.ref_rate) == (0.2, 70.0)
    cfg = serving_sim_config(pool, {"name": "greedy"}, ServeSettings(deadline_scale=2.0), profile)
    assert (cfg.ewma_alpha, cfg.ref_rate, cfg.deadline_scale) == (0.05, 100.0, 2.0)


def test_bes_eval_weighted_actions_skip_models_without_replicas(synthetic_profile):
    """bes-eval draws a weighted router's actions on the host (both simulators replay them):
    the same mask applies there."""
    from bes_jax.eval.replay import host_actions
    from bes_jax.sim_config import SimConfig

    cfg = SimConfig(replicas=(2, 0, 2), n_gpus=2)
    acts = host_actions({"name": "weighted", "weights": [0.2, 0.6, 0.2]}, synthetic_profile, cfg, 4000, seed=0)
    assert (acts != 1).all() and set(np.unique(acts)) == {0, 2}
