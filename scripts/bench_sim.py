"""Decisions/s of the JAX simulator vs the plain-Python reference on the same work.

Greedy router, default profile, a bursty workload: in request mode (`--batching request`) a
MAF-derived schedule; in continuous mode the Azure LLM code trace replayed with its own prompt
and output token counts (rescaled in time to `--rate`). For each N the program is
compiled once (time shown apart) and then timed on fresh runs (best and median of
--repeats), on one device and, on a multi-core CPU, also sharded over one device per core
(N environments per device; they never interact, so the shards run independently:
bes_jax.env.devices). The reference simulator runs the same router on arrivals drawn from
the same workload, in one process. The last line is one JSON object.

    python scripts/bench_sim.py [--batching request|continuous] [--n-envs 1 64 1024 8192] [--steps 200]
                                [--devices auto] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def machine_name() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-envs", type=int, nargs="+", default=[1, 64, 1024, 8192])
    ap.add_argument("--steps", type=int, default=200, help="decisions per environment in the timed run")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per N (best and median reported)")
    ap.add_argument("--reference-decisions", type=int, default=20000)
    ap.add_argument("--profile", default="opt-a100-80gb")
    ap.add_argument("--placement", choices=["exclusive", "concurrent"], default="exclusive",
                    help="GPU sharing (the simulator's default: exclusive)")
    ap.add_argument("--batching", choices=["request", "continuous"], default="request",
                    help="serving model: request-level batches (the paper's) or continuous batching")
    ap.add_argument("--rate", type=float, default=40.0,
                    help="continuous mode: mean arrival rate (req/s) of the replayed trace")
    ap.add_argument("--rate-x", type=float, default=3.0, help="mean rate, x static OPT-6.7B's nominal capacity (the load of the figures in docs/benchmarks.md)")
    ap.add_argument("--devices", default="auto",
                    help="CPU devices to shard over (auto: one per core; 1: no sharding)")
    ap.add_argument("--occupancy", type=int, default=0, metavar="DECISIONS",
                    help="continuous mode: also route this many decisions in one environment and print how full "
                         "the running sets and waiting queues are at decision times (what an event's rows hold)")
    ap.add_argument("--write-docs", action="store_true", help="append the figures to docs/benchmarks.md")
    args = ap.parse_args(argv)
    from bes_jax.env.devices import shard_envs, use_host_devices
    n_dev = (os.cpu_count() or 1) if args.devices == "auto" else int(args.devices)
    if n_dev > 1:
        use_host_devices(n_dev)  # before JAX starts; only the CPU backend reads it

    import jax
    import jax.numpy as jnp
    import numpy as np

    from bes_jax import REPO_ROOT
    from bes_jax import workloads as W
    from bes_jax.env import make_serving_env
    from bes_jax.eval.capacity import nominal_capacity
    from bes_jax.profile import load_profile
    from bes_jax.reference.continuous import ContinuousReferenceSimulator
    from bes_jax.reference.simulator import ReferenceSimulator
    from bes_jax.routers import greedy_action
    from bes_jax.sim_config import SimConfig

    profile = load_profile(args.profile)
    cfg = SimConfig(placement=args.placement, batching=args.batching)
    traces = REPO_ROOT.parent / "shared" / "traces"
    if args.batching == "request":
        rate = args.rate_x * float(nominal_capacity(profile, cfg)[-1])  # the load docs/benchmarks.md was measured at
        wp = W.maf(str(traces / "maf2019_invitro_500fn_min480-959.csv"), target_mean_rate=rate, time_scale=6.0,
                   minutes=[0, 60], n_tasks=profile.n_tasks)
        what = f"MAF minutes 0-60, mean {rate:.1f} req/s (x{args.rate_x} static OPT-6.7B nominal capacity)"
    else:
        rate = args.rate
        wp = W.trace(str(traces / "AzureLLMInferenceTrace_code.csv"), target_mean_rate=rate, n_tasks=profile.n_tasks)
        what = f"Azure LLM code trace with its token counts, mean {rate:.1f} req/s"
    env = make_serving_env(profile, cfg)
    params = env.make_params(wp)
    device = jax.devices()[0]
    n_dev = jax.local_device_count() if device.platform == "cpu" else 1
    print(f"machine: {machine_name()}; jax {jax.__version__} on {device.platform} ({device.device_kind})")
    print(f"workload: {what}; greedy router; batching {cfg.batching}; placement {cfg.placement}")

    def make(n):
        v_greedy = jax.vmap(greedy_action, in_axes=(0, None))

        def run(keys):  # keys [n]: one environment each
            _, st = jax.vmap(env.reset, in_axes=(0, None))(keys, params)

            def body(st, k):
                a = v_greedy(st, params)
                _, st, r, _, _ = env.step_batch(jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, k), st, a, params)
                return st, r

            st, rs = jax.lax.scan(body, st, jnp.arange(args.steps))
            return rs.sum(0), st.decision
        return run

    rows = []
    layouts = [(n, 1) for n in args.n_envs] + ([(n, n_dev) for n in args.n_envs if n > 1] if n_dev > 1 else [])
    for n, d in layouts:
        f = shard_envs(make(n), d)
        keys = lambda seed: jax.random.split(jax.random.PRNGKey(seed), n * d)
        t0 = time.perf_counter()
        jax.block_until_ready(f(keys(0)))
        compile_s = time.perf_counter() - t0
        runs = []
        for rep in range(args.repeats):  # a fresh seed each time: no cached result
            t0 = time.perf_counter()
            _, decided = jax.block_until_ready(f(keys(1 + rep)))
            runs.append((int(np.asarray(decided).sum()) / (time.perf_counter() - t0), time.perf_counter() - t0))
        dps, run_s = max(runs)
        median = float(np.median([r[0] for r in runs]))
        rows.append({"n_envs": n * d, "devices": d, "compile_and_first_run_s": compile_s, "run_s": run_s,
                     "decisions_per_s": dps, "median_decisions_per_s": median})
        print(f"JAX  N={n * d:>6} on {d} device(s): compile+first run {compile_s:6.2f} s | best timed run {run_s:7.3f} s "
              f"| {dps:>12,.0f} decisions/s (median of {args.repeats}: {median:,.0f})", flush=True)

    if args.occupancy and args.batching == "continuous":
        print(occupancy(env, params, args.occupancy, jax, jnp, np, greedy_action))

    ref_s = []
    if args.batching == "request":
        times, tasks = W.sample_arrivals(jax.random.PRNGKey(3), wp, args.reference_decisions)
        ref = ReferenceSimulator(profile, cfg)
        run_ref = lambda: ref.run(np.asarray(times, np.float64), np.asarray(tasks), "greedy", drain=False)
    else:
        times, tasks, prompt, output = W.sample_arrivals(jax.random.PRNGKey(3), wp, args.reference_decisions, tokens=True)
        ref = ContinuousReferenceSimulator(profile, cfg)
        run_ref = lambda: ref.run(np.asarray(times, np.float64), np.asarray(tasks), prompt, output, "greedy", drain=False)
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        run_ref()
        ref_s.append(time.perf_counter() - t0)
    ref_s = min(ref_s)  # best against best
    ref_dps = args.reference_decisions / ref_s
    print(f"reference (heapq, 1 process): {args.reference_decisions} decisions in {ref_s:.2f} s (best of {args.repeats}) "
          f"| {ref_dps:,.0f} decisions/s")
    best = max(rows, key=lambda r: r["decisions_per_s"])
    ratio = best["decisions_per_s"] / ref_dps
    print(f"best JAX: N={best['n_envs']} on {best['devices']} device(s) at {best['decisions_per_s']:,.0f} decisions/s "
          f"= {ratio:,.0f}x the reference ({ratio / best['devices']:,.0f}x per core used)")
    if args.write_docs:
        doc = REPO_ROOT / "docs" / "benchmarks.md"
        lines = [f"\n### bench_sim ({time.strftime('%Y-%m-%d')}; {machine_name()}; jax {jax.__version__} "
                 f"{device.platform}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; batching {cfg.batching}; "
                 f"placement {cfg.placement}; {what}; "
                 f"best of {args.repeats})\n",
                 "| N envs | devices | compile + first run (s) | timed run (s) | decisions/s | median |",
                 "|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['n_envs']} | {r['devices']} | {r['compile_and_first_run_s']:.2f} | {r['run_s']:.3f} | "
                  f"{r['decisions_per_s']:,.0f} | {r['median_decisions_per_s']:,.0f} |" for r in rows]
        lines += ["", f"Reference simulator (one process): {ref_dps:,.0f} decisions/s. Best JAX / reference: "
                  f"**{ratio:,.0f}x** ({ratio / best['devices']:,.0f}x per core used).", ""]
        with doc.open("a") as fh:
            fh.write("\n".join(lines))
    print(json.dumps({"decisions_per_s": best["decisions_per_s"], "n_envs": best["n_envs"], "devices": best["devices"],
                      "ratio_vs_reference": ratio, "placement": cfg.placement, "batching": cfg.batching}))


def occupancy(env, params, n, jax, jnp, np, greedy_action) -> str:
    """Running-set sizes and waiting-queue lengths per replica at ``n`` decision times (one
    environment, greedy): how many of a replica's `max_num_seqs` rows an event reads are live."""
    from bes_jax.env.continuous import N_RUN, Q_LEN

    @jax.jit
    def run(key):
        _, st = env.reset(key, params)

        def body(st, k):
            _, st, _, _, _ = env.step(jax.random.fold_in(key, k), st, greedy_action(st, params), params)
            return st, (st.rep[:, N_RUN], st.rep[:, Q_LEN])
        return jax.lax.scan(body, st, jnp.arange(n))[1]

    n_run, q_len = map(np.asarray, run(jax.random.PRNGKey(0)))
    need = (n_run + np.minimum(q_len, env.window)).max(1)  # rows an admission may fill, busiest replica
    pct = lambda x: "/".join(f"{v:.0f}" for v in np.percentile(x, [50, 90, 99, 100]))
    return (f"occupancy over {n} decisions (max_num_seqs {env.max_seqs}): running set per replica mean "
            f"{n_run.mean():.1f}, busiest replica p50/p90/p99/max {pct(n_run.max(1))}; waiting queue mean "
            f"{q_len.mean():.1f}, busiest {pct(q_len.max(1))}; running + admissible rows of the busiest replica "
            f"<= 16 at {np.mean(need <= 16):.0%} of decisions, <= 32 at {np.mean(need <= 32):.0%}")


if __name__ == "__main__":
    sys.exit(main())
