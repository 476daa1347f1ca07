"""Training setup from a `bes-train` config: the domain-randomised workload (and deadline) bank,
the simulator and the DQN learner functions. Used by `bes-train`, `bes-experiment`,
:mod:`bes_jax.eval.experiments` and the scripts."""
from __future__ import annotations

import numpy as np
from omegaconf import DictConfig, OmegaConf

from bes_jax.data import resolve_path
from bes_jax.workloads.from_config import trace_part

TRAIN_KINDS = ("poisson", "gamma", "maf", "trace")


def build_training_bank(fam, profile, cfg_sim, capacity_large: float, seed: int):
    """Stacked WorkloadParams: Poisson, Gamma, MAF slices and trace replays at randomised rates
    and task mixes (``fam.mix``: one fixed mix for every workload instead)."""
    from bes_jax import workloads as W

    rng = np.random.default_rng(seed)
    T = profile.n_tasks
    pads = dict(pad_windows=int(fam.maf_slice_minutes), pad_trace=1, pad_mix=1)
    kinds = list(fam.get("kinds", ["poisson", "gamma", "maf"]))
    unknown = sorted(set(kinds) - set(TRAIN_KINDS))
    if unknown or not kinds:
        raise ValueError(f"train_family.kinds = {kinds}: choose from {', '.join(TRAIN_KINDS)}")
    fixed_mix = fam.get("mix")
    if fixed_mix is not None:
        fixed_mix = np.asarray(list(fixed_mix), np.float64)
        if fixed_mix.shape != (T,) or (fixed_mix < 0).any() or abs(fixed_mix.sum() - 1.0) > 1e-6:
            raise ValueError(f"train_family.mix = {fixed_mix.tolist()}: need {T} probabilities >= 0 summing to 1 "
                             f"(tasks {profile.task_names}), or null for randomised mixes")
    counts = W.load_maf_minute_counts(resolve_path(fam.maf_path, "train_family.maf_path")) if "maf" in kinds else None
    lo_min, hi_min = fam.maf_minutes
    trace_t = None
    if "trace" in kinds:
        if fam.get("trace_path") is None:
            raise ValueError("train_family.trace_path = None: the 'trace' kind needs a trace file, passed by path "
                             "(e.g. train_family.trace_path=pkg:AzureLLMInferenceTrace_code.csv, the shipped one)")
        resolve_path(fam.trace_path, "train_family.trace_path")
        try:
            trace_t = trace_part(fam.trace_path, fam.get("trace_span", [0.0, 1.0]), "train_family.trace_path")
        except ValueError as e:
            raise ValueError(f"train_family.trace_{e}") from None
    bank = []
    for i in range(int(fam.bank_size)):
        rate = capacity_large * float(np.exp(rng.uniform(*np.log(fam.rate_range))))
        mix = fixed_mix
        if fixed_mix is None and fam.dirichlet_alpha > 0 and rng.random() < 0.5:
            mix = rng.dirichlet(np.full(T, float(fam.dirichlet_alpha)))
        kind = kinds[i % len(kinds)]
        if kind == "poisson":
            wp = W.poisson(rate, n_tasks=T, mix=mix, **pads)
        elif kind == "gamma":
            wp = W.gamma(rate, float(rng.uniform(*fam.cv_range)), n_tasks=T, mix=mix, **pads)
        elif kind == "maf":
            start = int(rng.integers(lo_min, hi_min - fam.maf_slice_minutes))
            seg = counts[start:start + int(fam.maf_slice_minutes)]
            scale = float(rng.uniform(*fam.time_scale_range))
            wp = W.schedule(list(seg / seg.mean() * rate), 60.0 / scale, cv=1.0, n_tasks=T, mix=mix, **pads)
        else:  # the training part of the trace, rescaled to the rate, from a random point of it
            offset = float(rng.uniform(0.0, (trace_t.size - 1) / rate))
            wp = W.trace(times=trace_t, target_mean_rate=rate, n_tasks=T, mix=mix, start_offset=offset,
                         **{**pads, "pad_trace": trace_t.size})
        bank.append(wp)
    return W.stack_workloads(bank)


def build_deadline_bank(fam, base_deadlines, n_bank: int, seed: int):
    """[n_bank, T] per-task deadlines, every task's scaled by one log-uniform draw from
    ``fam.deadline_scale_range`` per bank entry; None when the range is unset (the sim's)."""
    rng_range = fam.get("deadline_scale_range")
    if rng_range is None:
        return None
    lo_hi = list(rng_range)
    if len(lo_hi) != 2 or not all(isinstance(x, (int, float)) for x in lo_hi) or not 0 < lo_hi[0] <= lo_hi[1]:
        raise ValueError(f"train_family.deadline_scale_range = {lo_hi}: need [low, high] with 0 < low <= high, "
                         "or null for the simulator's deadlines")
    rng = np.random.default_rng([seed, 1])
    scales = np.exp(rng.uniform(np.log(lo_hi[0]), np.log(lo_hi[1]), int(n_bank)))
    return scales[:, None] * np.asarray(base_deadlines, np.float64)[None, :]


def setup_training(cfg: DictConfig) -> dict:
    """Profile, simulator, learner functions and workload bank for a train config.

    Keys: profile, sim_cfg, dqn_cfg, dqn_dict, cap_large (the rate the static largest model
    sustains), bank, deadline_bank, env, base_params, learner_name (``cfg.learner.name``: dqn,
    pqn or es), learner_cfg, learner_dict (its config and plain dict) and fns = learner (the learner
    object, :class:`bes_jax.agents.dqn.DQN`, :class:`bes_jax.agents.pqn.PQN` or
    :class:`bes_jax.agents.es.ES`: ``init``,
    ``train_chunk``, ``train``, ``greedy_policy``, ``network``)."""
    import jax
    import jax.numpy as jnp

    from bes_jax.agents.dqn import DQN, DQNConfig
    from bes_jax.agents.pqn import PQN, PQNConfig
    from bes_jax.agents.shaping import resolve_price
    from bes_jax.config import sim_config_from
    from bes_jax.env import make_serving_env
    from bes_jax.eval.capacity import measured_capacity
    from bes_jax.profile import load_profile

    profile = load_profile(cfg.profile)
    sim_cfg = sim_config_from(cfg.sim)
    dqn_dict = resolve_price(OmegaConf.to_container(cfg.dqn, resolve=True), sim_cfg.batching)
    dqn_cfg = DQNConfig(**{**dqn_dict, "hidden": tuple(dqn_dict["hidden"])})
    cap_large = measured_capacity(profile, sim_cfg)
    bank = build_training_bank(cfg.train_family, profile, sim_cfg, cap_large, int(cfg.seed))
    env = make_serving_env(profile, sim_cfg)
    base_params = env.make_params(jax.tree.map(lambda x: x[0], bank))
    shaping = cfg.train_family.get("miss_penalty")
    if shaping is not None:  # training reward only: evaluation keeps the sim's reward
        if not isinstance(shaping, (int, float)) or shaping < 0:
            raise ValueError(f"train_family.miss_penalty = {shaping!r}: need a number >= 0, or null for sim.miss_penalty")
        base_params = base_params.replace(miss_penalty=jnp.asarray(float(shaping), base_params.miss_penalty.dtype))
    deadlines = build_deadline_bank(cfg.train_family, sim_cfg.task_deadlines(profile), int(cfg.train_family.bank_size),
                                    int(cfg.seed))
    name = learner_name(cfg)
    if name == "dqn":
        learner_cfg, learner_dict = dqn_cfg, dqn_dict
        learner = DQN(dqn_cfg, env, base_params, bank, deadlines)
    elif name == "es":
        from bes_jax.agents.es import ES, es_config_from
        learner_dict = OmegaConf.to_container(cfg.es, resolve=True)
        learner_cfg = es_config_from(learner_dict)
        learner = ES(learner_cfg, env, base_params, bank, deadlines)
    else:
        learner_dict = resolve_price(OmegaConf.to_container(cfg.pqn, resolve=True), sim_cfg.batching)
        learner_cfg = PQNConfig(**{**learner_dict, "hidden": tuple(learner_dict["hidden"])})
        learner = PQN(learner_cfg, env, base_params, bank, deadlines)
    return {"profile": profile, "sim_cfg": sim_cfg, "dqn_cfg": dqn_cfg, "dqn_dict": dqn_dict,
            "cap_large": cap_large, "bank": bank, "deadline_bank": deadlines, "env": env,
            "base_params": base_params, "learner_name": name, "learner_cfg": learner_cfg,
            "learner_dict": learner_dict, "learner": learner, "fns": learner}


LEARNERS = ("dqn", "pqn", "es")


def trains_sequentially(learner, sequential: bool | None = None) -> bool:
    """Whether `train_seeds` runs one program per seed: as asked, else when the learner vmaps
    badly over seeds (its ``vmap_seeds`` is False)."""
    return (not getattr(learner, "vmap_seeds", True)) if sequential is None else bool(sequential)


def train_seeds(learner, seeds, sequential: bool | None = None, log=None, hp: dict | None = None):
    """``(train states, logs)`` of ``learner.train`` for every seed, stacked on a leading axis:
    one vmapped program, or (``sequential``; default: the learner's ``vmap_seeds`` is False)
    one program per seed, reporting each seed's time and the time left through ``log``.
    ``hp``: traced hyperparameters, each an array with one value per seed (seeds may repeat:
    a sweep's runs)."""
    import time

    import jax
    import jax.numpy as jnp

    seeds = [int(k) for k in seeds]
    keys = jnp.stack([jax.random.PRNGKey(k) for k in seeds])
    if not trains_sequentially(learner, sequential):
        if hp is None:
            return jax.block_until_ready(jax.jit(jax.vmap(learner.train))(keys))
        return jax.block_until_ready(jax.jit(jax.vmap(learner.train))(keys, hp))
    train_j, runs, t0 = jax.jit(learner.train), [], time.perf_counter()
    for i, k in enumerate(seeds):
        if hp is None:
            runs.append(jax.block_until_ready(train_j(keys[i])))
        else:
            runs.append(jax.block_until_ready(train_j(keys[i], {n: v[i] for n, v in hp.items()})))
        spent = time.perf_counter() - t0
        if log is not None:
            what = "" if hp is None else " (" + ", ".join(f"{n}={float(v[i]):g}" for n, v in hp.items()) + ")"
            log(f"seed {k}{what} trained ({i + 1}/{len(seeds)}): {spent:.0f} s so far, "
                f"about {spent / (i + 1) * (len(seeds) - i - 1):.0f} s left")
    return jax.tree.map(lambda *xs: jnp.stack(xs), *runs)


def request_learner_devices(cfg) -> None:
    """Ask XLA for host devices; call before JAX starts its backends (no effect after): the ones
    the configured learner splits over (``pqn.devices`` or ``es.devices`` > 1), and at least one
    per usable core for the comparison with the baselines, whose runs split over the devices
    (`bes_jax.eval.rollout.evaluate_on_devices`), unless ``XLA_FLAGS`` already names a count.
    Only a CPU backend has host devices; a training program runs on one device either way."""
    from bes_jax.env.devices import host_devices_requested, usable_cores, use_host_devices

    name = learner_name(cfg)
    node = cfg.get(name) if name in ("pqn", "es") else None
    want = int(node.get("devices", 1)) if node is not None else 1
    if not host_devices_requested():
        want = max(want, usable_cores())
    if want > 1:
        use_host_devices(want)


def learner_name(cfg) -> str:
    """``cfg.learner.name`` (the `learner` config group; dqn when the config has none)."""
    node = cfg.get("learner")
    name = "dqn" if node is None else (node if isinstance(node, str) else node.get("name", "dqn"))
    if name not in LEARNERS:
        raise ValueError(f"learner = {name!r}: choose from {', '.join(LEARNERS)}")
    return str(name)
