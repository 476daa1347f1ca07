"""Routers: baselines and the one factory that builds any router from a config.

The names are loaded lazily so that `bes_jax.routers.factory` (parsing the router config, and
building the live server's numpy routers) can be imported without JAX.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Router": "baselines", "greedy": "baselines", "greedy_action": "baselines", "static": "baselines",
    "uniform_random": "baselines", "weighted": "baselines",
    "ROUTER_NAMES": "factory", "RouterSpec": "factory", "parse_router_config": "factory",
    "make_router": "factory", "make_live_router": "factory", "baseline_routers": "factory",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
