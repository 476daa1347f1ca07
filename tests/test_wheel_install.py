"""A non-editable install works: build the wheel, install it into a fresh virtual environment and
run `bes-eval` and a tiny `bes-train` from an empty directory (configs, profiles and the trace
samples must come from the installed package, not from the repository).

The venv sees the system site-packages (jax, hydra, ... are not downloaded), so the test checks
that ``bes_jax`` itself is imported from the venv. Takes about a minute on 2 cores; set
``BES_SKIP_WHEEL_TEST=1`` to skip it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(os.environ.get("BES_SKIP_WHEEL_TEST", "") not in ("", "0"),
                                reason="BES_SKIP_WHEEL_TEST is set")

TINY = ["sim=default", "dqn.iterations=200", "dqn.chunk_iterations=100", "dqn.learning_starts=50", "dqn.n_envs=4",
        "eval.n_decisions=300", "eval.seeds=[1000]", "progress.n_decisions=200", "train_family.bank_size=4"]


def tiny_train_overrides() -> tuple[list[str], str]:
    """TINY plus: only one test workload (a trace replay when there is one) and the progress
    workload are evaluated, since every (workload, router) pair is one more XLA compile; the
    tuning set (when the config has one) is kept: it is only built, and reads the shipped samples.
    Returns (overrides, the kept test workload)."""
    from bes_jax.config import compose_train_config

    cfg = compose_train_config(TINY)
    tests = list(cfg.eval.workloads)
    keep = next((n for n in tests if cfg.eval.workloads[n].kind == "trace"), tests[0])
    drop = [n for n in tests if n not in (keep, cfg.progress.workload)]
    return TINY + [f"~eval.workloads.{n}" for n in drop], keep


def _run(cmd, cwd, env, timeout=300):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A venv with the wheel installed; returns (venv bin dir, env for subprocesses, work dir)."""
    tmp = tmp_path_factory.mktemp("wheel")
    # Build from a copy of what the wheel is made of, so nothing is written into the checkout.
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "bes_jax", src / "bes_jax", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["JAX_PLATFORMS"] = env.get("JAX_PLATFORMS", "cpu")
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", src, "--no-deps", "--no-build-isolation", "-w", dist, "-q"], tmp, env)
    wheels = list(dist.glob("bes_jax-*.whl"))
    assert len(wheels) == 1, wheels
    venv_dir = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", venv_dir], tmp, env)
    bindir = venv_dir / ("Scripts" if os.name == "nt" else "bin")
    # --force-reinstall: the system site-packages may hold an (editable) bes_jax of the same version.
    _run([bindir / "python", "-m", "pip", "install", "--no-deps", "--force-reinstall", "--no-index", "-q", wheels[0]],
         tmp, env)
    work = tmp / "work"  # an empty directory: no conf/, no ../shared next to it
    work.mkdir()
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv_dir)
    return bindir, env, work, venv_dir


def test_wheel_holds_package_data(venv):
    bindir, env, work, venv_dir = venv
    code = ("import json, bes_jax, bes_jax.data as d; from bes_jax.profile import load_profile; "
            "import bes_jax.eval.capacity as c; from bes_jax.config import compose_train_config, sim_config_from; "
            "cfg = compose_train_config([]); key = c.capacity_key(load_profile(cfg.profile), sim_config_from(cfg.sim)); "
            "print(json.dumps({'file': bes_jax.__file__, 'conf': sorted(p.name for p in bes_jax.CONF_DIR.glob('*.yaml')), "
            "'data': d.shipped(), 'profile': load_profile('opt-a100-80gb').name, "
            "'capacity': key in json.loads(c.SHIPPED.read_text())}))")
    out = json.loads(_run([bindir / "python", "-c", code], work, env).stdout.strip().splitlines()[-1])
    assert Path(out["file"]).resolve().is_relative_to(venv_dir.resolve()), out["file"]  # the wheel, not the repo
    assert {"train.yaml", "eval.yaml", "experiment_job.yaml", "serve.yaml", "validate.yaml"} <= set(out["conf"])
    assert {"maf2019_minute_totals.csv", "AzureLLMInferenceTrace_code.csv"} <= set(out["data"])
    assert out["profile"] == "opt-a100-80gb"
    assert out["capacity"]  # the main job's shipped capacity, under the key the installed code computes


def test_installed_commands_run_from_any_directory(venv):
    bindir, env, work, _ = venv
    r = _run([bindir / "bes-eval", "router=greedy", "workload=poisson", "workload.rate=20", "n_decisions=500",
              "out=metrics.json", "hydra.run.dir=eval_run"], work, env)
    assert "greedy" in r.stdout
    assert json.loads((work / "metrics.json").read_text())
    r = subprocess.run([bindir / "bes-eval", "workload=trace", "workload.path=no/such.csv", "n_decisions=100",
                        "hydra.run.dir=eval_bad"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "workload.path = 'no/such.csv'" in r.stderr and "passed by path" in r.stderr

    run = work / "train_run"
    overrides, keep = tiny_train_overrides()
    r = _run([bindir / "bes-train", f"hydra.run.dir={run.name}", *overrides], work, env, timeout=600)
    assert f"held-out workload {keep}" in r.stdout
    for name in ("policy/weights.npz", "policy/metadata.json", "results.json", "train.png"):
        assert (run / name).exists(), name
    res = json.loads((run / "results.json").read_text())
    assert keep in res["results"] and "learned" in res["results"][keep]["routers"]

    r = _run([bindir / "bes-latency", "--model", "opt-1.3b", "--gpu", "a100-80gb", "--batch", "4"], work, env)
    assert r.stdout.strip()
