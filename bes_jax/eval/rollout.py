"""Run a router through the simulator: a `lax.scan` over decisions of a batch of environments.

Environments in the batch may share `params` or each have their own (``params_axis=0``: a
rate or deadline sweep in one compiled program).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from bes_jax.env import ServingEnv
from bes_jax.eval.metrics import autoscale_metrics, metrics_kwargs, run_metrics
from bes_jax.routers import Router
from bes_jax.sim_config import SimConfig


def eval_config(cfg: SimConfig, n_decisions: int, b_max: int = 64) -> SimConfig:
    """Same setup, with an outcome record large enough to keep every decision of the run (and
    larger than what can be in the system, however many GPUs)."""
    n_models_guess = len(cfg.replicas) if cfg.replicas else 8
    bound = cfg.in_system_bound(n_models_guess, b_max)
    slots = max(cfg.outcome_slots, n_decisions + 1, bound + 1)
    return dataclasses.replace(cfg, outcome_slots=slots, episode_len=max(cfg.episode_len, n_decisions))


def make_run(env: ServingEnv, router, n_decisions: int, drain: bool = True, params_axis=None):
    """``run(keys[N], params) -> final EnvState[N]`` after `n_decisions` routed requests each.

    ``router``: one `Router`, or a sequence of R routers: then ``keys`` is ``[R * N]`` and
    environment ``r * N + n`` is routed by router ``r`` (one compiled program for all of them,
    each environment taking its router's branch of a `lax.switch`; with the same keys an
    environment's run is the one a single-router run gives). ``run(keys, params, router_index)``
    names each environment's router instead (``[N]`` ints; any order, e.g. one device's shard)."""
    if isinstance(router, Router):
        v_act = jax.vmap(router.act, in_axes=(0, 0, 0, params_axis))
    else:
        acts = [r.act for r in router]
        v_act = jax.vmap(lambda i, k, o, st, p: jax.lax.switch(i, acts, k, o, st, p),
                         in_axes=(0, 0, 0, 0, params_axis))

    def run(keys, params, router_index=None):
        if not isinstance(router, Router) and router_index is None:
            router_index = jnp.repeat(jnp.arange(len(router)), keys.shape[0] // len(router))
        act = v_act if isinstance(router, Router) else (lambda k, o, st, p: v_act(router_index, k, o, st, p))
        k_reset = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
        k_steps = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
        obs, state = jax.vmap(env.reset, in_axes=(0, params_axis))(k_reset, params)

        def body(carry, t):
            obs, state = carry
            k = jax.vmap(lambda kk: jax.random.fold_in(kk, t))(k_steps)
            k_act = jax.vmap(lambda kk: jax.random.fold_in(kk, 0))(k)
            k_step = jax.vmap(lambda kk: jax.random.fold_in(kk, 1))(k)
            action = act(k_act, obs, state, params)
            obs, state, _, _, _ = env.step_batch(k_step, state, action, params, params_axis)
            return (obs, state), None

        (obs, state), _ = jax.lax.scan(body, (obs, state), jnp.arange(n_decisions))
        return env.drain_batch(state, params, params_axis) if drain else state

    return run


def metric_windows(n_decisions: int, window_s: float, workload=None) -> int:
    """The static number of metric windows for runs of `n_decisions` arrivals (``n_windows`` of
    :func:`make_evaluate`): windows are `window_s` seconds by arrival from the first arrival, and an
    arrival later than ``n_windows * window_s`` would be counted in no window.

    The bound is the larger of
    - ``n_decisions + 1``: enough whenever no window between the first and last arrival is empty;
    - with `workload` (WorkloadParams, a stack of them, or EnvParams), an upper estimate of the
      time `n_decisions` arrivals can take: for a trace replay the whole replay periods they can
      touch (``(n // trace_len + 2) * period``); for a rate schedule the time at its lowest
      non-zero window rate of ``n + 6 cv sqrt(n) + 6`` arrivals (six standard deviations of a
      renewal process with gap CV `cv`) plus the zero-rate windows of every cycle it can span.
    Rounded up to a power of two, so nearby runs share a compiled program.
    """
    import math

    import numpy as np

    n = int(n_decisions)
    need = n + 1
    if workload is not None:
        wp = getattr(workload, "workload", workload)  # EnvParams -> its WorkloadParams
        base_ndim = {"kind": 0, "rates": 1, "n_windows": 0, "window_s": 0, "cv": 0, "trace_len": 0, "trace_period": 0}
        leaves = {k: np.asarray(getattr(wp, k)) for k in base_ndim}
        batched = {k: v.ndim > base_ndim[k] for k, v in leaves.items()}  # stacked leaves (others shared)
        n_items = max([int(v.shape[0]) for k, v in leaves.items() if batched[k]], default=1)
        b = lambda k, i: leaves[k][i] if batched[k] else leaves[k]
        for i in range(n_items):
            kind, rates = int(b("kind", i)), np.asarray(b("rates", i), np.float64)
            if kind == 1:  # trace replay
                span = (n // max(int(b("trace_len", i)), 1) + 2) * float(b("trace_period", i))
            else:
                r = rates[:max(int(b("n_windows", i)), 1)]
                pos = r[r > 0]
                if pos.size == 0:
                    continue
                span = (n + 6.0 * float(b("cv", i)) * math.sqrt(n) + 6.0) / float(pos.min())
                zero_s = float((r <= 0).sum()) * float(b("window_s", i))
                if zero_s > 0:
                    span += (math.ceil(span / (pos.size * float(b("window_s", i)))) + 1) * zero_s
            if math.isfinite(span):
                need = max(need, math.ceil(span / float(window_s)) + 1)
    return 1 << (int(need) - 1).bit_length()


def make_evaluate(env: ServingEnv, router, n_decisions: int, window_s: float, n_windows: int,
                  params_axis=None):
    """``evaluate(keys[N], params) -> metrics[N]`` (jittable); ``n_windows``: see :func:`metric_windows`.
    A sequence of R routers (shared params only) evaluates them all in one program:
    ``evaluate(keys[N], params) -> metrics[R * N]``, router ``r``'s runs at ``r * N ...``; or
    ``evaluate(keys[M], params, router_index[M]) -> metrics[M]``, environment ``m`` routed by
    router ``router_index[m]`` (how the runs split over devices: :func:`evaluate_on_devices`).

    With the autoscaler on (``env.autoscale``) the metrics also hold `AUTOSCALE_METRICS`
    (GPU-seconds and the rest, :func:`bes_jax.eval.metrics.autoscale_metrics`)."""
    run = make_run(env, router, n_decisions, params_axis=params_axis)
    autoscaled = bool(getattr(env, "autoscale", False))

    many = not isinstance(router, Router)
    if many and params_axis is not None:
        raise ValueError("make_evaluate: several routers share one params (params_axis=None)")

    def evaluate(keys, params, router_index=None):
        if many and router_index is None:
            keys = jnp.tile(keys, (len(router),) + (1,) * (keys.ndim - 1))
        state = run(keys, params, router_index)
        metric = lambda o, p: run_metrics(o, p.quality, p.deadline, jnp.inf, env.cfg.n_gpus, window_s, n_windows,
                                          **metrics_kwargs(p))
        out = jax.vmap(metric, in_axes=(0, params_axis))(state.outcomes, params)
        if autoscaled:
            out.update(jax.vmap(autoscale_metrics)(state.autoscale, state.outcomes))
        return out

    return evaluate


def evaluate_on_devices(env: ServingEnv, routers, n_decisions: int, window_s: float, n_windows: int, keys, params,
                        n_devices: int | None = None):
    """``make_evaluate(env, routers, ...)(keys, params)`` (R routers x N keys, router-major), the
    R * N runs split over ``n_devices`` local devices (default: all; one device: the plain program).

    Each device runs its share of the environments (padded with copies of the last to an equal
    share; the copies are dropped): on a CPU with one device per core (`use_host_devices`) the
    comparison uses more of the cores than one program does (1.2x on 2 cores, compilation included:
    scripts/bench_comparison.py, docs/benchmarks.md). An environment's run does not depend on the others, so
    the metrics are those of the one-device program (a percentile's interpolation may round
    differently in the last float bits: the main job's p99 latencies within 1e-5 relative).

    Returns the metrics on the host (numpy arrays, either way): any JAX op on the split output
    (a slice, picking one run) is a program over every device with a collective in it, and
    XLA:CPU aborts the process when one device reaches a collective 40 s before another, as the
    device whose share of routers runs longer does on a loaded machine."""
    from bes_jax.env.devices import shard_envs

    ev = make_evaluate(env, list(routers), n_decisions, window_s, n_windows)
    D = min(n_devices or jax.local_device_count(), jax.local_device_count())
    if D <= 1:
        return jax.device_get(jax.jit(ev)(keys, params))
    R, N = len(routers), int(keys.shape[0])
    E = R * N
    per = -(-E // D)
    take = np.minimum(np.arange(per * D), E - 1)  # pad with the last environment
    all_keys = jnp.tile(keys, (R,) + (1,) * (keys.ndim - 1))[take]
    index = jnp.asarray(np.repeat(np.arange(R), N)[take], dtype=jnp.int32)
    m = jax.device_get(shard_envs(lambda k, i, p: ev(k, p, i), D, n_shared=1)(all_keys, index, params))
    return jax.tree.map(lambda x: x[:E], m)
