"""Double DQN trained end to end inside `jit` (PureJaxRL/Stoix style).

``make_train(cfg, env, base_params, workload_bank, deadline_bank=None)`` returns :class:`TrainFns`,
pure functions: ``init(key, hp=None)``, ``train_chunk(ts)`` (a `lax.scan` over iterations; the host
logs and checkpoints between chunks) and ``train(key, hp=None)`` (the whole run in one program).
:class:`DQN` is the same as an object (``DQN(cfg, env, base_params, bank).train(key)``).

Hyperparameters that are numbers (:data:`DQN_HPARAMS`: learning rate, discount, exploration,
target update, ...) live in the train state as arrays (``ts.hp``), so one program can `vmap`
over seeds *and* hyperparameters: ``jax.vmap(fns.train)(keys, {"lr": lrs})``. Shapes (``n_envs``,
``batch_size``, ``hidden``) and loop counts are static.

Scale: ``n_envs`` environments step together (`ServingEnv.step_batch`); every ``update_every``
vectorised steps the learner takes ``updates_per_iteration`` gradient steps, so a gradient step
sees ``n_envs * update_every / updates_per_iteration`` new transitions. ``sampling="uniform"``
draws replay slots uniformly and weighs each by whether its reward is realised (cost O(batch),
not O(n_envs * outcome_slots) per update: the setting for thousands of environments); the
default ``"resolved"`` draws exactly ``batch_size`` realised transitions.

Delayed rewards: the replay is a ring per environment with the same slot index as the
simulator's outcome record (``decision % outcome_slots``). A transition is sampleable only
once the simulator has realised its request's reward (`resolved_mask`), and it is trained on
exactly that reward: nothing is estimated and nothing is attached to the wrong decision.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import struct

from bes_jax.agents.bank import make_bank
from bes_jax.agents.network import (QNetwork, action_mask_fn, check_greedy_prior, normalize, prior_gate_weight,
                                    with_greedy_prior)
from bes_jax.agents.shaping import check_price, decision_harm
from bes_jax.env import ServingEnv, resolved_mask
from bes_jax.env.params import EnvParams
from bes_jax.env.state import DROPPED, REJECTED, SERVED
from bes_jax.routers.baselines import greedy_action
from bes_jax.workloads import workload_restart


@dataclass(frozen=True)
class DQNConfig:
    n_envs: int = 16
    iterations: int = 12000         # vectorised env steps (decisions = iterations * n_envs)
    chunk_iterations: int = 500     # iterations per compiled chunk (host logs/checkpoints between)
    updates_per_iteration: int = 1
    batch_size: int = 128
    gamma: float = 0.9
    lr: float = 3e-4
    max_grad_norm: float = 10.0
    hidden: Sequence[int] = (64, 64)
    eps_start: float = 1.0
    eps_end: float = 0.02
    eps_decay_fraction: float = 0.4
    target_tau: float = 0.01        # Polyak factor; 1.0 with target_period > 1 gives hard copies
    target_period: int = 1
    learning_starts: int = 500      # resolved transitions needed before updates start
    huber_delta: float = 1.0
    #: rich observations only: never choose a model whose observed wait / deadline is at least
    #: this (a full queue reads as 10) while another's is below it, in training and deployed;
    #: 0 disables the mask
    mask_wait_x: float = 0.0
    #: vectorised env steps between two rounds of ``updates_per_iteration`` gradient steps
    update_every: int = 1
    #: replay sampling: "resolved" (exactly batch_size realised transitions, a draw over the
    #: whole ring) or "uniform" (uniform slots, unrealised ones weigh 0; O(batch_size))
    sampling: str = "resolved"
    #: training reward only: a decision's reward minus this x the delay its request is predicted
    #: to impose on the requests sharing its engine / GPU (bes_jax.agents.shaping); 0 disables
    externality_price: float = 0.0
    #: deployed policy only (``greedy_policy``, the exported policy): route by
    #: ``argmax(weight * q + greedy_prior * onehot(greedy's choice))``, so the network overrules
    #: greedy only where its weighted margin exceeds this (`bes_jax.agents.network.with_greedy_prior`);
    #: training is unchanged (Q-learning is off-policy), so one trained network serves every value.
    #: 0: the network alone
    greedy_prior: float = 0.0
    #: with ``greedy_prior``: the network's weight (`bes_jax.agents.network.prior_gate_weight`):
    #: ``none`` (1) or ``load`` (the load of greedy's model: greedy wherever that model is idle)
    prior_gate: str = "none"

    def __post_init__(self):
        for name in ("n_envs", "iterations", "chunk_iterations", "batch_size", "target_period",
                     "updates_per_iteration", "update_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"dqn config: field '{name}' = {v!r}: must be a positive integer")
        if self.iterations % self.chunk_iterations:
            raise ValueError(f"dqn config: field 'iterations' = {self.iterations}: must be a multiple of "
                             f"chunk_iterations ({self.chunk_iterations})")
        if self.chunk_iterations % self.update_every:
            raise ValueError(f"dqn config: field 'chunk_iterations' = {self.chunk_iterations}: must be a multiple of "
                             f"update_every ({self.update_every})")
        if self.sampling not in ("resolved", "uniform"):
            raise ValueError(f"dqn config: field 'sampling' = {self.sampling!r}: choose 'resolved' or 'uniform'")
        if not (0.0 <= self.gamma < 1.0):
            raise ValueError(f"dqn config: field 'gamma' = {self.gamma}: must be in [0, 1)")
        if not (0.0 < self.target_tau <= 1.0):
            raise ValueError(f"dqn config: field 'target_tau' = {self.target_tau}: must be in (0, 1]")
        check_greedy_prior("dqn", self.greedy_prior, self.prior_gate)


#: DQNConfig fields that are traced numbers (``ts.hp``): vmap-able, one compiled program for all values
DQN_HPARAMS = ("lr", "gamma", "max_grad_norm", "eps_start", "eps_end", "eps_decay_fraction", "target_tau",
               "learning_starts", "huber_delta", "externality_price")


def default_hparams(cfg, names) -> dict:
    """``{name: float32 scalar}`` of the config's traced hyperparameters."""
    return {n: jnp.asarray(float(getattr(cfg, n)), jnp.float32) for n in names}


def resolve_hparams(cfg, names, hp=None) -> dict:
    """The config's defaults with the entries of ``hp`` (numbers or traced arrays) replacing them."""
    out = default_hparams(cfg, names)
    for k, v in (hp or {}).items():
        if k not in out:
            raise ValueError(f"hyperparameter {k!r}: not traced; traced ones: {', '.join(names)}")
        out[k] = jnp.asarray(v, jnp.float32)
    return out


def evicted_fraction(env_state) -> jnp.ndarray:
    """Share of all decisions so far whose outcome-ring slot was reused before they resolved: their
    transitions are never trained on (the simulation itself is exact; docs/simulator.md "Outcome
    ring"). Non-zero only under overload deep enough that a request outlives `outcome_slots`
    later decisions."""
    return env_state.evicted.sum() / jnp.maximum(env_state.decision.sum(), 1).astype(jnp.float32)


def make_optimizer(hp):
    """Adam with global-norm clipping; learning rate and clip norm may be traced."""
    return optax.chain(optax.clip_by_global_norm(hp["max_grad_norm"]), optax.adam(hp["lr"]))


@struct.dataclass
class ObsStats:
    count: jnp.ndarray
    mean: jnp.ndarray
    var: jnp.ndarray


@struct.dataclass
class Replay:
    obs: jnp.ndarray       # [N, H, D]
    action: jnp.ndarray    # [N, H]
    next_obs: jnp.ndarray  # [N, H, D]
    harm: jnp.ndarray      # [N, H] predicted harm of the decision (bes_jax.agents.shaping)


@struct.dataclass
class TrainState:
    params: dict
    target_params: dict
    opt_state: optax.OptState
    obs_stats: ObsStats
    env_state: object
    obs: jnp.ndarray          # [N, D] pending observations
    workload_index: jnp.ndarray  # [N] which workload of the bank each env runs
    replay: Replay
    iteration: jnp.ndarray
    n_updates: jnp.ndarray
    key: jax.Array
    hp: dict = None           # traced hyperparameters (DQN_HPARAMS)


def sample_resolved(key, ready, batch_size: int):
    """``(idx, valid)``: ``batch_size`` indices drawn uniformly among the True entries of
    ``ready`` [n], and whether each is one. `jax.random.choice` with probabilities can return
    an entry of probability 0 (measured: one unresolved transition, reward NaN, in a batch of
    128 from 29,710 resolved of 32,768), so the learner weighs every sample by ``valid``."""
    p = ready.astype(jnp.float32)
    idx = jax.random.choice(key, ready.shape[0], (batch_size,), p=p / jnp.maximum(p.sum(), 1.0))
    return idx, ready[idx]


def resolved_at(env_state, e, h):
    """`resolved_mask` of a batch of environment states at slots ``(e, h)`` only (O(len(e)))."""
    o = env_state.outcomes
    status = o.status[e, h]
    final = (status == SERVED) | (status == DROPPED) | (status == REJECTED)
    return final & (o.finish[e, h] <= env_state.now[e])


def update_stats(stats: ObsStats, batch) -> ObsStats:
    """Parallel Welford update with a batch of observations [n, D]."""
    n = batch.shape[0]
    b_mean = batch.mean(0)
    b_var = batch.var(0)
    tot = stats.count + n
    delta = b_mean - stats.mean
    mean = stats.mean + delta * n / tot
    m2 = stats.var * stats.count + b_var * n + delta ** 2 * stats.count * n / tot
    return ObsStats(tot, mean, m2 / tot)


class TrainFns(NamedTuple):
    """What :func:`make_train` builds: pure functions of one environment layout and bank."""
    init: Callable           # init(key) -> TrainState
    train_chunk: Callable    # train_chunk(ts) -> (ts, logs): `chunk_iterations` iterations in one scan
    train: Callable          # train(key) -> (ts, logs): the whole run in one program (vmap over seeds)
    greedy_policy: Callable  # greedy_policy(params, obs_stats) -> router `act` of the Q-network
    network: Any             # the flax Q-network module
    hparams: dict = None     # the config's traced hyperparameters (defaults of `init`/`train`'s ``hp``)


def make_train(cfg: DQNConfig, env: ServingEnv, base_params: EnvParams, workload_bank, deadline_bank=None) -> TrainFns:
    """Build the pure training functions for one environment layout and a workload bank.

    Each episode, every environment draws one entry of the bank: a workload, and with
    ``deadline_bank`` [n_bank, T] also per-task deadlines (so one policy learns to serve a
    range of deadlines; the rich observation carries the current task's deadline).
    """
    N, H, D, A = cfg.n_envs, env.slots, env.obs_size, env.n_models
    bk = make_bank(base_params, workload_bank, deadline_bank)
    n_bank, env_params, params_axes = bk.n, bk.params, bk.axes
    net = QNetwork(A, tuple(cfg.hidden))
    v_reset = jax.vmap(env.reset, in_axes=(0, params_axes))
    v_resolved = jax.vmap(resolved_mask)

    def epsilon(it, hp):
        decay_iters = jnp.maximum(1.0, jnp.floor(hp["eps_decay_fraction"] * cfg.iterations))
        frac = jnp.clip(it / decay_iters, 0.0, 1.0)
        return hp["eps_start"] + frac * (hp["eps_end"] - hp["eps_start"])

    allowed = action_mask_fn(cfg.mask_wait_x, env, A, "dqn.mask_wait_x")
    check_price(cfg.externality_price, env, "dqn.externality_price")
    use_mask = cfg.mask_wait_x > 0 and env.cfg.obs_mode == "rich"

    def q_values(params, stats, obs):
        return net.apply(params, normalize(obs, stats.mean, stats.var))

    def init(key, hp=None) -> TrainState:
        hp = resolve_hparams(cfg, DQN_HPARAMS, hp)
        k_net, k_env, k_idx, k_run = jax.random.split(key, 4)
        f = base_params.latency.dtype
        params = net.init(k_net, jnp.zeros((1, D), f))
        index = jax.random.randint(k_idx, (N,), 0, n_bank)
        obs, env_state = v_reset(jax.random.split(k_env, N), env_params(index))
        stats = update_stats(ObsStats(jnp.zeros((), f), jnp.zeros((D,), f), jnp.ones((D,), f)), obs)
        replay = Replay(jnp.zeros((N, H, D), f), jnp.zeros((N, H), jnp.int32), jnp.zeros((N, H, D), f),
                        jnp.zeros((N, H), f))
        return TrainState(params, params, make_optimizer(hp).init(params), stats, env_state, obs, index, replay,
                          jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), k_run, hp)

    def loss_fn(params, target_params, stats, batch, hp):
        obs, action, reward, next_obs, valid = batch
        q = q_values(params, stats, obs)
        q_a = jnp.take_along_axis(q, action[:, None], axis=1)[:, 0]
        next_online = jnp.where(allowed(next_obs), q_values(params, stats, next_obs), -jnp.inf)
        next_target = q_values(target_params, stats, next_obs)
        a_star = jnp.argmax(next_online, axis=1)
        bootstrap = jnp.take_along_axis(next_target, a_star[:, None], axis=1)[:, 0]
        target = jax.lax.stop_gradient(reward + hp["gamma"] * bootstrap)
        w = valid.astype(q_a.dtype)  # a sample whose reward is not realised counts for nothing
        loss = jnp.sum(w * optax.huber_loss(q_a, target, delta=hp["huber_delta"])) / jnp.maximum(jnp.sum(w), 1.0)
        return loss, q_a.mean()

    def sample(ts: TrainState, key):
        """``(e, h, valid, n_ready)``: replay slots of a batch and whether each reward is realised."""
        if cfg.sampling == "resolved":
            ready = v_resolved(ts.env_state)  # [N, H]
            idx, valid = sample_resolved(key, ready.reshape(-1), cfg.batch_size)
            return idx // H, idx % H, valid, ready.sum()
        k_e, k_h = jax.random.split(key)
        e = jax.random.randint(k_e, (cfg.batch_size,), 0, N)
        h = jax.random.randint(k_h, (cfg.batch_size,), 0, H)
        valid = resolved_at(ts.env_state, e, h)
        # every decision of a full ring is stored: count stored transitions for learning_starts
        n_stored = jnp.minimum(ts.iteration, H) * N
        return e, h, valid, n_stored

    def update(ts: TrainState, key):
        hp = ts.hp
        e, h, valid, n_ready = sample(ts, key)
        reward = ts.env_state.outcomes.reward[e, h] - hp["externality_price"] * ts.replay.harm[e, h]
        reward = jnp.where(valid, reward, 0.0)
        batch = (ts.replay.obs[e, h], ts.replay.action[e, h], reward, ts.replay.next_obs[e, h], valid)
        (loss, q_mean), grads = jax.value_and_grad(loss_fn, has_aux=True)(ts.params, ts.target_params, ts.obs_stats,
                                                                         batch, hp)
        updates, opt_state = make_optimizer(hp).update(grads, ts.opt_state, ts.params)
        new_params = optax.apply_updates(ts.params, updates)
        go = n_ready >= hp["learning_starts"]
        n_updates = ts.n_updates + go.astype(jnp.int32)
        tau = jnp.where((n_updates % cfg.target_period) == 0, hp["target_tau"], 0.0)
        new_target = optax.incremental_update(new_params, ts.target_params, tau)
        pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(go, a, b), new, old)
        ts = ts.replace(params=pick(new_params, ts.params), opt_state=pick(opt_state, ts.opt_state),
                        target_params=pick(new_target, ts.target_params), n_updates=n_updates)
        return ts, {"loss": jnp.where(go, loss, jnp.nan), "q_mean": q_mean, "n_ready": n_ready,
                    "frac_valid": valid.mean()}

    def env_step(ts: TrainState, _):
        key, k_eps, k_rand, k_step, k_idx = jax.random.split(ts.key, 5)
        return env_step_keys(ts, key, k_eps, k_rand, k_step, k_idx)

    def env_step_keys(ts: TrainState, key, k_eps, k_rand, k_step, k_idx):
        ok = allowed(ts.obs)
        q = jnp.where(ok, q_values(ts.params, ts.obs_stats, ts.obs), -jnp.inf)
        greedy_a = jnp.argmax(q, axis=1)
        explore = jax.random.uniform(k_eps, (N,)) < epsilon(ts.iteration, ts.hp)
        if use_mask:  # explore among the allowed models only
            random_a = jax.random.categorical(k_rand, jnp.where(ok, 0.0, -jnp.inf), axis=1)
        else:
            random_a = jax.random.randint(k_rand, (N,), 0, A)
        action = jnp.where(explore, random_a, greedy_a).astype(jnp.int32)
        slot = ts.env_state.decision % H
        next_obs, env_state, reward, done, info = env.step_batch(
            jax.random.split(k_step, N), ts.env_state, action, env_params(ts.workload_index), params_axes)
        rows = jnp.arange(N)
        replay = Replay(ts.replay.obs.at[rows, slot].set(ts.obs),
                        ts.replay.action.at[rows, slot].set(action),
                        ts.replay.next_obs.at[rows, slot].set(next_obs),
                        ts.replay.harm.at[rows, slot].set(decision_harm(ts.env_state, action)))
        # domain randomisation: a truncated episode continues on a freshly drawn workload,
        # which starts at the current clock (its own times are measured from its start)
        new_index = jax.random.randint(k_idx, (N,), 0, n_bank)
        index = jnp.where(done, new_index, ts.workload_index)
        env_state = env_state.replace(workload=workload_restart(env_state.workload, index != ts.workload_index))
        ts = ts.replace(env_state=env_state, obs=next_obs, replay=replay, workload_index=index,
                        obs_stats=update_stats(ts.obs_stats, next_obs), iteration=ts.iteration + 1, key=key)
        return ts, reward.mean()

    def iteration(ts: TrainState, _):
        """``update_every`` vectorised env steps, then ``updates_per_iteration`` gradient steps."""
        if cfg.update_every == 1:  # the keys as they always were: same runs as before update_every existed
            key, k_eps, k_rand, k_step, k_idx, k_upd = jax.random.split(ts.key, 6)
            ts, realised = env_step_keys(ts, key, k_eps, k_rand, k_step, k_idx)
        else:
            ts, realised = jax.lax.scan(env_step, ts, None, length=cfg.update_every)
            realised = realised.mean()
            key, k_upd = jax.random.split(ts.key)
            ts = ts.replace(key=key)
        ts, logs = jax.lax.scan(update, ts, jax.random.split(k_upd, cfg.updates_per_iteration))
        logs = jax.tree.map(lambda x: x[-1], logs)
        logs["realised_reward"] = realised
        logs["epsilon"] = epsilon(ts.iteration, ts.hp)
        logs["evicted_frac"] = evicted_fraction(ts.env_state)
        return ts, logs

    def train_chunk(ts: TrainState):
        return jax.lax.scan(iteration, ts, None, length=cfg.chunk_iterations // cfg.update_every)

    def train(key, hp=None):
        ts = init(key, hp)
        n_chunks = cfg.iterations // cfg.chunk_iterations
        ts, logs = jax.lax.scan(lambda t, _: train_chunk(t), ts, None, length=n_chunks)
        return ts, logs

    def greedy_policy(params, stats):
        """Router `act` for the current Q-network (used for evaluation)."""
        beta = float(cfg.greedy_prior)

        def act(key, obs, state, env_params):
            q = q_values(params, stats, obs)
            if beta:  # anchored on greedy's choice, as the exported policy is
                g = greedy_action(state, env_params)
                q = with_greedy_prior(q, g, beta, prior_gate_weight(obs, g, env.n_tasks, cfg.prior_gate))
            return jnp.argmax(jnp.where(allowed(obs), q, -jnp.inf)).astype(jnp.int32)
        return act

    return TrainFns(init=init, train_chunk=train_chunk, train=train, greedy_policy=greedy_policy, network=net,
                    hparams=default_hparams(cfg, DQN_HPARAMS))


class DQN:
    """Double DQN as an object: ``DQN(cfg, env, base_params, bank).train(key, hp=None)``.

    The attributes are :func:`make_train`'s functions; ``env_steps_per_chunk`` and
    ``grad_steps_per_chunk`` are what one ``train_chunk`` call does."""

    name = "dqn"

    def __init__(self, cfg: DQNConfig, env: ServingEnv, base_params: EnvParams, workload_bank, deadline_bank=None):
        self.cfg = cfg
        fns = make_train(cfg, env, base_params, workload_bank, deadline_bank)
        self.fns = fns
        self.init, self.train_chunk, self.train = fns.init, fns.train_chunk, fns.train
        self.greedy_policy, self.network, self.hparams = fns.greedy_policy, fns.network, fns.hparams
        self.n_chunks = cfg.iterations // cfg.chunk_iterations
        self.env_steps_per_chunk = cfg.chunk_iterations * cfg.n_envs
        self.grad_steps_per_chunk = cfg.chunk_iterations // cfg.update_every * cfg.updates_per_iteration
        self.layer_norm = False
