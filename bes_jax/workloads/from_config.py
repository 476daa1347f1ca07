"""Workloads from config nodes (``bes_jax/conf/workload/*.yaml``, ``eval.workloads`` entries).

File values go through :func:`bes_jax.data.resolve_path`: ``pkg:NAME`` is a shipped sample, any
other value a path relative to the current directory.
"""
from __future__ import annotations

import numpy as np

from bes_jax.data import resolve_path


def trace_part(path, span, field: str = "workload.path") -> np.ndarray:
    """Arrival times of the part of a trace file between fractions ``span = [lo, hi]`` of its
    arrivals (by index), shifted to start at 0: train on one part, test on another."""
    from bes_jax.workloads.traces import load_trace_times

    lo, hi = (float(x) for x in span)
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"span = {list(span)}: need 0 <= lo < hi <= 1 (fractions of the trace's arrivals)")
    t = load_trace_times(resolve_path(path, field), None)
    part = t[int(round(lo * t.size)):int(round(hi * t.size))]
    if part.size < 2:
        raise ValueError(f"span = {list(span)} of {path}: fewer than 2 arrivals")
    return part - part[0]


def build_workload(node, profile, field: str = "workload", **pad):
    """WorkloadParams from a workload config node (`kind` picks the builder); `field` names the
    node in error messages."""
    from bes_jax import workloads as W
    from bes_jax.config import to_plain

    node = to_plain(node)
    kind = node.get("kind")
    mix = node.get("mix")
    mix = None if mix is None else np.asarray(mix, np.float64)
    common = dict(n_tasks=profile.n_tasks, mix=mix, **pad)
    if kind == "poisson":
        return W.poisson(float(node["rate"]), **common)
    if kind == "gamma":
        return W.gamma(float(node["rate"]), float(node["cv"]), **common)
    if kind == "schedule":
        return W.schedule(list(node["rates"]), float(node["window_s"]), cv=float(node.get("cv", 1.0)), **common)
    if kind == "maf":
        return W.maf(resolve_path(node["path"], f"{field}.path"), target_mean_rate=node.get("rate"),
                     time_scale=float(node.get("time_scale", 1.0)), minutes=node.get("minutes"),
                     cv=float(node.get("cv", 1.0)), **common)
    if kind == "trace":
        if node.get("span") is not None:  # a part of the trace (fractions of its arrivals), e.g. the held-out half
            try:
                times = trace_part(node["path"], node["span"], f"{field}.path")
            except ValueError as e:
                raise ValueError(f"{field}.{e}") from None
            return W.trace(times=times, target_mean_rate=node.get("rate"), **common)
        return W.trace(resolve_path(node["path"], f"{field}.path"), target_mean_rate=node.get("rate"),
                       column=node.get("column"), **common)
    raise ValueError(f"{field}.kind = {kind!r}: choose poisson, gamma, schedule, maf or trace")
