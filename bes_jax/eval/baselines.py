"""Held-out evaluation of routers against every baseline, and the results table the CLIs print."""
from __future__ import annotations

import numpy as np

from bes_jax.workloads.from_config import build_workload

TABLE_COLUMNS = (("performance", "perf", "{:.4f}"), ("pct_of_peak", "%peak", "{:.3f}"),
                 ("availability", "avail", "{:.3f}"), ("frac_windows_ge_96", "win>=96", "{:.3f}"),
                 ("frac_windows_ge_98", "win>=98", "{:.3f}"), ("latency_p50", "p50 s", "{:.3f}"),
                 ("latency_p99", "p99 s", "{:.3f}"), ("n_rejected", "rej", "{:d}"), ("n_dropped", "drop", "{:d}"))


def format_table(reports: list[dict], names: list[str]) -> str:
    head = f"{'router':<22}" + "".join(f"{h:>10}" for _, h, _ in TABLE_COLUMNS) + "  share"
    lines = [head, "-" * len(head)]
    for rep, name in zip(reports, names):
        cells = []
        for key, _, fmt in TABLE_COLUMNS:
            v = rep.get(key)
            cells.append(f"{'-':>10}" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{fmt.format(v):>10}")
        share = " ".join(f"{s:.2f}" for s in rep.get("per_model_share", {}).values())
        lines.append(f"{name:<22}" + "".join(cells) + "  " + share)
    return "\n".join(lines)


def build_eval_workloads(ev, profile, capacity_large: float, section: str = "eval") -> dict:
    """``{name: (node, WorkloadParams)}`` for the ``workloads`` of an eval-like config node; every
    ``rate_x`` becomes ``rate = rate_x * capacity_large``."""
    from bes_jax.config import to_plain

    out = {}
    for name, node in ev.workloads.items():
        node = to_plain(node)
        node["rate"] = float(node.pop("rate_x")) * capacity_large
        out[name] = (node, build_workload(node, profile, field=f"{section}.workloads.{name}"))
    return out


def _mean_std(values) -> dict:
    """Mean and std over seeds of the finite values (a percentile of a run that completed nothing
    is NaN: it says nothing, and a NaN result only when every seed has one)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return {"mean": float(v.mean()) if v.size else float("nan"), "std": float(v.std()) if v.size else float("nan")}


def evaluate_against_baselines(profile, sim_cfg, routers, evals: dict, n_eval: int, seeds, window_s: float,
                               echo=None) -> dict:
    """Every router on every held-out workload, mean and std over evaluation seeds."""
    import jax
    import jax.numpy as jnp

    from bes_jax.env import make_serving_env
    from bes_jax.eval.metrics import CONTINUOUS_METRICS, SCALAR_METRICS, to_report
    from bes_jax.eval.rollout import eval_config, evaluate_on_devices, metric_windows

    eval_env = make_serving_env(profile, eval_config(sim_cfg, n_eval))
    keys = jnp.stack([jax.random.PRNGKey(int(s)) for s in seeds])
    results = {}
    for wname, (node, wp) in evals.items():
        params = eval_env.make_params(wp)
        n_windows = metric_windows(n_eval, window_s, wp)
        rows = {}
        # every router in one compiled program (the event loop is compiled once, not once per router),
        # its runs split over the local devices (one per core on a CPU where the caller asked for them)
        m_all = evaluate_on_devices(eval_env, routers, n_eval, window_s, n_windows, keys, params)
        S = len(seeds)
        for j, router in enumerate(routers):
            reps = [to_report(jax.tree.map(lambda x: x[j * S + i], m_all), profile.model_names, window_s)
                    for i in range(S)]
            # SCALAR_METRICS, plus the continuous-batching ones when the mode reports them
            names = SCALAR_METRICS + tuple(k for k in CONTINUOUS_METRICS if k in reps[0])
            rows[router.name] = {k: _mean_std([r[k] for r in reps]) for k in names}
            rows[router.name]["per_model_share"] = {
                mn: float(np.mean([r["per_model_share"][mn] for r in reps])) for mn in profile.model_names}
        results[wname] = {"workload": node, "routers": rows}
        if echo is not None:
            echo(f"\nheld-out workload {wname} (mean over {len(seeds)} seeds, {n_eval} requests each):")
            flat = [{k: v["mean"] if isinstance(v, dict) and "mean" in v else v for k, v in r.items()} for r in rows.values()]
            for f_ in flat:
                for k in ("n_rejected", "n_dropped"):
                    f_[k] = int(round(f_[k]))
            echo(format_table(flat, list(rows)))
    return results
