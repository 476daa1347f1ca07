"""Shared fixtures: small synthetic profiles so tests run fast and need no shipped file."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_OWN_DIRS = []  # temporary directories this process made; removed when its pytest session ends


def _temp_dir(prefix: str) -> str:
    d = tempfile.mkdtemp(prefix=prefix)
    _OWN_DIRS.append(d)
    return d


# one XLA compilation cache for the whole run, set before JAX is imported: programs that
# several tests (and the commands they start) compile identically are compiled once
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _temp_dir("bes_jax_test_xla_")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# tests are small: compiling less carefully costs less than the slower programs it gives
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# XLA:CPU's compile is most of the suite's CPU time; its loop emitters (not the fusion emitters)
# and one codegen thread compile these programs in about half the CPU time (tests/test_greedy_prior.py
# from a cold cache on 2 cores: 278 -> 186 CPU-s). Floats may differ in their last bits from a
# default build (a tiny bes-train: weights within 8e-8, the same results), so published numbers
# are never made with them. A flag the caller's XLA_FLAGS already sets is left as it is.
_FAST_COMPILE = ("--xla_cpu_use_fusion_emitters=false", "--xla_cpu_parallel_codegen_split_count=1")
_flags = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = " ".join([_flags, *(f for f in _FAST_COMPILE if f.split("=")[0] not in _flags)]).strip()

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bes_jax.profile import profile_from_dict  # noqa: E402

# measured capacities are cached on disk (bes_jax.eval.capacity): the whole run (every xdist
# worker, which inherits the controller's environment, and the commands tests start) shares one
# fresh cache instead of reading or writing the user's; a capacity is measured once per run, not
# once per worker (a continuous-batching measurement is ~1 CPU-minute). The package's default
# configs read the shipped table (bes_jax/data/capacity.json; tests/test_capacity_table.py).
if "BES_JAX_TEST_CACHE_DIR" not in os.environ:
    os.environ["BES_JAX_TEST_CACHE_DIR"] = _temp_dir("bes_jax_test_cache_")
os.environ["BES_JAX_CACHE_DIR"] = os.environ["BES_JAX_TEST_CACHE_DIR"]


def pytest_unconfigure(config):
    for d in _OWN_DIRS:
        shutil.rmtree(d, ignore_errors=True)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TRACES = SHARED / "traces"


def synthetic_profile_dict(n_models=3, n_tasks=2, b_max=4, seed=0):
    """A small valid profile: bigger models slower and better; latency grows with batch size."""
    rng = np.random.default_rng(seed)
    base = np.array([0.02, 0.06, 0.2, 0.5, 1.0])[:n_models]
    lat = np.zeros((n_models, n_tasks, b_max))
    for m in range(n_models):
        for t in range(n_tasks):
            per = base[m] * (1.0 + 0.3 * t) * (1 + 0.1 * rng.random())
            lat[m, t] = per * (1.0 + 0.35 * np.arange(b_max))
    qual = np.clip(0.4 + 0.12 * np.arange(n_models)[:, None] + 0.05 * np.arange(n_tasks)[None, :], 0, 1)
    return {
        "name": "synthetic",
        "hardware": {"name": "synthetic"},
        "models": [{"name": f"m{m}", "params": 10 ** (6 + m)} for m in range(n_models)],
        "tasks": [{"name": f"t{t}", "metric": "acc", "deadline_s": float(3 * base[-1] * (1 + 0.3 * t)),
                   "prompt_len": 64, "output_len": 8} for t in range(n_tasks)],
        "B_max": b_max,
        "latency_s": lat.tolist(),
        "quality": qual.tolist(),
        "provenance": {"latency": "synthetic test table", "quality": "synthetic test table"},
    }


def continuous_profile_dict(n_models=3, n_tasks=2, seed=0, kv_tokens=(3000, 2000, 1200), ctx_max=(512, 768, 1024),
                            quantum=2.0 ** -24):
    """A small profile with the continuous-batching fields (SPEC "Continuous batching").

    Coefficients are multiples of ``quantum`` (so float64 clocks stay exact); KV budgets and
    context limits are small enough that tests can make them bind. Task 0 has fixed lengths,
    the others draw them (uniform prompt, log-normal output).
    """
    d = synthetic_profile_dict(n_models=n_models, n_tasks=n_tasks, b_max=4, seed=seed)
    rng = np.random.default_rng(seed + 100)
    q = lambda x: float(max(1.0, round(x / quantum)) * quantum)
    for m, entry in enumerate(d["models"]):
        scale = 2.0 ** m
        entry["ctx_max"] = int(ctx_max[m % len(ctx_max)])
        entry["kv_tokens"] = int(kv_tokens[m % len(kv_tokens)])
        entry["iteration"] = {"fixed_s": q(2e-3 * (1 + 0.1 * rng.random())), "per_seq_s": q(2e-5 * scale),
                              "weights_s": q(4e-3 * scale), "per_kv_token_s": q(1e-6 * scale),
                              "per_token_s": q(3e-5 * scale)}
    for t, task in enumerate(d["tasks"]):
        if t == 0:
            task["prompt_len"], task["output_len"] = 48, 6
        else:
            task["prompt_len"] = {"dist": "uniform", "min": 8, "max": 300}
            task["output_len"] = {"dist": "lognormal", "mean": 12, "cv": 1.0, "min": 1, "max": 200}
    return d


@pytest.fixture(scope="session")
def synthetic_profile():
    return profile_from_dict(synthetic_profile_dict(), "synthetic.json")
