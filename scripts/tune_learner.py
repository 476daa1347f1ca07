"""Sweep one traced learner hyperparameter on the tuning set: every (training seed, value) pair
is trained in one vmapped program (hyperparameters that are numbers are traced, so one
compilation serves them all), or one program per run for a learner that vmaps badly over seeds
(ES: `bes_jax.agents.training.trains_sequentially`; still one compilation), then every policy and every baseline is evaluated on the tuning
workloads (`tuning.workloads`, never the test set). Prints the table; writes JSON.

    python scripts/tune_learner.py --sweep dqn.externality_price=5,10,20 [--seeds 0,1] [--out FILE]
        [--sequential | --vmapped] [--deploy "OVERRIDE ..."]... [overrides like sim=continuous]

`--deploy` (repeatable) adds a deployed-policy variant: the same trained parameters routed
under extra overrides that change only the deployed policy, never training (e.g.
``--deploy "dqn.greedy_prior=0.1 dqn.prior_gate=load"``: DQN anchored on greedy's choice), so
every variant is scored without training again. Without `--sweep` the config is trained as it is.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", help="LEARNER.NAME=v1,v2,... (a traced hyperparameter; default: the config as it is)")
    ap.add_argument("--deploy", action="append", default=[],
                    help="space-separated overrides of the deployed policy only, scored on the same trained "
                         "parameters (repeatable)")
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0], help="comma-separated")
    ap.add_argument("--out", default="tune_learner.json")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--sequential", dest="sequential", action="store_const", const=True,
                      help="one program per run (default for learners that vmap badly over seeds, e.g. ES)")
    mode.add_argument("--vmapped", dest="sequential", action="store_const", const=False,
                      help="every run in one vmapped program (default for DQN and PQN)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    name, _, values = (args.sweep or "").partition("=")
    learner, _, hp_name = name.partition(".")
    try:
        values = [float(v) for v in values.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"--sweep {args.sweep!r}: values must be numbers (NAME=v1,v2,...)")
    if args.sweep is not None and (not values or not hp_name):
        raise SystemExit(f"--sweep {args.sweep!r}: expected LEARNER.NAME=v1,v2,... e.g. dqn.externality_price=5,10")

    import jax
    import jax.numpy as jnp

    from bes_jax.agents.training import request_learner_devices, setup_training, train_seeds, trains_sequentially
    from bes_jax.config import compose_train_config
    from bes_jax.env import make_serving_env
    from bes_jax.eval.baselines import build_eval_workloads, evaluate_against_baselines
    from bes_jax.eval.metrics import to_report
    from bes_jax.eval.rollout import eval_config, make_evaluate, metric_windows
    from bes_jax.routers import Router, baseline_routers

    cfg = compose_train_config(list(args.overrides))
    request_learner_devices(cfg)  # one device per core (the comparison), pqn.devices / es.devices: before the first computation
    s = setup_training(cfg)
    if args.sweep is None:
        name, learner, values = "config", s["learner_name"], [0.0]
    elif s["learner_name"] != learner:
        raise SystemExit(f"--sweep {args.sweep!r}: the config trains with {s['learner_name']!r}, not {learner!r} "
                         f"(learner={learner} selects it)")
    fns = s["fns"]
    known = getattr(fns, "hparams", None) or {}
    if args.sweep is not None and hp_name not in known:
        raise SystemExit(f"--sweep {args.sweep!r}: {hp_name!r} is not a traced hyperparameter of this learner "
                         f"(traced: {', '.join(sorted(known))})")
    grid = [(seed, v) for v in values for seed in args.seeds]
    hp = {hp_name: jnp.asarray([v for _, v in grid], jnp.float32)} if args.sweep else None
    # deployed-policy variants: the same parameters under each variant's policy
    deploy = {"as trained": fns.greedy_policy}
    for d in args.deploy:
        extra = d.split()
        if not extra:
            raise SystemExit(f"--deploy {d!r}: give at least one override")
        deploy[" ".join(extra)] = setup_training(compose_train_config(list(args.overrides) + extra))["fns"].greedy_policy
    t0 = time.perf_counter()
    sequential = trains_sequentially(fns, args.sequential)
    print(f"training {len(grid)} runs ({len(args.seeds)} seeds x {len(values)} values of {name}) "
          + ("one program each" if sequential else "in one program"), flush=True)
    ts, logs = train_seeds(fns, [seed for seed, _ in grid], sequential, log=lambda m: print(" ", m, flush=True), hp=hp)
    train_s = time.perf_counter() - t0
    print(f"trained in {train_s:.0f} s (incl. compilation)", flush=True)

    tuning = cfg.tuning.workloads
    evals = build_eval_workloads(SimpleNamespace(workloads=tuning), s["profile"], s["cap_large"], section="tuning")
    n_eval, window_s = int(cfg.eval.n_decisions), float(cfg.eval.window_s)
    eval_seeds = list(cfg.eval.seeds)[:2]
    base = evaluate_against_baselines(s["profile"], s["sim_cfg"], baseline_routers(s["profile"]), evals, n_eval,
                                      eval_seeds, window_s)
    env = make_serving_env(s["profile"], eval_config(s["sim_cfg"], n_eval))
    ekeys = jnp.stack([jax.random.PRNGKey(int(k)) for k in eval_seeds])
    out = {"sweep": name, "values": values, "deploy": list(deploy), "seeds": args.seeds, "overrides": args.overrides, "train_s": train_s,
           "eval_seeds": eval_seeds, "n_decisions": n_eval, "workloads": {}}
    for w, (node, wp) in evals.items():
        params = env.make_params(wp)
        n_windows = metric_windows(n_eval, window_s, wp)

        perf = {}
        for dname, policy in deploy.items():
            @jax.jit
            def learned(p, stats):
                return make_evaluate(env, Router("learned", policy(p, stats)), n_eval, window_s, n_windows)(ekeys, params)

            for i, (seed, v) in enumerate(grid):
                m = learned(jax.tree.map(lambda x: x[i], ts.params), jax.tree.map(lambda x: x[i], ts.obs_stats))
                reps = [to_report(jax.tree.map(lambda x: x[j], m), s["profile"].model_names, window_s)
                        for j in range(ekeys.shape[0])]
                key = dname if not args.sweep else (f"{v:g}" if len(deploy) == 1 else f"{v:g}, {dname}")
                perf.setdefault(key, []).append(float(np.mean([r["performance"] for r in reps])))
        routers = {r: v["performance"]["mean"] for r, v in base[w]["routers"].items()}
        out["workloads"][w] = {"learned": dict(perf), "baselines": routers}
        best = max((r for r in routers if r.startswith("static")), key=routers.get)
        print(f"{w}: best static {best} {routers[best]:.3f}, greedy {routers.get('greedy', float('nan')):.3f}; "
              + "; ".join(f"{name}={v}: {np.mean(p):.3f} (seeds {', '.join(f'{x:.3f}' for x in p)})"
                          for v, p in perf.items()), flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
