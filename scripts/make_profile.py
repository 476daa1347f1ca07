"""Make the default OPT profiles and the Qwen2.5 profile from the calibrated latency model, and the
model's report.

    python scripts/make_profile.py            # bes_jax/profiles/opt-a100-80gb.json, bes_jax/profiles/opt-h100-sxm.json,
                                              # bes_jax/profiles/qwen2.5-h100-sxm.json, the continuous
                                              # fields of bes_jax/profiles/tiny-cpu.json, docs/profiles.md
    python scripts/make_profile.py --qwen     # only bes_jax/profiles/qwen2.5-h100-sxm.json (+ docs/profiles.md)
    python scripts/make_profile.py --report   # also re-fit the model: docs/latency_model.md + .png
    python scripts/make_profile.py --check    # re-fit and compare with the constants in the code

Every number in a profile comes from ../shared/docs/OPT_FACTS.md (architecture, parameter
counts, accuracies, datasheets; for Qwen2.5 the models' config.json and the Qwen2.5 technical
report, arXiv 2412.15115), from bes_jax.latency.model (latencies) and
bes_jax.latency.iteration (iteration coefficients, KV budgets), or is a stated assumption (memory
shares, reserve, length spreads); the provenance block of each file says which. tiny-cpu.json is
measured by bes-profile; this script only adds its continuous-batching fields, fitted to its
measured table.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from bes_jax import PROFILES_DIR, REPO_ROOT
from bes_jax.latency.iteration import (DEFAULT_MAX_NUM_BATCHED_TOKENS, DEFAULT_MAX_NUM_SEQS, fit_iteration,
                                       iteration_coefficients, kv_tokens, rounded, static_batch_latency)
from bes_jax.latency.model import (ARCHS, CALIBRATED, CSV_NAME, GPUS, PRIOR_BW_EFF, PRIOR_FLOP_EFF,
                                   PRIOR_SIGMA, QWEN25_ARCHS, ROW_SIGMA, calibrate, constants_dict, errors,
                                   leave_one_model_out, load_rows, predict)
from bes_jax.profile import ITERATION_FIELDS, profile_from_dict

B_MAX = 32
N_GPUS = 4  # default placement: each GPU holds one replica of every model
FT_COMMIT = "07fdd2fc6aa46f961f304d5f3791efad016e38a3"
HARNESS_COMMIT = "8a7077017886d5829a7c6a9265babcfdad2c707a"

# Parameter counts (incl. tied embeddings and the position table), OPT_FACTS.md.
MODELS = [("opt-125m", 125_239_296), ("opt-1.3b", 1_315_758_080), ("opt-6.7b", 6_658_473_984)]

# name, metric, prompt tokens, output tokens, zero-shot accuracy (%) of 125M / 1.3B / 6.7B
# (lm-evaluation-harness via OPT_FACTS.md), and why these lengths.
TASKS = [
    ("arc_easy", "acc", 256, 16, (43.52, 57.03, 65.61),
     "a grade-school science question with four answer options under an instruction header "
     "(~256 tokens); a short answer with one sentence of justification (16 tokens)"),
    ("piqa", "acc", 192, 8, (63.00, 71.71, 76.28),
     "a physical goal and two candidate solutions with the instruction (~192 tokens); the chosen "
     "solution's label and a few words (8 tokens)"),
    ("winogrande", "acc", 128, 8, (50.28, 59.75, 65.27),
     "one sentence with a blank, two options and the instruction (~128 tokens); the filled-in "
     "option (8 tokens)"),
    ("lambada", "acc", 512, 32, (37.90, 57.93, 67.71),
     "a narrative passage (LAMBADA passages are a few hundred words, ~512 tokens); the closest task "
     "to free generation, so the longest continuation (32 tokens)"),
]
# Chosen lengths span the calibration rows (128 in / 8 out and 512 in / 32 out), so the latency
# model interpolates in sequence length and extrapolates only in model size.

# Length distributions (continuous batching): log-normal around the lengths above, which stay
# their stated means (so the request-level tables do not change). The spreads are assumptions,
# not measurements: prompts are a fixed instruction template plus a variable item, so modest CVs
# that grow with how much the item varies; outputs vary more (CV 0.5; 0.8 for LAMBADA's free
# continuation). The bounds keep prompt + output within ctx_max = 2048 (no truncation) and move
# the realised mean by < 0.1%.
LENGTHS = {
    "arc_easy": ({"dist": "lognormal", "mean": 256, "cv": 0.3, "min": 32, "max": 1024},
                 {"dist": "lognormal", "mean": 16, "cv": 0.5, "min": 1, "max": 64},
                 "questions and their four options vary in length (CV 0.3)"),
    "piqa": ({"dist": "lognormal", "mean": 192, "cv": 0.25, "min": 32, "max": 768},
             {"dist": "lognormal", "mean": 8, "cv": 0.5, "min": 1, "max": 32},
             "goals and the two solutions vary in length (CV 0.25)"),
    "winogrande": ({"dist": "lognormal", "mean": 128, "cv": 0.15, "min": 32, "max": 512},
                   {"dist": "lognormal", "mean": 8, "cv": 0.5, "min": 1, "max": 32},
                   "one sentence of fairly uniform length (CV 0.15)"),
    "lambada": ({"dist": "lognormal", "mean": 512, "cv": 0.4, "min": 64, "max": 1536},
                {"dist": "lognormal", "mean": 32, "cv": 0.8, "min": 1, "max": 256},
                "passages vary most (CV 0.4); free continuation, heavier-tailed output (CV 0.8)"),
}

# Continuous-batching fields of the OPT profiles.
CTX_MAX = 2048  # OPT's max positions (OPT paper / OPT_FACTS.md)
GPU_MEMORY_BYTES = 80e9  # both GPUs: 80 GB of HBM (datasheet, decimal GB)
# Share of one GPU's memory per model's engine under the default placement (one replica of each
# model on every GPU), as vLLM --gpu-memory-utilization fractions: 0.90 in all (vLLM's default
# for a lone engine), split by need: the larger model's weights and KV per token are larger.
MEMORY_SHARE = {"opt-125m": 0.10, "opt-1.3b": 0.25, "opt-6.7b": 0.55}
# Per engine: CUDA context and cuBLAS workspace (~0.5 GB) plus the activation peak of a
# 2048-token iteration and CUDA graphs (~1 GB): an assumption, as vLLM measures it by profiling.
RESERVE_BYTES = 1.5e9

DEADLINE_X = 2.5  # deadline = 2.5 x OPT-6.7B's batch-of-one latency for the task, on that GPU

GPU_DESCRIPTION = {
    "a100-80gb": "NVIDIA A100-80GB SXM4: 2039 GB/s HBM2e, 312 TFLOP/s dense fp16 (datasheet)",
    "h100-sxm": "NVIDIA H100-80GB SXM5: 3350 GB/s HBM3, 989.4 TFLOP/s dense fp16 (datasheet)",
}
PROFILE_GPUS = ("a100-80gb", "h100-sxm")


def latency_table(gpu: str) -> np.ndarray:
    """[model, task, b-1] predicted batch latency (s)."""
    return np.array([[[predict(m, gpu, b, t[2], t[3]) for b in range(1, B_MAX + 1)] for t in TASKS]
                     for m, _ in MODELS])


def deadlines(lat: np.ndarray) -> list[float]:
    return [round(float(DEADLINE_X * lat[-1, t, 0]), 3) for t in range(len(TASKS))]


def continuous_model(name: str, params: int, gpu: str) -> dict:
    """ctx_max, kv_tokens and iteration of one OPT model on `gpu` (with the model entry's name
    and params)."""
    kv = kv_tokens(ARCHS[name].kv_bytes_per_token, GPU_MEMORY_BYTES, MEMORY_SHARE[name], 2 * params, RESERVE_BYTES)
    return {"name": name, "params": params, "ctx_max": CTX_MAX, "kv_tokens": kv,
            "iteration": rounded(iteration_coefficients(name, gpu))}


def iteration_agreement(doc: dict) -> np.ndarray:
    """[M, T, B] static-batch latency through the profile's iteration coefficients (at the tasks'
    mean lengths, simulator defaults) / the request-level table - 1."""
    out = np.zeros((len(doc["models"]), len(doc["tasks"]), doc["B_max"]))
    for mi, m in enumerate(doc["models"]):
        for ti, t in enumerate(doc["tasks"]):
            p, o = (int(round(_mean(t[k]))) for k in ("prompt_len", "output_len"))
            for b in range(doc["B_max"]):
                out[mi, ti, b] = static_batch_latency(m["iteration"], b + 1, p, o) / doc["latency_s"][mi][ti][b] - 1
    return out


def _mean(x) -> float:
    from bes_jax.lengths import parse_length
    return parse_length(x, "length").mean


def make(gpu: str) -> dict:
    lat = latency_table(gpu)
    dl = deadlines(lat)
    c = constants_dict()
    doc = {
        "name": f"opt-{gpu}",
        "hardware": {"name": gpu, "description": GPU_DESCRIPTION[gpu], "gpus": N_GPUS,
                     "placement": "each GPU holds one replica of every model",
                     "memory_bytes": GPU_MEMORY_BYTES},
        "models": [continuous_model(m, n, gpu) for m, n in MODELS],
        "tasks": [{"name": t[0], "metric": t[1], "deadline_s": d, "prompt_len": LENGTHS[t[0]][0],
                   "output_len": LENGTHS[t[0]][1]} for t, d in zip(TASKS, dl)],
        "B_max": B_MAX,
        "latency_s": np.round(lat, 6).tolist(),
        "quality": [[round(t[4][i] / 100, 4) for t in TASKS] for i in range(len(MODELS))],
        "provenance": {
            "latency": (
                "computed, not measured: bes_jax.latency.model.predict (per-operator roofline of prefill + "
                "decode passes with fitted efficiencies and fixed overheads; docs/latency_model.md) for "
                f"batch sizes 1..{B_MAX} at each task's mean prompt_len/output_len on {gpu}"),
            "latency_model_constants": c,
            "latency_calibration": (
                f"../shared/docs/{CSV_NAME}: measured fp16 end-to-end latencies of the GPT-350M and GPT-1.3B "
                "shapes on one A100-80GB, batch 1-64, 128/8 and 512/32 tokens, transcribed from NVIDIA "
                f"FasterTransformer docs/gpt_guide.md at commit {FT_COMMIT}"),
            "architecture": ("layers, heads, head dim, hidden, FFN, vocab, max positions and parameter counts: OPT "
                             "paper (Zhang et al. 2022, arXiv 2205.01068) Table 1, via ../shared/docs/OPT_FACTS.md"),
            "hardware": (f"{GPU_DESCRIPTION[gpu]}, 80 GB of memory; vendor datasheet numbers via "
                         "../shared/docs/OPT_FACTS.md"),
            "quality": ("zero-shot accuracy / 100 from EleutherAI/lm-evaluation-harness commit "
                        f"{HARNESS_COMMIT}, results/opt/opt-{{125m,1.3b,6.7b}}/*.json (HF facebook/opt-* "
                        "weights), via ../shared/docs/OPT_FACTS.md"),
            "prompt_output_lengths": {t[0]: f"mean {t[2]} in / {t[3]} out: {t[5]}" for t in TASKS},
            "length_distributions": (
                "assumed, not measured: log-normal prompt and output lengths whose stated means are the lengths "
                "above (so the request-level tables use the same numbers); spreads: "
                + "; ".join(f"{k}: {v[2]}" for k, v in LENGTHS.items())
                + "; outputs CV 0.5 (LAMBADA 0.8); bounds keep prompt + output <= ctx_max"),
            "ctx_max": f"{CTX_MAX}: OPT's max positions (arXiv 2205.01068 via ../shared/docs/OPT_FACTS.md)",
            "kv_tokens": (
                "bes_jax.latency.iteration.kv_tokens: (memory share x 80 GB - fp16 weights (2 x params) - "
                f"{RESERVE_BYTES / 1e9:g} GB reserve) / fp16 KV bytes per token (2 x layers x kv heads x head dim x 2 "
                "B, OPT_FACTS.md); memory shares per engine (vLLM --gpu-memory-utilization style, one replica of "
                "each model per GPU): " + ", ".join(f"{m} {s}" for m, s in MEMORY_SHARE.items())
                + f" ({sum(MEMORY_SHARE.values()):.2f} in all); shares and reserve are assumptions "
                "(docs/profiles.md)"),
            "iteration": (
                "computed, not measured: bes_jax.latency.iteration.iteration_coefficients from the same datasheet "
                "numbers and fitted constants as the latency tables (fixed_s = layers x c_layer, per_seq_s = "
                "layers x c_seq, weights_s = weight bytes / (e_bw BW), per_kv_token_s = KV bytes per token / "
                "(e_kv BW), per_token_s = 2 x matmul params / (e_f P) + element-wise bytes per token / (e_bw BW)), "
                "4 significant digits; a static batch through them reproduces the FasterTransformer rows "
                "(docs/latency_model.md, 'Iteration model')"),
            "deadlines": (f"deadline_s = {DEADLINE_X} x the predicted OPT-6.7B batch-of-one latency of the task on "
                          f"{gpu}, rounded to 1 ms: OPT-6.7B alone meets it at low load, but the batches it needs "
                          "at high load exceed it while OPT-1.3B and OPT-125M batches up to B_max fit; "
                          "see docs/profiles.md"),
            "generated_by": "python scripts/make_profile.py",
        },
    }
    return doc


# ----------------------------------------------------------------------------- tiny-cpu

TINY_PATH = PROFILES_DIR / "tiny-cpu.json"
#: KV budget of one tiny replica: 64 MiB of float32 KV cache (the CPU pool runs float32), an
#: assumption small enough that KV binds on tiny-l at the default max_num_seqs, as on a GPU
TINY_KV_BYTES = 64 * 2 ** 20
TINY_KV_VALUE_BYTES = 4


def tiny_continuous(doc: dict) -> dict:
    """`doc` (tiny-cpu.json as measured by bes-profile) with ctx_max, kv_tokens and iteration
    per model and their provenance; the measured fields are untouched."""
    from bes_jax.serving.models import PRESETS

    doc = json.loads(json.dumps(doc))
    fit_errors = {}
    for mi, m in enumerate(doc["models"]):
        spec = PRESETS[m["name"]]
        rows = [(b + 1, int(round(_mean(t["prompt_len"]))), int(round(_mean(t["output_len"]))), doc["latency_s"][mi][ti][b])
                for ti, t in enumerate(doc["tasks"]) for b in range(doc["B_max"])]
        coef, err = fit_iteration(rows)
        kv_per_token = 2 * spec.layers * spec.hidden * TINY_KV_VALUE_BYTES
        m["ctx_max"] = spec.max_positions
        m["kv_tokens"] = TINY_KV_BYTES // kv_per_token
        m["iteration"] = rounded(coef)
        fit_errors[m["name"]] = {"median_abs": round(float(np.median(np.abs(err))), 4),
                                 "max_abs": round(float(np.abs(err).max()), 4)}
    doc["provenance"].update({
        "ctx_max": "max_positions of the tiny presets (bes_jax/serving/models.py PRESETS: 512)",
        "kv_tokens": (f"assumed: a KV budget of {TINY_KV_BYTES // 2 ** 20} MiB per replica of float32 K and V "
                      "(2 x layers x hidden x 4 B per token, from the presets' dimensions), small enough to bind "
                      "on tiny-l at the default max_num_seqs"),
        "iteration": (
            "fitted, not measured per iteration: least squares of the relative error of "
            "bes_jax.latency.iteration.static_batch_latency (the batch run through the continuous-batching "
            f"iterations, max_num_seqs {DEFAULT_MAX_NUM_SEQS}, max_num_batched_tokens {DEFAULT_MAX_NUM_BATCHED_TOKENS}) "
            "to the measured latency_s table (all tasks and batch sizes) by bes_jax.latency.iteration.fit_iteration, "
            "4 significant digits; the prompts (32-64 tokens) cannot separate per_kv_token_s from the other terms "
            "and the CPU runs compute-bound, so a coefficient of 0 means 'not identifiable here', not 'free'"),
        "iteration_fit_relative_error": fit_errors,
        "continuous_fields_by": "python scripts/make_profile.py",
    })
    return doc


def sustained_rates(lat: np.ndarray, dl: list[float], wait_factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Per model and task: the largest batch b <= B_max with wait_factor x L(b) <= deadline, and
    the best throughput b / L(b) over such b times N_GPUS replicas (0 where none fits)."""
    M, T, _ = lat.shape
    bs = np.arange(1, B_MAX + 1)
    bmax, rate = np.zeros((M, T), int), np.zeros((M, T))
    for m in range(M):
        for t in range(T):
            ok = wait_factor * lat[m, t] <= dl[t]
            if ok.any():
                bmax[m, t] = bs[ok].max()
                rate[m, t] = N_GPUS * (bs[ok] / lat[m, t, ok]).max()
    return bmax, rate


# ----------------------------------------------------------------------------- Qwen2.5 on H100

# A second model family (issue 14, item 4): the Qwen2.5 *base* (pre-trained) models
# Qwen/Qwen2.5-0.5B, -1.5B and -7B on H100-80GB SXM5, with the same latency model, placement,
# memory shares, reserve, B_max and deadline rule as the OPT profiles, so the two families differ
# only in the models and the tasks. Architectures: bes_jax.latency.model.QWEN25_ARCHS.
QWEN_NAME = "qwen2.5-h100-sxm"
QWEN_GPU = "h100-sxm"
QWEN_PATH = PROFILES_DIR / f"{QWEN_NAME}.json"
QWEN_HF = "https://huggingface.co/Qwen/{repo}/blob/main/config.json"
QWEN_REPORT = "Qwen2.5 Technical Report (Qwen Team 2024, arXiv 2412.15115, https://arxiv.org/abs/2412.15115)"
#: name, Hugging Face repo, whether the LM head is tied to the embeddings (report Table 1:
#: 0.5B and 1.5B yes, 7B no; config.json tie_word_embeddings), published parameter count
QWEN_MODELS_SPEC = [("qwen2.5-0.5b", "Qwen2.5-0.5B", True, "0.49B"),
                    ("qwen2.5-1.5b", "Qwen2.5-1.5B", True, "1.54B (1.31B non-embedding)"),
                    ("qwen2.5-7b", "Qwen2.5-7B", False, "7.61B (6.53B non-embedding)")]


def qwen_params(name: str, tied: bool) -> int:
    """Parameters of a Qwen2 decoder from its config: token embedding (vocab x h); per layer
    Q (h x h + bias h), K and V (h x k + bias k each), O (h x h, no bias), gate, up, down
    (3 h f), two RMSNorm weights (2h); the final RMSNorm (h); an untied LM head (vocab x h)."""
    a = QWEN25_ARCHS[name]
    h, k, f, V = a.hidden, a.kv_hidden, a.ffn, a.vocab
    layer = (h * h + h) + 2 * (h * k + k) + h * h + 3 * h * f + 2 * h
    return a.layers * layer + h + V * h * (1 if tied else 2)


QWEN_MODELS = [(n, qwen_params(n, tied)) for n, _, tied, _ in QWEN_MODELS_SPEC]

# name, metric, mean prompt tokens, mean output tokens, score (%) of 0.5B / 1.5B / 7B base, shots in
# the report, and why these lengths. Scores: report Table 5 (0.5B, 1.5B) and Table 4 (7B), section
# 5.1 for the shots. Lengths are assumptions: the prompt the reported number was measured with (the
# few-shot exemplars plus the item, estimated at ~4 characters a token, not counted with the Qwen
# tokenizer), and the answer a served request would generate.
QWEN_TASKS = [
    ("mmlu", "acc", 640, 4, (47.5, 60.9, 74.2), "5-shot",
     "5-shot: five solved questions of the same subject and the test question, each with four options "
     "(~100 tokens a question, ~640 in all); the answer letter, newline and end of sequence (4 tokens)"),
    ("arc_challenge", "acc", 1440, 4, (35.6, 54.7, 63.7), "25-shot",
     "25-shot: 25 solved grade-school science questions and the test question, each ~55 tokens with its "
     "four options (~1440 in all: the longest prompt of the pool); the answer letter (4 tokens)"),
    ("gsm8k", "exact_match", 768, 160, (41.6, 68.5, 85.4), "4-shot",
     "4-shot: four word problems with worked chain-of-thought solutions (~170 tokens each) and the test "
     "problem (~768 in all); a chain-of-thought solution ending in the number (~160 tokens; the reference "
     "solutions are ~100 tokens, models write more)"),
    ("humaneval", "pass@1", 160, 160, (30.5, 37.2, 57.9), "0-shot",
     "0-shot: a Python function signature with its docstring and examples (~160 tokens); the function body "
     "(~160 tokens)"),
]
# Length distributions (assumptions, as for OPT): log-normals whose stated means are the lengths
# above. Few-shot prompts add up many exemplars, so they vary little (CV 0.1); MMLU's exemplars are
# one subject's, which vary more between subjects (CV 0.4); HumanEval's docstrings vary (CV 0.5).
# Outputs: letters (CV 0.3); solutions and code (CV 0.4). The upper bounds (outputs at most 2.25x
# their mean) keep the deadline rule's premise for every request,
# not only the mean one: Qwen2.5-7B alone serves a request at both bounds within the deadline
# (tests/test_profile_qwen.py); they move the realised mean by < 0.5% and keep prompt + output far
# below ctx_max (no truncation).
QWEN_LENGTHS = {
    "mmlu": ({"dist": "lognormal", "mean": 640, "cv": 0.4, "min": 128, "max": 1920},
             {"dist": "lognormal", "mean": 4, "cv": 0.3, "min": 1, "max": 8},
             "subjects differ in question length (CV 0.4); a letter (CV 0.3)"),
    "arc_challenge": ({"dist": "lognormal", "mean": 1440, "cv": 0.1, "min": 720, "max": 2880},
                      {"dist": "lognormal", "mean": 4, "cv": 0.3, "min": 1, "max": 8},
                      "25 exemplars average out (CV 0.1); a letter (CV 0.3)"),
    "gsm8k": ({"dist": "lognormal", "mean": 768, "cv": 0.1, "min": 384, "max": 1536},
              {"dist": "lognormal", "mean": 160, "cv": 0.4, "min": 16, "max": 360},
              "4 fixed exemplars plus one problem (CV 0.1); solutions vary (CV 0.4)"),
    "humaneval": ({"dist": "lognormal", "mean": 160, "cv": 0.5, "min": 32, "max": 640},
                  {"dist": "lognormal", "mean": 160, "cv": 0.4, "min": 16, "max": 360},
                  "docstrings vary (CV 0.5); function bodies vary (CV 0.4)"),
}
#: ctx_max: 32,768 for all three, the context every size was pre-trained at (report section 3.3:
#: the final pre-training stage extends 4,096 to 32,768 for all models; Table 1: 32K for 0.5B and
#: 1.5B). The 7B reaches 128K only with YaRN rope scaling switched on at serving time, which the
#: model card notes may affect short texts; the published scores are for the native context.
QWEN_CTX_MAX = 32768
QWEN_MEMORY_SHARE = {"qwen2.5-0.5b": 0.10, "qwen2.5-1.5b": 0.25, "qwen2.5-7b": 0.55}  # as OPT


def qwen_latency_table() -> np.ndarray:
    """[model, task, b-1] predicted batch latency (s) of the Qwen2.5 pool on H100."""
    return np.array([[[predict(QWEN25_ARCHS[m], QWEN_GPU, b, t[2], t[3]) for b in range(1, B_MAX + 1)]
                      for t in QWEN_TASKS] for m, _ in QWEN_MODELS])


def qwen_continuous_model(name: str, params: int) -> dict:
    a = QWEN25_ARCHS[name]
    kv = kv_tokens(a.kv_bytes_per_token, GPU_MEMORY_BYTES, QWEN_MEMORY_SHARE[name], 2 * params, RESERVE_BYTES)
    return {"name": name, "params": params, "ctx_max": QWEN_CTX_MAX, "kv_tokens": kv,
            "iteration": rounded(iteration_coefficients(a, QWEN_GPU))}


def make_qwen() -> dict:
    lat = qwen_latency_table()
    dl = [round(float(DEADLINE_X * lat[-1, t, 0]), 3) for t in range(len(QWEN_TASKS))]
    cfg = "; ".join(f"{n}: {QWEN_HF.format(repo=r)}" for n, r, _, _ in QWEN_MODELS_SPEC)
    return {
        "name": QWEN_NAME,
        "hardware": {"name": QWEN_GPU, "description": GPU_DESCRIPTION[QWEN_GPU], "gpus": N_GPUS,
                     "placement": "each GPU holds one replica of every model",
                     "memory_bytes": GPU_MEMORY_BYTES},
        "models": [qwen_continuous_model(m, n) for m, n in QWEN_MODELS],
        "tasks": [{"name": t[0], "metric": t[1], "deadline_s": d, "prompt_len": QWEN_LENGTHS[t[0]][0],
                   "output_len": QWEN_LENGTHS[t[0]][1]} for t, d in zip(QWEN_TASKS, dl)],
        "B_max": B_MAX,
        "latency_s": np.round(lat, 6).tolist(),
        "quality": [[round(t[4][i] / 100, 4) for t in QWEN_TASKS] for i in range(len(QWEN_MODELS))],
        "provenance": {
            "models": ("Qwen2.5 base (pre-trained, not instruction-tuned) models Qwen/Qwen2.5-0.5B, Qwen/Qwen2.5-1.5B, "
                       "Qwen/Qwen2.5-7B in bf16 (2 bytes a value, as the fp16 of the latency model); the -Instruct "
                       "models have the same architecture, so only the quality table would change"),
            "latency": (
                "computed, not measured: bes_jax.latency.model.predict (per-operator roofline of prefill + decode "
                "passes with fitted efficiencies and fixed overheads; docs/latency_model.md) for batch sizes "
                f"1..{B_MAX} at each task's mean prompt_len/output_len on {QWEN_GPU}, with grouped-query attention "
                "(K and V kv_heads x head_dim wide) and a gated FFN (ffn_matrices = 3: gate and up fused into one "
                "h x 2f GEMM, then down); calibrated on OPT/GPT shapes only, so for Qwen2.5 an extrapolation in "
                "architecture (GQA, SwiGLU, a 152K vocabulary) and in sequence length (prompts up to 1440 tokens, "
                "outputs up to 160, against calibration rows of 128-512 in / 8-32 out)"),
            "latency_model_constants": constants_dict(),
            "latency_calibration": (
                f"../shared/docs/{CSV_NAME}: measured fp16 end-to-end latencies of the GPT-350M and GPT-1.3B "
                "shapes on one A100-80GB, transcribed from NVIDIA FasterTransformer docs/gpt_guide.md at commit "
                f"{FT_COMMIT}"),
            "architecture": (
                "layers, attention heads, head dim (hidden / heads), hidden, intermediate (FFN) size, vocab, KV heads, "
                "tie_word_embeddings: the models' Hugging Face config.json (" + cfg + "; read here through copies "
                "that name them in _name_or_path): 0.5B 24 layers, 14 heads, 2 KV heads, head dim 64, hidden 896, "
                "FFN 4864, vocab 151936, tied; 1.5B 28, 12, 2, 128, 1536, 8960, 151936, tied; 7B 28, 28, 4, 128, "
                "3584, 18944, 152064, untied. Layers, Q/KV heads and tied embeddings also in " + QWEN_REPORT
                + " Table 1; GQA, SwiGLU, RoPE, QKV bias and RMSNorm pre-normalisation: ibid. section 2"),
            "params": (
                "computed from the config (scripts/make_profile.py qwen_params: embeddings, per layer Q/K/V with "
                "bias, O, gate/up/down, two RMSNorms, final norm, untied LM head for 7B): "
                + ", ".join(f"{n} {p:,}" for n, p in QWEN_MODELS)
                + "; the model cards (huggingface.co/Qwen/Qwen2.5-*) state "
                + ", ".join(f"{n} {pub}" for n, _, _, pub in QWEN_MODELS_SPEC)),
            "hardware": f"{GPU_DESCRIPTION[QWEN_GPU]}, 80 GB of memory; vendor datasheet numbers via ../shared/docs/OPT_FACTS.md",
            "quality": (
                "base-model scores / 100 from " + QWEN_REPORT + ": Table 5 'Performance of the smaller base models' "
                "(Qwen2.5-0.5B, Qwen2.5-1.5B columns) and Table 4 'Performance of the 7B+ base models' (Qwen2.5-7B "
                "column); settings (section 5.1): MMLU 5-shot, ARC-C 25-shot, GSM8K 4-shot, HumanEval 0-shot "
                "(pass@1). " + "; ".join(f"{t[0]} {' / '.join(f'{q:g}' for q in t[4])}" for t in QWEN_TASKS)
                + " (0.5B / 1.5B / 7B), read from the arXiv HTML version (https://arxiv.org/html/2412.15115v1); the same "
                "0.5B / 1.5B numbers are quoted elsewhere from the Qwen2.5-LLM blog (https://qwenlm.github.io/blog/"
                "qwen2.5-llm/), and one transcription of Table 5 in circulation swaps the Qwen2.5-0.5B and Qwen2-1.5B "
                "columns in its first rows (MMLU to ARC-C), which these numbers are not. Tasks chosen as four with a "
                "number for all three sizes in both tables: knowledge (MMLU), reasoning (ARC-C), maths with "
                "chain of thought (GSM8K), code (HumanEval)"),
            "prompt_output_lengths": {t[0]: f"mean {t[2]} in / {t[3]} out (assumed): {t[6]}" for t in QWEN_TASKS},
            "length_distributions": (
                "assumed, not measured: log-normal prompt and output lengths whose stated means are the lengths "
                "above; spreads: " + "; ".join(f"{k}: {v[2]}" for k, v in QWEN_LENGTHS.items())
                + "; bounds keep prompt + output far below ctx_max"),
            "ctx_max": (
                f"{QWEN_CTX_MAX} for all three: the context every size is pre-trained at (" + QWEN_REPORT
                + " section 3.3: the last pre-training stage extends the context from 4,096 to 32,768 tokens for all "
                "models; Table 1: 32K for 0.5B and 1.5B, 128K for 7B); beyond 32,768 the 7B needs YaRN rope scaling "
                "switched on at serving time, which vLLM applies statically, 'potentially impacting performance on "
                "shorter texts' (Qwen2.5 -Instruct model cards, 'Processing Long Texts', e.g. "
                "https://huggingface.co/Qwen/Qwen2.5-7B-Instruct), and the published scores are for the native context"),
            "kv_tokens": (
                "bes_jax.latency.iteration.kv_tokens: (memory share x 80 GB - bf16 weights (2 x params) - "
                f"{RESERVE_BYTES / 1e9:g} GB reserve) / bf16 KV bytes per token (2 x layers x KV heads x head dim x 2 "
                "B: " + ", ".join(f"{n} {QWEN25_ARCHS[n].kv_bytes_per_token:,}" for n, _ in QWEN_MODELS)
                + " B); memory shares per engine (one replica of each model per GPU), the OPT profiles' split: "
                + ", ".join(f"{m} {s}" for m, s in QWEN_MEMORY_SHARE.items())
                + "; shares and reserve are assumptions (docs/profiles.md)"),
            "iteration": (
                "computed, not measured: bes_jax.latency.iteration.iteration_coefficients from the same datasheet "
                "numbers, fitted constants and architecture as the latency tables (fixed_s = layers x c_layer, "
                "per_seq_s = layers x c_seq, weights_s = weight bytes (matmuls + LM head) / (e_bw BW), "
                "per_kv_token_s = KV bytes per token / (e_kv BW), per_token_s = 2 x matmul params / (e_f P) + "
                "element-wise bytes per token / (e_bw BW)), 4 significant digits"),
            "deadlines": (f"deadline_s = {DEADLINE_X} x the predicted Qwen2.5-7B batch-of-one latency of the task on "
                          f"{QWEN_GPU}, rounded to 1 ms (the OPT profiles' rule); see docs/profiles.md"),
            "generated_by": "python scripts/make_profile.py",
        },
    }


# ----------------------------------------------------------------------------- docs/profiles.md

def profiles_md() -> str:
    names = [t[0] for t in TASKS]
    out = ["# Profiles", "",
           "A profile is one JSON file in `bes_jax/profiles/` describing one pool of models on one kind of hardware:",
           "how long a batch takes and how good each model is. Loading (`bes_jax.profile.load_profile`)",
           "validates every field; an error names the file, the field and the bad value, e.g.",
           "`bes_jax/profiles/x.json: field 'latency_s[1][0][3]' = 0.0001: latency must be non-decreasing in batch size`.",
           "", "## Format", "",
           "| field | meaning | checked |", "|---|---|---|",
           "| `name` | profile name; `profile=NAME` in configs loads `bes_jax/profiles/NAME.json` | non-empty string |",
           "| `hardware` | `name` (required), free-form `description`, `gpus` (number of GPUs the pool assumes), `placement` | object with a non-empty `name` |",
           "| `models` | list of `{name, params}` and, for continuous batching, `ctx_max`, `kv_tokens`, `iteration` (below); smallest first by convention | non-empty, unique names, positive integer `params` |",
           "| `models[].ctx_max` | most tokens (prompt + output) one sequence may hold | positive integer (optional) |",
           "| `models[].kv_tokens` | KV-cache budget of one replica, in tokens | positive integer (optional); not below any task's mean prompt + mean output (a model that could admit few of a task's requests is almost surely a unit slip); may be below `ctx_max` |",
           "| `models[].iteration` | `{fixed_s, per_seq_s, weights_s, per_kv_token_s, per_token_s}`: one iteration takes `fixed_s + per_seq_s n + max(weights_s + per_kv_token_s C, per_token_s (P + D))` seconds (SPEC \"Continuous batching\") | object with exactly these five keys, each finite and >= 0, not all 0 (optional) |",
           "| `tasks` | list of `{name, metric, deadline_s, prompt_len, output_len}`: `metric` names the quality metric, `deadline_s` is the task's default deadline in seconds, `prompt_len`/`output_len` the tokens in and out of one request: a number, or a distribution object (`bes_jax.lengths`: `{\"dist\": \"fixed\", \"value\"}`, `{\"dist\": \"uniform\", \"min\", \"max\"}`, `{\"dist\": \"lognormal\", \"mean\", \"cv\", \"min\", \"max\"}`) whose stated mean the request-level tables and routers use | non-empty, unique names, `deadline_s` finite and > 0, integer lengths >= 1 or a valid distribution |",
           "| `B_max` | largest batch a replica forms | positive integer |",
           "| `latency_s` | `[model][task][b-1]`: seconds to run a whole batch of `b` requests of that task, `b = 1..B_max` | shape models x tasks x B_max; finite, > 0, non-decreasing in `b` |",
           "| `quality` | `[model][task]`: the task metric scaled to `[0, 1]` (accuracy / 100 here) | shape models x tasks; finite, in [0, 1] |",
           "| `provenance` | where every number came from, one entry per kind of number | non-empty object with at least `latency` and `quality` |",
           "", "Other top-level keys are kept (`Profile.extra`) and written back by `Profile.save`. The three",
           "per-model continuous fields are optional, so a request-level (v1) profile stays valid; a run with",
           "`sim.batching=continuous` calls `Profile.require_continuous()`, which names the first missing one",
           "(`models[i].ctx_max` ...). Every shipped profile has both parts.", "",
           "## Shipped profiles", "",
           "| file | latencies | continuous-batching fields |", "|---|---|---|",
           "| `opt-a100-80gb.json` (default) | analytic model (`docs/latency_model.md`) for NVIDIA A100-80GB SXM4 | iteration coefficients derived from the same model, KV budgets from memory shares, log-normal lengths (below) |",
           "| `opt-h100-sxm.json` | the same model for NVIDIA H100-80GB SXM5 | the same, for H100 |",
           "| `tiny-cpu.json` | measured by `bes-profile` on the tiny PyTorch pool on a 2-core CPU (`docs/serving.md`) | iteration coefficients fitted to the measured table, fixed lengths (below) |",
           f"| `{QWEN_NAME}.json` | the same analytic model for Qwen2.5-0.5B / 1.5B / 7B (GQA, SwiGLU) on H100-80GB SXM5 | derived as for OPT; `ctx_max` {QWEN_CTX_MAX:,}; section \"Qwen2.5 on H100\" |",
           "",
           "Both OPT profiles: OPT-125M / 1.3B / 6.7B x ARC-Easy, PIQA, WinoGrande, LAMBADA x batch sizes",
           f"1..{B_MAX}. Quality is zero-shot accuracy / 100 (lm-evaluation-harness commit `{HARNESS_COMMIT[:12]}`,",
           "`../shared/docs/OPT_FACTS.md`). Made by `python scripts/make_profile.py`, which also writes this file.",
           "", "| task | prompt / output tokens | why | quality 125M / 1.3B / 6.7B |", "|---|---|---|---|"]
    for t in TASKS:
        out.append(f"| `{t[0]}` | {t[2]} / {t[3]} | {t[5]} | {' / '.join(f'{q / 100:.3f}' for q in t[4])} |")
    out += ["", "The lengths span the calibration rows of the latency model (128 in / 8 out and 512 in / 32 out),",
            "so the model interpolates in sequence length and extrapolates only in model size.", "",
            "## Continuous batching fields", "",
            "### Length distributions", "",
            "In continuous mode synthetic workloads draw each request's lengths from its task's distribution",
            "(trace replay takes them from the trace). The OPT profiles use log-normals whose stated means are",
            "the lengths above, so the request-level tables (built at those means) do not change. The spreads",
            "are **assumptions**, not measurements: prompts are an instruction template plus an item whose",
            "length varies by task; outputs vary more. The bounds keep prompt + output <= `ctx_max` (no",
            "truncation) and move the realised mean (after rounding and clipping) by less than 0.1%.", "",
            "| task | prompt_len | output_len | why this spread |", "|---|---|---|---|"]
    for name, (pd, od, why) in LENGTHS.items():
        fmt = lambda d: f"lognormal mean {d['mean']}, CV {d['cv']}, [{d['min']}, {d['max']}]"
        out.append(f"| `{name}` | {fmt(pd)} | {fmt(od)} | {why} |")
    shares = ", ".join(f"{m} {s_}" for m, s_ in MEMORY_SHARE.items())
    out += ["", "### `ctx_max`, `kv_tokens`", "",
            f"`ctx_max` = {CTX_MAX}, OPT's maximum positions (OPT paper, `OPT_FACTS.md`). `kv_tokens` per replica is",
            "`(share x memory - weights - reserve) / KV bytes per token` (`bes_jax.latency.iteration.kv_tokens`):",
            f"memory {GPU_MEMORY_BYTES / 1e9:g} GB on both GPUs (datasheet); fp16 weights `2 x params`; KV bytes per token",
            "`2 x layers x kv_heads x head_dim x 2 B` (36,864 / 196,608 / 524,288 B, `OPT_FACTS.md`). The default",
            "placement puts one replica of each model on every GPU, so three engines share one GPU's memory;",
            f"the shares, like vLLM `--gpu-memory-utilization` fractions per engine, are {shares}",
            f"({sum(MEMORY_SHARE.values()):.2f} in all, vLLM's default for a lone engine, leaving room for fragmentation),",
            "split by need (the larger model's weights and KV per token are larger). The reserve,",
            f"{RESERVE_BYTES / 1e9:g} GB per engine, stands for the CUDA context and cuBLAS workspace (~0.5 GB) plus the",
            "activation peak of a 2048-token iteration and CUDA graphs. Shares and reserve are **assumptions**",
            "(a deployment sets its own: the fields are plain numbers).", "",
            "| model | weights (GB) | share | KV bytes / token | `kv_tokens` | full-context (2048-token) sequences |",
            "|---|---:|---:|---:|---:|---:|"]
    for name, params in MODELS:
        kv = continuous_model(name, params, PROFILE_GPUS[0])["kv_tokens"]
        out.append(f"| {name} | {2 * params / 1e9:.2f} | {MEMORY_SHARE[name]} | {ARCHS[name].kv_bytes_per_token:,} | "
                   f"{kv:,} | {kv // CTX_MAX} |")
    out += ["", f"With `max_num_seqs` = {DEFAULT_MAX_NUM_SEQS} the KV budget binds only for long requests: OPT-6.7B",
            f"fits {continuous_model(*MODELS[-1], PROFILE_GPUS[0])['kv_tokens'] // DEFAULT_MAX_NUM_SEQS} tokens per "
            f"sequence at {DEFAULT_MAX_NUM_SEQS} sequences, well above these tasks'",
            "means but below the contexts of long-prompt traces.", "",
            "### `iteration`", "",
            "Derived, not fitted again, by `bes_jax.latency.iteration.iteration_coefficients` from the same",
            "datasheet numbers and calibrated constants as the latency tables; a static batch run through",
            f"them reproduces the FasterTransformer rows within {ft_heldout_median()} (median, rows not used for fitting) and",
            "the request-level tables within "
            + " / ".join(f"{_pct(np.median(np.abs(iteration_agreement(make(g)))))}" for g in PROFILE_GPUS)
            + f" ({' / '.join(PROFILE_GPUS)}, median); equations and every row in",
            "`docs/latency_model.md`, \"Iteration model\". Values in microseconds:", "",
            "| model | GPU | fixed_s | per_seq_s | weights_s | per_kv_token_s | per_token_s |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for gpu in PROFILE_GPUS:
        for name, params in MODELS:
            co = continuous_model(name, params, gpu)["iteration"]
            out.append(f"| {name} | {gpu} | " + " | ".join(f"{co[k] * 1e6:.4g}" for k in ITERATION_FIELDS) + " |")
    tiny = json.loads(TINY_PATH.read_text())
    out += ["", "### `tiny-cpu`", "",
            "Measured by `bes-profile`; `python scripts/make_profile.py` adds only the continuous fields and",
            "leaves the measurements alone: `ctx_max` = 512 (the tiny presets' `max_positions`,",
            f"`bes_jax/serving/models.py`); `kv_tokens` = {TINY_KV_BYTES // 2 ** 20} MiB of float32 K and V per replica over",
            "`2 x layers x hidden x 4 B` per token (an assumption, small enough to bind on tiny-l at the default",
            "`max_num_seqs`); `iteration` **fitted** (`bes_jax.latency.iteration.fit_iteration`): least squares of",
            "the relative error of each measured whole-batch latency against the same batch run through the",
            "iterations. Its short prompts (32-64 tokens) on a compute-bound CPU cannot identify every",
            "coefficient, so some come out 0: read that as \"not identifiable here\".", "",
            "| model | `kv_tokens` | fixed_s | per_seq_s | weights_s | per_kv_token_s | per_token_s | fit error median / max |",
            "|---|---:|---:|---:|---:|---:|---:|---|"]
    for m in tiny["models"]:
        fe = tiny["provenance"]["iteration_fit_relative_error"][m["name"]]
        out.append(f"| {m['name']} | {m['kv_tokens']:,} | " + " | ".join(f"{m['iteration'][k] * 1e6:.4g}" for k in ITERATION_FIELDS)
                   + f" | {fe['median_abs']:.1%} / {fe['max_abs']:.1%} |")
    out += ["",
            f"## Deadlines: {DEADLINE_X} x OPT-6.7B's batch-of-one latency", "",
            "The trade-off between quality and availability is real only if the large model meets the",
            "deadline when it runs alone but cannot keep up under load. With",
            f"`deadline_s = {DEADLINE_X} x L[opt-6.7b, t, b=1]` (per task, per GPU):", "",
            f"- at low load every request can get OPT-6.7B on time: a batch of one takes {1 / DEADLINE_X:.0%} of the",
            "  deadline, which leaves room to wait for one batch already running;",
            "- under load OPT-6.7B needs large batches to keep up, and batches beyond the sizes below take",
            f"  longer than the deadline, while OPT-1.3B and OPT-125M batches of up to B_max = {B_MAX} fit.", "",
            "A multiplier near 1 would leave OPT-6.7B no slack even at low load; one much above 3 would let",
            "it batch its way through most loads and leave nothing to route. Deadlines are rounded to 1 ms.", "",
            "## What each model sustains alone", "",
            f"Default placement: {N_GPUS} GPUs, each holding one replica of every model. Per task, the rate a model",
            f"sustains alone is its best throughput `b / L(b)` over batch sizes `b <= {B_MAX}` whose latency fits,",
            f"times {N_GPUS} replicas; two criteria: the batch fits in the deadline (`L(b) <= d`, an upper bound:",
            "requests never wait for a batch in progress) and the batch fits twice (`2 L(b) <= d`: a request",
            "may arrive just after a batch started, the criterion of `bes_jax.eval.capacity.nominal_capacity`).",
            "Scales, not guarantees: the simulator measures the real ones (`max_sustainable_rate`).", ""]
    for gpu in PROFILE_GPUS:
        lat = latency_table(gpu)
        dl = deadlines(lat)
        out += [f"### `opt-{gpu}`", "",
                "| task | deadline (s) | OPT-6.7B batch-1 latency (s) | largest batch in deadline 125M / 1.3B / 6.7B |"
                " rate 125M / 1.3B / 6.7B, `L <= d` (req/s) | rate 125M / 1.3B / 6.7B, `2L <= d` (req/s) |",
                "|---|---:|---:|---|---|---|"]
        b1, r1 = sustained_rates(lat, dl, 1)
        _, r2 = sustained_rates(lat, dl, 2)
        for t, name in enumerate(names):
            out.append(f"| `{name}` | {dl[t]:.3f} | {lat[-1, t, 0]:.3f} | {' / '.join(str(x) for x in b1[:, t])} | "
                       f"{' / '.join(f'{x:.0f}' for x in r1[:, t])} | {' / '.join(f'{x:.0f}' for x in r2[:, t])} |")
        m1, m2 = r1.mean(axis=1), r2.mean(axis=1)
        out.append(f"| mean over tasks | | | | {' / '.join(f'{x:.0f}' for x in m1)} | "
                   f"{' / '.join(f'{x:.0f}' for x in m2)} |")
        out += ["", f"OPT-125M sustains {m1[0] / m1[-1]:.0f}x (`L <= d`) to {m2[0] / m2[-1]:.0f}x (`2L <= d`) the rate of "
                f"OPT-6.7B, OPT-1.3B {m1[1] / m1[-1]:.1f}x to {m2[1] / m2[-1]:.1f}x, at quality "
                f"{np.mean([t[4][0] for t in TASKS]) / 100:.3f} / {np.mean([t[4][1] for t in TASKS]) / 100:.3f} / "
                f"{np.mean([t[4][2] for t in TASKS]) / 100:.3f} (mean accuracy). "
                "This is the room in which best-effort routing trades quality for availability.", ""]
    out += qwen_md() + [""]
    return "\n".join(out)


def qwen_md() -> list[str]:
    """The Qwen2.5 section of docs/profiles.md."""
    doc = make_qwen()
    lat = np.array(doc["latency_s"])
    dl = [t["deadline_s"] for t in doc["tasks"]]
    short = {"qwen2.5-0.5b": "0.5B", "qwen2.5-1.5b": "1.5B", "qwen2.5-7b": "7B"}
    S = " / ".join(short[m] for m, _ in QWEN_MODELS)
    out = [f"## Qwen2.5 on H100: `{QWEN_NAME}`", "",
           "A second model family, to show that nothing in the method is tied to OPT: the Qwen2.5 **base**",
           "(pre-trained) models Qwen/Qwen2.5-0.5B, -1.5B and -7B on NVIDIA H100-80GB SXM5, long context",
           f"(`ctx_max` = {QWEN_CTX_MAX:,}). Same latency model and constants, placement ({N_GPUS} GPUs, one replica of",
           f"every model on each), memory shares, reserve, `B_max` = {B_MAX} and deadline rule as the OPT profiles,",
           "so the two families differ only in the models and the tasks. The -Instruct models have the same",
           "architecture: only the quality table would change (report Tables 8 and 10). Made by",
           "`python scripts/make_profile.py` (alone: `--qwen`).", "",
           "### Architecture", "",
           "From each model's Hugging Face `config.json` (`huggingface.co/Qwen/Qwen2.5-{0.5B,1.5B,7B}`) and the",
           "Qwen2.5 technical report (arXiv 2412.15115) Table 1 (layers, Q/KV heads, tied embeddings) and",
           "section 2 (grouped-query attention, SwiGLU, RoPE, QKV bias, RMSNorm). Parameters are counted from",
           "the config (`qwen_params`: embeddings, Q/K/V with bias, O, gate/up/down, 2 RMSNorms per layer, final",
           "norm, the 7B's untied LM head) and match the model cards (to their 0.01B). KV bytes per token `2 x layers x kv_heads",
           "x head_dim x 2 B`; beside it, what multi-head attention of the same width would need.", "",
           "| model | layers | heads / KV heads | head dim | hidden | FFN (SwiGLU) | vocab | tied LM head | params (counted) | model card | KV bytes / token | same width, MHA |",
           "|---|---:|---:|---:|---:|---:|---:|---|---:|---|---:|---:|"]
    for (name, params), (_, _, tied, pub) in zip(QWEN_MODELS, QWEN_MODELS_SPEC):
        a = QWEN25_ARCHS[name]
        mha = 2 * a.layers * a.hidden * 2
        out.append(f"| {name} | {a.layers} | {a.heads} / {a.kv_heads} | {a.head_dim} | {a.hidden} | {a.ffn} | {a.vocab} | "
                   f"{'yes' if tied else 'no'} | {params:,} | {pub} | {a.kv_bytes_per_token:,} | {mha:,} |")
    out += ["", "In the latency model (`bes_jax.latency.model.QWEN25_ARCHS`): `Arch.n_kv_heads` narrows K and V",
            "to `kv_heads x head_dim`; `Arch.ffn_matrices = 3` gives the FFN three weight matrices (gate and up",
            "fused into one `h x 2f` GEMM, as vLLM runs them, then down) and a `2f`-in / `f`-out activation; OPT",
            "keeps the default 2 and its numbers are unchanged. Not modelled: the RoPE kernels (a few % of the",
            "element-wise bytes), bf16 vs fp16 (same bytes). The constants were fitted on OPT/GPT shapes",
            "(FasterTransformer, A100), so these tables extrapolate in architecture (GQA, SwiGLU, a 152K",
            "vocabulary), GPU and sequence length (prompts to 1440 tokens, outputs to 160, against calibration",
            "rows of 128-512 in / 8-32 out): scales, to be replaced by `bes-profile --engine` on a real H100.", "",
            "### Tasks and quality", "",
            "Four tasks with a published score for all three sizes in the report's base-model tables: Table 5",
            "(\"Performance of the smaller base models\": 0.5B, 1.5B) and Table 4 (\"... 7B+ base models\": 7B);",
            "read from the arXiv HTML version (the same 0.5B / 1.5B numbers are quoted from the Qwen2.5-LLM blog;",
            "a transcription of Table 5 in circulation swaps the Qwen2.5-0.5B and Qwen2-1.5B columns in its first rows).",
            "Quality = score / 100. Prompt and output lengths are **assumptions**: the prompt the reported score",
            "was measured with (the report's shots, section 5.1, at ~4 characters a token, not counted with the",
            "Qwen tokenizer) and the answer a served request generates.", "",
            f"| task | metric | shots | prompt / output tokens | why | quality {S} |", "|---|---|---|---|---|---|"]
    for t in QWEN_TASKS:
        out.append(f"| `{t[0]}` | {t[1]} | {t[5]} | {t[2]} / {t[3]} | {t[6]} | {' / '.join(f'{q / 100:.3f}' for q in t[4])} |")
    qm = [np.mean([t[4][i] for t in QWEN_TASKS]) / 100 for i in range(3)]
    om = [np.mean([t[4][i] for t in TASKS]) / 100 for i in range(3)]
    out += ["", f"Mean quality {' / '.join(f'{q:.3f}' for q in qm)}, a wider spread than OPT's "
            f"({' / '.join(f'{q:.3f}' for q in om)}).", "",
            "### Length distributions", "",
            "Log-normals whose stated means are the lengths above (**assumptions**, as for OPT). The upper",
            "bounds (outputs at most 2.25x their mean) keep the deadline rule's premise for every request, not",
            "only the mean one: Qwen2.5-7B alone serves a request at both bounds within its deadline",
            "(`tests/test_profile_qwen.py`). Rounding and clipping move the realised means by < 0.5%.", "",
            "| task | prompt_len | output_len | why this spread |", "|---|---|---|---|"]
    for name, (pd, od, why) in QWEN_LENGTHS.items():
        fmt = lambda d: f"lognormal mean {d['mean']}, CV {d['cv']}, [{d['min']}, {d['max']}]"
        out.append(f"| `{name}` | {fmt(pd)} | {fmt(od)} | {why} |")
    out += ["", "### `ctx_max`, `kv_tokens`", "",
            f"`ctx_max` = {QWEN_CTX_MAX:,} for all three: the context every size was pre-trained at (report section 3.3:",
            "the last pre-training stage extends 4,096 to 32,768 tokens for all models; Table 1: 32K for 0.5B",
            "and 1.5B). Beyond 32,768 the 7B (128K in Table 1) needs YaRN rope scaling switched on at serving",
            "time, which vLLM applies statically, \"potentially impacting performance on shorter texts\" (the",
            "Qwen2.5 -Instruct model cards, \"Processing Long Texts\"); the published scores are for the native context;",
            "one limit for the pool also keeps a long request routable to every model. `kv_tokens` as for OPT",
            f"(memory {GPU_MEMORY_BYTES / 1e9:g} GB, bf16 weights `2 x params`, {RESERVE_BYTES / 1e9:g} GB reserve per engine) with the OPT",
            "profiles' shares (**assumptions**):", "",
            f"| model | weights (GB) | share | KV bytes / token | `kv_tokens` | full-context ({QWEN_CTX_MAX:,}-token) sequences | tokens per sequence at {DEFAULT_MAX_NUM_SEQS} sequences |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for m in doc["models"]:
        a = QWEN25_ARCHS[m["name"]]
        out.append(f"| {m['name']} | {2 * m['params'] / 1e9:.2f} | {QWEN_MEMORY_SHARE[m['name']]} | {a.kv_bytes_per_token:,} | "
                   f"{m['kv_tokens']:,} | {m['kv_tokens'] // QWEN_CTX_MAX} | {m['kv_tokens'] // DEFAULT_MAX_NUM_SEQS:,} |")
    kv7 = doc["models"][-1]["kv_tokens"]
    kv_opt = continuous_model(*MODELS[-1], QWEN_GPU)["kv_tokens"]
    out += ["", f"Grouped-query attention is what makes long context affordable: the 7B's {kv7:,}-token budget is",
            f"{kv7 / kv_opt:.1f}x OPT-6.7B's ({kv_opt:,}) under the same share, although its weights are larger;",
            "with multi-head attention of the same width it would hold "
            f"{kv7 * QWEN25_ARCHS['qwen2.5-7b'].kv_bytes_per_token // (2 * 28 * 3584 * 2):,} tokens, "
            f"{kv7 * QWEN25_ARCHS['qwen2.5-7b'].kv_bytes_per_token // (2 * 28 * 3584 * 2) // QWEN_CTX_MAX} full-context sequences.",
            "", "### `iteration`", "",
            "Derived by `iteration_coefficients` from the same numbers (microseconds):", "",
            "| model | fixed_s | per_seq_s | weights_s | per_kv_token_s | per_token_s |", "|---|---:|---:|---:|---:|---:|"]
    for m in doc["models"]:
        out.append(f"| {m['name']} | " + " | ".join(f"{m['iteration'][k] * 1e6:.4g}" for k in ITERATION_FIELDS) + " |")
    e = iteration_agreement(doc)
    mi, ti, bi = np.unravel_index(np.abs(e).argmax(), e.shape)
    e1 = qwen_agreement_one_iteration_prefill(doc)
    out += ["", "Both modes on this table (a static batch through the coefficients against `latency_s`, every",
            f"model, task and batch size 1-{B_MAX} at the mean lengths): median {_pct(np.median(np.abs(e)))}, max "
            f"{_pct(np.abs(e).max())} (at {doc['models'][mi]['name']}, {QWEN_TASKS[ti][0]}, b = {bi + 1});",
            f"with each batch's prefill in one iteration (`max_num_batched_tokens = b p`) median "
            f"{_pct(np.median(np.abs(e1)))}, max {_pct(np.abs(e1).max())}.",
            f"The large differences are the chunking of long prompts: {B_MAX} x 1440 prompt tokens take 23",
            f"iterations of {DEFAULT_MAX_NUM_BATCHED_TOKENS} tokens, each paying the per-layer fixed cost, which one",
            "whole-batch pass pays once; a continuous engine pays it too.", "",
            f"### Deadlines ({DEADLINE_X} x Qwen2.5-7B's batch-of-one latency) and what each model sustains alone", "",
            "Same rule and criteria as for the OPT profiles (sections above).", "",
            f"| task | deadline (s) | 7B batch-1 latency (s) | largest batch in deadline {S} | rate {S}, `L <= d` (req/s) | rate {S}, `2L <= d` (req/s) |",
            "|---|---:|---:|---|---|---|"]
    b1, r1 = sustained_rates(lat, dl, 1)
    _, r2 = sustained_rates(lat, dl, 2)
    for t, task in enumerate(QWEN_TASKS):
        out.append(f"| `{task[0]}` | {dl[t]:.3f} | {lat[-1, t, 0]:.3f} | {' / '.join(str(x) for x in b1[:, t])} | "
                   f"{' / '.join(f'{x:.0f}' for x in r1[:, t])} | {' / '.join(f'{x:.0f}' for x in r2[:, t])} |")
    m1, m2 = r1.mean(axis=1), r2.mean(axis=1)
    out.append(f"| mean over tasks | | | | {' / '.join(f'{x:.0f}' for x in m1)} | {' / '.join(f'{x:.0f}' for x in m2)} |")
    co = [m["iteration"] for m in doc["models"]]
    out += ["", f"Qwen2.5-0.5B sustains {m1[0] / m1[-1]:.1f}x (`L <= d`) to {m2[0] / m2[-1]:.1f}x (`2L <= d`) the rate of "
            f"Qwen2.5-7B, 1.5B {m1[1] / m1[-1]:.1f}x to {m2[1] / m2[-1]:.1f}x. Less room than OPT on the generation tasks: a decode",
            f"iteration of the 0.5B costs {(co[0]['fixed_s'] + co[0]['weights_s']) * 1e3:.1f} ms against "
            f"{(co[-1]['fixed_s'] + co[-1]['weights_s']) * 1e3:.1f} ms for the 7B, because the per-layer fixed cost",
            "(24-28 layers x `c_layer`) dominates small models; the multiple-choice tasks (long prompts, a",
            "letter out) are prefill-bound and keep a large gap. On the generation tasks the 7B's batches of",
            f"{B_MAX} still fit the deadline (`L <= d`), so there the room comes from the `2L <= d` criterion and",
            "from continuous batching's queueing, which the simulator measures (`max_sustainable_rate`)."]
    return out


def qwen_agreement_one_iteration_prefill(doc: dict) -> np.ndarray:
    """`iteration_agreement` with each static batch's prefill in one iteration."""
    out = np.zeros((len(doc["models"]), len(doc["tasks"]), doc["B_max"]))
    for mi, m in enumerate(doc["models"]):
        for ti, t in enumerate(doc["tasks"]):
            p, o = (int(round(_mean(t[k]))) for k in ("prompt_len", "output_len"))
            for b in range(doc["B_max"]):
                out[mi, ti, b] = static_batch_latency(m["iteration"], b + 1, p, o,
                                                      max_num_batched_tokens=max((b + 1) * p, DEFAULT_MAX_NUM_SEQS)) \
                    / doc["latency_s"][mi][ti][b] - 1
    return out


# ----------------------------------------------------------------------------- latency report

def _iter_errors(rows, c, **kw) -> np.ndarray:
    """Relative error of each row's static batch through the iteration coefficients derived
    from constants `c` (the rows' GPU: A100-80GB)."""
    return np.array([static_batch_latency(iteration_coefficients(r["model"], "a100-80gb", c), r["batch"],
                                          r["input_len"], r["output_len"], **kw) / r["measured_s"] - 1 for r in rows])


def _us(x: float) -> str:
    return f"{x * 1e6:.4g}"


def ft_heldout_median() -> str:
    """Median abs. error of the static batches through iterations on the FT rows not used for
    fitting (leave-one-model-out), for docs/profiles.md."""
    rows = load_rows()
    loo = leave_one_model_out(rows)
    e = np.concatenate([_iter_errors([r for r in rows if r["model"] == m], c) for m, (c, _) in loo.items()])
    return _pct(float(np.median(np.abs(e))))


def iteration_report(rows, loo) -> list[str]:
    """The 'Iteration model' section of docs/latency_model.md."""
    models = sorted({r["model"] for r in rows})
    e_op = errors(rows, CALIBRATED)
    e_it = _iter_errors(rows, CALIBRATED)
    e_flat = np.array([static_batch_latency(iteration_coefficients(r["model"], "a100-80gb"), r["batch"],
                                            r["input_len"], r["output_len"],
                                            max_num_batched_tokens=max(r["batch"] * r["input_len"], DEFAULT_MAX_NUM_SEQS))
                       / r["measured_s"] - 1 for r in rows])
    e_ho = np.zeros(len(rows))
    for m in models:
        idx = [i for i, r in enumerate(rows) if r["model"] == m]
        e_ho[idx] = _iter_errors([rows[i] for i in idx], loo[m][0])
    med = lambda e: _pct(np.median(np.abs(e)))
    mx = lambda e: _pct(np.abs(e).max())
    L = ["## Iteration model (continuous batching)", "",
         "SPEC \"Continuous batching\" times one engine iteration with five coefficients per model and GPU,",
         "", "    tau = fixed_s + per_seq_s n + max(weights_s + per_kv_token_s C, per_token_s (P + D))", "",
         "(`n` sequences in the iteration, `C` context tokens they attend to, `P` prefill and `D` decode",
         "tokens). `bes_jax.latency.iteration.iteration_coefficients` derives them from the numbers the",
         "per-operator model above uses, with the calibrated constants and no new fit:", "",
         "| coefficient | formula | what it stands for |", "|---|---|---|",
         "| `fixed_s` | `L c_layer` | the per-layer fixed cost of a pass (launches, synchronisation) |",
         "| `per_seq_s` | `L c_seq` | the per-sequence fixed cost of a pass |",
         "| `weights_s` | `2 (L (2h^2 + 2hk + 2hf) + hV) / (e_bw BW)` | streaming every matmul weight, LM head included, once |",
         "| `per_kv_token_s` | `2 L 2k / (e_kv BW)` | reading one cached token's K and V in every layer (KV bytes per token: 36,864 / 196,608 / 524,288 B for OPT-125M / 1.3B / 6.7B, OPT_FACTS.md) |",
         "| `per_token_s` | `2 L (2h^2 + 2hk + 2hf) / (e_f P) + 2 L (4h + 2f + 2(h + 2k)) / (e_bw BW)` | a token's matmul FLOPs, plus the element-wise kernels that run between the GEMMs of a compute-bound pass |",
         "", "The memory-bound branch is a decode pass (weights once, the KV cache of every sequence); the",
         "compute-bound branch a prefill chunk. What the five numbers cannot say, against the per-operator",
         "model: the LM head's FLOPs (once per sequence, ~1 us); prefill attention's FLOPs (`4 p h` per",
         "token per layer, `p / 6h` of a token's matmul FLOPs: 4% for OPT-1.3B at `p = 512`, 17% at",
         "`p = 2048`, 44% for OPT-125M at 2048, so long prompts prefill faster in the iteration model",
         "than in the per-operator one); activation traffic in memory-bound passes; and the per-operator",
         "`max` (the iteration takes one `max` over the whole pass).", "",
         "### A static batch through the iterations", "",
         "`bes_jax.latency.iteration.static_batch_latency(coef, b, p, o)` runs `b` requests of prompt `p`",
         "and output `o`, all waiting at time 0, through the iteration semantics of docs/simulator.md",
         f"(strict-FIFO admission under `max_num_seqs` = {DEFAULT_MAX_NUM_SEQS}, decode tokens first, prefill chunks under",
         f"`max_num_batched_tokens` = {DEFAULT_MAX_NUM_BATCHED_TOKENS} in admission order, first token at the end of the iteration that",
         "completes the prompt, decode iterations with growing context) and returns when the last one",
         "completes: the continuous-mode counterpart of a FasterTransformer row. (The simulator routes",
         "same-instant arrivals one at a time, so there the first request starts an iteration alone; a",
         "measured static batch is formed first.)", "",
         "Which rows were used for fitting: the coefficients have no constants of their own, so *in",
         "sample* uses the constants fitted on all 28 rows, and *held out* the constants fitted on the",
         "other shape's 14 rows only (the leave-one-model-out fits above): for each shape, its 14 rows",
         "were not used for fitting. Goal: median absolute error within 15% on the held-out rows.", "",
         "| | median abs. error | max abs. error |", "|---|---:|---:|",
         f"| per-operator model, in sample (for comparison) | {med(e_op)} | {mx(e_op)} |",
         f"| iteration model, in sample | {med(e_it)} | {mx(e_it)} |",
         f"| iteration model, in sample, prefill in one iteration (`max_num_batched_tokens = b p`, as FasterTransformer runs it) | {med(e_flat)} | {mx(e_flat)} |"]
    for m in models:
        idx = [i for i, r in enumerate(rows) if r["model"] == m]
        other = [x for x in models if x != m]
        L.append(f"| iteration model, held out: fit on {', '.join(other)}, predict the {len(idx)} {m} rows | "
                 f"{med(e_ho[idx])} | {mx(e_ho[idx])} |")
    L.append(f"| iteration model, held out, all {len(rows)} rows | **{med(e_ho)}** | {mx(e_ho)} |")
    goal = np.median(np.abs(e_ho)) <= 0.15
    L += ["", ("The goal is met: " if goal else "The goal is NOT met: ")
          + f"median {med(e_ho)} on the rows not used for fitting (max {mx(e_ho)}). Chunking the",
          "prefill under the 2048-token budget costs the large batches (`b p` up to 32,768 prompt tokens)",
          "extra iterations and mixes their first decodes with later chunks, a few % either way.", "",
          "| model | batch | prompt | output | measured (s) | per-operator, in sample | iteration, in sample (s) | error | "
          "iteration, held out (s) | error |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r, a, b_, c in zip(rows, e_op, e_it, e_ho):
        y = r["measured_s"]
        L.append(f"| {r['model']} | {r['batch']} | {r['input_len']} | {r['output_len']} | {y:.4f} | {a:+.1%} | "
                 f"{y * (1 + b_):.4f} | {b_:+.1%} | {y * (1 + c):.4f} | {c:+.1%} |")
    L += ["", "### Coefficients of the OPT pool", "",
          "With the calibrated constants (what `bes_jax/profiles/opt-*.json` ship, 4 significant digits), in",
          "microseconds; `kv_tokens` is the KV budget of one replica under the default placement",
          "(docs/profiles.md, \"Continuous batching fields\"):", "",
          "| model | GPU | fixed_s | per_seq_s | weights_s | per_kv_token_s | per_token_s | KV bytes / token | kv_tokens |",
          "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for gpu in PROFILE_GPUS:
        for name, params in MODELS:
            cm = continuous_model(name, params, gpu)
            co = cm["iteration"]
            L.append(f"| {name} | {gpu} | " + " | ".join(_us(co[k]) for k in ITERATION_FIELDS)
                     + f" | {ARCHS[name].kv_bytes_per_token:,} | {cm['kv_tokens']:,} |")
    L += ["", "Both modes on the shipped tables: a static batch through the shipped coefficients against",
          "the request-level `latency_s` entry, every model, task and batch size 1-32 at the tasks' mean",
          "lengths (median / max abs. relative difference):", ""]
    for gpu in PROFILE_GPUS:
        e = iteration_agreement(make(gpu))
        mi, ti, bi = np.unravel_index(np.abs(e).argmax(), e.shape)
        L.append(f"- `opt-{gpu}`: {_pct(np.median(np.abs(e)))} / {_pct(np.abs(e).max())} (largest at "
                 f"{MODELS[mi][0]}, {TASKS[ti][0]}, b = {bi + 1}: a small model's large batch, where the "
                 "per-operator `max` and the activation traffic the five numbers drop weigh most)")
    tiny = json.loads(TINY_PATH.read_text())
    e = iteration_agreement(tiny)
    L += [f"- `tiny-cpu` (coefficients fitted to this table by `fit_iteration`): {_pct(np.median(np.abs(e)))} / "
          f"{_pct(np.abs(e).max())}", "",
          "Grouped-query attention: `Arch(..., n_kv_heads=...)` narrows K and V to `k = n_kv_heads x",
          "head_dim`, which shrinks the KV bytes per token, `per_kv_token_s`, the K/V projection weights",
          "and the decode attention of the per-operator model by `heads / n_kv_heads` (OPT has none).", ""]
    return L


def _pct(x: float) -> str:
    return f"{x:.1%}"


def report() -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = load_rows()
    fit = calibrate(rows)
    e_in = errors(rows, fit)
    loo = leave_one_model_out(rows)
    models = sorted({r["model"] for r in rows})
    e_out = np.zeros(len(rows))
    for m in models:
        idx = [i for i, r in enumerate(rows) if r["model"] == m]
        e_out[idx] = loo[m][1]

    L = ["# Analytic latency model", "",
         "`bes_jax/latency/model.py` predicts the end-to-end latency of generating `output_len` tokens",
         "for a batch of `batch` prompts of `prompt_len` tokens with an OPT/GPT decoder (layers `L`, heads,",
         "head dim, hidden `h`, FFN `f`, vocab `V`) on one GPU given by its memory bandwidth `BW` and dense",
         "fp16 peak `P` (datasheet numbers). CLI: `bes-latency --model opt-6.7b --gpu a100-80gb --batch 8",
         "--prompt-len 512 --output-len 32` (last line: seconds; it also prints the iteration coefficients",
         "below). It is the source of the latency tables of `bes_jax/profiles/opt-*.json` (`docs/profiles.md`)",
         "and, through `bes_jax/latency/iteration.py`, of their continuous-batching iteration coefficients",
         "(section \"Iteration model\").", "",
         "## Equations", "",
         "Notation: `b` batch, `p` prompt length, `o` output length, fp16 (2 bytes per value), `k` the",
         "width of the K (and of the V) projection, `kv_heads x head_dim` (`k = h` for OPT; smaller with",
         "grouped-query attention, `Arch.n_kv_heads`),",
         "`roof(B, F) = max(B / (e_bw BW), F / (e_f P))` for `B` bytes moved and `F` FLOPs.", "",
         "A batch runs one prefill pass over `T = b p` tokens (it produces the first output token), then",
         "`o - 1` decode passes over `T = b` tokens; `o` passes in all. Per pass and per layer:", "",
         "| operator | bytes moved | FLOPs |", "|---|---|---|",
         "| QKV projection | `2 (h (h + 2k) + T (h + h + 2k))` | `2 T h (h + 2k)` |",
         "| attention out projection | `2 (h^2 + 2 T h)` | `2 T h^2` |",
         "| FFN up | `2 (h f + T (h + f))` | `2 T h f` |",
         "| FFN down | `2 (h f + T (f + h))` | `2 T h f` |",
         "| element-wise (2 LayerNorm, bias + ReLU, 2 residual adds, bias + QKV split) | `2 T (4h + 2f + 2(h + 2k))` | (memory-bound) |",
         "| prefill attention `QK^T` and `scores V` over the full `p x p` square | `2 b p (2h + 4k)` (Q, K, V in, context out, K, V cached) | `4 b p^2 h` |",
         "| decode attention at step `j` (reads the cached K and V of `p + j` positions) | `2 b 2k (p + j)` | `4 b (p + j) h` |",
         "", "Once per pass, the LM head on the last position of each sequence: bytes `2 (h V + b (h + 2V))`,",
         "FLOPs `2 b h V`. Each operator takes `roof(bytes, FLOPs)`, except decode attention, which is",
         "memory-bound at its own efficiency: `bytes / (e_kv BW)` (FasterTransformer's masked attention",
         "kernel reads the cache far below streaming bandwidth). Fixed costs are added:", "",
         "    latency = sum over passes and operators of roof(...) + decode KV bytes / (e_kv BW)",
         "              + o L c_layer              (per layer per pass: kernel launches, synchronisation)",
         "              + o L b c_seq              (per sequence per layer per pass)", "",
         "The CSV's two shapes both have 24 layers, so a per-pass constant cannot be told apart from the",
         "per-layer one; all fixed cost per pass is attributed per layer (`c_layer`).", "",
         "## Calibration", "",
         f"Data: `../shared/docs/{CSV_NAME}`, 28 rows: GPT-350M and GPT-1.3B shapes, batch 1-64, 128 in / 8 out",
         "and 512 in / 32 out, measured end-to-end fp16 latency on one A100-80GB (NVIDIA FasterTransformer",
         f"`docs/gpt_guide.md`, commit `{FT_COMMIT}`). `BW`, `P` = 2039 GB/s, 312 TFLOP/s.", "",
         "Fit (`bes_jax.latency.model.calibrate`, numpy only): minimise",
         f"`sum_rows (relative error / {ROW_SIGMA})^2 + (ln(e_bw / {PRIOR_BW_EFF}) / {PRIOR_SIGMA})^2 + "
         f"(ln(e_f / {PRIOR_FLOP_EFF}) / {PRIOR_SIGMA})^2`.",
         "For fixed `(e_bw, e_f)` the latency is linear in `1 / e_kv`, `c_layer`, `c_seq`, which are solved by",
         "non-negative least squares on the relative errors; `(e_bw, e_f)` by a grid search refined twice.",
         f"The log-normal priors (`e_bw` about {PRIOR_BW_EFF}, `e_f` about {PRIOR_FLOP_EFF}, typical achieved fractions of",
         "datasheet bandwidth and tensor-core peak for streaming kernels and fp16 GEMMs) carry almost no",
         "weight when both shapes are fitted, but they matter when one shape alone is fitted: with 14 rows",
         "of one shape, a lower efficiency and a larger fixed cost explain the rows equally well (see the",
         "sensitivity table below).", "",
         "Calibrated constants (all 28 rows; stored in `bes_jax.latency.model.CALIBRATED`, re-fitted by",
         "`python scripts/make_profile.py --check` and by `tests/test_latency_model.py`):", "",
         "| constant | value | meaning |", "|---|---:|---|",
         f"| `e_bw` | {fit.bw_eff} | fraction of datasheet bandwidth for weight/activation streams |",
         f"| `e_f` | {fit.flop_eff} | fraction of datasheet fp16 peak for matmuls |",
         f"| `e_kv` | {fit.kv_eff} | fraction of datasheet bandwidth for decode attention (KV-cache reads) |",
         f"| `c_layer` | {fit.layer_s * 1e6:.2f} us | per layer per pass |",
         f"| `c_seq` | {fit.seq_layer_s * 1e6:.3f} us | per sequence per layer per pass |", "",
         "## Errors", "",
         "| | median abs. relative error | max abs. relative error |", "|---|---:|---:|",
         f"| in-sample (fit on all 28 rows) | {_pct(np.median(np.abs(e_in)))} | {_pct(np.abs(e_in).max())} |"]
    for m in models:
        e = loo[m][1]
        other = [x for x in models if x != m]
        L.append(f"| held out: fit on {', '.join(other)} only, predict {m} | {_pct(np.median(np.abs(e)))} | "
                 f"{_pct(np.abs(e).max())} |")
    L += ["", "Leave-one-model-out constants:", "", "| held-out model | e_bw | e_f | e_kv | c_layer (us) | c_seq (us) |",
          "|---|---:|---:|---:|---:|---:|"]
    for m in models:
        c = loo[m][0]
        L.append(f"| {m} | {c.bw_eff} | {c.flop_eff} | {c.kv_eff} | {c.layer_s * 1e6:.2f} | {c.seq_layer_s * 1e6:.3f} |")

    # Prior sensitivity: the same fits with other prior centres / widths.
    import bes_jax.latency.model as lm
    saved = (lm.PRIOR_BW_EFF, lm.PRIOR_FLOP_EFF, lm.PRIOR_SIGMA)
    L += ["", "### Sensitivity to the priors", "",
          "Median / max abs. relative error with other prior centres and widths (the shipped fit is the first",
          "row). The in-sample fit hardly moves; the held-out errors need the efficiencies to stay near",
          "typical values, and with no prior (width 100) a single shape's fit drifts to implausible",
          "efficiencies and extrapolates badly. Predictions for other models rely on that prior knowledge.", "",
          "| prior e_bw | prior e_f | width | in-sample | held out " + " | held out ".join(models) + " |",
          "|---:|---:|---:|---|" + "---|" * len(models)]
    try:
        for pb, pf, s in [saved, (0.7, 0.5, 0.2), (0.9, 0.7, 0.2), (0.8, 0.6, 0.5), (0.8, 0.6, 100.0)]:
            lm.PRIOR_BW_EFF, lm.PRIOR_FLOP_EFF, lm.PRIOR_SIGMA = pb, pf, s
            ea = np.abs(errors(rows, calibrate(rows)))
            cells = [f"{_pct(np.median(ea))} / {_pct(ea.max())}"]
            for m, (c, e) in leave_one_model_out(rows).items():
                cells.append(f"{_pct(np.median(np.abs(e)))} / {_pct(np.abs(e).max())} (e_bw {c.bw_eff}, e_f {c.flop_eff})")
            L.append(f"| {pb} | {pf} | {s:g} | " + " | ".join(cells) + " |")
    finally:
        lm.PRIOR_BW_EFF, lm.PRIOR_FLOP_EFF, lm.PRIOR_SIGMA = saved

    L += ["", "## Every row", "",
          "`fit`: predicted with the calibrated constants; `held out`: predicted with the constants fitted",
          "on the other shape only.", "",
          "| model | batch | prompt | output | measured (s) | fit (s) | error | held out (s) | error |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r, ei, eo in zip(rows, e_in, e_out):
        y = r["measured_s"]
        L.append(f"| {r['model']} | {r['batch']} | {r['input_len']} | {r['output_len']} | {y:.4f} | "
                 f"{y * (1 + ei):.4f} | {ei:+.1%} | {y * (1 + eo):.4f} | {eo:+.1%} |")

    L += ["", "![predicted vs measured, log-log: left the per-operator model, right a static batch through the "
          "iteration model (section below)](latency_model.png)", ""]
    L += iteration_report(rows, loo)
    L += ["",
          "## Predictions for the OPT pool", "",
          "Batch latency (s) with the calibrated constants, 512 in / 32 out:", "",
          "| model | GPU | b=1 | b=8 | b=32 |", "|---|---|---:|---:|---:|"]
    for m in ("opt-125m", "opt-1.3b", "opt-6.7b", "opt-13b"):
        for g in GPUS:
            L.append(f"| {m} | {g} | " + " | ".join(f"{predict(m, g, b, 512, 32):.3f}" for b in (1, 8, 32)) + " |")
    L += ["", "Limits: calibrated on one software stack (FasterTransformer) and one GPU; other GPUs differ only",
          "through their datasheet numbers (the efficiencies and fixed costs are assumed to carry over, which",
          "flatters newer GPUs whose launch overheads did not shrink); no tensor parallelism; the OPT shapes",
          "with head dim 80 or 128 and more layers are extrapolations in model size.", "",
          "Regenerate this file and the figure: `python scripts/make_profile.py --report`.", ""]
    (REPO_ROOT / "docs" / "latency_model.md").write_text("\n".join(L))

    e_it_in = _iter_errors(rows, CALIBRATED)
    e_it_out = np.zeros(len(rows))
    for m in models:
        idx = [i for i, r in enumerate(rows) if r["model"] == m]
        e_it_out[idx] = _iter_errors([rows[i] for i in idx], loo[m][0])
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.3), sharey=True)
    colours = {"gpt-350m": "tab:blue", "gpt-1.3b": "tab:orange"}
    lim = [0.015, 1.6]
    for ax, (ein, eout, title) in zip(axes, ((e_in, e_out, "Per-operator model (request-level tables)"),
                                             (e_it_in, e_it_out, "Static batch through the iteration model"))):
        for m in models:
            idx = [i for i, r in enumerate(rows) if r["model"] == m]
            y = np.array([rows[i]["measured_s"] for i in idx])
            ax.scatter(y, y * (1 + ein[idx]), c=colours.get(m), marker="o", s=28, label=f"{m}: fit on both")
            ax.scatter(y, y * (1 + eout[idx]), facecolors="none", edgecolors=colours.get(m), marker="s", s=40,
                       label=f"{m}: held out (fit on the other)")
        ax.plot(lim, lim, "k--", lw=1, label="y = x")
        ax.set_xscale("log"); ax.set_yscale("log"); ax.set_xlim(lim); ax.set_ylim(lim)
        ax.set_xlabel("measured latency (s), FasterTransformer, A100-80GB")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both"); ax.legend(fontsize=8, loc="upper left")
    axes[0].set_ylabel("predicted latency (s)")
    fig.tight_layout()
    fig.savefig(REPO_ROOT / "docs" / "latency_model.png", dpi=110)
    plt.close(fig)
    print(f"wrote docs/latency_model.md, docs/latency_model.png; fitted {fit}")
    if fit != CALIBRATED:
        print(f"NOTE: the code's CALIBRATED = {CALIBRATED} differs; update bes_jax/latency/model.py")


def write_qwen() -> None:
    doc = make_qwen()
    profile_from_dict(doc, str(QWEN_PATH))  # validate before writing
    QWEN_PATH.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {QWEN_PATH.relative_to(REPO_ROOT)}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", action="store_true", help="also re-fit and write docs/latency_model.{md,png}")
    ap.add_argument("--check", action="store_true", help="only re-fit and compare with the constants in the code")
    ap.add_argument("--qwen", action="store_true",
                    help=f"only write bes_jax/profiles/{QWEN_NAME}.json (and docs/profiles.md)")
    args = ap.parse_args(argv)
    if args.qwen:
        write_qwen()
        (REPO_ROOT / "docs" / "profiles.md").write_text(profiles_md())
        print("wrote docs/profiles.md")
        return 0
    if args.check:
        fit = calibrate(load_rows())
        print(f"re-fitted: {fit}\nin code:   {CALIBRATED}")
        return 0 if fit == CALIBRATED else 1
    if args.report:
        report()
    for gpu in PROFILE_GPUS:
        doc = make(gpu)
        path = PROFILES_DIR / f"opt-{gpu}.json"
        profile_from_dict(doc, str(path))  # validate before writing
        path.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {path.relative_to(REPO_ROOT)}")
    write_qwen()
    tiny = tiny_continuous(json.loads(TINY_PATH.read_text()))
    profile_from_dict(tiny, str(TINY_PATH))
    TINY_PATH.write_text(json.dumps(tiny, indent=1) + "\n")
    print(f"wrote {TINY_PATH.relative_to(REPO_ROOT)} (continuous-batching fields only)")
    (REPO_ROOT / "docs" / "profiles.md").write_text(profiles_md())
    print("wrote docs/profiles.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
