"""Rate sweeps in one vmapped program, and max_sustainable_rate."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from bes_jax.eval.capacity import measured_capacity, nominal_capacity
from bes_jax.eval.sweep import max_sustainable_rate, sweep_rates
from bes_jax.profile import profile_from_dict
from bes_jax.routers import greedy, static
from bes_jax.sim_config import SimConfig

CFG = SimConfig(queue_capacity=8, outcome_slots=512)


def test_sweep_availability_falls_with_rate(synthetic_profile):
    out = sweep_rates(synthetic_profile, CFG, static(2), [2.0, 20.0, 200.0], n_decisions=600, seeds=(0, 1))
    a = out["availability"].mean(1)
    assert out["availability"].shape == (3, 2)
    assert a[0] > 0.95 and a[2] < 0.2 and a[0] >= a[1] >= a[2]


def test_max_sustainable_rate_greedy_beats_static_large(synthetic_profile):
    cap = nominal_capacity(synthetic_profile, CFG)
    kw = dict(n_decisions=800, seeds=(0,), threshold=0.95, n_grid=8)
    large = max_sustainable_rate(synthetic_profile, CFG, static(2), cap[-1] / 8, cap[0] * 2, **kw)
    best = max_sustainable_rate(synthetic_profile, CFG, greedy(), cap[-1] / 8, cap[0] * 2, **kw)
    assert 0 < large["max_sustainable_rate"] < best["max_sustainable_rate"], (large, best)
    i = int(np.searchsorted(large["rates"], large["max_sustainable_rate"]))
    assert large["availability"][i] >= 0.95


def test_measured_capacity_is_the_sustainable_rate(synthetic_profile):
    """The unit of every load: static-large holds 99% availability at it and not far above it,
    and it lies below the nominal formula's figure."""
    cap = measured_capacity(synthetic_profile, CFG)
    assert 0 < cap < nominal_capacity(synthetic_profile, CFG)[-1]
    a = sweep_rates(synthetic_profile, CFG, static(2), [cap, 2.0 * cap], n_decisions=3000, seeds=(0, 1))
    a = a["availability"].mean(1)
    assert a[0] >= 0.99 > a[1], a
    assert measured_capacity(synthetic_profile, CFG.__class__(**{**CFG.to_dict(), "obs_mode": "rich"})) == cap


def test_measured_capacity_is_cached_on_disk_by_what_defines_it(synthetic_profile, monkeypatch, tmp_path):
    """A second process (here: an emptied in-memory cache) reads the measurement back; another
    setting is measured again."""
    import bes_jax.eval.capacity as cap_mod
    import bes_jax.eval.sweep as sweep_mod

    monkeypatch.setenv("BES_JAX_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cap_mod, "_MEASURED", {})
    first = measured_capacity(synthetic_profile, CFG)
    assert (tmp_path / "capacity.json").exists()
    monkeypatch.setattr(cap_mod, "_MEASURED", {})

    def no_sweep(*a, **k):
        raise AssertionError("measured again although the result is cached")
    monkeypatch.setattr(sweep_mod, "max_sustainable_rate", no_sweep)
    assert measured_capacity(synthetic_profile, CFG) == first
    with pytest.raises(AssertionError, match="measured again"):
        measured_capacity(synthetic_profile, CFG.__class__(**{**CFG.to_dict(), "queue_capacity": 7}))


def test_a_second_process_waits_for_the_first_ones_measurement(tmp_path, monkeypatch):
    """Two processes needing one capacity at once (a joblib multirun, test workers) measure it
    once: while this process holds the measurement's lock, another blocks, then reads the result
    this one wrote (a value no measurement gives) instead of sweeping itself."""
    import bes_jax.eval.capacity as cap_mod
    from conftest import synthetic_profile_dict

    (tmp_path / "p.json").write_text(json.dumps(synthetic_profile_dict()))
    script = ("import json\n"
              "from bes_jax.eval.capacity import measured_capacity\n"
              "from bes_jax.profile import profile_from_dict\n"
              "from bes_jax.sim_config import SimConfig\n"
              f"prof = profile_from_dict(json.load(open({str(tmp_path / 'p.json')!r})), 'p.json')\n"
              "print('ready', flush=True)\n"
              "print(measured_capacity(prof, SimConfig(queue_capacity=8, outcome_slots=512)), flush=True)\n")
    monkeypatch.setenv("BES_JAX_CACHE_DIR", str(tmp_path / "cache"))
    prof = profile_from_dict(synthetic_profile_dict(), "p.json")
    key = cap_mod._disk_key(prof, cap_mod._serving(CFG), prof.n_models - 1)
    with cap_mod._measuring(key):
        proc = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ), stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(1.0)  # it is now waiting for the lock (or, without one, measuring)
        cap_mod._disk_put(key, 123.25, prof, prof.n_models - 1)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and float(out.strip()) == 123.25, out


def test_a_measurement_compiles_optimized_programs(synthetic_profile, monkeypatch):
    """Where XLA's optimizations are switched off (this suite does, to compile short programs
    faster), a capacity measurement still compiles optimized programs (they run long: ~3x less
    CPU for a continuous-batching measurement), and the setting is restored afterwards."""
    import jax

    import bes_jax.eval.capacity as cap_mod
    import bes_jax.eval.sweep as sweep_mod

    flag = "jax_disable_most_optimizations"
    seen = []

    def sweep(*a, **k):
        seen.append(jax.config.values[flag])
        return {"max_sustainable_rate": 1.5}
    monkeypatch.setenv("BES_JAX_CACHE_DIR", "off")
    monkeypatch.setattr(cap_mod, "_MEASURED", {})
    monkeypatch.setattr(sweep_mod, "max_sustainable_rate", sweep)
    was = jax.config.values[flag]
    try:
        jax.config.update(flag, True)
        assert measured_capacity(synthetic_profile, CFG) == 1.5
        assert seen == [False] and jax.config.values[flag] is True
    finally:
        jax.config.update(flag, was)
