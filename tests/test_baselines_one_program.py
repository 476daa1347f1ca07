"""Every baseline evaluated in one compiled program (a `lax.switch` per environment) gives each
router the metrics of its own single-router run on the same keys, in both serving models."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bes_jax import workloads as W
from bes_jax.env import make_serving_env
from bes_jax.eval.baselines import evaluate_against_baselines
from bes_jax.eval.metrics import to_report
from bes_jax.eval.rollout import eval_config, make_evaluate, metric_windows
from bes_jax.profile import profile_from_dict
from bes_jax.routers import baseline_routers
from bes_jax.sim_config import SimConfig
from conftest import continuous_profile_dict, synthetic_profile_dict

N_EVAL, SEEDS, WINDOW = 300, [5, 6], 1.0


@pytest.mark.parametrize("batching", ["request", "continuous"])
def test_one_program_equals_one_router_at_a_time(batching):
    d = continuous_profile_dict() if batching == "continuous" else synthetic_profile_dict()
    profile = profile_from_dict(d, f"{batching}.json")
    cfg = SimConfig(batching=batching, placement="exclusive", n_gpus=2)
    wp = W.gamma(60.0 if batching == "request" else 400.0, cv=3.0, n_tasks=profile.n_tasks)
    routers = baseline_routers(profile)
    res = evaluate_against_baselines(profile, cfg, routers, {"w": ({"kind": "gamma"}, wp)}, N_EVAL, SEEDS, WINDOW)
    env = make_serving_env(profile, eval_config(cfg, N_EVAL))
    params = env.make_params(wp)
    keys = jnp.stack([jax.random.PRNGKey(s) for s in SEEDS])
    # each single-router program compiles on its own: check the first, a middle and the last
    # branch of the switch (an index mix-up moves at least one of them), and that all differ
    for router in (routers[0], routers[len(routers) // 2], routers[-1]):
        m = jax.jit(make_evaluate(env, router, N_EVAL, WINDOW, metric_windows(N_EVAL, WINDOW, wp)))(keys, params)
        reps = [to_report(jax.tree.map(lambda x: x[i], m), profile.model_names, WINDOW) for i in range(len(SEEDS))]
        for k in ("performance", "availability", "latency_p50", "n_rejected"):
            np.testing.assert_allclose(res["w"]["routers"][router.name][k]["mean"], np.mean([r[k] for r in reps]),
                                       rtol=1e-5, err_msg=f"{batching} {router.name} {k}")
    perf = {r.name: res["w"]["routers"][r.name]["performance"]["mean"] for r in routers}
    assert len(set(np.round(list(perf.values()), 6))) == len(perf), f"routers should differ: {perf}"
