"""Baseline routers as jittable policies.

Every router, learned or not, has one signature: ``act(key, obs, state, params) -> model index``.
Baselines may read the simulator state (greedy reads the routing rule's predictions); a learned
policy reads only ``obs``, which is what the live server can also build.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import jax
import jax.numpy as jnp


@dataclass(frozen=True)
class Router:
    name: str
    act: Callable  # (key, obs, state, params) -> int32 model index
    obs_mode: str | None = None  # set when the router needs a specific observation mode


def static(model: int, name: str | None = None) -> Router:
    """Send everything to one model (the status quo "static serving")."""
    def act(key, obs, state, params):
        return jnp.asarray(model, jnp.int32)
    return Router(name or f"static:{model}", act)


def uniform_random() -> Router:
    """Uniform over models that have at least one replica."""
    def act(key, obs, state, params):
        logits = jnp.where(params.replica_count > 0, 0.0, -jnp.inf)
        return jax.random.categorical(key, logits).astype(jnp.int32)
    return Router("random", act)


def weighted(weights: Sequence[float]) -> Router:
    """Models drawn in proportion to ``weights``, over the models that have at least one replica
    (as ``random``); if none of the weighted models has one, the largest weight's model."""
    w = jnp.asarray(weights, dtype=float)
    if w.ndim != 1 or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(f"router.weights = {list(weights)}: need non-negative weights, one per model, sum > 0")
    logp = jnp.log(w / w.sum())

    def act(key, obs, state, params):
        masked = jnp.where(params.replica_count > 0, logp, -jnp.inf)
        if_none = jnp.where(jnp.arange(logp.shape[0]) == jnp.argmax(logp), 0.0, -jnp.inf)
        logits = jnp.where(jnp.isfinite(masked).any(), masked, if_none)
        return jax.random.categorical(key, logits).astype(jnp.int32)
    return Router("weighted:" + ",".join(f"{x:g}" for x in weights), act)


def greedy_action(state, params):
    """Highest-quality model predicted to meet the deadline, else the fastest.

    Request mode predicts a completion time (``predicted_finish``, on time when it is within
    the deadline of now); continuous batching predicts latencies and whether every configured
    deadline is met (``meets``, ``pred_e2e``: docs/simulator.md "Continuous batching")."""
    if hasattr(state, "meets"):  # ContinuousState
        meets, pred = state.meets, state.pred_e2e
    else:
        pred = state.predicted_finish
        meets = pred - state.now <= params.deadline[state.task]
    quality = params.quality[:, state.task]
    best = jnp.argmax(jnp.where(meets, quality, -jnp.inf))
    fastest = jnp.argmin(pred)
    return jnp.where(meets.any(), best, fastest).astype(jnp.int32)


def greedy() -> Router:
    def act(key, obs, state, params):
        return greedy_action(state, params)
    return Router("greedy", act)
