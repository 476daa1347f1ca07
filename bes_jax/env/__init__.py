"""The vectorized serving simulator (see docs/simulator.md)."""
from bes_jax.env.continuous import ContinuousOutcomes, ContinuousParams, ContinuousServingEnv, ContinuousState
from bes_jax.env.core import ServingEnv, make_env, resolved_mask
from bes_jax.env.params import EnvParams
from bes_jax.env.state import DROPPED, EMPTY, QUEUED, REJECTED, RUNNING, SERVED, EnvState, Outcomes


def make_serving_env(profile, cfg):
    """The simulator for ``cfg.batching``: `ServingEnv` (request-level batches) or
    `ContinuousServingEnv` (iteration-level; the profile must have the continuous fields, else
    its `require_continuous` error names what is missing)."""
    if cfg.batching == "continuous":
        profile.require_continuous()
        return ContinuousServingEnv(profile, cfg)
    return ServingEnv(profile, cfg)


__all__ = ["ServingEnv", "ContinuousServingEnv", "make_serving_env", "make_env", "resolved_mask", "EnvParams",
           "EnvState", "Outcomes", "ContinuousParams", "ContinuousState", "ContinuousOutcomes",
           "EMPTY", "QUEUED", "SERVED", "DROPPED", "REJECTED", "RUNNING"]
