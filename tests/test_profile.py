"""Profiles: the shipped ones load; broken files fail with file, field and value named."""
from __future__ import annotations

import copy
import importlib.util
import json

import numpy as np
import pytest

from bes_jax import PROFILES_DIR
from bes_jax.profile import ProfileError, load_profile, profile_from_dict
from conftest import REPO, synthetic_profile_dict


@pytest.mark.parametrize("name", ["opt-a100-80gb", "opt-h100-sxm", "tiny-cpu"])
def test_shipped_profiles_load(name):
    p = load_profile(name)
    assert p.latency.shape == (p.n_models, p.n_tasks, p.b_max)
    assert (np.diff(p.latency, axis=2) >= 0).all()
    assert "latency" in p.provenance and "quality" in p.provenance


@pytest.mark.parametrize("name", ["opt-a100-80gb", "opt-h100-sxm"])
def test_opt_profiles_have_a_real_trade_off(name):
    p = load_profile(name)
    assert p.model_names == ["opt-125m", "opt-1.3b", "opt-6.7b"]
    assert p.task_names == ["arc_easy", "piqa", "winogrande", "lambada"] and p.b_max == 32
    large = p.model_index("opt-6.7b")
    assert (2 * p.latency[large, :, 0] < p.deadlines).all()      # alone, the large model is well on time
    assert (p.latency[large, :, -1] > p.deadlines).all()         # a full batch of it is not
    assert (p.latency[:large, :, -1] < p.deadlines).all()        # full batches of the smaller ones are
    assert (np.diff(p.latency[:, :, 0], axis=0) > 0).all()       # bigger is slower ...
    assert (np.diff(p.quality, axis=0) > 0).all()                # ... and better
    b = np.arange(1, p.b_max + 1)
    rate = [max((b / p.latency[m, t])[p.latency[m, t] <= p.deadlines[t]].max() for t in range(p.n_tasks))
            for m in range(p.n_models)]
    assert rate[0] >= 5 * rate[large]


def test_opt_profiles_cite_their_sources():
    for name in ("opt-a100-80gb", "opt-h100-sxm"):
        prov = json.dumps(load_profile(name).provenance)
        for needle in ("07fdd2fc6aa46f961f304d5f3791efad016e38a3", "8a7077017886d5829a7c6a9265babcfdad2c707a",
                       "arXiv 2205.01068", "datasheet", "fastertransformer_a100_80gb_latency.csv", "deadline"):
            assert needle in prov, (name, needle)
        assert prov.count("shared/docs/") == prov.count("../shared/docs/")  # repo-relative paths only


def test_opt_profiles_match_the_latency_model():
    """The shipped tables are what scripts/make_profile.py makes from the current model."""
    spec = importlib.util.spec_from_file_location("make_profile", REPO / "scripts" / "make_profile.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for gpu in mod.PROFILE_GPUS:
        shipped = json.loads((PROFILES_DIR / f"opt-{gpu}.json").read_text())
        assert shipped == json.loads(json.dumps(mod.make(gpu))), f"re-run scripts/make_profile.py ({gpu})"


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
    ("latency batch count", _mutate(lambda d: d["latency_s"][0][1].append(9.0)), "latency_s[0][1]", "4 values"),
    ("latency model count", _mutate(lambda d: d["latency_s"].pop()), "latency_s", "3 models"),
    ("latency not a list", _mutate(lambda d: d["latency_s"][0].__setitem__(0, 0.5)), "latency_s[0][0]", "0.5"),
    ("string latency", _mutate(lambda d: d["latency_s"][0][0].__setitem__(1, "fast")), "latency_s[0][0][1]", "'fast'"),
    ("negative latency", _mutate(lambda d: d["latency_s"][0][1].__setitem__(2, -0.5)), "latency_s[0][1][2]", "-0.5"),
    ("nan latency", _mutate(lambda d: d["latency_s"][2][0].__setitem__(0, float("nan"))), "latency_s[2][0][0]", "finite"),
    ("decreasing latency", _mutate(lambda d: d["latency_s"][1][0].__setitem__(3, 0.0001)), "latency_s[1][0][3]", "non-decreasing"),
    ("quality range", _mutate(lambda d: d["quality"][0].__setitem__(1, 1.7)), "quality[0][1]", "1.7"),
    ("negative quality", _mutate(lambda d: d["quality"][2].__setitem__(0, -0.1)), "quality[2][0]", "-0.1"),
    ("quality shape", _mutate(lambda d: d["quality"][1].pop()), "quality[1]", "2 values"),
    ("duplicate model", _mutate(lambda d: d["models"][2].__setitem__("name", "m0")), "models[2].name", "duplicate"),
    ("duplicate task", _mutate(lambda d: d["tasks"][1].__setitem__("name", "t0")), "tasks[1].name", "duplicate"),
    ("zero deadline", _mutate(lambda d: d["tasks"][0].__setitem__("deadline_s", 0)), "tasks[0].deadline_s", "> 0"),
    ("negative deadline", _mutate(lambda d: d["tasks"][1].__setitem__("deadline_s", -2.5)), "tasks[1].deadline_s", "-2.5"),
    ("missing task field", _mutate(lambda d: d["tasks"][1].pop("metric")), "tasks[1].metric", "missing"),
    ("missing model params", _mutate(lambda d: d["models"][0].pop("params")), "models[0].params", "missing"),
    ("no provenance", _mutate(lambda d: d["provenance"].pop("latency")), "provenance.latency", "missing"),
    ("no quality provenance", _mutate(lambda d: d["provenance"].pop("quality")), "provenance.quality", "missing"),
    ("provenance block missing", _mutate(lambda d: d.pop("provenance")), "provenance", "missing"),
    ("empty provenance", _mutate(lambda d: d.__setitem__("provenance", {})), "provenance", "{}"),
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
