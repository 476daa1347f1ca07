"""`bes-eval`: evaluate one router on one workload with the JAX or the reference simulator.

Both simulators are fed the same arrivals (drawn once from the workload with the seed), so
their per-request results can be compared directly. Prints a table; writes SPEC-named JSON.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from bes_jax import CONF_DIR
from bes_jax.agents.export import adopt_policy_sim_config
from bes_jax.config import sim_config_from
from bes_jax.eval.baselines import format_table
from bes_jax.profile import ProfileError, load_profile
from bes_jax.routers.factory import parse_router_config
from bes_jax.workloads.from_config import build_workload

# jax reports missing TPU/GPU plugins at INFO; not news on a CPU machine.
logging.getLogger("jax").setLevel(logging.WARNING)
log = logging.getLogger("bes-eval")


def explicit_sim_overrides() -> set[str]:
    """The ``sim`` fields set on the command line (``sim.deadline_scale=2``), from Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig
        overrides = HydraConfig.get().overrides.task
    except (ImportError, ValueError, AttributeError):
        return set()
    keys = (str(o).split("=", 1)[0].lstrip("+~") for o in overrides)
    return {k[len("sim."):].split(".")[0] for k in keys if k.startswith("sim.")}


def run_eval(cfg: DictConfig, explicit_sim: set[str] | None = None) -> dict:
    """One evaluation. ``explicit_sim``: the sim fields the user set on purpose, which a policy's
    observation settings do not override (None: the command-line ``sim.*`` overrides)."""
    import jax

    if cfg.get("x64", True):
        # float64 clocks for arrival sampling and the JAX simulator alike: both simulators then
        # see bit-identical arrivals and agree per request to float64 precision.
        jax.config.update("jax_enable_x64", True)
    profile = load_profile(cfg.profile)
    router_cfg = OmegaConf.to_container(cfg.router, resolve=True)
    spec = parse_router_config(router_cfg, profile.model_names, where=f"profile {profile.name!r}")
    sim_cfg = sim_config_from(cfg.sim)
    if spec.name == "policy":
        # the policy's observation settings, as bes-serve adopts them; sim.* set explicitly are kept
        sim_cfg = adopt_policy_sim_config(spec.path, sim_cfg, explicit_sim if explicit_sim is not None
                                          else explicit_sim_overrides(), prefix="sim.")
    n = int(cfg.n_decisions)
    if n <= 0:
        raise ValueError(f"n_decisions = {n}: must be positive")
    from bes_jax.workloads import sample_arrivals
    wp = build_workload(cfg.workload, profile)
    key = jax.random.PRNGKey(int(cfg.seed))
    tokens = {}
    if sim_cfg.batching == "continuous":
        # the trace's tokens, or draws from the profile's task distributions: both simulators
        # then serve exactly the same requests
        profile.require_continuous()
        times, tasks, prompt, output = sample_arrivals(key, wp, n + 1, tokens=True, profile=profile)
        tokens = {"prompt": prompt, "output": output}
    else:
        times, tasks = sample_arrivals(key, wp, n + 1)
    times, tasks = np.asarray(times, np.float64), np.asarray(tasks, np.int64)
    times = times - times[0]  # both simulators replay the same clock, starting at 0
    if cfg.simulator.name == "jax":
        from bes_jax.eval.replay import run_jax_on_arrivals
        report, per_request = run_jax_on_arrivals(profile, sim_cfg, router_cfg, times, tasks, n,
                                                  seed=int(cfg.seed), window_s=float(cfg.window_s), **tokens)
    elif cfg.simulator.name == "reference":
        from bes_jax.eval.replay import run_reference_on_arrivals
        report, per_request = run_reference_on_arrivals(profile, sim_cfg, router_cfg, times, tasks, n,
                                                        seed=int(cfg.seed), window_s=float(cfg.window_s), **tokens)
    else:
        raise ValueError(f"simulator.name = {cfg.simulator.name!r}: choose jax or reference")
    report["config"] = {
        "profile": profile.name, "router": router_cfg, "simulator": cfg.simulator.name,
        "workload": OmegaConf.to_container(cfg.workload, resolve=True), "sim": sim_cfg.to_dict(),
        "n_decisions": n, "seed": int(cfg.seed),
    }
    print(format_table([report], [spec.label if spec.name != "policy" else "policy"]))
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"metrics written to {cfg.out}")
    if cfg.requests_out:
        Path(cfg.requests_out).parent.mkdir(parents=True, exist_ok=True)
        from bes_jax.eval.replay import CONTINUOUS_COLUMNS, REQUEST_COLUMNS
        cols = REQUEST_COLUMNS + (CONTINUOUS_COLUMNS if "first_token" in per_request else ())
        ints = {"task", "model", "status", "prompt_tokens", "output_tokens"}
        header = ",".join(("request",) + cols)
        rows = np.column_stack([np.arange(n)] + [np.asarray(per_request[c], np.float64) for c in cols])
        np.savetxt(cfg.requests_out, rows, delimiter=",", header=header, comments="",
                   fmt=["%d"] + ["%d" if c in ints else "%.9f" for c in cols])
        print(f"per-request results written to {cfg.requests_out}")
    return report


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="eval")
def _main(cfg: DictConfig) -> None:
    try:
        run_eval(cfg)
    except (ProfileError, ValueError, FileNotFoundError, KeyError) as e:
        print(f"bes-eval: error: {e}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
