"""Run a router through the simulator: a `lax.scan` over decisions of a batch of environments.

Environments in the batch may share `params` or each have their own (``params_axis=0``: a
rate or deadline sweep in one compiled program).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from bes_jax.env import ServingEnv
from bes_jax.eval.metrics import run_metrics
from bes_jax.routers import Router
from bes_jax.sim_config import SimConfig


def eval_config(cfg: SimConfig, n_decisions: int, b_max: int = 64) -> SimConfig:
    """Same setup, with an outcome record large enough to keep every decision of the run (and
    larger than what can be in the system, however many GPUs)."""
    n_models_guess = len(cfg.replicas) if cfg.replicas else 8
    bound = cfg.in_system_bound(n_models_guess, b_max)
    slots = max(cfg.outcome_slots, n_decisions + 1, bound + 1)
    return dataclasses.replace(cfg, outcome_slots=slots, episode_len=max(cfg.episode_len, n_decisions))


def make_run(env: ServingEnv, router: Router, n_decisions: int, drain: bool = True, params_axis=None):
    """``run(keys[N], params) -> final EnvState[N]`` after `n_decisions` routed requests each."""
    v_act = jax.vmap(router.act, in_axes=(0, 0, 0, params_axis))

    def run(keys, params):
        k_reset = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
        k_steps = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
        obs, state = jax.vmap(env.reset, in_axes=(0, params_axis))(k_reset, params)

        def body(carry, t):
            obs, state = carry
            k = jax.vmap(lambda kk: jax.random.fold_in(kk, t))(k_steps)
            k_act = jax.vmap(lambda kk: jax.random.fold_in(kk, 0))(k)
            k_step = jax.vmap(lambda kk: jax.random.fold_in(kk, 1))(k)
            action = v_act(k_act, obs, state, params)
            obs, state, _, _, _ = env.step_batch(k_step, state, action, params, params_axis)
            return (obs, state), None

        (obs, state), _ = jax.lax.scan(body, (obs, state), jnp.arange(n_decisions))
        return env.drain_batch(state, params, params_axis) if drain else state

    return run


def make_evaluate(env: ServingEnv, router: Router, n_decisions: int, window_s: float, n_windows: int,
                  params_axis=None):
    """``evaluate(keys[N], params) -> metrics[N]`` (jittable)."""
    run = make_run(env, router, n_decisions, params_axis=params_axis)

    def evaluate(keys, params):
        state = run(keys, params)
        metric = lambda o, p: run_metrics(o, p.quality, p.deadline, jnp.inf, env.cfg.n_gpus, window_s, n_windows)
        return jax.vmap(metric, in_axes=(0, params_axis))(state.outcomes, params)

    return evaluate
