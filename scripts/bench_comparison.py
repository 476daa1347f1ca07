"""Speed of the comparison with the baselines, `bes-train`'s last step: every baseline router's
runs on one test workload in one compiled program on one device, against the same runs split over
one XLA CPU device per core (`bes_jax.eval.rollout.evaluate_on_devices`, what `bes-train` does).
Prints both times, the ratio, and whether the metrics agree (a percentile may round differently
in the last float bits). Every call compiles its program, as `bes-train` does once per test
workload (the program is built per call), so a call's time is compilation plus the runs.

    python scripts/bench_comparison.py [--requests 6000] [--workload maf_test_x5] [--write-docs] [bes-train overrides]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from bench_sim import machine_name


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=6000, help="requests per run (bes-train's eval.n_decisions)")
    ap.add_argument("--workload", default="maf_test_x5", help="a test workload of bes-train's config (eval.workloads)")
    ap.add_argument("--repeats", type=int, default=2, help="calls after the first (best reported)")
    ap.add_argument("--write-docs", action="store_true", help="append the figures to docs/benchmarks.md")
    ap.add_argument("overrides", nargs="*", help="bes-train overrides (default: the main job's config)")
    args = ap.parse_args(argv)
    for name in ("requests", "repeats"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} {getattr(args, name)}: need >= 1")

    from bes_jax.env.devices import usable_cores, use_host_devices
    use_host_devices(usable_cores())  # before JAX starts: one CPU device per core, as bes-train asks

    import jax
    import jax.numpy as jnp
    import numpy as np

    from bes_jax import REPO_ROOT
    from bes_jax.agents.training import setup_training
    from bes_jax.config import compose_train_config
    from bes_jax.env import make_serving_env
    from bes_jax.eval.baselines import build_eval_workloads
    from bes_jax.eval.rollout import eval_config, evaluate_on_devices, metric_windows
    from bes_jax.routers import baseline_routers

    cfg = compose_train_config(list(args.overrides))
    s = setup_training(cfg)
    evals = build_eval_workloads(cfg.eval, s["profile"], s["cap_large"])
    if args.workload not in evals:
        ap.error(f"--workload {args.workload!r}: not one of eval.workloads {sorted(evals)}")
    _, wp = evals[args.workload]
    window_s = float(cfg.eval.window_s)
    env = make_serving_env(s["profile"], eval_config(s["sim_cfg"], args.requests))
    params = env.make_params(wp)
    routers = baseline_routers(s["profile"])
    seeds = [int(x) for x in cfg.eval.seeds]  # bes-train's evaluation seeds
    keys = jnp.stack([jax.random.PRNGKey(x) for x in seeds])
    n_windows = metric_windows(args.requests, window_s, wp)
    D = jax.local_device_count()
    print(f"machine: {machine_name()}; jax {jax.__version__} on {jax.default_backend()}, {D} device(s); "
          f"{len(routers)} routers x {len(seeds)} seeds x {args.requests} requests on {args.workload} "
          f"({s['sim_cfg'].batching} batching, placement {s['sim_cfg'].placement})", flush=True)

    rows, out = [], {}
    for n_dev in sorted({1, D}):
        t = time.perf_counter()
        out[n_dev] = evaluate_on_devices(env, routers, args.requests, window_s, n_windows, keys, params, n_devices=n_dev)
        first = time.perf_counter() - t
        times = []
        for _ in range(args.repeats):  # each call builds and compiles its program again (bes-train: once per workload)
            t = time.perf_counter()
            evaluate_on_devices(env, routers, args.requests, window_s, n_windows, keys, params, n_devices=n_dev)
            times.append(time.perf_counter() - t)
        rows.append({"devices": n_dev, "first_s": first, "best_s": min(times)})
        print(f"{n_dev} device(s): first call {first:.1f} s, later calls {min(times):.1f} s (best of {args.repeats}; "
              "each compiles and runs)", flush=True)
    one, many = out[1], out[D]
    agree = all(np.allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=0, equal_nan=True)
                for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(many)))
    ratio_first = rows[0]["first_s"] / rows[-1]["first_s"]
    ratio_best = rows[0]["best_s"] / rows[-1]["best_s"]
    print(f"one device / {D} devices: {ratio_first:.2f}x first call, {ratio_best:.2f}x later calls; "
          f"metrics agree (rtol 1e-5): {agree}")
    if args.write_docs:
        doc = REPO_ROOT / "docs" / "benchmarks.md"
        lines = [f"\n### bench_comparison ({time.strftime('%Y-%m-%d')}; {machine_name()}; jax {jax.__version__} "
                 f"{jax.default_backend()}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; {len(routers)} routers x "
                 f"{len(seeds)} seeds x {args.requests} requests, {args.workload}, {s['sim_cfg'].batching} batching; "
                 f"best of {args.repeats})\n",
                 "| devices | first call (s) | later calls, best (s) |", "|---:|---:|---:|"]
        lines += [f"| {r['devices']} | {r['first_s']:.1f} | {r['best_s']:.1f} |" for r in rows]
        lines += ["", f"One device / {D}: **{ratio_first:.2f}x** first call, {ratio_best:.2f}x later calls (each "
                      f"compiles and runs, as `bes-train` per workload); metrics agree to 1e-5: {agree}.", ""]
        with doc.open("a") as fh:
            fh.write("\n".join(lines))
    print(json.dumps({"devices": D, "ratio_first_call": ratio_first, "ratio_later_calls": ratio_best, "agree": agree}))
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
