"""The bursty workloads of the results' k-grid: one generator for MAF minutes and any timestamp trace.

:func:`bursty_workload` builds the workload ``scripts/reproduce.py`` reports "windows >= 96% /
98% of peak", "quality goodput per GPU" and the autoscaler comparison on. Exactly:

1. **Counts.** :func:`arrival_counts` turns the source into arrivals per bin of ``bin_s``
   seconds of the source's own clock (default 60 s: one trace minute):

   - a MAF per-minute file (``HashOwner,HashApp,HashFunction,Trigger`` then one column per
     minute, e.g. ``pkg:maf2019_minute_totals.csv``): the per-minute invocation totals over all
     functions (``bin_s`` must be 60, the file's own resolution);
   - any other trace file (a timestamp CSV, the Azure LLM trace, Mooncake, ...): its arrival
     times (:func:`~bes_jax.workloads.traces.load_trace_times`), binned from the first arrival;
   - ``counts=``: per-bin counts given directly; ``times=``: arrival times in seconds (sorted),
     binned as above.
2. **Held-out part.** ``minutes=(start, stop)`` keeps bins ``start .. stop-1`` (0-based bin
   indices, not minute-of-day labels). For the MAF day the results use test minutes only
   (``bes-train`` trains on [0, 240) and tunes on [300, 330) and [400, 430)). ``span=(a, b)``
   instead keeps the fraction ``[a, b)`` of the bins (e.g. ``(0.5, 1.0)``: the second half of a
   trace whose first half trained a router). At most one of the two; neither: every bin.
3. **Time scale.** One bin lasts ``bin_s / time_scale`` simulated seconds (``time_scale`` 6: a
   trace minute is 10 s), so bursts keep their shape and get ``time_scale`` times shorter.
4. **Load.** The per-bin rates are multiplied by one factor so that their mean is exactly
   ``k * capacity`` requests/s (``capacity``: a baseline's measured sustainable rate,
   :func:`bes_jax.eval.capacity.measured_capacity`). The schedule repeats after its last bin.
5. **Arrivals** inside a bin are a renewal process at that bin's rate with inter-arrival CV
   ``cv`` (1: Poisson); the task of each request is drawn from ``mix`` (default uniform).

The result is a `WorkloadParams` rate schedule (`bes_jax.workloads.maf`), so it runs in either
serving model; every workload built from the same number of bins has the same shapes and can be
stacked with others (one compiled program over k and slices).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bes_jax.workloads.builders import maf
from bes_jax.workloads.params import WorkloadParams
from bes_jax.workloads.traces import TraceError, load_maf_minute_counts, load_trace_times


def _resolve(path):
    from bes_jax.data import resolve_path

    return resolve_path(str(path))


def arrival_counts(path=None, *, counts=None, times=None, bin_s: float = 60.0, column: str | None = None) -> np.ndarray:
    """Arrivals per ``bin_s``-second bin (float array) from exactly one of a trace file `path`
    (a MAF per-minute file or any timestamp trace), per-bin `counts`, or arrival `times` (s)."""
    given = [x is not None for x in (path, counts, times)]
    if sum(given) != 1:
        raise ValueError("arrival_counts(): give exactly one of path=, counts=, times=")
    bin_s = float(bin_s)
    if not np.isfinite(bin_s) or bin_s <= 0:
        raise ValueError(f"bin_s = {bin_s!r}: must be a finite number > 0")
    if counts is not None:
        c = np.asarray(counts, np.float64)
        if c.ndim != 1 or c.size == 0 or not np.isfinite(c).all() or (c < 0).any():
            raise ValueError(f"counts: need a non-empty 1-D array of finite counts >= 0 (shape {c.shape})")
        return c
    if path is not None:
        p = _resolve(path)
        try:
            c = load_maf_minute_counts(p)
        except TraceError:
            c = None  # not a MAF per-minute file: a timestamp trace
        if c is not None:
            if bin_s != 60.0:
                raise ValueError(f"bin_s = {bin_s!r}: a MAF file has per-minute counts, bin_s must be 60")
            return np.asarray(c, np.float64)
        times = load_trace_times(p, column)
    t = np.asarray(times, np.float64)
    if t.ndim != 1 or t.size < 2 or not np.isfinite(t).all() or (np.diff(t) < 0).any():
        raise ValueError(f"times: need >= 2 sorted finite arrival times (shape {t.shape})")
    t = t - t[0]
    n_bins = int(np.floor(t[-1] / bin_s)) + 1
    return np.bincount(np.minimum((t / bin_s).astype(np.int64), n_bins - 1), minlength=n_bins).astype(np.float64)


def held_out(counts, minutes=None, span=None) -> np.ndarray:
    """Bins ``minutes[0] .. minutes[1]-1``, or the fraction ``span = (a, b)`` of the bins."""
    c = np.asarray(counts, np.float64)
    if minutes is not None and span is not None:
        raise ValueError("held_out(): give at most one of minutes= and span=")
    if minutes is not None:
        lo, hi = int(minutes[0]), int(minutes[1])
        if not 0 <= lo < hi <= c.size:
            raise ValueError(f"minutes = {[lo, hi]}: need 0 <= start < stop <= {c.size} (the source's bins)")
        c = c[lo:hi]
    elif span is not None:
        a, b = float(span[0]), float(span[1])
        if not 0.0 <= a < b <= 1.0:
            raise ValueError(f"span = {[a, b]}: need 0 <= a < b <= 1")
        lo, hi = int(round(a * c.size)), int(round(b * c.size))
        c = c[lo:max(hi, lo + 1)]
    if c.sum() <= 0:
        raise ValueError("the selected bins have no arrivals")
    return c


def bursty_workload(path=None, *, k: float, capacity: float, minutes=None, span=None, time_scale: float = 6.0,
                    counts=None, times=None, bin_s: float = 60.0, column: str | None = None, cv: float = 1.0,
                    n_tasks: int | None = None, mix=None, **pad) -> WorkloadParams:
    """A bursty workload whose mean load is ``k * capacity`` req/s (module docstring: how).

    Source: exactly one of `path` (a MAF per-minute file or any timestamp trace file, ``pkg:``
    names allowed), `counts` (per-bin arrivals) or `times` (arrival times, s). `minutes` /
    `span`: the held-out bins; `time_scale`: one bin lasts ``bin_s / time_scale`` s.
    """
    k, capacity = float(k), float(capacity)
    if not (np.isfinite(k) and k > 0):
        raise ValueError(f"k = {k!r}: must be a finite number > 0")
    if not (np.isfinite(capacity) and capacity > 0):
        raise ValueError(f"capacity = {capacity!r}: must be a finite number > 0 (req/s)")
    c = held_out(arrival_counts(path, counts=counts, times=times, bin_s=bin_s, column=column), minutes, span)
    # maf(): one bin lasts 60 / time_scale' s; ours lasts bin_s / time_scale
    return maf(counts=c, target_mean_rate=k * capacity, time_scale=float(time_scale) * 60.0 / float(bin_s), cv=cv,
               n_tasks=n_tasks, mix=mix, **pad)


def describe(path, minutes=None, span=None, time_scale: float = 6.0, bin_s: float = 60.0) -> str:
    """A short label of a bursty source, e.g. ``maf2019_minute_totals.csv minutes 330-390, x6 time``."""
    name = Path(str(path)).name if path is not None else "given arrivals"
    part = (f" minutes {minutes[0]}-{minutes[1]}" if minutes is not None else
            f" part {span[0]:g}-{span[1]:g}" if span is not None else "")
    return f"{name}{part}, x{time_scale:g} time" + ("" if bin_s == 60.0 else f", {bin_s:g}-s bins")
