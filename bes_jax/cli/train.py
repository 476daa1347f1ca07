"""`bes-train`: the main job. Train a Double-DQN router end to end in JAX, resume from
checkpoints, evaluate on held-out workloads against every baseline, plot, export.

Outputs in Hydra's run directory: ``checkpoints/``, ``policy/`` (weights.npz +
metadata.json), ``results.json``, ``train.png``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from bes_jax import CONF_DIR

# jax reports missing TPU/GPU plugins at INFO; not news on a CPU machine.
logging.getLogger("jax").setLevel(logging.WARNING)
log = logging.getLogger("bes-train")


def _out(msg: str) -> None:
    print(msg, flush=True)


TRAIN_KINDS = ("poisson", "gamma", "maf", "trace")


def trace_part(path, span, field: str = "workload.path") -> np.ndarray:
    """Arrival times of the part of a trace file between fractions ``span = [lo, hi]`` of its
    arrivals (by index), shifted to start at 0: train on one part, test on another."""
    from bes_jax.cli.common import _path
    from bes_jax.workloads import load_trace_times

    lo, hi = (float(x) for x in span)
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"span = {list(span)}: need 0 <= lo < hi <= 1 (fractions of the trace's arrivals)")
    t = load_trace_times(_path(path, field), None)
    part = t[int(round(lo * t.size)):int(round(hi * t.size))]
    if part.size < 2:
        raise ValueError(f"span = {list(span)} of {path}: fewer than 2 arrivals")
    return part - part[0]


def build_training_bank(fam, profile, cfg_sim, capacity_large: float, seed: int):
    """Stacked WorkloadParams: Poisson, Gamma, MAF slices and trace replays at randomised rates
    and task mixes (``fam.mix``: one fixed mix for every workload instead)."""
    from bes_jax import workloads as W
    from bes_jax.cli.common import _path

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
    counts = W.load_maf_minute_counts(_path(fam.maf_path, "train_family.maf_path")) if "maf" in kinds else None
    lo_min, hi_min = fam.maf_minutes
    trace_t = None
    if "trace" in kinds:
        if fam.get("trace_path") is None:
            raise ValueError("train_family.trace_path = None: the 'trace' kind needs a trace file, passed by path "
                             "(e.g. train_family.trace_path=pkg:AzureLLMInferenceTrace_code.csv, the shipped one)")
        _path(fam.trace_path, "train_family.trace_path")
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


def build_eval_workloads(ev, profile, capacity_large: float) -> dict:
    from bes_jax.cli.common import build_workload

    out = {}
    for name, node in ev.workloads.items():
        node = OmegaConf.to_container(node, resolve=True)
        node["rate"] = float(node.pop("rate_x")) * capacity_large
        out[name] = (node, build_workload(node, profile))
    return out


def evaluate_against_baselines(profile, sim_cfg, routers, evals: dict, n_eval: int, seeds, window_s: float,
                               echo=None) -> dict:
    """Every router on every held-out workload, mean and std over evaluation seeds."""
    import jax
    import jax.numpy as jnp

    from bes_jax.cli.common import format_table
    from bes_jax.env import ServingEnv
    from bes_jax.eval.metrics import SCALAR_METRICS, to_report
    from bes_jax.eval.rollout import eval_config, make_evaluate

    eval_env = ServingEnv(profile, eval_config(sim_cfg, n_eval))
    keys = jnp.stack([jax.random.PRNGKey(int(s)) for s in seeds])
    results = {}
    for wname, (node, wp) in evals.items():
        params = eval_env.make_params(wp)
        rows = {}
        for router in routers:
            m = jax.jit(make_evaluate(eval_env, router, n_eval, window_s, 4096))(keys, params)
            reps = [to_report(jax.tree.map(lambda x: x[i], m), profile.model_names, window_s) for i in range(len(seeds))]
            rows[router.name] = {k: {"mean": float(np.mean([r[k] for r in reps])), "std": float(np.std([r[k] for r in reps]))}
                                 for k in SCALAR_METRICS}
            rows[router.name]["per_model_share"] = {
                mn: float(np.mean([r["per_model_share"][mn] for r in reps])) for mn in profile.model_names}
        results[wname] = {"workload": node, "routers": rows}
        if echo is not None:
            echo(f"\nheld-out workload {wname} (mean over {len(seeds)} seeds, {n_eval} requests each):")
            flat = [{k: v["mean"] if isinstance(v, dict) and "mean" in v else v for k, v in r.items()} for r in rows.values()]
            for f_ in flat:
                for k in ("n_rejected", "n_dropped"):
                    f_[k] = int(round(f_[k]))
            echo(format_table(flat, list(rows)))
    return results


def setup_training(cfg: DictConfig) -> dict:
    """Profile, simulator, learner functions and workload bank for a train config."""
    import jax

    from bes_jax.agents.dqn import DQNConfig, make_train
    from bes_jax.cli.common import sim_config_from
    from bes_jax.env import ServingEnv
    from bes_jax.eval.capacity import static_capacity
    from bes_jax.profile import load_profile

    profile = load_profile(cfg.profile)
    sim_cfg = sim_config_from(cfg.sim)
    dqn_dict = OmegaConf.to_container(cfg.dqn, resolve=True)
    dqn_cfg = DQNConfig(**{**dqn_dict, "hidden": tuple(dqn_dict["hidden"])})
    caps = static_capacity(profile, sim_cfg)
    bank = build_training_bank(cfg.train_family, profile, sim_cfg, float(caps[-1]), int(cfg.seed))
    env = ServingEnv(profile, sim_cfg)
    base_params = env.make_params(jax.tree.map(lambda x: x[0], bank))
    deadlines = build_deadline_bank(cfg.train_family, sim_cfg.task_deadlines(profile), int(cfg.train_family.bank_size),
                                    int(cfg.seed))
    return {"profile": profile, "sim_cfg": sim_cfg, "dqn_cfg": dqn_cfg, "dqn_dict": dqn_dict, "capacity": caps,
            "cap_large": float(caps[-1]), "bank": bank, "deadline_bank": deadlines, "env": env,
            "base_params": base_params, "fns": make_train(dqn_cfg, env, base_params, bank, deadlines)}


def compose_train_config(overrides=()) -> DictConfig:
    """The bes-train config with Hydra overrides, for scripts (no run directory)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(config_name="train", overrides=list(overrides))


def run_train(cfg: DictConfig, run_dir: Path) -> dict:
    import jax
    import jax.numpy as jnp

    from bes_jax.agents.export import export_policy
    from bes_jax.agents.trainer import run_training
    from bes_jax.env import ServingEnv
    from bes_jax.eval.rollout import eval_config, make_evaluate
    from bes_jax.routers import Router, baseline_routers

    t_start = time.perf_counter()
    setup = setup_training(cfg)
    profile, sim_cfg, dqn_cfg, dqn_dict = setup["profile"], setup["sim_cfg"], setup["dqn_cfg"], setup["dqn_dict"]
    env, cap_large = setup["env"], setup["cap_large"]
    init, train_chunk, _, greedy_policy, net = setup["fns"]
    _out(f"profile {profile.name}: nominal static capacity (req/s; the scale of workload rates) "
         + ", ".join(f"{m}={c:.1f}" for m, c in zip(profile.model_names, setup["capacity"])))

    evals = build_eval_workloads(cfg.eval, profile, cap_large)
    prog_n = int(cfg.progress.n_decisions)
    prog_env = ServingEnv(profile, eval_config(sim_cfg, prog_n))
    prog_params = prog_env.make_params(evals[cfg.progress.workload][1])

    def learned_router(params, stats):
        return Router("learned", greedy_policy(params, stats))

    @jax.jit
    def progress_eval(params, stats, keys):
        ev = make_evaluate(prog_env, learned_router(params, stats), prog_n, float(cfg.eval.window_s), 4096)
        return ev(keys, prog_params)["performance"].mean()

    prog_keys = jnp.stack([jax.random.PRNGKey(7)])
    n_chunks = dqn_cfg.iterations // dqn_cfg.chunk_iterations
    decisions_per_chunk = dqn_cfg.chunk_iterations * dqn_cfg.n_envs

    def on_chunk(c, ts, logs, seconds):
        perf = float(progress_eval(ts.params, ts.obs_stats, prog_keys))
        _out(f"[chunk {c + 1:>3}/{n_chunks}] decisions {int(ts.iteration) * dqn_cfg.n_envs:>9,d} | "
             f"{decisions_per_chunk / seconds:>9,.0f} env steps/s | "
             f"{dqn_cfg.chunk_iterations * dqn_cfg.updates_per_iteration / seconds:>7,.0f} grad steps/s | "
             f"loss {float(np.nanmean(np.asarray(logs['loss']))):.4f} | eps {float(logs['epsilon'][-1]):.3f} | "
             f"eval performance ({cfg.progress.workload}) {perf:.4f}")
        return {"eval_performance": perf, "decisions": int(ts.iteration) * dqn_cfg.n_envs}

    fingerprint = {"profile": profile.identity(), "sim": sim_cfg.to_dict(), "dqn": dqn_dict, "seed": int(cfg.seed),
                   "train_family": OmegaConf.to_container(cfg.train_family, resolve=True)}
    ts, history = run_training(init, train_chunk, n_chunks, jax.random.PRNGKey(int(cfg.seed)), run_dir / "checkpoints",
                               fingerprint=fingerprint, on_chunk=on_chunk, keep=int(cfg.checkpoint_keep), log=_out)
    t_train = time.perf_counter() - t_start

    policy_dir = export_policy(run_dir / "policy", ts.params, ts.obs_stats.mean, ts.obs_stats.var,
                               obs_mode=sim_cfg.obs_mode, hidden=dqn_cfg.hidden, profile=profile,
                               sim_config=sim_cfg.to_dict(), train_config=fingerprint)
    _out(f"policy exported to {policy_dir}")

    # ---------------------------------------------------------------- held-out evaluation
    routers = [learned_router(ts.params, ts.obs_stats)] + baseline_routers(profile)
    results = evaluate_against_baselines(profile, sim_cfg, routers, evals, int(cfg.eval.n_decisions),
                                         list(cfg.eval.seeds), float(cfg.eval.window_s), echo=_out)
    summary = {"profile": profile.name, "train_seconds": t_train, "history": history, "results": results,
               "policy_dir": str(policy_dir)}
    (run_dir / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    from bes_jax.eval.plots import plot_training
    png = plot_training(history, results, run_dir / "train.png", progress_workload=str(cfg.progress.workload))
    _out(f"\nplot saved to {png}; results in {run_dir / 'results.json'}; total {time.perf_counter() - t_start:.0f} s")
    return summary


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="train")
def _main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    from bes_jax.agents.trainer import CheckpointError

    try:
        run_train(cfg, run_dir)
    except (ValueError, FileNotFoundError, KeyError, CheckpointError) as e:
        print(f"bes-train: error: {e}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
