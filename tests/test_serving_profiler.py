"""bes-profile on a tiny pool: a valid profile with few batch sizes, interpolation, provenance."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bes_jax.profile import load_profile, profile_from_dict

pytestmark = pytest.mark.serial  # timing: run alone (README), not beside other tests


def test_fill_batch_sizes_is_monotone_interpolation():
    from bes_jax.serving.profiler import fill_batch_sizes, parse_batch_sizes
    assert parse_batch_sizes("all", 4) == [1, 2, 3, 4]
    assert parse_batch_sizes("2", 6) == [1, 2, 6]
    with pytest.raises(ValueError):
        parse_batch_sizes("9", 8)
    row = fill_batch_sizes({1: 1.0, 3: 3.0, 4: 2.5}, 4)
    np.testing.assert_allclose(row, [1.0, 2.0, 3.0, 3.0])


def test_committed_tiny_profile_is_valid():
    p = load_profile("tiny-cpu")
    assert p.model_names == ["tiny-s", "tiny-m", "tiny-l"]
    assert p.task_names == ["arc_easy", "piqa", "winogrande", "lambada"]
    # bigger model slower at batch 1, on every task; large alone meets its deadline at batch 1
    assert (np.diff(p.latency[:, :, 0], axis=0) > 0).all()
    assert (p.latency[2, :, 0] < p.deadlines).all() and (p.latency[2, :, -1] > p.deadlines).all()
    assert (np.diff(p.quality, axis=0) > 0).all()
    assert "tiny" in p.provenance["quality"] and p.provenance["tool"] == "bes-profile"


def test_profiler_writes_valid_profile(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from bes_jax.serving.profiler import main
    out = tmp_path / "p.json"
    rc = main(["--pool", "tiny", "--tasks", "piqa,lambada", "--b-max", "4", "--batch-sizes", "1,4",
               "--repeats", "1", "--warmup", "0", "--retries", "0", "--num-threads", "1",
               "--lengths", "piqa=8:2,lambada=12:2", "--out", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    p = profile_from_dict(doc, str(out))
    assert p.b_max == 4 and p.latency.shape == (3, 2, 4)
    prov = p.provenance
    # the table holds the measured medians where they were measured; a measured point is only
    # raised (to the running maximum) when the batch of one took longer, and interpolated sizes
    # lie between their measured neighbours
    for mi, m in enumerate(p.model_names):
        for ti, t in enumerate(p.task_names):
            r1, r4 = prov["raw_medians_s"][f"{m}/{t}"]["1"], prov["raw_medians_s"][f"{m}/{t}"]["4"]
            row = p.latency[mi, ti]
            assert row[0] == pytest.approx(r1, abs=1e-6)
            assert row[3] == pytest.approx(max(r1, r4), abs=1e-6)
            assert min(r1, r4) - 1e-6 <= row[1] <= row[2] <= max(r1, r4) + 1e-6
    assert prov["batch_sizes_measured"] == [1, 4] and prov["batch_sizes_interpolated"] == [2, 3]
    assert "interpolated" in prov["latency"] and prov["repeats"] == 1
    assert prov["weights"].startswith("random") and prov["pool_preset"] == "tiny"
    assert prov["torch_version"] and p.hardware["name"]
    assert p.quality[2, 0] == pytest.approx(0.7628)  # tiny-l borrows OPT-6.7B on PIQA
    assert p.tasks[0].prompt_len == 8 and p.tasks[1].output_len == 2


def test_profiler_rejects_bad_arguments(tmp_path, capsys):
    pytest.importorskip("torch")
    from bes_jax.serving.profiler import main
    assert main(["--tasks", "mmlu", "--out", str(tmp_path / "x.json")]) == 2
    assert "mmlu" in capsys.readouterr().err
    # live engines: a bad pause is refused before any engine is contacted
    assert main(["--engine", "http://127.0.0.1:9", "--idle-s", "-1", "--out", str(tmp_path / "y.json")]) == 2
    assert "--idle-s -1.0: must be a finite number of seconds >= 0" in capsys.readouterr().err
    # an engine that is not there: a clear error naming it, not a traceback
    assert main(["--engine", "http://127.0.0.1:9", "--out", str(tmp_path / "z.json")]) == 2
    err = capsys.readouterr().err
    assert "bes-profile: error: engine http://127.0.0.1:9" in err and "ConnectError" in err


def test_measured_latency_grows_with_batch_size_and_model_size():
    """The raw measurement (no interpolation, no running maximum): a batch of 8 takes longer
    than a batch of one, and the large tiny model longer than the small one."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from bes_jax.serving.pool import Pool
    from bes_jax.serving.profiler import measure_batch
    pool = Pool(["tiny-s", "tiny-l"], b_max=8, queue_capacity=1, num_threads=1)
    rng = np.random.default_rng(0)

    def med(m, b):
        return measure_batch(pool, m, 24, 2, b, repeats=3, warmup=1, rng=rng, retries=1)[0]
    s1, l1, l8 = med(0, 1), med(1, 1), med(1, 8)
    # about 4x and 15x on an idle core (profiles/tiny-cpu.json); the margins absorb a busy one
    assert l8 > 1.5 * l1, (l1, l8)
    assert l1 > 3 * s1, (s1, l1)
