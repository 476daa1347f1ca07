"""Make the default OPT profiles from the calibrated latency model, and the model's report.

    python scripts/make_profile.py            # bes_jax/profiles/opt-a100-80gb.json, bes_jax/profiles/opt-h100-sxm.json,
                                              # the continuous fields of bes_jax/profiles/tiny-cpu.json, docs/profiles.md
    python scripts/make_profile.py --report   # also re-fit the model: docs/latency_model.md + .png
    python scripts/make_profile.py --check    # re-fit and compare with the constants in the code

Every number in a profile comes from ../shared/docs/OPT_FACTS.md (architecture, parameter
counts, accuracies, datasheets), from bes_jax.latency.model (latencies) and
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
                                   PRIOR_SIGMA, ROW_SIGMA, calibrate, constants_dict, errors,
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
    return "\n".join(out)


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", action="store_true", help="also re-fit and write docs/latency_model.{md,png}")
    ap.add_argument("--check", action="store_true", help="only re-fit and compare with the constants in the code")
    args = ap.parse_args(argv)
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
    tiny = tiny_continuous(json.loads(TINY_PATH.read_text()))
    profile_from_dict(tiny, str(TINY_PATH))
    TINY_PATH.write_text(json.dumps(tiny, indent=1) + "\n")
    print(f"wrote {TINY_PATH.relative_to(REPO_ROOT)} (continuous-batching fields only)")
    (REPO_ROOT / "docs" / "profiles.md").write_text(profiles_md())
    print("wrote docs/profiles.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
