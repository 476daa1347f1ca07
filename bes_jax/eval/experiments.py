"""Helpers shared by `scripts/reproduce.py` and `bes-experiment`: train one config for several
seeds in one vmapped program, and evaluate a router over a list of simulator-parameter variants
(deadlines, reward settings, workloads of equal shapes) in one compiled program."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bes_jax.eval.metrics import to_report
from bes_jax.eval.rollout import make_evaluate, metric_windows
from bes_jax.routers import Router


def mean_std(x) -> dict:
    x = np.asarray(x, np.float64)
    return {"mean": float(np.mean(x)), "std": float(np.std(x)), "seeds": int(x.size)}


class TrainedRouters(list):
    """The greedy-policy routers of several training seeds (a list of `Router`), which also keep
    the stacked parameters, so that :func:`evaluate_variants_seeds` runs all seeds in one program."""

    def __init__(self, routers, greedy_policy, params, obs_stats):
        super().__init__(routers)
        self.greedy_policy, self.params, self.obs_stats = greedy_policy, params, obs_stats


def train_routers(cfg, seeds, name: str = "learned"):
    """Train the `bes-train` config `cfg` for every seed: one vmapped program, or one program per
    seed for a learner that vmaps badly over seeds (`bes_jax.agents.training.train_seeds`).

    Returns ``(setup, routers)``: `setup_training`'s dict and one greedy-policy router per seed
    (a `TrainedRouters` list).
    """
    from bes_jax.agents.training import setup_training, train_seeds

    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds = []: need at least one training seed")
    setup = setup_training(cfg)
    ts, _ = train_seeds(setup["fns"], seeds, log=lambda m: print(m, flush=True))
    return setup, routers_from_params(setup, ts.params, ts.obs_stats, name)


def routers_from_params(setup, params, obs_stats, name: str = "learned") -> TrainedRouters:
    """One greedy-policy router per seed from parameters stacked over seeds (a training's
    result, possibly from another process: `bes_jax.eval.train_pool`)."""
    greedy_policy = setup["fns"].greedy_policy
    params, obs_stats = jax.tree.map(jnp.asarray, (params, obs_stats))
    n = jax.tree.leaves(params)[0].shape[0]
    routers = [Router(name, greedy_policy(jax.tree.map(lambda x: x[i], params),
                                          jax.tree.map(lambda x: x[i], obs_stats))) for i in range(n)]
    return TrainedRouters(routers, greedy_policy, params, obs_stats)


def _stack_variants(params_list, seeds):
    """(params batched over variant x seed where they differ, their vmap axes, keys)."""
    flat = [p for p in params_list for _ in seeds]
    differs = jax.tree.map(lambda *xs: any(not np.array_equal(np.asarray(xs[0]), np.asarray(x)) for x in xs[1:]),
                           *params_list) if len(params_list) > 1 else jax.tree.map(lambda _: False, params_list[0])
    params = jax.tree.map(lambda d, *xs: jnp.stack(xs) if d else xs[0], differs, *flat)
    axes = jax.tree.map(lambda d: 0 if d else None, differs)
    keys = jnp.stack([jax.random.PRNGKey(s) for _ in params_list for s in seeds])
    return params, axes, keys


def _split_reports(m, n_variants, n_seeds, model_names, window_s):
    reps = [to_report(jax.tree.map(lambda x: x[i], m), list(model_names), window_s) for i in range(n_variants * n_seeds)]
    return [reps[v * n_seeds:(v + 1) * n_seeds] for v in range(n_variants)]


def evaluate_variants(env, router: Router, params_list, eval_seeds, n_decisions: int, window_s: float,
                      model_names) -> list[list[dict]]:
    """Reports ``[variant][eval seed]`` of `router` under each EnvParams in `params_list`.

    Every (variant, seed) pair runs in one compiled, vmapped program; only the leaves that differ
    between variants (e.g. ``deadline``) are batched, the rest are shared.
    """
    params_list = list(params_list)
    seeds = [int(s) for s in eval_seeds]
    params, axes, keys = _stack_variants(params_list, seeds)
    n_windows = metric_windows(n_decisions, window_s, params.workload)
    m = jax.jit(make_evaluate(env, router, n_decisions, window_s, n_windows, params_axis=axes))(keys, params)
    return _split_reports(m, len(params_list), len(seeds), model_names, window_s)


def evaluate_variants_seeds(env, routers: TrainedRouters, params_list, eval_seeds, n_decisions: int, window_s: float,
                            model_names) -> list[list[list[dict]]]:
    """Reports ``[training seed][variant][eval seed]``: :func:`evaluate_variants` for every router
    of `routers`, all training seeds in one program (vmapped over their stacked parameters)."""
    params_list = list(params_list)
    seeds = [int(s) for s in eval_seeds]
    params, axes, keys = _stack_variants(params_list, seeds)
    n_windows = metric_windows(n_decisions, window_s, params.workload)
    name = routers[0].name if len(routers) else "learned"

    def one(p, st):
        router = Router(name, routers.greedy_policy(p, st))
        return make_evaluate(env, router, n_decisions, window_s, n_windows, params_axis=axes)(keys, params)

    m = jax.jit(jax.vmap(one))(routers.params, routers.obs_stats)
    n_train = jax.tree.leaves(routers.params)[0].shape[0]
    return [_split_reports(jax.tree.map(lambda x: x[i], m), len(params_list), len(seeds), model_names, window_s)
            for i in range(n_train)]
