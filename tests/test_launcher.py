"""`bes-experiment -m ... hydra/launcher=joblib`: a 2-job multirun of a tiny experiment runs
both jobs through the joblib launcher (local processes) and writes each job's result."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["sim=default", "seeds=[0]", "test_on=[gamma_test_x10]", "eval.n_decisions=60", "eval.seeds=[1]", "train_family.bank_size=2",
        "dqn.n_envs=4", "dqn.iterations=20", "dqn.chunk_iterations=10", "dqn.batch_size=8", "dqn.learning_starts=8",
        "dqn.hidden=[8]"]


def test_joblib_multirun_of_two_jobs(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "JAX_PLATFORMS": "cpu"}
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "bes_jax.cli.experiment", "-m", "sim.latency_weight=0,0.1", *TINY,
           "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}"]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    assert "Joblib" in r.stdout + r.stderr  # hydra reports the launcher it used
    res = [json.loads((sweep / str(i) / "result.json").read_text()) for i in range(2)]
    assert sorted(x["sim"]["latency_weight"] for x in res) == [0.0, 0.1]
    for x in res:
        assert x["results"]["gamma_test_x10"]["learned"]["performance"]["seeds"] == 1
    launched = (sweep / "multirun.yaml").read_text()
    assert "JoblibLauncher" in launched and "n_jobs: 2" in launched
