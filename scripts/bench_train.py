"""Training speed: environment steps/s and gradient steps/s, and wall time until the policy beats
the best static router on a held-out workload; for 1 seed and for N vmapped seeds.

    python scripts/bench_train.py [--seeds 1,8] [--write-docs] [overrides like dqn.n_envs=32]

The last line is one JSON object (1-seed figures, plus per-N results).
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8], help="comma-separated seed counts")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from bes_jax import REPO_ROOT
    from bes_jax.agents.training import setup_training
    from bes_jax.config import compose_train_config
    from bes_jax.env import make_serving_env
    from bes_jax.eval.baselines import build_eval_workloads
    from bes_jax.eval.rollout import eval_config, make_evaluate, metric_windows
    from bes_jax.routers import Router, baseline_routers
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    from bench_sim import machine_name

    cfg = compose_train_config(args.overrides)
    s = setup_training(cfg)
    init, chunk, train, greedy_policy = s["fns"].init, s["fns"].train_chunk, s["fns"].train, s["fns"].greedy_policy
    dq = s["dqn_cfg"]
    wname = str(cfg.progress.workload)
    node, wp = build_eval_workloads(cfg.eval, s["profile"], s["cap_large"])[wname]
    n_eval = int(cfg.progress.n_decisions)
    env = make_serving_env(s["profile"], eval_config(s["sim_cfg"], n_eval))
    params = env.make_params(wp)
    n_windows = metric_windows(n_eval, 5.0, wp)
    keys = jnp.stack([jax.random.PRNGKey(7), jax.random.PRNGKey(8)])
    statics = [r for r in baseline_routers(s["profile"]) if r.name.startswith("static")]
    best_static = max(float(jax.jit(make_evaluate(env, r, n_eval, 5.0, n_windows))(keys, params)["performance"].mean())
                      for r in statics)

    @jax.jit
    def perf(p, stats):
        return make_evaluate(env, Router("learned", greedy_policy(p, stats)), n_eval, 5.0, n_windows)(keys, params)["performance"].mean()

    print(f"machine: {machine_name()}; jax {jax.__version__} on {jax.devices()[0].platform}")
    print(f"config: {dq}")
    print(f"held-out check on {wname}: best static performance {best_static:.4f}")

    # --- 1 seed, chunk by chunk: throughput after compilation and time to beat the best static
    t0 = time.perf_counter()
    ts = jax.block_until_ready(jax.jit(init)(jax.random.PRNGKey(0)))
    chunk_j = jax.jit(chunk)
    ts_c, _ = jax.block_until_ready(chunk_j(ts))  # compile + first chunk
    compile_s = time.perf_counter() - t0
    train_clock = compile_s
    beat_s = train_clock if float(perf(ts_c.params, ts_c.obs_stats)) > best_static else None
    steady = []
    for _ in range(dq.iterations // dq.chunk_iterations - 1):
        t1 = time.perf_counter()
        ts_c, _ = jax.block_until_ready(chunk_j(ts_c))
        dt = time.perf_counter() - t1
        steady.append(dt)
        train_clock += dt
        if beat_s is None and float(perf(ts_c.params, ts_c.obs_stats)) > best_static:
            beat_s = train_clock
    per_chunk = float(np.median(steady)) if steady else compile_s
    env_sps = dq.chunk_iterations * dq.n_envs / per_chunk
    grad_sps = dq.chunk_iterations * dq.updates_per_iteration / per_chunk
    print(f"1 seed : {env_sps:,.0f} env steps/s, {grad_sps:,.0f} grad steps/s (median chunk), compile+first chunk "
          f"{compile_s:.1f} s; beats best static after {beat_s if beat_s is None else round(beat_s, 1)} s of training "
          "wall time (compilation included)")
    rows = [{"seeds": 1, "env_steps_per_s": env_sps, "grad_steps_per_s": grad_sps, "seconds_to_beat_static": beat_s,
             "compile_s": compile_s}]
    for n in [k for k in args.seeds if k > 1]:
        keys_n = jnp.stack([jax.random.PRNGKey(k) for k in range(n)])
        f = jax.jit(jax.vmap(train))
        t1 = time.perf_counter()
        out, _ = jax.block_until_ready(f(keys_n))
        first = time.perf_counter() - t1
        t1 = time.perf_counter()
        out, _ = jax.block_until_ready(f(keys_n))
        run = time.perf_counter() - t1
        beats = [float(perf(jax.tree.map(lambda x: x[i], out.params), jax.tree.map(lambda x: x[i], out.obs_stats))) > best_static
                 for i in range(n)]
        e = n * dq.iterations * dq.n_envs / run
        g = n * dq.iterations * dq.updates_per_iteration / run
        print(f"{n} seeds (vmap): whole run {run:.1f} s after compilation (first call {first:.1f} s); "
              f"{e:,.0f} env steps/s, {g:,.0f} grad steps/s in total; {sum(beats)}/{n} seeds beat the best static")
        rows.append({"seeds": n, "env_steps_per_s": e, "grad_steps_per_s": g, "run_s": run, "first_call_s": first,
                     "seeds_beating_static": int(sum(beats))})
    if args.write_docs:
        doc = REPO_ROOT / "docs" / "benchmarks.md"
        lines = [f"\n### bench_train ({time.strftime('%Y-%m-%d')}; {machine_name()}; jax {jax.__version__} "
                 f"{jax.devices()[0].platform}; n_envs={dq.n_envs}, iterations={dq.iterations}, batch={dq.batch_size})\n",
                 "| seeds | env steps/s | grad steps/s | notes |", "|---:|---:|---:|---|"]
        for r in rows:
            note = (f"compile+first chunk {r['compile_s']:.1f} s; beats best static after "
                    f"{'never' if r['seconds_to_beat_static'] is None else format(r['seconds_to_beat_static'], '.1f')} s"
                    if r["seeds"] == 1 else f"whole run {r['run_s']:.1f} s; {r['seeds_beating_static']}/{r['seeds']} beat best static")
            lines.append(f"| {r['seeds']} | {r['env_steps_per_s']:,.0f} | {r['grad_steps_per_s']:,.0f} | {note} |")
        with doc.open("a") as fh:
            fh.write("\n".join(lines) + "\n")
    print(json.dumps({"env_steps_per_s": rows[0]["env_steps_per_s"], "grad_steps_per_s": rows[0]["grad_steps_per_s"],
                      "seconds_to_beat_static": rows[0]["seconds_to_beat_static"], "vmapped": rows[1:]}))


if __name__ == "__main__":
    sys.exit(main())
