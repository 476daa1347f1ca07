"""Capacity: the unit every load is expressed in (SPEC, "Evaluation protocol").

A baseline's capacity is *measured*: the `max_sustainable_rate` of static serving on one model
under the configured placement and deadlines (Poisson arrivals, uniform task mix). The nominal
formula below only brackets that sweep; it overstates what a model sustains (a mixed-task batch
takes its slowest member's latency, and a request may arrive just after a batch started).

A measurement is a sweep (about 40 s under continuous batching on 2 cores), so results are
also kept on disk, keyed by everything that defines them (the profile's numbers, the serving
settings, the model, the protocol, the package version and the simulator's source code):
``$BES_JAX_CACHE_DIR`` or
``~/.cache/bes_jax``, file ``capacity.json``. Processes on one machine that need the same capacity
at once (a Hydra joblib multirun, test workers) take a lock on it there: the first measures, the
others wait and read its result.

The package ships the measurements of its own default configs (``bes_jax/data/capacity.json``,
written by ``scripts/measure_capacities.py``) under the same keys, so a first run of the main job
does not spend a minute measuring; a change to the simulator's code changes the keys, and the
shipped entries then no longer match (a test says so) until the script is run again.
``BES_JAX_CACHE_DIR=off`` reads and writes neither: every capacity is measured.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

try:
    import fcntl
except ImportError:  # not POSIX: concurrent processes may measure the same capacity twice
    fcntl = None

from bes_jax.profile import Profile
from bes_jax.sim_config import SimConfig

#: the setting of the measurement (recorded next to every capacity that is reported)
CAPACITY_PROTOCOL = {"router": "static", "workload": "poisson, uniform task mix", "threshold": 0.99,
                     "n_decisions": 3000, "seeds": (0, 1)}

_MEASURED: dict = {}


def _cache_file() -> Path | None:
    root = os.environ.get("BES_JAX_CACHE_DIR")
    if root == "off":
        return None
    return Path(root or Path.home() / ".cache" / "bes_jax") / "capacity.json"


#: modules whose code decides a measured capacity: a change to any of them measures again
_CODE = ("env/core.py", "env/continuous.py", "env/params.py", "eval/metrics.py", "eval/rollout.py", "eval/sweep.py",
         "workloads/generators.py", "workloads/builders.py", "routers/baselines.py", "lengths.py")


def _disk_key(profile: Profile, serving: SimConfig, m: int) -> str:
    from bes_jax import __version__

    root = Path(__file__).resolve().parents[1]
    code = hashlib.sha256(b"".join((root / f).read_bytes() if (root / f).exists() else b"" for f in _CODE)).hexdigest()
    doc = {"profile": profile.to_dict(), "sim": serving.to_dict(), "model": m, "protocol": CAPACITY_PROTOCOL,
           "version": __version__, "code": code}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


#: measurements of the package's default configs, keyed as the disk cache
SHIPPED = Path(__file__).resolve().parents[1] / "data" / "capacity.json"


def _disk_get(key: str):
    """The cached measurement ``key``: the user's cache, else the shipped table, else None."""
    path = _cache_file()
    for source in ((path, SHIPPED) if path else ()):
        try:
            return float(json.loads(source.read_text())[key]["req_per_s"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # no cache, or an unreadable one: the next source, or measure again
    return None


def _disk_put(key: str, value: float, profile: Profile, m: int) -> None:
    path = _cache_file()
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            doc = {}
        doc[key] = {"req_per_s": value, "profile": profile.name, "model": profile.model_names[m]}
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=1)
        os.replace(tmp, path)  # atomic: concurrent runs never read half a file
    except OSError:
        pass  # a read-only home: the measurement is still returned


@contextlib.contextmanager
def _measuring(key: str):
    """Held while this process measures capacity ``key``: another process that needs it blocks
    here until the result is on disk (an exclusive lock on a file beside the cache)."""
    path = _cache_file()
    fh = None
    if path is not None and fcntl is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(path.parent / f"capacity-{key[:20]}.lock", "a")
        except OSError:
            fh = None  # a read-only cache directory: measure without the lock
    if fh is None:
        yield
        return
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _serving(cfg: SimConfig) -> SimConfig:
    """``cfg`` with the settings that do not change serving fixed: one measurement serves them all."""
    return dataclasses.replace(cfg, obs_mode="paper", ewma_alpha=0.05, ref_rate=100.0, episode_len=1000,
                               outcome_slots=2048)


def nominal_capacity(profile: Profile, cfg: SimConfig) -> np.ndarray:
    """[M] an upper bracket on the requests/s each model sustains alone, over its replicas.

    Per task: the best throughput b / L[m, t, b] over batch sizes whose latency leaves room to
    wait for one batch (2 L <= deadline); averaged over tasks. Not a capacity: a sweep bound.
    """
    d = np.asarray(cfg.task_deadlines(profile))
    reps = np.asarray(cfg.replica_counts(profile.n_models), np.float64)
    b = np.arange(1, profile.b_max + 1)
    caps = np.zeros(profile.n_models)
    for m in range(profile.n_models):
        per_task = []
        for t in range(profile.n_tasks):
            lat = profile.latency[m, t]
            ok = 2 * lat <= d[t]
            per_task.append((b[ok] / lat[ok]).max() if ok.any() else 0.0)
        caps[m] = np.mean(per_task) * reps[m]
    return caps


def capacity_key(profile: Profile, cfg: SimConfig, model: int = -1) -> str:
    """The key of ``measured_capacity(profile, cfg, model)`` on disk and in the shipped table."""
    return _disk_key(profile, _serving(cfg), model % profile.n_models)


def measure_capacity(profile: Profile, cfg: SimConfig, model: int = -1) -> float:
    """One fresh measurement (no cache read or written): what ``measured_capacity`` caches."""
    m = model % profile.n_models
    return _measure(profile, cfg, _serving(cfg), m)


def measured_capacity(profile: Profile, cfg: SimConfig, model: int = -1) -> float:
    """`max_sustainable_rate` (req/s) of static serving on ``model`` (default: the largest)
    under ``cfg``'s placement, replicas, deadlines and reward, by the protocol above.

    Settings that do not change serving (observation, episode length, outcome record) do not
    change it; results are cached per profile and setting.
    """
    m = model % profile.n_models
    serving = _serving(cfg)
    key = (profile.name, np.asarray(profile.latency).tobytes(), serving, m)
    disk_key = _disk_key(profile, serving, m)
    if key not in _MEASURED and (cached := _disk_get(disk_key)) is not None:
        _MEASURED[key] = cached
    if key not in _MEASURED:
        with _measuring(disk_key):
            if (cached := _disk_get(disk_key)) is not None:  # another process measured it meanwhile
                _MEASURED[key] = cached
            else:
                _MEASURED[key] = _measure(profile, cfg, serving, m)
                _disk_put(disk_key, _MEASURED[key], profile, m)
    return _MEASURED[key]


@contextlib.contextmanager
def _optimized_compiles():
    """XLA optimizes what is compiled inside, even where ``JAX_DISABLE_MOST_OPTIMIZATIONS`` is set
    (to compile short programs faster, as the test suite does): a measurement's programs run long
    (measured on 2 CPU cores, the default continuous config: 58 CPU-s optimized, 178 without)."""
    import jax

    flag = "jax_disable_most_optimizations"
    was = bool(jax.config.values.get(flag, False))
    if was:
        jax.config.update(flag, False)
    try:
        yield
    finally:
        if was:
            jax.config.update(flag, True)


def _measure(profile: Profile, cfg: SimConfig, serving: SimConfig, m: int) -> float:
    """One measurement by the protocol: a Poisson rate sweep bracketed by the nominal capacity."""
    from bes_jax.eval.sweep import max_sustainable_rate
    from bes_jax.routers import static

    nominal = float(nominal_capacity(profile, serving)[m])
    if nominal <= 0:
        raise ValueError(f"profile {profile.name!r}: model {profile.model_names[m]} meets no task's deadline "
                         f"even alone (deadlines {cfg.task_deadlines(profile)}); it has no capacity")
    p = CAPACITY_PROTOCOL
    with _optimized_compiles():
        res = max_sustainable_rate(profile, serving, static(m, name=f"static:{profile.model_names[m]}"),
                                   nominal / 300.0, nominal * 1.5, threshold=p["threshold"],
                                   n_decisions=p["n_decisions"], seeds=p["seeds"])
    if res["max_sustainable_rate"] <= 0:
        raise ValueError(f"profile {profile.name!r}: static {profile.model_names[m]} misses "
                         f"{1 - p['threshold']:.0%} of requests even at {nominal / 300:.3g} req/s; no capacity")
    return float(res["max_sustainable_rate"])
