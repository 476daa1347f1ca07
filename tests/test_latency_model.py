"""The analytic latency model: sane shape, calibration reproducible, generalises, CLI."""
from __future__ import annotations

import numpy as np
import pytest

from bes_jax.cli.latency import main as latency_main
from bes_jax.latency.model import (ARCHS, CALIBRATED, CSV_PATH, GPU, breakdown, calibrate, errors,
                                   leave_one_model_out, load_gpus, load_rows, predict)

needs_csv = pytest.mark.skipif(not CSV_PATH.exists(), reason="../shared/docs not present")
OPT = ["opt-125m", "opt-350m", "opt-1.3b", "opt-2.7b", "opt-6.7b", "opt-13b"]


@pytest.mark.parametrize("gpu", ["a100-40gb", "a100-80gb", "h100-sxm"])
@pytest.mark.parametrize("model", ["opt-125m", "opt-1.3b", "opt-6.7b"])
def test_monotone_in_batch_and_output_length(model, gpu):
    for p, o in ((128, 8), (512, 32)):
        lat = [predict(model, gpu, b, p, o) for b in range(1, 65)]
        assert np.all(np.diff(lat) > 0)
    for b in (1, 8, 32):
        lat = [predict(model, gpu, b, 256, o) for o in (1, 2, 4, 8, 16, 32, 64)]
        assert np.all(np.diff(lat) > 0)
        lat = [predict(model, gpu, b, p, 16) for p in (16, 64, 128, 512, 1024)]
        assert np.all(np.diff(lat) > 0)


@pytest.mark.parametrize("b,p,o", [(1, 128, 8), (8, 512, 32), (32, 256, 16)])
def test_bigger_model_slower_and_faster_gpu_faster(b, p, o):
    for gpu in ("a100-40gb", "a100-80gb", "h100-sxm"):
        sizes = [predict(m, gpu, b, p, o) for m in OPT]
        assert np.all(np.diff(sizes) > 0), (gpu, sizes)
    for m in OPT:
        assert predict(m, "h100-sxm", b, p, o) < predict(m, "a100-80gb", b, p, o) < predict(m, "a100-40gb", b, p, o)


def test_breakdown_sums_to_prediction_and_is_non_negative():
    parts = breakdown("opt-6.7b", "a100-80gb", 8, 512, 32)
    assert all(v >= 0 for v in parts.values())
    assert np.isclose(sum(parts.values()), predict("opt-6.7b", "a100-80gb", 8, 512, 32))
    one = breakdown("opt-1.3b", "a100-80gb", 4, 128, 1)  # prefill only: no decode work
    assert one["decode_matmuls"] == one["decode_attention_kv"] == 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch"):
        predict("opt-1.3b", "a100-80gb", 0, 128, 8)
    with pytest.raises(KeyError, match="opt-6.7b"):
        predict("opt-99b", "a100-80gb", 1, 128, 8)
    with pytest.raises(KeyError, match="h100-sxm"):
        predict("opt-1.3b", "tpu", 1, 128, 8)


def test_shapes_are_consistent():
    for name, a in ARCHS.items():
        assert a.heads * a.head_dim == a.hidden and a.ffn == 4 * a.hidden, name
    # fp16 weight bytes within 5% of OPT_FACTS.md (which also counts biases, norms, positions)
    for name, gb in (("opt-125m", 0.25), ("opt-1.3b", 2.63), ("opt-6.7b", 13.32)):
        assert abs(ARCHS[name].weight_bytes / 1e9 / gb - 1) < 0.05, name


@needs_csv
def test_calibration_reproduces_the_shipped_constants():
    rows = load_rows()
    assert len(rows) == 28
    fit = calibrate(rows)
    for k in ("bw_eff", "flop_eff", "kv_eff", "layer_s", "seq_layer_s"):
        assert np.isclose(getattr(fit, k), getattr(CALIBRATED, k), rtol=2e-3), (k, fit, CALIBRATED)
    e = np.abs(errors(rows, CALIBRATED))
    assert np.median(e) < 0.05 and e.max() < 0.10


@needs_csv
def test_generalises_to_a_model_it_was_not_fitted_on():
    rows = load_rows()
    loo = leave_one_model_out(rows)
    assert set(loo) == {"gpt-350m", "gpt-1.3b"}
    for held_out, (c, e) in loo.items():
        assert len(e) == 14
        assert np.median(np.abs(e)) <= 0.15, (held_out, c, e)


def test_cli_last_line_is_the_latency(capsys):
    assert latency_main(["--model", "opt-6.7b", "--gpu", "a100-80gb", "--batch", "8",
                         "--prompt-len", "512", "--output-len", "32"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) > 2  # a breakdown first
    last = float(out[-1])
    assert np.isclose(last, predict("opt-6.7b", "a100-80gb", 8, 512, 32), rtol=1e-5)


def test_cli_unknown_names_list_known_ones(capsys):
    assert latency_main(["--model", "opt-999b", "--gpu", "a100-80gb"]) != 0
    err = capsys.readouterr().err
    assert "opt-999b" in err and "opt-6.7b" in err and "opt-125m" in err
    assert latency_main(["--model", "opt-1.3b", "--gpu", "tpu-v9"]) != 0
    err = capsys.readouterr().err
    assert "tpu-v9" in err and "h100-sxm" in err and "a100-80gb" in err
    assert latency_main(["--model", "opt-1.3b", "--batch", "0"]) != 0
    assert "batch" in capsys.readouterr().err


def test_cli_gpu_file_and_flags(tmp_path, capsys):
    f = tmp_path / "g.yaml"
    f.write_text("slowgpu:\n  bandwidth_gbps: 500\n  peak_tflops: 100\n")
    assert latency_main(["--model", "opt-1.3b", "--gpu", "slowgpu", "--gpu-file", str(f)]) == 0
    from_file = float(capsys.readouterr().out.strip().splitlines()[-1])
    assert np.isclose(from_file, predict("opt-1.3b", GPU("slowgpu", 500e9, 100e12), 1, 128, 8), rtol=1e-5)
    assert latency_main(["--model", "opt-1.3b", "--bandwidth-gbps", "500", "--peak-tflops", "100"]) == 0
    assert np.isclose(float(capsys.readouterr().out.strip().splitlines()[-1]), from_file, rtol=1e-6)
    assert latency_main(["--model", "opt-1.3b", "--bandwidth-gbps", "500"]) != 0
    capsys.readouterr()
    bad = tmp_path / "bad.yaml"
    bad.write_text("broken:\n  bandwidth_gbps: fast\n")
    assert latency_main(["--model", "opt-1.3b", "--gpu", "broken", "--gpu-file", str(bad)]) != 0
    assert "broken" in capsys.readouterr().err


def test_repo_gpu_file_loads():
    from bes_jax import CONF_DIR
    path = CONF_DIR / "gpus.yaml"
    if not path.exists():
        pytest.skip("no bes_jax/conf/gpus.yaml")
    gpus = load_gpus(path)
    assert gpus and all(g.bandwidth > 0 and g.peak_flops > 0 for g in gpus.values())
