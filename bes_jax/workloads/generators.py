"""Arrival generation inside `jit`: one cheap, fixed-cost draw per simulator step.

Schedules: the gap after an arrival at time t is drawn with the rate of the window holding
t (an approximation of a non-homogeneous process that is exact for constant rates):
exponential when cv = 1, else Gamma with shape 1/cv^2 and mean 1/rate. Gamma uses
Marsaglia-Tsang with four vectorised candidates (no while loop, so `vmap` stays cheap;
the chance that all four are rejected is below 1e-5, and then the mode is used) and the
U^(1/a) boost for shape < 1. Traces replay their timestamps cyclically.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from bes_jax.workloads.params import TRACE, WorkloadParams, WorkloadState

N_CANDIDATES = 4


def _gamma_unit_mean(key, shape):
    """A Gamma(shape, 1/shape) draw (mean 1) at fixed cost."""
    k_n, k_u = jax.random.split(key)
    normals = jax.random.normal(k_n, (N_CANDIDATES,))
    u = jax.random.uniform(k_u, (N_CANDIDATES + 2,), minval=1e-12, maxval=1.0)
    a = jnp.where(shape < 1.0, shape + 1.0, shape)
    d = a - 1.0 / 3.0
    c = 1.0 / jnp.sqrt(9.0 * d)
    v = (1.0 + c * normals) ** 3
    ok = (v > 0) & (jnp.log(u[:N_CANDIDATES]) < 0.5 * normals ** 2 + d - d * v + d * jnp.log(jnp.maximum(v, 1e-30)))
    first = jnp.argmax(ok)
    x = jnp.where(ok.any(), d * v[first], d)
    x = jnp.where(shape < 1.0, x * u[N_CANDIDATES] ** (1.0 / shape), x)
    return x / shape, u[N_CANDIDATES + 1]


def _window(t, wp: WorkloadParams):
    return (jnp.floor((wp.start_offset + t) / wp.window_s).astype(jnp.int32)) % jnp.maximum(wp.n_windows, 1)


def _task(u, t, wp: WorkloadParams):
    row = (jnp.floor((wp.start_offset + t) / wp.mix_window_s).astype(jnp.int32)) % jnp.maximum(wp.n_mix, 1)
    cdf = jnp.cumsum(wp.mix[row])
    return jnp.minimum(jnp.sum(cdf < u * cdf[-1]), wp.mix.shape[-1] - 1).astype(jnp.int32)


def _trace_arrival(j, wp: WorkloadParams):
    """Time and listed task of the j-th replayed arrival (j counts from the start offset)."""
    L = jnp.maximum(wp.trace_len, 1)
    i0 = jnp.sum((wp.trace_times < wp.start_offset) & (jnp.arange(wp.trace_times.shape[0]) < L))
    k = i0 + j
    lap = k // L
    i = k % L
    return wp.trace_times[i] + lap * wp.trace_period - wp.start_offset, wp.trace_tasks[i]


def _draw(key, t_prev, j, wp: WorkloadParams):
    k_gap, k_task = jax.random.split(key)
    rate = wp.rates[_window(t_prev, wp)]
    unit, u_exp = _gamma_unit_mean(k_gap, 1.0 / wp.cv ** 2)
    unit = jnp.where(wp.cv == 1.0, -jnp.log(u_exp), unit)
    t_sched = t_prev + unit / jnp.maximum(rate, 1e-12)
    t_trace, listed = _trace_arrival(j, wp)
    is_trace = wp.kind == TRACE
    t = jnp.where(is_trace, t_trace, t_sched)
    drawn = _task(jax.random.uniform(k_task), t, wp)
    task = jnp.where(is_trace & (listed >= 0), listed, drawn)
    return t, task


def workload_init(key, wp: WorkloadParams):
    """First arrival: ``(state, t0, task0)``."""
    f = jnp.result_type(float)
    t, task = _draw(key, jnp.zeros((), f), jnp.zeros((), jnp.int32), wp)
    t = t.astype(f)
    return WorkloadState(t, jnp.ones((), jnp.int32)), t, task


def workload_next(key, ws: WorkloadState, wp: WorkloadParams):
    """Next arrival after ``ws``: ``(state, t, task)``."""
    t, task = _draw(key, ws.t, ws.idx, wp)
    t = t.astype(ws.t.dtype)
    return WorkloadState(t, ws.idx + 1), t, task
