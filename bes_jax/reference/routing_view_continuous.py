"""What a router sees of a continuous-batching fleet, in numpy: replica choice, the predicted
end-to-end latency and TTFT, the observation and ``greedy`` (docs/simulator.md, "Continuous
batching": "Routing", "Observation", "Prediction").

One implementation shared by the reference twin (:mod:`bes_jax.reference.continuous`) and the
live router in front of real engines, so a served policy reads exactly what it was trained on.
The JAX simulator computes the same numbers its own way; the cross-check compares them.

Everything here is computable from what a router sees of an engine (request counts, KV-cache
gauge, the prompt lengths it forwarded, the profile): nothing reads a request's true output
length. A live router fills a :class:`Snapshot` from its own bookkeeping / the engines' gauges
and a :class:`Engines` once from the profile and config (:meth:`Engines.from_profile`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bes_jax.reference.routing_view import OBS_MODES, WAIT_CAP, RateEstimator  # noqa: F401  (shared)


@dataclass(frozen=True)
class Engines:
    """Constants of the fleet a router may know (profile + config), fixed for a run.

    ``iteration`` [M, 5] is the profile's iteration model (``fixed_s, per_seq_s, weights_s,
    per_kv_token_s, per_token_s``); ``ctx_max`` / ``kv_tokens`` [M] per model (KV budget per
    replica); ``mean_output`` [T] the task's stated mean output length ``ō_t``; ``quality``
    [M, T]; ``deadline`` [T] end-to-end deadlines (scaled); ``ttft_deadline`` [T] or None;
    ``replica_count`` [M] configured replicas per model (the observation's denominators);
    ``request_overhead`` [M] seconds the serving stack adds to each request's first token and
    completion (docs/simulator.md "Per-request overhead"; 0 unless the profile gives it).
    """

    iteration: np.ndarray
    ctx_max: np.ndarray
    kv_tokens: np.ndarray
    mean_output: np.ndarray
    quality: np.ndarray
    deadline: np.ndarray
    ttft_deadline: np.ndarray | None
    replica_count: np.ndarray
    max_num_seqs: int
    max_num_batched_tokens: int
    queue_capacity: int
    context_overflow: str  # "truncate" | "reject"
    request_overhead: np.ndarray

    @property
    def n_models(self) -> int:
        return int(self.ctx_max.size)

    @property
    def n_tasks(self) -> int:
        return int(self.mean_output.size)

    @classmethod
    def from_profile(cls, profile, cfg) -> "Engines":
        profile.require_continuous()
        T = profile.n_tasks
        ttft = cfg.optional_task_deadlines("ttft_deadlines", T)
        return cls(iteration=np.asarray(profile.iteration, np.float64),
                   ctx_max=np.asarray(profile.ctx_max, np.int64),
                   kv_tokens=np.asarray(profile.kv_tokens, np.int64),
                   mean_output=np.asarray(profile.mean_output_len, np.float64),
                   quality=np.asarray(profile.quality, np.float64),
                   deadline=np.asarray(cfg.task_deadlines(profile), np.float64),
                   ttft_deadline=None if ttft is None else np.asarray(ttft, np.float64),
                   replica_count=np.asarray(cfg.replica_counts(profile.n_models), np.int64),
                   max_num_seqs=int(cfg.max_num_seqs), max_num_batched_tokens=int(cfg.max_num_batched_tokens),
                   queue_capacity=int(cfg.queue_capacity), context_overflow=cfg.context_overflow,
                   request_overhead=np.asarray(profile.request_overhead, np.float64))


@dataclass(frozen=True)
class Snapshot:
    """The fleet's state at one arrival, ``now``, before the pending request joins.

    Per replica ``[R]`` (flat, model-major: model 0's replicas first):

    - ``replica_model``: its model; ``replica_server``: the server that runs its iterations (its
      GPU under ``exclusive``, itself under ``concurrent``); ``valid``: alive (can take requests);
    - ``n_wait``: requests in its waiting queue (routed, not admitted);
    - ``n_run``: sequences in its running set (admitted, not completed): vLLM's
      ``num_requests_running`` / ``num_requests_waiting`` gauges are these two;
    - ``kv_in_use``: KV tokens in use, ``Σ_running (prefilled + generated)`` (the engine's KV
      gauge times its budget; never the reservation, which contains the hidden output length);
    - ``wait_prompt``: sum of the waiting requests' prompt tokens as served (after truncation);
    - ``out_mean_sum``: sum of ``ō_{t_j}`` (the task's stated mean output length) over its
      running and waiting requests (a router knows each forwarded request's task).

    Per server ``[S]``: ``server_busy`` (an iteration is running) and ``server_busy_until`` (its
    end; anything when idle). A live router that cannot see an iteration's end may report every
    server idle (the prediction's residual term is then 0).
    """

    now: float
    replica_model: np.ndarray
    replica_server: np.ndarray
    valid: np.ndarray
    n_wait: np.ndarray
    n_run: np.ndarray
    kv_in_use: np.ndarray
    wait_prompt: np.ndarray
    out_mean_sum: np.ndarray
    server_busy: np.ndarray
    server_busy_until: np.ndarray


def choose_replica(snap: Snapshot, m: int) -> int:
    """Fewest waiting + running; ties: least KV in use; then lowest index (-1: no live replica)."""
    idx = np.nonzero((np.asarray(snap.replica_model) == m) & np.asarray(snap.valid, bool))[0]
    if idx.size == 0:
        return -1
    count = np.asarray(snap.n_wait)[idx] + np.asarray(snap.n_run)[idx]
    kv = np.asarray(snap.kv_in_use)[idx]
    return int(idx[np.lexsort((idx, kv, count))[0]])  # last key is primary


def served_prompt_estimate(eng: Engines, m: int, p_in: float, o_bar: float) -> float:
    """``p̂``: the prompt the prediction assumes model ``m`` serves (truncate: at most
    ``max(ctx_m - ō, 1)``; reject: ``p_in``)."""
    if eng.context_overflow == "truncate":
        return float(min(p_in, max(float(eng.ctx_max[m]) - o_bar, 1.0)))
    return float(p_in)


def tau(eng: Engines, m: int, n: float, c: float) -> float:
    """``τ_m(n, c)``: one decode iteration of ``n`` sequences of context ``c`` each."""
    fixed, per_seq, weights, per_kv, per_tok = (float(x) for x in eng.iteration[m])
    return fixed + per_seq * n + max(weights + per_kv * n * c, per_tok * n)


def predict(snap: Snapshot, eng: Engines, task: int, p_in: float):
    """Per model ``(pred, pred_ttft, replica)`` for a pending request of ``task`` with a prompt
    of ``p_in`` tokens: predicted end-to-end latency and TTFT in seconds from ``now`` (``+inf``
    when the model cannot take it) and the replica the routing rule picks (-1: none)."""
    M, S, K = eng.n_models, eng.max_num_seqs, eng.max_num_batched_tokens
    o_bar = float(eng.mean_output[task])
    pred = np.full(M, np.inf)
    pred_ttft = np.full(M, np.inf)
    rep = np.full(M, -1, np.int64)
    n_wait, n_run = np.asarray(snap.n_wait), np.asarray(snap.n_run)
    kv, W, osum = np.asarray(snap.kv_in_use), np.asarray(snap.wait_prompt), np.asarray(snap.out_mean_sum)
    server = np.asarray(snap.replica_server)
    models = np.asarray(snap.replica_model)
    for m in range(M):
        r = choose_replica(snap, m)
        rep[m] = r
        if r < 0 or n_wait[r] >= eng.queue_capacity:
            continue
        p_hat = served_prompt_estimate(eng, m, p_in, o_bar)
        if p_hat + o_bar > eng.kv_tokens[m]:
            continue
        if eng.context_overflow == "reject" and p_in + o_bar > eng.ctx_max[m]:
            continue
        ahead = int(n_run[r] + n_wait[r])
        A = ahead + 1
        n_b = min(A, S)
        c_bar = (float(kv[r]) + float(W[r]) + p_hat) / A + o_bar / 2.0
        o_ahead = float(osum[r]) / ahead if ahead > 0 else o_bar
        wait_iters = max(A - S, 0) * o_ahead / n_b
        prefill_iters = math.ceil(p_hat / max(K - (n_b - 1), 1))
        rnd = tau(eng, m, n_b, c_bar)
        s = server[r]
        for o in np.nonzero(server == s)[0]:
            n_o = int(n_run[o] + n_wait[o])
            if o != r and n_o > 0:
                rnd += tau(eng, int(models[o]), min(n_o, S), (float(kv[o]) + float(W[o])) / n_o)
        residual = float(snap.server_busy_until[s]) - snap.now if bool(snap.server_busy[s]) else 0.0
        ov = float(eng.request_overhead[m])
        pred[m] = residual + (wait_iters + prefill_iters + o_bar - 1.0) * rnd + ov
        pred_ttft[m] = residual + (wait_iters + prefill_iters) * rnd + ov
    return pred, pred_ttft, rep


def greedy_choice(pred: np.ndarray, pred_ttft: np.ndarray, eng: Engines, task: int) -> int:
    """Highest quality with ``pred <= d`` (and ``pred_ttft <= ttft_deadline`` when configured;
    ties: lower index); else the smallest ``pred`` (ties: lower index)."""
    meets = np.asarray(pred) <= eng.deadline[task]
    if eng.ttft_deadline is not None:
        meets &= np.asarray(pred_ttft) <= eng.ttft_deadline[task]
    if meets.any():
        return int(np.argmax(np.where(meets, eng.quality[:, task], -np.inf)))
    return int(np.argmin(pred))


def _per_model(snap: Snapshot, eng: Engines, values) -> np.ndarray:
    out = np.zeros(eng.n_models)
    np.add.at(out, np.asarray(snap.replica_model), np.asarray(values, np.float64))
    return out


def model_load(snap: Snapshot, eng: Engines) -> np.ndarray:
    """[M] ``Σ_r (waiting + running) / (S · R_m)``; 0 for a model without replicas."""
    rc = eng.replica_count.astype(np.float64)
    tot = _per_model(snap, eng, np.asarray(snap.n_wait) + np.asarray(snap.n_run))
    return np.where(rc > 0, tot / np.maximum(eng.max_num_seqs * rc, 1.0), 0.0)


def build_observation(mode: str, snap: Snapshot, eng: Engines, task: int, p_in: float, rate_norm: float,
                      pred: np.ndarray | None = None) -> np.ndarray:
    """``paper`` (``T + M + 1``): one-hot task, load, rate. ``rich`` (``T + 4M + 3``) adds
    ``running / (S · R_m)``, ``KV in use / (kv_tokens_m · R_m)``, ``min(pred_m / d, 10)`` per
    model, ``p_in / max_m ctx_m`` and ``d``. Float64; ``pred`` may be passed when already
    predicted."""
    if mode not in OBS_MODES:
        raise ValueError(f"observation mode {mode!r}: must be one of {OBS_MODES}")
    onehot = np.zeros(eng.n_tasks)
    onehot[task] = 1.0
    parts = [onehot, model_load(snap, eng), np.array([rate_norm], np.float64)]
    if mode == "rich":
        rc = eng.replica_count.astype(np.float64)
        has = rc > 0
        running = np.where(has, _per_model(snap, eng, snap.n_run) / np.maximum(eng.max_num_seqs * rc, 1.0), 0.0)
        kv_den = np.maximum(eng.kv_tokens.astype(np.float64) * rc, 1.0)
        kv_use = np.where(has, _per_model(snap, eng, snap.kv_in_use) / kv_den, 0.0)
        if pred is None:
            pred, _, _ = predict(snap, eng, task, p_in)
        d = float(eng.deadline[task])
        parts += [running, kv_use, np.minimum(np.asarray(pred, np.float64) / d, WAIT_CAP),
                  np.array([float(p_in) / float(eng.ctx_max.max()), d])]
    return np.concatenate(parts)


def observation_size(mode: str, n_tasks: int, n_models: int) -> int:
    return n_tasks + n_models + 1 + (3 * n_models + 2 if mode == "rich" else 0)
