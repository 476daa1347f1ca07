"""Training speed of the learners: env steps/s, gradient steps/s, and the wall time until the
policy beats greedy on the tuning set (compilation included), for 1 and N seeds trained in one
vmapped program; optionally the final policies' performance on the test set.

    python scripts/bench_train.py [--learners pqn,dqn] [--seeds 1,8] [--budget-s 60] [--write-docs]
                                  [--quick] [overrides like pqn.n_envs=2048 dqn.iterations=6000]

Learners: ``dqn`` (conf/dqn/default.yaml: the current default), ``dqn_fast`` (conf/dqn/fast.yaml:
1024 environments, uniform replay sampling), ``pqn`` (conf/pqn/default.yaml). Each is trained
chunk by chunk (`train_chunk`, vmapped over seeds); after every chunk each seed's greedy policy
is evaluated on every tuning workload (``tuning.workloads``, ``progress.n_decisions`` decisions,
one key): it *beats greedy* once the mean over the tuning workloads (and over seeds) exceeds
greedy's. The training clock counts compilation and the chunks, not these evaluations. Runs stop
at the learner's configured iterations or after ``--budget-s`` of training wall time.

The last line is one JSON object: the first learner's 1-seed figures (``env_steps_per_s``,
``time_to_beat_greedy_s``, ``learner``, ``seeds``) plus every row and the ratio to ``dqn``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

LEARNER_OVERRIDES = {"dqn": ["learner=dqn"], "dqn_fast": ["learner=dqn", "dqn=fast"], "pqn": ["learner=pqn"]}
#: --quick: a few chunks each, to check the script end to end (figures are not meaningful)
QUICK = {"dqn": ["dqn.iterations=600", "dqn.chunk_iterations=200", "dqn.learning_starts=200"],
         "dqn_fast": ["dqn.n_envs=128", "dqn.iterations=120", "dqn.chunk_iterations=40", "dqn.learning_starts=1000"],
         "pqn": ["pqn.n_envs=128", "pqn.iterations=192", "pqn.chunk_iterations=64"],
         "all": ["progress.n_decisions=300", "eval.n_decisions=400", "eval.seeds=[1000]", "train_family.bank_size=8"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--learners", default="pqn,dqn", help="comma-separated: pqn, dqn, dqn_fast (first: the headline)")
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8], help="seed counts")
    ap.add_argument("--budget-s", type=float, default=120.0, help="stop a run after this much training wall time")
    ap.add_argument("--no-test", action="store_true", help="skip the final test-set evaluation")
    ap.add_argument("--quick", action="store_true", help="tiny runs: check the script works")
    ap.add_argument("--write-docs", action="store_true", help="append a section to docs/benchmarks.md")
    ap.add_argument("--note", default="", help="a note for the docs section (e.g. 'machine shared')")
    ap.add_argument("--sim", default="default",
                    help="the sim config group (default: request-level batching, the paper's; e.g. continuous)")
    ap.add_argument("--devices", type=int, default=1,
                    help="PQN data parallel over this many devices (on a CPU: host devices, one per core)")
    ap.add_argument("--ceiling", action="store_true",
                    help="also time the simulator alone (random actions, the learner's environments, devices and "
                         "training bank): the most env steps/s any learner could train at here")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    learners = args.learners.split(",")
    bad = [x for x in learners if x not in LEARNER_OVERRIDES]
    if bad:
        ap.error(f"--learners: unknown {bad}; choose from {', '.join(LEARNER_OVERRIDES)}")

    if args.devices > 1:
        from bes_jax.env.devices import use_host_devices
        use_host_devices(args.devices)  # before JAX starts (CPU; a GPU host has its own devices)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from bes_jax import REPO_ROOT
    from bes_jax.agents.training import setup_training
    from bes_jax.config import compose_train_config
    from bes_jax.env import ServingEnv
    from bes_jax.eval.baselines import build_eval_workloads
    from bes_jax.eval.rollout import eval_config, make_evaluate, metric_windows
    from bes_jax.routers import Router, baseline_routers
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    from bench_sim import machine_name

    def compose(name):
        ov = ([f"sim={args.sim}"] + LEARNER_OVERRIDES[name] + (QUICK[name] + QUICK["all"] if args.quick else [])
              + list(args.overrides))
        if name == "pqn" and args.devices > 1:
            ov.append(f"pqn.devices={args.devices}")
        return compose_train_config(ov)

    machine = f"{machine_name()}; jax {jax.__version__} on {jax.devices()[0].platform}; sim={args.sim}"
    print(f"machine: {machine}", flush=True)
    rows, greedy_ref = [], {}
    for name in learners:
        cfg = compose(name)
        s = setup_training(cfg)
        L = s["learner"]
        prof, cap = s["profile"], s["cap_large"]
        n_prog, window = int(cfg.progress.n_decisions), float(cfg.eval.window_s)
        tuning = build_eval_workloads(cfg.tuning, prof, cap, section="tuning")
        tenv = ServingEnv(prof, eval_config(s["sim_cfg"], n_prog))
        tparams = {w: tenv.make_params(wp) for w, (_, wp) in tuning.items()}
        twin = {w: metric_windows(n_prog, window, wp) for w, (_, wp) in tuning.items()}
        tkeys = jnp.stack([jax.random.PRNGKey(7)])
        greedy = next(r for r in baseline_routers(prof) if r.name == "greedy")
        gkey = (n_prog, prof.name, json.dumps(s["sim_cfg"].to_dict(), sort_keys=True, default=str))
        if gkey not in greedy_ref:
            greedy_ref[gkey] = {w: float(jax.jit(make_evaluate(tenv, greedy, n_prog, window, twin[w]))(tkeys, tparams[w])
                                         ["performance"].mean()) for w in tuning}
        g_perf = greedy_ref[gkey]
        g_mean = float(np.mean(list(g_perf.values())))

        def tuning_perf_fn(w):
            def f(params, stats):
                r = Router("learned", L.greedy_policy(params, stats))
                return make_evaluate(tenv, r, n_prog, window, twin[w])(tkeys, tparams[w])["performance"].mean()
            return jax.jit(jax.vmap(f))

        tperf = {w: tuning_perf_fn(w) for w in tuning}
        print(f"\n== {name}: {s['learner_cfg']}", flush=True)
        print(f"greedy on the tuning set: {g_perf} (mean {g_mean:.4f})", flush=True)
        for n_seeds in args.seeds:
            keys = jnp.stack([jax.random.PRNGKey(k) for k in range(n_seeds)])
            if n_seeds == 1:  # no vmap: the program a single `bes-train` run compiles (a leading axis of 1 kept)
                one = lambda t: jax.tree.map(lambda x: x[0], t)
                many = lambda t: jax.tree.map(lambda x: x[None], t)
                init_j = jax.jit(lambda k: many(L.init(k[0])))
                chunk_j = jax.jit(lambda t: many(L.train_chunk(one(t))))
            else:
                init_j, chunk_j = jax.jit(jax.vmap(L.init)), jax.jit(jax.vmap(L.train_chunk))
            t0 = time.perf_counter()
            ts = jax.block_until_ready(init_j(keys))
            ts, _ = jax.block_until_ready(chunk_j(ts))
            first = time.perf_counter() - t0  # compilation + init + first chunk
            clock, chunk_s, beat_s, done, perf_hist = first, [], None, 1, []

            def check():
                per = {w: np.asarray(f(ts.params, ts.obs_stats)) for w, f in tperf.items()}  # [seeds] each
                mean_per_seed = np.mean(np.stack(list(per.values())), axis=0)
                perf_hist.append(float(mean_per_seed.mean()))
                return mean_per_seed

            m = check()
            if m.mean() > g_mean:
                beat_s = clock
            while done < L.n_chunks and (clock < args.budget_s or not chunk_s):  # >= 1 chunk timed after compiling
                t1 = time.perf_counter()
                ts, _ = jax.block_until_ready(chunk_j(ts))
                dt = time.perf_counter() - t1
                chunk_s.append(dt)
                clock += dt
                done += 1
                m = check()
                if beat_s is None and m.mean() > g_mean:
                    beat_s = clock
            per_chunk = float(np.median(chunk_s)) if chunk_s else first
            row = {"learner": name, "seeds": n_seeds, "n_envs": L.cfg.n_envs, "devices": getattr(L.cfg, "devices", 1),
                   "env_steps_per_s": n_seeds * L.env_steps_per_chunk / per_chunk,
                   "grad_steps_per_s": n_seeds * L.grad_steps_per_chunk / per_chunk,
                   "transitions_per_grad_step": L.env_steps_per_chunk / max(L.grad_steps_per_chunk, 1),
                   "time_to_beat_greedy_s": beat_s, "compile_and_first_chunk_s": first, "train_wall_s": clock,
                   "chunks": done, "decisions_per_seed": done * L.env_steps_per_chunk,
                   "tuning_perf_final": perf_hist[-1], "tuning_greedy": g_mean,
                   "seeds_beating_greedy": int((m > g_mean).sum())}
            if not args.no_test:
                evals = build_eval_workloads(cfg.eval, prof, cap)
                n_ev = int(cfg.eval.n_decisions)
                eenv = ServingEnv(prof, eval_config(s["sim_cfg"], n_ev))
                ekeys = jnp.stack([jax.random.PRNGKey(int(k)) for k in cfg.eval.seeds])
                test = {}
                for w, (_, wp) in evals.items():
                    p, nw = eenv.make_params(wp), metric_windows(n_ev, window, wp)

                    def f(params, stats):
                        r = Router("learned", L.greedy_policy(params, stats))
                        return make_evaluate(eenv, r, n_ev, window, nw)(ekeys, p)["performance"].mean()
                    test[w] = float(np.mean(np.asarray(jax.jit(jax.vmap(f))(ts.params, ts.obs_stats))))
                    if (w, n_ev) not in greedy_ref:
                        greedy_ref[(w, n_ev)] = float(jax.jit(make_evaluate(eenv, greedy, n_ev, window, nw))(ekeys, p)
                                                      ["performance"].mean())
                row["test_perf"] = test
                row["test_perf_mean"] = float(np.mean(list(test.values())))
                row["test_greedy_mean"] = float(np.mean([greedy_ref[(w, n_ev)] for w in evals]))
            if args.ceiling and n_seeds == 1:
                row["sim_alone_steps_per_s"] = sim_alone_rate(s, L.cfg.n_envs, getattr(L.cfg, "devices", 1))
                print(f"{name}: the simulator alone, random actions, {L.cfg.n_envs} environments of the training "
                      f"bank on {row['devices']} device(s): {row['sim_alone_steps_per_s']:,.0f} decisions/s (training at "
                      f"{row['env_steps_per_s'] / row['sim_alone_steps_per_s']:.2f}x that)", flush=True)
            rows.append(row)
            print(f"{name} x{n_seeds} seeds: {row['env_steps_per_s']:,.0f} env steps/s, {row['grad_steps_per_s']:,.0f} "
                  f"grad steps/s ({row['transitions_per_grad_step']:.0f} transitions per grad step), compile+first chunk "
                  f"{first:.1f} s; beats greedy on the tuning set after "
                  f"{'never' if beat_s is None else format(beat_s, '.1f') + ' s'} (tuning perf {perf_hist[-1]:.4f} vs "
                  f"greedy {g_mean:.4f} after {clock:.0f} s, {done} chunks)"
                  + (f"; test set {row['test_perf_mean']:.4f} (greedy {row['test_greedy_mean']:.4f})"
                     if "test_perf" in row else ""), flush=True)

    base = {r["seeds"]: r for r in rows if r["learner"] == "dqn"}
    for r in rows:
        b = base.get(r["seeds"])
        r["env_steps_ratio_vs_dqn"] = r["env_steps_per_s"] / b["env_steps_per_s"] if b else None
    if args.write_docs:
        write_docs(REPO_ROOT / "docs" / "benchmarks.md", rows, machine, args)
    head = rows[0]
    print(json.dumps({"env_steps_per_s": head["env_steps_per_s"], "time_to_beat_greedy_s": head["time_to_beat_greedy_s"],
                      "learner": head["learner"], "seeds": head["seeds"], "grad_steps_per_s": head["grad_steps_per_s"],
                      "env_steps_ratio_vs_dqn": head["env_steps_ratio_vs_dqn"], "machine": machine,
                      "quick": bool(args.quick), "rows": rows}))


def sim_alone_rate(s, n_envs, devices=1, steps=256, repeats=3):
    """Decisions/s of the simulator alone on the training bank (random actions, ``n_envs``
    environments, each on a workload drawn from the bank as the learners do; split over
    ``devices`` local devices as the learner's are): the ceiling on env steps/s of training on
    this machine. Best of ``repeats``."""
    import jax

    env, base, bank = s["env"], s["base_params"], s["bank"]
    n = n_envs // devices
    axes = jax.tree.map(lambda _: None, base).replace(workload=jax.tree.map(lambda _: 0, bank))
    index = jax.random.randint(jax.random.PRNGKey(1), (devices, n), 0, jax.tree.leaves(bank)[0].shape[0])
    workloads = jax.tree.map(lambda x: x[index], bank)  # [devices, n, ...]

    def reset(workload, key):
        return jax.vmap(env.reset, in_axes=(0, axes))(jax.random.split(key, n), base.replace(workload=workload))[1]

    def run(workload, st, key):
        params = base.replace(workload=workload)

        def body(st, k):
            k_a, k_s = jax.random.split(k)
            action = jax.random.randint(k_a, (n,), 0, env.n_models)
            _, st, reward, _, _ = env.step_batch(jax.random.split(k_s, n), st, action, params, axes)
            return st, reward.mean()
        return jax.lax.scan(body, st, jax.random.split(key, steps))[0]

    step = jax.pmap(run)  # one program per device, as the learner's shard_map
    keys = jax.random.split(jax.random.PRNGKey(0), devices)
    st = jax.block_until_ready(step(workloads, jax.pmap(reset)(workloads, keys), keys))  # compile and warm up
    best = 0.0
    for r in range(repeats):
        keys = jax.random.split(jax.random.PRNGKey(r + 1), devices)
        t0 = time.perf_counter()
        st = jax.block_until_ready(step(workloads, st, keys))
        best = max(best, steps * n_envs / (time.perf_counter() - t0))
    return best


def fmt_s(x):
    return "never" if x is None else f"{x:.1f}"


def write_docs(doc, rows, machine, args):
    lines = [f"\n### bench_train, learners ({time.strftime('%Y-%m-%d')}; {machine}"
             + ("; --quick" if args.quick else "") + f"; budget {args.budget_s:.0f} s)\n"]
    if args.note:
        lines.append(args.note + "\n")
    lines += ["| learner | seeds | envs | env steps/s | x dqn | grad steps/s | transitions/grad step | compile+first chunk (s) "
              "| beats greedy (tuning) after (s) | tuning perf / greedy | test perf / greedy |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        ratio = "-" if r["env_steps_ratio_vs_dqn"] is None else f"{r['env_steps_ratio_vs_dqn']:.1f}"
        test = f"{r['test_perf_mean']:.4f} / {r['test_greedy_mean']:.4f}" if "test_perf" in r else "-"
        lines.append(f"| {r['learner']} | {r['seeds']} | {r['n_envs']} | {r['env_steps_per_s']:,.0f} | {ratio} | "
                     f"{r['grad_steps_per_s']:,.0f} | {r['transitions_per_grad_step']:.0f} | "
                     f"{r['compile_and_first_chunk_s']:.1f} | {fmt_s(r['time_to_beat_greedy_s'])} | "
                     f"{r['tuning_perf_final']:.4f} / {r['tuning_greedy']:.4f} | {test} |")
    for r in rows:
        if "sim_alone_steps_per_s" in r:
            lines.append(f"\n{r['learner']}: the simulator alone (random actions, {r['n_envs']} environments of the "
                         f"training bank, {r['devices']} device(s)) runs {r['sim_alone_steps_per_s']:,.0f} decisions/s; training "
                         f"ran at {r['env_steps_per_s'] / r['sim_alone_steps_per_s']:.2f}x that.")
    with doc.open("a") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
