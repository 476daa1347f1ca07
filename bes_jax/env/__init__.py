"""The vectorized serving simulator (see docs/simulator.md)."""
from bes_jax.env.core import ServingEnv, make_env, resolved_mask
from bes_jax.env.params import EnvParams
from bes_jax.env.state import DROPPED, EMPTY, QUEUED, REJECTED, SERVED, EnvState, Outcomes

__all__ = ["ServingEnv", "make_env", "resolved_mask", "EnvParams", "EnvState", "Outcomes",
           "EMPTY", "QUEUED", "SERVED", "DROPPED", "REJECTED"]
