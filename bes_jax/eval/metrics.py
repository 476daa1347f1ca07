"""SPEC metrics from the simulator's outcome record, whole-run and per window.

Jittable and vmappable (a rate sweep computes them for every rate in one program). The
outcome ring must hold every decision of the run (``outcome_slots > n_decisions``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bes_jax.env.state import DROPPED, QUEUED, REJECTED, SERVED, Outcomes

SCALAR_METRICS = (
    "performance", "peak", "pct_of_peak", "availability", "frac_windows_ge_96", "frac_windows_ge_98",
    "latency_p50", "latency_p90", "latency_p99", "n_requests", "n_completed", "n_dropped",
    "n_rejected", "n_in_system", "quality_goodput_per_gpu",
)


def run_metrics(o: Outcomes, quality, deadline, clock, n_gpus: int, window_s: float, n_windows: int):
    """Metrics of one run. ``clock``: simulation time at the end (``inf`` after a drain).

    Windows are ``window_s`` seconds of simulated time by arrival, counted from the first
    arrival; at most ``n_windows`` (static) are kept, later arrivals fall outside all windows.
    """
    used = o.decision >= 0
    n = jnp.maximum(used.sum(), 1)
    served = used & (o.status == SERVED)
    completed = served & (o.finish <= clock)
    resolved = used & ((o.status == DROPPED) | (o.status == REJECTED) | completed)
    reward = jnp.where(resolved, o.reward, 0.0)
    peak_i = jnp.where(used, quality.max(axis=0)[o.task], 0.0)
    latency = o.finish - o.arrival
    met = completed & (latency <= deadline[o.task])
    t0 = jnp.min(jnp.where(used, o.arrival, jnp.inf))
    t1 = jnp.max(jnp.where(used, o.arrival, -jnp.inf))
    w = jnp.floor((o.arrival - t0) / window_s).astype(jnp.int32)
    w = jnp.where(used, w, n_windows)  # out of range: ignored by segment_sum
    seg = lambda x: jax.ops.segment_sum(x, w, num_segments=n_windows)
    w_reward, w_peak, w_count = seg(reward), seg(peak_i), seg(used.astype(reward.dtype))
    nonempty = w_count > 0
    w_pct = jnp.where(nonempty, w_reward / jnp.where(w_peak > 0, w_peak, 1.0), jnp.nan)
    n_nonempty = jnp.maximum(nonempty.sum(), 1)
    lat_served = jnp.where(completed, latency, jnp.nan)
    p50, p90, p99 = jnp.nanpercentile(lat_served, jnp.array([50.0, 90.0, 99.0]))
    n_models = quality.shape[0]
    share = jnp.stack([(used & (o.model == m)).sum() for m in range(n_models)]) / n
    performance = reward.sum() / n
    peak = peak_i.sum() / n
    span = jnp.maximum(t1 - t0, 1e-9)
    return {
        "performance": performance,
        "peak": peak,
        "pct_of_peak": performance / peak,
        "availability": met.sum() / n,
        "frac_windows_ge_96": (nonempty & (w_pct >= 0.96)).sum() / n_nonempty,
        "frac_windows_ge_98": (nonempty & (w_pct >= 0.98)).sum() / n_nonempty,
        "latency_p50": p50, "latency_p90": p90, "latency_p99": p99,
        "n_requests": used.sum(),
        "n_completed": completed.sum(),
        "n_dropped": (used & (o.status == DROPPED)).sum(),
        "n_rejected": (used & (o.status == REJECTED)).sum(),
        "n_in_system": (used & ((o.status == QUEUED) | (served & ~completed))).sum(),
        "quality_goodput_per_gpu": reward.sum() / span / n_gpus,
        "per_model_share": share,
        "windows": {"pct_of_peak": w_pct, "n_requests": w_count,
                    "availability": seg(met.astype(reward.dtype)) / jnp.maximum(w_count, 1),
                    "share": jnp.stack([seg((used & (o.model == m)).astype(reward.dtype)) for m in range(n_models)], -1)
                    / jnp.maximum(w_count, 1)[:, None]},
    }


def to_report(metrics: dict, model_names, window_s: float) -> dict:
    """Host-side JSON-able dict with SPEC names (per-window series kept under 'windows')."""
    out = {}
    for k in SCALAR_METRICS:
        v = np.asarray(metrics[k])
        out[k] = int(v) if k.startswith("n_") else float(v)
    share = np.asarray(metrics["per_model_share"])
    out["per_model_share"] = {m: float(s) for m, s in zip(model_names, share)}
    win = metrics["windows"]
    nonempty = np.asarray(win["n_requests"]) > 0
    out["windows"] = {
        "window_s": window_s,
        "pct_of_peak": [None if not e else float(x) for x, e in zip(np.asarray(win["pct_of_peak"]), nonempty)],
        "n_requests": [int(x) for x in np.asarray(win["n_requests"])],
    }
    last = int(np.nonzero(nonempty)[0].max()) + 1 if nonempty.any() else 0
    out["windows"] = {k: (v[:last] if isinstance(v, list) else v) for k, v in out["windows"].items()}
    return out
