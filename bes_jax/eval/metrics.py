"""SPEC metrics from the simulator's outcome record, whole-run and per window.

Jittable and vmappable (a rate sweep computes them for every rate in one program). The
outcome ring must hold every decision of the run (``outcome_slots > n_decisions``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bes_jax.env.state import DROPPED, QUEUED, REJECTED, RUNNING, SERVED, Outcomes

SCALAR_METRICS = (
    "performance", "peak", "pct_of_peak", "availability", "frac_windows_ge_96", "frac_windows_ge_98",
    "latency_p50", "latency_p90", "latency_p99", "n_requests", "n_completed", "n_dropped",
    "n_rejected", "n_in_system", "quality_goodput_per_gpu",
)
#: added for continuous-batching outcomes (docs/simulator.md "Continuous batching", "Metrics")
CONTINUOUS_METRICS = (
    "ttft_p50", "ttft_p90", "ttft_p99", "tpot_p50", "tpot_p90", "tpot_p99", "e2e_p50", "e2e_p90", "e2e_p99",
    "output_tokens_per_s", "kv_utilisation", "slo_goodput",
)
#: added for autoscaled runs (docs/simulator.md "Autoscaler (`autoscale`)"), by `autoscale_metrics`
AUTOSCALE_METRICS = ("gpu_seconds", "quality_goodput_per_gpu_second", "mean_replicas", "n_scale_up", "n_scale_down")


def metrics_kwargs(params) -> dict:
    """The extra `run_metrics` arguments a run's params give: none in request mode; under
    continuous batching the TTFT / TPOT deadlines and the pool's KV budget."""
    if not hasattr(params, "ttft_deadline"):
        return {}
    return {"ttft_deadline": params.ttft_deadline, "tpot_deadline": params.tpot_deadline,
            "kv_pool": jnp.sum(params.replica_count * params.kv_tokens.astype(params.replica_count.dtype))}


def run_metrics(o: Outcomes, quality, deadline, clock, n_gpus: int, window_s: float, n_windows: int, *,
                ttft_deadline=None, tpot_deadline=None, kv_pool=None):
    """Metrics of one run. ``clock``: simulation time at the end (``inf`` after a drain).

    Windows are ``window_s`` seconds of simulated time by arrival, counted from the first
    arrival; at most ``n_windows`` (static) are kept, later arrivals fall outside all windows.
    Continuous-batching outcomes (they have ``first_token``) add `CONTINUOUS_METRICS`; a request
    then meets its deadline when every configured one holds (``ttft_deadline`` /
    ``tpot_deadline`` [T], inf or None when not configured; `metrics_kwargs` gives them and
    ``kv_pool``, the pool's KV budget in tokens).
    """
    continuous = hasattr(o, "first_token")
    used = o.decision >= 0
    n = jnp.maximum(used.sum(), 1)
    served = used & (o.status == SERVED)
    completed = served & (o.finish <= clock)
    resolved = used & ((o.status == DROPPED) | (o.status == REJECTED) | completed)
    reward = jnp.where(resolved, o.reward, 0.0)
    peak_i = jnp.where(used, quality.max(axis=0)[o.task], 0.0)
    latency = o.finish - o.arrival
    met = completed & (latency <= deadline[o.task])
    if continuous:
        ttft = o.first_token - o.arrival
        multi = o.output > 1
        tpot = (latency - ttft) / jnp.maximum(o.output - 1, 1).astype(latency.dtype)
        if ttft_deadline is not None:
            met = met & (ttft <= ttft_deadline[o.task])
        if tpot_deadline is not None:
            met = met & (~multi | (tpot <= tpot_deadline[o.task]))
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
    out = {
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
        "n_in_system": (used & ((o.status == QUEUED) | (o.status == RUNNING) | (served & ~completed))).sum(),
        "quality_goodput_per_gpu": reward.sum() / span / n_gpus,
        "per_model_share": share,
        "windows": {"pct_of_peak": w_pct, "n_requests": w_count,
                    "availability": seg(met.astype(reward.dtype)) / jnp.maximum(w_count, 1),
                    "share": jnp.stack([seg((used & (o.model == m)).astype(reward.dtype)) for m in range(n_models)], -1)
                    / jnp.maximum(w_count, 1)[:, None]},
    }
    if continuous:
        pct = jnp.array([50.0, 90.0, 99.0])
        for name, x, ok in (("ttft", ttft, completed), ("tpot", tpot, completed & multi), ("e2e", latency, completed)):
            q = jnp.nanpercentile(jnp.where(ok, x, jnp.nan), pct)
            out.update({f"{name}_p50": q[0], f"{name}_p90": q[1], f"{name}_p99": q[2]})
        f = latency.dtype
        tokens = jnp.sum(jnp.where(completed, o.output, 0)).astype(f)
        held = jnp.sum(jnp.where(completed, (o.prompt + o.output).astype(f) * (o.finish - o.start), 0.0))
        pool = jnp.nan if kv_pool is None else kv_pool
        out.update({"output_tokens_per_s": tokens / span, "kv_utilisation": held / (pool * span),
                    "slo_goodput": met.sum() / span})
    return out


def autoscale_metrics(autoscale_state, o: Outcomes, clock=jnp.inf) -> dict:
    """`AUTOSCALE_METRICS` of one autoscaled run from its final ``EnvState.autoscale`` (after
    the last step; a drain does not change it), or its `run_totals`, and outcome record: GPU-seconds from the first
    to the last routed arrival, quality goodput per GPU-second (sum of realised rewards /
    GPU-seconds), mean allocated replicas (GPU-seconds / span of arrivals), replicas added and
    removed. A fixed layout's counterpart is ``n_gpus * span`` GPU-seconds, for which
    ``quality_goodput_per_gpu_second`` equals ``quality_goodput_per_gpu``."""
    from bes_jax.env.autoscaler import run_totals

    tot = autoscale_state if isinstance(autoscale_state, dict) else run_totals(autoscale_state)
    used = o.decision >= 0
    completed = used & (o.status == SERVED) & (o.finish <= clock)
    resolved = used & ((o.status == DROPPED) | (o.status == REJECTED) | completed)
    reward = jnp.sum(jnp.where(resolved, o.reward, 0.0))
    span = jnp.maximum(jnp.max(jnp.where(used, o.arrival, -jnp.inf)) - jnp.min(jnp.where(used, o.arrival, jnp.inf)), 1e-9)
    gpu_s = tot["gpu_seconds"]
    return {"gpu_seconds": gpu_s, "quality_goodput_per_gpu_second": reward / jnp.maximum(gpu_s, 1e-9),
            "mean_replicas": gpu_s / span, "n_scale_up": tot["n_scale_up"], "n_scale_down": tot["n_scale_down"]}


def to_report(metrics: dict, model_names, window_s: float) -> dict:
    """Host-side JSON-able dict with SPEC names (per-window series kept under 'windows')."""
    out = {}
    for k in SCALAR_METRICS + tuple(k for k in CONTINUOUS_METRICS + AUTOSCALE_METRICS if k in metrics):
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
        "availability": [None if not e else float(x) for x, e in zip(np.asarray(win["availability"]), nonempty)],
    }
    last = int(np.nonzero(nonempty)[0].max()) + 1 if nonempty.any() else 0
    out["windows"] = {k: (v[:last] if isinstance(v, list) else v) for k, v in out["windows"].items()}
    return out
