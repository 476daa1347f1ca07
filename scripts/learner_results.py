"""Train the default router on several seeds (one vmapped program) and compare every seed's
policy with the baselines on the test set; writes docs/results.md (the learner section of the
serving model) and docs/results_learner.json (request-level, the default here) or
docs/results_learner_continuous.json (`sim=continuous`, the main job's mode). A learner other than
the default (`learner=es`, `learner=pqn`) gets its own section and file (suffix `_es`, `_pqn`).

    python scripts/learner_results.py [--seeds 0,1,2] [overrides like sim=continuous dqn.iterations=12000]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2], help="comma-separated")
    ap.add_argument("--sequential", action="store_true",
                    help="train the seeds one program each, printing each seed's time and the time left "
                         "(slow learners: ES), instead of one vmapped program")
    ap.add_argument("--label", help="a name for this variant: its section heading and JSON file carry it, so it "
                                    "does not replace the learner's own section (e.g. es-greedy-prior)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from bes_jax import REPO_ROOT
    from bes_jax.eval.report import replace_section
    from bes_jax.agents.training import request_learner_devices, setup_training, train_seeds, trains_sequentially
    from bes_jax.config import compose_train_config
    from bes_jax.eval.baselines import build_eval_workloads, evaluate_against_baselines
    from bes_jax.env import make_serving_env
    from bes_jax.eval.metrics import to_report
    from bes_jax.eval.rollout import eval_config, make_evaluate, metric_windows
    from bes_jax.routers import Router, baseline_routers

    if not any(o.split("=", 1)[0].lstrip("+~") == "sim" for o in args.overrides):
        args.overrides = ["sim=default"] + list(args.overrides)  # the learner table is in request mode
    cfg = compose_train_config(args.overrides)
    request_learner_devices(cfg)  # one device per core (the comparison), pqn.devices / es.devices: before the first computation
    s = setup_training(cfg)
    default_learner = s["learner_name"] == compose_train_config([]).learner.name
    greedy_policy = s["fns"].greedy_policy
    t0 = time.perf_counter()
    args.sequential = trains_sequentially(s["fns"], args.sequential or None)
    ts, logs = train_seeds(s["fns"], args.seeds, args.sequential, log=lambda m: print(m, flush=True))
    train_s = time.perf_counter() - t0
    # ES trains on drained episodes with a ring that holds them whole: nothing to evict
    evicted = float(np.max(np.asarray(logs["evicted_frac"]))) if "evicted_frac" in logs else 0.0
    how = "one program each" if args.sequential else "in one program"
    print(f"trained {len(args.seeds)} seeds {how}: {train_s:.1f} s (incl. compilation); "
          f"decisions evicted from the outcome ring unresolved (not trained on): at most {evicted:.2%} of a seed's")
    continuous = s["sim_cfg"].batching == "continuous"
    evals = build_eval_workloads(cfg.eval, s["profile"], s["cap_large"])
    n_eval, window_s = int(cfg.eval.n_decisions), float(cfg.eval.window_s)
    # baselines do not depend on the training seed: evaluate them once
    base = evaluate_against_baselines(s["profile"], s["sim_cfg"], baseline_routers(s["profile"]), evals, n_eval,
                                      list(cfg.eval.seeds), window_s)
    env = make_serving_env(s["profile"], eval_config(s["sim_cfg"], n_eval))
    keys = jnp.stack([jax.random.PRNGKey(int(k)) for k in cfg.eval.seeds])
    per_seed = [{w: {"workload": base[w]["workload"], "routers": {}} for w in evals} for _ in args.seeds]
    for w, (node, wp) in evals.items():
        params = env.make_params(wp)
        n_windows = metric_windows(n_eval, window_s, wp)

        @jax.jit  # one compilation per workload, reused for every seed's weights
        def learned_metrics(p, stats):
            return make_evaluate(env, Router("learned", greedy_policy(p, stats)), n_eval, window_s, n_windows)(keys, params)

        for i in range(len(args.seeds)):
            m = learned_metrics(jax.tree.map(lambda x: x[i], ts.params), jax.tree.map(lambda x: x[i], ts.obs_stats))
            reps = [to_report(jax.tree.map(lambda x: x[j], m), s["profile"].model_names, window_s) for j in range(keys.shape[0])]
            per_seed[i][w]["routers"]["learned"] = {k: {"mean": float(np.mean([r[k] for r in reps]))}
                                                    for k in ("performance", "availability", "pct_of_peak", "frac_windows_ge_96")}
            per_seed[i][w]["routers"].update(base[w]["routers"])
        print(f"{w}: learned performance per training seed " + ", ".join(
            f"{per_seed[i][w]['routers']['learned']['performance']['mean']:.4f}" for i in range(len(args.seeds))))
    # performance per (workload, router): mean and std over training seeds (baselines do not depend on it)
    table = {}
    for w in evals:
        table[w] = {}
        for r in per_seed[0][w]["routers"]:
            vals = {k: [ps[w]["routers"][r][k]["mean"] for ps in per_seed]
                    for k in ("performance", "availability", "pct_of_peak", "frac_windows_ge_96")}
            table[w][r] = {k: {"mean": float(np.mean(v)), "std": float(np.std(v))} for k, v in vals.items()}
    out = {"seeds": args.seeds, "overrides": args.overrides, "train_seconds": train_s, "evicted_frac_max": evicted,
           "eval_seeds": list(cfg.eval.seeds), "n_decisions": int(cfg.eval.n_decisions),
           "workloads": {w: per_seed[0][w]["workload"] for w in evals}, "results": table}
    suffix = ("" if default_learner else f"_{s['learner_name']}") + (f"_{args.label}" if args.label else "")
    json_name = f"results_learner{'_continuous' if continuous else ''}{suffix}.json"
    (REPO_ROOT / "docs" / json_name).write_text(json.dumps(out, indent=1) + "\n")
    heading = ("## Continuous batching: learned router vs baselines over training seeds" if continuous
               else "## Learned router vs baselines (held-out unpredictable workloads)")
    if not default_learner or args.label:
        heading += " (" + ", ".join(([f"`learner={s['learner_name']}`"] if not default_learner else [])
                                    + ([args.label] if args.label else [])) + ")"
    mode = (f"continuous batching (`max_num_seqs` {s['sim_cfg'].max_num_seqs}, `max_num_batched_tokens` "
            f"{s['sim_cfg'].max_num_batched_tokens}), " if continuous else "request-level batching, ")
    lines = [heading, "",
             f"`python scripts/learner_results.py --seeds {','.join(map(str, args.seeds))}"
             f"{' --sequential' if args.sequential else ''}{' --label ' + args.label if args.label else ''}"
             f"{' ' + ' '.join(args.overrides) if args.overrides else ''}` — default profile "
             f"(`{s['profile'].name}`), {mode}hard deadlines, default `bes-train` config (learner `{s['learner_name']}`), {len(args.seeds)} training seeds "
             f"(trained {'one program each' if args.sequential else 'in one vmapped program'}, {train_s:.0f} s on "
             "this machine); each policy evaluated on "
             f"{len(cfg.eval.seeds)} evaluation seeds x {int(cfg.eval.n_decisions)} requests per workload. "
             "Mean ± std over training seeds (baselines have no training seed: std 0). "
             f"Placement `{s['sim_cfg'].placement}`. Loads are multiples (`rate_x`) of static "
             f"OPT-6.7B's measured max_sustainable_rate under this placement, {s['cap_large']:.2f} req/s "
             "(availability >= 0.99, Poisson, uniform task mix; `bes_jax.eval.capacity.measured_capacity`).", "",
             "Evaluation protocol: the **tuning set** (`tuning.workloads` in `bes_jax/conf/train.yaml`: "
             + ", ".join(f"`{w}`" for w in cfg.tuning.workloads) + ") is where the learner's defaults were chosen "
             "and what training reports progress on; the **test set** below (`eval.workloads`: "
             + ", ".join(f"`{w}`" for w in cfg.eval.workloads) + ") was used for no choice. MAF minutes: "
             "training [0, 240), tuning [300, 330) and [400, 430) plus the whole Azure code trace, test "
             "[330, 360) and [440, 470) plus a Gamma workload.", ""]
    for w, rows in table.items():
        node = out["workloads"][w]
        lines += [f"### {w}: {node.get('kind')} {node.get('minutes', '')} mean rate {node['rate']:.1f} req/s", "",
                  "| router | performance | availability | % of peak |", "|---|---:|---:|---:|"]
        for r, v in rows.items():
            f = lambda k: f"{v[k]['mean']:.4f} ± {v[k]['std']:.4f}"
            lines.append(f"| {r} | {f('performance')} | {f('availability')} | {f('pct_of_peak')} |")
        lines.append("")
    section = "\n".join(lines)
    replace_section(REPO_ROOT / "docs" / "results.md", heading, section)
    print(section)


if __name__ == "__main__":
    sys.exit(main())
