"""SPEC metrics from a reference run, in plain numpy (independent of ``bes_jax.eval.metrics``).

Definitions (``SPEC.md``, Metrics), over the ``n`` requests of the run:

- a request's *realised reward* is its reward if resolved (completed, dropped, rejected), else 0
  (queued / in flight at the end of a run without drain: no value known yet);
- ``performance`` = sum of realised rewards / n; ``peak`` = mean of ``max_m q[m, t_i]``;
  ``pct_of_peak`` = performance / peak;
- ``availability`` = completed with latency <= deadline, over n;
- windows: ``window_s`` seconds of simulated time by arrival, counted from the first arrival;
  a window's pct_of_peak = its sum of realised rewards / its sum of peaks; empty windows are
  excluded from ``frac_windows_ge_96`` / ``frac_windows_ge_98`` (and reported as None);
- latency percentiles over completed requests (linear interpolation, NaN if none);
- ``quality_goodput_per_gpu`` = sum of realised rewards / (last - first arrival) / n_gpus.
"""
from __future__ import annotations

import numpy as np

from bes_jax.reference.simulator import DROPPED, QUEUED, REJECTED, SERVED


def compute_metrics(res, times, tasks, profile, cfg, window_s: float = 10.0) -> dict:
    times = np.asarray(times, np.float64)
    tasks = np.asarray(tasks, np.int64)
    n = times.size
    if n == 0:
        raise ValueError("metrics of an empty run are undefined")
    if window_s <= 0:
        raise ValueError(f"window_s = {window_s}: must be > 0")
    status = np.asarray(res.status)
    finish = np.asarray(res.finish, np.float64)
    done = (status == SERVED) & (finish <= res.clock)
    dropped, rejected = status == DROPPED, status == REJECTED
    resolved = done | dropped | rejected
    reward = np.where(resolved, np.asarray(res.reward, np.float64), 0.0)
    peak_i = np.asarray(profile.quality, np.float64).max(axis=0)[tasks]
    d = np.asarray(cfg.task_deadlines(profile), np.float64)[tasks]
    lat = finish - times
    met = done & (lat <= d)

    window = np.floor((times - times[0]) / window_s).astype(np.int64)
    n_windows = int(window.max()) + 1
    w_count = np.bincount(window, minlength=n_windows)
    w_reward = np.bincount(window, weights=reward, minlength=n_windows)
    w_peak = np.bincount(window, weights=peak_i, minlength=n_windows)
    nonempty = w_count > 0
    w_pct = w_reward / np.where(w_peak > 0, w_peak, 1.0)  # all-zero quality: pct = reward
    pct = w_pct[nonempty]

    served_lat = lat[done]

    def pctl(p):
        return float(np.percentile(served_lat, p)) if served_lat.size else float("nan")

    span = max(float(times[-1] - times[0]), 1e-9)
    performance = float(reward.sum() / n)
    peak = float(peak_i.sum() / n)
    model = np.asarray(res.model)
    return {
        "performance": performance,
        "peak": peak,
        "pct_of_peak": performance / peak,
        "availability": float(met.sum() / n),
        "frac_windows_ge_96": float((pct >= 0.96).mean()),
        "frac_windows_ge_98": float((pct >= 0.98).mean()),
        "latency_p50": pctl(50), "latency_p90": pctl(90), "latency_p99": pctl(99),
        "n_requests": int(n), "n_completed": int(done.sum()),
        "n_dropped": int(dropped.sum()), "n_rejected": int(rejected.sum()),
        "n_in_system": int(n - resolved.sum()),
        "n_queued": int((status == QUEUED).sum()),
        "quality_goodput_per_gpu": float(reward.sum() / span / cfg.n_gpus),
        "per_model_share": {name: float((model == m).sum() / n) for m, name in enumerate(profile.model_names)},
        "windows": {"window_s": float(window_s),
                    "pct_of_peak": [float(w_pct[w]) if nonempty[w] else None for w in range(n_windows)],
                    "n_requests": w_count.tolist()},
    }
