"""`bes-experiment`: one job of a config sweep. Train the `bes-train` config (with the job's
overrides) for several seeds in one vmapped program, evaluate the learned routers and every
baseline on named held-out workloads, and write ``result.json`` in the job's directory.

    bes-experiment -m sim.latency_weight=0,0.1,0.3      # Hydra multirun: one job per value
    bes-experiment -m learner=dqn,pqn hydra/launcher=joblib   # the jobs in parallel on local cores

Launchers (local cores, Slurm, Ray) and multi-host evaluation: docs/scaling.md.

Performance is measured with the job's own simulator config (its deadlines and reward) unless
``eval_sim`` replaces fields for the evaluation.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from bes_jax import CONF_DIR

logging.getLogger("jax").setLevel(logging.WARNING)

SUMMARY_KEYS = ("performance", "pct_of_peak", "availability", "frac_windows_ge_96", "latency_p50")


def run_job(cfg: DictConfig, out_dir: Path, overrides=()) -> dict:
    from bes_jax.eval.baselines import build_eval_workloads, evaluate_against_baselines
    from bes_jax.eval.experiments import mean_std, train_routers
    from bes_jax.routers import baseline_routers
    from bes_jax.sim_config import SimConfig, sim_config_from_mapping

    t0 = time.perf_counter()
    seeds = list(cfg.seeds) if cfg.get("seeds") is not None else []
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"seeds = {seeds}: need a non-empty list of integer training seeds")
    names = list(cfg.eval.workloads) if cfg.get("test_on") is None else list(cfg.test_on)
    unknown = [n for n in names if n not in cfg.eval.workloads]
    if unknown or not names:
        raise ValueError(f"test_on = {names}: unknown or empty; choose from eval.workloads: {list(cfg.eval.workloads)}")
    eval_sim = cfg.get("eval_sim")
    eval_sim = {} if eval_sim is None else OmegaConf.to_container(eval_sim, resolve=True)
    unknown = sorted(set(eval_sim) - set(SimConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"eval_sim: unknown sim field(s) {unknown}; known: {sorted(SimConfig.__dataclass_fields__)}")
    setup, learned = train_routers(cfg, seeds)
    profile, sim_cfg = setup["profile"], setup["sim_cfg"]
    t_train = time.perf_counter() - t0
    print(f"trained {len(seeds)} seeds in {t_train:.0f} s; evaluating on {names}", flush=True)
    ev = cfg.eval.copy()
    ev.workloads = {n: cfg.eval.workloads[n] for n in names}
    evals = build_eval_workloads(ev, profile, setup["cap_large"])
    learned = [dataclasses.replace(r, name=f"learned:seed{s}") for r, s in zip(learned, seeds)]
    if eval_sim:
        sim_cfg = sim_config_from_mapping({**sim_cfg.to_dict(), **eval_sim})
    res = evaluate_against_baselines(profile, sim_cfg, learned + baseline_routers(profile), evals,
                                     int(cfg.eval.n_decisions), list(cfg.eval.seeds), float(cfg.eval.window_s))
    results = {}
    for wname, r in res.items():
        rows = r["routers"]
        per_seed = [rows.pop(f"learned:seed{s}") for s in seeds]
        learned_row = {k: mean_std([p[k]["mean"] for p in per_seed]) for k in SUMMARY_KEYS}
        results[wname] = {"workload": r["workload"], "learned": learned_row, "learned_per_seed": per_seed,
                          "baselines": rows}
    out = {"overrides": list(overrides), "profile": profile.name, "train_seeds": seeds, "eval_seeds": list(cfg.eval.seeds),
           "n_decisions": int(cfg.eval.n_decisions), "sim": setup["sim_cfg"].to_dict(), "eval_sim": sim_cfg.to_dict(),
           "train_family": OmegaConf.to_container(cfg.train_family, resolve=True),
           "dqn": setup["dqn_dict"], "learner": setup["learner_name"],
           "learner_config": setup["learner_dict"], "train_seconds": t_train,
           "seconds": time.perf_counter() - t0, "results": results}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "result.json").write_text(json.dumps(out, indent=1) + "\n")
    for wname, r in results.items():
        cells = [f"learned {r['learned']['performance']['mean']:.3f} ± {r['learned']['performance']['std']:.3f}"]
        cells += [f"{n} {v['performance']['mean']:.3f}" for n, v in r["baselines"].items()]
        print(f"{wname}: performance " + ", ".join(cells), flush=True)
    print(f"wrote {out_dir / 'result.json'}", flush=True)
    return out


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="experiment_job")
def _main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    try:
        run_job(cfg, Path(hc.runtime.output_dir), overrides=list(hc.overrides.task))
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"bes-experiment: error: {e}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
