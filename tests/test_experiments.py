"""Experiment plumbing: training on a trace, fixed task mixes, parameter-variant evaluation in one
program, and the `bes-experiment` Hydra multirun app at a tiny size."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, TRACES

AZURE = TRACES / "AzureLLMInferenceTrace_code.csv"
MAF = TRACES / "maf2019_invitro_500fn_min480-959.csv"
needs_traces = pytest.mark.skipif(not (AZURE.exists() and MAF.exists()), reason="../shared/traces not present")


def _bank(overrides, bank_size=4):
    from bes_jax.agents.training import build_training_bank
    from bes_jax.config import compose_train_config
    from bes_jax.profile import load_profile

    cfg = compose_train_config([f"train_family.bank_size={bank_size}", *overrides])
    return build_training_bank(cfg.train_family, load_profile(cfg.profile), None, 10.0, 0)


@needs_traces
def test_trace_kind_trains_on_its_part_of_the_trace(monkeypatch):
    from bes_jax import workloads as W
    from bes_jax.workloads.from_config import trace_part

    monkeypatch.chdir(REPO)
    bank = _bank(["train_family.kinds=[trace,poisson]", f"train_family.trace_path={AZURE}",
                  "train_family.trace_span=[0.0,0.5]"])
    n_all = W.load_trace_times(str(AZURE), None).size
    assert np.asarray(bank.kind).tolist() == [W.TRACE, W.SCHEDULE] * 2
    assert bank.trace_times.shape == (4, round(0.5 * n_all))
    first, rest = trace_part(str(AZURE), [0.0, 0.5]), trace_part(str(AZURE), [0.5, 1.0])
    assert first.size + rest.size == n_all and first[0] == 0.0 == rest[0]


@needs_traces
def test_fixed_mix_is_used_for_every_workload(monkeypatch):
    monkeypatch.chdir(REPO)
    bank = _bank(["train_family.mix=[0.1,0.4,0.4,0.1]"])
    assert np.allclose(np.asarray(bank.mix)[:, 0], [0.1, 0.4, 0.4, 0.1])


@needs_traces
@pytest.mark.parametrize("overrides, exc, words", [
    (["train_family.kinds=[trace]"], ValueError, "train_family.trace_path = None"),
    (["train_family.kinds=[trace]", "train_family.trace_path=nope.csv"], FileNotFoundError, "train_family.trace_path = 'nope.csv'"),
    (["train_family.kinds=[trace]", f"train_family.trace_path={AZURE}", "train_family.trace_span=[0.6,0.2]"],
     ValueError, "train_family.trace_span = [0.6, 0.2]"),
    (["train_family.mix=[0.5,0.5]"], ValueError, "train_family.mix = [0.5, 0.5]"),
    (["train_family.kinds=[poisson,bursty]"], ValueError, "train_family.kinds = ['poisson', 'bursty']"),
])
def test_bad_training_family_values_are_named(monkeypatch, overrides, exc, words):
    monkeypatch.chdir(REPO)
    with pytest.raises(exc, match=__import__("re").escape(words)):
        _bank(overrides)


@needs_traces
def test_held_out_trace_workload(monkeypatch):
    from bes_jax.workloads.from_config import build_workload
    from bes_jax.profile import load_profile

    monkeypatch.chdir(REPO)
    prof = load_profile("opt-a100-80gb")
    wp = build_workload({"kind": "trace", "path": str(AZURE), "span": [0.5, 1.0], "rate": 20.0}, prof)
    assert int(wp.trace_len) == 8819 - round(0.5 * 8819)
    with pytest.raises(ValueError, match=r"workload.span = \[1.0, 0.5\]"):
        build_workload({"kind": "trace", "path": str(AZURE), "span": [1.0, 0.5], "rate": 20.0}, prof)


def test_evaluate_variants_matches_one_at_a_time(synthetic_profile):
    from bes_jax import workloads as W
    from bes_jax.env import ServingEnv
    from bes_jax.eval.experiments import evaluate_variants
    from bes_jax.eval.rollout import eval_config
    from bes_jax.routers import greedy
    from bes_jax.sim_config import SimConfig

    prof = synthetic_profile
    env = ServingEnv(prof, eval_config(SimConfig(n_gpus=1, placement="concurrent"), 60))
    base = env.make_params(W.poisson(30.0, n_tasks=prof.n_tasks))
    variants = [base.replace(deadline=base.deadline * s) for s in (0.3, 1.0)]
    both = evaluate_variants(env, greedy(), variants, [0, 1], 60, 5.0, prof.model_names)
    alone = evaluate_variants(env, greedy(), variants[:1], [0, 1], 60, 5.0, prof.model_names)
    assert len(both) == 2 and len(both[0]) == 2
    assert [r["performance"] for r in both[0]] == pytest.approx([r["performance"] for r in alone[0]], abs=1e-6)
    assert np.mean([r["performance"] for r in both[0]]) <= np.mean([r["performance"] for r in both[1]]) + 1e-6


def test_experiment_job_rejects_bad_values(tmp_path):
    from hydra import compose, initialize_config_dir

    from bes_jax import CONF_DIR
    from bes_jax.cli.experiment import run_job

    for overrides, words in ((["seeds=[]"], "seeds = []"), (["test_on=[nope]"], "test_on = ['nope']"),
                             (["+eval_sim.deadline=1"], "eval_sim: unknown sim field(s) ['deadline']")):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = compose(config_name="experiment_job", overrides=overrides)
        with pytest.raises(ValueError, match=__import__("re").escape(words)):
            run_job(cfg, tmp_path)


@needs_traces
def test_experiment_multirun_writes_one_json_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-c", "from bes_jax.cli.experiment import main; main()", "-m", "sim.latency_weight=0.1",
           f"hydra.sweep.dir={sweep}", "seeds=[0,1]", "dqn.iterations=60", "dqn.chunk_iterations=30",
           "dqn.learning_starts=20", "train_family.bank_size=3", "eval.n_decisions=60", "eval.seeds=[1]",
           "test_on=[maf_440_x2]"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ})
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((sweep / "0" / "result.json").read_text())
    assert res["train_seeds"] == [0, 1] and res["sim"]["latency_weight"] == 0.1 and res["eval_sim"] == res["sim"]
    assert "sim.latency_weight=0.1" in res["overrides"]
    row = res["results"]["maf_440_x2"]
    assert row["learned"]["performance"]["seeds"] == 2 and len(row["learned_per_seed"]) == 2
    assert set(row["baselines"]) == {"static:opt-125m", "static:opt-1.3b", "static:opt-6.7b", "random", "greedy"}
    assert all(np.isfinite(v["performance"]["mean"]) for v in row["baselines"].values())


def test_deadline_bank_scales_every_task_within_the_range_and_refuses_bad_ranges():
    from bes_jax.agents.training import build_deadline_bank
    from bes_jax.config import compose_train_config

    base = np.array([0.5, 0.25, 0.25, 1.0])
    assert build_deadline_bank(compose_train_config([]).train_family, base, 64, 0) is None  # default: the sim's
    fam = compose_train_config(["train_family.deadline_scale_range=[0.5,2.0]"]).train_family
    bank = build_deadline_bank(fam, base, 64, 0)
    scale = bank / base
    assert bank.shape == (64, 4) and np.allclose(scale, scale[:, :1])  # one scale for every task of an entry
    assert 0.5 <= scale.min() < 0.8 and 1.25 < scale.max() <= 2.0
    np.testing.assert_array_equal(bank, build_deadline_bank(fam, base, 64, 0))  # reproducible from the seed
    for bad in ("[2.0,0.5]", "[0.0,1.0]", "[1.0]"):
        fam = compose_train_config([f"train_family.deadline_scale_range={bad}"]).train_family
        with pytest.raises(ValueError, match="train_family.deadline_scale_range"):
            build_deadline_bank(fam, base, 8, 0)
