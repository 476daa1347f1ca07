"""Continuous (iteration-level) batching: `ContinuousServingEnv`, pure and jittable.

Semantics: docs/simulator.md "Continuous batching". Same interface as `ServingEnv` (`reset`,
`step`, `step_batch`, `drain`, `drain_batch`, `observe`, `make_params`, `obs_size`, ...), so
learners, rollouts and routers run unchanged; `bes_jax.env.make_serving_env` picks the mode.

Layout: replica ``r = m * R_max + k`` (replica ``k`` of model ``m``, on GPU ``k mod n_gpus``);
a server is a replica (`concurrent`) or a GPU (`exclusive`). Per replica the state keeps a FIFO
waiting ring and a running set as fixed slots ``[R, max_num_seqs]`` compacted in admission
order (the first ``n_run`` slots are live). A busy server's only event is the end of its
iteration; the iteration's composition is recomputed there (the running set cannot change
while it runs). Between two arrivals the event loop processes the next due event of every
(environment, server) lane per iteration, as `ServingEnv._advance_batch` does; an event also
applies the quiet iteration ends that follow it (decode only, no completion: only ``g`` changes),
up to `quiet_steps`, each with the same arithmetic as the loop, so results do not depend on it.
Cost: about 8 iteration ends per arrival on the Azure code trace (4 GPUs, 40 req/s), each a
gather / scatter of ``[replicas of the server, max_num_seqs]`` rows: this, not routing, is
what a step costs.

Outcome ring (`ContinuousOutcomes`, slot ``decision % outcome_slots``), what a cross-check
and a learner read per decision. It is a record only: what the simulation needs of a request
in the system (arrival, task, first token) travels with it in the queue and running set, so
results never depend on the ring's size. Under deep overload a request can outlive
``outcome_slots`` later decisions (most of them rejected at once); its slot then goes to the
new decision, its own later writes are skipped (a write checks the slot still holds its id),
and ``state.evicted`` counts it. Evaluation sizes the ring to hold every decision.
Per decision:
- ``decision, arrival, task, model`` (the action), ``replica`` (``m * R_max + k``: the replica
  the routing rule picked, also for a rejected request);
- ``status``: QUEUED, RUNNING (admitted), SERVED, DROPPED, REJECTED;
- ``start`` = admission time (NaN unless admitted), ``first_token`` (NaN until the prompt is
  fully prefilled), ``finish`` = completion / drop time / arrival for a rejection (NaN while
  waiting or running); ``reward`` (NaN until realised, at ``finish``);
- ``prompt_in``, ``output``: the request's tokens as it arrived (drawn from the profile's task
  distributions when the workload gives -1); a cross-check feeds exactly these to the
  reference twin. ``prompt``: as served (after `truncate`), or ``prompt_in`` when the request
  failed the context check.
Tokens are clamped to >= 1 (a request has at least one prompt and one output token).
The pending request's tokens are ``state.prompt_in`` / ``state.output``; the routing view per
model is ``state.chosen_replica``, ``state.pred_e2e`` (predicted end-to-end latency),
``state.pred_ttft``, ``state.meets`` (greedy's on-time test) and ``state.predicted_finish``
(``now + pred_e2e``).
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from bes_jax.env.core import first_lanes
from bes_jax.env.layout import server_layout
from bes_jax.env.params import default_float
from bes_jax.env.state import DROPPED, EMPTY, QUEUED, REJECTED, RUNNING, SERVED, own_slots, slot_resolved
from bes_jax.lengths import LengthArrays, draw_length, length_arrays
from bes_jax.profile import Profile
from bes_jax.short_axis import first_true, min_last, sum_last
from bes_jax.sim_config import ConfigError, SimConfig
from bes_jax.workloads import WorkloadParams, workload_init_request, workload_next_request

WAIT_CAP = 10.0  # rich observation: predicted latency in deadlines, capped


@struct.dataclass
class ContinuousOutcomes:
    """Per-decision record, a ring indexed by ``decision % outcome_slots`` (module doc)."""

    decision: jnp.ndarray     # [H] int32 (-1: never used)
    arrival: jnp.ndarray      # [H]
    task: jnp.ndarray         # [H] int32
    model: jnp.ndarray        # [H] int32
    replica: jnp.ndarray      # [H] int32
    start: jnp.ndarray        # [H] admission time
    finish: jnp.ndarray       # [H] time the outcome is realised
    reward: jnp.ndarray       # [H]
    status: jnp.ndarray       # [H] int8
    first_token: jnp.ndarray  # [H]
    prompt: jnp.ndarray       # [H] int32 prompt tokens as served
    prompt_in: jnp.ndarray    # [H] int32 prompt tokens as arrived
    output: jnp.ndarray       # [H] int32 output tokens


# columns of `ContinuousState.run` (one running sequence; `.queue` holds ID, P, O, TK of a waiting
# one) and `.rep` (one replica); arrival and first-token times in `.run_t` / `.queue_t`
ID, P, O, F, G, TK = range(6)
QTK = 3  # the task column of `.queue`
N_RUN, KV_USED, KV_RES, Q_HEAD, Q_LEN, W_PROMPT, N_TASK = range(7)  # N_TASK: first of T per-task counts


@struct.dataclass
class ContinuousState:
    """Packed per-replica arrays (fewer gathers and scatters per event); the properties name
    their columns."""

    queue: jnp.ndarray        # [R, C, 4] int32 FIFO ring of (decision id, served prompt, output, task)
    queue_t: jnp.ndarray      # [R, C] arrival time of each waiting request
    run: jnp.ndarray          # [R, S, 6] int32 running set (ID, P, O, F, G, TK), admission order; first n_run live
    run_t: jnp.ndarray        # [R, S, 2] arrival and first-token time (NaN until then) of each running one
    rep: jnp.ndarray          # [R, 6 + T] int32 per replica: N_RUN, KV_USED (sum f + g), KV_RES (sum p + o),
                              # Q_HEAD, Q_LEN, W_PROMPT (sum of waiting served prompts), then waiting +
                              # running requests per task
    # servers
    busy: jnp.ndarray         # [Sv] bool: an iteration is running
    busy_until: jnp.ndarray   # [Sv] its end (the time it went idle when idle)
    iter_replica: jnp.ndarray # [Sv] int32 replica of the running (or last) iteration
    # pending request
    now: jnp.ndarray
    task: jnp.ndarray
    prompt_in: jnp.ndarray    # int32
    output: jnp.ndarray       # int32 (drives the simulation only; never observed)
    decision: jnp.ndarray
    ewma_gap: jnp.ndarray
    episode_step: jnp.ndarray
    # routing view for the pending request, per model
    chosen_replica: jnp.ndarray    # [M] int32
    pred_e2e: jnp.ndarray          # [M] predicted end-to-end latency (inf: impossible)
    pred_ttft: jnp.ndarray         # [M]
    meets: jnp.ndarray             # [M] bool: predicted to meet every configured deadline
    predicted_finish: jnp.ndarray  # [M] now + pred_e2e
    harm: jnp.ndarray              # [M] delay this request would impose on those sharing its engine / GPU,
                                   # in their deadlines, weighted by how close each is predicted to come
                                   # to its deadline (a training signal: docs/simulator.md "Externality")
    evicted: jnp.ndarray           # int32 decisions whose ring slot was reused before they resolved
                                   # (their record is lost, the simulation is not: module doc)
    outcomes: ContinuousOutcomes
    workload: object

    n_run = property(lambda s: s.rep[..., N_RUN])
    kv_used = property(lambda s: s.rep[..., KV_USED])
    kv_reserved = property(lambda s: s.rep[..., KV_RES])
    queue_head = property(lambda s: s.rep[..., Q_HEAD])
    queue_len = property(lambda s: s.rep[..., Q_LEN])
    wait_prompt = property(lambda s: s.rep[..., W_PROMPT])
    n_task = property(lambda s: s.rep[..., N_TASK:])


@struct.dataclass
class ContinuousParams:
    quality: jnp.ndarray         # [M, T]
    deadline: jnp.ndarray        # [T] end-to-end, seconds
    ttft_deadline: jnp.ndarray   # [T] (inf: not configured)
    tpot_deadline: jnp.ndarray   # [T] (inf: not configured)
    replica_valid: jnp.ndarray   # [M * R_max] bool
    replica_count: jnp.ndarray   # [M] float
    soft: jnp.ndarray
    soft_exp: jnp.ndarray
    soft_slack: jnp.ndarray
    soft_tau: jnp.ndarray
    miss_penalty: jnp.ndarray
    latency_weight: jnp.ndarray
    ewma_alpha: jnp.ndarray
    ref_rate: jnp.ndarray
    episode_len: jnp.ndarray     # int32
    iteration: jnp.ndarray       # [M, 5] ITERATION_FIELDS order
    overhead: jnp.ndarray        # [M] per-request overhead (s): client-visible first token and
                                 # completion are this much after the engine's
    ctx_max: jnp.ndarray         # [M] int32
    kv_tokens: jnp.ndarray       # [M] int32 per replica
    max_batched_tokens: jnp.ndarray  # int32 K
    truncate: jnp.ndarray        # bool: context_overflow == truncate
    prompt_len: LengthArrays     # per-task distributions
    output_len: LengthArrays     # (its ``mean`` is the stated mean output length)
    workload: object

    @property
    def peak(self) -> jnp.ndarray:
        return self.quality.max(axis=0)

    @property
    def latency(self) -> jnp.ndarray:
        """The iteration coefficients; callers written for `EnvParams` read its dtype."""
        return self.iteration


def make_continuous_params(profile: Profile, cfg: SimConfig, workload, r_max: int) -> ContinuousParams:
    profile.require_continuous()
    f = default_float()
    counts = cfg.replica_counts(profile.n_models)
    valid = np.zeros((profile.n_models, r_max), dtype=bool)
    for m, c in enumerate(counts):
        valid[m, :c] = True
    T = profile.n_tasks
    opt = lambda name: jnp.asarray(cfg.optional_task_deadlines(name, T) or (np.inf,) * T, f)
    return ContinuousParams(
        quality=jnp.asarray(profile.quality, f), deadline=jnp.asarray(cfg.task_deadlines(profile), f),
        ttft_deadline=opt("ttft_deadlines"), tpot_deadline=opt("tpot_deadlines"),
        replica_valid=jnp.asarray(valid.reshape(-1)),
        replica_count=jnp.asarray(np.asarray(counts, dtype=np.float64), f),
        soft=jnp.asarray(cfg.deadline_kind == "soft"), soft_exp=jnp.asarray(cfg.soft_decay == "exp"),
        soft_slack=jnp.asarray(cfg.soft_slack, f), soft_tau=jnp.asarray(cfg.soft_tau, f),
        miss_penalty=jnp.asarray(cfg.miss_penalty, f), latency_weight=jnp.asarray(cfg.latency_weight, f),
        ewma_alpha=jnp.asarray(cfg.ewma_alpha, f), ref_rate=jnp.asarray(cfg.ref_rate, f),
        episode_len=jnp.asarray(cfg.episode_len, jnp.int32),
        iteration=jnp.asarray(profile.iteration, f), overhead=jnp.asarray(profile.request_overhead, f),
        ctx_max=jnp.asarray(profile.ctx_max, jnp.int32), kv_tokens=jnp.asarray(profile.kv_tokens, jnp.int32),
        max_batched_tokens=jnp.asarray(cfg.max_num_batched_tokens, jnp.int32),
        truncate=jnp.asarray(cfg.context_overflow == "truncate"),
        prompt_len=length_arrays([t.prompt_dist for t in profile.tasks]),
        output_len=length_arrays([t.output_dist for t in profile.tasks]),
        workload=workload)


def iteration_time(coef, n, C, tokens):
    """``tau = fixed_s + per_seq_s n + max(weights_s + per_kv_token_s C, per_token_s tokens)``."""
    f = coef.dtype
    n, C, tokens = n.astype(f), C.astype(f), tokens.astype(f)
    return coef[..., 0] + coef[..., 1] * n + jnp.maximum(coef[..., 2] + coef[..., 3] * C, coef[..., 4] * tokens)


def mean_iteration_time(coef, n, c_mean):
    """`iteration_time` of ``n`` sequences of mean context ``c_mean``, each one token (decode):
    the prediction's per-iteration cost."""
    n = n.astype(coef.dtype)
    return coef[..., 0] + coef[..., 1] * n + jnp.maximum(coef[..., 2] + coef[..., 3] * n * c_mean, coef[..., 4] * n)


def compose(p, f, g, n_run, K, coef):
    """One iteration of a running set (rows [..., S] in admission order, first ``n_run`` live):
    ``(c, decode, tau)``: each sequence's prefill chunk, whether it decodes, and the duration."""
    S = p.shape[-1]
    valid = jnp.arange(S) < n_run[..., None]
    decode = valid & (f >= p)
    i32 = lambda x: x.astype(jnp.int32)
    D = i32(jnp.sum(decode, axis=-1))
    need = jnp.where(valid & (f < p), p - f, 0)
    before = i32(jnp.cumsum(need, axis=-1)) - need
    c = jnp.clip((K - D)[..., None] - before, 0, need)
    P = i32(jnp.sum(c, axis=-1))
    n = D + i32(jnp.sum(c > 0, axis=-1))
    C = jnp.sum(jnp.where(c > 0, f + c, 0), axis=-1) + jnp.sum(jnp.where(decode, p + g, 0), axis=-1)
    return c, decode, iteration_time(coef, n, C, P + D)


class ContinuousServingEnv:
    """Static layout (shapes) of a pool under continuous batching; numbers in `ContinuousParams`."""

    def __init__(self, profile: Profile, cfg: SimConfig = SimConfig(batching="continuous")):
        profile.require_continuous()
        self.profile, self.cfg = profile, cfg
        self.n_models, self.n_tasks = profile.n_models, profile.n_tasks
        self.max_seqs = self.b_max = cfg.max_num_seqs
        counts = cfg.replica_counts(self.n_models)
        self.r_max = max(counts)
        self.n_replicas = self.n_models * self.r_max
        self.capacity = cfg.queue_capacity
        self.slots = cfg.outcome_slots
        bound = sum(counts) * (cfg.queue_capacity + cfg.max_num_seqs)
        if self.slots <= bound:
            raise ConfigError(
                f"sim config: field 'outcome_slots' = {self.slots}: must exceed the most requests "
                f"that can be in the system at once ({bound} = replicas x (queue_capacity + max_num_seqs)), "
                "or unresolved decisions would be overwritten")
        self.exclusive = cfg.placement == "exclusive"
        self.drop_expired = bool(cfg.drop_expired)
        # admission looks at the first `window` waiting requests: all of them when expired heads
        # are dropped on the way, else the most that can join a running set
        self.window = self.capacity if self.drop_expired else min(self.max_seqs, self.capacity)
        self.n_servers, self.server_of, self.server_members = server_layout(cfg, self.n_models, self.r_max)
        # position of each replica among its server's members
        self.member_pos = np.zeros(self.n_replicas, np.int32)
        for row in self.server_members:
            for w, r in enumerate(row):
                if r >= 0:
                    self.member_pos[r] = w
        #: quiet iteration ends (decode only, no completion) one event may apply beyond its own
        self.quiet_steps = 64
        #: ring writes of each kind (first tokens, completions, admissions) per event lane, compacted
        self.ring_writes = 8
        M, T = self.n_models, self.n_tasks
        self.obs_size = T + M + 1 + (3 * M + 2 if cfg.obs_mode == "rich" else 0)

    # ------------------------------------------------------------------ params
    def make_params(self, workload: WorkloadParams, **overrides) -> ContinuousParams:
        """Params from the profile and config; ``overrides`` replace fields (cast to the field's
        dtype, so a Python number does not make a second compiled program)."""
        params = make_continuous_params(self.profile, self.cfg, workload, self.r_max)
        cast = {k: jnp.asarray(v, getattr(params, k).dtype) if isinstance(getattr(params, k), jnp.ndarray) else v
                for k, v in overrides.items()}
        return params.replace(**cast) if cast else params

    # ------------------------------------------------------------------ tokens
    @staticmethod
    def _tokens(key, task, prompt, output, params: ContinuousParams):
        """The request's tokens: the workload's, else drawn from its task's distributions
        (keys folded off the arrival key, so the arrival stream is that of request mode)."""
        p = jnp.where(prompt < 0, draw_length(jax.random.fold_in(key, 1), task, params.prompt_len), prompt)
        o = jnp.where(output < 0, draw_length(jax.random.fold_in(key, 2), task, params.output_len), output)
        return jnp.maximum(p, 1).astype(jnp.int32), jnp.maximum(o, 1).astype(jnp.int32)

    # ------------------------------------------------------------------ reset
    @partial(jax.jit, static_argnums=0)
    def reset(self, key: jax.Array, params: ContinuousParams):
        f = default_float()
        R, Sv, C, H, M, S, T = (self.n_replicas, self.n_servers, self.capacity, self.slots, self.n_models,
                                self.max_seqs, self.n_tasks)
        ws, t0, task0, p0, o0 = workload_init_request(key, params.workload)
        p0, o0 = self._tokens(key, task0, p0, o0, params)
        nan = jnp.full((H,), jnp.nan, f)
        i32 = lambda shape, v=0: jnp.full(shape, v, jnp.int32)
        outcomes = ContinuousOutcomes(
            decision=i32((H,), -1), arrival=nan, task=i32((H,)), model=i32((H,), -1), replica=i32((H,), -1),
            start=nan, finish=nan, reward=nan, status=jnp.full((H,), EMPTY, jnp.int8), first_token=nan,
            prompt=i32((H,)), prompt_in=i32((H,)), output=i32((H,)))
        state = ContinuousState(
            queue=i32((R, C, 4)), queue_t=jnp.zeros((R, C), f), run=i32((R, S, 6)),
            run_t=jnp.zeros((R, S, 2), f), rep=i32((R, N_TASK + T)),
            busy=jnp.zeros((Sv,), bool), busy_until=jnp.zeros((Sv,), f),
            iter_replica=jnp.asarray(self.server_members[:, 0], jnp.int32),
            now=jnp.asarray(t0, f), task=jnp.asarray(task0, jnp.int32), prompt_in=p0, output=o0,
            decision=jnp.zeros((), jnp.int32), ewma_gap=(1.0 / params.ref_rate).astype(f),
            episode_step=jnp.zeros((), jnp.int32), chosen_replica=i32((M,)),
            pred_e2e=jnp.zeros((M,), f), pred_ttft=jnp.zeros((M,), f), meets=jnp.zeros((M,), bool),
            predicted_finish=jnp.zeros((M,), f), harm=jnp.zeros((M,), f), evicted=jnp.zeros((), jnp.int32),
            outcomes=outcomes, workload=ws)
        state = self._predict(state, params)
        return self.observe(state, params), state

    # ------------------------------------------------------------------ step
    @partial(jax.jit, static_argnums=0)
    def step(self, key: jax.Array, state: ContinuousState, action: jax.Array, params: ContinuousParams):
        """Route the pending request to model `action`, advance to the next arrival.

        ``(obs, state, reward, done, info)``; ``reward`` sums the values realised in this step
        (completions, drops, a rejection); per-decision values are in ``state.outcomes``.
        """
        state, pending = self._route(key, state, action, params)
        state, realised = self._advance(state, params, pending[0])
        return self._finish(state, params, pending, realised)

    def step_batch(self, keys, states: ContinuousState, actions, params: ContinuousParams, params_axis=None):
        """`step` for a batch of environments (leading axis), bit-identical to `vmap(step)`;
        the event loop runs over the batch, compacted into `loop_lanes` lanes."""
        states, pending = jax.vmap(self._route, in_axes=(0, 0, 0, params_axis))(keys, states, actions, params)
        states, realised = self._advance_batch(states, params, pending[0], params_axis,
                                               self.loop_lanes(keys.shape[0]))
        return jax.vmap(self._finish, in_axes=(0, params_axis, 0, 0))(states, params, pending, realised)

    @staticmethod
    def loop_lanes(n_envs: int) -> int:
        """(environment, server) lanes per event-loop iteration in `step_batch`: every
        environment's at small N; from 256 environments on, 256 or N / 4, whichever is more. A
        lane's work streams `[replicas of its server, max_num_seqs]` rows through memory, so
        fewer, fuller lanes per trip keep them in cache (measured on the Azure code trace, 1024
        environments, paired runs: 256 lanes 3-10% faster than 1024, 2048 lanes 30% slower;
        64 lanes at 256 environments 16% slower than 256). Results do not depend on it."""
        return max(64, min(n_envs, 256), n_envs // 4)

    def _route(self, key, state: ContinuousState, action, params: ContinuousParams):
        """Context / KV / queue checks, then join the waiting queue; at an idle server (whose
        replicas are all empty) the request is admitted and its first iteration starts now."""
        f = state.busy_until.dtype
        H, C, Rm = self.slots, self.capacity, self.r_max
        now = state.now
        m = jnp.asarray(action, jnp.int32)
        r = state.chosen_replica[m]
        i = state.decision
        slot = i % H
        p_in, out = state.prompt_in, state.output
        ctx = params.ctx_max[m]
        over = p_in + out > ctx
        p = jnp.where(over & params.truncate, ctx - out, p_in)
        ctx_reject = over & (~params.truncate | (out >= ctx))
        p = jnp.where(ctx_reject, p_in, p)
        reject = ctx_reject | (p + out > params.kv_tokens[m]) | (state.queue_len[r] >= C) | ~params.replica_valid[r]
        s = jnp.asarray(self.server_of)[r]
        idle = ~state.busy[s]
        start_now = ~reject & idle
        enqueue = ~reject & ~idle
        miss = -params.miss_penalty
        o = state.outcomes
        evicted = state.evicted + (~slot_resolved(o, slot, now)).astype(jnp.int32)
        status = jnp.where(reject, REJECTED, jnp.where(start_now, RUNNING, QUEUED)).astype(jnp.int8)
        o = o.replace(
            decision=o.decision.at[slot].set(i), arrival=o.arrival.at[slot].set(now),
            task=o.task.at[slot].set(state.task), model=o.model.at[slot].set(m), replica=o.replica.at[slot].set(r),
            start=o.start.at[slot].set(jnp.where(start_now, now, jnp.nan)),
            finish=o.finish.at[slot].set(jnp.where(reject, now, jnp.nan)),
            reward=o.reward.at[slot].set(jnp.where(reject, miss, jnp.nan)),
            status=o.status.at[slot].set(status), first_token=o.first_token.at[slot].set(jnp.nan),
            prompt=o.prompt.at[slot].set(p), prompt_in=o.prompt_in.at[slot].set(p_in),
            output=o.output.at[slot].set(out))
        tail = (state.queue_head[r] + state.queue_len[r]) % C
        one = lambda b: b.astype(jnp.int32)
        # first iteration of a lone sequence: a prefill chunk of min(p, K) tokens
        c1 = jnp.minimum(p, params.max_batched_tokens)
        tau = iteration_time(params.iteration[m], jnp.ones((), jnp.int32), c1, c1)
        put_s = lambda x, new: x.at[s].set(jnp.where(start_now, new, x[s]))
        entry = jnp.stack([i, p, out, state.task])
        seq = jnp.stack([i, p, out, jnp.zeros_like(i), jnp.zeros_like(i), state.task])
        rep_add = jnp.zeros((N_TASK + self.n_tasks,), jnp.int32)
        rep_add = rep_add.at[N_RUN].set(one(start_now)).at[KV_RES].set(jnp.where(start_now, p + out, 0))
        rep_add = rep_add.at[Q_LEN].set(one(enqueue)).at[W_PROMPT].set(jnp.where(enqueue, p, 0))
        rep_add = rep_add.at[N_TASK + state.task].set(one(~reject))
        state = state.replace(
            outcomes=o, evicted=evicted,
            queue=state.queue.at[r, tail].set(jnp.where(enqueue, entry, state.queue[r, tail])),
            queue_t=state.queue_t.at[r, tail].set(jnp.where(enqueue, now, state.queue_t[r, tail])),
            run=state.run.at[r, 0].set(jnp.where(start_now, seq, state.run[r, 0])),
            run_t=state.run_t.at[r, 0].set(jnp.where(start_now, jnp.stack([now, jnp.nan]).astype(f),
                                                     state.run_t[r, 0])),
            rep=state.rep.at[r].add(rep_add),
            busy=put_s(state.busy, True), busy_until=put_s(state.busy_until, now + tau),
            iter_replica=put_s(state.iter_replica, r))
        ws, t_next, task_next, p_next, o_next = workload_next_request(key, state.workload, params.workload)
        p_next, o_next = self._tokens(key, task_next, p_next, o_next, params)
        pending = (jnp.asarray(t_next, f), jnp.asarray(task_next, jnp.int32), p_next, o_next, ws, reject)
        return state, pending

    def _finish(self, state: ContinuousState, params: ContinuousParams, pending, realised):
        f = state.busy_until.dtype
        t_next, task_next, p_next, o_next, ws, reject = pending
        realised = realised + jnp.where(reject, -params.miss_penalty, 0.0)
        gap = t_next - state.now
        ewma = params.ewma_alpha * gap + (1.0 - params.ewma_alpha) * state.ewma_gap
        ep = state.episode_step + 1
        done = ep >= params.episode_len
        info = {"decision": state.decision, "rejected": reject, "t_decision": state.now, "clock": t_next}
        state = state.replace(
            now=t_next, task=task_next, prompt_in=p_next, output=o_next, decision=state.decision + 1,
            ewma_gap=ewma.astype(f), episode_step=jnp.where(done, 0, ep), workload=ws)
        state = self._predict(state, params)
        return self.observe(state, params), state, realised.astype(f), done, info

    def running(self, st: ContinuousState):
        """[R] sequences in each replica's running set."""
        return st.n_run

    # ------------------------------------------------------------------ event loop
    def _due_events(self, states: ContinuousState, t_limit):
        return jnp.where(states.busy & (states.busy_until <= t_limit[:, None]), states.busy_until, jnp.inf)

    def _advance_batch(self, states: ContinuousState, params, t_limit, params_axis, lanes):
        """Process every iteration end with time <= t_limit[n] of every environment n;
        returns ``(states, realised[N])``. Each loop iteration takes the next due event of every
        server that has one, compacted into at most `lanes` (environment, server) lanes."""
        N, Sv = t_limit.shape[0], self.n_servers
        lanes = min(lanes, N * Sv)

        def cond(carry):
            return jnp.any(carry[2] < jnp.inf)

        def body(carry):
            st, realised, T = carry
            lane = first_lanes(T < jnp.inf, lanes)
            st, realised = self._process_events(st, params, params_axis, lane, T.reshape(-1), realised, t_limit)
            return st, realised, self._due_events(st, t_limit)

        realised = jnp.zeros((N,), states.busy_until.dtype)
        states, realised, _ = jax.lax.while_loop(cond, body, (states, realised, self._due_events(states, t_limit)))
        return states, realised

    def _advance(self, state: ContinuousState, params, t_limit):
        one = jax.tree.map(lambda x: x[None], state)
        one, realised = self._advance_batch(one, params, jnp.asarray(t_limit)[None], None, self.n_servers)
        return jax.tree.map(lambda x: x[0], one), realised[0]

    @staticmethod
    def _params_for(params, params_axis, e):
        """The params the event math reads, for environments ``e`` [K]; and their vmap axes."""
        p = params.replace(workload=None)
        if params_axis is None:
            return p, None
        if isinstance(params_axis, int):
            return jax.tree.map(lambda x: jnp.take(x, e, axis=params_axis), p), 0
        ax = params_axis.replace(workload=None)
        take = lambda a, x: x if a is None else jnp.take(x, e, axis=a)
        return jax.tree.map(take, ax, p, is_leaf=lambda x: x is None), jax.tree.map(
            lambda a: None if a is None else 0, ax, is_leaf=lambda x: x is None)

    def _process_events(self, st: ContinuousState, params, params_axis, lane, T, realised, t_limit):
        """The due iteration end of lanes ``lane`` [K] (flat ``n * Sv + s``; ``N * Sv`` marks an
        empty lane whose writes are dropped): apply it, complete sequences, admit on every
        replica of the server, start the next iteration (docs/simulator.md, steps 1-5)."""
        Sv, H = self.n_servers, self.slots
        N = T.shape[0] // Sv
        idx = lane // Sv
        e = jnp.minimum(idx, N - 1)
        sk = lane % Sv
        Tk = T[jnp.minimum(lane, N * Sv - 1)]
        p, p_axis = self._params_for(params, params_axis, e)
        out = jax.vmap(self._lane, in_axes=(None, p_axis, 0, 0, 0, 0))(st, p, e, sk, Tk, t_limit[e])
        drop = dict(mode="drop")
        K = lane.shape[0]
        row = idx[:, None]
        # ring writes: the iteration's sequences [K, S], then the admitted / dropped waiting requests
        seq_slots, q_slots = out["slots"], out["qslots"].reshape(K, -1)
        admitted, dropped = out["admitted"].reshape(K, -1), out["dropped"].reshape(K, -1)
        done, newly = out["done"], out["newly"]
        miss = -p.miss_penalty
        miss = jnp.reshape(miss, (-1, 1) if miss.ndim else ())
        i32 = lambda x: x.astype(jnp.int32)

        def write(o, n_slots, ft, d_slots, value, q_slots, admitted, dropped):
            """The ring writes at (possibly compacted) entries; every write is at a distinct slot,
            H (dropped) where nothing is written."""
            Tq = jnp.broadcast_to(Tk[:, None], q_slots.shape)
            Td = jnp.broadcast_to((Tk + out["overhead"])[:, None], d_slots.shape)  # completions, as the client sees them
            cat = lambda a, b: jnp.concatenate([a, b], axis=1)
            if self.drop_expired:
                end_slots = cat(d_slots, jnp.where(dropped, q_slots, H))
                finish = cat(Td, Tq)
                reward = cat(value, jnp.broadcast_to(miss, q_slots.shape).astype(o.reward.dtype))
            else:  # nothing is dropped
                end_slots, finish, reward = d_slots, Td, value
            return o.replace(
                # the values written are the ones the lane read (T where newly): reading before writing
                # in place then needs no copy of the whole ring
                first_token=o.first_token.at[row, n_slots].set(ft, **drop),
                finish=o.finish.at[row, end_slots].set(finish, **drop),
                reward=o.reward.at[row, end_slots].set(reward, **drop),
                status=o.status.at[row, cat(d_slots, jnp.where(admitted | dropped, q_slots, H))].set(
                    cat(jnp.full(d_slots.shape, SERVED, jnp.int8),
                        jnp.where(admitted, RUNNING, DROPPED).astype(jnp.int8)), **drop),
                start=o.start.at[row, jnp.where(admitted, q_slots, H)].set(Tq, **drop))

        def full(o):
            return write(o, jnp.where(newly, seq_slots, H), out["first_token"], jnp.where(done, seq_slots, H),
                         out["value"], q_slots, admitted, dropped)

        # Compacted: the first B entries of each kind per lane (all of them when every lane has at
        # most B; else the full writes above). Removed waiting requests are a prefix of each
        # member's window.
        B = self.ring_writes
        j = jnp.arange(B)

        def first_b(mask):  # [K, L] -> [K, B] positions of the first B true entries (L: none)
            cs = jnp.cumsum(i32(mask), axis=1)
            return i32(jnp.sum(cs[:, None, :] < (j + 1)[None, :, None], axis=2))

        def take(x, i):
            return jnp.take_along_axis(x, jnp.minimum(i, x.shape[1] - 1), axis=1)

        Wq = out["admitted"].shape[1:]
        removed = (out["admitted"] | out["dropped"])  # [K, W, Q]
        n_rem = i32(jnp.sum(removed, axis=2))
        acum = jnp.cumsum(n_rem, axis=1)
        w_j = i32(jnp.sum(acum[:, None, :] <= j[None, :, None], axis=2))  # [K, B]
        pos_j = j[None] - take(acum - n_rem, w_j)
        qi = jnp.where(j[None] < acum[:, -1:], w_j * Wq[1] + pos_j, Wq[0] * Wq[1])
        ni, di = first_b(newly), first_b(done)
        fits = (jnp.all(acum[:, -1] <= B) & jnp.all(jnp.sum(newly, axis=1) <= B)
                & jnp.all(jnp.sum(done, axis=1) <= B))

        def compact(o):
            qv = qi < Wq[0] * Wq[1]
            return write(o, jnp.where(ni < seq_slots.shape[1], take(seq_slots, ni), H), take(out["first_token"], ni),
                         jnp.where(di < seq_slots.shape[1], take(seq_slots, di), H), take(out["value"], di),
                         take(q_slots, qi), qv & take(admitted, qi), qv & take(dropped, qi))

        o = jax.lax.cond(fits, compact, full, st.outcomes)
        mem = out["members"]  # [K, W] replica indices, R for padding (dropped)
        st = st.replace(
            outcomes=o,
            run=st.run.at[row, mem].set(out["run"], **drop),
            run_t=st.run_t.at[row, mem].set(out["run_t"], **drop),
            rep=st.rep.at[row, mem].set(out["rep"], **drop),
            busy=st.busy.at[idx, sk].set(out["busy"], **drop),
            busy_until=st.busy_until.at[idx, sk].set(out["busy_until"], **drop),
            iter_replica=st.iter_replica.at[idx, sk].set(out["iter_replica"], **drop))
        realised = realised.at[idx].add(out["realised"], **drop)
        return st, realised

    def _lane(self, st: ContinuousState, p: ContinuousParams, e, s, T, t_limit):
        """One lane's event (environment ``e``, server ``s``, time ``T``), reading the batched
        state; returns the new rows of the server's replicas and the ring updates."""
        S, C, H, Rm, R, Tn = self.max_seqs, self.capacity, self.slots, self.r_max, self.n_replicas, self.n_tasks
        o = st.outcomes
        r = st.iter_replica[e, s]
        m = r // Rm
        K = p.max_batched_tokens
        # 1. the iteration ends: prefill chunks advance, first tokens, decodes
        seq = st.run[e, r]  # [S, 6]
        ids, pp, oo, ff, gg, task = (seq[:, j] for j in range(6))
        arr, ft_old = st.run_t[e, r, :, 0], st.run_t[e, r, :, 1]
        nr = st.rep[e, r, N_RUN]
        c, decode, _ = compose(pp, ff, gg, nr, K, p.iteration[m])
        valid = jnp.arange(S) < nr
        f2 = ff + c
        newly = (c > 0) & (f2 == pp)
        g2 = jnp.where(newly, 1, jnp.where(decode, gg + 1, gg))
        done = valid & (g2 >= oo)
        slots = own_slots(o.decision, e, ids, H)
        ft = jnp.where(newly, T, ft_old)  # the engine's first-token time
        ov = p.overhead[m]  # what the client sees is this much later (docs: "Per-request overhead")
        value = self._value(p, p.quality[m, task], T + ov - arr, ft + ov - arr, oo, task)
        realised = jnp.sum(jnp.where(done, value, 0.0))
        # 2. completions leave the running set (compacted, admission order kept)
        keep = valid & ~done
        i32 = lambda x: x.astype(jnp.int32)
        dest = jnp.where(keep, i32(jnp.cumsum(keep)) - 1, S)
        r_row = jnp.zeros_like(seq).at[dest].set(jnp.stack([ids, pp, oo, f2, g2, task], axis=1), mode="drop")
        r_t = jnp.zeros_like(st.run_t[e, r]).at[dest].set(jnp.stack([arr, ft], axis=1), mode="drop")
        r_rep = st.rep[e, r]
        r_rep = r_rep.at[N_RUN].set(i32(jnp.sum(keep))).at[KV_RES].set(i32(jnp.sum(jnp.where(keep, pp + oo, 0))))
        r_rep = r_rep.at[KV_USED].set(i32(jnp.sum(jnp.where(keep, f2 + g2, 0))))
        done_task = jnp.sum(jnp.where(done[:, None], jax.nn.one_hot(task, Tn, dtype=jnp.int32), 0), axis=0)
        r_rep = r_rep.at[N_TASK:].add(-i32(done_task))
        # 4. admission on every replica of the server
        members = jnp.asarray(self.server_members)[s]  # [W]
        okm = members >= 0
        rw = jnp.maximum(members, 0)
        is_r = okm & (rw == r)
        rows = jnp.where(is_r[:, None, None], r_row[None], st.run[e, rw])  # [W, S, 6]
        rows_t = jnp.where(is_r[:, None, None], r_t[None], st.run_t[e, rw])  # [W, S, 2]
        rep = jnp.where(is_r[:, None], r_rep[None], st.rep[e, rw])  # [W, 6 + T]
        n_run, kv_res, head = rep[:, N_RUN], rep[:, KV_RES], rep[:, Q_HEAD]
        qlen = jnp.where(okm, rep[:, Q_LEN], 0)
        pos = jnp.arange(self.window)
        qpos = (head[:, None] + pos) % C
        q = st.queue[e, rw[:, None], qpos]  # [W, Q, 4]
        qids, qp, qo, qt = q[..., 0], q[..., 1], q[..., 2], q[..., QTK]
        qa = st.queue_t[e, rw[:, None], qpos]
        qslots = own_slots(o.decision, e, qids, H)
        inq = pos < qlen[:, None]
        if self.drop_expired:
            expired = inq & (T - qa > p.deadline[qt])
            ok = inq & ~expired
        else:
            expired = jnp.zeros_like(inq)
            ok = inq
        cnt = i32(jnp.cumsum(ok, axis=1))
        kvcum = i32(jnp.cumsum(jnp.where(ok, qp + qo, 0), axis=1))
        kv_m = p.kv_tokens[rw // Rm]
        admitted = ok & (n_run[:, None] + cnt <= S) & (kv_res[:, None] + kvcum <= kv_m[:, None])
        stop = jnp.min(jnp.where(ok & ~admitted, pos, self.window), axis=1)
        removed = inq & (pos < stop[:, None])
        dropped = removed & expired
        n_removed = jnp.sum(removed, axis=1).astype(jnp.int32)
        adest = jnp.where(admitted, n_run[:, None] + cnt - 1, S)
        wi = jnp.arange(rw.shape[0])[:, None]
        zeros = jnp.zeros_like(qids)
        rows = rows.at[wi, adest].set(jnp.stack([qids, qp, qo, zeros, zeros, qt], axis=-1), mode="drop")
        rows_t = rows_t.at[wi, adest].set(jnp.stack([qa, jnp.full_like(qa, jnp.nan)], axis=-1), mode="drop")
        n_run = n_run + jnp.sum(admitted, axis=1).astype(jnp.int32)
        rep = rep.at[:, N_RUN].set(n_run)
        rep = rep.at[:, KV_RES].add(i32(jnp.sum(jnp.where(admitted, qp + qo, 0), axis=1)))
        rep = rep.at[:, W_PROMPT].add(-i32(jnp.sum(jnp.where(removed, qp, 0), axis=1)))
        rep = rep.at[:, Q_HEAD].set((head + n_removed) % C).at[:, Q_LEN].set(qlen - n_removed)
        if self.drop_expired:
            gone = jnp.sum(jnp.where(dropped[..., None], jax.nn.one_hot(qt, Tn, dtype=jnp.int32), 0), axis=1)
            rep = rep.at[:, N_TASK:].add(-i32(gone))
            realised = realised + jnp.sum(dropped) * (-p.miss_penalty)
        # 5. the next iteration: r again (concurrent) / round-robin after r (exclusive)
        W = rw.shape[0]
        w_r = jnp.asarray(self.member_pos)[r]
        order = (w_r + 1 + jnp.arange(W)) % W
        has = (okm & (n_run > 0))[order]
        w_next = order[first_true(has)]
        busy = jnp.any(has)
        nxt = rows[w_next]
        coef = p.iteration[rw[w_next] // Rm]
        _, _, tau = compose(nxt[:, P], nxt[:, F], nxt[:, G], n_run[w_next], K, coef)
        end = jnp.where(busy, T + tau, T)
        # Quiet iteration ends, processed here: while every iteration the server runs is decode
        # only and completes nothing, an end changes only the g of its replica (admission cannot
        # change: nothing is freed, and without drop_expired nothing expires; the next replica
        # follows the same round-robin over the same running sets), so up to `quiet_steps`
        # further ends due by t_limit are applied now, each exactly as the loop would: a decode
        # iteration of n sequences after k earlier quiet ends has C = C0 + k n (integers).
        live = jnp.arange(S)[None, :] < n_run[:, None]  # [W, S]
        act = okm & (n_run > 0)
        dec = act & jnp.all(~live | (rows[..., F] >= rows[..., P]), axis=1)
        slack = jnp.min(jnp.where(live, rows[..., O] - rows[..., G], jnp.iinfo(jnp.int32).max), axis=1)
        C0 = jnp.sum(jnp.where(live, rows[..., P] + rows[..., G], 0), axis=1)
        coefs = p.iteration[rw // Rm]  # [W, 5]
        quiet = busy
        if self.drop_expired:
            quiet = quiet & jnp.all(~okm | (rep[:, Q_LEN] == 0))
        ar = jnp.arange(W)

        def cond(c):
            return c[3] & (c[4] < self.quiet_steps)

        def step(c):
            E, cur, k, ok, i = c
            hot = ar == cur
            if W == 1:
                nx = cur
            else:
                order = (cur + 1 + ar) % W
                nx = order[first_true(act[order])]
            sel = ar == nx
            # the end of cur's iteration completes nothing and the next one (nx) is decode only
            ok = ok & (E <= t_limit) & jnp.any(hot & dec & (k + 1 < slack)) & jnp.any(sel & dec)
            k = jnp.where(ok & hot, k + 1, k)
            n_x = jnp.sum(jnp.where(sel, n_run, 0))
            C_x = jnp.sum(jnp.where(sel, C0 + k * n_run, 0))
            coef_x = coefs[nx]
            E = jnp.where(ok, E + iteration_time(coef_x, n_x, C_x, n_x), E).astype(E.dtype)
            return E, jnp.where(ok, nx, cur).astype(jnp.int32), k, ok, i + 1

        end, w_end, k, _, _ = jax.lax.while_loop(
            cond, step, (jnp.asarray(end, end.dtype), w_next.astype(jnp.int32), jnp.zeros((W,), jnp.int32), quiet, jnp.int32(0)))
        rows = rows.at[:, :, G].add(jnp.where(live, k[:, None], 0))
        rep = rep.at[:, KV_USED].add(k * n_run)
        w_next = w_end
        return {
            "newly": newly, "done": done, "slots": slots, "value": value, "first_token": ft + ov, "overhead": ov,
            "admitted": admitted, "dropped": dropped, "qslots": qslots,
            "members": jnp.where(okm, members, R), "run": rows, "run_t": rows_t, "rep": rep,
            "busy": busy, "busy_until": end,
            "iter_replica": jnp.where(busy, rw[w_next], r).astype(jnp.int32),
            "realised": realised,
        }

    @staticmethod
    def _value(p: ContinuousParams, q, e2e, ttft, out, task):
        """Realised value of a completed request (docs/simulator.md "Latencies, deadlines and reward")."""
        d = p.deadline[task]
        late = e2e > d
        tpot = (e2e - ttft) / jnp.maximum(out - 1, 1).astype(e2e.dtype)
        met = ~late & (ttft <= p.ttft_deadline[task]) & ((out <= 1) | (tpot <= p.tpot_deadline[task]))
        over = (e2e - d) / d
        decay = jnp.where(p.soft_exp, jnp.exp(-over / p.soft_tau), jnp.clip(1.0 - over / p.soft_slack, 0.0, 1.0))
        soft_value = jnp.where(late, q * decay, q)
        hard_value = jnp.where(met, q, -p.miss_penalty)
        return jnp.where(p.soft, soft_value, hard_value) - p.latency_weight * e2e / d

    # ------------------------------------------------------------------ routing view
    def _predict(self, st: ContinuousState, params: ContinuousParams) -> ContinuousState:
        """Per model: the replica the routing rule picks and the predicted latencies
        (docs/simulator.md "Prediction used by greedy and by rich")."""
        f = st.busy_until.dtype
        M, Rm, S, C = self.n_models, self.r_max, self.max_seqs, self.capacity
        server = jnp.asarray(self.server_of)
        big = jnp.iinfo(jnp.int32).max
        valid = params.replica_valid.reshape(M, Rm)
        count = jnp.where(valid, (st.queue_len + st.n_run).reshape(M, Rm), big)
        best = count == min_last(count)[:, None]
        used = jnp.where(best, st.kv_used.reshape(M, Rm), big)
        best = best & (used == min_last(used)[:, None])
        r = jnp.arange(M) * Rm + first_true(best)
        t = st.task
        o_bar = params.output_len.mean[t]
        p_in = st.prompt_in.astype(f)
        ctx = params.ctx_max.astype(f)
        p_hat = jnp.where(params.truncate, jnp.minimum(p_in, jnp.maximum(ctx - o_bar, 1.0)), p_in)
        n_run, n_wait = st.n_run[r], st.queue_len[r]
        U, Wp = st.kv_used[r].astype(f), st.wait_prompt[r].astype(f)
        A = n_run + n_wait + 1
        n_b = jnp.minimum(A, S)
        c_bar = (U + Wp + p_hat) / A.astype(f) + o_bar / 2.0
        means = params.output_len.mean
        ahead_n = n_run + n_wait
        ahead_sum = jnp.sum(st.n_task[r].astype(f) * means[None, :], axis=1)
        o_ahead = jnp.where(ahead_n > 0, ahead_sum / jnp.maximum(ahead_n, 1).astype(f), o_bar)
        wait_iters = jnp.maximum(A - S, 0).astype(f) * o_ahead / n_b.astype(f)
        K = params.max_batched_tokens
        prefill_iters = jnp.ceil(p_hat / jnp.maximum(K - (n_b - 1), 1).astype(f))
        coef = params.iteration

        tau = mean_iteration_time
        rnd = tau(coef, n_b, c_bar)
        # externality: how much longer every iteration of the requests already sharing the
        # engine (and, exclusive, the GPU's round) gets while this one stays
        c_before = (U + Wp) / jnp.maximum(ahead_n, 1).astype(f) + o_bar / 2.0
        delta = rnd - jnp.where(ahead_n > 0, tau(coef, jnp.minimum(ahead_n, S), c_before), 0.0)
        s = server[r]
        t_r = self._engine_iterations(st, params)
        if self.exclusive:
            members = jnp.asarray(self.server_members)[s]  # [M, W]
            other = (members >= 0) & (members != r[:, None])
            rnd = rnd + sum_last(jnp.where(other, t_r[jnp.maximum(members, 0)], 0.0))
        busy = st.busy[s]
        residual = jnp.where(busy, st.busy_until[s] - st.now, 0.0)
        pred = residual + (wait_iters + prefill_iters + o_bar - 1.0) * rnd + params.overhead
        pred_ttft = residual + (wait_iters + prefill_iters) * rnd + params.overhead
        possible = (params.replica_valid[r] & (n_wait < C) & (p_hat + o_bar <= params.kv_tokens.astype(f))
                    & (params.truncate | (p_in + o_bar <= ctx)))
        pred = jnp.where(possible, pred, jnp.inf).astype(f)
        pred_ttft = jnp.where(possible, pred_ttft, jnp.inf).astype(f)
        meets = (pred <= params.deadline[t]) & (pred_ttft <= params.ttft_deadline[t])
        stay = wait_iters + prefill_iters + o_bar  # iterations of its engine this request stays
        harm = jnp.where(possible, self._harm(st, params, r, delta, stay, t_r), 0.0).astype(f)
        return st.replace(chosen_replica=r.astype(jnp.int32), pred_e2e=pred, pred_ttft=pred_ttft, meets=meets,
                          predicted_finish=st.now + pred, harm=harm)

    def _engine_iterations(self, st: ContinuousState, params: ContinuousParams):
        """[R] each engine's next iteration as the prediction sees it (its requests, mean
        context), 0 for an engine with no work."""
        f = st.busy_until.dtype
        n_o = st.n_run + st.queue_len
        per = (st.kv_used + st.wait_prompt).astype(f) / jnp.maximum(n_o, 1).astype(f)
        coef = params.iteration[jnp.arange(self.n_replicas) // self.r_max]
        return jnp.where(n_o > 0, mean_iteration_time(coef, jnp.minimum(n_o, self.max_seqs), per), 0.0)

    def _harm(self, st: ContinuousState, params: ContinuousParams, r, delta, stay, t_r):
        """[M] the delay choosing each model imposes on the requests already on the server of its
        chosen replica ``r`` (its GPU under `exclusive`): every iteration they still need is
        ``delta`` longer, for up to ``stay`` iterations; each request's delay in its deadlines,
        weighted by the share of its deadline its predicted latency takes (1 once predicted
        late), summed (docs/simulator.md "Externality of a decision"). Delay that leaves a
        request far inside its deadline costs next to nothing."""
        f = st.busy_until.dtype
        S, C = self.max_seqs, self.capacity
        K = jnp.maximum(params.max_batched_tokens, 1).astype(f)
        members = jnp.asarray(self.server_members)  # [Sv, W]
        server = jnp.asarray(self.server_of)
        n_o = st.n_run + st.queue_len
        round_s = sum_last(jnp.where(members >= 0, t_r[jnp.maximum(members, 0)], 0.0))  # each server's round
        start = st.now + jnp.where(st.busy, st.busy_until - st.now, 0.0)[server]  # [R] its next iteration
        # running sequences: the rest of their prefill, then their output tokens
        run = st.run
        live = jnp.arange(S) < st.n_run[:, None]
        rem_run = (jnp.ceil(jnp.maximum(run[..., P] - run[..., F], 0).astype(f) / K)
                   + jnp.maximum(run[..., O] - run[..., G], 1).astype(f))
        # waiting requests: the completions ahead of them (mean output lengths), then the whole request
        pos = (jnp.arange(C) - st.queue_head[:, None]) % C
        waiting = pos < st.queue_len[:, None]
        o_ahead = (jnp.sum(st.n_task.astype(f) * params.output_len.mean, axis=-1)
                   / jnp.maximum(n_o, 1).astype(f))[:, None]
        ahead = jnp.maximum(st.n_run[:, None] + pos + 1 - S, 0).astype(f)
        q = st.queue
        rem_wait = ahead * o_ahead / S + jnp.ceil(q[..., P].astype(f) / K) + q[..., O].astype(f)
        cat = lambda a, b: jnp.concatenate([a, b], axis=1)  # [R, S + C]: running, then waiting
        rem = cat(rem_run, rem_wait)
        d = params.deadline[cat(run[..., TK], q[..., QTK])]
        latency = start[:, None] + rem * round_s[server][:, None] - cat(st.run_t[..., 0], st.queue_t)
        weight = jnp.where(cat(live, waiting), jnp.clip(latency / d, 0.0, 1.0) / d, 0.0)
        mem = members[server[r]]  # [M, W] replicas sharing each candidate's server
        pick = lambda x: jnp.where((mem >= 0)[..., None], x[jnp.maximum(mem, 0)], 0.0)  # [M, W, S + C]
        delay = delta[:, None, None] * jnp.minimum(stay[:, None, None], pick(rem))
        return jnp.sum(delay * pick(weight), axis=(1, 2)).astype(f)

    def observe(self, st: ContinuousState, params: ContinuousParams) -> jnp.ndarray:
        f = st.busy_until.dtype
        M, Rm, S = self.n_models, self.r_max, self.max_seqs
        onehot = jax.nn.one_hot(st.task, self.n_tasks, dtype=f)
        has = params.replica_count > 0
        denom = jnp.maximum(S * params.replica_count, 1.0)
        per_model = lambda x: sum_last(x.reshape(M, Rm)).astype(f)
        load = jnp.where(has, per_model(st.queue_len + st.n_run) / denom, 0.0)
        rate = (1.0 / st.ewma_gap) / params.ref_rate
        parts = [onehot, load, rate[None]]
        if self.cfg.obs_mode == "rich":
            d = params.deadline[st.task]
            running = jnp.where(has, per_model(st.n_run) / denom, 0.0)
            kv_pool = jnp.maximum(params.kv_tokens.astype(f) * params.replica_count, 1.0)
            kv = jnp.where(has, per_model(st.kv_used) / kv_pool, 0.0)
            ctx = jnp.max(params.ctx_max).astype(f)
            parts += [running, kv, jnp.minimum(st.pred_e2e / d, WAIT_CAP), (st.prompt_in.astype(f) / ctx)[None],
                      d[None]]
        return jnp.concatenate(parts).astype(f)

    # ------------------------------------------------------------------ end of run
    @partial(jax.jit, static_argnums=0)
    def drain(self, state: ContinuousState, params: ContinuousParams) -> ContinuousState:
        """Process every remaining event with no more arrivals: all requests get an outcome."""
        state, _ = self._advance(state, params, jnp.asarray(jnp.inf, state.busy_until.dtype))
        return state

    def drain_batch(self, states: ContinuousState, params: ContinuousParams, params_axis=None) -> ContinuousState:
        t_inf = jnp.full(states.now.shape, jnp.inf, states.busy_until.dtype)
        n = states.now.shape[0]
        states, _ = self._advance_batch(states, params, t_inf, params_axis, n * self.n_servers)
        return states
