"""PQN (parallel Q-learning; Gallici et al., ICLR 2025, "Simplifying Deep Temporal Difference
Learning") for the serving environment, trained end to end inside `jit`.

No replay buffer and no target network: thousands of environments step together
(`ServingEnv.step_batch`), each iteration collects a rollout of ``rollout_len`` decisions per
environment, and the Q-network (an MLP with LayerNorm after every hidden layer) is regressed on
Q(lambda) returns over that rollout in ``epochs`` x ``minibatches`` gradient steps.

Delayed rewards. A decision's reward is known only once its request resolves (served, dropped
or rejected, and its finish time reached: `resolved_mask`). The learner keeps the last
``delay_rollouts`` rollouts and trains on the oldest, so each of its decisions has had at least
``(delay_rollouts - 1) * rollout_len + 1`` further decisions to resolve. Its reward is read from
the simulator's outcome record at the decision's own slot (``decision % outcome_slots``, with
the stored decision id checked), nothing is estimated. A decision still unresolved then weighs
0 in the loss, and the lambda-return of the decision before it bootstraps from Q at its state
instead of running through it (an exact, shorter return): ``logs["frac_resolved"]`` reports how
many were resolved.

Returns. Per environment, over the decision sequence t = 0..K-1 of the rollout with next
states s_{t+1} (s_K: the state after the rollout),

    G_t = r_t + gamma * [(1 - l_t) * max_a Q(s_{t+1}, a) + l_t * G_{t+1}],   G_{K-1}: l = 0,

with l_t = lambda, or 0 where decision t+1 is unresolved or decision t ended an episode. Episode
ends are time-limit truncations, so every return bootstraps (never a terminal 0).

Hyperparameters that are numbers (:data:`PQN_HPARAMS`) are traced (``ts.hp``), so one program
`vmap`s over seeds and hyperparameters.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import jax
import jax.numpy as jnp
import optax
from flax import struct

from bes_jax.agents.dqn import (ObsStats, default_hparams, evicted_fraction, make_optimizer, resolve_hparams,
                                update_stats)
from bes_jax.agents.bank import make_bank
from bes_jax.agents.network import QNetwork, action_mask_fn, normalize
from bes_jax.agents.shaping import check_price, decision_harm
from bes_jax.env import ServingEnv
from bes_jax.env.params import EnvParams
from bes_jax.env.state import DROPPED, REJECTED, SERVED
from bes_jax.workloads import workload_restart


@dataclass(frozen=True)
class PQNConfig:
    n_envs: int = 1024
    iterations: int = 4096          # vectorised env steps (decisions = iterations * n_envs)
    chunk_iterations: int = 512     # env steps per compiled chunk (a multiple of rollout_len)
    rollout_len: int = 16           # decisions per environment per rollout
    delay_rollouts: int = 32        # rollouts kept; training uses the oldest (rewards resolve meanwhile)
    epochs: int = 2
    minibatches: int = 16
    gamma: float = 0.9
    lam: float = 0.65
    lr: float = 3e-4
    max_grad_norm: float = 10.0
    hidden: Sequence[int] = (64, 64)
    eps_start: float = 1.0
    eps_end: float = 0.02
    eps_decay_fraction: float = 0.4
    mask_wait_x: float = 0.0        # as DQNConfig.mask_wait_x
    externality_price: float = 0.0  # as DQNConfig.externality_price (training reward only)
    #: data parallel over this many local devices (`jax.shard_map`): each steps n_envs / devices
    #: environments and the gradients are averaged; on a CPU ask XLA for host devices first
    #: (`bes_jax.env.devices.use_host_devices`). 1: one program on the default device
    devices: int = 1

    def __post_init__(self):
        for name in ("n_envs", "iterations", "chunk_iterations", "rollout_len", "delay_rollouts", "epochs",
                     "minibatches", "devices"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"pqn config: field '{name}' = {v!r}: must be a positive integer")
        if self.iterations % self.chunk_iterations:
            raise ValueError(f"pqn config: field 'iterations' = {self.iterations}: must be a multiple of "
                             f"chunk_iterations ({self.chunk_iterations})")
        if self.chunk_iterations % self.rollout_len:
            raise ValueError(f"pqn config: field 'chunk_iterations' = {self.chunk_iterations}: must be a multiple of "
                             f"rollout_len ({self.rollout_len})")
        if self.n_envs % self.devices:
            raise ValueError(f"pqn config: field 'n_envs' = {self.n_envs}: must be a multiple of devices ({self.devices})")
        if (self.rollout_len * self.n_envs // self.devices) % self.minibatches:
            raise ValueError(f"pqn config: field 'minibatches' = {self.minibatches}: must divide rollout_len * n_envs "
                             f"/ devices ({self.rollout_len * self.n_envs // self.devices})")
        if not (0.0 <= self.gamma < 1.0):
            raise ValueError(f"pqn config: field 'gamma' = {self.gamma}: must be in [0, 1)")
        if not (0.0 <= self.lam <= 1.0):
            raise ValueError(f"pqn config: field 'lam' = {self.lam}: must be in [0, 1]")


#: PQNConfig fields that are traced numbers (``ts.hp``)
PQN_HPARAMS = ("lr", "gamma", "lam", "max_grad_norm", "eps_start", "eps_end", "eps_decay_fraction",
               "externality_price")


@struct.dataclass
class Rollouts:
    """The last ``delay_rollouts`` rollouts, a ring over its first axis [R, K, N, ...]."""
    obs: jnp.ndarray        # [R, K, N, D] observation at each decision
    action: jnp.ndarray     # [R, K, N]
    decision: jnp.ndarray   # [R, K, N] the simulator's decision id (its outcome slot: id % H)
    done: jnp.ndarray       # [R, K, N] the decision ended an episode (time limit)
    last_obs: jnp.ndarray   # [R, N, D] the observation after the rollout's last decision
    harm: jnp.ndarray       # [R, K, N] predicted harm of each decision (bes_jax.agents.shaping)


@struct.dataclass
class PQNState:
    params: dict
    opt_state: optax.OptState
    obs_stats: ObsStats
    env_state: object
    obs: jnp.ndarray
    workload_index: jnp.ndarray
    rollouts: Rollouts
    iteration: jnp.ndarray      # vectorised env steps taken
    n_rollouts: jnp.ndarray     # rollouts collected
    n_updates: jnp.ndarray
    key: jax.Array
    hp: dict


def outcome_rewards(env_state, decision):
    """``(reward, resolved)`` [K, N] of decisions ``decision`` [K, N] from a batch of environment
    states: each read at its own outcome slot, resolved only if that slot still holds it and its
    outcome is realised by the clock (`resolved_mask`); unresolved rewards are 0."""
    o = env_state.outcomes
    H = o.reward.shape[-1]
    n = jnp.arange(decision.shape[1])[None, :]
    slot = decision % H
    status = o.status[n, slot]
    final = (status == SERVED) | (status == DROPPED) | (status == REJECTED)
    resolved = final & (o.finish[n, slot] <= env_state.now[None, :]) & (o.decision[n, slot] == decision)
    return jnp.where(resolved, o.reward[n, slot], 0.0), resolved


def lambda_returns(reward, resolved, done, next_q_max, gamma, lam):
    """Q(lambda) targets [K, N] (module docstring): ``next_q_max[t]`` = max_a Q(s_{t+1}, a)."""
    K = reward.shape[0]
    # l_t: lambda where the next decision's reward is known and the episode did not end at t
    nxt_ok = jnp.concatenate([resolved[1:], jnp.zeros_like(resolved[:1])], axis=0)
    l = jnp.where(nxt_ok & ~done, lam, 0.0)

    def back(g_next, xs):
        r, l_t, q = xs
        g = r + gamma * ((1.0 - l_t) * q + l_t * g_next)
        return g, g

    _, g = jax.lax.scan(back, next_q_max[K - 1], (reward, l, next_q_max), reverse=True)
    return g


class PQN:
    """``PQN(cfg, env, base_params, workload_bank, deadline_bank=None)``: the learner's pure
    functions ``init(key, hp=None)``, ``train_chunk(ts)``, ``train(key, hp=None)``,
    ``greedy_policy(params, obs_stats)`` (as :class:`bes_jax.agents.dqn.DQN`)."""

    name = "pqn"
    layer_norm = True

    def __init__(self, cfg: PQNConfig, env: ServingEnv, base_params: EnvParams, workload_bank, deadline_bank=None):
        self.cfg, self.env = cfg, env
        N, H, D, A = cfg.n_envs, env.slots, env.obs_size, env.n_models
        K, R = cfg.rollout_len, cfg.delay_rollouts
        if R * K >= H:
            raise ValueError(f"pqn config: delay_rollouts * rollout_len = {R * K}: must be below the simulator's "
                             f"outcome_slots ({H}), or a decision's outcome is overwritten before it is read")
        bk = make_bank(base_params, workload_bank, deadline_bank)
        n_bank, env_params, params_axes = bk.n, bk.params, bk.axes
        self.network = net = QNetwork(A, tuple(cfg.hidden), layer_norm=True)
        self.hparams = default_hparams(cfg, PQN_HPARAMS)
        self.n_chunks = cfg.iterations // cfg.chunk_iterations
        self.env_steps_per_chunk = cfg.chunk_iterations * N
        self.grad_steps_per_chunk = cfg.chunk_iterations // K * cfg.epochs * cfg.minibatches
        v_reset = jax.vmap(env.reset, in_axes=(0, params_axes))
        allowed = action_mask_fn(cfg.mask_wait_x, env, A, "pqn.mask_wait_x")
        check_price(cfg.externality_price, env, "pqn.externality_price")
        use_mask = cfg.mask_wait_x > 0 and env.cfg.obs_mode == "rich"
        DV = cfg.devices
        NL = N // DV  # environments per device (all of them with one device)
        mb = K * NL // cfg.minibatches
        AX = "envs"

        def local_key(k):
            """A device's own stream of a replicated key (the key itself with one device)."""
            return k if DV == 1 else jax.random.fold_in(k, jax.lax.axis_index(AX))

        def mean_all(x):
            return x if DV == 1 else jax.lax.pmean(x, AX)

        def stats_update(stats, batch):
            if DV == 1:
                return update_stats(stats, batch)
            m = jax.lax.pmean(batch.mean(0), AX)  # equal shards: the global batch's moments
            var = jnp.maximum(jax.lax.pmean((batch * batch).mean(0), AX) - m * m, 0.0)
            n = batch.shape[0] * DV
            tot = stats.count + n
            delta = m - stats.mean
            m2 = stats.var * stats.count + var * n + delta ** 2 * stats.count * n / tot
            return ObsStats(tot, stats.mean + delta * n / tot, m2 / tot)

        def epsilon(it, hp):
            decay = jnp.maximum(1.0, jnp.floor(hp["eps_decay_fraction"] * cfg.iterations))
            return hp["eps_start"] + jnp.clip(it / decay, 0.0, 1.0) * (hp["eps_end"] - hp["eps_start"])

        def q_values(params, stats, obs):
            return net.apply(params, normalize(obs, stats.mean, stats.var))

        def init(key, hp=None) -> PQNState:
            hp = resolve_hparams(cfg, PQN_HPARAMS, hp)
            k_net, k_env, k_idx, k_run = jax.random.split(key, 4)
            f = base_params.latency.dtype
            params = net.init(k_net, jnp.zeros((1, D), f))
            index = jax.random.randint(k_idx, (N,), 0, n_bank)
            obs, env_state = v_reset(jax.random.split(k_env, N), env_params(index))
            stats = update_stats(ObsStats(jnp.zeros((), f), jnp.zeros((D,), f), jnp.ones((D,), f)), obs)
            ro = Rollouts(jnp.zeros((R, K, N, D), f), jnp.zeros((R, K, N), jnp.int32),
                          jnp.full((R, K, N), -1, jnp.int32), jnp.zeros((R, K, N), bool), jnp.zeros((R, N, D), f),
                          jnp.zeros((R, K, N), f))
            z = jnp.zeros((), jnp.int32)
            return PQNState(params, make_optimizer(hp).init(params), stats, env_state, obs, index, ro, z, z, z, k_run, hp)

        def env_step(ts: PQNState, _):
            key, k_eps, k_rand, k_step, k_idx = jax.random.split(ts.key, 5)
            ok = allowed(ts.obs)
            q = jnp.where(ok, q_values(ts.params, ts.obs_stats, ts.obs), -jnp.inf)
            k_eps, k_rand, k_step, k_idx = map(local_key, (k_eps, k_rand, k_step, k_idx))
            explore = jax.random.uniform(k_eps, (NL,)) < epsilon(ts.iteration, ts.hp)
            if use_mask:
                random_a = jax.random.categorical(k_rand, jnp.where(ok, 0.0, -jnp.inf), axis=1)
            else:
                random_a = jax.random.randint(k_rand, (NL,), 0, A)
            action = jnp.where(explore, random_a, jnp.argmax(q, axis=1)).astype(jnp.int32)
            decision, harm = ts.env_state.decision, decision_harm(ts.env_state, action)
            next_obs, env_state, reward, done, _ = env.step_batch(
                jax.random.split(k_step, NL), ts.env_state, action, env_params(ts.workload_index), params_axes)
            new_index = jax.random.randint(k_idx, (NL,), 0, n_bank)
            index = jnp.where(done, new_index, ts.workload_index)
            env_state = env_state.replace(workload=workload_restart(env_state.workload, index != ts.workload_index))
            ts = ts.replace(env_state=env_state, obs=next_obs, workload_index=index, key=key,
                            obs_stats=stats_update(ts.obs_stats, next_obs), iteration=ts.iteration + 1)
            return ts, (action, decision, done, harm, reward.mean())

        def collect(ts: PQNState):
            """K decisions per environment: the observation each was taken on, action, id, episode end."""
            def step(ts, _):
                obs = ts.obs
                ts, (action, decision, done, harm, rmean) = env_step(ts, None)
                return ts, (obs, action, decision, done, harm, rmean)

            ts, (obs, action, decision, done, harm, rmean) = jax.lax.scan(step, ts, None, length=K)
            return ts, (obs, action, decision, done, harm), rmean.mean()

        def loss_fn(params, stats, obs, action, target, w):
            q = q_values(params, stats, obs)
            q_a = jnp.take_along_axis(q, action[:, None], axis=1)[:, 0]
            loss = 0.5 * jnp.sum(w * (q_a - target) ** 2) / jnp.maximum(jnp.sum(w), 1.0)
            return loss, q_a.mean()

        def learn(ts: PQNState, slot, key):
            """Gradient steps on rollout ``slot`` of the ring (the oldest)."""
            hp = ts.hp
            ro = jax.tree.map(lambda x: x[slot], ts.rollouts)
            reward, resolved = outcome_rewards(ts.env_state, ro.decision)
            reward = jnp.where(resolved, reward - hp["externality_price"] * ro.harm, 0.0)
            next_obs = jnp.concatenate([ro.obs[1:], ro.last_obs[None]], axis=0)  # [K, N, D]
            nq = jnp.where(allowed(next_obs), q_values(ts.params, ts.obs_stats, next_obs), -jnp.inf).max(-1)
            target = jax.lax.stop_gradient(lambda_returns(reward, resolved, ro.done, nq, hp["gamma"], hp["lam"]))
            flat = lambda x: x.reshape((K * NL,) + x.shape[2:])
            data = (flat(ro.obs), flat(ro.action), flat(target), flat(resolved.astype(target.dtype)))
            tx = make_optimizer(hp)

            def epoch(carry, k):
                params, opt_state = carry
                perm = jax.random.permutation(local_key(k), K * NL)
                batches = jax.tree.map(lambda x: x[perm].reshape((cfg.minibatches, mb) + x.shape[1:]), data)

                def sgd(carry, b):
                    params, opt_state = carry
                    (loss, q_mean), g = jax.value_and_grad(loss_fn, has_aux=True)(params, ts.obs_stats, *b)
                    g = mean_all(g)  # data parallel: every device applies the same averaged gradient
                    upd, opt_state = tx.update(g, opt_state, params)
                    return (optax.apply_updates(params, upd), opt_state), (loss, q_mean)

                return jax.lax.scan(sgd, (params, opt_state), batches)

            (params, opt_state), (loss, q_mean) = jax.lax.scan(epoch, (ts.params, ts.opt_state),
                                                               jax.random.split(key, cfg.epochs))
            logs = {"loss": loss.mean(), "q_mean": q_mean.mean(), "frac_resolved": resolved.mean()}
            logs = {k: mean_all(v) for k, v in logs.items()}
            return ts.replace(params=params, opt_state=opt_state, n_updates=ts.n_updates + cfg.epochs * cfg.minibatches), logs

        def iteration(ts: PQNState, _):
            ts, (obs, action, decision, done, harm), rmean = collect(ts)
            slot = ts.n_rollouts % R  # the oldest rollout (written R rollouts ago), then overwritten
            key, k_learn = jax.random.split(ts.key)
            ts = ts.replace(key=key)
            go = ts.n_rollouts >= R
            trained, logs = learn(ts, slot, k_learn)
            pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(go, a, b), new, old)
            ts = ts.replace(params=pick(trained.params, ts.params), opt_state=pick(trained.opt_state, ts.opt_state),
                            n_updates=jnp.where(go, trained.n_updates, ts.n_updates))
            logs = {k: jnp.where(go, v, jnp.nan) for k, v in logs.items()}
            ro = ts.rollouts
            ro = Rollouts(ro.obs.at[slot].set(obs), ro.action.at[slot].set(action), ro.decision.at[slot].set(decision),
                          ro.done.at[slot].set(done), ro.last_obs.at[slot].set(ts.obs), ro.harm.at[slot].set(harm))
            ts = ts.replace(rollouts=ro, n_rollouts=ts.n_rollouts + 1)
            logs["realised_reward"] = mean_all(rmean)
            logs["epsilon"] = epsilon(ts.iteration, ts.hp)
            logs["evicted_frac"] = mean_all(evicted_fraction(ts.env_state))
            return ts, logs

        def chunk_local(ts: PQNState):
            return jax.lax.scan(iteration, ts, None, length=cfg.chunk_iterations // K)

        if DV == 1:
            train_chunk = chunk_local
        else:
            import numpy as np
            from jax.sharding import Mesh, PartitionSpec as P

            devs = jax.local_devices()[:DV]
            if len(devs) < DV:
                raise ValueError(f"pqn config: field 'devices' = {DV}: only {len(devs)} local device(s) "
                                 "(on a CPU: bes_jax.env.devices.use_host_devices before JAX starts)")
            mesh = Mesh(np.asarray(devs), (AX,))

            def specs(ts):
                rep = lambda t: jax.tree.map(lambda _: P(), t)
                env_axis = lambda t: jax.tree.map(lambda _: P(AX), t)
                e2 = P(None, None, AX)
                return PQNState(rep(ts.params), rep(ts.opt_state), rep(ts.obs_stats), env_axis(ts.env_state), P(AX),
                                P(AX), Rollouts(e2, e2, e2, e2, P(None, AX), e2), P(), P(), P(), P(), rep(ts.hp))

            def train_chunk(ts: PQNState):
                sp = specs(ts)
                return jax.shard_map(chunk_local, mesh=mesh, in_specs=(sp,), out_specs=(sp, P()), check_vma=False)(ts)

        def train(key, hp=None):
            ts = init(key, hp)
            return jax.lax.scan(lambda t, _: train_chunk(t), ts, None, length=self.n_chunks)

        def greedy_policy(params, stats):
            def act(key, obs, state, env_params):
                return jnp.argmax(jnp.where(allowed(obs), q_values(params, stats, obs), -jnp.inf)).astype(jnp.int32)
            return act

        self.init, self.train_chunk, self.train, self.greedy_policy = init, train_chunk, train, greedy_policy
        self.lambda_returns = lambda_returns
        self.collect, self.learn = collect, learn  # the two halves of an iteration (benchmarks, tests)
