"""Analytic latency of batched OPT generation on one GPU, calibrated on measured rows.

Per operator, time is the max of bytes moved over (efficiency x memory bandwidth) and FLOPs
over (efficiency x peak fp16 FLOP/s), roofline style; a prefill pass processes the whole
prompt, then ``output_len - 1`` decode steps each read all weights and the KV cache. A fixed
overhead per layer per step (kernel launches, synchronisation) and per step is added: a pure
roofline underestimates measured FasterTransformer latencies by 1.7-1.9x for large shapes and
more for small ones (OPT_FACTS.md). The four constants are fitted on the measured A100 rows.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bes_jax import REPO_ROOT

BYTES = 2  # fp16


@dataclass(frozen=True)
class Arch:
    layers: int
    heads: int
    head_dim: int
    hidden: int
    ffn: int
    vocab: int = 50272


@dataclass(frozen=True)
class GPU:
    name: str
    bandwidth: float  # bytes/s
    peak_flops: float  # fp16 dense FLOP/s


# OPT paper (Zhang et al. 2022, arXiv 2205.01068) Table 1; GPT shapes of the calibration CSV.
ARCHS = {
    "opt-125m": Arch(12, 12, 64, 768, 3072),
    "opt-350m": Arch(24, 16, 64, 1024, 4096),
    "opt-1.3b": Arch(24, 32, 64, 2048, 8192),
    "opt-2.7b": Arch(32, 32, 80, 2560, 10240),
    "opt-6.7b": Arch(32, 32, 128, 4096, 16384),
    "opt-13b": Arch(40, 40, 128, 5120, 20480),
    "gpt-350m": Arch(24, 16, 64, 1024, 4096),
    "gpt-1.3b": Arch(24, 32, 64, 2048, 8192),
}

# Vendor datasheets (OPT_FACTS.md).
GPUS = {
    "a100-40gb": GPU("a100-40gb", 1555e9, 312e12),
    "a100-80gb": GPU("a100-80gb", 2039e9, 312e12),
    "h100-sxm": GPU("h100-sxm", 3350e9, 989.4e12),
}


@dataclass(frozen=True)
class Constants:
    bw_eff: float      # fraction of datasheet bandwidth achieved streaming weights
    flop_eff: float    # fraction of datasheet FLOP/s achieved by the matmuls
    kv_cost: float     # KV-cache reads take kv_cost x (bytes / datasheet bandwidth)
    layer_s: float     # overhead per layer per forward pass (s)
    step_s: float      # overhead per forward pass (s)
    seq_layer_s: float  # overhead per sequence per layer per forward pass (s)


# Fitted by `calibrate()` on ../shared/docs/fastertransformer_a100_80gb_latency.csv (all rows);
# docs/latency_model.md lists the fit and the leave-one-model-out check.
CALIBRATED = Constants(bw_eff=0.725, flop_eff=0.55, kv_cost=1.9538, layer_s=9.736e-05, step_s=4.06e-06,
                       seq_layer_s=3.834e-06)

CSV_PATH = REPO_ROOT.parent / "shared" / "docs" / "fastertransformer_a100_80gb_latency.csv"


def _terms(a: Arch, g: GPU, c: Constants, batch: int, prompt_len: int, output_len: int):
    """Roofline time of weights/matmuls (and prefill attention), and the linear features
    [KV-read seconds at datasheet bandwidth, passes x layers, passes, passes x layers x batch]."""
    h, f, L, V = a.hidden, a.ffn, a.layers, a.vocab
    weights = L * (4 * h * h + 2 * h * f) * BYTES + h * V * BYTES

    def linear_time(tokens):
        flops = 2 * tokens * L * (4 * h * h + 2 * h * f) + 2 * batch * h * V
        act = tokens * L * (4 * h + 2 * f) * BYTES * 2
        return max((weights + act) / (c.bw_eff * g.bandwidth), flops / (c.flop_eff * g.peak_flops))

    roof = linear_time(batch * prompt_len)
    roof += 2 * 2 * batch * prompt_len * prompt_len * h * L / (c.flop_eff * g.peak_flops)  # prefill attention
    kv_seconds = 0.0
    for k in range(1, output_len):
        roof += linear_time(batch)
        kv_seconds += batch * (prompt_len + k) * 2 * h * L * BYTES / g.bandwidth
    passes = output_len
    return roof, np.array([kv_seconds, passes * L, passes, passes * L * batch])


def predict(arch: Arch | str, gpu: GPU | str, batch: int, prompt_len: int, output_len: int,
            c: Constants = CALIBRATED) -> float:
    """Predicted end-to-end latency (s) of generating `output_len` tokens for a batch."""
    a = ARCHS[arch] if isinstance(arch, str) else arch
    g = GPUS[gpu] if isinstance(gpu, str) else gpu
    if batch < 1 or prompt_len < 1 or output_len < 1:
        raise ValueError(f"batch={batch}, prompt_len={prompt_len}, output_len={output_len}: all must be >= 1")
    roof, feats = _terms(a, g, c, batch, prompt_len, output_len)
    return roof + float(feats @ np.array([c.kv_cost, c.layer_s, c.step_s, c.seq_layer_s]))


def load_rows(path: Path = CSV_PATH) -> list[dict]:
    with Path(path).open() as fh:
        rows = list(csv.DictReader(fh))
    return [{"model": r["model_shape"].lower(), "batch": int(r["batch"]), "input_len": int(r["input_len"]),
             "output_len": int(r["output_len"]), "measured_s": float(r["ft_latency_ms"]) / 1e3} for r in rows]


def calibrate(rows: list[dict], gpu: str = "a100-80gb") -> Constants:
    """Fit the constants minimising squared relative error: a grid over the two roofline
    efficiencies, non-negative least squares for the four linear terms."""
    best = None
    meas = np.array([r["measured_s"] for r in rows])
    for bw in np.linspace(0.6, 0.95, 15):  # plausible achieved fractions: keeps the fit identifiable
        for fe in np.linspace(0.35, 0.8, 10):
            c0 = Constants(bw, fe, 0.0, 0.0, 0.0, 0.0)
            parts = [_terms(ARCHS[r["model"]], GPUS[gpu], c0, r["batch"], r["input_len"], r["output_len"]) for r in rows]
            base = np.array([p[0] for p in parts])
            A = np.array([p[1] for p in parts]) / meas[:, None]
            y = (meas - base) / meas
            coef = _nnls(A, y)
            err = np.sum((A @ coef - y) ** 2)
            if best is None or err < best[0]:
                best = (err, Constants(float(bw), float(fe), *map(float, coef)))
    return best[1]


def _nnls(A, y):
    """Non-negative least squares by active-set elimination (few columns)."""
    active = list(range(A.shape[1]))
    while True:
        coef = np.zeros(A.shape[1])
        sol, *_ = np.linalg.lstsq(A[:, active], y, rcond=None)
        coef[active] = sol
        if (sol >= 0).all() or not active:
            return coef
        active.pop(int(np.argmin(sol)))


def errors(rows: list[dict], c: Constants, gpu: str = "a100-80gb") -> np.ndarray:
    pred = np.array([predict(r["model"], gpu, r["batch"], r["input_len"], r["output_len"], c) for r in rows])
    meas = np.array([r["measured_s"] for r in rows])
    return pred / meas - 1.0


def load_gpus(path) -> dict[str, GPU]:
    """Extra GPUs from YAML: ``name: {bandwidth_gbps: ..., peak_tflops: ...}``."""
    import yaml

    doc = yaml.safe_load(Path(path).read_text()) or {}
    out = {}
    for name, spec in doc.items():
        try:
            out[name] = GPU(name, float(spec["bandwidth_gbps"]) * 1e9, float(spec["peak_tflops"]) * 1e12)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: GPU {name!r}: need bandwidth_gbps and peak_tflops numbers ({e})") from None
    return out
