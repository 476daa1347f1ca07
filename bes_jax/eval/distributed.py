"""One large evaluation split across hosts with `jax.distributed`.

Environments never interact, so an evaluation of E environments (workloads x seeds) splits into
contiguous shards, one per process: each process runs its shard with the ordinary compiled
evaluation (:func:`bes_jax.eval.rollout.make_evaluate`) on its own devices, and the per-environment
metrics are gathered (`jax.experimental.multihost_utils.process_allgather`) so that every process
holds the metrics of all E environments, in order, exactly as one process running all of them
would compute them (each environment's result depends only on its own key and parameters).

    # on each of P hosts (or P processes on one), i = 0 .. P-1:
    python -m bes_jax.eval.distributed --coordinator HOST0:1234 --num-processes P --process-id i \\
        --router greedy --n-seeds 4096 --out eval.json [train-config overrides, e.g. eval.n_decisions=6000]

Under Slurm (``srun``) or on a Cloud TPU, ``jax.distributed.initialize()`` finds the coordinator
itself: pass ``--auto``. When to use this rather than a multirun: docs/scaling.md.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               auto: bool = False) -> None:
    """`jax.distributed.initialize` with CPU collectives (gloo) so CPU-only hosts can gather too.

    ``auto``: let JAX discover the cluster (Slurm, TPU pods, ...). Nothing happens for a single
    process with no coordinator."""
    import jax

    if not auto and (num_processes is None or num_processes <= 1) and coordinator is None:
        return
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError):  # an older/newer JAX without the option: its default
        pass
    if auto:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=int(num_processes),
                                   process_id=int(process_id))


def shard_bounds(n: int, n_processes: int, index: int) -> tuple[int, int, int]:
    """``(start, stop, per)``: process ``index``'s contiguous slice of ``n`` items padded to
    ``per * n_processes`` (the padding repeats the last item; it is dropped after the gather)."""
    if n <= 0:
        raise ValueError(f"distributed evaluation: {n} environments; need at least 1")
    per = -(-n // n_processes)
    return index * per, (index + 1) * per, per


GATHER_TIMEOUT_S = 3600.0
_gathers = itertools.count()


class GatherTimeout(RuntimeError):
    """Not every process reached a gather within its timeout."""


def wait_for_all_processes(timeout_s: float = GATHER_TIMEOUT_S) -> None:
    """Block until every process arrives, through the coordination service.

    XLA's CPU collectives (gloo) give up when a peer is 30 s late to the first collective; one
    process can easily be that far behind (a capacity measurement, a slower host, a loaded
    machine), so every gather waits here first, with a deadline the caller chooses."""
    import jax
    from orbax.checkpoint.multihost import get_barrier_sync_fn

    if jax.process_count() == 1:
        return
    key = f"bes_jax_gather_{next(_gathers)}"
    try:
        get_barrier_sync_fn()(key=key, timeout_ms=int(timeout_s * 1000))
    except Exception as e:  # the coordination service's own error type is not public
        raise GatherTimeout(f"distributed evaluation: process {jax.process_index()} waited {timeout_s:.0f} s "
                           f"at {key} and not all {jax.process_count()} processes arrived ({e})") from e


def gather_tree(tree, n: int, timeout_s: float = GATHER_TIMEOUT_S):
    """Concatenate every process's shard ``[per, ...]`` of each leaf into ``[n, ...]`` (in process
    order) on every process, waiting up to ``timeout_s`` for the slowest one."""
    import jax
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return jax.tree.map(lambda x: np.asarray(x)[:n], tree)
    wait_for_all_processes(timeout_s)
    g = multihost_utils.process_allgather(tree, tiled=False)  # [P, per, ...]
    return jax.tree.map(lambda x: np.asarray(x).reshape((-1,) + np.asarray(x).shape[2:])[:n], g)


def evaluate_sharded(evaluate, keys, params, params_axis=None, timeout_s: float = GATHER_TIMEOUT_S):
    """``evaluate(keys[k], params) -> metrics [k, ...]`` over all ``keys`` [E], split over the
    processes of `jax.distributed` (each runs a contiguous shard), gathered on every process.

    ``params`` is shared by all environments, or with ``params_axis`` (a `vmap` in_axes tree,
    0 on the leaves that differ per environment) batched like ``keys``."""
    import jax
    import jax.numpy as jnp

    E = int(keys.shape[0])
    P, i = jax.process_count(), jax.process_index()
    start, stop, per = shard_bounds(E, P, i)
    idx = np.minimum(np.arange(start, stop), E - 1)  # pad with the last environment
    take = lambda x: jnp.asarray(np.asarray(x)[idx])
    local_keys = take(keys)
    if params_axis is None:
        local_params = params
    else:
        local_params = jax.tree.map(lambda x, a: x if a is None else take(x), params, params_axis,
                                    is_leaf=lambda x: x is None)
    m = jax.jit(evaluate)(local_keys, local_params)
    return gather_tree(jax.device_get(m), E, timeout_s)


def run(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--coordinator", help="HOST:PORT of process 0 (jax.distributed coordinator)")
    ap.add_argument("--num-processes", type=int, default=1)
    ap.add_argument("--process-id", type=int, default=0)
    ap.add_argument("--auto", action="store_true", help="jax.distributed.initialize() discovers the cluster (Slurm, TPU)")
    ap.add_argument("--gather-timeout", type=float, default=GATHER_TIMEOUT_S,
                    help="seconds a process waits for the others before each gather")
    ap.add_argument("--router", default="greedy",
                    help="greedy, random, static:MODEL, or policy:DIR (an exported policy)")
    ap.add_argument("--n-seeds", type=int, default=64, help="environments (evaluation seeds) per workload")
    ap.add_argument("--workloads", default=None, help="comma-separated names from eval.workloads (default: all)")
    ap.add_argument("--out", default=None, help="JSON written by process 0: per-workload means and per-env metrics")
    ap.add_argument("overrides", nargs="*", help="bes-train config overrides (eval.n_decisions=..., sim.*=...)")
    args = ap.parse_args(argv)
    initialize(args.coordinator, args.num_processes, args.process_id, args.auto)

    import jax
    import jax.numpy as jnp

    from bes_jax.config import compose_train_config, sim_config_from
    from bes_jax.env import ServingEnv
    from bes_jax.eval.baselines import build_eval_workloads
    from bes_jax.eval.capacity import measured_capacity
    from bes_jax.eval.rollout import eval_config, make_evaluate, metric_windows
    from bes_jax.profile import load_profile
    from bes_jax.routers import baseline_routers

    cfg = compose_train_config(args.overrides)
    profile = load_profile(cfg.profile)
    sim_cfg = sim_config_from(cfg.sim)
    if args.router.startswith("policy:"):
        from bes_jax.agents.policy import load_policy_router
        router = load_policy_router(args.router.split(":", 1)[1], profile)
    else:
        routers = {r.name: r for r in baseline_routers(profile)}
        if args.router not in routers:
            raise ValueError(f"--router {args.router!r}: choose from {', '.join(routers)} or policy:DIR")
        router = routers[args.router]
    evals = build_eval_workloads(cfg.eval, profile, measured_capacity(profile, sim_cfg))
    names = list(evals) if args.workloads is None else args.workloads.split(",")
    unknown = [n for n in names if n not in evals]
    if unknown:
        raise ValueError(f"--workloads: unknown {unknown}; eval.workloads: {list(evals)}")
    n_dec, window_s = int(cfg.eval.n_decisions), float(cfg.eval.window_s)
    env = ServingEnv(profile, eval_config(sim_cfg, n_dec))
    keys = jnp.stack([jax.random.PRNGKey(s) for s in range(args.n_seeds)])
    t0 = time.perf_counter()
    out = {"router": router.name, "n_seeds": args.n_seeds, "n_decisions": n_dec, "processes": jax.process_count(),
           "workloads": {}}
    for name in names:
        node, wp = evals[name]
        params = env.make_params(wp)
        ev = make_evaluate(env, router, n_dec, window_s, metric_windows(n_dec, window_s, wp))
        m = evaluate_sharded(ev, keys, params, timeout_s=args.gather_timeout)
        scalars = {k: np.asarray(v) for k, v in m.items() if np.asarray(v).ndim == 1}
        out["workloads"][name] = {"mean": {k: float(np.mean(v)) for k, v in scalars.items()},
                                  "per_env": {k: v.tolist() for k, v in scalars.items()}}
    out["seconds"] = time.perf_counter() - t0
    if jax.process_index() == 0:
        for name, r in out["workloads"].items():
            perf = r["mean"].get("performance")
            print(f"{name}: {args.n_seeds} environments over {jax.process_count()} process(es), "
                  f"performance {perf if perf is None else round(perf, 4)}", flush=True)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return out


def main(argv=None) -> None:
    try:
        run(argv)
    except (ValueError, FileNotFoundError, KeyError, GatherTimeout) as e:
        print(f"bes_jax.eval.distributed: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
