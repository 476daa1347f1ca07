"""Profiles: the shipped ones load; broken files fail with file, field and value named."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from bes_jax.profile import ProfileError, load_profile, profile_from_dict
from conftest import REPO, synthetic_profile_dict


@pytest.mark.parametrize("name", ["opt-a100-80gb", "opt-h100-sxm", "tiny-cpu"])
def test_shipped_profiles_load(name):
    p = load_profile(name)
    assert p.latency.shape == (p.n_models, p.n_tasks, p.b_max)
    assert (np.diff(p.latency, axis=2) >= 0).all()
    assert "latency" in p.provenance and "quality" in p.provenance


def test_default_profile_has_a_real_trade_off():
    p = load_profile("opt-a100-80gb")
    large = p.model_index("opt-6.7b")
    assert (p.latency[large, :, 0] < p.deadlines).all()          # alone, the large model is on time
    assert (p.latency[large, :, -1] > p.deadlines).all()         # a full batch of it is not
    assert (p.latency[0, :, -1] < p.deadlines).all()             # a full batch of the small one is
    assert (p.quality[large] > p.quality[0]).all()


def _write(tmp_path, doc, name="broken.json"):
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def _mutate(fn):
    d = copy.deepcopy(synthetic_profile_dict())
    fn(d)
    return d


CASES = [
    ("missing field", _mutate(lambda d: d.pop("B_max")), "B_max", "missing"),
    ("latency shape", _mutate(lambda d: d["latency_s"][1].pop()), "latency_s[1]", "task rows"),
    ("negative latency", _mutate(lambda d: d["latency_s"][0][1].__setitem__(2, -0.5)), "latency_s[0][1][2]", "-0.5"),
    ("nan latency", _mutate(lambda d: d["latency_s"][2][0].__setitem__(0, float("nan"))), "latency_s[2][0][0]", "finite"),
    ("decreasing latency", _mutate(lambda d: d["latency_s"][1][0].__setitem__(3, 0.0001)), "latency_s[1][0][3]", "non-decreasing"),
    ("quality range", _mutate(lambda d: d["quality"][0].__setitem__(1, 1.7)), "quality[0][1]", "1.7"),
    ("duplicate model", _mutate(lambda d: d["models"][2].__setitem__("name", "m0")), "models[2].name", "duplicate"),
    ("duplicate task", _mutate(lambda d: d["tasks"][1].__setitem__("name", "t0")), "tasks[1].name", "duplicate"),
    ("zero deadline", _mutate(lambda d: d["tasks"][0].__setitem__("deadline_s", 0)), "tasks[0].deadline_s", "> 0"),
    ("no provenance", _mutate(lambda d: d["provenance"].pop("latency")), "provenance.latency", "missing"),
    ("string B_max", _mutate(lambda d: d.__setitem__("B_max", "4")), "B_max", "'4'"),
]


@pytest.mark.parametrize("what,doc,field,value", CASES, ids=[c[0] for c in CASES])
def test_broken_profiles_name_file_field_value(tmp_path, what, doc, field, value):
    path = _write(tmp_path, doc)
    with pytest.raises(ProfileError) as e:
        load_profile(path)
    msg = str(e.value)
    assert "broken.json" in msg and field in msg and value in msg, msg


def test_invalid_json_names_line(tmp_path):
    path = _write(tmp_path, '{"name": "x",\n "models": [,]}')
    with pytest.raises(ProfileError, match=r"broken.json.*line 2"):
        load_profile(path)


def test_unknown_profile_lists_known(tmp_path):
    with pytest.raises(ProfileError, match="opt-a100-80gb"):
        load_profile("no-such-profile")


def test_round_trip(tmp_path, synthetic_profile):
    path = tmp_path / "rt.json"
    synthetic_profile.save(path)
    again = load_profile(path)
    np.testing.assert_allclose(again.latency, synthetic_profile.latency, rtol=1e-6)  # saved to 9 decimals
    assert again.model_names == synthetic_profile.model_names
