"""Host-side builders: numpy in, `WorkloadParams` out (padded so workloads can be stacked).

Every builder takes a task mix (``mix``: a [T] vector, or a [K, T] schedule whose row k is
used during mix window k, cyclically, each ``mix_window_s`` seconds long; ``None`` with
``n_tasks`` = uniform) and the padding sizes ``pad_windows``, ``pad_trace``, ``pad_mix``
(default: the workload's own sizes). Bad arguments raise ValueError naming the argument
and its value.
"""
from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bes_jax.workloads.generators import workload_init, workload_init_request, workload_next, workload_next_request
from bes_jax.workloads.params import SCHEDULE, TRACE, WorkloadParams
from bes_jax.workloads.traces import load_maf_minute_counts, load_trace_requests

_PAD_KEYS = ("pad_windows", "pad_trace", "pad_mix")


def _f():
    return jnp.result_type(float)


def _show(x) -> str:
    s = repr(np.asarray(x).tolist()) if not isinstance(x, (str, Path)) else repr(str(x))
    return s if len(s) <= 120 else s[:117] + "..."


def _positive(name, v):
    try:
        ok = math.isfinite(float(v)) and float(v) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} = {_show(v)}: must be a finite number > 0")
    return float(v)


def _mix_matrix(mix, n_tasks):
    if n_tasks is not None and (int(n_tasks) != n_tasks or n_tasks < 1):
        raise ValueError(f"n_tasks = {n_tasks!r}: must be a positive integer")
    if mix is None:
        if n_tasks is None:
            raise ValueError("n_tasks = None and mix = None: give n_tasks (uniform mix) or a mix")
        return np.full((1, int(n_tasks)), 1.0 / int(n_tasks))
    m = np.asarray(mix, np.float64)
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2 or m.shape[0] == 0 or m.shape[1] == 0:
        raise ValueError(f"mix = {_show(mix)}: need a [T] vector or a [K, T] schedule")
    if n_tasks is not None and m.shape[1] != n_tasks:
        raise ValueError(f"mix = {_show(m)}: has {m.shape[1]} tasks, n_tasks = {n_tasks}")
    if not np.isfinite(m).all() or (m < 0).any():
        raise ValueError(f"mix = {_show(m)}: probabilities must be finite and >= 0")
    sums = m.sum(1)
    if not np.allclose(sums, 1.0, atol=1e-6):
        k = int(np.argmax(np.abs(sums - 1.0)))
        raise ValueError(f"mix = {_show(m)}: row {k} sums to {sums[k]:.6g}, each row must sum to 1")
    return m / sums[:, None]


def _pad(x, n, fill, name="pad"):
    x = np.asarray(x)
    if n is None:
        return x
    if int(n) != n or n < x.shape[0]:
        raise ValueError(f"{name} = {n!r}: smaller than the {x.shape[0]} entries of this workload")
    return np.concatenate([x, np.full((int(n) - x.shape[0],) + x.shape[1:], fill, dtype=x.dtype)])


def _tokens(name, x, shape, low) -> np.ndarray:
    """int32 token counts per arrival: -1 = not given, else an integer >= `low`."""
    if x is None:
        return np.full(shape, -1, np.int32)
    a = np.asarray(x)
    if a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, times has shape {shape}: need one count per arrival")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if not np.issubdtype(a.dtype, np.floating) or not np.isfinite(a).all() or (a != np.round(a)).any():
            i = int(np.argmax(~np.isfinite(a) | (a != np.round(a)))) if np.issubdtype(a.dtype, np.floating) else 0
            raise ValueError(f"{name}[{i}] = {a.ravel()[i].item()!r}: need integer token counts (-1 = not given)")
    a = a.astype(np.int64)
    bad = ((a < low) & (a != -1)) | (a > np.iinfo(np.int32).max)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name}[{i}] = {int(a[i])}: need a token count >= {low} (or -1: not given)")
    return a.astype(np.int32)


def _make(kind, rates, window_s, cv, mix, n_tasks, mix_window_s, start_offset, trace_times=None,
          trace_tasks=None, trace_period=1.0, trace_prompt=None, trace_output=None, pad_windows=None,
          pad_trace=None, pad_mix=None) -> WorkloadParams:
    f = _f()
    rates = np.atleast_1d(np.asarray(rates, np.float64))
    if rates.ndim != 1 or rates.size == 0 or not np.isfinite(rates).all() or (rates < 0).any() or rates.max() <= 0:
        raise ValueError(f"rates = {_show(rates)}: need a non-empty list of finite rates >= 0, at least one > 0")
    window_s = _positive("window_s", window_s)
    cv = _positive("cv", cv)
    m = _mix_matrix(mix, n_tasks)
    mix_window_s = _positive("mix_window_s", mix_window_s)
    if not math.isfinite(float(start_offset)):
        raise ValueError(f"start_offset = {start_offset!r}: must be finite")
    times = np.zeros(1) if trace_times is None else np.asarray(trace_times, np.float64)
    if trace_tasks is None:
        tasks = np.full(times.shape, -1, np.int64)
    else:
        tasks = np.asarray(trace_tasks)
        if tasks.shape != times.shape:
            raise ValueError(f"tasks has shape {tasks.shape}, times has shape {times.shape}: need one task per arrival")
        if not np.issubdtype(tasks.dtype, np.integer):
            raise ValueError(f"tasks = {_show(tasks)}: need integer task indices")
        bad = (tasks >= m.shape[1]) | (tasks < -1)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"tasks[{i}] = {int(tasks[i])}: not a task index (0..{m.shape[1] - 1}, or -1 to draw from the mix)")
    prompt = _tokens("prompt", trace_prompt, times.shape, 1)
    output = _tokens("output", trace_output, times.shape, 1)
    return WorkloadParams(
        kind=jnp.asarray(kind, jnp.int32),
        rates=jnp.asarray(_pad(rates, pad_windows, 0.0, "pad_windows"), f), n_windows=jnp.asarray(rates.size, jnp.int32),
        window_s=jnp.asarray(window_s, f), cv=jnp.asarray(cv, f),
        trace_times=jnp.asarray(_pad(times, pad_trace, 0.0, "pad_trace"), f),
        trace_len=jnp.asarray(times.size, jnp.int32), trace_period=jnp.asarray(trace_period, f),
        trace_tasks=jnp.asarray(_pad(tasks.astype(np.int32), pad_trace, -1, "pad_trace"), jnp.int32),
        mix=jnp.asarray(_pad(m, pad_mix, 0.0, "pad_mix"), f), n_mix=jnp.asarray(m.shape[0], jnp.int32),
        mix_window_s=jnp.asarray(mix_window_s, f), start_offset=jnp.asarray(start_offset, f),
        trace_prompt=jnp.asarray(_pad(prompt, pad_trace, -1, "pad_trace"), jnp.int32),
        trace_output=jnp.asarray(_pad(output, pad_trace, -1, "pad_trace"), jnp.int32))


def _check_pads(pad):
    extra = set(pad) - set(_PAD_KEYS)
    if extra:
        raise TypeError(f"unexpected keyword argument(s) {sorted(extra)}; padding takes {list(_PAD_KEYS)}")
    return pad


def poisson(rate: float, n_tasks: int | None = None, mix=None, mix_window_s: float = 60.0,
            start_offset: float = 0.0, **pad) -> WorkloadParams:
    """Stable load: exponential gaps at `rate` requests/s."""
    rate = _positive("rate", rate)
    return _make(SCHEDULE, [rate], 1.0, 1.0, mix, n_tasks, mix_window_s, start_offset, **_check_pads(pad))


def gamma(rate: float, cv: float, n_tasks: int | None = None, mix=None, mix_window_s: float = 60.0,
          start_offset: float = 0.0, **pad) -> WorkloadParams:
    """Gamma-distributed gaps with mean 1/rate and coefficient of variation `cv` (>1: bursty)."""
    rate, cv = _positive("rate", rate), _positive("cv", cv)
    return _make(SCHEDULE, [rate], 1.0, cv, mix, n_tasks, mix_window_s, start_offset, **_check_pads(pad))


def schedule(rates: Sequence[float], window_s: float, cv: float = 1.0, n_tasks: int | None = None, mix=None,
             mix_window_s: float = 60.0, start_offset: float = 0.0, **pad) -> WorkloadParams:
    """Piecewise-constant rate, one value per `window_s` seconds, repeating cyclically."""
    return _make(SCHEDULE, rates, window_s, cv, mix, n_tasks, mix_window_s, start_offset, **_check_pads(pad))


def maf_rates(counts, target_mean_rate: float | None = None, time_scale: float = 1.0) -> tuple[np.ndarray, float]:
    """``(rates, window_s)`` of per-minute counts: one minute lasts ``60 / time_scale`` s."""
    time_scale = _positive("time_scale", time_scale)
    counts = np.asarray(counts, np.float64)
    window_s = 60.0 / time_scale
    rates = counts / window_s
    if target_mean_rate is not None:
        target_mean_rate = _positive("target_mean_rate", target_mean_rate)
        if not rates.size or rates.mean() <= 0:
            raise ValueError(f"counts = {_show(counts)}: the selected minutes have no invocations")
        rates = rates * (target_mean_rate / rates.mean())
    return rates, window_s


def maf(path=None, target_mean_rate: float | None = None, time_scale: float = 1.0, minutes=None, functions=None,
        cv: float = 1.0, n_tasks: int | None = None, mix=None, mix_window_s: float = 60.0,
        start_offset: float = 0.0, top_k: int | None = None, sample_k: int | None = None, seed: int = 0,
        counts=None, **pad) -> WorkloadParams:
    """Azure Functions per-minute counts (from `path`, or given as `counts`) as a rate schedule.

    One trace minute lasts ``60 / time_scale`` seconds; rates are rescaled so their mean is
    `target_mean_rate` (default: the trace's own invocations per second of scaled time).
    `minutes`, `functions`, `top_k`, `sample_k`, `seed` select rows and columns as in
    :func:`load_maf_minute_counts`. The schedule repeats after its last minute.
    """
    if (path is None) == (counts is None):
        raise ValueError("maf(): give exactly one of path= or counts=")
    if counts is None:
        counts = load_maf_minute_counts(path, functions=functions, minutes=minutes, top_k=top_k,
                                        sample_k=sample_k, seed=seed)
    elif minutes is not None:
        counts = np.asarray(counts, np.float64)[int(minutes[0]):int(minutes[1])]
    rates, window_s = maf_rates(counts, target_mean_rate, time_scale)
    return _make(SCHEDULE, rates, window_s, cv, mix, n_tasks, mix_window_s, start_offset, **_check_pads(pad))


def trace(path=None, times=None, tasks=None, target_mean_rate: float | None = None, column: str | None = None,
          n_tasks: int | None = None, mix=None, mix_window_s: float = 60.0, start_offset: float = 0.0,
          prompt=None, output=None, format: str = "auto", prompt_column: str | None = None,
          output_column: str | None = None, **pad) -> WorkloadParams:
    """Replay real requests (from a file `path`, or arrays `times`, `prompt`, `output`), optionally rescaled.

    Times are shifted to start at 0. The mean rate of a trace of n arrivals spanning S seconds
    is (n - 1) / S; with `target_mean_rate` all times are multiplied by
    ``mean_rate / target_mean_rate``. The replay wraps around after ``period = S + S / (n - 1)``
    (the last arrival plus one mean gap), so the long-run rate equals the mean rate.
    `start_offset` (seconds of rescaled trace time) is where the environment starts.
    `tasks` fixes each request's task (-1: draw from the mix); otherwise tasks are drawn.
    `prompt`, `output`: each request's prompt / output tokens (integers >= 1, -1 = not given:
    the continuous simulator draws it from the profile); they stay with their request under
    rescaling, offsets and wrap-around. A file is read by
    :func:`~bes_jax.workloads.traces.load_trace_requests` with `format` (``auto``,
    ``timestamps``, ``azure_llm``, ``mooncake``, ``csv``), `column` (time column),
    `prompt_column` and `output_column`; its tokens are used.
    """
    if path is not None and not isinstance(path, (str, Path)):
        path, times = None, path  # trace(array)
    if (path is None) == (times is None):
        raise ValueError("trace(): give exactly one of path= or times=")
    if path is not None:
        if prompt is not None or output is not None:
            raise ValueError("trace(): prompt= / output= go with times=; a file's tokens come from the file")
        d = load_trace_requests(path, format, column, prompt_column, output_column)
        t, prompt, output = d["times_s"], d["prompt"], d["output"]
    else:
        for name, v, default in (("format", format, "auto"), ("column", column, None),
                                 ("prompt_column", prompt_column, None), ("output_column", output_column, None)):
            if v != default:
                raise ValueError(f"trace(): {name} = {v!r} only applies to a file (path=), not to times=")
        t = np.asarray(times, np.float64)
    if t.ndim != 1 or t.size == 0:
        raise ValueError(f"times: need a non-empty 1-D array, got shape {t.shape}")
    if not np.isfinite(t).all():
        i = int(np.argmax(~np.isfinite(t)))
        raise ValueError(f"times[{i}] = {t[i]}: arrival times must be finite")
    if (np.diff(t) < 0).any():
        i = int(np.nonzero(np.diff(t) < 0)[0][0]) + 1
        raise ValueError(f"times[{i}] = {t[i]} is before times[{i - 1}] = {t[i - 1]}: arrivals must be sorted")
    t = t - t[0]
    span = t[-1]
    mean_gap = span / (t.size - 1) if t.size > 1 and span > 0 else 1.0
    if target_mean_rate is not None:
        target_mean_rate = _positive("target_mean_rate", target_mean_rate)
        scale = (1.0 / mean_gap) / target_mean_rate
        t, mean_gap = t * scale, mean_gap * scale
    period = t[-1] + mean_gap
    return _make(TRACE, [1.0 / mean_gap], 1.0, 1.0, mix, n_tasks, mix_window_s, start_offset,
                 trace_times=t, trace_tasks=tasks, trace_period=period, trace_prompt=prompt, trace_output=output,
                 **_check_pads(pad))


def with_task_mix(wp: WorkloadParams, mix, mix_window_s: float | None = None, pad_mix: int | None = None) -> WorkloadParams:
    """The same arrivals with another task mix ([T] vector or [K, T] schedule)."""
    m = _mix_matrix(mix, None)
    mws = float(wp.mix_window_s) if mix_window_s is None else _positive("mix_window_s", mix_window_s)
    return wp.replace(mix=jnp.asarray(_pad(m, pad_mix, 0.0, "pad_mix"), _f()), n_mix=jnp.asarray(m.shape[0], jnp.int32),
                      mix_window_s=jnp.asarray(mws, _f()))


def stack_workloads(items: Sequence[WorkloadParams]) -> WorkloadParams:
    """Batch workloads into one pytree (leading axis) for `vmap`; pads them to common sizes."""
    items = list(items)
    if not items:
        raise ValueError("stack_workloads: empty list")
    n_tasks = {int(w.mix.shape[-1]) for w in items}
    if len(n_tasks) > 1:
        raise ValueError(f"stack_workloads: the workloads have different numbers of tasks {sorted(n_tasks)}")
    if any(np.ndim(w.kind) != 0 for w in items):
        raise ValueError("stack_workloads: items must be single workloads (scalar kind), not stacks")
    sizes = {k: max(getattr(w, k).shape[0] for w in items) for k in ("rates", "trace_times", "mix")}

    def pad_to(w):
        p = lambda x, n, fill: jnp.asarray(_pad(np.asarray(x), n, fill), x.dtype)
        return w.replace(rates=p(w.rates, sizes["rates"], 0.0), trace_times=p(w.trace_times, sizes["trace_times"], 0.0),
                         trace_tasks=p(w.trace_tasks, sizes["trace_times"], -1), mix=p(w.mix, sizes["mix"], 0.0),
                         trace_prompt=p(w.trace_prompt, sizes["trace_times"], -1),
                         trace_output=p(w.trace_output, sizes["trace_times"], -1))

    return jax.tree.map(lambda *xs: jnp.stack(xs), *[pad_to(w) for w in items])


def _as_seed(key) -> int:
    if isinstance(key, (int, np.integer)):
        return int(key)
    return int(jax.random.randint(key, (), 0, np.iinfo(np.int32).max))


def _as_key(key):
    return jax.random.PRNGKey(int(key)) if isinstance(key, (int, np.integer)) else key


def sample_workload_family(key, n: int, n_tasks: int, *, rate_range=(1.0, 10.0), cv_range=(1.0, 3.0),
                           kinds: Sequence[str] = ("poisson", "gamma", "maf"), kind_probs=None,
                           maf_path=None, maf_counts=None, maf_minutes=None, maf_slice_minutes: int = 30,
                           time_scale_range=(1.0, 1.0), maf_cv_range=(1.0, 1.0), trace_times=None,
                           trace_prompt=None, trace_output=None, dirichlet_alpha: float | None = None, mix_prob: float = 1.0, mix_rows: int = 1,
                           mix_window_s: float = 60.0, return_info: bool = False):
    """`n` random workloads stacked for `vmap` (domain randomisation), built host-side.

    Each workload draws its kind from `kinds` (probabilities `kind_probs`, default equal) and a
    mean rate log-uniform in `rate_range` (requests/s):

    - ``poisson``: that rate;
    - ``gamma``: cv uniform in `cv_range`;
    - ``maf``: a random slice of `maf_slice_minutes` minutes of the per-minute counts (from
      `maf_path` or `maf_counts`, restricted to `maf_minutes` = (start, stop)), time-scaled by
      a factor uniform in `time_scale_range`, rescaled to the mean rate, gaps with cv uniform
      in `maf_cv_range`, starting at a random point of its first minute;
    - ``trace``: `trace_times` replayed at the mean rate from a random start offset, with each
      request's `trace_prompt` / `trace_output` tokens when given (-1 = not given).

    With probability `mix_prob` the task mix is Dirichlet(`dirichlet_alpha`) (`mix_rows` rows
    switching every `mix_window_s` seconds), else uniform; ``dirichlet_alpha=None``: uniform.
    `key`: a JAX key or an int seed; everything else is numpy. Returns the stacked
    WorkloadParams, and with `return_info` also a list of dicts describing each workload.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n = {n!r}: must be a positive integer")
    known = ("poisson", "gamma", "maf", "trace")
    kinds = list(kinds)
    if not kinds or any(k not in known for k in kinds):
        raise ValueError(f"kinds = {kinds!r}: choose from {list(known)}")
    p = np.full(len(kinds), 1.0 / len(kinds)) if kind_probs is None else np.asarray(kind_probs, np.float64)
    if p.shape != (len(kinds),) or (p < 0).any() or not np.isclose(p.sum(), 1.0):
        raise ValueError(f"kind_probs = {_show(kind_probs)}: need {len(kinds)} probabilities summing to 1")
    for name, r, lo_ok in (("rate_range", rate_range, 0.0), ("cv_range", cv_range, 0.0),
                           ("time_scale_range", time_scale_range, 0.0), ("maf_cv_range", maf_cv_range, 0.0)):
        r = np.asarray(r, np.float64)
        if r.shape != (2,) or not np.isfinite(r).all() or r[0] <= lo_ok or r[1] < r[0]:
            raise ValueError(f"{name} = {_show(r)}: need (low, high) with 0 < low <= high")
    counts = None
    if "maf" in kinds:
        if (maf_path is None) == (maf_counts is None):
            raise ValueError("sample_workload_family: kind 'maf' needs exactly one of maf_path= or maf_counts=")
        counts = load_maf_minute_counts(maf_path) if maf_counts is None else np.asarray(maf_counts, np.float64)
        lo, hi = (0, counts.size) if maf_minutes is None else (int(maf_minutes[0]), int(maf_minutes[1]))
        if not (0 <= lo < hi <= counts.size) or not (1 <= maf_slice_minutes <= hi - lo):
            raise ValueError(f"maf_minutes = {[lo, hi]}, maf_slice_minutes = {maf_slice_minutes}: need "
                             f"0 <= start < stop <= {counts.size} and a slice of 1..stop-start minutes")
    tr = None
    if "trace" in kinds:
        if trace_times is None:
            raise ValueError("sample_workload_family: kind 'trace' needs trace_times=")
        tr = trace(times=trace_times, n_tasks=n_tasks, prompt=trace_prompt, output=trace_output)  # validates once
        trace_prompt, trace_output = np.asarray(tr.trace_prompt), np.asarray(tr.trace_output)
    if dirichlet_alpha is not None and not (dirichlet_alpha > 0):
        raise ValueError(f"dirichlet_alpha = {dirichlet_alpha!r}: must be > 0 (or None for uniform mixes)")
    if int(mix_rows) != mix_rows or mix_rows < 1:
        raise ValueError(f"mix_rows = {mix_rows!r}: must be a positive integer")

    rng = np.random.default_rng(_as_seed(key))
    pads = dict(pad_windows=int(maf_slice_minutes) if counts is not None else 1,
                pad_trace=int(tr.trace_len) if tr is not None else 1, pad_mix=int(mix_rows))
    items, info = [], []
    for _ in range(int(n)):
        kind = kinds[int(rng.choice(len(kinds), p=p))]
        rate = float(np.exp(rng.uniform(np.log(rate_range[0]), np.log(rate_range[1]))))
        mix = None
        if dirichlet_alpha is not None and rng.random() < mix_prob:
            mix = rng.dirichlet(np.full(n_tasks, float(dirichlet_alpha)), size=int(mix_rows))
        common = dict(n_tasks=n_tasks, mix=mix, mix_window_s=mix_window_s, **pads)
        desc = {"kind": kind, "rate": rate, "mix": None if mix is None else mix.tolist()}
        if kind == "poisson":
            wp = poisson(rate, **common)
        elif kind == "gamma":
            cv = float(rng.uniform(*cv_range))
            wp, desc["cv"] = gamma(rate, cv, **common), cv
        elif kind == "maf":
            start = int(rng.integers(lo, hi - int(maf_slice_minutes) + 1))
            ts = float(rng.uniform(*time_scale_range))
            cv = float(rng.uniform(*maf_cv_range))
            seg = counts[start:start + int(maf_slice_minutes)]
            if seg.sum() <= 0:
                raise ValueError(f"maf minutes {start}..{start + int(maf_slice_minutes)} have no invocations")
            offset = float(rng.uniform(0.0, 60.0 / ts))
            wp = maf(counts=seg, target_mean_rate=rate, time_scale=ts, cv=cv, start_offset=offset, **common)
            desc.update(start_minute=start, time_scale=ts, cv=cv, start_offset=offset)
        else:
            period = float(tr.trace_period) * float(tr.rates[0]) / rate  # rescaled period
            offset = float(rng.uniform(0.0, period))
            wp = trace(times=trace_times, target_mean_rate=rate, start_offset=offset, prompt=trace_prompt,
                       output=trace_output, **common)
            desc["start_offset"] = offset
        items.append(wp)
        info.append(desc)
    stacked = stack_workloads(items)
    return (stacked, info) if return_info else stacked


@partial(jax.jit, static_argnums=(2, 3))
def _scan_arrivals(key, wp: WorkloadParams, n: int, tokens: bool = False):
    k0, k1 = jax.random.split(key)
    init, step = (workload_init_request, workload_next_request) if tokens else (workload_init, workload_next)
    ws, *first = init(k0, wp)

    def body(ws, k):
        ws, *out = step(k, ws, wp)
        return ws, tuple(out)

    _, rest = jax.lax.scan(body, ws, jax.random.split(k1, n - 1))
    return tuple(jnp.concatenate([a[None], b]) for a, b in zip(first, rest))


@jax.jit
def _fill_tokens(key, tasks, prompt, output, prompt_la, output_la):
    from bes_jax.lengths import draw_length

    keys = jax.random.split(key, tasks.shape[0])
    draw = lambda salt, la: jax.vmap(lambda k, t: draw_length(jax.random.fold_in(k, salt), t, la))(keys, tasks)
    return (jnp.where(prompt < 0, draw(1, prompt_la), prompt).astype(jnp.int32),
            jnp.where(output < 0, draw(2, output_la), output).astype(jnp.int32))


def sample_arrivals(key, wp: WorkloadParams, n: int, tokens: bool = False, profile=None) -> tuple[np.ndarray, ...]:
    """The first `n` arrivals ``(times, tasks)`` of one workload as numpy arrays; with
    ``tokens=True`` ``(times, tasks, prompt, output)``, the tokens int64 with -1 where the
    workload gives none (schedules; traces without tokens).

    With a `profile` (and ``tokens=True``) those -1 are drawn on the spot from each request's
    task length distributions (`bes_jax.lengths.draw_length`, keys derived from `key`), so the
    arrays are complete and feed the JAX simulator and the reference twin the very same
    requests. Without one, each simulator draws the missing tokens itself.

    Runs `workload_init` then `workload_next` (their ``_request`` variants with `tokens`, which
    give the same times and tasks) under `jax.lax.scan`: the same draws the JAX simulator makes
    for this key; `key` is a JAX key or an int seed. Times are float64 numpy (computed in
    JAX's default float), tasks int64.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n = {n!r}: must be a positive integer")
    if np.ndim(wp.kind) != 0:
        raise ValueError("sample_arrivals: wp must be a single workload, not a stack")
    if profile is not None and not tokens:
        raise ValueError("sample_arrivals: profile= fills in tokens, so it needs tokens=True")
    key = _as_key(key)
    out = _scan_arrivals(key, wp, int(n), bool(tokens))
    if profile is not None:
        from bes_jax.lengths import length_arrays

        if len(profile.tasks) != wp.n_tasks:
            raise ValueError(f"sample_arrivals: profile {getattr(profile, 'name', '')!r} has {len(profile.tasks)} "
                             f"tasks, the workload {wp.n_tasks}")
        out = out[:2] + _fill_tokens(jax.random.fold_in(key, 0x746F6B), out[1], out[2], out[3],
                                     length_arrays([t.prompt_dist for t in profile.tasks]),
                                     length_arrays([t.output_dist for t in profile.tasks]))
    return (np.asarray(out[0], np.float64),) + tuple(np.asarray(x, np.int64) for x in out[1:])
