"""SPEC metrics from a reference run, in plain numpy (independent of bes_jax.eval.metrics)."""
from __future__ import annotations

import numpy as np

from bes_jax.reference.simulator import DROPPED, REJECTED, SERVED


def compute_metrics(res, times, tasks, profile, cfg, window_s: float = 10.0) -> dict:
    times = np.asarray(times, np.float64)
    tasks = np.asarray(tasks, np.int64)
    n = times.size
    done = (res.status == SERVED) & (res.finish <= res.clock)
    resolved = done | (res.status == DROPPED) | (res.status == REJECTED)
    reward = np.where(resolved, res.reward, 0.0)
    peak_i = profile.quality.max(axis=0)[tasks]
    d = np.asarray(cfg.task_deadlines(profile))[tasks]
    lat = res.finish - times
    met = done & (lat <= d)
    window = np.floor((times - times[0]) / window_s).astype(np.int64)
    pct = []
    for w in np.unique(window):
        sel = window == w
        pct.append(reward[sel].sum() / peak_i[sel].sum())
    pct = np.asarray(pct)
    served_lat = lat[done]
    q = (lambda p: float(np.percentile(served_lat, p))) if served_lat.size else (lambda p: float("nan"))
    span = max(times[-1] - times[0], 1e-9)
    return {
        "performance": float(reward.mean()),
        "peak": float(peak_i.mean()),
        "pct_of_peak": float(reward.sum() / peak_i.sum()),
        "availability": float(met.mean()),
        "frac_windows_ge_96": float((pct >= 0.96).mean()),
        "frac_windows_ge_98": float((pct >= 0.98).mean()),
        "latency_p50": q(50), "latency_p90": q(90), "latency_p99": q(99),
        "n_requests": int(n), "n_completed": int(done.sum()),
        "n_dropped": int((res.status == DROPPED).sum()), "n_rejected": int((res.status == REJECTED).sum()),
        "n_in_system": int(n - resolved.sum()),
        "quality_goodput_per_gpu": float(reward.sum() / span / cfg.n_gpus),
        "per_model_share": {m: float((res.model == i).mean()) for i, m in enumerate(profile.model_names)},
        "windows": {"window_s": window_s, "pct_of_peak": pct.tolist(),
                    "n_requests": np.bincount(window).tolist()},
    }
