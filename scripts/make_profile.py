"""Make the default profiles from the calibrated latency model, and the latency-model report.

    python scripts/make_profile.py            # profiles/opt-a100-80gb.json, profiles/opt-h100-sxm.json
    python scripts/make_profile.py --report   # also docs/latency_model.md and docs/latency_model.png
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from bes_jax import REPO_ROOT
from bes_jax.latency.model import ARCHS, CALIBRATED, CSV_PATH, calibrate, errors, load_rows, predict
from bes_jax.profile import profile_from_dict

B_MAX = 32
MODELS = [("opt-125m", 125_239_296), ("opt-1.3b", 1_315_758_080), ("opt-6.7b", 6_658_473_984)]
# name, metric, prompt tokens, output tokens; zero-shot accuracy (%) from OPT_FACTS.md
TASKS = [
    ("arc_easy", "acc", 192, 8, (43.52, 57.03, 65.61)),
    ("piqa", "acc", 96, 8, (63.00, 71.71, 76.28)),
    ("winogrande", "acc", 64, 4, (50.28, 59.75, 65.27)),
    ("lambada", "acc", 256, 16, (37.90, 57.93, 67.71)),
]
DEADLINE_X = 2.5  # deadline = 2.5 x OPT-6.7B's batch-of-one latency on the profile's GPU
GPU_FULL = {"a100-80gb": "NVIDIA A100-80GB SXM4 (2039 GB/s, 312 TFLOP/s fp16)",
            "h100-sxm": "NVIDIA H100-80GB SXM5 (3350 GB/s, 989.4 TFLOP/s fp16)"}


def make(gpu: str) -> dict:
    lat = np.array([[[predict(m, gpu, b, p, o) for b in range(1, B_MAX + 1)] for (_, _, p, o, _) in TASKS]
                    for m, _ in MODELS])
    deadlines = [round(float(DEADLINE_X * lat[-1, t, 0]), 4) for t in range(len(TASKS))]
    return {
        "name": f"opt-{gpu}",
        "hardware": {"name": gpu, "description": GPU_FULL[gpu], "gpus": 4},
        "models": [{"name": m, "params": n} for m, n in MODELS],
        "tasks": [{"name": n, "metric": met, "deadline_s": d, "prompt_len": p, "output_len": o}
                  for (n, met, p, o, _), d in zip(TASKS, deadlines)],
        "B_max": B_MAX,
        "latency_s": np.round(lat, 6).tolist(),
        "quality": [[round(t[4][i] / 100, 4) for t in TASKS] for i in range(len(MODELS))],
        "provenance": {
            "latency": ("computed by bes_jax.latency.model.predict (analytic roofline + fitted overheads, "
                        f"constants {CALIBRATED}) calibrated on ../shared/docs/fastertransformer_a100_80gb_latency.csv "
                        "(NVIDIA FasterTransformer docs/gpt_guide.md, commit 07fdd2fc6aa46f961f304d5f3791efad016e38a3); "
                        "see docs/latency_model.md"),
            "architecture": "OPT paper (Zhang et al. 2022, arXiv 2205.01068), Table 1, via OPT_FACTS.md",
            "hardware": "vendor datasheets (memory bandwidth, dense fp16 tensor FLOP/s), via OPT_FACTS.md",
            "quality": ("zero-shot accuracy / 100, EleutherAI/lm-evaluation-harness commit "
                        "8a7077017886d5829a7c6a9265babcfdad2c707a, results/opt/opt-{125m,1.3b,6.7b}, via OPT_FACTS.md"),
            "prompt_output_lengths": ("chosen for a serving mix: ARC-Easy question+choices ~192 tokens, PIQA ~96, "
                                      "WinoGrande ~64, LAMBADA passage ~256; short generated answers (4-16 tokens)"),
            "deadlines": (f"{DEADLINE_X} x OPT-6.7B batch-of-one latency per task: the large model alone meets "
                          "them at low load, but batches of 6.7B large enough for high load exceed them; see docs/profiles.md"),
        },
    }


def report():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = load_rows()
    fit = calibrate(rows)
    e_all = errors(rows, fit)
    held = {}
    for m in sorted({r["model"] for r in rows}):
        tr = [r for r in rows if r["model"] != m]
        te = [r for r in rows if r["model"] == m]
        held[m] = (calibrate(tr), errors(te, calibrate(tr)))
    lines = ["# Analytic latency model", "",
             "`bes_jax/latency/model.py` predicts the end-to-end latency of generating `output_len` tokens for a batch",
             "of `batch` prompts of `prompt_len` tokens with an OPT/GPT decoder on one GPU described by its memory",
             "bandwidth `BW` and peak fp16 FLOP/s `P` (datasheet numbers, OPT_FACTS.md).", "",
             "## Equations", "",
             "One prefill pass over the prompt, then `output_len - 1` decode passes. Per pass:",
             "- matmuls and weights: `max((W + A) / (e_bw BW), F / (e_f P))` with `W` the fp16 weight bytes",
             "  (4h^2 + 2hf per layer, plus the h x vocab LM head), `A` activation traffic and `F` = 2 x tokens x",
             "  matmul parameters (the LM head only for the last position);",
             "- prefill attention: `4 b p^2 h L / (e_f P)`;",
             "- decode attention reads the KV cache: `k_kv x b (p + k) 2 h L x 2 bytes / BW`;",
             "- fixed overheads: `c_layer L + c_step + c_seq L b` (kernel launches, synchronisation, per-sequence work).",
             "", "`e_bw`, `e_f` are fitted on a grid over plausible achieved fractions (0.6-0.95, 0.35-0.8); the four linear",
             "constants by non-negative least squares on relative error.", "",
             "## Calibrated constants (all rows of the A100-80GB CSV)", "", f"`{fit}`", "",
             f"In-sample relative error: median {np.median(np.abs(e_all)):.1%}, max {np.abs(e_all).max():.1%}.", "",
             "## Generalisation: leave one model out", "",
             "Fit on one model's 14 rows, predict the other's (a harsher test than predicting a third model",
             "with both fitted):", "", "| held-out model | median error | max error |", "|---|---:|---:|"]
    for m, (_, e) in held.items():
        lines.append(f"| {m} | {np.median(np.abs(e)):.1%} | {np.abs(e).max():.1%} |")
    lines += ["", "## Every row", "", "| model | batch | prompt | output | measured (s) | fit (s) | error | held-out fit (s) | held-out error |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for r, e in zip(rows, e_all):
        ch, eh_all = held[r["model"]]
        te = [x for x in rows if x["model"] == r["model"]]
        eh = eh_all[te.index(r)]
        lines.append(f"| {r['model']} | {r['batch']} | {r['input_len']} | {r['output_len']} | {r['measured_s']:.4f} | "
                     f"{r['measured_s'] * (1 + e):.4f} | {e:+.1%} | {r['measured_s'] * (1 + eh):.4f} | {eh:+.1%} |")
    for m, mk in (("gpt-350m", "o"), ("gpt-1.3b", "s")):
        sel = [i for i, r in enumerate(rows) if r["model"] == m]
        meas = np.array([rows[i]["measured_s"] for i in sel])
        ax.scatter(meas, meas * (1 + e_all[sel]), marker=mk, label=f"{m} (fit on both)")
        ax.scatter(meas, meas * (1 + held[m][1]), marker=mk, facecolors="none", edgecolors="k", label=f"{m} (held out)")
    lim = [0.015, 1.5]
    ax.plot(lim, lim, "k--", lw=1)
    ax.set_xscale("log"); ax.set_yscale("log"); ax.set_xlim(lim); ax.set_ylim(lim)
    ax.set_xlabel("measured latency (s), FasterTransformer A100-80GB"); ax.set_ylabel("predicted (s)")
    ax.legend(fontsize=8); ax.grid(alpha=0.3); ax.set_title("analytic latency model")
    fig.tight_layout(); fig.savefig(REPO_ROOT / "docs" / "latency_model.png", dpi=110)
    lines += ["", "![predicted vs measured](latency_model.png)", "",
              "Source of the measurements: NVIDIA FasterTransformer `docs/gpt_guide.md`, commit",
              "`07fdd2fc6aa46f961f304d5f3791efad016e38a3`, transcribed in `../shared/docs/`.",
              "Regenerate: `python scripts/make_profile.py --report`.", ""]
    (REPO_ROOT / "docs" / "latency_model.md").write_text("\n".join(lines))
    return fit


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args(argv)
    if args.report:
        fit = report()
        print(f"calibrated: {fit} (in code: {CALIBRATED})")
    import json
    for gpu in ("a100-80gb", "h100-sxm"):
        doc = make(gpu)
        profile_from_dict(doc, f"opt-{gpu}")  # validate before writing
        path = REPO_ROOT / "profiles" / f"opt-{gpu}.json"
        path.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {path.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
