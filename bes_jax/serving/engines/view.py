"""The continuous-batching routing view of live engines: the reference twin's own numpy code
(:mod:`bes_jax.reference.routing_view_continuous`), so a policy served in front of real engines
reads exactly the observation it was trained on (replica choice, prediction, observation,
greedy).

The gateway fills a :class:`LiveSnapshot` (the reference ``Snapshot`` plus the pending
request's prompt length) from what it sees of each engine, and builds the fleet's constants
(:class:`Engines`) once from the profile and a ``SimConfig`` with ``batching=continuous``.
"""
from __future__ import annotations

from dataclasses import dataclass

from bes_jax.profile import ITERATION_FIELDS as ITERATION_KEYS  # noqa: F401 (re-exported)
from bes_jax.reference import routing_view_continuous as reference
from bes_jax.reference.routing_view_continuous import (Engines, build_observation, choose_replica,  # noqa: F401
                                                       greedy_choice, predict)  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class LiveSnapshot(reference.Snapshot):
    """The reference snapshot, plus what the live routers need with it: the pending request's
    prompt tokens (counted by the gateway) and the batching mode that tells routers apart."""

    pending_prompt: int = 1
    n_models: int = 0
    batching: str = "continuous"


def engines_for(profile, sim_cfg) -> Engines:
    """The fleet constants of ``profile`` under ``sim_cfg`` (``batching=continuous``); a profile
    without ``ctx_max`` / ``kv_tokens`` / ``iteration`` is refused naming the field."""
    return Engines.from_profile(profile, sim_cfg)
