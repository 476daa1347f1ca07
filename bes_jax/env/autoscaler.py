"""The reactive autoscaler of request-level mode, as pure functions over `AutoscaleState`.

Semantics: docs/simulator.md "Autoscaler (`autoscale`)". `ServingEnv` calls `init` at reset and
`at_arrival` when a request becomes pending (before its routing view is built), both only when
``cfg.autoscale`` is on; with it off nothing here is traced and the compiled step is unchanged.
Arrays are over the env's replica slots ``[R]``; ``pool`` [R] (static numpy) marks the served
model's slots, one per GPU.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bes_jax.env.params import AutoscaleParams
from bes_jax.env.state import AutoscaleState


def pool_mask(cfg, n_models: int, r_max: int) -> np.ndarray:
    """[M * R_max] bool: the slots of the served model (replica k on GPU k)."""
    counts = cfg.replica_counts(n_models)
    mask = np.zeros((n_models, r_max), bool)
    for m, c in enumerate(counts):
        mask[m, :c] = True
    return mask.reshape(-1)


def init(p: AutoscaleParams, pool: np.ndarray, t0) -> AutoscaleState:
    """At the first arrival ``t0``: the lowest ``initial`` pool slots, allocated and ready."""
    f = jnp.asarray(t0).dtype
    pool = jnp.asarray(pool)
    alloc = pool & (jnp.cumsum(pool) <= p.initial)
    t = jnp.full(pool.shape, t0, f)
    zero, izero = jnp.zeros((), f), jnp.zeros((), jnp.int32)
    return AutoscaleState(
        alloc=alloc, draining=jnp.zeros(pool.shape, bool), ready_at=t, down_at=t,
        next_decision=(t0 + p.interval).astype(f), last_action=jnp.asarray(t0, f), clock=jnp.asarray(t0, f),
        gpu_s=zero, n_up=izero, n_down=izero, gpu_s_routed=zero, n_up_routed=izero, n_down_routed=izero)


def routable(a: AutoscaleState, now) -> jnp.ndarray:
    """[R] bool: replicas the routing rule may pick at ``now`` (up: allocated, ready, not draining)."""
    return a.alloc & ~a.draining & (a.ready_at <= now)


def release(a: AutoscaleState, now, in_system, idle, idle_since) -> AutoscaleState:
    """Release every draining replica with nothing queued or in flight on an idle server, at
    ``max(down_at, idle_since)`` (when it emptied, or its removal if it was already empty);
    ``gpu_s`` (counted to ``now``) loses the time from its release to ``now``."""
    done = a.alloc & a.draining & (in_system == 0) & idle
    at = jnp.maximum(a.down_at, idle_since)
    gpu = a.gpu_s - jnp.sum(jnp.where(done, now - at, 0.0))
    return a.replace(alloc=a.alloc & ~done, draining=a.draining & ~done, gpu_s=gpu.astype(a.gpu_s.dtype))


def decide(a: AutoscaleState, p: AutoscaleParams, pool, now, in_system, rate) -> AutoscaleState:
    """One decision at arrival ``now``: desired = clip(ceil(load / target), min, pool size)."""
    n_pool = int(np.asarray(pool).sum())  # static
    pool = jnp.asarray(pool)
    f = a.ready_at.dtype
    load = jnp.where(p.use_rate, rate, jnp.sum(jnp.where(pool, in_system, 0)).astype(f))
    desired = jnp.clip(jnp.ceil(load / p.target), p.min_replicas, n_pool).astype(jnp.int32)
    active = a.alloc & ~a.draining
    n_active = active.sum().astype(jnp.int32)
    # scale up: the lowest-index off slots, routable after the spin-up
    off = pool & ~a.alloc
    n_add = jnp.minimum(jnp.maximum(desired - n_active, 0), off.sum().astype(jnp.int32))
    add = off & (jnp.cumsum(off) <= n_add)
    # scale down (after the cool-down): the active replicas that become ready last (starting
    # ones first), ties to the highest index
    can_down = (desired < n_active) & (now - a.last_action >= p.cooldown)
    n_rm = jnp.where(can_down, n_active - desired, 0).astype(jnp.int32)
    idx = jnp.arange(pool.shape[0])
    later = (a.ready_at[None, :] > a.ready_at[:, None]) | (
        (a.ready_at[None, :] == a.ready_at[:, None]) & (idx[None, :] > idx[:, None]))
    rank = jnp.sum(active[None, :] & later, axis=1)  # active replicas removed before this one
    rm = active & (rank < n_rm)
    acted = (n_add > 0) | (n_rm > 0)
    return a.replace(
        alloc=a.alloc | add, draining=a.draining | rm,
        ready_at=jnp.where(add, now + p.spinup, a.ready_at).astype(f),
        down_at=jnp.where(rm, now, a.down_at).astype(f),
        last_action=jnp.where(acted, now, a.last_action).astype(f),
        next_decision=(now + p.interval).astype(f),
        n_up=a.n_up + n_add, n_down=a.n_down + n_rm)


def at_arrival(a: AutoscaleState, p: AutoscaleParams, pool, now, in_system, idle, idle_since, rate) -> AutoscaleState:
    """What happens when a request arrives at ``now``, before its routing view: GPU-seconds
    advance to ``now``, releases, then (if due) a decision, then releases again (a replica
    removed while empty goes at once). ``in_system`` [R]: queued + in flight; ``idle`` [R]: its
    server runs no batch at ``now``; ``idle_since`` [R]: when that server's last batch ended (or
    it last went idle); ``rate``: the EWMA arrival-rate estimate."""
    f = a.gpu_s.dtype
    a = a.replace(gpu_s_routed=a.gpu_s, n_up_routed=a.n_up, n_down_routed=a.n_down,
                  gpu_s=(a.gpu_s + a.alloc.sum() * (now - a.clock)).astype(f), clock=jnp.asarray(now, f))
    a = release(a, now, in_system, idle, idle_since)
    due = now >= a.next_decision
    a = jax.tree.map(lambda u, v: jnp.where(due, u, v), decide(a, p, pool, now, in_system, rate), a)
    return release(a, now, in_system, idle, idle_since)


def run_totals(a: AutoscaleState) -> dict:
    """What a run of ``n`` decisions reports, through its last routed arrival: ``gpu_seconds``
    (allocated replicas integrated from the first arrival), ``n_scale_up``, ``n_scale_down``.
    (The state has already seen the pending arrival after it; its decision is not counted.)"""
    return {"gpu_seconds": a.gpu_s_routed, "n_scale_up": a.n_up_routed, "n_scale_down": a.n_down_routed}
