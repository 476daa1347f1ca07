"""The vectorized serving simulator: one routing decision per `step`, pure and jittable.

Semantics: docs/simulator.md. Latency comes from the profile's dense table ``L[m, t, b]``
gathered by index (Vidur/AlpaServe style). Between two arrivals the servers are independent,
so each iteration of the event loop processes the next due event of every server; for a batch
of environments (`step_batch`) it gathers just the (environment, server) pairs that have one,
so the cost follows the number of events, not the number of environments.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from bes_jax.env import autoscaler
from bes_jax.env.layout import server_layout
from bes_jax.env.params import EnvParams, default_float, make_env_params
from bes_jax.env.state import DROPPED, EMPTY, QUEUED, REJECTED, SERVED, EnvState, Outcomes, own_slots, slot_resolved
from bes_jax.profile import Profile
from bes_jax.short_axis import first_true, min_last, sum_last
from bes_jax.sim_config import ConfigError, SimConfig
from bes_jax.workloads import WorkloadParams, workload_init, workload_next


WAIT_CAP = 10.0  # rich observation: predicted wait in deadlines, capped


class ServingEnv:
    """Static layout (shapes) of a pool; all numbers live in `EnvParams`.

    Replica ``r = m * R_max + k`` is replica ``k`` of model ``m``; it runs on GPU ``k mod n_gpus``.
    """

    def __init__(self, profile: Profile, cfg: SimConfig = SimConfig()):
        self.profile, self.cfg = profile, cfg
        self.n_models, self.n_tasks, self.b_max = profile.n_models, profile.n_tasks, profile.b_max
        counts = cfg.replica_counts(self.n_models)
        self.r_max = max(counts)
        self.n_replicas = self.n_models * self.r_max
        self.capacity = cfg.queue_capacity
        self.slots = cfg.outcome_slots
        bound = cfg.in_system_bound(self.n_models, self.b_max)
        if self.slots <= bound:
            raise ConfigError(
                f"sim config: field 'outcome_slots' = {self.slots}: must exceed the most requests "
                f"that can be in the system at once ({bound} = replicas x (queue_capacity + B_max)), "
                "or unresolved decisions would be overwritten")
        self.exclusive = cfg.placement == "exclusive"
        # Formation looks at the first `window` queued requests: all of them when expired ones
        # may be skipped, else only the B_max that can be taken (static: it sets shapes).
        self.drop_expired = bool(cfg.drop_expired)
        self.window = self.capacity if self.drop_expired else min(self.b_max, self.capacity)
        self.n_servers, self.server_of, self.server_members = server_layout(cfg, self.n_models, self.r_max)
        self.obs_size = self.n_tasks + self.n_models + 1 + (self.n_models + 1 if cfg.obs_mode == "rich" else 0)
        # reactive autoscaler (static flag: with it off nothing of it is traced)
        self.autoscale = bool(cfg.autoscale)
        if self.autoscale:
            self.autoscale_pool = autoscaler.pool_mask(cfg, self.n_models, self.r_max)

    # ------------------------------------------------------------------ params
    def make_params(self, workload: WorkloadParams, **overrides) -> EnvParams:
        params = make_env_params(self.profile, self.cfg, workload, self.r_max)
        return params.replace(**overrides) if overrides else params

    # ------------------------------------------------------------------ reset
    @partial(jax.jit, static_argnums=0)
    def reset(self, key: jax.Array, params: EnvParams):
        f = default_float()
        R, S, C, H, M = self.n_replicas, self.n_servers, self.capacity, self.slots, self.n_models
        ws, t0, task0 = workload_init(key, params.workload)
        nan = jnp.full((H,), jnp.nan, f)
        outcomes = Outcomes(
            decision=jnp.full((H,), -1, jnp.int32), arrival=nan, task=jnp.zeros((H,), jnp.int32),
            model=jnp.full((H,), -1, jnp.int32), replica=jnp.full((H,), -1, jnp.int32),
            start=nan, finish=nan, reward=nan, status=jnp.full((H,), EMPTY, jnp.int8))
        state = EnvState(
            queue=jnp.zeros((R, C), jnp.int32), queue_arrival=jnp.zeros((R, C), f),
            queue_task=jnp.zeros((R, C), jnp.int32), queue_head=jnp.zeros((R,), jnp.int32),
            queue_len=jnp.zeros((R,), jnp.int32),
            inflight=jnp.zeros((R,), jnp.int32), busy=jnp.zeros((S,), bool),
            free_at=jnp.zeros((S,), f), batch_replica=jnp.asarray(self.server_members[:, 0], jnp.int32),
            batch_value=jnp.zeros((S,), f), now=jnp.asarray(t0, f), task=jnp.asarray(task0, jnp.int32),
            decision=jnp.zeros((), jnp.int32), ewma_gap=(1.0 / params.ref_rate).astype(f),
            episode_step=jnp.zeros((), jnp.int32), chosen_replica=jnp.zeros((M,), jnp.int32),
            wait=jnp.zeros((M,), f), predicted_finish=jnp.zeros((M,), f), evicted=jnp.zeros((), jnp.int32),
            outcomes=outcomes, workload=ws)
        if self.autoscale:
            state = state.replace(autoscale=autoscaler.init(params.autoscale, self.autoscale_pool, state.now))
        state = self._predict(state, params)
        return self.observe(state, params), state

    # ------------------------------------------------------------------ step
    @partial(jax.jit, static_argnums=0)
    def step(self, key: jax.Array, state: EnvState, action: jax.Array, params: EnvParams):
        """Route the pending request to model `action`, advance to the next arrival.

        Returns ``(obs, state, reward, done, info)``. ``reward`` is the sum of the values
        realised during this step (completions, drops, a rejection): rewards are delayed, and
        the per-decision values are in ``state.outcomes`` (see `resolved_mask`).
        `jax.vmap` of this works; `step_batch` is the same step for a batch of environments
        with a faster event loop.
        """
        state, pending = self._route(key, state, action, params)
        state, realised = self._advance(state, params, pending[0])
        return self._finish(state, params, pending, realised)

    def step_batch(self, keys, states: EnvState, actions, params: EnvParams, params_axis=None):
        """`step` for a batch of environments (leading axis), with identical semantics.

        Under `vmap`, a `while_loop` runs until the busiest environment is done and selects
        between the old and new value of its whole carry for every environment on every
        iteration. Here the event loop runs over the batch instead, and each iteration
        processes the due events of all servers, compacted by index into a few lanes
        (`loop_lanes`), so its cost follows the number of events, not N.
        ``params_axis``: `vmap` in_axes for ``params`` (None: shared by all environments).
        """
        states, pending = jax.vmap(self._route, in_axes=(0, 0, 0, params_axis))(keys, states, actions, params)
        states, realised = self._advance_batch(states, params, pending[0], params_axis,
                                               self.loop_lanes(keys.shape[0]))
        return jax.vmap(self._finish, in_axes=(0, params_axis, 0, 0))(states, params, pending, realised)

    @staticmethod
    def loop_lanes(n_envs: int) -> int:
        """(environment, server) lanes per event-loop iteration in `step_batch`. Under a bursty
        3x overload about 0.14 events per environment fall between two arrivals, so N/4
        lanes serve nearly all of them in one iteration; more lanes waste work on empty ones,
        fewer need more iterations (measured: docs/benchmarks.md)."""
        return max(64, n_envs // 4)

    def _route(self, key, state: EnvState, action, params: EnvParams):
        """Place the pending request (or reject it) and draw the next arrival.

        A request reaching an idle server starts a batch of one at once, here rather than as
        an event of the loop: it is the most common event, and an idle server has empty
        queues (every event up to the clock has been processed), so the batch is just it.
        """
        f = state.free_at.dtype
        H, C = self.slots, self.capacity
        now = state.now
        action = jnp.asarray(action, jnp.int32)
        r = state.chosen_replica[action]
        i = state.decision
        slot = i % H
        miss = -params.miss_penalty
        reject = (state.queue_len[r] >= C) | ~params.replica_valid[r]
        s = jnp.asarray(self.server_of)[r]
        idle = ~(state.busy[s] & (state.free_at[s] > now))
        start_now = ~reject & idle
        enqueue = ~reject & ~idle
        d = params.deadline[state.task]
        latency = params.latency[action, state.task, 0]
        value = self._value(params, params.quality[action, state.task], latency, d)
        o = state.outcomes
        evicted = state.evicted + (~slot_resolved(o, slot, now)).astype(jnp.int32)
        o = o.replace(
            decision=o.decision.at[slot].set(i), arrival=o.arrival.at[slot].set(now),
            task=o.task.at[slot].set(state.task), model=o.model.at[slot].set(action),
            replica=o.replica.at[slot].set(r),
            start=o.start.at[slot].set(jnp.where(start_now, now, jnp.nan)),
            finish=o.finish.at[slot].set(jnp.where(reject, now, jnp.where(start_now, now + latency, jnp.nan))),
            reward=o.reward.at[slot].set(jnp.where(reject, miss, jnp.where(start_now, value, jnp.nan))),
            status=o.status.at[slot].set(
                jnp.where(reject, REJECTED, jnp.where(start_now, SERVED, QUEUED)).astype(jnp.int8)))
        tail = (state.queue_head[r] + state.queue_len[r]) % C
        put_q = lambda x, new: x.at[r, tail].set(jnp.where(enqueue, new, x[r, tail]))
        queue = put_q(state.queue, i)
        queue_len = state.queue_len.at[r].add(enqueue.astype(jnp.int32))
        old = state.batch_replica[s]
        ended = start_now & state.busy[s]  # the server's previous batch (if any) has ended
        inflight = state.inflight.at[old].set(jnp.where(ended, 0, state.inflight[old]))
        inflight = inflight.at[r].set(jnp.where(start_now, 1, inflight[r]))
        put = lambda x, new: x.at[s].set(jnp.where(start_now, new, x[s]))
        state = state.replace(
            outcomes=o, evicted=evicted, queue=queue, queue_len=queue_len, inflight=inflight,
            queue_arrival=put_q(state.queue_arrival, now), queue_task=put_q(state.queue_task, state.task),
            busy=put(state.busy, True), free_at=put(state.free_at, now + latency),
            batch_replica=put(state.batch_replica, r), batch_value=put(state.batch_value, value))
        ws, t_next, task_next = workload_next(key, state.workload, params.workload)
        pending = (jnp.asarray(t_next, f), jnp.asarray(task_next, jnp.int32), ws, reject)
        return state, pending

    def _finish(self, state: EnvState, params: EnvParams, pending, realised):
        """Make the next request pending: rate estimate, episode counter, predictions, obs."""
        f = state.free_at.dtype
        t_next, task_next, ws, reject = pending
        # batches that end in (now, t_next] with nothing queued behind them end silently
        # (no loop event); their value is realised in this step all the same.
        ending = state.busy & (state.free_at > state.now) & (state.free_at <= t_next)
        realised = realised + jnp.sum(jnp.where(ending, state.batch_value, 0.0))
        realised = realised + jnp.where(reject, -params.miss_penalty, 0.0)
        gap = t_next - state.now
        ewma = params.ewma_alpha * gap + (1.0 - params.ewma_alpha) * state.ewma_gap
        ep = state.episode_step + 1
        done = ep >= params.episode_len
        info = {"decision": state.decision, "rejected": reject, "t_decision": state.now, "clock": t_next}
        state = state.replace(
            now=t_next, task=task_next, decision=state.decision + 1, ewma_gap=ewma.astype(f),
            episode_step=jnp.where(done, 0, ep), workload=ws)
        if self.autoscale:
            state = self._autoscale_at_arrival(state, params)
        state = self._predict(state, params)
        return self.observe(state, params), state, realised.astype(f), done, info

    def _autoscale_at_arrival(self, st: EnvState, params: EnvParams) -> EnvState:
        """The autoscaler at the pending request's arrival (bes_jax.env.autoscaler)."""
        server = jnp.asarray(self.server_of)
        idle = ~(st.busy[server] & (st.free_at[server] > st.now))
        a = autoscaler.at_arrival(st.autoscale, params.autoscale, self.autoscale_pool, st.now,
                                  st.queue_len + self.running(st), idle, st.free_at[server], 1.0 / st.ewma_gap)
        return st.replace(autoscale=a)

    def running(self, st: EnvState):
        """[R] requests in flight per replica at the clock (a batch that has ended counts 0)."""
        server = jnp.asarray(self.server_of)
        live = st.busy[server] & (st.free_at[server] > st.now)
        return jnp.where(live, st.inflight, 0)

    # ------------------------------------------------------------------ event loop
    def _event_times(self, state: EnvState):
        has_queue = (state.queue_len > 0)
        if not self.exclusive:  # a server is a replica
            return jnp.where(has_queue, state.free_at, jnp.inf)
        members = jnp.asarray(self.server_members)
        server_has_queue = jnp.where(members >= 0, has_queue[jnp.maximum(members, 0)], False).any(axis=1)
        # a server's next batch forms when its running batch ends (or at once if idle); a
        # batch ending with nothing queued behind it needs no event.
        return jnp.where(server_has_queue, state.free_at, jnp.inf)

    def _due_events(self, states: EnvState, t_limit):
        """[N, S] time of each server's next event, +inf if none is due by t_limit[n]."""
        ev = jax.vmap(self._event_times)(states)
        return jnp.where(ev <= t_limit[:, None], ev, jnp.inf)

    def _advance_batch(self, states: EnvState, params: EnvParams, t_limit, params_axis, lanes):
        """Process every server event with time <= t_limit[n] of every environment n; returns
        ``(states, realised[N])``.

        Servers are independent between two arrivals (a formation reads and writes only its
        own server's replicas and requests), so an iteration takes the next event of every
        server that has one due, across environments, compacted by index into at most `lanes`
        (environment, server) lanes; each server's own events still run in time order.
        """
        N, S = t_limit.shape[0], self.n_servers
        lanes = min(lanes, N * S)

        def cond(carry):
            return jnp.any(carry[2] < jnp.inf)

        def body(carry):
            st, realised, T = carry
            lane = first_lanes(T < jnp.inf, lanes)
            st, realised = self._process_events(st, params, params_axis, lane, T.reshape(-1), realised)
            return st, realised, self._due_events(st, t_limit)

        realised = jnp.zeros((N,), states.free_at.dtype)
        states, realised, _ = jax.lax.while_loop(cond, body, (states, realised, self._due_events(states, t_limit)))
        return states, realised

    def _advance(self, state: EnvState, params: EnvParams, t_limit):
        """One environment: `_advance_batch` on a batch of one."""
        one = jax.tree.map(lambda x: x[None], state)
        one, realised = self._advance_batch(one, params, jnp.asarray(t_limit)[None], None, self.n_servers)
        return jax.tree.map(lambda x: x[0], one), realised[0]

    def _params_for(self, params: EnvParams, params_axis, e):
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

    def _process_events(self, st: EnvState, params: EnvParams, params_axis, lane, T, realised):
        """Process the due event of (environment, server) lanes ``lane`` [K] (flat index
        ``n * S + s``; ``N * S`` marks an empty lane, whose reads are harmless and whose writes
        are dropped): the server's running batch ends, then its next batch forms
        (docs/simulator.md, step 3). ``T`` [N * S]: each server's due time."""
        S = self.n_servers
        N = T.shape[0] // S
        H, C = self.slots, self.capacity
        idx = lane // S  # write index: N for an empty lane (out of range: dropped)
        e = jnp.minimum(idx, N - 1)
        sk = lane % S
        Tk = T[jnp.minimum(lane, N * S - 1)]
        drop = dict(mode="drop")
        was_busy = st.busy[e, sk]
        realised = realised.at[idx].add(jnp.where(was_busy, st.batch_value[e, sk], 0.0), **drop)
        br = st.batch_replica[e, sk]
        inflight = st.inflight.at[idx, br].set(jnp.where(was_busy, 0, st.inflight[e, br]), **drop)
        o = st.outcomes
        r = self._pick_replicas(st, e, sk)
        # the first `window` queued requests of replica r, oldest first
        head, qlen = st.queue_head[e, r], st.queue_len[e, r]
        pos = jnp.arange(self.window)
        where = (e[:, None], r[:, None], (head[:, None] + pos) % C)
        ids, arrival, task = st.queue[where], st.queue_arrival[where], st.queue_task[where]
        slots = own_slots(o.decision, e[:, None], ids, H)
        p, p_axis = self._params_for(params, params_axis, e)
        f = jax.vmap(self._formation, in_axes=(p_axis, 0, 0, 0, 0, 0))
        take, dropped, b, n_removed, end, value = f(p, arrival, task, qlen, r // self.r_max, Tk)
        miss = -p.miss_penalty
        miss = miss[:, None] if miss.ndim else miss
        write = jnp.where(take | dropped, slots, H)  # out-of-range index: dropped by the scatter
                                                     # (also where a newer decision took the slot)
        row = idx[:, None]
        o = o.replace(
            start=o.start.at[row, write].set(jnp.where(take, Tk[:, None], jnp.nan), **drop),
            finish=o.finish.at[row, write].set(jnp.where(take, end[:, None], Tk[:, None]), **drop),
            reward=o.reward.at[row, write].set(jnp.where(take, value, miss), **drop),
            status=o.status.at[row, write].set(jnp.where(take, SERVED, DROPPED).astype(jnp.int8), **drop))
        started = b > 0
        st = st.replace(
            # (counts cast to the state's integer type: under x64 sums come out int64)
            outcomes=o,
            queue_head=st.queue_head.at[idx, r].set(((head + n_removed) % C).astype(st.queue_head.dtype), **drop),
            queue_len=st.queue_len.at[idx, r].add((-n_removed).astype(st.queue_len.dtype), **drop),
            inflight=inflight.at[idx, r].set(b.astype(inflight.dtype), **drop),
            busy=st.busy.at[idx, sk].set(started, **drop),
            free_at=st.free_at.at[idx, sk].set(jnp.where(started, end, Tk), **drop),
            batch_replica=st.batch_replica.at[idx, sk].set(r.astype(st.batch_replica.dtype), **drop),
            batch_value=st.batch_value.at[idx, sk].set(jnp.sum(jnp.where(take, value, 0.0), axis=1), **drop))
        realised = realised.at[idx].add(jnp.sum(jnp.where(dropped, miss, 0.0), axis=1), **drop)
        return st, realised

    def _pick_replicas(self, st: EnvState, e, s):
        """[K] replica whose queue server s serves next: itself (concurrent), or the member
        replica with the oldest queued request (exclusive; ties to the lowest model index)."""
        if not self.exclusive:
            return s
        members = jnp.asarray(self.server_members)[s]  # [K, width]
        ok = members >= 0
        m = jnp.maximum(members, 0)
        E = e[:, None]
        has = ok & (st.queue_len[E, m] > 0)
        head = st.queue_arrival[E, m, st.queue_head[E, m]]
        return jnp.take_along_axis(m, jnp.argmin(jnp.where(has, head, jnp.inf), axis=1)[:, None], axis=1)[:, 0]

    def _formation(self, params: EnvParams, arrival, task, qlen, m, T):
        """FIFO batch formation math for one environment over its queue window: which requests
        are taken / dropped, the batch size, how many leave the queue, its end and values."""
        B = self.b_max
        pos = jnp.arange(arrival.shape[0])
        valid = pos < qlen
        d = params.deadline[task]
        if self.drop_expired:
            ok = valid & ~(T - arrival > d)
            take = ok & (jnp.cumsum(ok) <= B)
            b = take.sum().astype(jnp.int32)
            last = jnp.max(jnp.where(take, pos, -1))
            removed = jnp.where(b == B, valid & (pos <= last), valid)
            dropped = removed & ~take
            n_removed = removed.sum().astype(jnp.int32)
        else:  # the window holds at most B_max requests and none expires: take them all
            take, dropped = valid, jnp.zeros_like(valid)
            b = n_removed = jnp.minimum(qlen, arrival.shape[0]).astype(jnp.int32)
        lat_by_task = params.latency[m, :, jnp.maximum(b - 1, 0)]
        latency = jnp.max(jnp.where(take, lat_by_task[task], 0.0))
        end = T + latency
        value = self._value(params, params.quality[m, task], end - arrival, d)
        return take, dropped, b, n_removed, end, value

    @staticmethod
    def _value(params: EnvParams, q, latency, d):
        """Realised value of a served request (docs/simulator.md "Reward")."""
        late = latency > d
        over = (latency - d) / d
        decay = jnp.where(params.soft_exp, jnp.exp(-over / params.soft_tau),
                          jnp.clip(1.0 - over / params.soft_slack, 0.0, 1.0))
        soft_value = jnp.where(late, q * decay, q)
        hard_value = jnp.where(late, -params.miss_penalty, q)
        return jnp.where(params.soft, soft_value, hard_value) - params.latency_weight * latency / d

    # ------------------------------------------------------------------ routing view
    def _predict(self, st: EnvState, params: EnvParams) -> EnvState:
        """Per model: the replica the routing rule picks, predicted wait and completion."""
        M, Rm, B, C = self.n_models, self.r_max, self.b_max, self.capacity
        server = jnp.asarray(self.server_of)
        count = (st.queue_len + self.running(st)).reshape(M, Rm)
        free = jnp.maximum(st.free_at[server], st.now).reshape(M, Rm)
        valid_flat = params.replica_valid
        if self.autoscale:  # only replicas that are up (allocated, ready, not draining)
            valid_flat = valid_flat & autoscaler.routable(st.autoscale, st.now)
        valid = valid_flat.reshape(M, Rm)
        big = jnp.iinfo(jnp.int32).max
        count = jnp.where(valid, count, big)
        best = count == min_last(count)[:, None]
        free_masked = jnp.where(best, free, jnp.inf)
        best = best & (free_masked == min_last(free_masked)[:, None])
        k = first_true(best)
        r = jnp.arange(M) * Rm + k
        q = st.queue_len[r]
        s = server[r]
        busy = st.busy[s] & (st.free_at[s] > st.now)
        F = jnp.where(busy, st.free_at[s], st.now)
        lat = params.latency[:, st.task, :]  # [M, B]
        wait = (F - st.now) + (q // B) * lat[:, B - 1]
        if self.exclusive:  # every request queued on the GPU's other replicas arrived earlier: served first
            members = jnp.asarray(self.server_members)[s]  # [M, W]
            other = (members >= 0) & (members != r[:, None])
            mem = jnp.maximum(members, 0)
            qo = jnp.where(other, st.queue_len[mem], 0)
            mo = mem // Rm
            rest = qo % B
            work = (qo // B) * lat[mo, B - 1] + jnp.where(rest > 0, lat[mo, jnp.maximum(rest - 1, 0)], 0.0)
            wait = wait + sum_last(work)
        # our own batch: exactly a batch of one if the server is idle; otherwise assume it fills
        # up (arrivals keep joining until it starts), which is what happens under load.
        own = jnp.where(busy, lat[:, B - 1], lat[:, 0])
        finish = st.now + wait + own
        possible = valid_flat[r] & (q < C)
        return st.replace(chosen_replica=r.astype(jnp.int32),
                          wait=jnp.where(possible, wait, jnp.inf),
                          predicted_finish=jnp.where(possible, finish, jnp.inf))

    def observe(self, st: EnvState, params: EnvParams) -> jnp.ndarray:
        f = st.free_at.dtype
        M, Rm = self.n_models, self.r_max
        onehot = jax.nn.one_hot(st.task, self.n_tasks, dtype=f)
        in_system = sum_last((st.queue_len + self.running(st)).reshape(M, Rm)).astype(f)
        denom = self.b_max * params.replica_count
        load = jnp.where(params.replica_count > 0, in_system / jnp.maximum(denom, 1.0), 0.0)
        rate = (1.0 / st.ewma_gap) / params.ref_rate
        parts = [onehot, load, rate[None]]
        if self.cfg.obs_mode == "rich":
            d = params.deadline[st.task]
            parts += [jnp.minimum(st.wait / d, WAIT_CAP), d[None]]  # a full queue reads as WAIT_CAP
        return jnp.concatenate(parts).astype(f)

    # ------------------------------------------------------------------ end of run
    @partial(jax.jit, static_argnums=0)
    def drain(self, state: EnvState, params: EnvParams) -> EnvState:
        """Process every remaining event with no more arrivals: all requests get an outcome."""
        state, _ = self._advance(state, params, jnp.asarray(jnp.inf, state.free_at.dtype))
        return state

    def drain_batch(self, states: EnvState, params: EnvParams, params_axis=None) -> EnvState:
        """`drain` for a batch of environments (leading axis)."""
        t_inf = jnp.full(states.now.shape, jnp.inf, states.free_at.dtype)
        n = states.now.shape[0]
        states, _ = self._advance_batch(states, params, t_inf, params_axis, n * self.n_servers)
        return states


def first_lanes(due, lanes: int):
    """Flat indices ``n * S + s`` of the first `lanes` True entries of ``due`` [N, S], in
    order, padded with ``N * S``: `jnp.nonzero(due.ravel(), size=lanes)`, with the prefix sum
    taken per row (unrolled over the few servers) and then over rows, which XLA:CPU runs much
    faster than one long prefix sum."""
    N, S = due.shape
    d = due.astype(jnp.int32)
    within = [d[:, 0]]
    for j in range(1, S):
        within.append(within[-1] + d[:, j])
    within = jnp.stack(within, axis=1)  # [N, S] inclusive count within the row
    before = jnp.cumsum(within[:, -1]) - within[:, -1]  # [N] count in earlier rows
    rank = before[:, None] + within - 1
    target = jnp.where(due & (rank < lanes), rank, lanes).ravel()
    return jnp.full((lanes,), N * S, jnp.int32).at[target].set(jnp.arange(N * S, dtype=jnp.int32), mode="drop")


def resolved_mask(state: EnvState) -> jnp.ndarray:
    """[H] bool: slots whose outcome is realised by the current clock (for reward attachment)."""
    o = state.outcomes
    final = (o.status == SERVED) | (o.status == DROPPED) | (o.status == REJECTED)
    return final & (o.finish <= state.now)


def make_env(profile: Profile, cfg: SimConfig, workload: WorkloadParams):
    env = ServingEnv(profile, cfg)
    return env, env.make_params(workload)
