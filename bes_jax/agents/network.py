"""The Q-network: a small MLP (linen; plain `jax.jit` over its params is the fast path)."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bes_jax.agents.numpy_router import PRIOR_GATES  # defined jax-free, for the numpy router
from bes_jax.env.core import WAIT_CAP  # the rich observation's cap on wait / deadline


#: LayerNorm epsilon of the Q-network (flax's default); the numpy `Router` uses the same
LN_EPS = 1e-6


class QNetwork(nn.Module):
    """MLP; with ``layer_norm`` each hidden layer is Dense -> LayerNorm -> relu (PQN's network)."""
    n_actions: int
    hidden: Sequence[int] = (64, 64)
    layer_norm: bool = False

    @nn.compact
    def __call__(self, x):
        for i, h in enumerate(self.hidden):
            x = nn.Dense(h, name=f"hidden_{i}")(x)
            if self.layer_norm:
                x = nn.LayerNorm(epsilon=LN_EPS, name=f"ln_{i}")(x)
            x = nn.relu(x)
        return nn.Dense(self.n_actions, name="out")(x)


def normalize(obs, mean, var, clip: float = 10.0):
    """Running-statistics normalisation; the same formula runs in the numpy `Router`."""
    return jnp.clip((obs - mean) / jnp.sqrt(var + 1e-8), -clip, clip)




def prior_gate_weight(obs, greedy_a, n_tasks: int, gate: str):
    """[..., 1] weight of the network's output beside greedy's prior, from the raw observation.

    ``load``: the load column of greedy's choice (requests in the system over what its replicas
    hold at once; the observation's columns ``n_tasks:n_tasks + n_models`` in every layout),
    clipped to [0, 1]. When greedy's model is idle greedy's prediction is exact and the policy
    is greedy; the network earns its say as that model fills (why: a learned rule that pays
    under load must not cost quality at light loads, where greedy is already right). The numpy
    `Router` computes the same weight. ``none``: None (weight 1)."""
    if gate == "none":
        return None
    if gate != "load":
        raise ValueError(f"prior gate {gate!r}: must be one of {list(PRIOR_GATES)}")
    g = jnp.asarray(greedy_a)[..., None]
    load = jnp.take_along_axis(obs, n_tasks + g, axis=-1)
    return jnp.clip(load, 0.0, 1.0)


def check_greedy_prior(section: str, greedy_prior, prior_gate) -> None:
    """Refuse a bad greedy prior in a learner's config (`section`: es, dqn): ``greedy_prior`` a
    number >= 0, ``prior_gate`` one of PRIOR_GATES, and a gate only with a prior to weigh against."""
    if not (isinstance(greedy_prior, (int, float)) and greedy_prior >= 0):
        raise ValueError(f"{section} config: field 'greedy_prior' = {greedy_prior!r}: must be a number >= 0")
    if prior_gate not in PRIOR_GATES:
        raise ValueError(f"{section} config: field 'prior_gate' = {prior_gate!r}: must be one of {list(PRIOR_GATES)}")
    if prior_gate != "none" and not greedy_prior:
        raise ValueError(f"{section} config: field 'prior_gate' = {prior_gate!r}: weighs the network against "
                         "greedy's prior; it needs greedy_prior > 0")


def with_greedy_prior(q, greedy_a, beta: float, weight=None):
    """``weight * q + beta * onehot(greedy_a)``: a policy anchored on greedy's choice
    (``es.greedy_prior``); it overrules greedy only where its own (weighted) margin exceeds
    ``beta``. ``weight``: `prior_gate_weight` (None: 1). The numpy `Router` adds the same term."""
    if not beta:
        return q
    if weight is not None:
        q = weight.astype(q.dtype) * q
    return q + beta * jax.nn.one_hot(greedy_a, q.shape[-1], dtype=q.dtype)


def wait_mask(obs, n_tasks: int, n_models: int, threshold: float):
    """[..., M] bool: the models a policy may choose from a ``rich`` observation.

    A model whose observed wait / deadline is at least ``threshold`` (at most WAIT_CAP: a full
    queue reads as the cap) is left out while another model's is below it; if none is, only the
    models with the shortest wait are allowed (every request is predicted late: start it as soon
    as possible, greedy's fallback). The same rule runs in the numpy `Router`
    (`bes_jax.agents.numpy_router`).
    """
    wait = obs[..., n_tasks + n_models + 1:n_tasks + 2 * n_models + 1]
    ok = wait < min(float(threshold), WAIT_CAP)
    soonest = wait <= jnp.min(wait, axis=-1, keepdims=True)
    return jnp.where(jnp.any(ok, axis=-1, keepdims=True), ok, soonest)


def action_mask_fn(mask_wait_x: float, env, n_actions: int, setting: str):
    """``allowed(obs) -> [..., A] bool`` for a learner: `wait_mask` with ``mask_wait_x`` on a
    ``rich`` observation, else every action. The mask reads the request-level observation's wait
    columns, so under continuous batching it is refused (``setting`` names the config field)."""
    if mask_wait_x > 0 and env.cfg.batching == "continuous":
        raise ValueError(f"{setting} = {mask_wait_x}: the wait mask reads the request-level rich observation's "
                         "wait columns; it is not defined under sim.batching=continuous")
    if not (mask_wait_x > 0 and env.cfg.obs_mode == "rich"):
        return lambda obs: jnp.ones(obs.shape[:-1] + (n_actions,), bool)
    return lambda obs: wait_mask(obs, env.n_tasks, n_actions, mask_wait_x)
