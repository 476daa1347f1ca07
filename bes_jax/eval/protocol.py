"""Pieces of the evaluation protocol (SPEC, "Evaluation protocol") that `scripts/reproduce.py`
reports with: curve records, threshold crossings on a load grid, and the cost accounting of the
autoscaler comparison. Host-side numpy; no JAX.

A *curve record* is one point of one router's curve::

    {experiment, batching, workload, profile, load_x, router, metric, mean, std, seeds, ...}

``batching`` is ``request`` or ``continuous``; ``load_x`` a multiple of the baseline's
measured sustainable rate (None for a number that is not read at one load); ``mean`` / ``std``
over training seeds for the learned router (``seeds`` = their number) and over nothing for a
baseline (``std`` 0, ``seeds`` = the number of evaluation seeds its mean pools).
"""
from __future__ import annotations

import math

import numpy as np

CURVE_KEYS = ("experiment", "batching", "workload", "profile", "load_x", "router", "metric", "mean", "std", "seeds")
BATCHING = ("request", "continuous")


def _num(x):
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def curve_record(experiment: str, batching: str, workload: str, profile: str, load_x, router: str, metric: str,
                 values, seeds: int | None = None, **extra) -> dict:
    """One curve record. ``values``: one number per training seed (mean and std over them;
    ``seeds`` defaults to their count), or a single number (std 0; give ``seeds`` = the
    evaluation seeds it pools). Non-finite values become None. Extra keys are kept."""
    if batching not in BATCHING:
        raise ValueError(f"batching = {batching!r}: must be one of {BATCHING}")
    v = np.atleast_1d(np.asarray([np.nan if x is None else x for x in np.atleast_1d(values)], np.float64))
    finite = v[np.isfinite(v)]
    mean = float(finite.mean()) if finite.size else None
    std = float(finite.std()) if finite.size > 1 else (0.0 if finite.size else None)
    rec = {"experiment": experiment, "batching": batching, "workload": workload, "profile": profile,
           "load_x": _num(load_x), "router": router, "metric": metric, "mean": mean, "std": std,
           "seeds": int(v.size if seeds is None else seeds)}
    rec.update(extra)
    return rec


def check_records(records) -> None:
    """Raise ValueError naming the first record that lacks a key of `CURVE_KEYS` or has a bad one."""
    for i, r in enumerate(records):
        missing = [k for k in CURVE_KEYS if k not in r]
        if missing:
            raise ValueError(f"curves[{i}] = {r!r}: missing {missing}")
        if r["batching"] not in BATCHING:
            raise ValueError(f"curves[{i}]: batching = {r['batching']!r}, must be one of {BATCHING}")
        if not isinstance(r["seeds"], int) or r["seeds"] < 1:
            raise ValueError(f"curves[{i}]: seeds = {r['seeds']!r}, must be an integer >= 1")
        if r["mean"] is not None and (r["std"] is None or r["std"] < 0):
            raise ValueError(f"curves[{i}]: std = {r['std']!r} with mean {r['mean']!r}")


def load_grid(lo_x: float, hi_x: float, per_doubling: int) -> np.ndarray:
    """Geometric load grid from `lo_x` to (at least) `hi_x` with `per_doubling` points per doubling."""
    lo_x, hi_x, per_doubling = float(lo_x), float(hi_x), int(per_doubling)
    if not (0 < lo_x < hi_x) or per_doubling < 1:
        raise ValueError(f"load grid: need 0 < lo_x < hi_x and per_doubling >= 1 (got {lo_x}, {hi_x}, {per_doubling})")
    n = int(math.ceil(math.log2(hi_x / lo_x) * per_doubling - 1e-9))
    return lo_x * 2.0 ** (np.arange(n + 1) / per_doubling)


def threshold_crossing(x, y, threshold: float) -> dict:
    """Where a curve ``y(x)`` (x increasing, y mostly decreasing: availability vs load) last
    holds ``y >= threshold`` before its first failure, interpolated log-linearly in x between
    that point and the next one. Returns ``{"x": ..., "bound": "interpolated" | "below_grid"
    (the first point fails: x = 0) | "above_grid" (every point passes: x = the last point)}``."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size < 2 or (np.diff(x) <= 0).any() or (x <= 0).any():
        raise ValueError("threshold_crossing: need x > 0 increasing and y of the same 1-D shape (>= 2 points)")
    ok = y >= threshold
    if not ok[0]:
        return {"x": 0.0, "bound": "below_grid"}
    if ok.all():
        return {"x": float(x[-1]), "bound": "above_grid"}
    i = int(np.argmin(ok)) - 1  # last passing point before the first failure
    f = (y[i] - threshold) / max(y[i] - y[i + 1], 1e-12)
    return {"x": float(x[i] * (x[i + 1] / x[i]) ** min(max(f, 0.0), 1.0)), "bound": "interpolated"}


def fixed_gpu_seconds(report: dict, n_gpus: int) -> float:
    """GPU-seconds a fixed layout of `n_gpus` GPUs is charged over a run: ``n_gpus`` times the
    span of its arrivals (the autoscaler's `gpu_seconds` counts the same span), recovered from a
    `to_report` dict as ``reward / quality_goodput_per_gpu`` (nan when no reward was earned)."""
    gp = float(report["quality_goodput_per_gpu"])
    reward = float(report["performance"]) * float(report["n_requests"])
    return reward / gp if gp > 0 else float("nan")


def missed_bursts(report: dict, quantile: float = 0.9, threshold: float = 0.95) -> dict:
    """Bursts a router misses. A *burst* is a metric window whose arrivals are at least the
    `quantile` of the arrivals of the run's non-empty windows (0.9: its busiest tenth); it is
    *missed* when the window's availability (deadline met / arrivals) is below `threshold`.
    Returns the number of bursts, the number missed and their fraction (nan with no window)."""
    n = np.asarray(report["windows"]["n_requests"], np.float64)
    av = np.asarray([np.nan if a is None else a for a in report["windows"]["availability"]], np.float64)
    nonempty = n > 0
    if not nonempty.any():
        return {"bursts": 0, "missed": 0, "frac_missed": float("nan")}
    burst = nonempty & (n >= np.quantile(n[nonempty], float(quantile)))
    missed = burst & (av < threshold)
    nb = int(burst.sum())
    return {"bursts": nb, "missed": int(missed.sum()), "frac_missed": float(missed.sum() / nb)}


def best_within_budget(cost, score, budget: float, rtol: float = 0.01) -> dict:
    """The setting (index into `cost` / `score`) with the highest score among those whose cost
    is at most ``budget * (1 + rtol)``: an autoscaler configured as well as it can be for a given
    GPU-second budget. With none within budget, the cheapest (``within_budget`` False)."""
    c, v = np.asarray(cost, np.float64), np.asarray(score, np.float64)
    if c.shape != v.shape or c.ndim != 1 or c.size == 0:
        raise ValueError("best_within_budget: need cost and score of the same 1-D shape")
    ok = c <= float(budget) * (1.0 + rtol)
    if not ok.any():
        return {"index": int(np.argmin(c)), "within_budget": False}
    idx = np.nonzero(ok)[0]
    return {"index": int(idx[np.argmax(v[idx])]), "within_budget": True}


def where_on_curve(value: float, xs, ys, x_name: str = "k") -> str:
    """Where a number (the paper's) falls on a curve ``ys(xs)``: between which two points, or
    above / below every point. Points with no value are skipped."""
    pts = [(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
    if not pts:
        return "no point of our curve has a value"
    lo = min(pts, key=lambda p: p[1])
    hi = max(pts, key=lambda p: p[1])
    if value > hi[1]:
        return f"above every point of our curve (its highest is {hi[1]:.2f} at {x_name} = {hi[0]:g})"
    if value < lo[1]:
        return f"below every point of our curve (its lowest is {lo[1]:.2f} at {x_name} = {lo[0]:g})"
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if min(y0, y1) <= value <= max(y0, y1):
            return f"between {x_name} = {x0:g} ({y0:.2f}) and {x_name} = {x1:g} ({y1:.2f})"
    return f"within our curve's range ({lo[1]:.2f} to {hi[1]:.2f})"
