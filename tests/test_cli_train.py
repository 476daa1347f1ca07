"""`bes-train` end to end at a tiny budget: outputs, export, and resume on a rerun, in the
default serving model (continuous batching) and, for ES, the request-level one."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, TRACES

pytestmark = pytest.mark.skipif(not (TRACES / "maf2019_invitro_500fn_min480-959.csv").exists(),
                                reason="../shared/traces not present")

SMALL = ["dqn.iterations=200", "dqn.chunk_iterations=100", "dqn.learning_starts=50", "eval.n_decisions=200",
         "eval.seeds=[1]", "progress.n_decisions=100", "~eval.workloads.maf_test_x20", "~eval.workloads.gamma_test_x10",
         "train_family.bank_size=6"]


def bes_train(run_dir, *extra):
    cmd = [sys.executable, "-c", "from bes_jax.cli.train import main; main()", f"hydra.run.dir={run_dir}", *SMALL, *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ})


def test_main_job_in_continuous_mode_by_default_writes_everything_and_resumes(tmp_path):
    """The default config serves with continuous batching: results say so, with its metrics;
    everything is written, and a rerun resumes from the checkpoints."""
    run = tmp_path / "run"
    r = bes_train(run)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[chunk   2/2]" in r.stdout and "held-out workload maf_test_x5" in r.stdout
    for name in ("policy/weights.npz", "policy/metadata.json", "results.json", "train.png"):
        assert (run / name).exists(), name
    res = json.loads((run / "results.json").read_text())
    routers = res["results"]["maf_test_x5"]["routers"]
    assert set(routers) == {"learned", "static:opt-125m", "static:opt-1.3b", "static:opt-6.7b", "random", "greedy"}
    assert res["sim"]["placement"] == "exclusive" and res["capacity"]["req_per_s"] > 0
    assert res["sim"]["batching"] == "continuous"
    assert {"ttft_p50", "tpot_p99", "output_tokens_per_s", "kv_utilisation", "slo_goodput"} <= set(routers["learned"])
    meta = json.loads((run / "policy" / "metadata.json").read_text())
    assert meta["sim_config"]["batching"] == "continuous"
    w1 = dict(np.load(run / "policy" / "weights.npz"))
    r2 = bes_train(run)  # everything is checkpointed: a rerun resumes at the end and exports the same policy
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "resuming from checkpoint" in r2.stdout
    w2 = dict(np.load(run / "policy" / "weights.npz"))
    assert all(np.array_equal(w1[k], w2[k]) for k in w1)
    r3 = bes_train(run, "dqn.lr=0.01")  # another config in the same directory is refused
    assert r3.returncode == 2 and "fingerprint" in r3.stderr
    r4 = bes_train(tmp_path / "run4", "progress.workload=maf_test_x5")  # progress is never measured on the test set
    assert r4.returncode == 2 and "not a tuning-set workload" in r4.stderr


def test_es_learner_trains_and_exports(tmp_path):
    """`learner=es` (request-level batching): progress shows the population's episode score and
    the export is the network it trained (checkpoint resume is the shared trainer's, tested with
    DQN above and PQN)."""
    run = tmp_path / "es"
    es = ["sim=default", "learner=es", "es.population=4", "es.workloads=2", "es.episode_decisions=60",
          "es.warmup_decisions=20", "es.generations=2", "es.chunk_generations=1", "es.hidden=[8]"]
    r = bes_train(run, *es)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[chunk   2/2]" in r.stdout and "episode score" in r.stdout, r.stdout[-2000:]
    meta = json.loads((run / "policy" / "metadata.json").read_text())
    assert meta["kind"] == "es policy network (argmax)" and meta["hidden"] == [8]
    assert meta["train_config"]["learner"] == "es" and meta["train_config"]["es"]["warmup_decisions"] == 20
    res = json.loads((run / "results.json").read_text())
    assert res["learner"] == "es" and "learned" in res["results"]["maf_test_x5"]["routers"]
    w = dict(np.load(run / "policy" / "weights.npz"))
    assert sorted(w) == ["hidden_0/bias", "hidden_0/kernel", "out/bias", "out/kernel"]
