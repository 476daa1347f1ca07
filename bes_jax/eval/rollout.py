"""Run a router through the simulator: one `lax.scan` per run, `vmap` over seeds and params."""
from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from bes_jax.env import ServingEnv
from bes_jax.eval.metrics import run_metrics, to_report
from bes_jax.profile import Profile
from bes_jax.routers import Router
from bes_jax.sim_config import SimConfig


def eval_config(cfg: SimConfig, n_decisions: int) -> SimConfig:
    """Same setup, with an outcome record large enough to keep every decision of the run."""
    slots = max(cfg.outcome_slots, n_decisions + 1)
    return dataclasses.replace(cfg, outcome_slots=slots, episode_len=max(cfg.episode_len, n_decisions))


def make_run(env: ServingEnv, router: Router, n_decisions: int, drain: bool = True):
    """``run(key, params) -> final EnvState`` after `n_decisions` routed requests."""

    def run(key, params):
        k_reset, k_steps = jax.random.split(key)
        obs, state = env.reset(k_reset, params)

        def body(carry, k):
            obs, state = carry
            k_act, k_step = jax.random.split(k)
            action = router.act(k_act, obs, state, params)
            obs, state, _, _, _ = env.step(k_step, state, action, params)
            return (obs, state), None

        (obs, state), _ = jax.lax.scan(body, (obs, state), jax.random.split(k_steps, n_decisions))
        return env.drain(state, params) if drain else state

    return run


def make_evaluate(env: ServingEnv, router: Router, n_decisions: int, window_s: float, n_windows: int):
    """``evaluate(key, params) -> metrics`` (jittable; vmap it over seeds or params)."""
    run = make_run(env, router, n_decisions)

    def evaluate(key, params):
        state = run(key, params)
        return run_metrics(state.outcomes, params.quality, params.deadline, jnp.inf,
                           env.cfg.n_gpus, window_s, n_windows)

    return evaluate


def evaluate_router(profile: Profile, cfg: SimConfig, router: Router, workload, n_decisions: int,
                    seeds=(0,), window_s: float = 10.0, n_windows: int = 2048, env_params_overrides=None):
    """Host helper: metrics of one router on one workload, for each seed (SPEC names)."""
    env = ServingEnv(profile, eval_config(cfg, n_decisions))
    params = env.make_params(workload, **(env_params_overrides or {}))
    evaluate = jax.jit(jax.vmap(make_evaluate(env, router, n_decisions, window_s, n_windows), in_axes=(0, None)))
    keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    m = evaluate(keys, params)
    return [to_report(jax.tree.map(lambda x: x[i], m), profile.model_names, window_s) for i in range(len(seeds))]
