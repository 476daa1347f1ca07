"""Arrival generation inside `jit`: one cheap, fixed-cost draw per simulator step.

Times inside a workload are measured from its start, ``origin`` in the state (0 at reset;
the clock at the switch when `workload_restart` installs another workload mid-run), so a
newly installed workload continues from the current clock and the clock never runs back.

Schedules: the gap after an arrival at time t is drawn with the rate of the window holding
``start_offset + t - origin`` (an approximation of a non-homogeneous process that is exact
for constant rates): exponential when cv = 1, else Gamma with shape 1/cv^2 and mean 1/rate.
If that window's rate is 0, the process restarts at the start of the next window with a
positive rate. Gamma uses Marsaglia-Tsang with a few vectorised candidates (no while loop,
so `vmap` stays cheap) and the U^(1/a) boost for shape < 1. Traces replay their
timestamps cyclically from the position given by ``start_offset``, shifted to ``origin``.

The ``_request`` variants (`workload_init_request`, `workload_next_request`) give the same
time and task for a key plus the request's prompt and output tokens (int32, -1 = not given
by the workload: the simulator draws it from the profile's task length distribution). They
are what the continuous-batching simulator calls; request mode keeps calling the plain ones.

Both branches (schedule and trace) are computed for every environment and one is picked
with `jnp.where`, so environments of different kinds share one compiled program.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from bes_jax.short_axis import any_last, first_true, sum_last
from bes_jax.workloads.params import TRACE, WorkloadParams, WorkloadState

#: Marsaglia-Tsang candidates per draw; the acceptance rate is >= 0.95 for the shapes used
#: (shape < 1 is drawn at shape + 1), so all four fail with probability < 1e-5, and then the
#: mode of the distribution is returned (a negligible bias).
N_CANDIDATES = 4


def _float():
    return jnp.result_type(float)


def _gamma_and_exp(key, shape):
    """A Gamma(shape, scale=1/shape) draw and an Exp(1) draw, both mean 1, from one key."""
    f = _float()
    shape = jnp.asarray(shape, f)
    k_n, k_u = jax.random.split(key)
    normals = jax.random.normal(k_n, (N_CANDIDATES,), f)
    u = jax.random.uniform(k_u, (N_CANDIDATES + 2,), f, minval=1e-12, maxval=1.0)
    a = jnp.where(shape < 1.0, shape + 1.0, shape)
    d = a - 1.0 / 3.0
    c = 1.0 / jnp.sqrt(9.0 * d)
    v = (1.0 + c * normals) ** 3
    log_v = jnp.log(jnp.maximum(v, 1e-30))
    ok = (v > 0) & (jnp.log(u[:N_CANDIDATES]) < 0.5 * normals ** 2 + d - d * v + d * log_v)
    x = jnp.where(any_last(ok), d * v[first_true(ok)], d)
    x = jnp.where(shape < 1.0, x * u[N_CANDIDATES] ** (1.0 / shape), x)  # Gamma(a) = Gamma(a+1) U^(1/a)
    return x / shape, -jnp.log(u[N_CANDIDATES + 1])


def gamma_unit_mean(key, shape):
    """One Gamma(shape, scale=1/shape) draw (mean 1, CV 1/sqrt(shape)) at fixed cost.

    Jittable, vmappable over `key` and `shape`; `shape` > 0.
    """
    return _gamma_and_exp(key, shape)[0]


def _rate_base(t_prev, origin, wp: WorkloadParams):
    """``(base, rate)``: the gap is drawn at `rate` and added to `base` (the previous arrival,
    or the start of the next window with a positive rate if the current one has rate 0)."""
    n = jnp.maximum(wp.n_windows, 1)
    x = wp.start_offset + (t_prev - origin)
    w_abs = jnp.floor(x / wp.window_s)
    w = w_abs.astype(jnp.int32) % n
    rate = wp.rates[w]
    k = _windows_to_positive(wp)[w]
    next_rate = wp.rates[(w + k) % n]
    next_start = jnp.maximum(origin + ((w_abs + k) * wp.window_s - wp.start_offset), t_prev)
    zero = rate <= 0
    return jnp.where(zero, next_start, t_prev), jnp.where(zero, next_rate, rate)


def _windows_to_positive(wp: WorkloadParams):
    """[W] windows from each window until one with a positive rate (0: itself; 0 if none).

    It depends on the workload only, not on the time, so it is computed once per step for
    all the environments that share a workload, not per environment."""
    n = jnp.maximum(wp.n_windows, 1)
    pos = jnp.arange(wp.rates.shape[0])
    positive = (pos < n) & (wp.rates > 0)
    ahead = jnp.where(positive[None, :], (pos[None, :] - pos[:, None]) % n, jnp.iinfo(jnp.int32).max)
    k = jnp.min(ahead, axis=1)
    return jnp.where(k == jnp.iinfo(jnp.int32).max, 0, k)


def _mix_task(u, t, origin, wp: WorkloadParams):
    """Task drawn with uniform `u` from the mix row of the window holding ``start_offset + t - origin``."""
    row = (jnp.floor((wp.start_offset + (t - origin)) / wp.mix_window_s).astype(jnp.int32)) % jnp.maximum(wp.n_mix, 1)
    cdf = jnp.cumsum(wp.mix, axis=1)[row]  # per workload, not per environment (as above)
    return jnp.minimum(sum_last((cdf <= u * cdf[-1]).astype(jnp.int32)), wp.mix.shape[-1] - 1)


def _trace_start(wp: WorkloadParams, offset):
    """Number of valid trace entries before `offset`: a fixed-step binary search (no loop)."""
    n_pad = wp.trace_times.shape[0]
    lo = jnp.zeros((), jnp.int32)
    hi = jnp.asarray(wp.trace_len, jnp.int32)
    for _ in range(max(1, math.ceil(math.log2(n_pad + 1)))):
        mid = (lo + hi) // 2
        go_right = wp.trace_times[jnp.minimum(mid, n_pad - 1)] < offset
        active = lo < hi
        lo = jnp.where(active & go_right, mid + 1, lo)
        hi = jnp.where(active & ~go_right, mid, hi)
    return lo


def _trace_arrival(j, wp: WorkloadParams):
    """Time (from the workload's start), listed task and trace entry of the j-th replayed
    arrival (j counts from the start offset); the time is non-decreasing in j and >= 0."""
    L = jnp.maximum(wp.trace_len, 1)
    period = jnp.maximum(wp.trace_period, jnp.finfo(wp.trace_period.dtype).tiny)
    lap0 = jnp.floor(wp.start_offset / period)
    offset = wp.start_offset - lap0 * period  # position inside the first lap
    k = _trace_start(wp, offset) + j
    lap = k // L
    i = k % L
    return wp.trace_times[i] + lap.astype(period.dtype) * period - offset, wp.trace_tasks[i], i


def _draw_entry(key, t_prev, j, origin, wp: WorkloadParams):
    """``(t, task, entry, is_trace)``: the arrival and the trace entry it replays."""
    k_gap, k_task = jax.random.split(key)
    f = t_prev.dtype
    base, rate = _rate_base(t_prev, origin, wp)
    unit_gamma, unit_exp = _gamma_and_exp(k_gap, 1.0 / wp.cv ** 2)
    unit = jnp.where(wp.cv == 1.0, unit_exp, unit_gamma)
    t_sched = base + unit / jnp.maximum(rate, jnp.finfo(f).tiny)
    t_rel, listed, entry = _trace_arrival(j, wp)
    # at or after the previous arrival (a guard against rounding: origin <= t_prev, t_rel >= 0)
    t_trace = jnp.maximum(origin + t_rel, t_prev)
    is_trace = wp.kind == TRACE
    t = jnp.where(is_trace, t_trace, t_sched).astype(f)
    drawn = _mix_task(jax.random.uniform(k_task, (), f), t, origin, wp)
    task = jnp.where(is_trace & (listed >= 0), listed, drawn)
    return t, task.astype(jnp.int32), entry, is_trace


def _draw(key, t_prev, j, origin, wp: WorkloadParams):
    t, task, _, _ = _draw_entry(key, t_prev, j, origin, wp)
    return t, task


def _draw_request(key, t_prev, j, origin, wp: WorkloadParams):
    """`_draw` plus the entry's tokens (-1 for schedules: the simulator draws them)."""
    t, task, entry, is_trace = _draw_entry(key, t_prev, j, origin, wp)
    none = jnp.asarray(-1, jnp.int32)
    prompt = jnp.where(is_trace, wp.trace_prompt[entry], none).astype(jnp.int32)
    output = jnp.where(is_trace, wp.trace_output[entry], none).astype(jnp.int32)
    return t, task, prompt, output


def workload_init(key, wp: WorkloadParams):
    """First arrival: ``(state, t0, task0)``.

    Schedules: t0 is one gap after time 0 (the env starts mid-process at `start_offset`).
    Traces: t0 is the first trace entry at or after `start_offset`, minus `start_offset`.
    """
    zero = jnp.zeros((), _float())
    t, task = _draw(key, zero, jnp.zeros((), jnp.int32), zero, wp)
    return WorkloadState(t, jnp.ones((), jnp.int32), zero), t, task


def workload_next(key, ws: WorkloadState, wp: WorkloadParams):
    """Next arrival after ``ws``: ``(state, t, task)``; pure and fixed-cost."""
    t, task = _draw(key, ws.t, ws.idx, ws.origin, wp)
    return WorkloadState(t, ws.idx + 1, ws.origin), t, task


def workload_init_request(key, wp: WorkloadParams):
    """First request: ``(state, t0, task0, prompt0, output0)``; ``t0``, ``task0`` and the state
    are exactly `workload_init`'s for the same key. Tokens are int32, -1 = not given by the
    workload (the simulator draws it from the task's length distribution in the profile)."""
    zero = jnp.zeros((), _float())
    t, task, prompt, output = _draw_request(key, zero, jnp.zeros((), jnp.int32), zero, wp)
    return WorkloadState(t, jnp.ones((), jnp.int32), zero), t, task, prompt, output


def workload_next_request(key, ws: WorkloadState, wp: WorkloadParams):
    """Next request after ``ws``: ``(state, t, task, prompt, output)``, the same state, time and
    task as `workload_next` for the same key, plus the tokens (-1 = not given)."""
    t, task, prompt, output = _draw_request(key, ws.t, ws.idx, ws.origin, wp)
    return WorkloadState(t, ws.idx + 1, ws.origin), t, task, prompt, output


def workload_restart(ws: WorkloadState, restart=True) -> WorkloadState:
    """Start the workload over at the latest arrival ``ws.t`` (where `restart`, a bool that
    broadcasts over a batch of states): call it when another workload is installed mid-run.

    The following `workload_next` calls then draw the arrivals that `workload_init` and
    `workload_next` would give from a reset, shifted by ``ws.t``: a trace replays from its
    `start_offset`, a schedule's windows and the mix rows start at their `start_offset`.
    So the clock never runs back (without it, a trace's j-th arrival would be read on its
    own clock from 0, before the current time when the new trace is faster).
    """
    restart = jnp.asarray(restart, bool)
    return WorkloadState(ws.t, jnp.where(restart, 0, ws.idx).astype(ws.idx.dtype),
                         jnp.where(restart, ws.t, ws.origin).astype(ws.origin.dtype))
