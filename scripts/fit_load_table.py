"""Fit a load table (greedy and every static router, the best of them at each arrival rate) on
Poisson workloads over the training family's rate range, then score it beside its candidates
on the tuning set (`tuning.workloads`, never the test set). Prints the table and the scores;
writes JSON.

    python scripts/fit_load_table.py [--per-doubling 3] [--seeds 0] [--out FILE] [overrides like sim=continuous]

The fit uses training seeds (default 0) and Poisson arrivals at ``train_family.rate_range`` x the
measured capacity of static-largest; the tuning set is scored with the config's first two
evaluation seeds, as `scripts/tune_learner.py` scores learners.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-doubling", type=int, default=3, help="grid rates per doubling of the rate (default 3)")
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0],
                    help="comma-separated seeds of the fit (training seeds; default 0)")
    ap.add_argument("--n-decisions", type=int, default=3000, help="requests per fit run (default 3000)")
    ap.add_argument("--out", default="fit_load_table.json")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    if args.per_doubling < 1 or args.n_decisions < 1:
        ap.error(f"--per-doubling {args.per_doubling} / --n-decisions {args.n_decisions}: need >= 1")

    from bes_jax.config import compose_train_config, sim_config_from
    from bes_jax.eval.baselines import build_eval_workloads, evaluate_against_baselines
    from bes_jax.eval.capacity import measured_capacity
    from bes_jax.eval.load_table import fit_load_table
    from bes_jax.eval.protocol import load_grid
    from bes_jax.profile import load_profile
    from bes_jax.routers import greedy, static

    cfg = compose_train_config(list(args.overrides))
    profile = load_profile(cfg.profile)
    sim_cfg = sim_config_from(cfg.sim)
    cap = measured_capacity(profile, sim_cfg)
    lo, hi = (float(x) for x in cfg.train_family.rate_range)
    grid = load_grid(lo, hi, args.per_doubling)
    cands = [greedy()] + [static(i, f"static:{m}") for i, m in enumerate(profile.model_names)]
    t0 = time.perf_counter()
    print(f"fitting over {len(grid)} Poisson rates ({lo:g}x-{hi:g}x of {cap:.3f} req/s), "
          f"{len(cands)} candidates, seeds {args.seeds}", flush=True)
    table = fit_load_table(profile, sim_cfg, cands, cap * grid, seeds=args.seeds, n_decisions=args.n_decisions,
                           window_s=float(cfg.eval.window_s))
    fit_s = time.perf_counter() - t0
    for (rate, name, score), x in zip(table.summary(), grid):
        print(f"  {x:7.3g}x ({rate:8.2f} req/s): {name} ({score:.3f})")
    print(f"fit in {fit_s:.0f} s", flush=True)

    evals = build_eval_workloads(SimpleNamespace(workloads=cfg.tuning.workloads), profile, cap, section="tuning")
    eval_seeds = list(cfg.eval.seeds)[:2]
    routers = cands + [table.router(cands)]
    res = evaluate_against_baselines(profile, sim_cfg, routers, evals, int(cfg.eval.n_decisions), eval_seeds,
                                     float(cfg.eval.window_s))
    out = {"overrides": args.overrides, "capacity_req_s": cap, "grid_x": grid.tolist(), "fit_seeds": args.seeds,
           "fit_s": fit_s, "eval_seeds": eval_seeds, "n_decisions": int(cfg.eval.n_decisions),
           "table": [{"load_x": float(x), "router": n, "score": s} for x, (_, n, s) in zip(grid, table.summary())],
           "tuning": {}}
    for w, r in res.items():
        perf = {name: v["performance"]["mean"] for name, v in r["routers"].items()}
        out["tuning"][w] = perf
        best = max((k for k in perf if k.startswith("static:")), key=perf.get)
        print(f"{w}: load-table {perf['load-table']:.3f}, greedy {perf['greedy']:.3f}, best static {best} "
              f"{perf[best]:.3f}", flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
