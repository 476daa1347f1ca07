"""`max_sustainable_rate`: the highest arrival rate a router serves with availability >= a
threshold, found by a rate sweep that runs as one vmapped program over rates (and seeds)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bes_jax import workloads as W
from bes_jax.env import make_serving_env
from bes_jax.eval.rollout import eval_config, make_evaluate, metric_windows
from bes_jax.profile import Profile
from bes_jax.routers import Router
from bes_jax.sim_config import SimConfig


_COMPILED: dict = {}


def sweep_rates(profile: Profile, cfg: SimConfig, router: Router, rates, n_decisions: int = 3000,
                seeds=(0, 1), window_s: float = 5.0, workload=None) -> dict:
    """Metrics for every (rate, seed) in one compiled, vmapped program.

    ``workload(rate) -> WorkloadParams`` builds the workload at a rate (default Poisson, uniform
    task mix); all must share padded shapes. With trained routers (an
    `bes_jax.eval.experiments.TrainedRouters` list) every training seed runs in the same program
    and each metric gets a leading training-seed axis.
    """
    from bes_jax.eval.experiments import TrainedRouters

    rates = np.asarray(rates, np.float64)
    build = workload or (lambda r: W.poisson(float(r), n_tasks=profile.n_tasks))
    env = make_serving_env(profile, eval_config(cfg, n_decisions))
    wps = W.stack_workloads([build(r) for r in rates for _ in seeds])
    base = env.make_params(build(rates[0]))
    params = base.replace(workload=wps)
    axes = jax.tree.map(lambda _: None, base).replace(workload=jax.tree.map(lambda _: 0, wps))
    keys = jnp.stack([jax.random.PRNGKey(int(s)) for _ in rates for s in seeds])
    n_windows = metric_windows(n_decisions, window_s, wps)
    stacked = isinstance(router, TrainedRouters)
    key = (profile.name, id(profile), cfg, ("trained", id(router)) if stacked else router, n_decisions, window_s,
           n_windows, rates.size, tuple(seeds))
    if key not in _COMPILED:  # the coarse and the fine sweep share one compiled program
        if stacked:
            def run_all(keys_, params_):
                def one(p, st):
                    r = Router(router[0].name, router.greedy_policy(p, st))
                    return make_evaluate(env, r, n_decisions, window_s, n_windows, params_axis=axes)(keys_, params_)
                return jax.vmap(one)(router.params, router.obs_stats)
            _COMPILED[key] = (jax.jit(run_all), router)  # the router kept alive: its id stays its own
        else:
            _COMPILED[key] = (jax.jit(make_evaluate(env, router, n_decisions, window_s, n_windows, params_axis=axes)),
                              router)
    m = _COMPILED[key][0](keys, params)
    shape = (len(router), rates.size, len(seeds)) if stacked else (rates.size, len(seeds))
    out = {k: np.asarray(m[k]).reshape(shape) for k in ("availability", "performance", "pct_of_peak",
                                                         "frac_windows_ge_96", "frac_windows_ge_98",
                                                         "quality_goodput_per_gpu")}
    out["rates"] = rates
    return out


def max_sustainable_rate(profile: Profile, cfg: SimConfig, router: Router, lo: float, hi: float, threshold: float = 0.99,
                         n_grid: int = 12, refine: int | None = None, **kw) -> dict:
    """Coarse log-spaced sweep over [lo, hi], then a linear sweep between the last passing and the
    first failing rate. Returns the highest rate whose mean availability is >= threshold."""
    coarse = np.geomspace(lo, hi, n_grid)
    a = sweep_rates(profile, cfg, router, coarse, **kw)["availability"].mean(1)
    ok = a >= threshold
    if not ok.any():
        return {"max_sustainable_rate": 0.0, "rates": coarse.tolist(), "availability": a.tolist(), "threshold": threshold}
    first_fail = int(np.argmin(ok)) if not ok.all() else None
    if first_fail is None:
        return {"max_sustainable_rate": float(coarse[-1]), "rates": coarse.tolist(), "availability": a.tolist(),
                "threshold": threshold, "note": "every rate in the sweep passed: raise hi"}
    last_ok = first_fail - 1
    if last_ok < 0:
        return {"max_sustainable_rate": 0.0, "rates": coarse.tolist(), "availability": a.tolist(), "threshold": threshold,
                "note": "the lowest rate already fails: lower lo"}
    fine = np.linspace(coarse[last_ok], coarse[first_fail], (refine or n_grid) + 2)[1:-1]
    af = sweep_rates(profile, cfg, router, fine, **kw)["availability"].mean(1)
    rates = np.concatenate([coarse, fine])
    avail = np.concatenate([a, af])
    order = np.argsort(rates)
    rates, avail = rates[order], avail[order]
    # highest rate such that it and every lower swept rate pass (a dip means the load is no longer sustained)
    passing = np.cumprod(avail >= threshold).astype(bool)
    best = float(rates[passing][-1]) if passing.any() else 0.0
    return {"max_sustainable_rate": best, "rates": rates.tolist(), "availability": avail.tolist(), "threshold": threshold}
