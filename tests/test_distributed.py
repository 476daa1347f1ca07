"""One evaluation split over two `jax.distributed` processes on loopback gathers exactly the
metrics one process computes for all the environments."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bes_jax.eval.distributed import shard_bounds

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--router", "greedy", "--n-seeds", "5", "--workloads", "gamma_test_x10", "eval.n_decisions=150", "sim=default"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmd(out, *extra, late_s=0.0):
    """The module's command line; ``late_s``: this process reaches its gather that late (gloo alone
    gives up on a peer 30 s late)."""
    late = (f"import sys, time; import bes_jax.eval.distributed as d; ev = d.evaluate_sharded; "
            f"d.evaluate_sharded = lambda *a, **k: (time.sleep({late_s}), ev(*a, **k))[1]; "
            f"d.main(sys.argv[1:])")
    run = ["-c", late] if late_s else ["-m", "bes_jax.eval.distributed"]
    return [sys.executable, *run, *extra, "--out", str(out), *ARGS]


def test_shard_bounds_cover_every_environment_once():
    for n, p in [(5, 2), (4, 2), (1, 3), (7, 3)]:
        seen = []
        for i in range(p):
            a, b, per = shard_bounds(n, p, i)
            assert b - a == per
            seen += [min(j, n - 1) for j in range(a, b)]
        assert sorted(set(seen)) == list(range(n)) and len(seen) == -(-n // p) * p
    with pytest.raises(ValueError):
        shard_bounds(0, 2, 0)


def test_two_processes_on_loopback_gather_the_single_process_metrics(tmp_path):
    """Process 1 arrives 35 s after process 0 at the gather: it is waited for."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "JAX_PLATFORMS": "cpu"}
    port = _free_port()
    coord = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    procs = [subprocess.Popen(_cmd(tmp_path / f"p{i}.json", *coord, "--process-id", str(i), late_s=35.0 * i),
                              cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    single = subprocess.run(_cmd(tmp_path / "single.json"), cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert single.returncode == 0, single.stderr[-2000:]
    assert not (tmp_path / "p1.json").exists()  # process 0 writes the result
    two, one = json.loads((tmp_path / "p0.json").read_text()), json.loads((tmp_path / "single.json").read_text())
    assert two["processes"] == 2 and one["processes"] == 1
    w2, w1 = two["workloads"]["gamma_test_x10"], one["workloads"]["gamma_test_x10"]
    assert len(w1["per_env"]["performance"]) == 5
    assert w2["per_env"] == w1["per_env"] and w2["mean"] == w1["mean"]
    # the environments differ (each its own seed): the gather kept them apart and in order
    assert len(set(w1["per_env"]["performance"])) > 1
