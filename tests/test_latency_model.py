"""The analytic latency model: sane shape, calibration reproducible, generalises, CLI; its
iteration-level view (coefficients, GQA, KV budgets, static batches through iterations)."""
from __future__ import annotations

import numpy as np
import pytest

from bes_jax.cli.latency import main as latency_main
from bes_jax.latency.iteration import (fit_iteration, iteration_coefficients, kv_tokens, static_batch_latency,
                                       static_batch_schedule)
from bes_jax.latency.model import (ARCHS, CALIBRATED, CSV_PATH, GPU, GPUS, Arch, breakdown, calibrate, errors,
                                   leave_one_model_out, load_gpus, load_rows, predict)
from bes_jax.profile import ITERATION_FIELDS

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


@pytest.fixture(scope="module")
def loo():
    """Leave-one-model-out fits (about 2 s; shared by the tests that need them)."""
    return leave_one_model_out(load_rows())


@needs_csv
def test_generalises_to_a_model_it_was_not_fitted_on(loo):
    assert set(loo) == {"gpt-350m", "gpt-1.3b"}
    for held_out, (c, e) in loo.items():
        assert len(e) == 14
        assert np.median(np.abs(e)) <= 0.15, (held_out, c, e)


def test_cli_last_line_is_the_latency(capsys):
    assert latency_main(["--model", "opt-6.7b", "--gpu", "a100-80gb", "--batch", "8",
                         "--prompt-len", "512", "--output-len", "32"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) > 2  # a breakdown first
    it_line = next(line for line in out if line.startswith("iteration"))
    coef = iteration_coefficients("opt-6.7b", "a100-80gb")
    assert all(f"{k} {coef[k] * 1e6:.4g} us" in it_line for k in ITERATION_FIELDS), it_line
    via = next(line for line in out if "via iterations" in line)
    assert np.isclose(float(via.split()[-2]) / 1e3, static_batch_latency(coef, 8, 512, 32), rtol=1e-5)
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


# ----------------------------------------------------------------------------- iteration model

def test_kv_bytes_per_token_match_opt_facts_and_gqa_shrinks_them():
    for name, kv in (("opt-125m", 36_864), ("opt-1.3b", 196_608), ("opt-6.7b", 524_288)):
        assert ARCHS[name].kv_bytes_per_token == kv, name  # OPT_FACTS.md table
        assert ARCHS[name].kv_heads == ARCHS[name].heads  # OPT: no grouped-query attention
    mha = ARCHS["opt-6.7b"]
    gqa = Arch(32, 32, 128, 4096, 16384, n_kv_heads=8)  # a Llama-style 8-KV-head variant
    assert gqa.kv_hidden == 1024 and gqa.kv_bytes_per_token == mha.kv_bytes_per_token // 4
    # K and V projections shrink from h x h to h x kv_hidden each
    assert mha.matmul_params - gqa.matmul_params == 32 * 2 * 4096 * (4096 - 1024)
    c_mha, c_gqa = (iteration_coefficients(a, "a100-80gb") for a in (mha, gqa))
    assert np.isclose(c_gqa["per_kv_token_s"], c_mha["per_kv_token_s"] / 4)
    assert c_gqa["weights_s"] < c_mha["weights_s"] and c_gqa["fixed_s"] == c_mha["fixed_s"]
    # the per-operator model reads a quarter of the KV cache in decode
    kv = lambda a: breakdown(a, "a100-80gb", 8, 1024, 64)["decode_attention_kv"]
    assert np.isclose(kv(gqa), kv(mha) / 4)
    for bad in (0, 3, 64, True):
        with pytest.raises(ValueError, match="n_kv_heads"):
            Arch(32, 32, 128, 4096, 16384, n_kv_heads=bad)


@pytest.mark.parametrize("gpu", ["a100-80gb", "h100-sxm"])
def test_iteration_coefficients_follow_from_the_calibrated_constants(gpu):
    a, g, c = ARCHS["opt-1.3b"], GPUS[gpu], CALIBRATED
    coef = iteration_coefficients("opt-1.3b", gpu)
    assert list(coef) == list(ITERATION_FIELDS)
    assert np.isclose(coef["fixed_s"], 24 * c.layer_s) and np.isclose(coef["per_seq_s"], 24 * c.seq_layer_s)
    assert np.isclose(coef["weights_s"], a.weight_bytes / (c.bw_eff * g.bandwidth))
    assert np.isclose(coef["per_kv_token_s"], 196_608 / (c.kv_eff * g.bandwidth))
    assert 2 * a.matmul_params / (c.flop_eff * g.peak_flops) < coef["per_token_s"] < \
        1.2 * 2 * a.matmul_params / (c.flop_eff * g.peak_flops)  # + element-wise work
    # a batch of one decodes memory-bound, a 2048-token prefill chunk compute-bound
    assert coef["weights_s"] > coef["per_token_s"] * 1
    assert coef["per_token_s"] * 2048 > coef["weights_s"] + coef["per_kv_token_s"] * 2048


def test_static_batch_schedule_by_hand():
    # 2 requests, 3-token prompts, 2 output tokens, token budget 4:
    # it 0: prefill 3 (seq 0, done -> first token) + 1 (seq 1): n 2, C 3 + 1, tokens 4
    # it 1: decode seq 0 (C 3 + 1), prefill 2 of seq 1 (C 1 + 2): n 2, C 7, tokens 3; seq 0 completes
    # it 2: decode seq 1: n 1, C 4, tokens 1
    s = static_batch_schedule(2, 3, 2, max_num_seqs=2, max_num_batched_tokens=4)
    assert s.n.tolist() == [2, 2, 1] and s.context.tolist() == [4, 7, 4] and s.tokens.tolist() == [4, 3, 1]
    assert s.first_iter.tolist() == [0, 1] and s.finish_iter.tolist() == [1, 2]
    coef = dict(zip(ITERATION_FIELDS, (1.0, 0.5, 2.0, 0.25, 1.0)))
    # tau = 1 + 0.5 n + max(2 + 0.25 C, tokens) = [2 + max(3, 4), 2 + max(3.75, 3), 1.5 + max(3, 1)]
    assert s.times(coef).tolist() == [6.0, 5.75, 4.5]
    assert static_batch_latency(coef, 2, 3, 2, max_num_seqs=2, max_num_batched_tokens=4) == 16.25


def test_static_batch_waves_under_max_num_seqs_and_kv_budget():
    one = static_batch_schedule(1, 10, 3)
    assert one.n.tolist() == [1, 1, 1] and one.context.tolist() == [10, 11, 12] and one.tokens.tolist() == [10, 1, 1]
    for kwargs in ({"max_num_seqs": 2}, {"kv_tokens": 2 * 13 + 12}):  # room for two sequences
        s = static_batch_schedule(3, 10, 3, **kwargs)
        assert s.finish_iter.tolist() == [2, 2, 5], kwargs  # the third waits for a slot
        assert s.n.max() == 2
    with pytest.raises(ValueError, match="kv_tokens"):
        static_batch_schedule(1, 10, 3, kv_tokens=12)
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        static_batch_schedule(1, 10, 3, max_num_seqs=8, max_num_batched_tokens=4)
    with pytest.raises(ValueError, match="batch"):
        static_batch_schedule(0, 10, 3)


def test_unchunked_static_batch_is_one_prefill_then_decodes():
    coef = iteration_coefficients("opt-6.7b", "a100-80gb")
    b, p, o = 4, 512, 32
    f, s_, w, kv, tok = (coef[k] for k in ITERATION_FIELDS)
    prefill = f + s_ * b + max(w + kv * b * p, tok * b * p)
    decodes = sum(f + s_ * b + max(w + kv * b * (p + g), tok * b) for g in range(1, o))
    assert np.isclose(static_batch_latency(coef, b, p, o, max_num_batched_tokens=b * p), prefill + decodes)
    # chunking the prefill under a smaller budget costs extra iterations
    assert static_batch_latency(coef, b, p, o, max_num_batched_tokens=512) > prefill + decodes


@needs_csv
def test_static_batches_through_iterations_reproduce_the_ft_rows(loo):
    """Both serving modes agree on what FasterTransformer measured (docs/latency_model.md)."""
    rows = load_rows()

    def err(c, rs):
        return np.array([static_batch_latency(iteration_coefficients(r["model"], "a100-80gb", c), r["batch"],
                                              r["input_len"], r["output_len"]) / r["measured_s"] - 1 for r in rs])

    e_in = np.abs(err(CALIBRATED, rows))
    assert np.median(e_in) < 0.06 and e_in.max() < 0.10
    for held_out, (c, _) in loo.items():
        e = np.abs(err(c, [r for r in rows if r["model"] == held_out]))
        assert np.median(e) <= 0.15 and e.max() < 0.15, (held_out, e)


def test_fit_iteration_recovers_coefficients_it_generated():
    true = dict(zip(ITERATION_FIELDS, (2e-3, 5e-5, 4e-3, 2e-7, 1.5e-5)))
    rows = [(b, p, o, static_batch_latency(true, b, p, o)) for b in (1, 2, 4, 8, 16, 32)
            for p, o in ((64, 4), (128, 8), (512, 32), (1024, 16))]
    coef, err = fit_iteration(rows)
    assert np.abs(err).max() < 1e-6
    for k in ITERATION_FIELDS:
        assert np.isclose(coef[k], true[k], rtol=1e-3), (k, coef, true)
    with pytest.raises(ValueError, match="measured"):
        fit_iteration([(1, 8, 2, 0.0)])


def test_kv_tokens_from_a_memory_share():
    # OPT-6.7B with 0.55 of 80 GB: (44 - 13.317 - 1.5) GB / 524288 B
    assert kv_tokens(524_288, 80e9, 0.55, 2 * 6_658_473_984, 1.5e9) == int((44e9 - 2 * 6_658_473_984 - 1.5e9) // 524_288)
    with pytest.raises(ValueError, match="no room for KV"):
        kv_tokens(524_288, 80e9, 0.15, 2 * 6_658_473_984, 1.5e9)
    with pytest.raises(ValueError, match="share"):
        kv_tokens(524_288, 80e9, 1.5, 1e9, 0)


def test_gated_ffn_adds_one_matrix_and_leaves_opt_unchanged():
    """`Arch.ffn_matrices`: 2 (OPT/GPT up + down, the default) or 3 (SwiGLU gate + up + down)."""
    # the default is the two-matrix FFN the OPT numbers were made with: spelling it out changes nothing
    for name in OPT:
        a = ARCHS[name]
        assert a.ffn_matrices == 2
        h, k, f, L = a.hidden, a.kv_hidden, a.ffn, a.layers
        assert a.matmul_params == L * (2 * h * h + 2 * h * k + 2 * h * f)
        assert a.elementwise_values_per_token == 4 * h + 2 * f + 2 * (h + 2 * k)
        assert breakdown(name, "h100-sxm", 8, 512, 32) == breakdown(Arch(L, a.heads, a.head_dim, h, f, ffn_matrices=2),
                                                                     "h100-sxm", 8, 512, 32)
    assert predict("opt-6.7b", "a100-80gb", 1, 512, 32) == pytest.approx(0.426, abs=5e-4)  # docs/latency_model.md
    two = ARCHS["opt-1.3b"]
    three = Arch(24, 32, 64, 2048, 8192, ffn_matrices=3)
    assert three.matmul_params - two.matmul_params == 24 * 2048 * 8192  # one more h x f matrix per layer
    assert three.elementwise_values_per_token - two.elementwise_values_per_token == 8192  # act-and-mul reads 2f
    assert three.kv_bytes_per_token == two.kv_bytes_per_token
    c2, c3 = (iteration_coefficients(a, "h100-sxm") for a in (two, three))
    assert c3["weights_s"] > c2["weights_s"] and c3["per_token_s"] > c2["per_token_s"]
    assert c3["per_kv_token_s"] == c2["per_kv_token_s"] and c3["fixed_s"] == c2["fixed_s"]
    # prefill FFN FLOPs grow by half (2 -> 3 matrices of h x f): a compute-bound pass takes longer
    b2, b3 = (breakdown(a, "h100-sxm", 32, 512, 1) for a in (two, three))
    assert 1.1 < b3["prefill_matmuls"] / b2["prefill_matmuls"] < 1.5
    for bad in (1, 4, 2.0, True):
        with pytest.raises(ValueError, match="ffn_matrices"):
            Arch(24, 32, 64, 2048, 8192, ffn_matrices=bad)


def test_qwen25_shapes():
    """Qwen2.5 (config.json / arXiv 2412.15115 Table 1): GQA, SwiGLU, known by `resolve_arch`."""
    from bes_jax.latency.model import QWEN25_ARCHS, resolve_arch
    for name, (L, heads, kv_heads, f, V) in {"qwen2.5-0.5b": (24, 14, 2, 4864, 151936),
                                             "qwen2.5-1.5b": (28, 12, 2, 8960, 151936),
                                             "qwen2.5-7b": (28, 28, 4, 18944, 152064)}.items():
        a = resolve_arch(name)
        assert a is QWEN25_ARCHS[name] and name not in ARCHS
        assert (a.layers, a.heads, a.kv_heads, a.ffn, a.vocab, a.ffn_matrices) == (L, heads, kv_heads, f, V, 3)
    assert predict("qwen2.5-7b", "h100-sxm", 1, 512, 32) > predict("qwen2.5-1.5b", "h100-sxm", 1, 512, 32)
