"""Measure the capacities the package ships (``bes_jax/data/capacity.json``).

Every load is a multiple of a measured capacity (SPEC, "Evaluation protocol"); a measurement is a
rate sweep of up to a CPU-minute. The package ships the measurements of its own default configs:
the main job (``bes-train`` defaults), request-level batching (``sim=default``) and every mode of
the experiment configs (``bes_jax/conf/experiment/*.yaml``). Their keys hold the simulator's code,
so after a change to it ``tests/test_capacity_table.py`` fails until this script runs again:

    python scripts/measure_capacities.py          # about 2 minutes on 2 CPU cores
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ["BES_JAX_CACHE_DIR"] = "off"  # measure, never read an earlier result

import yaml  # noqa: E402

from bes_jax.config import compose_train_config, sim_config_from  # noqa: E402
from bes_jax.eval import capacity  # noqa: E402
from bes_jax.profile import load_profile  # noqa: E402

EXPERIMENTS = Path(capacity.__file__).resolve().parents[1] / "conf" / "experiment"


def shipped_configs() -> dict[str, list[str]]:
    """Name -> ``bes-train`` overrides of every config whose capacity ships."""
    configs = {"bes-train defaults (the main job)": [], "request-level batching": ["sim=default"]}
    for path in sorted(EXPERIMENTS.glob("*.yaml")):
        for mode in yaml.safe_load(path.read_text()).get("modes") or []:
            configs[f"experiment {path.stem}, mode {mode['name']}"] = list(mode.get("train_overrides") or [])
    return configs


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(capacity.SHIPPED), help="the table to write (default: the package's)")
    args = ap.parse_args(argv)
    table, t0 = {}, time.perf_counter()
    configs = shipped_configs()
    for i, (name, overrides) in enumerate(configs.items()):
        cfg = compose_train_config(overrides)
        profile, sim_cfg = load_profile(cfg.profile), sim_config_from(cfg.sim)
        key = capacity.capacity_key(profile, sim_cfg)
        if key in table:
            print(f"[{i + 1}/{len(configs)}] {name}: same serving as {table[key]['configs'][0]}", flush=True)
            table[key]["configs"].append(name)
            continue
        t = time.perf_counter()
        rate = capacity.measure_capacity(profile, sim_cfg)
        done = time.perf_counter() - t0
        left = done / (i + 1) * (len(configs) - i - 1)
        print(f"[{i + 1}/{len(configs)}] {name}: {profile.name}, {sim_cfg.batching}, {sim_cfg.placement}: "
              f"{rate:.4f} req/s ({time.perf_counter() - t:.0f} s; about {left:.0f} s left)", flush=True)
        table[key] = {"req_per_s": rate, "profile": profile.name, "model": profile.model_names[-1], "configs": [name],
                      "overrides": overrides, "measured_on": f"{platform.machine()}, jax {_jax_version()}"}
    Path(args.out).write_text(json.dumps(table, indent=1) + "\n")
    print(f"{len(table)} capacities written to {args.out} in {time.perf_counter() - t0:.0f} s")


def _jax_version() -> str:
    import jax

    return jax.__version__


if __name__ == "__main__":
    main()
