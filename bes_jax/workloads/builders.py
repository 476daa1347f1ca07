"""Host-side builders: numpy in, `WorkloadParams` out (padded so workloads can be stacked)."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bes_jax.workloads.generators import workload_init, workload_next
from bes_jax.workloads.params import SCHEDULE, TRACE, WorkloadParams
from bes_jax.workloads.traces import load_maf_minute_counts, load_trace_times


def _f():
    return jnp.result_type(float)


def _mix_matrix(mix, n_tasks):
    if mix is None:
        if n_tasks is None:
            raise ValueError("n_tasks is required when mix is None (uniform task mix)")
        return np.full((1, n_tasks), 1.0 / n_tasks)
    m = np.asarray(mix, np.float64)
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2 or m.shape[1] == 0:
        raise ValueError(f"mix = {np.asarray(mix).tolist()}: need a [T] vector or a [K, T] schedule")
    if n_tasks is not None and m.shape[1] != n_tasks:
        raise ValueError(f"mix = {m.tolist()}: has {m.shape[1]} tasks, the profile has {n_tasks}")
    if (m < 0).any() or not np.allclose(m.sum(1), 1.0, atol=1e-6):
        raise ValueError(f"mix = {m.tolist()}: each row must be non-negative and sum to 1")
    return m


def _pad(x, n, fill):
    x = np.asarray(x)
    if x.shape[0] > n:
        raise ValueError(f"cannot pad {x.shape[0]} entries into {n}")
    return np.concatenate([x, np.full((n - x.shape[0],) + x.shape[1:], fill, dtype=x.dtype)])


def _make(kind, rates, window_s, cv, mix, n_tasks, mix_window_s, start_offset, trace_times=None,
          trace_tasks=None, trace_period=1.0, pad_windows=None, pad_trace=None, pad_mix=None) -> WorkloadParams:
    f = _f()
    rates = np.atleast_1d(np.asarray(rates, np.float64))
    if rates.size == 0 or (rates < 0).any() or not np.isfinite(rates).all() or rates.max() <= 0:
        raise ValueError(f"rates = {rates.tolist()}: need finite rates >= 0 with at least one > 0")
    if not (window_s > 0):
        raise ValueError(f"window_s = {window_s}: must be > 0")
    if not (cv > 0):
        raise ValueError(f"cv = {cv}: must be > 0")
    m = _mix_matrix(mix, n_tasks)
    if not (mix_window_s > 0):
        raise ValueError(f"mix_window_s = {mix_window_s}: must be > 0")
    times = np.zeros(1) if trace_times is None else np.asarray(trace_times, np.float64)
    tasks = np.full(times.shape, -1, np.int64) if trace_tasks is None else np.asarray(trace_tasks, np.int64)
    if tasks.shape != times.shape:
        raise ValueError(f"tasks has {tasks.shape[0]} entries, times has {times.shape[0]}")
    if trace_tasks is not None and ((tasks >= m.shape[1]) | (tasks < -1)).any():
        bad = tasks[(tasks >= m.shape[1]) | (tasks < -1)][0]
        raise ValueError(f"tasks: value {int(bad)} is not a task index (0..{m.shape[1] - 1}, or -1 to draw)")
    pw = pad_windows or rates.size
    pt = pad_trace or times.size
    pm = pad_mix or m.shape[0]
    return WorkloadParams(
        kind=jnp.asarray(kind, jnp.int32),
        rates=jnp.asarray(_pad(rates, pw, 0.0), f), n_windows=jnp.asarray(rates.size, jnp.int32),
        window_s=jnp.asarray(window_s, f), cv=jnp.asarray(cv, f),
        trace_times=jnp.asarray(_pad(times, pt, 0.0), f), trace_len=jnp.asarray(times.size, jnp.int32),
        trace_period=jnp.asarray(trace_period, f), trace_tasks=jnp.asarray(_pad(tasks, pt, -1), jnp.int32),
        mix=jnp.asarray(_pad(m, pm, 0.0), f), n_mix=jnp.asarray(m.shape[0], jnp.int32),
        mix_window_s=jnp.asarray(mix_window_s, f), start_offset=jnp.asarray(start_offset, f))


def poisson(rate: float, n_tasks: int | None = None, mix=None, mix_window_s: float = 60.0, **pad) -> WorkloadParams:
    """Stable load: exponential gaps at `rate` requests/s."""
    return _make(SCHEDULE, [rate], 1.0, 1.0, mix, n_tasks, mix_window_s, 0.0, **pad)


def gamma(rate: float, cv: float, n_tasks: int | None = None, mix=None, mix_window_s: float = 60.0, **pad) -> WorkloadParams:
    """Gamma-distributed gaps with mean 1/rate and coefficient of variation `cv` (>1: bursty)."""
    return _make(SCHEDULE, [rate], 1.0, cv, mix, n_tasks, mix_window_s, 0.0, **pad)


def schedule(rates: Sequence[float], window_s: float, cv: float = 1.0, n_tasks: int | None = None, mix=None,
             mix_window_s: float = 60.0, start_offset: float = 0.0, **pad) -> WorkloadParams:
    """Piecewise-constant rate, one value per `window_s` seconds, repeating cyclically."""
    return _make(SCHEDULE, rates, window_s, cv, mix, n_tasks, mix_window_s, start_offset, **pad)


def maf(path, target_mean_rate: float | None = None, time_scale: float = 1.0, minutes=None, functions=None,
        cv: float = 1.0, n_tasks: int | None = None, mix=None, mix_window_s: float = 60.0,
        start_offset: float = 0.0, **pad) -> WorkloadParams:
    """Azure Functions per-minute counts as a rate schedule.

    One trace minute lasts ``60 / time_scale`` seconds; rates are rescaled so their mean is
    `target_mean_rate` (default: the trace's own invocations per second of scaled time).
    """
    if not (time_scale > 0):
        raise ValueError(f"time_scale = {time_scale}: must be > 0")
    counts = load_maf_minute_counts(path, functions=functions, minutes=minutes)
    window_s = 60.0 / time_scale
    rates = counts / window_s
    if target_mean_rate is not None:
        if not (target_mean_rate > 0):
            raise ValueError(f"target_mean_rate = {target_mean_rate}: must be > 0")
        if rates.mean() <= 0:
            raise ValueError(f"{path}: the selected minutes have no invocations")
        rates = rates * (float(target_mean_rate) / rates.mean())
    return _make(SCHEDULE, rates, window_s, cv, mix, n_tasks, mix_window_s, start_offset, **pad)


def trace(path=None, times=None, tasks=None, target_mean_rate: float | None = None, column: str | None = None,
          n_tasks: int | None = None, mix=None, mix_window_s: float = 60.0, start_offset: float = 0.0,
          **pad) -> WorkloadParams:
    """Replay real timestamps (from `path` or `times`), optionally rescaled to a mean rate.

    The replay wraps around after the last arrival plus one mean gap. `tasks` fixes each
    request's task; otherwise tasks are drawn from the mix.
    """
    if (path is None) == (times is None):
        raise ValueError("trace(): give exactly one of path= or times=")
    t = load_trace_times(path, column) if path is not None else np.asarray(times, np.float64)
    if t.ndim != 1 or t.size == 0:
        raise ValueError(f"times: need a non-empty 1-D array, got shape {t.shape}")
    if (np.diff(t) < 0).any():
        i = int(np.nonzero(np.diff(t) < 0)[0][0]) + 1
        raise ValueError(f"times[{i}] = {t[i]} is before times[{i - 1}] = {t[i - 1]}: arrivals must be sorted")
    t = t - t[0]
    span = t[-1]
    mean_gap = span / (t.size - 1) if t.size > 1 and span > 0 else 1.0
    if target_mean_rate is not None:
        if not (target_mean_rate > 0):
            raise ValueError(f"target_mean_rate = {target_mean_rate}: must be > 0")
        scale = (1.0 / mean_gap) / float(target_mean_rate)
        t, mean_gap = t * scale, mean_gap * scale
    period = t[-1] + mean_gap
    return _make(TRACE, [1.0 / mean_gap], 1.0, 1.0, mix, n_tasks, mix_window_s, start_offset,
                 trace_times=t, trace_tasks=tasks, trace_period=period, **pad)


def stack_workloads(items: Sequence[WorkloadParams]) -> WorkloadParams:
    """Batch workloads into one pytree (leading axis) for `vmap`; pads them to common sizes."""
    if not items:
        raise ValueError("stack_workloads: empty list")
    sizes = {k: max(getattr(w, k).shape[0] for w in items) for k in ("rates", "trace_times", "mix")}

    def pad_to(w):
        f = lambda x, n, fill: jnp.asarray(_pad(np.asarray(x), n, fill), x.dtype)
        return w.replace(rates=f(w.rates, sizes["rates"], 0.0), trace_times=f(w.trace_times, sizes["trace_times"], 0.0),
                         trace_tasks=f(w.trace_tasks, sizes["trace_times"], -1), mix=f(w.mix, sizes["mix"], 0.0))

    padded = [pad_to(w) for w in items]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *padded)


def sample_arrivals(key, wp: WorkloadParams, n: int):
    """The first `n` arrivals ``(times, tasks)`` of a workload as numpy arrays."""
    k0, k1 = jax.random.split(key)

    @jax.jit
    def run(k0, k1, wp):
        ws, t0, task0 = workload_init(k0, wp)

        def body(ws, k):
            ws, t, task = workload_next(k, ws, wp)
            return ws, (t, task)

        _, (ts, tasks) = jax.lax.scan(body, ws, jax.random.split(k1, n - 1))
        return jnp.concatenate([t0[None], ts]), jnp.concatenate([task0[None], tasks])

    times, tasks = run(k0, k1, wp)
    return np.asarray(times), np.asarray(tasks)
