"""The iteration-level (continuous batching) view of the latency model.

SPEC "Continuous batching" times one engine iteration with five coefficients,

    tau = fixed_s + per_seq_s n + max(weights_s + per_kv_token_s C, per_token_s (P + D)),

(`n` sequences, `C` context tokens attended to, `P` prefill and `D` decode tokens). This module

- derives the coefficients of an OPT/GPT shape on a GPU from the numbers the per-operator model
  of `bes_jax.latency.model` already uses (datasheet bandwidth and peak, fitted efficiencies and
  fixed costs): :func:`iteration_coefficients`;
- sizes a replica's KV budget from its share of GPU memory: :func:`kv_tokens`;
- runs a uniform static batch (``b`` requests of prompt ``p`` and output ``o``, all present at
  time 0) through the iteration semantics of docs/simulator.md, so both serving modes can be
  compared on the same measured rows: :func:`static_batch_schedule`, :func:`static_batch_latency`;
- fits the five coefficients to measured whole-batch latencies by least squares through that
  schedule, for hardware with no analytic model (the CPU profile): :func:`fit_iteration`.

Equations and errors: docs/latency_model.md, "Iteration model".
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bes_jax.latency.model import BYTES, CALIBRATED, Arch, Constants, GPU, resolve_arch, resolve_gpu
from bes_jax.profile import ITERATION_FIELDS

#: simulator defaults (bes_jax/conf/sim/default.yaml, `SimConfig`): what a static batch runs under
DEFAULT_MAX_NUM_SEQS = 64
DEFAULT_MAX_NUM_BATCHED_TOKENS = 2048


def elementwise_bytes_per_token(a: Arch) -> int:
    """Bytes the memory-bound element-wise kernels move per token over all layers (2 norms, the
    FFN activation, 2 residual adds, bias + QKV split), as in `model._pass_roofline`."""
    return a.layers * a.elementwise_values_per_token * BYTES


def iteration_coefficients(arch: Arch | str, gpu: GPU | str, c: Constants = CALIBRATED) -> dict[str, float]:
    """The five coefficients (seconds) of one iteration of `arch` on `gpu`, in
    `ITERATION_FIELDS` order:

    - ``fixed_s = L c_layer``: the per-layer fixed cost of a pass (launches, synchronisation);
    - ``per_seq_s = L c_seq``: the per-sequence-per-layer fixed cost;
    - ``weights_s = weight bytes / (e_bw BW)``: streaming every matmul weight (incl. the LM head) once;
    - ``per_kv_token_s = KV bytes per token / (e_kv BW)``: reading one cached token's K and V in
      every layer, at the decode-attention efficiency (grouped-query attention shrinks it);
    - ``per_token_s = 2 matmul params / (e_f P) + element-wise bytes per token / (e_bw BW)``: a
      token's matmul FLOPs at the GEMM efficiency, plus the memory-bound element-wise work that
      runs between the GEMMs of a compute-bound pass.

    Dropped against the per-operator model (docs/latency_model.md): the LM head's FLOPs (once per
    sequence), prefill attention's FLOPs (``4 p h`` per token per layer, a few % at p <= 512)
    and activation traffic in memory-bound passes.
    """
    a, g = resolve_arch(arch), resolve_gpu(gpu)
    return {
        "fixed_s": a.layers * c.layer_s,
        "per_seq_s": a.layers * c.seq_layer_s,
        "weights_s": a.weight_bytes / (c.bw_eff * g.bandwidth),
        "per_kv_token_s": a.kv_bytes_per_token / (c.kv_eff * g.bandwidth),
        "per_token_s": (2 * a.matmul_params / (c.flop_eff * g.peak_flops)
                        + elementwise_bytes_per_token(a) / (c.bw_eff * g.bandwidth)),
    }


def rounded(coef: dict[str, float], digits: int = 4) -> dict[str, float]:
    """Coefficients to `digits` significant digits, as profiles store them."""
    return {k: float(f"{coef[k]:.{digits}g}") for k in ITERATION_FIELDS}


def kv_tokens(kv_bytes_per_token: int, memory_bytes: float, share: float, weight_bytes: float,
              reserve_bytes: float) -> int:
    """KV-cache budget (tokens) of one replica: its share of device memory (a vLLM
    ``--gpu-memory-utilization`` fraction) minus its weights and a reserve (CUDA context,
    workspace, activations), over the KV bytes of one token."""
    if not 0 < share <= 1:
        raise ValueError(f"memory share {share!r}: must be in (0, 1]")
    free = share * memory_bytes - weight_bytes - reserve_bytes
    if free < kv_bytes_per_token:
        raise ValueError(f"memory share {share} of {memory_bytes / 1e9:g} GB leaves {free / 1e9:.3g} GB after "
                         f"{weight_bytes / 1e9:.3g} GB of weights and a {reserve_bytes / 1e9:.3g} GB reserve: no room for KV")
    return int(free // kv_bytes_per_token)


# ----------------------------------------------------------------------------- static batch

@dataclass(frozen=True)
class Schedule:
    """The iterations of a static batch: what each one's time depends on, and when each
    request gets its first token and completes (iteration indices)."""

    n: np.ndarray        # [I] sequences in the iteration
    context: np.ndarray  # [I] C: context tokens attended to
    tokens: np.ndarray   # [I] P + D: prefill plus decode tokens
    first_iter: np.ndarray   # [b] index of the iteration that emitted the request's first token
    finish_iter: np.ndarray  # [b] index of the iteration that completed it

    def times(self, coef: dict[str, float]) -> np.ndarray:
        """[I] duration of each iteration under `coef`."""
        it = [float(coef[k]) for k in ITERATION_FIELDS]
        fixed, per_seq, weights, per_kv, per_tok = it
        return fixed + per_seq * self.n + np.maximum(weights + per_kv * self.context, per_tok * self.tokens)


def _check_int(name, v, lo=1):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name}={v!r}: must be an integer >= {lo}")
    return int(v)


def static_batch_schedule(batch: int, prompt_len: int, output_len: int,
                          max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
                          max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
                          kv_tokens: int | None = None) -> Schedule:
    """Iterations one replica runs for `batch` requests of `prompt_len` / `output_len` tokens
    that are all waiting at time 0, under docs/simulator.md "One iteration": strict-FIFO
    admission under `max_num_seqs` and the KV reservation `p + o` (`kv_tokens`; None = no
    limit), decode tokens first, the rest of the `max_num_batched_tokens` budget to prefill
    chunks in admission order, a sequence's first token at the end of the iteration that
    completes its prompt, completion when it has `output_len` tokens.

    With everything present at time 0 the composition of the iterations does not depend on
    their durations, so it is computed once and timed by `Schedule.times` for any coefficients.
    (In the simulator, requests that arrive at the same instant are routed one at a time and
    the first starts an iteration alone; this function models a batch that is formed first, as
    FasterTransformer's measurement does.)
    """
    b, p, o = _check_int("batch", batch), _check_int("prompt_len", prompt_len), _check_int("output_len", output_len)
    S, K = _check_int("max_num_seqs", max_num_seqs), _check_int("max_num_batched_tokens", max_num_batched_tokens)
    if K < S:
        raise ValueError(f"max_num_batched_tokens={K} must be >= max_num_seqs={S}")
    if kv_tokens is not None and p + o > kv_tokens:
        raise ValueError(f"a request's reservation prompt_len + output_len = {p + o} exceeds kv_tokens={kv_tokens}")
    waiting = list(range(b))
    running: list[int] = []  # admission order
    f = np.zeros(b, np.int64)
    g = np.zeros(b, np.int64)
    first, finish = np.full(b, -1), np.full(b, -1)
    reserved = 0
    ns, cs, ts = [], [], []

    def admit():
        nonlocal reserved
        while waiting and len(running) < S and (kv_tokens is None or reserved + p + o <= kv_tokens):
            running.append(waiting.pop(0))
            reserved += p + o

    admit()
    while running:
        k = len(ns)
        decodes = [j for j in running if f[j] == p]
        budget = K - len(decodes)
        chunks = []
        for j in running:
            if f[j] < p and budget > 0:
                c = min(p - f[j], budget)
                chunks.append((j, c))
                budget -= c
        ns.append(len(decodes) + len(chunks))
        cs.append(sum(int(f[j]) + c for j, c in chunks) + sum(p + int(g[j]) for j in decodes))
        ts.append(sum(c for _, c in chunks) + len(decodes))
        for j, c in chunks:
            f[j] += c
            if f[j] == p:
                g[j], first[j] = 1, k
        for j in decodes:
            g[j] += 1
        done = [j for j in running if g[j] == o]
        for j in done:
            finish[j] = k
            running.remove(j)
            reserved -= p + o
        admit()
    return Schedule(np.array(ns, np.float64), np.array(cs, np.float64), np.array(ts, np.float64), first, finish)


def static_batch_latency(coef: dict[str, float], batch: int, prompt_len: int, output_len: int,
                         max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
                         max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
                         kv_tokens: int | None = None) -> float:
    """Seconds from time 0 until the last of the batch's requests completes, through the
    iteration model (see :func:`static_batch_schedule`): the continuous-mode counterpart of a
    whole-batch latency ``L[m, t, b]``."""
    s = static_batch_schedule(batch, prompt_len, output_len, max_num_seqs, max_num_batched_tokens, kv_tokens)
    return float(s.times(coef).sum())


# ----------------------------------------------------------------------------- fitting

def fit_iteration(rows, max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
                  max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
                  restarts: int = 12, iters: int = 50) -> tuple[dict[str, float], np.ndarray]:
    """Coefficients minimising the squared relative error of :func:`static_batch_latency` to
    measured whole-batch latencies; ``rows`` are ``(batch, prompt_len, output_len, seconds)``.

    Given which branch of the ``max`` each iteration takes, the latency is linear in the five
    (non-negative) coefficients, so the fit alternates a non-negative least-squares solve with
    re-assigning the branches from the solution, from several starting assignments (all memory-
    bound, all compute-bound, thresholds on the iteration's token count); the best solution
    under the true ``max`` is kept. Returns the coefficients and the rows' relative errors.
    """
    from scipy.optimize import nnls

    rows = [tuple(r) for r in rows]
    if not rows:
        raise ValueError("fit_iteration: no rows")
    scheds = [static_batch_schedule(int(b), int(p), int(o), max_num_seqs, max_num_batched_tokens)
              for b, p, o, _ in rows]
    meas = np.array([float(r[3]) for r in rows])
    if not (np.isfinite(meas).all() and (meas > 0).all()):
        raise ValueError(f"fit_iteration: measured latencies must be finite and > 0, got {meas}")

    def design(mem_masks):
        A = np.zeros((len(rows), 5))
        for i, (s, mem) in enumerate(zip(scheds, mem_masks)):
            A[i] = [len(s.n), s.n.sum(), mem.sum(), (s.context * mem).sum(), (s.tokens * ~mem).sum()]
        return A / meas[:, None]

    def objective(x):
        coef = dict(zip(ITERATION_FIELDS, x))
        pred = np.array([s.times(coef).sum() for s in scheds])
        return float(np.sum((pred / meas - 1) ** 2)), pred / meas - 1

    all_tokens = np.concatenate([s.tokens for s in scheds])
    starts = [lambda s: np.ones(len(s.n), bool), lambda s: np.zeros(len(s.n), bool)]
    for q in np.linspace(0.05, 0.95, max(restarts - 2, 1)):
        thr = float(np.quantile(all_tokens, q))
        starts.append(lambda s, thr=thr: s.tokens <= thr)
    best = None
    for start in starts:
        masks = [start(s) for s in scheds]
        for _ in range(iters):
            x, _ = nnls(design(masks), np.ones(len(rows)))
            obj, err = objective(x)
            if best is None or obj < best[0]:
                best = (obj, x, err)
            new = [x[2] + x[3] * s.context >= x[4] * s.tokens for s in scheds]
            if all((a == b).all() for a, b in zip(new, masks)):
                break
            masks = new
    _, x, err = best
    return dict(zip(ITERATION_FIELDS, (float(v) for v in x))), err


def check_coefficients(coef: dict[str, float]) -> None:
    """Raise ValueError unless `coef` has exactly the five fields, each finite and >= 0."""
    if set(coef) != set(ITERATION_FIELDS):
        raise ValueError(f"iteration coefficients {sorted(coef)}: expected {list(ITERATION_FIELDS)}")
    for k in ITERATION_FIELDS:
        v = coef[k]
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"iteration.{k} = {v!r}: must be finite and >= 0")
