"""Workloads from config nodes (``bes_jax/conf/workload/*.yaml``, ``eval.workloads`` entries).

File values go through :func:`bes_jax.data.resolve_path`: ``pkg:NAME`` is a shipped sample, any
other value a path relative to the current directory.
"""
from __future__ import annotations

import numpy as np

from bes_jax.data import resolve_path
from bes_jax.workloads.traces import FORMATS, TraceError, load_trace_requests


def trace_part_requests(path, span, field: str = "workload.path", format: str = "auto", column=None,
                        prompt_column=None, output_column=None) -> dict:
    """``{"times_s", "prompt", "output"}`` of the part of a trace file between fractions
    ``span = [lo, hi]`` of its requests (by index), times shifted to start at 0 and each
    request's tokens kept with it: train on one part, test on another."""
    lo, hi = (float(x) for x in span)
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"span = {list(span)}: need 0 <= lo < hi <= 1 (fractions of the trace's arrivals)")
    d = load_trace_requests(resolve_path(path, field), format, column, prompt_column, output_column)
    n = d["times_s"].size
    part = {k: v[int(round(lo * n)):int(round(hi * n))] for k, v in d.items()}
    if part["times_s"].size < 2:
        raise ValueError(f"span = {list(span)} of {path}: fewer than 2 arrivals")
    part["times_s"] = part["times_s"] - part["times_s"][0]
    return part


def trace_part(path, span, field: str = "workload.path") -> np.ndarray:
    """Arrival times of the part of a trace file between fractions ``span = [lo, hi]`` of its
    arrivals (by index), shifted to start at 0 (:func:`trace_part_requests` keeps the tokens)."""
    return trace_part_requests(path, span, field)["times_s"]


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
        fmt = node.get("format") or "auto"
        if fmt not in FORMATS:
            raise ValueError(f"{field}.format = {fmt!r}: choose one of {list(FORMATS)}")
        cols = {k: node.get(k) for k in ("column", "prompt_column", "output_column")}
        for k in ("prompt_column", "output_column"):
            if cols[k] is not None and fmt not in ("csv", "auto"):
                raise ValueError(f"{field}.{k} = {cols[k]!r}: only used with {field}.format = 'csv' "
                                 f"(format is {fmt!r})")
        if fmt == "auto" and (cols["prompt_column"] is not None or cols["output_column"] is not None):
            fmt = "csv"  # naming token columns means the generic CSV
        path = resolve_path(node["path"], f"{field}.path")
        try:
            if node.get("span") is not None:  # a part of the trace (fractions of its arrivals), e.g. the held-out half
                d = trace_part_requests(path, node["span"], f"{field}.path", fmt, **cols)
            else:
                d = load_trace_requests(path, fmt, **cols)
        except TraceError:
            raise
        except ValueError as e:
            raise ValueError(f"{field}.{e}") from None
        return W.trace(times=d["times_s"], prompt=d["prompt"], output=d["output"],
                       target_mean_rate=node.get("rate"), **common)
    raise ValueError(f"{field}.kind = {kind!r}: choose poisson, gamma, schedule, maf or trace")
