"""Routers evaluated on the live pool state (numpy only), from a ``conf/router/*.yaml`` node.

They are built by ``bes_jax.routers.factory.make_live_router`` (re-exported here), which parses
the router config the same way for `bes-eval`, `bes-serve` and `bes-validate`.

Every router has ``choose(snapshot, task) -> model index`` and is called under the pool lock at
the request's arrival, after the arrival-rate estimate was updated with that arrival. In front of
continuously batching engines (``pool=engines``) the snapshot is a
``bes_jax.serving.engines.view.LiveSnapshot`` and ``greedy`` / ``policy`` read the
continuous-batching prediction and observation instead (docs/simulator.md). Models
whose replicas all crashed are masked out (``static`` keeps its model and the request fails with
503 instead).
"""
from __future__ import annotations

import logging

import numpy as np

from bes_jax.routers.factory import ROUTER_NAMES, make_live_router  # noqa: F401 (re-exported)
from bes_jax.serving.observation import RateEstimator, build_observation, greedy_choice

log = logging.getLogger(__name__)


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


def is_continuous(snap) -> bool:
    """A snapshot of engines that batch continuously (``bes_jax.serving.engines.view``)."""
    return getattr(snap, "batching", "request") == "continuous"


def continuous_prediction(router, snap, task):
    """``(pred_e2e, pred_ttft)`` per model on a continuous snapshot, with the fleet constants
    (``router.engines``, a ``reference.routing_view_continuous.Engines``) the gateway set."""
    from bes_jax.serving.engines import view
    pred, pred_ttft, _ = view.predict(snap, router.engines, task, float(snap.pending_prompt))
    return pred, pred_ttft


def live_greedy_choice(router, snap, task) -> int:
    """``greedy``'s model for ``task`` on a snapshot of either kind of pool."""
    if is_continuous(snap):
        from bes_jax.serving.engines import view
        pred, pred_ttft = continuous_prediction(router, snap, task)
        return view.greedy_choice(pred, pred_ttft, router.engines, task)
    return greedy_choice(snap, router.latency, router.quality, task, float(router.deadlines[task]))


class GreedyRouter(LiveRouter):
    name = "greedy"

    def choose(self, snap, task):
        return live_greedy_choice(self, snap, task)


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
        if is_continuous(snap):
            from bes_jax.serving.engines import view
            return view.build_observation(self.obs_mode, snap, self.engines, task, float(snap.pending_prompt),
                                          self.rate.normalised_rate)
        return build_observation(self.obs_mode, snap, task, self.profile.n_tasks, self.rate.normalised_rate,
                                 self.latency, float(self.deadlines[task]), self.replica_counts)

    def choose(self, snap, task):
        obs = self.observation(snap, task)
        g = live_greedy_choice(self, snap, task) if self.policy.greedy_prior else None
        q = np.where(self.policy.allowed(obs), np.asarray(self.policy.scores(obs, g), np.float64), -np.inf)
        alive = self.alive(snap)
        if alive.any():
            q = np.where(alive, q, -np.inf)
        return int(np.argmax(q))


def stand_ins(model_names) -> dict:
    """``{OPT name: the pool model standing in for it}`` for the pool's models (``router.model``)."""
    try:
        from bes_jax.serving.models import PRESETS
    except ImportError:  # the presets' older home
        from bes_jax.serving.pool import PRESETS
    out = {}
    for n in model_names:
        if n in PRESETS and PRESETS[n].stands_in_for and PRESETS[n].stands_in_for not in out:
            out[PRESETS[n].stands_in_for] = n
    return out
