"""The capacities that ship with the package (`bes_jax/data/capacity.json`) are current (their
keys hold the simulator's code) and are read instead of measured; the user's cache comes first and
``BES_JAX_CACHE_DIR=off`` measures."""
from __future__ import annotations

import json

import pytest

import bes_jax.eval.capacity as cap_mod
from bes_jax.config import compose_train_config, sim_config_from
from bes_jax.profile import load_profile


def _table() -> dict:
    return json.loads(cap_mod.SHIPPED.read_text())


def _setup(overrides=()):
    cfg = compose_train_config(list(overrides))
    return load_profile(cfg.profile), sim_config_from(cfg.sim)


def test_shipped_capacities_are_current():
    table = _table()
    assert any(e["overrides"] == [] for e in table.values()), "the main job's capacity is not shipped"
    for key, entry in table.items():
        profile, sim_cfg = _setup(entry["overrides"])
        assert cap_mod.capacity_key(profile, sim_cfg) == key, (
            f"{cap_mod.SHIPPED}: the entry for {entry['configs']} was measured with other simulator code or "
            f"settings; run `python scripts/measure_capacities.py`")
        assert entry["req_per_s"] > 0 and entry["profile"] == profile.name


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty user cache, nothing measured in this process, and a measurement that says so."""
    monkeypatch.setenv("BES_JAX_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cap_mod, "_MEASURED", {})
    calls = []
    monkeypatch.setattr(cap_mod, "_measure", lambda *a: calls.append(a) or 1.5)
    return calls


def test_a_shipped_capacity_is_read_not_measured(fresh):
    profile, sim_cfg = _setup()
    shipped = _table()[cap_mod.capacity_key(profile, sim_cfg)]["req_per_s"]
    assert cap_mod.measured_capacity(profile, sim_cfg) == shipped and not fresh


def test_the_users_cache_comes_first_and_off_measures(fresh, monkeypatch, tmp_path):
    profile, sim_cfg = _setup(["sim=default"])
    key = cap_mod.capacity_key(profile, sim_cfg)
    (tmp_path / "capacity.json").write_text(json.dumps({key: {"req_per_s": 7.25}}))
    assert cap_mod.measured_capacity(profile, sim_cfg) == 7.25 and not fresh
    monkeypatch.setattr(cap_mod, "_MEASURED", {})
    monkeypatch.setenv("BES_JAX_CACHE_DIR", "off")
    assert cap_mod.measured_capacity(profile, sim_cfg) == 1.5 and len(fresh) == 1
