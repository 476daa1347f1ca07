"""`EnvParams`: every number the simulator reads, as arrays.

Being arrays (not Python constants) lets one compiled program sweep deadlines, rates and
reward settings under `jax.vmap` (gymnax style). Shapes are fixed by the `ServingEnv`.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import struct

from bes_jax.profile import Profile
from bes_jax.sim_config import SimConfig


def default_float():
    """JAX's default float (float32, or float64 under `jax_enable_x64`)."""
    return jnp.result_type(float)


@struct.dataclass
class EnvParams:
    latency: jnp.ndarray         # [M, T, B_max] seconds for a batch of size b = index + 1
    quality: jnp.ndarray         # [M, T]
    deadline: jnp.ndarray        # [T] seconds
    replica_valid: jnp.ndarray   # [M * R_max] bool: replica slot exists
    replica_count: jnp.ndarray   # [M] float: replicas per model
    soft: jnp.ndarray            # bool: soft deadlines (else hard)
    soft_exp: jnp.ndarray        # bool: exponential decay (else linear)
    soft_slack: jnp.ndarray
    soft_tau: jnp.ndarray
    miss_penalty: jnp.ndarray
    latency_weight: jnp.ndarray
    ewma_alpha: jnp.ndarray
    ref_rate: jnp.ndarray
    episode_len: jnp.ndarray     # int32
    workload: object             # bes_jax.workloads.WorkloadParams
    autoscale: object = None     # AutoscaleParams with cfg.autoscale, else None (no leaves)

    @property
    def peak(self) -> jnp.ndarray:
        """Best quality per task: what serving everything on time with the best model gives."""
        return self.quality.max(axis=0)


@struct.dataclass
class AutoscaleParams:
    """The autoscaler's numbers (docs/simulator.md "Autoscaler"); arrays, so one program can
    sweep them. The pool (one slot per GPU of the served model) is static layout."""

    min_replicas: jnp.ndarray   # int32
    initial: jnp.ndarray        # int32
    interval: jnp.ndarray       # seconds between decisions
    use_rate: jnp.ndarray       # bool: load = estimated arrival rate (else requests in system)
    target: jnp.ndarray         # load per replica
    spinup: jnp.ndarray         # seconds from decision to routable
    cooldown: jnp.ndarray       # seconds after a scale action with no scale-down


def make_autoscale_params(cfg: SimConfig):
    if not cfg.autoscale:
        return None
    f = default_float()
    return AutoscaleParams(
        min_replicas=jnp.asarray(cfg.autoscale_min, jnp.int32),
        initial=jnp.asarray(cfg.autoscale_initial_replicas, jnp.int32),
        interval=jnp.asarray(cfg.autoscale_interval_s, f),
        use_rate=jnp.asarray(cfg.autoscale_metric == "rate"),
        target=jnp.asarray(cfg.autoscale_target, f),
        spinup=jnp.asarray(cfg.autoscale_spinup_s, f),
        cooldown=jnp.asarray(cfg.autoscale_cooldown_s, f))


def make_env_params(profile: Profile, cfg: SimConfig, workload, r_max: int) -> EnvParams:
    f = default_float()
    counts = cfg.replica_counts(profile.n_models)
    valid = np.zeros((profile.n_models, r_max), dtype=bool)
    for m, c in enumerate(counts):
        valid[m, :c] = True
    return EnvParams(
        latency=jnp.asarray(profile.latency, f),
        quality=jnp.asarray(profile.quality, f),
        deadline=jnp.asarray(cfg.task_deadlines(profile), f),
        replica_valid=jnp.asarray(valid.reshape(-1)),
        replica_count=jnp.asarray(np.asarray(counts, dtype=np.float64), f),
        soft=jnp.asarray(cfg.deadline_kind == "soft"),
        soft_exp=jnp.asarray(cfg.soft_decay == "exp"),
        soft_slack=jnp.asarray(cfg.soft_slack, f),
        soft_tau=jnp.asarray(cfg.soft_tau, f),
        miss_penalty=jnp.asarray(cfg.miss_penalty, f),
        latency_weight=jnp.asarray(cfg.latency_weight, f),
        ewma_alpha=jnp.asarray(cfg.ewma_alpha, f),
        ref_rate=jnp.asarray(cfg.ref_rate, f),
        episode_len=jnp.asarray(cfg.episode_len, jnp.int32),
        workload=workload,
        autoscale=make_autoscale_params(cfg),
    )
