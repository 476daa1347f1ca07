"""Externality pricing: the training reward of a decision minus ``price x harm``.

Under continuous batching a request slows every request already sharing its engine and, with
``exclusive`` placement, its GPU's round-robin (docs/simulator.md "Externality of a decision").
A request's own reward never shows that cost, and with one decision every few milliseconds no
per-decision discount reaches the requests it slows, so a learner trained on its own rewards
learns to send load to the large model until the GPUs collapse. The simulator predicts the
delay a choice would impose on each request it slows, in that request's deadlines, weighted by
the share of its deadline the request is predicted to use (``state.harm``: near 0 under light
load, the whole delay once requests are predicted late); the learners subtract
``externality_price x harm`` of the chosen model from the decision's reward in training only.
Evaluation always uses the simulator's reward.
"""
from __future__ import annotations

import jax.numpy as jnp

#: the price a config's ``externality_price: null`` resolves to, per serving model (chosen on the
#: tuning set: docs/results.md, continuous section); request-level batches predict no harm
DEFAULT_PRICE = {"continuous": 10.0, "request": 0.0}


def resolve_price(learner_dict: dict, batching: str) -> dict:
    """The learner's config dict with ``externality_price: None`` replaced by the serving
    model's default (an explicit number is kept, and checked by the learner)."""
    if learner_dict.get("externality_price", 0.0) is None:
        return {**learner_dict, "externality_price": DEFAULT_PRICE[batching]}
    return learner_dict


def check_price(price: float, env, field: str) -> None:
    """A positive price needs a simulator that predicts the harm (continuous batching)."""
    if price < 0:
        raise ValueError(f"{field} = {price}: must be >= 0")
    if price > 0 and getattr(env.cfg, "batching", "request") != "continuous":
        raise ValueError(f"{field} = {price}: externality pricing needs sim.batching=continuous "
                         f"(the request-level simulator predicts no harm); got sim.batching="
                         f"{getattr(env.cfg, 'batching', 'request')!r}")


def decision_harm(env_state, action):
    """[N] harm of each environment's chosen model for its pending request (0 when the
    simulator predicts none)."""
    harm = getattr(env_state, "harm", None)
    if harm is None:
        return jnp.zeros(action.shape, env_state.now.dtype)
    return jnp.take_along_axis(harm, action[..., None].astype(jnp.int32), axis=-1)[..., 0]
