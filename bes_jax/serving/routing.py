"""Routers evaluated on the live pool state (numpy only), from a ``conf/router/*.yaml`` node.

Every router has ``choose(snapshot, task) -> model index`` and is called under the pool lock at
the request's arrival, after the arrival-rate estimate was updated with that arrival. Models
whose replicas all crashed are masked out (``static`` keeps its model and the request fails with
503 instead).
"""
from __future__ import annotations

import logging

import numpy as np

from bes_jax.serving.observation import RateEstimator, build_observation, greedy_choice

log = logging.getLogger(__name__)
ROUTER_NAMES = ("static", "random", "weighted", "greedy", "policy")


class LiveRouter:
    name = "base"
    obs_mode: str | None = None

    def __init__(self, profile, deadlines, replica_counts, rate: RateEstimator):
        self.profile = profile
        self.latency = profile.latency
        self.quality = profile.quality
        self.deadlines = np.asarray(deadlines, np.float64)
        self.replica_counts = np.asarray(replica_counts)
        self.rate = rate

    def alive(self, snap) -> np.ndarray:
        a = np.zeros(snap.n_models, bool)
        np.logical_or.at(a, snap.replica_model, snap.valid)
        return a

    def choose(self, snap, task: int) -> int:  # pragma: no cover - interface
        raise NotImplementedError


class StaticRouter(LiveRouter):
    def __init__(self, model: int, name: str, *a):
        super().__init__(*a)
        self.model, self.name = model, name

    def choose(self, snap, task):
        return self.model


class RandomRouter(LiveRouter):
    name = "random"

    def __init__(self, weights, seed, *a):
        super().__init__(*a)
        self.w = np.asarray(weights, np.float64)
        self.rng = np.random.default_rng(seed)

    def choose(self, snap, task):
        w = np.where(self.alive(snap) & (self.replica_counts > 0), self.w, 0.0)
        if w.sum() <= 0:
            return int(np.argmax(self.w))  # nothing alive: the pool answers 503
        return int(self.rng.choice(len(w), p=w / w.sum()))


class GreedyRouter(LiveRouter):
    name = "greedy"

    def choose(self, snap, task):
        return greedy_choice(snap, self.latency, self.quality, task, float(self.deadlines[task]))


class PolicyRouter(LiveRouter):
    name = "policy"

    def __init__(self, path, *a):
        super().__init__(*a)
        try:
            from bes_jax.agents.numpy_router import Router
        except ImportError as e:
            raise RuntimeError("router=policy needs bes_jax.agents.numpy_router (the exported-policy loader), "
                               f"which could not be imported: {e}") from e
        self.policy = Router.load(path)
        self.obs_mode = self.policy.obs_mode
        self.name = f"policy:{path}"
        if list(self.policy.model_names) != list(self.profile.model_names):
            raise ValueError(f"policy at {path} routes models {self.policy.model_names}, "
                             f"the pool serves {self.profile.model_names}")
        if list(self.policy.task_names) != list(self.profile.task_names):
            raise ValueError(f"policy at {path} knows tasks {self.policy.task_names}, "
                             f"the pool's profile has {self.profile.task_names}")

    def observation(self, snap, task):
        return build_observation(self.obs_mode, snap, task, self.profile.n_tasks, self.rate.normalised_rate,
                                 self.latency, float(self.deadlines[task]), self.replica_counts)

    def choose(self, snap, task):
        q = np.asarray(self.policy.q_values(self.observation(snap, task)), np.float64)
        alive = self.alive(snap)
        if alive.any():
            q = np.where(alive, q, -np.inf)
        return int(np.argmax(q))


def policy_sim_config(path) -> dict:
    """The simulator settings a policy was trained with (rate smoothing, reference rate)."""
    import json
    from pathlib import Path
    try:
        meta = json.loads((Path(path) / "metadata.json").read_text())
    except (OSError, ValueError):
        return {}
    sc = meta.get("sim_config") or {}
    return sc if isinstance(sc, dict) else {}


def make_live_router(cfg, profile, deadlines, replica_counts, rate: RateEstimator, seed: int = 0) -> LiveRouter:
    cfg = dict(cfg)
    name = cfg.get("name")
    common = (profile, deadlines, replica_counts, rate)
    names = profile.model_names
    if name == "static":
        model = cfg.get("model")
        if model not in names:
            from bes_jax.serving.pool import PRESETS
            stand_ins = [n for n in names if n in PRESETS and PRESETS[n].stands_in_for == model]
            if not stand_ins:
                raise ValueError(f"router.model = {model!r}: not a model of the pool (choose from {names})")
            log.info("router.model %s is served by its stand-in %s", model, stand_ins[0])
            model = stand_ins[0]
        return StaticRouter(names.index(model), f"static:{model}", *common)
    if name == "random":
        return RandomRouter(np.ones(len(names)), seed, *common)
    if name == "weighted":
        w = [float(x) for x in (cfg.get("weights") or [])]
        if len(w) != len(names) or any(x < 0 for x in w) or sum(w) <= 0:
            raise ValueError(f"router.weights = {w}: need {len(names)} non-negative weights with a positive sum ({names})")
        r = RandomRouter(w, seed, *common)
        r.name = "weighted:" + ",".join(f"{x:g}" for x in w)
        return r
    if name == "greedy":
        return GreedyRouter(*common)
    if name == "policy":
        path = cfg.get("path")
        if not path or path == "???":
            raise ValueError("router.path is required for router=policy (a directory with metadata.json and weights.npz)")
        return PolicyRouter(str(path), *common)
    raise ValueError(f"router.name = {name!r}: unknown router (choose from {ROUTER_NAMES})")
