"""Workload parameters and state: arrays only, so envs with different workloads share a program."""
from __future__ import annotations

import jax.numpy as jnp
from flax import struct

SCHEDULE, TRACE = 0, 1


@struct.dataclass
class WorkloadParams:
    kind: jnp.ndarray          # int32: 0 = rate schedule (poisson/gamma/schedule/maf), 1 = trace replay
    rates: jnp.ndarray         # [W] requests/s per window (cyclic)
    n_windows: jnp.ndarray     # int32 valid windows
    window_s: jnp.ndarray      # window length (s)
    cv: jnp.ndarray            # coefficient of variation of gaps inside a window (1 = Poisson)
    trace_times: jnp.ndarray   # [N] seconds from the trace start
    trace_len: jnp.ndarray     # int32 valid entries
    trace_period: jnp.ndarray  # replay wraps after this many seconds
    trace_tasks: jnp.ndarray   # [N] int32 task per entry, -1 = draw from the mix
    mix: jnp.ndarray           # [K, T] task probabilities, row k during mix window k (cyclic)
    n_mix: jnp.ndarray         # int32 valid rows
    mix_window_s: jnp.ndarray
    start_offset: jnp.ndarray  # seconds into the schedule / trace at the workload's start (`origin`)
    # [N] int32 prompt / output tokens per trace entry, -1 = not given (the simulator draws it from
    # the profile's task length distribution); all -1 for schedules. Read only by the `_request`
    # generators (continuous batching), so request-level runs never touch them.
    trace_prompt: jnp.ndarray
    trace_output: jnp.ndarray

    @property
    def n_tasks(self) -> int:
        return self.mix.shape[-1]


@struct.dataclass
class WorkloadState:
    t: jnp.ndarray       # time of the latest arrival (env clock, seconds)
    idx: jnp.ndarray     # int32 arrivals produced since the workload started at `origin`
    origin: jnp.ndarray  # env-clock time at which the workload started (0 at reset): its clock 0
