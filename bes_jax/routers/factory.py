"""Build a router from its config node (``conf/router/*.yaml``)."""
from __future__ import annotations

from bes_jax.profile import Profile
from bes_jax.routers.baselines import Router, greedy, static, uniform_random, weighted

ROUTER_NAMES = ("static", "random", "weighted", "greedy", "policy")


def make_router(cfg, profile: Profile) -> Router:
    cfg = dict(cfg)
    name = cfg.get("name")
    if name == "static":
        model = cfg.get("model")
        if model not in profile.model_names:
            raise ValueError(f"router.model = {model!r}: not a model of profile {profile.name!r} "
                             f"(choose from {profile.model_names})")
        return static(profile.model_index(model), name=f"static:{model}")
    if name == "random":
        return uniform_random()
    if name == "weighted":
        w = list(cfg.get("weights") or [])
        if len(w) != profile.n_models:
            raise ValueError(f"router.weights = {w}: need {profile.n_models} weights ({profile.model_names})")
        return weighted(w)
    if name == "greedy":
        return greedy()
    if name == "policy":
        from bes_jax.agents.policy import load_policy_router
        path = cfg.get("path")
        if not path or path == "???":
            raise ValueError("router.path is required for router=policy (a directory written by bes-train)")
        return load_policy_router(path, profile)
    raise ValueError(f"router.name = {name!r}: unknown router (choose from {ROUTER_NAMES})")


def baseline_routers(profile: Profile) -> list[Router]:
    """Every baseline the paper compares with: static per model, random, greedy."""
    out = [static(i, name=f"static:{m}") for i, m in enumerate(profile.model_names)]
    return out + [uniform_random(), greedy()]
