"""Helpers shared by the Hydra CLIs: profile, simulator config, workloads, tables."""
from __future__ import annotations

import numpy as np
from omegaconf import DictConfig, OmegaConf

from bes_jax.profile import Profile, load_profile
from bes_jax.sim_config import SimConfig, sim_config_from_mapping

TABLE_COLUMNS = (("performance", "perf", "{:.4f}"), ("pct_of_peak", "%peak", "{:.3f}"),
                 ("availability", "avail", "{:.3f}"), ("frac_windows_ge_96", "win>=96", "{:.3f}"),
                 ("frac_windows_ge_98", "win>=98", "{:.3f}"), ("latency_p50", "p50 s", "{:.3f}"),
                 ("latency_p99", "p99 s", "{:.3f}"), ("n_rejected", "rej", "{:d}"), ("n_dropped", "drop", "{:d}"))


def load_profile_for(cfg: DictConfig) -> Profile:
    return load_profile(cfg.profile)


def sim_config_from(node) -> SimConfig:
    return sim_config_from_mapping(OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node)


def build_workload(node, profile: Profile, **pad):
    """WorkloadParams from a ``bes_jax/conf/workload/*.yaml`` node (`kind` picks the builder)."""
    from bes_jax import workloads as W

    node = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    kind = node.get("kind")
    mix = node.get("mix")
    mix = None if mix is None else np.asarray(mix, np.float64)
    common = dict(n_tasks=profile.n_tasks, mix=mix, **pad)
    if kind == "poisson":
        return W.poisson(float(node["rate"]), **common)
    if kind == "gamma":
        return W.gamma(float(node["rate"]), float(node["cv"]), **common)
    if kind == "schedule":
        return W.schedule(list(node["rates"]), float(node["window_s"]), cv=float(node.get("cv", 1.0)), **common)
    if kind == "maf":
        return W.maf(_path(node["path"]), target_mean_rate=node.get("rate"), time_scale=float(node.get("time_scale", 1.0)),
                     minutes=node.get("minutes"), cv=float(node.get("cv", 1.0)), **common)
    if kind == "trace":
        if node.get("span") is not None:  # a part of the trace (fractions of its arrivals), e.g. the held-out half
            from bes_jax.cli.train import trace_part
            try:
                times = trace_part(_path(node["path"]), node["span"])
            except ValueError as e:
                raise ValueError(f"workload.{e}") from None
            return W.trace(times=times, target_mean_rate=node.get("rate"), **common)
        return W.trace(_path(node["path"]), target_mean_rate=node.get("rate"), column=node.get("column"), **common)
    raise ValueError(f"workload.kind = {kind!r}: choose poisson, gamma, schedule, maf or trace")


def _path(p, field: str = "workload.path") -> str:
    """A config's file value as a path (``pkg:NAME``: a shipped file); see :func:`bes_jax.data.resolve_path`."""
    from bes_jax.data import resolve_path

    return resolve_path(p, field)


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
