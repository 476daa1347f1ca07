"""The analytic latency model: sane shape, calibration reproducible, generalises, CLI."""
from __future__ import annotations

import numpy as np
import pytest

from bes_jax.cli.latency import main as latency_main
from bes_jax.latency.model import CALIBRATED, calibrate, errors, load_rows, predict

pytestmark = pytest.mark.skipif(not load_rows.__defaults__[0].exists(), reason="../shared/docs not present")


def test_monotone_and_ordered():
    b = [predict("opt-1.3b", "a100-80gb", x, 256, 16) for x in (1, 2, 8, 32)]
    assert np.all(np.diff(b) > 0)
    assert predict("opt-1.3b", "a100-80gb", 4, 256, 32) > predict("opt-1.3b", "a100-80gb", 4, 256, 16)
    sizes = [predict(m, "a100-80gb", 4, 256, 16) for m in ("opt-125m", "opt-1.3b", "opt-6.7b", "opt-13b")]
    assert np.all(np.diff(sizes) > 0)
    assert predict("opt-6.7b", "h100-sxm", 8, 512, 32) < predict("opt-6.7b", "a100-80gb", 8, 512, 32) \
        < predict("opt-6.7b", "a100-40gb", 8, 512, 32)


def test_calibration_reproduces_the_shipped_constants():
    fit = calibrate(load_rows())
    for k in ("bw_eff", "flop_eff", "kv_cost", "layer_s", "step_s", "seq_layer_s"):
        assert np.isclose(getattr(fit, k), getattr(CALIBRATED, k), rtol=2e-3), k
    assert np.median(np.abs(errors(load_rows(), CALIBRATED))) < 0.05


def test_generalises_to_a_model_it_was_not_fitted_on():
    rows = load_rows()
    train = [r for r in rows if r["model"] == "gpt-350m"]
    test = [r for r in rows if r["model"] == "gpt-1.3b"]
    assert np.median(np.abs(errors(test, calibrate(train)))) <= 0.15


def test_cli_last_line_is_the_latency(capsys):
    assert latency_main(["--model", "opt-6.7b", "--gpu", "a100-80gb", "--batch", "8",
                         "--prompt-len", "512", "--output-len", "32"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert np.isclose(float(last), predict("opt-6.7b", "a100-80gb", 8, 512, 32), rtol=1e-5)


def test_cli_unknown_names(capsys):
    assert latency_main(["--model", "opt-999b", "--gpu", "a100-80gb"]) == 2
    assert "opt-6.7b" in capsys.readouterr().err
    assert latency_main(["--model", "opt-1.3b", "--gpu", "tpu"]) == 2
    assert "h100-sxm" in capsys.readouterr().err


def test_cli_gpu_file(tmp_path, capsys):
    f = tmp_path / "g.yaml"
    f.write_text("mygpu:\n  bandwidth_gbps: 1000\n  peak_tflops: 100\n")
    assert latency_main(["--model", "opt-1.3b", "--gpu", "mygpu", "--gpu-file", str(f)]) == 0
    assert float(capsys.readouterr().out.strip().splitlines()[-1]) > 0
