"""Evolution strategies on the episode's own score (OpenAI-ES, antithetic, rank-shaped).

Why a third learner: under continuous batching a decision's cost lands on the requests that
share its engine and GPU, milliseconds to seconds later, thousands of decisions away; per-decision
credit assignment (DQN, PQN) needs a shaped reward for it (`bes_jax.agents.shaping`) and no
shaping tried matched the best static router at every load (docs/results.md). ES needs no credit
assignment: it scores whole policies by what evaluation measures, the mean realised reward of an
episode, and moves the policy's weights toward the perturbations that scored higher.

One generation: ``population / 2`` Gaussian perturbations ``eps`` of the weights, each tried as
``theta + sigma eps`` and ``theta - sigma eps`` (antithetic pairs); every member routes the same
``workloads`` bank entries with the same keys (common random numbers, so members differ only by
their weights); an episode is ``episode_decisions`` requests, drained so every request has its
outcome, from an empty system or (``warmup_decisions``) from the load the current policy leaves
after routing that many requests first. Scores become centred ranks and the gradient estimate
``sum_i (r+_i - r-_i) eps_i / (population sigma)`` goes to Adam. The policy is the same
Q-network shape as DQN's with argmax routing, so export, `bes-eval router=policy` and `bes-serve`
take it unchanged. Observation statistics (normalisation) are fixed at the start from a
rollout of randomly perturbed initial networks.

``ES(cfg, env, base_params, bank).train(key, hp=None)`` is the whole run in one program; ``hp``
(:data:`ES_HPARAMS`: sigma, lr, overrule_cost, shortfall_cost) may be traced, so one program vmaps over seeds and values.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.flatten_util import ravel_pytree

from bes_jax.agents.dqn import ObsStats, default_hparams, resolve_hparams
from bes_jax.agents.bank import make_bank
from bes_jax.agents.network import QNetwork, check_greedy_prior, normalize, prior_gate_weight, with_greedy_prior
from bes_jax.env import make_serving_env
from bes_jax.routers.baselines import greedy_action


@dataclass(frozen=True)
class ESConfig:
    population: int = 16            # members per generation (population / 2 antithetic pairs)
    workloads: int = 8              # bank entries every member routes each generation
    #: requests per member per episode, then drained; as long as the evaluation's horizon (shorter
    #: episodes overrate larger models under overload: docs/results.md)
    episode_decisions: int = 3000
    #: requests the current policy routes first (one run per workload, shared by every member):
    #: members start from the load it leaves, not from an empty system; 0: from empty
    warmup_decisions: int = 0
    generations: int = 60
    chunk_generations: int = 10     # generations per compiled chunk (host logs/checkpoints between)
    sigma: float = 0.05             # perturbation scale in weight space
    lr: float = 0.03                # Adam step on the estimated gradient
    #: how members' scores over the bank's workloads become one fitness: ``mean`` ranks the mean
    #: score (workloads whose scores spread widely, overloads, dominate); ``per_workload`` ranks
    #: the members on each workload and averages those ranks (each workload has an equal say, so a
    #: light load where the right model gains 0.07 counts as much as an overload where it gains 0.4)
    fitness: str = "mean"
    hidden: Sequence[int] = (16,)
    init_spread: float = 0.5        # perturbation of the initial network for the observation statistics
    #: start from an exported policy directory (its weights and observation statistics; same
    #: ``hidden``, profile and observation) instead of a random network: ES fine-tunes it
    init_from: str | None = None
    #: ``beta`` > 0: the policy routes by ``argmax(q(obs) + beta * onehot(greedy's choice))`` and
    #: a new network starts with a zero output layer, so it starts as greedy (the rule
    #: `bes_jax.routers.baselines.greedy_action`) and ES learns where to overrule it; 0: the
    #: network alone
    greedy_prior: float = 0.0
    #: with ``greedy_prior``: each member's score on a workload is charged this much per unit of
    #: the fraction of its decisions that overrule greedy, so a weight change that moves decisions
    #: off greedy without raising the score loses rank (keeps the anchor where deviating does not pay)
    overrule_cost: float = 0.0
    #: with ``greedy_prior``: greedy itself routes every generation's episodes beside the members
    #: (one more member: the zero network, which the prior makes greedy; same keys, same arrivals)
    #: and each member's score on a workload is charged this much per unit of its shortfall
    #: there, ``max(0, greedy's score - its score)``: a change that gains under overload but loses
    #: to greedy at a light load loses rank (targets "at or above greedy at every load")
    shortfall_cost: float = 0.0
    #: with ``greedy_prior``: how much say the network has beside greedy
    #: (`bes_jax.agents.network.prior_gate_weight`): ``none``, its output as it is; ``load``, its
    #: output times the observed load of greedy's chosen model, so the policy is greedy wherever
    #: that model is idle and may overrule it only as it fills
    prior_gate: str = "none"
    #: members split over this many local devices (`jax.shard_map`; on a CPU ask XLA for host
    #: devices first: `bes_jax.env.devices.use_host_devices`); 1: one program on the default device
    devices: int = 1
    #: kept for the common learner interface (export, numpy router); ES uses no action mask
    mask_wait_x: float = 0.0
    #: kept for the common learner interface; ES scores the simulator's own reward, no shaping
    externality_price: float = 0.0

    def __post_init__(self):
        for name in ("population", "workloads", "episode_decisions", "generations", "chunk_generations", "devices"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"es config: field '{name}' = {v!r}: must be a positive integer")
        if not isinstance(self.warmup_decisions, int) or self.warmup_decisions < 0:
            raise ValueError(f"es config: field 'warmup_decisions' = {self.warmup_decisions!r}: must be an integer >= 0")
        if self.population % 2 or self.population < 4:
            raise ValueError(f"es config: field 'population' = {self.population}: must be even and >= 4 "
                             "(antithetic pairs)")
        if self.population % self.devices:
            raise ValueError(f"es config: field 'population' = {self.population}: must be a multiple of devices "
                             f"({self.devices})")
        if self.generations % self.chunk_generations:
            raise ValueError(f"es config: field 'generations' = {self.generations}: must be a multiple of "
                             f"chunk_generations ({self.chunk_generations})")
        check_greedy_prior("es", self.greedy_prior, self.prior_gate)
        for name in ("overrule_cost", "shortfall_cost"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0):
                raise ValueError(f"es config: field '{name}' = {v!r}: must be a number >= 0")
        for name in ("overrule_cost", "shortfall_cost"):
            if getattr(self, name) and not self.greedy_prior:
                raise ValueError(f"es config: field '{name}' = {getattr(self, name)}: compares members with greedy; "
                                 "it needs greedy_prior > 0")
        for name in ("sigma", "lr", "init_spread"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v > 0):
                raise ValueError(f"es config: field '{name}' = {v!r}: must be a number > 0")
        if self.fitness not in FITNESS:
            raise ValueError(f"es config: field 'fitness' = {self.fitness!r}: must be one of {list(FITNESS)}")
        if self.mask_wait_x != 0:
            raise ValueError(f"es config: field 'mask_wait_x' = {self.mask_wait_x}: ES routes without an action mask; use 0")
        if self.externality_price not in (0, 0.0, None):
            raise ValueError(f"es config: field 'externality_price' = {self.externality_price}: ES scores the "
                             "simulator's own reward (no shaping); use 0")

    @property
    def n_envs(self) -> int:
        """Environments stepped together: every member on every workload."""
        return self.population * self.workloads


#: ways ``ESConfig.fitness`` combines a member's scores [workloads] into one number
FITNESS = ("mean", "per_workload")

#: ESConfig fields that are traced numbers (``ts.hp``)
ES_HPARAMS = ("sigma", "lr", "overrule_cost", "shortfall_cost")


@struct.dataclass
class ESState:
    params: dict              # the current policy (the mean of the search distribution)
    opt_state: optax.OptState
    obs_stats: ObsStats       # fixed after init
    generation: jnp.ndarray
    iteration: jnp.ndarray    # decision rounds so far (generation x episode_decisions; decisions = x n_envs)
    key: jax.Array
    hp: dict


def centred_ranks(x):
    """Ranks of ``x`` scaled to [-0.5, 0.5] (ties broken by position): the score shaping that
    makes the update invariant to the reward's scale and to outliers."""
    r = jnp.argsort(jnp.argsort(x)).astype(jnp.float32)
    return r / jnp.maximum(x.size - 1, 1) - 0.5


def charged_scores(score, overrule, greedy_score, overrule_cost, shortfall_cost):
    """Members' scores ``[members, workloads]`` as they are ranked: less ``overrule_cost`` per unit
    of the fraction of decisions that overrule greedy (``overrule``, same shape) and less
    ``shortfall_cost`` per unit of the shortfall against greedy's score on the same workload
    (``greedy_score`` [workloads]; None when greedy did not route beside the members)."""
    charged = score - overrule_cost * overrule
    if greedy_score is None:
        return charged
    return charged - shortfall_cost * jnp.maximum(greedy_score[None] - score, 0.0)


def member_utility(score, fitness: str = "mean"):
    """Members' scores ``[members, workloads]`` -> the utility ``[members]`` the update weights
    their perturbations by (``ESConfig.fitness``): centred ranks of the mean score, or the mean
    over workloads of each workload's centred ranks."""
    if fitness == "mean":
        return centred_ranks(score.mean(1))
    if fitness == "per_workload":
        return jax.vmap(centred_ranks, 1, 1)(score).mean(1)
    raise ValueError(f"es config: field 'fitness' = {fitness!r}: must be one of {list(FITNESS)}")


class ES:
    """``ES(cfg, env, base_params, workload_bank, deadline_bank=None)``: the learner's pure
    functions ``init(key, hp=None)``, ``train_chunk(ts)``, ``train(key, hp=None)``,
    ``greedy_policy(params, obs_stats)`` (as :class:`bes_jax.agents.dqn.DQN`), plus
    ``episodes(thetas, index, key, stats, warm_theta)`` (scores of a batch of flat weight vectors)
    and ``flat(params)`` / ``unflat(theta)``."""

    name = "es"
    layer_norm = False
    #: seeds train one program each (`bes_jax.agents.training.train_seeds`): on a 2-core CPU three
    #: request-mode seeds took 67 s that way and did not finish in 5 minutes as one vmapped program
    vmap_seeds = False

    def __init__(self, cfg: ESConfig, env, base_params, workload_bank, deadline_bank=None):
        from bes_jax.eval.rollout import eval_config

        start = None if cfg.init_from is None else load_start(cfg.init_from, env, tuple(cfg.hidden), cfg.greedy_prior,
                                                              cfg.prior_gate)

        self.cfg = cfg
        L, Pn, B, Wu = cfg.episode_decisions, cfg.population, cfg.workloads, cfg.warmup_decisions
        # an outcome record holding every decision of an episode: the score is exact after the drain
        self.env = env = make_serving_env(env.profile, eval_config(env.cfg, Wu + L))
        base_params = env.make_params(jax.tree.map(lambda x: x[0], workload_bank)).replace(
            miss_penalty=base_params.miss_penalty)
        D, A = env.obs_size, env.n_models
        bk = make_bank(base_params, workload_bank, deadline_bank)
        n_bank, env_params, axes = bk.n, bk.params, bk.axes
        self.network = net = QNetwork(A, tuple(cfg.hidden))
        self.hparams = default_hparams(cfg, ES_HPARAMS)
        self.n_chunks = cfg.generations // cfg.chunk_generations
        self.env_steps_per_chunk = cfg.chunk_generations * L * cfg.n_envs
        self.grad_steps_per_chunk = cfg.chunk_generations
        f = base_params.latency.dtype
        _, unravel = ravel_pytree(net.init(jax.random.PRNGKey(0), jnp.zeros((1, D), f)))
        beta, gate, T = float(cfg.greedy_prior), cfg.prior_gate, env.n_tasks
        # greedy routes beside the members when its score is charged against them (shortfall_cost)
        n_greedy = cfg.devices if cfg.shortfall_cost else 0
        def route(nets, K, obs, st, params, k_steps, steps, stats):
            """``steps`` decisions of K networks x their environments (``nets`` batched over K)."""
            def body(c, t):
                obs, st, s1, s2, over = c
                q = jax.vmap(net.apply)(nets, normalize(obs, stats.mean, stats.var).reshape(K, -1, D))
                if beta:
                    g = jax.vmap(greedy_action, in_axes=(0, axes))(st, params)
                    w = prior_gate_weight(obs, g, T, gate)
                    q = with_greedy_prior(q, g.reshape(K, -1), beta, None if w is None else w.reshape(K, -1, 1))
                a = jnp.argmax(q, -1).reshape(-1).astype(jnp.int32)
                if beta:
                    over = over + (a != g)
                k = jax.vmap(lambda kk: jax.random.fold_in(jax.random.fold_in(kk, t), 1))(k_steps)
                nxt, st, _, _, _ = env.step_batch(k, st, a, params, axes)
                return (nxt, st, s1 + obs.sum(0), s2 + (obs * obs).sum(0), over), None

            zero = jnp.zeros((D,), f)
            c0 = (obs, st, zero, zero, jnp.zeros(obs.shape[:1], jnp.int32))
            (obs, st, s1, s2, over), _ = jax.lax.scan(body, c0, steps)
            return obs, st, s1, s2, over

        def episodes_one(thetas, index, key, stats, warm_theta):
            """Every network of ``thetas`` [K, n] (flat weights) on bank entries ``index`` [B] with
            the same keys, after ``warmup_decisions`` routed by ``warm_theta`` [n]:
            ``(score [K, B], share [K, B, A], overrule [K, B], obs mean [D], obs mean square [D])``;
            overrule = the fraction of the episode's decisions that differ from greedy's (with
            ``greedy_prior``; else 0); score = mean
            realised reward of every request of the episode, warm-up included (a member's
            decisions delay them too). Keys as `bes_jax.eval.rollout.make_run` derives them, so a
            network's score with no warm-up is its evaluation `performance`."""
            K, nB = thetas.shape[0], index.shape[0]
            params_b = env_params(index)
            keys_b = jax.random.split(key, nB)
            obs, st = jax.vmap(env.reset, in_axes=(0, axes))(jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys_b),
                                                             params_b)
            k_steps_b = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys_b)
            if Wu:
                warm = jax.tree.map(lambda x: x[None], unravel(warm_theta))
                obs, st, _, _, _ = route(warm, 1, obs, st, params_b, k_steps_b, jnp.arange(Wu), stats)
            tile = lambda x: jnp.tile(x, (K,) + (1,) * (x.ndim - 1))
            params = env_params(jnp.tile(index, K))
            obs, st = tile(obs), jax.tree.map(tile, st)
            _, st, s1, s2, over = route(jax.vmap(unravel)(thetas), K, obs, st, params, tile(k_steps_b),
                                  jnp.arange(Wu, Wu + L), stats)
            o = env.drain_batch(st, params, axes).outcomes
            used = o.decision >= 0
            n = jnp.maximum(used.sum(-1), 1)
            score = jnp.where(used, o.reward, 0.0).sum(-1) / n
            share = jnp.stack([(used & (o.model == m)).sum(-1) for m in range(A)], -1) / n[:, None]
            E = K * nB
            return (score.reshape(K, -1), share.reshape(K, -1, A), (over / L).reshape(K, -1), s1 / (E * L),
                    s2 / (E * L))

        if cfg.devices > 1:  # members are independent: each device runs its share of them
            import numpy as np
            from jax.sharding import Mesh, PartitionSpec as PS

            devs = jax.local_devices()[:cfg.devices]
            if len(devs) < cfg.devices:
                raise ValueError(f"es config: field 'devices' = {cfg.devices}: only {len(devs)} local device(s) "
                                 "(on a CPU: bes_jax.env.devices.use_host_devices before JAX starts)")
            mesh, AX = Mesh(np.asarray(devs), ("members",)), "members"

            def local(thetas, index, key, stats, warm_theta):
                score, share, over, m1, m2 = episodes_one(thetas, index, key, stats, warm_theta)
                return score, share, over, jax.lax.pmean(m1, AX), jax.lax.pmean(m2, AX)

            rep = PS()
            stats_spec = ObsStats(rep, rep, rep)
            episodes = jax.shard_map(local, mesh=mesh, in_specs=(PS(AX), rep, rep, stats_spec, rep),
                                     out_specs=(PS(AX), PS(AX), PS(AX), rep, rep), check_vma=False)
        else:
            episodes = episodes_one

        def init(key, hp=None) -> ESState:
            if hp and "shortfall_cost" in hp and not n_greedy:
                raise ValueError("es hyperparameter 'shortfall_cost' is traced but es config field 'shortfall_cost' = 0: "
                                 "set it non-zero so greedy routes beside the members")
            hp = resolve_hparams(cfg, ES_HPARAMS, hp)
            k_net, k_pop, k_idx, k_run, key = jax.random.split(key, 5)
            if start is not None:  # fine-tune an exported policy: its weights and normalisation
                params = jax.tree.map(lambda x: jnp.asarray(x, f), start["params"])
                stats = ObsStats(jnp.ones((), f), jnp.asarray(start["mean"], f), jnp.asarray(start["var"], f))
            else:
                params = net.init(k_net, jnp.zeros((1, D), f))
                if beta:  # a zero output layer: the policy starts as greedy
                    params = {"params": {**params["params"], "out": jax.tree.map(jnp.zeros_like, params["params"]["out"])}}
                theta, _ = ravel_pytree(params)
                pop = theta + cfg.init_spread * jax.random.normal(k_pop, (Pn, theta.size), theta.dtype)
                unit = ObsStats(jnp.zeros((), f), jnp.zeros((D,), f), jnp.ones((D,), f))
                _, _, _, m1, m2 = episodes(pop, jax.random.randint(k_idx, (B,), 0, n_bank), k_run, unit, theta)
                stats = ObsStats(jnp.asarray(float(Pn * B * L), f), m1, jnp.maximum(m2 - m1 * m1, 1e-6))
            opt = optax.adam(hp["lr"])
            return ESState(params, opt.init(params), stats, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), key, hp)

        def generation(ts: ESState, _):
            key, k_eps, k_idx, k_run = jax.random.split(ts.key, 4)
            theta, _ = ravel_pytree(ts.params)
            eps = jax.random.normal(k_eps, (Pn // 2, theta.size), theta.dtype)
            sigma = ts.hp["sigma"]
            pop = jnp.concatenate([theta + sigma * eps, theta - sigma * eps])
            if n_greedy:  # the zero network routes as greedy (one per device, so members still split evenly)
                pop = jnp.concatenate([pop, jnp.zeros((n_greedy, theta.size), theta.dtype)])
            score, share, over, _, _ = episodes(pop, jax.random.randint(k_idx, (B,), 0, n_bank), k_run,
                                                ts.obs_stats, theta)
            g_score = score[Pn] if n_greedy else None
            score, share, over = score[:Pn], share[:Pn], over[:Pn]
            fit = score.mean(1)
            r = member_utility(charged_scores(score, over, g_score, ts.hp["overrule_cost"], ts.hp["shortfall_cost"]),
                               cfg.fitness)
            grad = unravel(-((r[:Pn // 2] - r[Pn // 2:]) @ eps) / (Pn * sigma))
            upd, opt_state = optax.adam(ts.hp["lr"]).update(grad, ts.opt_state, ts.params)
            ts = ts.replace(params=optax.apply_updates(ts.params, upd), opt_state=opt_state,
                            generation=ts.generation + 1, iteration=ts.iteration + L, key=key)
            logs = {"fitness": fit.mean(), "fitness_best": fit.max(), "share": share.mean((0, 1)),
                    "overrule": over.mean()}
            if n_greedy:
                logs["greedy_score"] = g_score.mean()
                logs["shortfall"] = jnp.maximum(g_score[None] - score, 0.0).mean()
            return ts, logs

        def train_chunk(ts: ESState):
            return jax.lax.scan(generation, ts, None, length=cfg.chunk_generations)

        def train(key, hp=None):
            ts = init(key, hp)
            return jax.lax.scan(lambda t, _: train_chunk(t), ts, None, length=self.n_chunks)

        def greedy_policy(params, stats):
            def act(key, obs, state, env_params):
                q = net.apply(params, normalize(obs, stats.mean, stats.var))
                if beta:
                    g = greedy_action(state, env_params)
                    q = with_greedy_prior(q, g, beta, prior_gate_weight(obs, g, T, gate))
                return jnp.argmax(q).astype(jnp.int32)
            return act

        self.init, self.train_chunk, self.train, self.greedy_policy = init, train_chunk, train, greedy_policy
        self.episodes, self.unflat = episodes, unravel
        self.flat = lambda params: ravel_pytree(params)[0]


def load_start(path: str, env, hidden: tuple, greedy_prior: float = 0.0, prior_gate: str = "none") -> dict:
    """``{params, mean, var}`` of the exported policy at ``path``, checked against this learner:
    same models and tasks, observation size, network shape (``hidden``, no LayerNorm), and the
    same greedy prior and gate (the weights mean something else with another one)."""
    import numpy as np

    from bes_jax.agents.export import unflatten_params
    from bes_jax.agents.numpy_router import PolicyFormatError, Router as NumpyRouter

    npr = NumpyRouter.load(path)
    meta, f = npr.meta, f"{path}/metadata.json"
    if npr.model_names != env.profile.model_names or npr.task_names != env.profile.task_names:
        raise PolicyFormatError(f"es.init_from: {f}: field 'model_names'/'task_names' = {npr.model_names}/"
                                f"{npr.task_names} do not match profile {env.profile.name!r}")
    if int(meta["obs_size"]) != env.obs_size or meta["obs_mode"] != env.cfg.obs_mode:
        raise PolicyFormatError(f"es.init_from: {f}: field 'obs_size'/'obs_mode' = {meta['obs_size']}/"
                                f"{meta['obs_mode']!r}, this simulator's observation is {env.obs_size}/"
                                f"{env.cfg.obs_mode!r}")
    if [int(h) for h in meta["hidden"]] != list(hidden) or bool(meta.get("layer_norm", False)):
        raise PolicyFormatError(f"es.init_from: {f}: field 'hidden' = {meta['hidden']} (layer_norm "
                                f"{bool(meta.get('layer_norm', False))}): set es.hidden={list(meta['hidden'])} "
                                "(ES trains networks without LayerNorm)")
    if float(npr.greedy_prior) != float(greedy_prior):
        raise PolicyFormatError(f"es.init_from: {f}: field 'greedy_prior' = {npr.greedy_prior}, this learner's "
                                f"es.greedy_prior = {greedy_prior}: set es.greedy_prior={npr.greedy_prior} (its "
                                "network was trained to be added to that weight on greedy's choice)")
    if npr.prior_gate != prior_gate:
        raise PolicyFormatError(f"es.init_from: {f}: field 'prior_gate' = {npr.prior_gate!r}, this learner's "
                                f"es.prior_gate = {prior_gate!r}: set es.prior_gate={npr.prior_gate}")
    with np.load(f"{path}/weights.npz") as z:
        params = unflatten_params({k: z[k] for k in z.files})
    return {"params": params, "mean": np.asarray(meta["obs_norm"]["mean"]), "var": np.asarray(meta["obs_norm"]["var"])}


def es_config_from(d: dict) -> ESConfig:
    """ESConfig from a config dict (``hidden`` as a tuple; ``externality_price: null`` accepted)."""
    d = dict(d)
    if d.get("externality_price") is None:
        d["externality_price"] = 0.0
    known = {f.name for f in dataclasses.fields(ESConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"es config: unknown field(s) {unknown}; known: {sorted(known)}")
    return ESConfig(**{**d, "hidden": tuple(d.get("hidden", ESConfig.hidden))})
