"""Analytic latency of batched OPT/GPT generation on one GPU, calibrated on measured rows.

A request batch runs one prefill pass over the prompts, then ``output_len - 1`` decode passes
(the prefill produces the first token). Every pass runs, per layer, the operators of a
pre-LayerNorm decoder; each operator takes the roofline time ``max(bytes / (e_bw * BW),
FLOPs / (e_f * P))``. Decode attention reads the KV cache at its own efficiency ``e_kv``. Fixed
costs are added per layer per pass (kernel launches, synchronisation) and per sequence per layer
per pass. ``BW`` and ``P`` are datasheet numbers; the five constants are fitted by
:func:`calibrate` on the FasterTransformer A100-80GB rows in ``../shared/docs/``. The equations,
the fit and its leave-one-model-out check are in docs/latency_model.md.
"""
from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bes_jax import REPO_ROOT

BYTES = 2  # fp16 weights, activations and KV cache


@dataclass(frozen=True)
class Arch:
    layers: int
    heads: int
    head_dim: int
    hidden: int
    ffn: int
    vocab: int = 50272
    #: key/value heads (grouped-query attention); None = `heads` (multi-head attention, as OPT)
    n_kv_heads: int | None = None
    #: weight matrices of one FFN: 2 (up, down: OPT/GPT, ReLU/GeLU) or 3 (gate, up, down: a gated
    #: FFN such as SwiGLU, Llama / Qwen2.5); gate and up are one fused `h x 2f` GEMM, as vLLM runs it
    ffn_matrices: int = 2

    def __post_init__(self):
        if self.heads * self.head_dim != self.hidden:
            raise ValueError(f"heads x head_dim = {self.heads} x {self.head_dim} != hidden {self.hidden}")
        m = self.ffn_matrices
        if isinstance(m, bool) or not isinstance(m, int) or m not in (2, 3):
            raise ValueError(f"ffn_matrices = {m!r}: must be 2 (up, down) or 3 (gate, up, down)")
        kv = self.n_kv_heads
        if kv is not None and (isinstance(kv, bool) or not isinstance(kv, int) or kv < 1 or self.heads % kv):
            raise ValueError(f"n_kv_heads = {kv!r}: must be a positive integer dividing heads ({self.heads})")

    @property
    def kv_heads(self) -> int:
        return self.heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def kv_hidden(self) -> int:
        """Width of the K (and of the V) projection: kv_heads x head_dim (= hidden without GQA)."""
        return self.kv_heads * self.head_dim

    @property
    def kv_bytes_per_token(self) -> int:
        """fp16 KV-cache bytes of one token: K and V of every layer."""
        return 2 * self.layers * self.kv_hidden * BYTES

    @property
    def matmul_params(self) -> int:
        """Weights of the per-layer matmuls (Q, K, V, out, the FFN's `ffn_matrices` matrices), without
        the LM head."""
        h, k = self.hidden, self.kv_hidden
        return self.layers * (2 * h * h + 2 * h * k + self.ffn_matrices * h * self.ffn)

    @property
    def elementwise_values_per_token(self) -> int:
        """Values the memory-bound element-wise kernels read and write per token per layer: 2 norms
        (4h), the FFN activation (bias + ReLU: f in, f out; a gated FFN's act-and-mul: 2f in, f out;
        so `ffn_matrices x f`), 2 residual adds and the QKV bias + split (2 (h + 2k))."""
        h, k = self.hidden, self.kv_hidden
        return 2 * 2 * h + self.ffn_matrices * self.ffn + 2 * (h + 2 * k)

    @property
    def weight_bytes(self) -> int:
        """fp16 bytes of the matmul weights a pass streams: layers + the LM head (h x V, tied or not:
        an untied embedding table is only gathered from); biases and norms ignored."""
        return (self.matmul_params + self.hidden * self.vocab) * BYTES


@dataclass(frozen=True)
class GPU:
    name: str
    bandwidth: float  # memory bandwidth, bytes/s
    peak_flops: float  # dense fp16 tensor FLOP/s


# OPT paper (Zhang et al. 2022, arXiv 2205.01068) Table 1 via OPT_FACTS.md; the GPT-350M and
# GPT-1.3B shapes of the calibration CSV (FasterTransformer docs/gpt_guide.md; FFN = 4 x hidden).
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

# Qwen2.5 base models (decoder with GQA, SwiGLU FFN, RoPE, RMSNorm, QKV bias; 0.5B and 1.5B tie
# the LM head to the embeddings): the `config.json` of Qwen/Qwen2.5-{0.5B,1.5B,7B} on Hugging Face
# (num_hidden_layers, num_attention_heads, hidden_size / num_attention_heads, hidden_size,
# intermediate_size, vocab_size, num_key_value_heads) and Table 1 of the Qwen2.5 technical report
# (arXiv 2412.15115: layers, Q/KV heads, tied embeddings). Kept apart from ARCHS (the OPT/GPT
# shapes of the calibration and of the OPT profiles); `resolve_arch` knows both.
QWEN25_ARCHS = {
    "qwen2.5-0.5b": Arch(24, 14, 64, 896, 4864, vocab=151936, n_kv_heads=2, ffn_matrices=3),
    "qwen2.5-1.5b": Arch(28, 12, 128, 1536, 8960, vocab=151936, n_kv_heads=2, ffn_matrices=3),
    "qwen2.5-7b": Arch(28, 28, 128, 3584, 18944, vocab=152064, n_kv_heads=4, ffn_matrices=3),
}

# Vendor datasheets (OPT_FACTS.md): memory bandwidth and dense fp16/bf16 tensor throughput.
GPUS = {
    "a100-40gb": GPU("a100-40gb", 1555e9, 312e12),
    "a100-80gb": GPU("a100-80gb", 2039e9, 312e12),
    "h100-sxm": GPU("h100-sxm", 3350e9, 989.4e12),
}


@dataclass(frozen=True)
class Constants:
    bw_eff: float       # e_bw: fraction of datasheet bandwidth reached by weight/activation streams
    flop_eff: float     # e_f: fraction of datasheet fp16 FLOP/s reached by the matmuls
    kv_eff: float       # e_kv: fraction of datasheet bandwidth reached by decode attention (KV reads)
    layer_s: float      # c_layer: fixed cost per layer per pass (s)
    seq_layer_s: float  # c_seq: fixed cost per sequence per layer per pass (s)


# Written by `python scripts/make_profile.py --report` from `calibrate(load_rows())`;
# tests/test_latency_model.py checks that re-fitting reproduces them.
CALIBRATED = Constants(bw_eff=0.734, flop_eff=0.606, kv_eff=0.4671, layer_s=9.772e-05, seq_layer_s=3.513e-06)

# Priors of the fit (see calibrate): typical achieved fractions of datasheet numbers on A100
# for streaming kernels (~80% of HBM bandwidth) and fp16 cuBLAS GEMMs (~60% of tensor peak),
# each with a log-normal spread of PRIOR_SIGMA. They matter only where the rows cannot separate
# an efficiency from a fixed cost (a fit on one model shape alone).
PRIOR_BW_EFF, PRIOR_FLOP_EFF, PRIOR_SIGMA = 0.8, 0.6, 0.2
ROW_SIGMA = 0.05  # relative error expected of one measured row (measurement + model noise)

CSV_NAME = "fastertransformer_a100_80gb_latency.csv"
#: The calibration rows: ``../shared/docs/`` next to a source checkout (scripts and tests use them;
#: an installed package needs only :data:`CALIBRATED`, so they do not ship).
CSV_PATH = REPO_ROOT.parent / "shared" / "docs" / CSV_NAME


def resolve_arch(arch: Arch | str) -> Arch:
    if isinstance(arch, Arch):
        return arch
    known = {**ARCHS, **QWEN25_ARCHS}
    if arch not in known:
        raise KeyError(f"unknown model {arch!r}; known: {sorted(known)}")
    return known[arch]


def resolve_gpu(gpu: GPU | str, extra: dict[str, GPU] | None = None) -> GPU:
    if isinstance(gpu, GPU):
        return gpu
    known = {**GPUS, **(extra or {})}
    if gpu not in known:
        raise KeyError(f"unknown gpu {gpu!r}; known: {sorted(known)}")
    return known[gpu]


def _roof(bytes_, flops, g: GPU, bw_eff: float, flop_eff: float) -> float:
    return max(bytes_ / (bw_eff * g.bandwidth), flops / (flop_eff * g.peak_flops))


def _pass_roofline(a: Arch, g: GPU, c: Constants, tokens: int, seqs: int) -> dict[str, float]:
    """Roofline seconds of one forward pass over `tokens` new tokens of `seqs` sequences,
    without attention (which depends on the phase). Per layer: QKV, out proj, FFN up, FFN down
    (weights + input/output activations vs 2 x tokens x weights FLOPs), and the memory-bound
    element-wise work (2 LayerNorms, bias/ReLU, 2 residual adds). Then the LM head, for the last
    position of each sequence only (logits written and read once by sampling)."""
    h, f, L, V, k = a.hidden, a.ffn, a.layers, a.vocab, a.kv_hidden
    T, e, p = tokens, c.bw_eff, c.flop_eff
    matmuls = 0.0
    # QKV, out projection, FFN up (a gated FFN: gate and up fused, h x 2f), FFN down
    for n_in, n_out in ((h, h + 2 * k), (h, h), (h, (a.ffn_matrices - 1) * f), (f, h)):
        w = n_in * n_out
        matmuls += _roof((w + T * (n_in + n_out)) * BYTES, 2 * T * w, g, e, p)
    elementwise = T * a.elementwise_values_per_token * BYTES / (e * g.bandwidth)
    lm_head = _roof((h * V + seqs * (h + 2 * V)) * BYTES, 2 * seqs * h * V, g, e, p)
    return {"matmuls": L * matmuls, "elementwise": L * elementwise, "lm_head": lm_head}


def breakdown(arch: Arch | str, gpu: GPU | str, batch: int, prompt_len: int, output_len: int,
              c: Constants = CALIBRATED) -> dict[str, float]:
    """Seconds per component of generating `output_len` tokens for `batch` prompts of
    `prompt_len` tokens; the values sum to :func:`predict`."""
    a, g = resolve_arch(arch), resolve_gpu(gpu)
    for k, v in (("batch", batch), ("prompt_len", prompt_len), ("output_len", output_len)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{k}={v!r}: must be an integer >= 1")
    b, p, o = int(batch), int(prompt_len), int(output_len)
    h, L, k = a.hidden, a.layers, a.kv_hidden
    steps = o - 1
    pre = _pass_roofline(a, g, c, b * p, b)
    dec = _pass_roofline(a, g, c, b, b)
    # Prefill attention: QK^T and scores x V over the full p x p square (4 b p^2 h FLOPs) vs
    # reading Q, K, V, writing the context and the KV cache (K and V are kv_hidden wide).
    pre_attn = L * _roof(b * p * (2 * h + 4 * k) * BYTES, 4 * b * p * p * h, g, c.bw_eff, c.flop_eff)
    # Decode step j (1..o-1) reads the cached K and V of p + j positions: 2 kv_hidden (p + j)
    # values per sequence per layer; summed over the steps in closed form. Memory-bound: its
    # 4 h (p + j) FLOPs per sequence per layer are far below the bytes' time.
    kv_positions = steps * p + steps * (steps + 1) // 2
    kv_bytes = L * b * 2 * k * kv_positions * BYTES
    kv_flops = L * b * 4 * h * kv_positions
    dec_attn = max(kv_bytes / (c.kv_eff * g.bandwidth), kv_flops / (c.flop_eff * g.peak_flops))
    passes = o
    return {
        "prefill_matmuls": pre["matmuls"] + pre["lm_head"],
        "prefill_attention": pre_attn,
        "prefill_elementwise": pre["elementwise"],
        "decode_matmuls": steps * (dec["matmuls"] + dec["lm_head"]),
        "decode_attention_kv": dec_attn,
        "decode_elementwise": steps * dec["elementwise"],
        "overhead_per_layer": passes * L * c.layer_s,
        "overhead_per_sequence": passes * L * b * c.seq_layer_s,
    }


def predict(arch: Arch | str, gpu: GPU | str, batch: int, prompt_len: int, output_len: int,
            c: Constants = CALIBRATED) -> float:
    """Predicted end-to-end latency (s) of generating `output_len` tokens for a batch of `batch`
    prompts of `prompt_len` tokens."""
    return float(sum(breakdown(arch, gpu, batch, prompt_len, output_len, c).values()))


# ----------------------------------------------------------------------------- calibration

def load_rows(path: str | Path = CSV_PATH) -> list[dict]:
    """Rows of the calibration CSV: model (lower-case shape name), batch, input_len, output_len,
    measured_s. The shape columns must agree with :data:`ARCHS`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file: the calibration rows ({CSV_NAME}) are found in ../shared/docs/ "
                                "next to a source checkout and are not shipped with the package; pass their path "
                                "(load_rows(PATH)); CALIBRATED holds the fitted constants")
    with path.open() as fh:
        raw = list(csv.DictReader(fh))
    rows = []
    for i, r in enumerate(raw):
        model = r["model_shape"].lower()
        a = ARCHS.get(model)
        shape = (int(r["layers"]), int(r["heads"]), int(r["head_dim"]), int(r["hidden"]))
        if a is None or shape != (a.layers, a.heads, a.head_dim, a.hidden):
            raise ValueError(f"{path.name} row {i + 2}: shape {model} {shape} does not match ARCHS")
        rows.append({"model": model, "batch": int(r["batch"]), "input_len": int(r["input_len"]),
                     "output_len": int(r["output_len"]), "measured_s": float(r["ft_latency_ms"]) / 1e3})
    return rows


_LINEAR = ("kv_eff", "layer_s", "seq_layer_s")  # enter the latency linearly (kv as 1 / kv_eff)


def _design(rows, gpu: GPU, bw_eff: float, flop_eff: float):
    """Latency of each row = base + A @ [1/kv_eff, layer_s, seq_layer_s]."""
    unit = Constants(bw_eff, flop_eff, 1.0, 1.0, 1.0)
    base, A = [], []
    for r in rows:
        d = breakdown(r["model"], gpu, r["batch"], r["input_len"], r["output_len"], unit)
        A.append([d.pop("decode_attention_kv"), d.pop("overhead_per_layer"), d.pop("overhead_per_sequence")])
        base.append(sum(d.values()))
    return np.array(base), np.array(A)


def _nnls(A, y):
    """Non-negative least squares by active-set elimination (three columns)."""
    active = list(range(A.shape[1]))
    coef = np.zeros(A.shape[1])
    while active:
        sol, *_ = np.linalg.lstsq(A[:, active], y, rcond=None)
        if (sol >= 0).all():
            coef[active] = sol
            return coef
        active.pop(int(np.argmin(sol)))
    return coef


def _objective(rows, gpu, meas, bw_eff, flop_eff):
    base, A = _design(rows, gpu, bw_eff, flop_eff)
    Ar, yr = A / meas[:, None], (meas - base) / meas  # relative error is linear in the coefficients
    coef = _nnls(Ar, yr)
    rel = Ar @ coef - yr
    prior = (math.log(bw_eff / PRIOR_BW_EFF) ** 2 + math.log(flop_eff / PRIOR_FLOP_EFF) ** 2) / PRIOR_SIGMA ** 2
    return float(np.sum((rel / ROW_SIGMA) ** 2) + prior), coef


def calibrate(rows: list[dict], gpu: GPU | str = "a100-80gb") -> Constants:
    """Fit the five constants to measured rows (maximum a posteriori).

    Objective: sum over rows of (relative error / ROW_SIGMA)^2 plus log-normal priors on the two
    roofline efficiencies. For given (e_bw, e_f) the latency is linear in 1/e_kv, c_layer and
    c_seq, which are solved exactly by non-negative least squares; (e_bw, e_f) are found by a
    grid search (step 0.02 over [0.3, 1] x [0.2, 1]) refined twice on finer local grids.
    """
    g = resolve_gpu(gpu)
    meas = np.array([r["measured_s"] for r in rows])
    best = None

    def search(bws, fes):
        nonlocal best
        for bw in bws:
            for fe in fes:
                if not (0 < bw <= 1 and 0 < fe <= 1):
                    continue
                obj, coef = _objective(rows, g, meas, float(bw), float(fe))
                if best is None or obj < best[0]:
                    best = (obj, float(bw), float(fe), coef)

    search(np.arange(0.30, 1.0001, 0.02), np.arange(0.20, 1.0001, 0.02))
    for step in (0.004, 0.001):
        _, bw0, fe0, _ = best
        search(bw0 + step * np.arange(-5, 6), fe0 + step * np.arange(-5, 6))
    _, bw, fe, (kv_cost, layer_s, seq_s) = best
    return Constants(round(bw, 3), round(fe, 3), _sig(1.0 / kv_cost if kv_cost > 0 else math.inf),
                     _sig(layer_s), _sig(seq_s))


def _sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def errors(rows: list[dict], c: Constants = CALIBRATED, gpu: GPU | str = "a100-80gb") -> np.ndarray:
    """Relative error (predicted / measured - 1) of each row."""
    pred = np.array([predict(r["model"], gpu, r["batch"], r["input_len"], r["output_len"], c) for r in rows])
    meas = np.array([r["measured_s"] for r in rows])
    return pred / meas - 1.0


def leave_one_model_out(rows: list[dict]) -> dict[str, tuple[Constants, np.ndarray]]:
    """For each model shape in `rows`: constants fitted on the other shapes' rows, and the
    relative errors of predicting the held-out shape's rows (in row order)."""
    out = {}
    for m in sorted({r["model"] for r in rows}):
        c = calibrate([r for r in rows if r["model"] != m])
        out[m] = (c, errors([r for r in rows if r["model"] == m], c))
    return out


def constants_dict(c: Constants = CALIBRATED) -> dict[str, float]:
    return asdict(c)


def load_gpus(path: str | Path) -> dict[str, GPU]:
    """Extra GPUs from YAML: ``name: {bandwidth_gbps: ..., peak_tflops: ...}``."""
    import yaml

    doc = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a mapping of GPU name -> {{bandwidth_gbps, peak_tflops}}")
    out = {}
    for name, spec in doc.items():
        try:
            bw, pk = float(spec["bandwidth_gbps"]), float(spec["peak_tflops"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: GPU {name!r}: need bandwidth_gbps and peak_tflops numbers ({e!r})") from None
        if not (bw > 0 and pk > 0 and math.isfinite(bw) and math.isfinite(pk)):
            raise ValueError(f"{path}: GPU {name!r}: bandwidth_gbps={bw}, peak_tflops={pk}: must be positive")
        out[str(name)] = GPU(str(name), bw * 1e9, pk * 1e12)
    return out
