"""The Qwen2.5 profile (`bes_jax/profiles/qwen2.5-h100-sxm.json`, docs/profiles.md "Qwen2.5 on
H100"): a second model family with grouped-query attention and a gated FFN, long context."""
from __future__ import annotations

import dataclasses
import importlib.util
import json

import jax
import numpy as np
import pytest

from bes_jax import PROFILES_DIR
from bes_jax import workloads as W
from bes_jax.env import SERVED, make_serving_env
from bes_jax.eval.rollout import eval_config, make_run
from bes_jax.latency.iteration import iteration_coefficients, static_batch_latency
from bes_jax.latency.model import QWEN25_ARCHS, predict
from bes_jax.lengths import draw_length_np
from bes_jax.profile import ITERATION_FIELDS, load_profile
from bes_jax.routers.baselines import static
from bes_jax.sim_config import SimConfig
from conftest import REPO

NAME = "qwen2.5-h100-sxm"
MODELS = ["qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-7b"]


@pytest.fixture(scope="module")
def profile():
    return load_profile(NAME)


@pytest.fixture(scope="module")
def make_profile():
    spec = importlib.util.spec_from_file_location("make_profile", REPO / "scripts" / "make_profile.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_loads_and_supports_continuous_batching(profile):
    assert profile.model_names == MODELS and profile.hardware["name"] == "h100-sxm"
    assert profile.supports_continuous
    profile.require_continuous()
    assert (profile.ctx_max == 32768).all()
    assert (profile.kv_tokens >= profile.ctx_max).all()  # a full-context request fits on every model
    assert [t.prompt_len for t in profile.tasks] == [round(x) for x in profile.mean_prompt_len]
    assert [t.output_len for t in profile.tasks] == [round(x) for x in profile.mean_output_len]
    for key in ("latency", "quality", "architecture", "params", "ctx_max", "kv_tokens", "iteration",
                "length_distributions", "deadlines"):
        assert key in profile.provenance, key
    assert "2412.15115" in profile.provenance["quality"] and "config.json" in profile.provenance["architecture"]
    assert (np.diff(profile.quality, axis=0) > 0).all()  # every task: bigger is better


def test_shipped_file_is_what_the_script_makes(make_profile):
    shipped = json.loads((PROFILES_DIR / f"{NAME}.json").read_text())
    assert shipped == json.loads(json.dumps(make_profile.make_qwen())), "re-run scripts/make_profile.py --qwen"


def test_published_numbers(profile, make_profile):
    # parameter counts from the configs match the model cards: 0.49B, 1.54B (1.31B non-embedding), 7.61B (6.53B)
    params = dict(make_profile.QWEN_MODELS)
    for name, total, non_emb, tied in (("qwen2.5-0.5b", 0.49e9, None, True), ("qwen2.5-1.5b", 1.54e9, 1.31e9, True),
                                       ("qwen2.5-7b", 7.61e9, 6.53e9, False)):
        a = QWEN25_ARCHS[name]
        assert abs(params[name] - total) < 0.01e9, name  # the cards give 0.01B (some rounded, some truncated)
        if non_emb:
            emb = a.vocab * a.hidden * (1 if tied else 2)
            assert abs(params[name] - emb - non_emb) < 0.01e9, name
    # report Tables 5 (0.5B, 1.5B) and 4 (7B)
    q = dict(zip(profile.task_names, profile.quality.T))
    np.testing.assert_allclose(q["mmlu"], [0.475, 0.609, 0.742])
    np.testing.assert_allclose(q["gsm8k"], [0.416, 0.685, 0.854])


def test_gqa_kv_bytes_below_an_equal_width_mha_model(profile):
    for i, name in enumerate(MODELS):
        gqa = QWEN25_ARCHS[name]
        mha = dataclasses.replace(gqa, n_kv_heads=None)
        assert gqa.kv_bytes_per_token * gqa.heads // gqa.kv_heads == mha.kv_bytes_per_token
        assert gqa.kv_bytes_per_token < mha.kv_bytes_per_token
        assert gqa.kv_bytes_per_token == 2 * gqa.layers * gqa.kv_heads * gqa.head_dim * 2
        c_gqa, c_mha = iteration_coefficients(gqa, "h100-sxm"), iteration_coefficients(mha, "h100-sxm")
        assert c_gqa["per_kv_token_s"] < c_mha["per_kv_token_s"] and c_gqa["weights_s"] < c_mha["weights_s"]
        assert predict(gqa, "h100-sxm", 8, 1024, 64) < predict(mha, "h100-sxm", 8, 1024, 64)
        # the profile ships these coefficients (4 significant digits)
        np.testing.assert_allclose(profile.iteration[i], [c_gqa[k] for k in ITERATION_FIELDS], rtol=1e-3)
    assert QWEN25_ARCHS["qwen2.5-7b"].kv_bytes_per_token == 57344  # 2 x 28 layers x 4 KV heads x 128 x 2 B


def test_every_request_fits_the_large_model_alone(profile):
    """The deadline rule's premise holds at the length bounds, not only at the means: Qwen2.5-7B
    alone serves a request with the longest prompt and output of its task within the deadline."""
    coef = dict(zip(ITERATION_FIELDS, profile.iteration[-1]))
    for t in profile.tasks:
        assert static_batch_latency(coef, 1, int(t.prompt_dist.hi), int(t.output_dist.hi)) <= t.deadline_s, t.name
        assert profile.latency[-1, profile.task_names.index(t.name), 0] * 2.5 == pytest.approx(t.deadline_s, abs=1e-3)
        assert t.prompt_dist.hi + t.output_dist.hi <= profile.ctx_max.min()


def test_length_distributions_realise_their_stated_means(profile):
    rng = np.random.default_rng(0)
    for t in profile.tasks:
        for d in (t.prompt_dist, t.output_dist):
            x = draw_length_np(rng, d, 100_000)
            assert abs(x.mean() / d.mean - 1) < 0.01, (t.name, d, x.mean())


def test_static_large_model_meets_deadlines_at_low_load(profile):
    """A short continuous-batching run: every request routed to Qwen2.5-7B at a low rate is served
    within its task's end-to-end deadline."""
    n = 120
    cfg = eval_config(SimConfig(batching="continuous", n_gpus=1, max_num_seqs=16, queue_capacity=16,
                                outcome_slots=128), n)
    env = make_serving_env(profile, cfg)
    params = env.make_params(W.poisson(0.5, n_tasks=profile.n_tasks))
    run = jax.jit(make_run(env, static(len(MODELS) - 1), n))
    o = jax.tree.map(lambda x: np.asarray(x[0]), run(jax.random.PRNGKey(0)[None], params).outcomes)
    done = o.decision >= 0
    assert done.sum() == n
    assert (o.status[done] == SERVED).all() and (o.model[done] == len(MODELS) - 1).all()
    e2e = o.finish[done] - o.arrival[done]
    assert (e2e <= profile.deadlines[o.task[done]] + 1e-6).all(), np.sort(e2e / profile.deadlines[o.task[done]])[-5:]
    assert len(set(o.task[done].tolist())) == profile.n_tasks and (o.output[done] > 1).any()
