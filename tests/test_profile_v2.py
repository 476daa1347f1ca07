"""Profiles v2 (continuous batching): the shipped profiles carry ctx_max, kv_tokens, iteration
and length distributions consistent with their request-level tables; broken continuous fields
fail naming file, field and value."""
from __future__ import annotations

import copy
import importlib.util
import json

import numpy as np
import pytest

from bes_jax import PROFILES_DIR
from bes_jax.latency.iteration import static_batch_latency
from bes_jax.profile import ITERATION_FIELDS, ProfileError, load_profile, profile_from_dict
from conftest import REPO, continuous_profile_dict, synthetic_profile_dict

SHIPPED = ["opt-a100-80gb", "opt-h100-sxm", "tiny-cpu"]


@pytest.fixture(scope="module")
def make_profile():
    spec = importlib.util.spec_from_file_location("make_profile", REPO / "scripts" / "make_profile.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profiles_support_continuous_batching(name):
    p = load_profile(name)
    assert p.supports_continuous
    p.require_continuous()
    assert p.iteration.shape == (p.n_models, len(ITERATION_FIELDS)) and (p.iteration >= 0).all()
    assert (p.kv_tokens >= p.ctx_max).all()  # a full-context request fits on every model
    # the request-level tables are built at the stated mean lengths
    assert [t.prompt_len for t in p.tasks] == [round(x) for x in p.mean_prompt_len]
    assert [t.output_len for t in p.tasks] == [round(x) for x in p.mean_output_len]
    for key in ("ctx_max", "kv_tokens", "iteration"):
        assert key in p.provenance, (name, key)


@pytest.mark.parametrize("name", ["opt-a100-80gb", "opt-h100-sxm"])
def test_opt_profiles_continuous_fields(name):
    p = load_profile(name)
    assert (p.ctx_max == 2048).all()
    assert (np.diff(p.kv_tokens) < 0).all()  # bigger models: more weights, more KV bytes per token
    it = p.iteration
    assert (np.diff(it[:, ITERATION_FIELDS.index("weights_s")]) > 0).all()
    assert (np.diff(it[:, ITERATION_FIELDS.index("per_token_s")]) > 0).all()
    # KV binds before max_num_seqs for long contexts on OPT-6.7B: 64 sequences x 2048 tokens
    assert p.kv_tokens[-1] < 64 * 2048 < p.kv_tokens[0]
    assert "assum" in p.provenance["length_distributions"] and "assum" in p.provenance["kv_tokens"]


@pytest.mark.parametrize("name", SHIPPED)
def test_both_modes_agree_on_the_shipped_tables(name):
    """A whole batch through the iteration coefficients takes what the request-level table says
    (within the model's own error: the OPT tables come from the per-operator model, tiny-cpu's
    coefficients are fitted to its measured table)."""
    p = load_profile(name)
    errs = []
    for m in range(p.n_models):
        coef = dict(zip(ITERATION_FIELDS, p.iteration[m]))
        for t, task in enumerate(p.tasks):
            for b in (1, 2, p.b_max // 2, p.b_max):
                errs.append(static_batch_latency(coef, b, task.prompt_len, task.output_len) / p.latency[m, t, b - 1] - 1)
    errs = np.abs(errs)
    assert np.median(errs) < 0.05 and errs.max() < 0.15, (name, errs)


def test_shipped_continuous_fields_are_what_the_script_makes(make_profile):
    for gpu in make_profile.PROFILE_GPUS:
        shipped = json.loads((PROFILES_DIR / f"opt-{gpu}.json").read_text())
        assert shipped == json.loads(json.dumps(make_profile.make(gpu))), f"re-run scripts/make_profile.py ({gpu})"
    tiny = json.loads((PROFILES_DIR / "tiny-cpu.json").read_text())
    assert make_profile.tiny_continuous(tiny) == tiny, "re-run scripts/make_profile.py (tiny-cpu)"


def test_tiny_continuous_keeps_the_measurements(make_profile):
    tiny = json.loads((PROFILES_DIR / "tiny-cpu.json").read_text())
    bare = copy.deepcopy(tiny)
    for m in bare["models"]:
        for k in ("ctx_max", "kv_tokens", "iteration"):
            m.pop(k)
    out = make_profile.tiny_continuous(bare)
    assert out["latency_s"] == tiny["latency_s"] and out["tasks"] == tiny["tasks"]
    assert [m["ctx_max"] for m in out["models"]] == [512] * 3
    assert "fitted" in out["provenance"]["iteration"]
    assert all(v["median_abs"] < 0.05 for v in out["provenance"]["iteration_fit_relative_error"].values())


def _mutate(fn):
    d = copy.deepcopy(continuous_profile_dict())
    fn(d)
    return d


def _set_model(i, key, value):
    return lambda d: d["models"][i].__setitem__(key, value)


def _set_it(i, key, value):
    return lambda d: d["models"][i]["iteration"].__setitem__(key, value)


CASES = [
    ("zero ctx_max", _mutate(_set_model(0, "ctx_max", 0)), "models[0].ctx_max", "0", "positive integer"),
    ("float ctx_max", _mutate(_set_model(1, "ctx_max", 512.5)), "models[1].ctx_max", "512.5", "positive integer"),
    ("bool ctx_max", _mutate(_set_model(1, "ctx_max", True)), "models[1].ctx_max", "True", "positive integer"),
    ("string kv_tokens", _mutate(_set_model(2, "kv_tokens", "80GB")), "models[2].kv_tokens", "'80GB'", "positive integer"),
    ("negative kv_tokens", _mutate(_set_model(0, "kv_tokens", -5)), "models[0].kv_tokens", "-5", "positive integer"),
    ("kv_tokens below a task's mean request", _mutate(_set_model(1, "kv_tokens", 100)), "models[1].kv_tokens", "100",
     "mean prompt + output"),
    ("iteration not an object", _mutate(_set_model(0, "iteration", [1, 2, 3, 4, 5])), "models[0].iteration",
     "[1, 2, 3, 4, 5]", "expected an object"),
    ("unknown coefficient", _mutate(_set_it(1, "per_layer_s", 1e-4)), "models[1].iteration.per_layer_s", "0.0001",
     "unknown coefficient"),
    ("missing coefficient", _mutate(lambda d: d["models"][2]["iteration"].pop("weights_s")),
     "models[2].iteration.weights_s", "None", "missing"),
    ("negative coefficient", _mutate(_set_it(0, "per_seq_s", -1e-5)), "models[0].iteration.per_seq_s", "-1e-05", ">= 0"),
    ("nan coefficient", _mutate(_set_it(2, "fixed_s", float("nan"))), "models[2].iteration.fixed_s", "nan", "finite"),
    ("string coefficient", _mutate(_set_it(1, "per_token_s", "fast")), "models[1].iteration.per_token_s", "'fast'",
     "number"),
    ("all-zero iteration", _mutate(lambda d: d["models"][0].__setitem__("iteration", dict.fromkeys(ITERATION_FIELDS, 0))),
     "models[0].iteration", "0", "no time"),
    ("unknown length dist", _mutate(lambda d: d["tasks"][1].__setitem__("prompt_len", {"dist": "zipf", "a": 2})),
     "tasks[1].prompt_len", "'zipf'", "one of"),
    ("negative cv", _mutate(lambda d: d["tasks"][1]["output_len"].__setitem__("cv", -1.0)),
     "tasks[1].output_len", "-1.0", "> 0"),
    ("uniform max below min", _mutate(lambda d: d["tasks"][1].__setitem__("prompt_len", {"dist": "uniform", "min": 50, "max": 10})),
     "tasks[1].prompt_len", "10", "min"),
    ("zero fixed length", _mutate(lambda d: d["tasks"][0].__setitem__("output_len", 0)), "tasks[0].output_len", "0",
     "integer >= 1"),
    ("negative request overhead", _mutate(_set_model(1, "request_overhead_s", -0.002)), "models[1].request_overhead_s",
     "-0.002", ">= 0"),
    ("string request overhead", _mutate(_set_model(0, "request_overhead_s", "5ms")), "models[0].request_overhead_s",
     "'5ms'", "number"),
]


@pytest.mark.parametrize("what,doc,field,value,problem", CASES, ids=[c[0] for c in CASES])
def test_broken_continuous_fields_name_file_field_value(tmp_path, what, doc, field, value, problem):
    path = tmp_path / "broken_v2.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ProfileError) as e:
        load_profile(path)
    msg = str(e.value)
    assert "broken_v2.json" in msg and f"'{field}'" in msg and value in msg and problem in msg, msg


def test_continuous_fields_are_optional_but_required_for_a_continuous_run():
    p = profile_from_dict(synthetic_profile_dict(), "v1.json")  # a request-level profile stays valid
    assert not p.supports_continuous
    with pytest.raises(ProfileError, match=r"v1.json: field 'models\[0\].ctx_max'.*continuous"):
        p.require_continuous()
    d = continuous_profile_dict()
    d["models"][1].pop("iteration")
    with pytest.raises(ProfileError, match=r"field 'models\[1\].iteration'"):
        profile_from_dict(d, "partial.json").iteration


def test_kv_tokens_may_be_below_ctx_max():
    """Only requests longer than the budget are rejected (at routing): not a profile error."""
    d = continuous_profile_dict()
    d["models"][0]["kv_tokens"], d["models"][0]["ctx_max"] = 400, 2048
    p = profile_from_dict(d, "small_kv.json")
    assert p.kv_tokens[0] == 400 < p.ctx_max[0]


def test_round_trip_keeps_continuous_fields(tmp_path):
    p = load_profile("opt-a100-80gb")
    path = tmp_path / "rt.json"
    p.save(path)
    q = load_profile(path)
    np.testing.assert_array_equal(q.iteration, p.iteration)
    np.testing.assert_array_equal(q.kv_tokens, p.kv_tokens)
    assert [t.prompt_dist for t in q.tasks] == [t.prompt_dist for t in p.tasks]


@pytest.mark.parametrize("name", ["opt-a100-80gb", "opt-h100-sxm"])
def test_length_distributions_realise_their_stated_means(name):
    """Rounding and clipping move the drawn mean by < 1% (docs/profiles.md says < 0.1%; this
    Monte-Carlo check has ~0.3% noise), and no draw overflows ctx_max."""
    from bes_jax.lengths import draw_length_np
    p = load_profile(name)
    rng = np.random.default_rng(0)
    for t in p.tasks:
        for d in (t.prompt_dist, t.output_dist):
            x = draw_length_np(rng, d, 200_000)
            assert abs(x.mean() / d.mean - 1) < 0.01, (t.name, d, x.mean())
        assert t.prompt_dist.hi + t.output_dist.hi <= p.ctx_max.min(), t.name
