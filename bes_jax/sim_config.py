"""Static description of a serving setup, shared by the JAX simulator and its reference twin.

Plain Python, no logic beyond validation: both simulators read the same numbers from it and
implement the semantics (docs/simulator.md) independently.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

PLACEMENTS = ("concurrent", "exclusive")
DEADLINE_KINDS = ("hard", "soft")
SOFT_DECAYS = ("linear", "exp")
OBS_MODES = ("paper", "rich")
BATCHINGS = ("request", "continuous")
CONTEXT_OVERFLOWS = ("truncate", "reject")
AUTOSCALE_METRICS = ("in_system", "rate")


class ConfigError(ValueError):
    """A simulator config value is invalid; the message names the field and value."""


@dataclass(frozen=True)
class SimConfig:
    #: request (the paper's request-level batches) or continuous (iteration-level, like vLLM)
    batching: str = "request"
    #: exclusive (a GPU runs one batch at a time, the default) or concurrent (an upper bound)
    placement: str = "exclusive"
    n_gpus: int = 4
    #: replicas per model (None: one replica of every model on every GPU).
    replicas: Optional[tuple[int, ...]] = None
    queue_capacity: int = 64
    drop_expired: bool = False
    deadline_kind: str = "hard"
    soft_decay: str = "linear"
    soft_slack: float = 1.0
    soft_tau: float = 0.5
    miss_penalty: float = 0.0
    latency_weight: float = 0.0
    #: per-task deadlines in seconds (None: the profile's defaults), then scaled.
    deadlines: Optional[tuple[float, ...]] = None
    deadline_scale: float = 1.0
    obs_mode: str = "paper"
    ewma_alpha: float = 0.05
    ref_rate: float = 100.0
    episode_len: int = 1000
    #: decisions remembered per environment (outcome ring); must exceed what can be in system.
    outcome_slots: int = 2048
    # ---- continuous batching (docs/simulator.md "Continuous batching"); unused in request mode
    #: most sequences in a replica's running set
    max_num_seqs: int = 64
    #: tokens one iteration processes (decode tokens + prefill chunks); >= max_num_seqs
    max_num_batched_tokens: int = 2048
    #: a request with prompt + output > the model's ctx_max: truncate the prompt, or reject it
    context_overflow: str = "truncate"
    #: per-task TTFT / TPOT deadlines in seconds (None: not configured), scaled by deadline_scale
    ttft_deadlines: Optional[tuple[float, ...]] = None
    tpot_deadlines: Optional[tuple[float, ...]] = None
    # ---- reactive autoscaler (docs/simulator.md "Autoscaler (`autoscale`)"); request mode only
    #: replicas of one model are added / removed on observed load; the n_gpus GPUs are its pool
    autoscale: bool = False
    #: the model it serves (profile index; -1: the last, the largest in the shipped profiles)
    autoscale_model: int = -1
    #: fewest replicas kept (>= 1) and replicas allocated at the first arrival (None: the minimum)
    autoscale_min: int = 1
    autoscale_initial: Optional[int] = None
    #: simulated seconds between two decisions (taken at arrivals)
    autoscale_interval_s: float = 10.0
    #: observed load: in_system (requests queued + in flight) or rate (estimated arrivals / s)
    autoscale_metric: str = "in_system"
    #: load one replica should carry (requests in system, or requests / s): desired = ceil(load / target)
    autoscale_target: float = 8.0
    #: a new replica becomes routable this long after the decision that adds it
    autoscale_spinup_s: float = 60.0
    #: no scale-down within this long after the last scale action
    autoscale_cooldown_s: float = 120.0

    def __post_init__(self):
        def bad(field_name, value, why):
            raise ConfigError(f"sim config: field '{field_name}' = {value!r}: {why}")

        if self.placement not in PLACEMENTS:
            bad("placement", self.placement, f"must be one of {PLACEMENTS}")
        if self.deadline_kind not in DEADLINE_KINDS:
            bad("deadline_kind", self.deadline_kind, f"must be one of {DEADLINE_KINDS}")
        if self.soft_decay not in SOFT_DECAYS:
            bad("soft_decay", self.soft_decay, f"must be one of {SOFT_DECAYS}")
        if self.batching not in BATCHINGS:
            bad("batching", self.batching, f"must be one of {BATCHINGS}")
        if self.context_overflow not in CONTEXT_OVERFLOWS:
            bad("context_overflow", self.context_overflow, f"must be one of {CONTEXT_OVERFLOWS}")
        if self.obs_mode not in OBS_MODES:
            bad("obs_mode", self.obs_mode, f"must be one of {OBS_MODES}")
        for name in ("n_gpus", "queue_capacity", "episode_len", "outcome_slots", "max_num_seqs",
                     "max_num_batched_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                bad(name, v, "must be a positive integer")
        for name in ("soft_slack", "soft_tau", "ref_rate", "deadline_scale"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v > 0):
                bad(name, v, "must be > 0")
        if not (0 < self.ewma_alpha <= 1):
            bad("ewma_alpha", self.ewma_alpha, "must be in (0, 1]")
        if self.miss_penalty < 0:
            bad("miss_penalty", self.miss_penalty, "must be >= 0 (the miss value is -miss_penalty)")
        if self.latency_weight < 0:
            bad("latency_weight", self.latency_weight, "must be >= 0")
        if self.drop_expired and self.deadline_kind != "hard":
            bad("drop_expired", self.drop_expired, "only meaningful with deadline_kind='hard'")
        if self.replicas is not None:
            object.__setattr__(self, "replicas", tuple(int(r) for r in self.replicas))
            if any(r < 0 for r in self.replicas) or sum(self.replicas) == 0:
                bad("replicas", self.replicas, "need non-negative counts and at least one replica")
        if self.max_num_batched_tokens < self.max_num_seqs:
            bad("max_num_batched_tokens", self.max_num_batched_tokens,
                f"must be >= max_num_seqs ({self.max_num_seqs}): every running sequence decodes each iteration")
        for name in ("deadlines", "ttft_deadlines", "tpot_deadlines"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, tuple(float(x) for x in v))
                if any(not x > 0 for x in getattr(self, name)):
                    bad(name, v, "every deadline must be > 0")
        self._check_autoscale(bad)

    def _check_autoscale(self, bad):
        if not isinstance(self.autoscale, bool):
            bad("autoscale", self.autoscale, "must be true or false")
        if self.autoscale_metric not in AUTOSCALE_METRICS:
            bad("autoscale_metric", self.autoscale_metric, f"must be one of {AUTOSCALE_METRICS}")
        for name in ("autoscale_interval_s", "autoscale_target"):
            v = getattr(self, name)
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and v > 0):
                bad(name, v, "must be > 0")
        for name in ("autoscale_spinup_s", "autoscale_cooldown_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and v >= 0):
                bad(name, v, "must be >= 0 seconds")
        if isinstance(self.autoscale_model, bool) or not isinstance(self.autoscale_model, int):
            bad("autoscale_model", self.autoscale_model, "must be a model index (-1: the last model)")
        v = self.autoscale_min
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            bad("autoscale_min", v, "must be an integer >= 1 (the autoscaler always keeps a replica)")
        v = self.autoscale_initial
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not self.autoscale_min <= v):
            bad("autoscale_initial", v, f"must be an integer >= autoscale_min ({self.autoscale_min}), or null")
        if not self.autoscale:
            return
        if self.batching != "request":
            bad("autoscale", True, f"implemented for batching='request' only (got batching={self.batching!r})")
        if self.replicas is not None:
            bad("replicas", self.replicas, "must be null with autoscale: the layout is autoscale_model's replicas, "
                "one per GPU of the n_gpus pool")
        if self.autoscale_min > self.n_gpus:
            bad("autoscale_min", self.autoscale_min, f"must be <= n_gpus ({self.n_gpus}, the pool)")
        if self.autoscale_initial is not None and self.autoscale_initial > self.n_gpus:
            bad("autoscale_initial", self.autoscale_initial, f"must be <= n_gpus ({self.n_gpus}, the pool)")

    # --------------------------------------------------------------- derived layout
    def replica_counts(self, n_models: int) -> tuple[int, ...]:
        if self.autoscale:  # the pool: one replica slot of the served model per GPU
            m = self.autoscale_model_index(n_models)
            return tuple(self.n_gpus if i == m else 0 for i in range(n_models))
        if self.replicas is None:
            return (self.n_gpus,) * n_models
        if len(self.replicas) != n_models:
            raise ConfigError(f"sim config: field 'replicas' = {self.replicas!r}: "
                              f"needs one count per model ({n_models})")
        return self.replicas

    def autoscale_model_index(self, n_models: int) -> int:
        """The model the autoscaler serves, as a non-negative index."""
        m = self.autoscale_model
        if not -n_models <= m < n_models:
            raise ConfigError(f"sim config: field 'autoscale_model' = {m!r}: needs a model index in "
                              f"{-n_models}..{n_models - 1}")
        return m % n_models

    @property
    def autoscale_initial_replicas(self) -> int:
        """Replicas allocated (and ready) at the first arrival."""
        return self.autoscale_min if self.autoscale_initial is None else self.autoscale_initial

    def gpu_of_replica(self, model: int, k: int) -> int:
        """Replica k of a model lives on GPU k mod n_gpus."""
        return k % self.n_gpus

    def task_deadlines(self, profile) -> tuple[float, ...]:
        base = self.deadlines if self.deadlines is not None else tuple(profile.deadlines)
        if len(base) != profile.n_tasks:
            raise ConfigError(f"sim config: field 'deadlines' = {base!r}: needs one per task "
                              f"({profile.n_tasks}: {profile.task_names})")
        return tuple(float(x) * self.deadline_scale for x in base)

    def optional_task_deadlines(self, name: str, n_tasks: int) -> Optional[tuple[float, ...]]:
        """``ttft_deadlines`` / ``tpot_deadlines`` scaled by deadline_scale, or None if unset."""
        base = getattr(self, name)
        if base is None:
            return None
        if len(base) != n_tasks:
            raise ConfigError(f"sim config: field '{name}' = {base!r}: needs one per task ({n_tasks})")
        return tuple(float(x) * self.deadline_scale for x in base)

    def in_system_bound(self, n_models: int, b_max: int) -> int:
        """Most requests that can be queued or in flight at once (running: a batch of B_max,
        or a running set of max_num_seqs)."""
        per = b_max if self.batching == "request" else self.max_num_seqs
        return sum(self.replica_counts(n_models)) * (self.queue_capacity + per)

    def to_dict(self) -> dict:
        return asdict(self)


def sim_config_from_mapping(m) -> SimConfig:
    """Build from a dict/OmegaConf node, rejecting unknown keys with their names."""
    d = dict(m)
    known = set(SimConfig.__dataclass_fields__)
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"sim config: unknown field(s) {unknown}; known: {sorted(known)}")
    for k in ("replicas", "deadlines", "ttft_deadlines", "tpot_deadlines"):
        if d.get(k) is not None:
            d[k] = tuple(d[k])
    return SimConfig(**d)
