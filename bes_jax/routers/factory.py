"""The one router factory of `bes-eval`, `bes-serve` and `bes-validate`.

A ``conf/router/*.yaml`` node is validated and parsed once, by :func:`parse_router_config`, into
a :class:`RouterSpec`; from it :func:`make_router` builds the jittable router of the JAX
simulator and :func:`make_live_router` the numpy router of the live pool. Every error message
about a router config is written here. No JAX import at module level: the live server uses this.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

ROUTER_NAMES = ("static", "random", "weighted", "greedy", "policy")
#: the keys a router config node may have (``name`` and the one its router reads)
ROUTER_KEYS = {"static": ("model",), "random": (), "weighted": ("weights",), "greedy": (), "policy": ("path",)}


@dataclass(frozen=True)
class RouterSpec:
    """A validated router config: ``name`` and the one setting that router reads."""
    name: str
    model: Optional[str] = None  # static: the model it sends everything to
    weights: Optional[tuple[float, ...]] = None  # weighted: one per model, non-negative, sum > 0
    path: Optional[str] = None  # policy: an exported-policy directory (metadata.json + weights.npz)

    @property
    def label(self) -> str:
        """The router's name in tables, health reports and per-request facts."""
        if self.name == "static":
            return f"static:{self.model}"
        if self.name == "weighted":
            return "weighted:" + ",".join(f"{x:g}" for x in self.weights)
        if self.name == "policy":
            return f"policy:{self.path}"
        return self.name

    def model_index(self, model_names: Sequence[str]) -> int:
        return list(model_names).index(self.model)


def parse_router_config(cfg, model_names: Sequence[str], *, where: str = "the profile",
                        stand_ins: Optional[Mapping[str, str]] = None) -> RouterSpec:
    """Validate a router config node (a dict, DictConfig or :class:`RouterSpec`) against the
    models it routes to. ``where`` names them in messages ("profile 'x'", "the pool");
    ``stand_ins`` maps a model name that is not served to the one that stands in for it (the
    live pool's tiny models for the OPT names), used by ``static``."""
    if isinstance(cfg, RouterSpec):
        return cfg
    if cfg is None:
        raise ValueError(f"router config missing: need router.name (choose from {ROUTER_NAMES})")
    try:
        from omegaconf import DictConfig, OmegaConf
        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf comes with hydra
        pass
    cfg = dict(cfg)
    names = list(model_names)
    name = cfg.get("name")
    if name not in ROUTER_NAMES:
        raise ValueError(f"router.name = {name!r}: unknown router (choose from {ROUTER_NAMES})")
    unknown = sorted(set(cfg) - {"name", *[k for ks in ROUTER_KEYS.values() for k in ks]})
    if unknown:
        raise ValueError(f"router: unknown field(s) {unknown} for router={name} "
                         f"(a router config has name and {', '.join(ROUTER_KEYS[name]) or 'nothing else'})")
    if name == "static":
        model = cfg.get("model")
        if model not in names:
            alias = (stand_ins or {}).get(model) if isinstance(model, str) else None
            if alias not in names:
                raise ValueError(f"router.model = {model!r}: not a model of {where} (choose from {names})")
            model = alias
        return RouterSpec("static", model=model)
    if name == "weighted":
        raw = cfg.get("weights")
        try:
            w = tuple(float(x) for x in (raw if raw is not None else ()))
        except (TypeError, ValueError):
            w = None
        if (w is None or len(w) != len(names) or any(not math.isfinite(x) or x < 0 for x in w)
                or sum(w) <= 0):
            shown = list(raw) if isinstance(raw, (list, tuple)) else raw
            raise ValueError(f"router.weights = {shown}: need {len(names)} non-negative weights with a positive sum, "
                             f"one per model of {where} ({names})")
        return RouterSpec("weighted", weights=w)
    if name == "policy":
        path = cfg.get("path")
        if not path or path == "???":
            raise ValueError("router.path is required for router=policy (a directory exported by bes-train, "
                             "with metadata.json and weights.npz)")
        return RouterSpec("policy", path=str(path))
    return RouterSpec(name)


def make_router(cfg, profile):
    """The jittable router (``bes_jax.routers.baselines.Router``) of a router config."""
    from bes_jax.routers import baselines as B

    spec = parse_router_config(cfg, profile.model_names, where=f"profile {profile.name!r}")
    if spec.name == "static":
        return B.static(spec.model_index(profile.model_names), name=spec.label)
    if spec.name == "random":
        return B.uniform_random()
    if spec.name == "weighted":
        return B.weighted(spec.weights)
    if spec.name == "greedy":
        return B.greedy()
    from bes_jax.agents.policy import load_policy_router
    return load_policy_router(spec.path, profile)


def make_live_router(cfg, profile, deadlines, replica_counts, rate, seed: int = 0):
    """The numpy router of the live pool (``bes_jax.serving.routing.LiveRouter``) of a router config."""
    from bes_jax.serving import routing as R

    names = list(profile.model_names)
    spec = parse_router_config(cfg, names, where="the pool", stand_ins=R.stand_ins(names))
    if isinstance(cfg, Mapping) and spec.name == "static" and cfg.get("model") != spec.model:
        R.log.info("router.model %s is served by its stand-in %s", cfg.get("model"), spec.model)
    common = (profile, deadlines, replica_counts, rate)
    if spec.name == "static":
        return R.StaticRouter(spec.model_index(names), spec.label, *common)
    if spec.name in ("random", "weighted"):
        w = [1.0] * len(names) if spec.name == "random" else list(spec.weights)
        router = R.RandomRouter(w, seed, *common)
        router.name = spec.label
        return router
    if spec.name == "greedy":
        return R.GreedyRouter(*common)
    return R.PolicyRouter(spec.path, *common)


def baseline_routers(profile) -> list:
    """Every baseline the paper compares with: static per model, random, greedy."""
    from bes_jax.routers import baselines as B

    out = [B.static(i, name=f"static:{m}") for i, m in enumerate(profile.model_names)]
    return out + [B.uniform_random(), B.greedy()]
