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


def train_routers(cfg, seeds, name: str = "learned"):
    """Train the `bes-train` config `cfg` for every seed in one vmapped program.

    Returns ``(setup, routers)``: `setup_training`'s dict and one greedy-policy router per seed.
    """
    from bes_jax.agents.training import setup_training

    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds = []: need at least one training seed")
    setup = setup_training(cfg)
    train, greedy_policy = setup["fns"].train, setup["fns"].greedy_policy
    keys = jnp.stack([jax.random.PRNGKey(k) for k in seeds])
    ts, _ = jax.block_until_ready(jax.jit(jax.vmap(train))(keys))
    routers = [Router(name, greedy_policy(jax.tree.map(lambda x: x[i], ts.params),
                                          jax.tree.map(lambda x: x[i], ts.obs_stats))) for i in range(len(seeds))]
    return setup, routers


def evaluate_variants(env, router: Router, params_list, eval_seeds, n_decisions: int, window_s: float,
                      model_names) -> list[list[dict]]:
    """Reports ``[variant][eval seed]`` of `router` under each EnvParams in `params_list`.

    Every (variant, seed) pair runs in one compiled, vmapped program; only the leaves that differ
    between variants (e.g. ``deadline``) are batched, the rest are shared.
    """
    params_list = list(params_list)
    seeds = [int(s) for s in eval_seeds]
    flat = [p for p in params_list for _ in seeds]
    differs = jax.tree.map(lambda *xs: any(not np.array_equal(np.asarray(xs[0]), np.asarray(x)) for x in xs[1:]),
                           *params_list) if len(params_list) > 1 else jax.tree.map(lambda _: False, params_list[0])
    params = jax.tree.map(lambda d, *xs: jnp.stack(xs) if d else xs[0], differs, *flat)
    axes = jax.tree.map(lambda d: 0 if d else None, differs)
    keys = jnp.stack([jax.random.PRNGKey(s) for _ in params_list for s in seeds])
    n_windows = metric_windows(n_decisions, window_s, params.workload)
    m = jax.jit(make_evaluate(env, router, n_decisions, window_s, n_windows, params_axis=axes))(keys, params)
    reps = [to_report(jax.tree.map(lambda x: x[i], m), list(model_names), window_s) for i in range(len(flat))]
    return [reps[v * len(seeds):(v + 1) * len(seeds)] for v in range(len(params_list))]
