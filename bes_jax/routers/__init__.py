"""Routers: baselines and the factory that builds any router from a config."""
from bes_jax.routers.baselines import Router, greedy, greedy_action, static, uniform_random, weighted
from bes_jax.routers.factory import make_router, baseline_routers

__all__ = ["Router", "greedy", "greedy_action", "static", "uniform_random", "weighted",
           "make_router", "baseline_routers"]
