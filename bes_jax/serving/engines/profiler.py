"""``bes-profile --engine URL [URL ...] --out FILE``: fit live engines' iteration model and write
a continuous-batching profile.

For each engine (one per model, in pool order), with streamed completions (``stream: true``, as
``bes-serve`` forwards a streamed request; ``--plain`` measures whole answers instead: an engine
that streams spends time per token on it, about 0.5 ms on a CPU ``transformers serve``, so a
profile must be measured the way the traffic it predicts is served):

1. **prefill**: the end-to-end time of a one-token completion against prompt length at
   concurrency 1 (one prefill iteration of ``n = 1``, ``P = C = p``, plus HTTP), each sent
   ``--idle-s`` after the previous answer: a request at light load finds its engine idle, and
   waking an idle engine costs time (measured: a CPU ``transformers serve`` answers the first
   token about 7 ms later after 50 ms idle than back to back); that time lands in the
   per-request overhead;
2. **decode**: the extra end-to-end time of ``c`` concurrent completions of ``2 + k`` tokens over
   ``c`` of 2 tokens, per extra token (the engine's own output counts), against concurrency ``c``
   and prompt length ``p`` (a decode iteration of ``n = D = c`` sequences attending to
   ``C = c (p + g)`` tokens). End-to-end differences, not gaps between streamed chunks: an engine
   may flush several tokens at once (``transformers serve`` does under load).

``URL#MODEL`` addresses one model of a server that lists several: pointed at ``bes-serve``
itself (``http://router:8000#qwen-l``), the profile predicts what the router's clients see,
its own routing and relaying included.

The SPEC's iteration time ``tau = fixed_s + per_seq_s n + max(weights_s + per_kv_token_s C,
per_token_s (P + D))`` is fitted to these points by non-negative least squares, alternating
between assigning each point to the memory-bound or compute-bound branch and refitting
(:func:`fit_iteration`). The profile gets per model ``ctx_max``, ``kv_tokens`` and ``iteration``,
the request-level ``latency_s`` table computed from the fitted model (a batch of ``b`` requests
of a task prefilled together then decoded together), placeholder qualities unless real ones are
given (random-weight models have none; the provenance says so), and provenance with the raw
points and the fit's error.
"""
from __future__ import annotations

import asyncio
import datetime as _dt
import json
import math
import secrets
import time
from pathlib import Path
from typing import Optional

import numpy as np

from bes_jax.profile import ITERATION_FIELDS as ITERATION_KEYS
from bes_jax.serving.engines.base import chunk_tokens

DEFAULT_TASKS = {"short": (32, 16), "long": (256, 32)}


def iteration_time(it, n, C, P, D) -> np.ndarray:
    """The SPEC's ``tau`` for arrays of ``n, C, P, D``."""
    fixed, per_seq, weights, per_kv, per_tok = it
    n, C, P, D = (np.asarray(x, np.float64) for x in (n, C, P, D))
    return fixed + per_seq * n + np.maximum(weights + per_kv * C, per_tok * (P + D))


def fit_iteration(n, C, P, D, y, iters: int = 20, whole=None) -> tuple[np.ndarray, dict]:
    """Non-negative coefficients ``(fixed_s, per_seq_s, weights_s, per_kv_token_s, per_token_s,
    request_overhead_s)`` minimising squared relative error of ``tau`` (plus the per-request
    overhead on the points that are ``whole`` requests, not one iteration) against the measured
    ``y``. Each point is put in the branch of the ``max`` that the current fit says is active,
    and the linear problem is solved again (from both all-memory-bound and all-compute-bound
    starts; the better fit wins)."""
    from scipy.optimize import nnls
    n, C, P, D, y = (np.asarray(x, np.float64) for x in (n, C, P, D, y))
    whole = np.zeros(len(y)) if whole is None else np.asarray(whole, np.float64)
    model = lambda coef: iteration_time(coef[:5], n, C, P, D) + coef[5] * whole
    # relative error (short iterations count as much as long ones), with no point weighing more
    # than ten times the median one
    w = 1.0 / np.maximum(y, 0.1 * float(np.median(y)))

    def solve(mem):
        A = np.stack([np.ones_like(n), n, mem.astype(float), np.where(mem, C, 0.0), np.where(mem, 0.0, P + D),
                      whole], 1)
        coef, _ = nnls(A * w[:, None], y * w)
        return coef

    def score(coef):
        pred = model(coef)
        return float(np.sqrt(np.mean(((pred - y) * w) ** 2))), pred

    best = None
    rng = np.random.default_rng(0)
    starts = [np.ones(len(y), bool), np.zeros(len(y), bool)] + [rng.random(len(y)) < 0.5 for _ in range(30)]
    for start in starts:
        mem = start
        for _ in range(iters):
            coef = solve(mem)
            new = (coef[2] + coef[3] * C) >= coef[4] * (P + D)
            if np.array_equal(new, mem):
                break
            mem = new
        err, pred = score(coef)
        if best is None or err < best[1]:
            best = (coef, err, pred)
    # polish the piecewise-linear fit on the max itself (bounded: every coefficient >= 0)
    from scipy.optimize import least_squares
    my = float(np.median(y))
    typical = np.array([my, my / max(n.max(), 1), my, my / max(C.max(), 1), my / max((P + D).max(), 1), my])
    scale = np.maximum(best[0], 0.01 * typical)  # a coefficient at 0 can still move
    sol = least_squares(lambda z: (model(z * scale) - y) * w, best[0] / scale, bounds=(0.0, np.inf), x_scale=1.0)
    err, pred = score(sol.x * scale)
    if err < best[1]:
        best = (sol.x * scale, err, pred)
    coef, err, pred = best
    rel = (pred - y) / y
    return coef, {"rms_rel_error": round(err, 4), "max_abs_rel_error": round(float(np.max(np.abs(rel))), 4),
                  "points": int(len(y))}


def batch_latency(it, p: int, o: int, b: int, K: int) -> float:
    """Seconds to serve ``b`` requests of prompt ``p`` and output ``o`` that start together: the
    prefill in chunks of ``K`` tokens, then ``o - 1`` decode iterations of ``b`` sequences."""
    total, left, done_ctx = 0.0, b * p, 0
    while left > 0:
        c = min(left, K)
        done_ctx += c
        total += float(iteration_time(it, b, done_ctx, c, 0))
        left -= c
    g = np.arange(1, o)
    total += float(np.sum(iteration_time(it, b, b * (p + g), 0, b))) if o > 1 else 0.0
    return total


# ----------------------------------------------------------------------------- measuring

def _prompt(n_tokens: int, tag: str, chars_per_token: float) -> str:
    """About ``n_tokens`` tokens, opening with ``tag``: a tag used once makes every prompt differ
    from its first token, so no engine's prefix cache (vLLM's is on by default) serves part of a
    prefill from an earlier probe's."""
    base = f"[{tag}] profile the engine with a prompt of known length. "
    n_chars = max(1, int(round(n_tokens * chars_per_token)))
    return (base * (n_chars // len(base) + 1))[:n_chars]


async def _complete_one(client, model_id: str, prompt: str, max_tokens: int, extra: dict,
                        stream: bool = False) -> dict:
    """End-to-end seconds of one completion (streamed: until the stream ends) and the engine's
    token counts (streamed: the output tokens counted from the chunks, the usage chunk's counts
    when the engine sends one)."""
    body = {"model": model_id, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, **extra}
    t0 = time.perf_counter()
    if not stream:
        r = await client.post("/v1/completions", json=body)
        dt = time.perf_counter() - t0
        if r.status_code != 200:
            raise RuntimeError(f"engine answered HTTP {r.status_code}: {r.text[:300]!r}")
        return {"e2e_s": dt, "usage": r.json().get("usage") or {}}
    n, usage = 0, {}
    async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        if r.status_code != 200:
            raise RuntimeError(f"engine answered HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            data = line[5:].strip() if line.startswith("data:") else None
            if not data or data == "[DONE]":
                continue
            try:
                d = json.loads(data)
            except ValueError:
                raise RuntimeError(f"engine streamed an event that is not JSON: {data[:200]!r}") from None
            if isinstance(d, dict):
                if d.get("error"):
                    raise RuntimeError(f"engine failed mid-stream: {str(d['error'])[:300]}")
                n += chunk_tokens(d, "completion")
                usage = d.get("usage") or usage
    dt = time.perf_counter() - t0
    return {"e2e_s": dt, "usage": {**usage, "completion_tokens": usage.get("completion_tokens") or n}}


class EngineProbe:
    def __init__(self, url: str, api_key: Optional[str] = None, timeout: float = 120.0, stream: bool = True):
        import httpx
        url, _, self.wanted = url.partition("#")  # URL#MODEL: that model of a server that lists several
        self.url = url.rstrip("/")
        self.stream = stream
        self._salt, self._sent = secrets.token_hex(3), 0
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout,
                                        limits=httpx.Limits(max_connections=None))
        self.model_id: Optional[str] = None
        self.extra: dict = {}
        self.info: dict = {}

    async def discover(self) -> None:
        r = await self.client.get("/v1/models")
        r.raise_for_status()
        data = r.json().get("data") or []
        if not data:
            raise RuntimeError(f"engine {self.url}: /v1/models lists no model")
        if self.wanted:
            match = [d for d in data if str(d.get("id")) == self.wanted]
            if not match:
                raise RuntimeError(f"engine {self.url}: /v1/models lists {[d.get('id') for d in data]}, "
                                   f"not {self.wanted!r} (the model after '#' in the URL)")
            data = match
        self.info = data[0]
        self.model_id = str(data[0]["id"])
        # vLLM honours ignore_eos (every request then generates exactly max_tokens); others refuse it
        r = await self.client.post("/v1/completions", json={"model": self.model_id, "prompt": "probe",
                                                            "max_tokens": 1, "ignore_eos": True})
        if r.status_code == 200:
            self.extra = {"ignore_eos": True}

    async def kv_tokens(self) -> Optional[int]:
        """vLLM's KV budget (``cache_config_info``: num_gpu_blocks x block_size), when published."""
        try:
            r = await self.client.get("/metrics", timeout=2.0)
            if r.status_code != 200:
                return None
            from prometheus_client.parser import text_string_to_metric_families
            for fam in text_string_to_metric_families(r.text):
                for s in fam.samples:
                    if s.name.startswith("vllm:cache_config_info"):
                        nb, bs = s.labels.get("num_gpu_blocks"), s.labels.get("block_size")
                        if nb not in (None, "None") and bs not in (None, "None"):
                            return int(float(nb)) * int(float(bs))
        except Exception:
            return None
        return None

    def prompt(self, n_tokens: int, chars_per_token: float) -> str:
        """A prompt of about ``n_tokens`` no earlier probe sent (a fixed-width tag, counter first
        so that even short prompts differ, then this probe's random salt; the length does not drift)."""
        self._sent += 1
        return _prompt(n_tokens, f"{self._sent:06d}-{self._salt}", chars_per_token)

    async def run(self, n_tokens: int, max_tokens: int, concurrency: int, chars_per_token: float) -> list[dict]:
        """``concurrency`` completions of fresh prompts of about ``n_tokens`` tokens, sent together."""
        return await asyncio.gather(*(_complete_one(self.client, self.model_id, self.prompt(n_tokens, chars_per_token),
                                                    max_tokens, self.extra, self.stream) for _ in range(concurrency)))

    async def prompt_tokens(self, res: dict, n_tokens: int, chars_per_token: float, known: Optional[int]) -> int:
        """The engine's count of the prompt tokens of a probe ``res`` of about ``n_tokens``: its
        usage's; for a stream without usage, ``known`` (counted before for this length) or the
        usage of one whole one-token answer to such a prompt; ``n_tokens`` if the engine gives none."""
        counted = res["usage"].get("prompt_tokens")
        if counted is None:
            if known is not None:
                return known
            whole = await _complete_one(self.client, self.model_id, self.prompt(n_tokens, chars_per_token), 1,
                                        self.extra, False)
            counted = whole["usage"].get("prompt_tokens")
        return int(counted or n_tokens)

    async def close(self):
        await self.client.aclose()


async def measure_engine(url: str, *, prompt_lens, concurrencies, decode_prompt_lens, decode_tokens: int,
                         repeats: int, chars_per_token: float, api_key=None, stream: bool = True,
                         idle_s: float = 0.05, log=print) -> dict:
    """Raw points of one engine: prefill ``(p, ttft)`` and decode ``(c, p, mean ctx, gap)``."""
    pr = EngineProbe(url, api_key, stream=stream)
    try:
        await pr.discover()
        await pr.run(8, 4, 1, chars_per_token)  # warm-up
        prefill = []
        for p in prompt_lens:
            ttfts, p_used = [], None
            for k in range(repeats):
                await asyncio.sleep(idle_s)  # a request that finds the engine idle, as one at light load does
                res = (await pr.run(p, 1, 1, chars_per_token))[0]
                ttfts.append(res["e2e_s"])  # one output token: the prefill iteration (and HTTP)
                p_used = await pr.prompt_tokens(res, p, chars_per_token, p_used)
            prefill.append({"prompt_tokens": p_used, "ttft_s": float(np.median(ttfts))})
            log(f"  {url} prefill p={p_used}: ttft {1000 * prefill[-1]['ttft_s']:.1f} ms")
        decode, dropped = [], []
        for c in concurrencies:
            for p in decode_prompt_lens:
                short, long_, n_s, n_l, p_used = [], [], [], [], None
                for k in range(repeats):
                    for n_out, times, counts in ((2, short, n_s), (2 + decode_tokens, long_, n_l)):
                        res = await pr.run(p, n_out, c, chars_per_token)
                        times.append(float(np.median([r["e2e_s"] for r in res])))
                        counts.append(float(np.mean([r["usage"].get("completion_tokens") or n_out for r in res])))
                        p_used = await pr.prompt_tokens(res[0], p, chars_per_token, p_used)
                extra_tokens = float(np.median(n_l)) - float(np.median(n_s))
                # the decode iterations the longer answers took, per token: robust to engines that
                # flush streamed tokens in bursts
                gap = (float(np.median(long_)) - float(np.median(short))) / max(extra_tokens, 1.0)
                point = {"concurrency": c, "prompt_tokens": p_used, "mean_context": p_used + 2 + extra_tokens / 2,
                         "gap_s": gap}
                if extra_tokens >= 1 and gap > 0:
                    decode.append(point)
                    log(f"  {url} decode c={c} p={p_used}: {1000 * gap:.2f} ms/token")
                else:  # noise larger than the signal (a busy machine): kept out of the fit, recorded
                    dropped.append(point)
                    log(f"  {url} decode c={c} p={p_used}: dropped (longer answers were not slower)")
        kv = await pr.kv_tokens()
        return {"url": url, "model_id": pr.model_id, "models_entry": pr.info, "ignore_eos": bool(pr.extra),
                "streamed": stream,
                "prefill": prefill, "decode": decode, "decode_dropped": dropped, "kv_tokens_reported": kv}
    finally:
        await pr.close()


def fit_points(raw: dict) -> tuple[np.ndarray, dict]:
    """The six coefficients of :func:`fit_iteration`: a one-token completion is a whole request
    (the per-request overhead plus one prefill iteration); a decode gap is one iteration."""
    n, C, P, D, y, whole = [], [], [], [], [], []
    for pt in raw["prefill"]:
        n.append(1), C.append(pt["prompt_tokens"]), P.append(pt["prompt_tokens"]), D.append(0), y.append(pt["ttft_s"])
        whole.append(1.0)
    for pt in raw["decode"]:
        c = pt["concurrency"]
        n.append(c), C.append(c * pt["mean_context"]), P.append(0), D.append(c), y.append(pt["gap_s"])
        whole.append(0.0)
    return fit_iteration(n, C, P, D, y, whole=whole)


def _local_ctx_max(model_id: str) -> Optional[int]:
    """``max_position_embeddings`` of a model served from a local directory (``transformers serve``
    does not report a context length)."""
    try:
        cfg = json.loads((Path(model_id) / "config.json").read_text())
        v = cfg.get("max_position_embeddings")
        return int(v) if v else None
    except (OSError, ValueError, TypeError):
        return None


def _param_count(model_id: str) -> Optional[int]:
    """Parameters of a model served from a local directory (counted on the meta device)."""
    try:
        if not Path(model_id).is_dir():
            return None
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM
        cfg = AutoConfig.from_pretrained(model_id)
        with torch.device("meta"):
            m = AutoModelForCausalLM.from_config(cfg)
        return int(sum(p.numel() for p in m.parameters()))
    except Exception:
        return None


def run_engine_profile(urls, *, names=None, tasks=None, b_max: int = 8, max_num_batched_tokens: int = 512,
                       ctx_max: Optional[int] = None, kv_tokens: Optional[int] = None,
                       prompt_lens=(8, 64, 256), concurrencies=(1, 4, 16), decode_prompt_lens=(16, 256),
                       decode_tokens: int = 16, repeats: int = 3, chars_per_token: float = 1.0,
                       deadline_factor: float = 2.5, quality=None, hardware: str = "live engines",
                       name: str = "engines", api_key=None, api_keys=None, stream: bool = True,
                       idle_s: float = 0.05, log=print) -> dict:
    """Measure every engine, fit, and return a validated continuous-batching profile dict."""
    from bes_jax.profile import profile_from_dict
    if not (idle_s >= 0 and math.isfinite(idle_s)):
        raise ValueError(f"--idle-s {idle_s!r}: must be a finite number of seconds >= 0")
    tasks = dict(tasks or DEFAULT_TASKS)
    t_start = time.time()
    raws = []
    for i, u in enumerate(urls):
        log(f"profiling {u}")
        key = api_keys[i] if api_keys else api_key
        raws.append(asyncio.run(measure_engine(u, prompt_lens=prompt_lens, concurrencies=concurrencies,
                                               decode_prompt_lens=decode_prompt_lens,
                                               decode_tokens=decode_tokens, repeats=repeats,
                                               chars_per_token=chars_per_token, api_key=key, stream=stream,
                                               idle_s=idle_s, log=log)))
    if not names:
        names = [Path(r["model_id"]).name or r["model_id"] for r in raws]
        names = [n if names.count(n) == 1 else f"{n}-{i}" for i, n in enumerate(names)]
    names = list(names)
    if len(names) != len(urls):
        raise ValueError(f"--names: {len(names)} names for {len(urls)} engines")
    models, fits, lat = [], {}, np.zeros((len(urls), len(tasks), b_max))
    for mi, (nm, raw) in enumerate(zip(names, raws)):
        coef, err = fit_points(raw)
        fits[nm] = err
        ctx = int(ctx_max or raw["models_entry"].get("max_model_len") or _local_ctx_max(raw["model_id"]) or 2048)
        kv = int(kv_tokens or raw["kv_tokens_reported"] or ctx * 32)
        params = _param_count(raw["model_id"]) or 1
        models.append({"name": nm, "params": params, "ctx_max": ctx, "kv_tokens": kv,
                       "iteration": {k: float(f"{v:.6g}") for k, v in zip(ITERATION_KEYS, coef[:5])},
                       "request_overhead_s": float(f"{coef[5]:.6g}")})
        for ti, (p, o) in enumerate(tasks.values()):
            lat[mi, ti] = [batch_latency(coef[:5], p, o, b, max_num_batched_tokens) + coef[5] for b in range(1, b_max + 1)]
        log(f"{nm}: iteration {models[-1]['iteration']} (fit rms relative error {err['rms_rel_error']:.1%})")
    lat = np.maximum.accumulate(lat, axis=2)
    T, M = len(tasks), len(urls)
    if isinstance(quality, str) and quality == "opt":
        from bes_jax.serving.profiler import OPT_ACCURACY, QUALITY_SOURCE
        try:
            quality = [[OPT_ACCURACY[t][m] / 100.0 for t in tasks] for m in names]
        except KeyError as e:
            raise ValueError(f"--quality opt: no published accuracy for {e} (models must be named opt-125m, "
                             f"opt-1.3b, opt-6.7b and tasks among {sorted(OPT_ACCURACY)})") from None
        q_note_opt = QUALITY_SOURCE
    else:
        q_note_opt = None
    if quality is None:
        qual = [[round(0.5 + 0.4 * m / max(M - 1, 1), 4)] * T for m in range(M)]
        q_note = ("PLACEHOLDER, not measured: increasing with model order (0.5 .. 0.9), the same for every task; "
                  "replace with the models' real task scores (random-weight test models have none)")
    else:
        qual = [[float(x) for x in row] for row in quality]
        q_note = q_note_opt or "given on the command line (--quality)"
    deadlines = [float(math.ceil(deadline_factor * lat[-1, ti, 0] * 1000) / 1000) for ti in range(T)]
    doc = {
        "name": name,
        "hardware": {"name": hardware, "engines": list(urls)},
        "models": models,
        "tasks": [{"name": tn, "metric": "acc", "deadline_s": deadlines[ti], "prompt_len": int(p), "output_len": int(o)}
                  for ti, (tn, (p, o)) in enumerate(tasks.items())],
        "B_max": b_max,
        "latency_s": lat.tolist(),
        "quality": qual,
        "provenance": {
            "latency": ("computed from each model's fitted iteration model (a batch of b requests of the task's "
                        "prompt/output lengths prefilled together in chunks of max_num_batched_tokens = "
                        f"{max_num_batched_tokens}, then decoded together)"),
            "iteration": ("fitted by bes-profile --engine (bes_jax.serving.engines.profiler): non-negative least "
                          "squares on relative error of the SPEC's tau, to the end-to-end time of "
                          f"{'streamed' if stream else 'whole (non-streamed)'} one-token completions "
                          f"at concurrency 1, each sent {idle_s:g} s after the engine went idle, for prompts of "
                          f"{list(prompt_lens)} tokens and the extra end-to-end time "
                          f"per extra output token of {decode_tokens}-token-longer completions "
                          f"at concurrency {list(concurrencies)} with prompts of {list(decode_prompt_lens)} tokens, "
                          f"{repeats} repeats; HTTP and tokenisation overheads are inside fixed_s"),
            "fit_error": fits,
            "quality": q_note,
            "deadlines": f"{deadline_factor} x the largest model's batch-of-one latency, rounded up to 1 ms",
            "ctx_max": ("--ctx-max" if ctx_max else "the engine's /v1/models max_model_len (vLLM), else the "
                        "served model's max_position_embeddings when it is a local directory, else 2048"),
            "kv_tokens": ("--kv-tokens" if kv_tokens else
                          "vLLM cache_config_info (num_gpu_blocks x block_size) when published, else 32 x ctx_max"),
            "params": "counted from the served model's config when it is a local directory, else 1 (unknown)",
            "tool": "bes-profile --engine",
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "duration_s": round(time.time() - t_start, 1),
            "raw": raws,
        },
    }
    profile_from_dict(json.loads(json.dumps(doc)), name)
    return doc


def _pairs(text: str) -> dict:
    out = {}
    for item in text.split(","):
        t, pl = item.split("=")
        p, o = pl.split(":")
        out[t.strip()] = (int(p), int(o))
    return out


def add_arguments(ap) -> None:
    g = ap.add_argument_group("live engines (--engine)")
    g.add_argument("--engine", nargs="+", default=None, metavar="URL",
                   help="profile these OpenAI-compatible engines, one per model in pool order; URL#MODEL "
                        "addresses one model of a server that lists several (e.g. bes-serve itself, to "
                        "measure what its clients see)")
    g.add_argument("--names", default=None, help="comma list of model names (default: the engines' model ids)")
    g.add_argument("--engine-tasks", default=None, help="task=prompt:output,... (default short=32:16,long=256:32)")
    g.add_argument("--prompt-lens", default="8,64,256", help="prefill points (prompt tokens)")
    g.add_argument("--concurrency", default="1,4,16", help="decode points (concurrent requests)")
    g.add_argument("--decode-prompt-lens", default="16,256", help="decode points (prompt tokens)")
    g.add_argument("--decode-tokens", type=int, default=16)
    g.add_argument("--chars-per-token", type=float, default=1.0,
                   help="characters per token of the synthetic prompts (the engine reports the true count)")
    g.add_argument("--max-num-batched-tokens", type=int, default=512)
    g.add_argument("--ctx-max", type=int, default=None)
    g.add_argument("--kv-tokens", type=int, default=None)
    g.add_argument("--quality", default=None,
                   help="'opt' (the OPT zero-shot accuracies; models named opt-*, tasks among them) or a JSON "
                        "list of per-model per-task qualities; default: a placeholder marked as such")
    g.add_argument("--hardware", default="live engines")
    g.add_argument("--engine-api-key-env", default=None, help="environment variable holding the engines' API key")
    g.add_argument("--idle-s", type=float, default=0.05,
                   help="pause before each prefill probe, so it finds the engine idle as a request at light "
                        "load does (an idle engine can take longer to start: about 7 ms more on a CPU "
                        "transformers serve); 0: back to back")
    g.add_argument("--plain", action="store_true",
                   help="time whole (non-streamed) answers; default: streamed ones, as bes-serve forwards a "
                        "streamed request (profile the way the traffic to predict is served)")


def main_engine(a) -> int:
    import os
    import sys

    import httpx
    try:
        ints = (lambda s: [int(x) for x in s.split(",") if x.strip()])
        key = None
        if a.engine_api_key_env:
            if a.engine_api_key_env not in os.environ:
                raise ValueError(f"--engine-api-key-env {a.engine_api_key_env!r}: environment variable not set")
            key = os.environ[a.engine_api_key_env]
        doc = run_engine_profile(
            a.engine, names=a.names.split(",") if a.names else None,
            tasks=_pairs(a.engine_tasks) if a.engine_tasks else None, b_max=a.b_max,
            max_num_batched_tokens=a.max_num_batched_tokens, ctx_max=a.ctx_max, kv_tokens=a.kv_tokens,
            prompt_lens=ints(a.prompt_lens), concurrencies=ints(a.concurrency),
            decode_prompt_lens=ints(a.decode_prompt_lens), decode_tokens=a.decode_tokens, repeats=a.repeats,
            chars_per_token=a.chars_per_token, deadline_factor=a.deadline_factor,
            quality=(a.quality if a.quality == "opt" else json.loads(a.quality)) if a.quality else None,
            hardware=a.hardware,
            name=a.name or "engines", api_key=key, stream=not a.plain, idle_s=a.idle_s)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"bes-profile: error: {e}", file=sys.stderr)
        return 2
    except httpx.HTTPError as e:  # unreachable engine, timeout: name the engine
        try:
            where = str(e.request.url)
        except RuntimeError:  # an error raised before a request was made
            where = " ".join(a.engine)
        print(f"bes-profile: error: engine {where}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}")
    return 0
