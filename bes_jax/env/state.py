"""`EnvState`: queues, servers, the pending request and the outcome ring of one environment."""
from __future__ import annotations

import jax.numpy as jnp
from flax import struct

# Outcome status codes (docs/simulator.md "Requests and outcomes"); RUNNING (admitted to a
# running set, not yet complete) exists only under continuous batching.
EMPTY, QUEUED, SERVED, DROPPED, REJECTED, RUNNING = 0, 1, 2, 3, 4, 5


@struct.dataclass
class Outcomes:
    """Per-decision record, a ring indexed by ``decision_id % outcome_slots``.

    A learner attaches rewards from here: slot ``i % H`` is resolved once ``status`` is
    SERVED/DROPPED/REJECTED and ``finish <= clock``; until then its reward is unknown.
    """

    decision: jnp.ndarray  # [H] int32 decision id stored in the slot (-1: never used)
    arrival: jnp.ndarray   # [H]
    task: jnp.ndarray      # [H] int32
    model: jnp.ndarray     # [H] int32
    replica: jnp.ndarray   # [H] int32
    start: jnp.ndarray     # [H] batch start (NaN unless served)
    finish: jnp.ndarray    # [H] time the outcome is realised
    reward: jnp.ndarray    # [H]
    status: jnp.ndarray    # [H] int8 code


@struct.dataclass
class EnvState:
    # replicas
    queue: jnp.ndarray         # [R, C] int32 decision ids, a FIFO ring per replica
    queue_arrival: jnp.ndarray # [R, C] their arrival times, and tasks: what batch formation
    queue_task: jnp.ndarray    # [R, C] int32 reads (never the outcome ring: a record only)
    queue_head: jnp.ndarray    # [R] int32 ring index of the oldest queued request
    queue_len: jnp.ndarray     # [R] int32
    inflight: jnp.ndarray      # [R] int32 requests in the running batch of this replica
    # servers (a replica in concurrent mode, a GPU in exclusive mode)
    busy: jnp.ndarray          # [S] bool
    free_at: jnp.ndarray       # [S] busy-until if busy, else the time it went idle
    batch_replica: jnp.ndarray # [S] int32 replica of the running batch
    batch_value: jnp.ndarray   # [S] summed reward of the running batch, realised at its end
    # pending request (the one the next action routes)
    now: jnp.ndarray           # its arrival time: the simulation clock
    task: jnp.ndarray          # int32
    decision: jnp.ndarray      # int32 its decision id
    ewma_gap: jnp.ndarray      # EWMA of inter-arrival gaps
    episode_step: jnp.ndarray  # int32 decisions taken in the current episode
    # what the routing rule would do for the pending request, per model
    chosen_replica: jnp.ndarray  # [M] int32
    wait: jnp.ndarray            # [M] predicted wait before it could start (inf: impossible)
    predicted_finish: jnp.ndarray  # [M] predicted completion time (inf: impossible)
    evicted: jnp.ndarray       # int32 decisions whose ring slot was reused before they resolved
    outcomes: Outcomes
    workload: object           # bes_jax.workloads.WorkloadState
    autoscale: object = None   # AutoscaleState with cfg.autoscale, else None (no leaves)


@struct.dataclass
class AutoscaleState:
    """The reactive autoscaler's state (docs/simulator.md "Autoscaler"), per replica slot [R].

    A slot is *off* (``~alloc``), *starting* (``alloc``, ``ready_at > now``), *up* (``alloc``,
    ready, not draining) or *draining* (removed: takes no new request, released when empty).
    """

    alloc: jnp.ndarray        # [R] bool: holds a GPU (starting, up or draining)
    draining: jnp.ndarray     # [R] bool: removed, finishing its queue and batch
    ready_at: jnp.ndarray     # [R] time it becomes routable (its decision + spin-up)
    down_at: jnp.ndarray      # [R] time it was removed (while draining)
    next_decision: jnp.ndarray  # the first arrival at or after this time decides
    last_action: jnp.ndarray  # time of the last scale action (cool-down)
    clock: jnp.ndarray        # the last arrival it has seen (the pending request's)
    gpu_s: jnp.ndarray        # GPU-seconds from the first arrival to `clock`
    n_up: jnp.ndarray         # int32 replicas added so far
    n_down: jnp.ndarray       # int32 replicas removed so far
    # the same three through the arrival before `clock`: after a step, the last routed request's
    # (the env has already seen the next, pending, arrival); what a run reports
    gpu_s_routed: jnp.ndarray
    n_up_routed: jnp.ndarray
    n_down_routed: jnp.ndarray


def slot_resolved(o, slot, now) -> jnp.ndarray:
    """Whether ring slot ``slot`` may take a new decision without losing one: never used, or
    its decision's outcome is final and realised by ``now`` (what a learner needs to read it)."""
    st = o.status[slot]
    final = (st == SERVED) | (st == DROPPED) | (st == REJECTED)
    return (o.decision[slot] < 0) | (final & (o.finish[slot] <= now))


def own_slots(decision: jnp.ndarray, e, ids: jnp.ndarray, H: int) -> jnp.ndarray:
    """Ring slots of requests ``ids`` of environments ``e`` (``decision``: the batched ring's
    [N, H] ids), or ``H`` (an out-of-range index, so a ``mode="drop"`` scatter skips it) where a
    newer decision has taken the slot."""
    slots = ids % H
    return jnp.where(decision[e, slots] == ids, slots, H)
