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

Continuous batching (``cfg.batching == "continuous"``, a
:class:`~bes_jax.reference.continuous.ContinuousResult`; docs/simulator.md "Metrics") adds, over
completed requests: ``ttft_*``, ``e2e_*`` and ``tpot_*`` (requests with more than one output
token) percentiles; ``output_tokens_per_s`` = their output tokens / span of arrivals;
``kv_utilisation`` = ``Σ (p + o)(finish - start) / (Σ_m R_m kv_tokens_m · span)``;
``slo_goodput`` = requests meeting every configured deadline / span; ``availability`` counts
those too. The span is the one ``quality_goodput_per_gpu`` uses.

With the autoscaler (a result with ``gpu_seconds``; docs/simulator.md "Autoscaler"):
``gpu_seconds`` (allocated replicas integrated from the first to the last arrival),
``quality_goodput_per_gpu_second`` = sum of realised rewards / gpu_seconds, ``mean_replicas`` =
gpu_seconds / span, ``n_scale_up`` / ``n_scale_down`` (replicas added / removed).
"""
from __future__ import annotations

import numpy as np

from bes_jax.reference.simulator import DROPPED, QUEUED, REJECTED, SERVED

RUNNING = 5  # continuous batching: admitted, not completed (bes_jax.reference.continuous)


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
    continuous = getattr(cfg, "batching", "request") == "continuous"
    if continuous:
        # every configured deadline (e2e, TTFT, TPOT), as the run decided it
        met = done & np.asarray(res.met_deadline, bool)
    else:
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

    def pctl(p, x=None):
        x = served_lat if x is None else x
        return float(np.percentile(x, p)) if x.size else float("nan")

    span = max(float(times[-1] - times[0]), 1e-9)
    performance = float(reward.sum() / n)
    peak = float(peak_i.sum() / n)
    model = np.asarray(res.model)
    out = {
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
    if continuous:
        out.update(_continuous_metrics(res, times, done, met, span, profile, cfg, pctl))
    if getattr(res, "gpu_seconds", None) is not None:
        g = float(res.gpu_seconds)
        out.update({"gpu_seconds": g, "quality_goodput_per_gpu_second": float(reward.sum() / max(g, 1e-9)),
                    "mean_replicas": g / span, "n_scale_up": int(res.n_scale_up), "n_scale_down": int(res.n_scale_down)})
    return out


def _continuous_metrics(res, times, done, met, span, profile, cfg, pctl) -> dict:
    first = np.asarray(res.first_token, np.float64)
    finish = np.asarray(res.finish, np.float64)
    start = np.asarray(res.start, np.float64)
    o = np.asarray(res.output_tokens, np.int64)
    p = np.asarray(res.prompt_tokens, np.int64)
    e2e = (finish - times)[done]
    ttft = (first - times)[done]
    multi = done & (o > 1)
    tpot = ((finish - first) / np.maximum(o - 1, 1))[multi]
    counts = np.asarray(cfg.replica_counts(profile.n_models), np.float64)
    pool_kv = float((counts * np.asarray(profile.kv_tokens, np.float64)).sum())
    held = float((((p + o) * (finish - start))[done]).sum())
    out = {"n_running": int((np.asarray(res.status) == RUNNING).sum()),
           "output_tokens_per_s": float(o[done].sum() / span),
           "kv_utilisation": held / (pool_kv * span),
           "slo_goodput": float(met.sum() / span)}
    for name, x in (("ttft", ttft), ("tpot", tpot), ("e2e", e2e)):
        for q in (50, 90, 99):
            out[f"{name}_p{q}"] = pctl(q, x)
    return out
