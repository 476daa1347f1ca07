"""`bes-train`: the main job. Train a router end to end in JAX (Double DQN, or PQN with
``learner=pqn``), resume from checkpoints, evaluate on held-out workloads against every
baseline, plot, export.

Outputs in Hydra's run directory: ``checkpoints/``, ``policy/`` (weights.npz +
metadata.json), ``results.json``, ``train.png``.
"""
from __future__ import annotations

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
from bes_jax.agents.training import setup_training
from bes_jax.eval.baselines import build_eval_workloads, evaluate_against_baselines

# jax reports missing TPU/GPU plugins at INFO; not news on a CPU machine.
logging.getLogger("jax").setLevel(logging.WARNING)
log = logging.getLogger("bes-train")


def _out(msg: str) -> None:
    print(msg, flush=True)


def _learner_progress(logs: dict, model_names) -> str:
    """The chunk's learner figures: loss and exploration (DQN, PQN) or the population's episode
    score and model shares (ES)."""
    if "fitness" in logs:
        share = np.asarray(logs["share"])[-1]
        return (f"episode score {float(np.asarray(logs['fitness'])[-1]):.4f} | shares "
                + " / ".join(f"{n.split('-')[-1]} {x:.2f}" for n, x in zip(model_names, share)))
    return f"loss {float(np.nanmean(np.asarray(logs['loss']))):.4f} | eps {float(logs['epsilon'][-1]):.3f}"


def run_train(cfg: DictConfig, run_dir: Path) -> dict:
    from bes_jax.agents.training import request_learner_devices
    request_learner_devices(cfg)  # CPU: one device per core (before JAX starts; no effect after)
    import jax
    import jax.numpy as jnp

    from bes_jax.agents.export import export_policy
    from bes_jax.agents.trainer import run_training
    from bes_jax.env import make_serving_env
    from bes_jax.eval.rollout import eval_config, make_evaluate, metric_windows
    from bes_jax.routers import Router, baseline_routers

    t_start = time.perf_counter()
    setup = setup_training(cfg)
    profile, sim_cfg, dqn_cfg, dqn_dict = setup["profile"], setup["sim_cfg"], setup["dqn_cfg"], setup["dqn_dict"]
    cap_large = setup["cap_large"]
    learner, lcfg, lname = setup["learner"], setup["learner_cfg"], setup["learner_name"]
    init, train_chunk, greedy_policy = learner.init, learner.train_chunk, learner.greedy_policy
    _out(f"profile {profile.name}, placement {sim_cfg.placement}: static {profile.model_names[-1]} sustains "
         f"{cap_large:.2f} req/s (measured max_sustainable_rate; every rate_x is a multiple of it)")

    evals = build_eval_workloads(cfg.eval, profile, cap_large)
    tuning = build_eval_workloads(cfg.tuning, profile, cap_large, section="tuning")
    if cfg.progress.workload not in tuning:
        raise ValueError(f"progress.workload = {cfg.progress.workload!r}: not a tuning-set workload "
                         f"(tuning.workloads: {sorted(tuning)}); progress is never measured on the test set")
    prog_n = int(cfg.progress.n_decisions)
    prog_env = make_serving_env(profile, eval_config(sim_cfg, prog_n))
    prog_params = prog_env.make_params(tuning[cfg.progress.workload][1])
    prog_windows = metric_windows(prog_n, float(cfg.eval.window_s), prog_params)

    def learned_router(params, stats):
        return Router("learned", greedy_policy(params, stats))

    @jax.jit
    def progress_eval(params, stats, keys):
        ev = make_evaluate(prog_env, learned_router(params, stats), prog_n, float(cfg.eval.window_s), prog_windows)
        return ev(keys, prog_params)["performance"].mean()

    prog_keys = jnp.stack([jax.random.PRNGKey(7)])
    n_chunks = learner.n_chunks
    decisions_per_chunk = learner.env_steps_per_chunk

    def on_chunk(c, ts, logs, seconds):
        perf = float(progress_eval(ts.params, ts.obs_stats, prog_keys))
        _out(f"[chunk {c + 1:>3}/{n_chunks}] decisions {int(ts.iteration) * lcfg.n_envs:>9,d} | "
             f"{decisions_per_chunk / seconds:>9,.0f} env steps/s | "
             f"{learner.grad_steps_per_chunk / seconds:>7,.0f} grad steps/s | "
             f"{_learner_progress(logs, profile.model_names)} | eval performance ({cfg.progress.workload}) {perf:.4f}")
        return {"eval_performance": perf, "decisions": int(ts.iteration) * lcfg.n_envs}

    # the deployed policy's greedy prior never changes training: a DQN run resumes whatever its value
    dqn_trained = {k: v for k, v in dqn_dict.items() if k not in ("greedy_prior", "prior_gate")}
    fingerprint = {"profile": profile.identity(), "sim": sim_cfg.to_dict(), "dqn": dqn_trained, "seed": int(cfg.seed),
                   "train_family": OmegaConf.to_container(cfg.train_family, resolve=True)}
    if lname != "dqn":  # a DQN run's fingerprint is what it always was (its checkpoints resume)
        fingerprint = {**{k: v for k, v in fingerprint.items() if k != "dqn"}, "learner": lname, lname: setup["learner_dict"]}
    _out(f"learner {lname}: {lcfg}")
    ts, history = run_training(init, train_chunk, n_chunks, jax.random.PRNGKey(int(cfg.seed)), run_dir / "checkpoints",
                               fingerprint=fingerprint, on_chunk=on_chunk, keep=int(cfg.checkpoint_keep), log=_out)
    t_train = time.perf_counter() - t_start

    policy_dir = export_policy(run_dir / "policy", ts.params, ts.obs_stats.mean, ts.obs_stats.var,
                               obs_mode=sim_cfg.obs_mode, hidden=lcfg.hidden, profile=profile,
                               sim_config=sim_cfg.to_dict(), train_config=fingerprint,
                               mask_wait_x=lcfg.mask_wait_x, layer_norm=learner.layer_norm,
                               greedy_prior=float(getattr(lcfg, "greedy_prior", 0.0)),
                               prior_gate=str(getattr(lcfg, "prior_gate", "none")),
                               kind={"dqn": "double-dqn q-network", "pqn": "pqn q-network (layernorm)",
                                     "es": "es policy network (argmax)"}[lname])
    _out(f"policy exported to {policy_dir}")

    # ---------------------------------------------------------------- held-out evaluation
    routers = [learned_router(ts.params, ts.obs_stats)] + baseline_routers(profile)
    results = evaluate_against_baselines(profile, sim_cfg, routers, evals, int(cfg.eval.n_decisions),
                                         list(cfg.eval.seeds), float(cfg.eval.window_s), echo=_out)
    from bes_jax.eval.capacity import CAPACITY_PROTOCOL
    summary = {"profile": profile.name, "sim": sim_cfg.to_dict(),
               "capacity": {"model": profile.model_names[-1], "req_per_s": cap_large, **CAPACITY_PROTOCOL},
               "learner": lname, "tuning_set": sorted(tuning), "test_set": sorted(evals), "train_seconds": t_train, "history": history, "results": results,
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
