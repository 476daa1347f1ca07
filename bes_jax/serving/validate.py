"""``bes-validate``: replay open-loop arrivals against a live ``bes-serve`` and against the
simulator, and compare.

1. Arrivals (times, tasks) come from ``bes_jax.workloads`` when it is installed (Poisson or a
   trace), else from a seeded numpy Poisson process with a uniform (or given) task mix.
2. Every request is sent at its time (``httpx.AsyncClient``, open loop: nothing waits for
   earlier answers) with ``model: "auto"``; the server's router chooses. Recorded per request:
   HTTP status, chosen model, the server's arrival time, latency (arrival to completion in the
   pool) and deadline outcome, plus the client's end-to-end time.
3. The same arrivals (the server's arrival clock) and the same per-request model choices run
   through the plain-Python reference simulator (``bes_jax.reference``) with the profile the
   server used and a ``SimConfig`` matching the server's pool (placement, devices, replicas,
   queue capacity, deadlines).
4. A report (``report.md``, ``report.json``, ``latency.png``) compares availability, latency
   percentiles, per-model share and performance, and gives a verdict: ``passed`` when the live
   availability is within ``tol_availability_points`` (2) points of the simulator's and the
   live p50 latency within ``tol_latency_p50_rel`` (5%) of it. ``bes-validate`` exits 1 when it
   failed. (The per-model share is equal by construction: the simulator replays the server's
   choices.)

Example: ``bes-serve pool=tiny router=greedy server.port=8000`` in one shell, then
``bes-validate url=http://127.0.0.1:8000 rate=20 n_requests=600 out_dir=validate_out``.
"""
import asyncio
import json
import logging
import secrets
import time
from pathlib import Path

import numpy as np

from bes_jax import CONF_DIR

log = logging.getLogger("bes_jax.serving.validate")

#: outcome codes, the same as bes_jax.env.state (not imported: that pulls in JAX)
EMPTY, QUEUED, SERVED, DROPPED, REJECTED = 0, 1, 2, 3, 4


# ----------------------------------------------------------------------------- arrivals

def make_arrivals(n: int, rate: float, n_tasks: int, *, seed: int = 0, mix=None, trace_path=None,
                  source: str = "workloads"):
    """``(times, tasks, source)``: arrival times from 0 (s) and task indices, drawn by the same
    workload code the simulator uses (so a validation run is a simulator workload), or with
    ``source="numpy"`` from a seeded numpy Poisson process (no JAX import: seconds faster)."""
    if source == "numpy" and not trace_path:
        rng = np.random.default_rng(seed)
        p = None if mix is None else np.asarray(mix, np.float64) / np.sum(mix)
        times = np.cumsum(rng.exponential(1.0 / rate, n))
        tasks = rng.choice(n_tasks, size=n, p=p)
        return times - times[0], tasks.astype(np.int64), f"numpy poisson({rate}), seed {seed}"
    if source not in ("workloads", "numpy"):
        raise ValueError(f"arrival_source = {source!r}: must be 'workloads' or 'numpy'")
    import jax

    from bes_jax import workloads as W

    mix = None if mix is None else np.asarray(mix, np.float64) / np.sum(mix)
    if trace_path:
        from bes_jax.data import resolve_path
        wp = W.trace(resolve_path(trace_path, "trace_path"), target_mean_rate=rate, n_tasks=n_tasks, mix=mix)
        source = f"bes_jax.workloads trace {trace_path} at {rate} req/s"
    else:
        wp = W.poisson(rate, n_tasks=n_tasks, mix=mix)
        source = f"bes_jax.workloads poisson({rate})"
    times, tasks = W.sample_arrivals(jax.random.PRNGKey(seed), wp, n)
    times = np.asarray(times, np.float64)
    return times - times[0], np.asarray(tasks, np.int64), f"{source}, seed {seed}"


def make_requests(n: int, rate: float, profile, *, seed: int = 0, mix=None, trace_path=None,
                  source: str = "workloads"):
    """``(times, tasks, prompt_tokens, output_tokens, source)`` for a continuous-batching run:
    with ``bes_jax.workloads`` each request's tokens come from the trace when it has them, else
    are drawn from its task's length distributions in the profile (``sample_arrivals(tokens=True,
    profile=...)``, the draws the simulators make); the numpy source uses the tasks' mean lengths."""
    if source == "numpy" and not trace_path:
        times, tasks, src = make_arrivals(n, rate, profile.n_tasks, seed=seed, mix=mix, source="numpy")
        p = np.maximum(1, np.round(profile.mean_prompt_len[tasks])).astype(np.int64)
        o = np.maximum(1, np.round(profile.mean_output_len[tasks])).astype(np.int64)
        return times, tasks, p, o, src + "; the tasks' mean token lengths"
    import jax

    from bes_jax import workloads as W
    mix_ = None if mix is None else np.asarray(mix, np.float64) / np.sum(mix)
    if trace_path:
        from bes_jax.data import resolve_path
        wp = W.trace(resolve_path(trace_path, "trace_path"), target_mean_rate=rate, n_tasks=profile.n_tasks, mix=mix_)
        src = f"bes_jax.workloads trace {trace_path} at {rate} req/s"
    else:
        wp = W.poisson(rate, n_tasks=profile.n_tasks, mix=mix_)
        src = f"bes_jax.workloads poisson({rate})"
    times, tasks, p, o = W.sample_arrivals(jax.random.PRNGKey(seed), wp, n, tokens=True, profile=profile)
    times = np.asarray(times, np.float64)
    return (times - times[0], np.asarray(tasks, np.int64), np.asarray(p, np.int64), np.asarray(o, np.int64),
            f"{src}, seed {seed}; tokens from the trace where it has them, else drawn from the profile")


def prompt_for(task_name: str, prompt_len: int, i) -> str:
    """An ASCII prompt of exactly ``prompt_len`` bytes (= tokens for the byte tokenizer), opening
    with ``i``: the load generators pass the request's index and a run's random salt, so no
    prompt repeats an earlier one's first tokens and no engine's prefix cache serves a prefill
    the simulator charges in full."""
    base = f"[{task_name} #{i}] Answer the question about the passage below. "
    text = (base * (prompt_len // len(base) + 1))[:prompt_len]
    return text


# ----------------------------------------------------------------------------- load generator

async def _drive(url: str, times, tasks, task_names, prompt_lens, out_lens, timeout: float):
    import httpx
    n = len(times)
    rec = [None] * n
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    salt = secrets.token_hex(3)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        loop = asyncio.get_running_loop()

        async def one(i):
            t = int(tasks[i])
            body = {"model": "auto", "task": task_names[t], "max_tokens": int(out_lens[t]),
                    "prompt": prompt_for(task_names[t], int(prompt_lens[t]), f"{i}-{salt}")}
            sent = loop.time()
            try:
                r = await client.post("/v1/completions", json=body)
                status = r.status_code
                try:
                    d = r.json()
                except ValueError:
                    d = {}
            except Exception as e:  # a transport failure counts as a failed request
                status, d = -1, {"error": {"message": str(e)}}
            rec[i] = {"i": i, "task": t, "status": status, "e2e_s": loop.time() - sent,
                      "send_s": sent - t0, "bes": d.get("bes") or {}, "error": (d.get("error") or {}).get("code")}

        t0 = loop.time()
        pending = []
        for i in range(n):
            delay = t0 + float(times[i]) - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(asyncio.create_task(one(i)))
        await asyncio.gather(*pending)
    return rec


def run_load(url: str, times, tasks, task_names, prompt_lens, out_lens, timeout: float = 60.0):
    return asyncio.run(_drive(url, times, tasks, task_names, prompt_lens, out_lens, timeout))


# ----------------------------------------------------------------------------- simulator replay

def simulate(profile, sim_cfg, times, tasks, actions):
    """Per-request ``model, status, start, finish, latency`` (status in this module's codes)."""
    from bes_jax.reference import simulator as ref
    res = ref.ReferenceSimulator(profile, sim_cfg).run(np.asarray(times), np.asarray(tasks), np.asarray(actions))
    out = {k: np.asarray(getattr(res, k)) for k in ("model", "status", "start", "finish", "latency")}
    st = out["status"]
    out["status"] = np.select([st == ref.SERVED, st == ref.REJECTED, st == ref.DROPPED], [SERVED, REJECTED, DROPPED],
                              QUEUED)
    return out, "bes_jax.reference.simulator.ReferenceSimulator"


# ----------------------------------------------------------------------------- metrics

def summarise(profile, deadlines, tasks, models, served, latency, miss_value=0.0) -> dict:
    n = len(tasks)
    tasks = np.asarray(tasks)
    models = np.asarray(models)
    d = np.asarray(deadlines)[tasks]
    lat = np.asarray(latency, np.float64)
    on_time = served & (lat <= d)
    q = profile.quality[np.clip(models, 0, profile.n_models - 1), tasks]
    reward = np.where(on_time, q, -miss_value)
    peak = profile.quality[:, tasks].max(axis=0)
    sl = lat[served]
    pct = (lambda p: float(np.percentile(sl, p)) if sl.size else float("nan"))
    share = {m: float(np.mean(models == i)) for i, m in enumerate(profile.model_names)}
    return {"n_requests": int(n), "n_served": int(served.sum()), "n_not_served": int(n - served.sum()),
            "availability": float(on_time.mean()), "latency_p50": pct(50), "latency_p90": pct(90),
            "latency_p99": pct(99), "latency_mean": float(sl.mean()) if sl.size else float("nan"),
            "performance": float(reward.mean()), "pct_of_peak": float(reward.mean() / peak.mean()),
            "per_model_share": share}


#: stated tolerances of the verdict (override with ``+tol_availability_points=`` and
#: ``+tol_latency_p50_rel=``): availability within 2 points, p50 latency within 5% of the simulator
DEFAULT_TOLERANCES = {"availability_points": 2.0, "latency_p50_rel": 0.05}


def tolerances_from(cfg) -> dict:
    tol = dict(DEFAULT_TOLERANCES)
    for key in tol:
        v = cfg.get(f"tol_{key}", None)
        if v is not None:
            tol[key] = float(v)
    return tol


def compare(live: dict, sim: dict, tolerances: dict | None = None) -> dict:
    """Gaps live - simulator and the verdict: ``passed`` when availability and p50 latency are
    both within ``tolerances`` (availability in points, p50 as a fraction of the simulator's)."""
    tol = {**DEFAULT_TOLERANCES, **(tolerances or {})}

    def rel(a, b):
        return float((a - b) / b) if b else float("nan")
    gap = 100 * (live["availability"] - sim["availability"])
    p50 = rel(live["latency_p50"], sim["latency_p50"])
    avail_ok = bool(abs(gap) <= tol["availability_points"])  # NaN compares False: not within
    p50_ok = bool(abs(p50) <= tol["latency_p50_rel"])
    return {"availability_gap_points": gap, "latency_p50_rel": p50,
            "latency_p99_rel": rel(live["latency_p99"], sim["latency_p99"]),
            "performance_gap": live["performance"] - sim["performance"],
            "tolerances": tol, "availability_within_tolerance": avail_ok,
            "p50_within_tolerance": p50_ok, "passed": avail_ok and p50_ok}


def plot(path, live_lat, sim_lat, models, served_live, served_sim, names):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for lat, ok, lab, ls in ((live_lat, served_live, "live server", "-"), (sim_lat, served_sim, "simulator", "--")):
        x = np.sort(lat[ok] * 1000)
        axes[0].plot(x, np.arange(1, x.size + 1) / max(1, x.size), ls, label=lab)
    axes[0].set_xlabel("latency (ms)")
    axes[0].set_ylabel("CDF")
    axes[0].set_title("latency, all served requests")
    axes[0].legend()
    for i, n in enumerate(names):
        sel_l, sel_s = served_live & (models == i), served_sim & (models == i)
        if sel_l.any():
            axes[1].hist(live_lat[sel_l] * 1000, bins=40, alpha=0.45, label=f"{n} live")
        if sel_s.any():
            axes[1].hist(sim_lat[sel_s] * 1000, bins=40, histtype="step", linewidth=1.5, label=f"{n} sim")
    axes[1].set_xlabel("latency (ms)")
    axes[1].set_title("per model")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(rep: dict) -> str:
    L, S, C = rep["live"], rep["sim"], rep["comparison"]
    rows = [("availability", "{:.2%}"), ("latency_p50", "{:.4f} s"), ("latency_p90", "{:.4f} s"),
            ("latency_p99", "{:.4f} s"), ("latency_mean", "{:.4f} s"), ("performance", "{:.4f}"),
            ("pct_of_peak", "{:.2%}"), ("n_served", "{}"), ("n_not_served", "{}")]
    out = [f"# bes-validate report", "",
           f"- server: {rep['url']} (router `{rep['router']}`, profile `{rep['profile']}`, pool {rep['pool']})",
           f"- arrivals: {rep['arrivals']}, {rep['n_requests']} requests over {rep['duration_s']:.1f} s "
           f"(offered {rep['offered_rate']:.1f} req/s)",
           f"- simulator: {rep['simulator']} with {rep['sim_config']}",
           f"- client end-to-end latency p50/p99: {rep['client_e2e_p50']:.4f} / {rep['client_e2e_p99']:.4f} s; "
           f"HTTP statuses {rep['http_status']}", "",
           "| metric | live | simulator |", "|---|---:|---:|"]
    for k, f in rows:
        out.append(f"| {k} | {f.format(L[k])} | {f.format(S[k])} |")
    for m in L["per_model_share"]:
        out.append(f"| share {m} | {L['per_model_share'][m]:.2%} | {S['per_model_share'][m]:.2%} |")
    tol = C["tolerances"]
    out += ["", f"- **verdict: {'PASSED' if C['passed'] else 'FAILED'}** (availability within "
                f"{tol['availability_points']:g} points and p50 latency within {100 * tol['latency_p50_rel']:g}%)",
            f"- availability gap: {C['availability_gap_points']:+.2f} points "
            f"({'within' if C['availability_within_tolerance'] else 'NOT within'} {tol['availability_points']:g} points)",
            f"- p50 latency: {100 * C['latency_p50_rel']:+.1f}% "
            f"({'within' if C['p50_within_tolerance'] else 'NOT within'} {100 * tol['latency_p50_rel']:g}%); "
            f"p99 {100 * C['latency_p99_rel']:+.1f}%",
            f"- batch time on the live pool vs the profile (median ratio per model): {rep['service_ratio']}",
            f"- of which model compute vs the profile (median ratio): {rep['compute_ratio']}; "
            f"hand-off outside the model (median ms): {rep['handoff_ms']}",
            "", "![latency](latency.png)", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- main

def analyse(profile, health: dict, rec: list, tolerances: dict | None = None) -> tuple[dict, dict]:
    """Replay recorded live requests in the simulator with ``profile`` and compare.

    ``health`` is the server's ``/healthz`` (pool layout, deadlines, its simulator view) and
    ``rec`` the per-request records of :func:`run_load` (or ``requests.json``). Returns the
    report's fields that depend on the profile (``live``, ``sim``, ``comparison`` with the
    verdict, the batch-time ratios, ...) and the per-request arrays the plot needs. Apart from
    :func:`validate` so that one live run can be checked against more than one profile.
    """
    from bes_jax.sim_config import SimConfig, sim_config_from_mapping
    tasks = np.array([r["task"] for r in rec], np.int64)
    n = len(rec)
    midx = {m: i for i, m in enumerate(profile.model_names)}
    model = np.array([midx.get(r["bes"].get("model"), -1) for r in rec])
    arr = np.array([r["bes"].get("arrival_s") if r["bes"].get("arrival_s") is not None else np.nan for r in rec], float)
    lat = np.array([r["bes"].get("latency_s", np.nan) if r["status"] == 200 else np.nan for r in rec], float)
    served_live = np.array([r["status"] == 200 for r in rec])
    status = {}
    for r in rec:
        status[str(r["status"])] = status.get(str(r["status"]), 0) + 1
    known = (model >= 0) & np.isfinite(arr)
    if not known.all():
        log.warning("%d requests have no routing facts (transport errors?); they count as misses live and are "
                    "left out of the simulator replay", int((~known).sum()))
    # the simulator replays the server's own arrival clock, in arrival order, with the same choices
    order = np.argsort(np.where(known, arr, np.inf), kind="stable")
    order = order[known[order]]
    t_sim = arr[order] - arr[order][0]
    p = health["pool"]
    if health.get("sim_config"):
        # the server's own simulator view: its pool, and a policy's settings as bes-serve adopted them
        sim_cfg = sim_config_from_mapping({**health["sim_config"], "episode_len": max(1, n),
                                           "outcome_slots": max(2048, n + 1)})
    else:  # a server that does not report it
        sim_cfg = SimConfig(placement=p["placement"], n_gpus=int(p["n_gpus"]), replicas=tuple(p["replicas"]),
                            queue_capacity=int(p["queue_capacity"]), deadline_scale=float(health["deadline_scale"]),
                            episode_len=max(1, n), outcome_slots=max(2048, n + 1))
    res, sim_name = simulate(profile, sim_cfg, t_sim, tasks[order], model[order])
    sim_lat = np.full(n, np.nan)
    sim_served = np.zeros(n, bool)
    sim_lat[order] = np.asarray(res["latency"], float)
    sim_served[order] = np.asarray(res["status"]) == SERVED
    deadlines = np.asarray(health["deadlines_s"], float)
    live = summarise(profile, deadlines, tasks, model, served_live, np.nan_to_num(lat, nan=np.inf))
    sim = summarise(profile, deadlines, tasks, model, sim_served, np.nan_to_num(sim_lat, nan=np.inf))
    # how well the profile predicts the live batch times (service time of served requests)
    ratio, compute_ratio, handoff = {}, {}, {}
    for i, m in enumerate(profile.model_names):
        sel = [r for r in rec if r["status"] == 200 and r["bes"].get("model") == m]
        if sel:
            prof_l = np.array([profile.latency[i, r["task"], r["bes"]["batch_size"] - 1] for r in sel])
            svc = np.array([r["bes"]["service_s"] for r in sel])
            comp = np.array([r["bes"].get("compute_s", np.nan) for r in sel], float)
            ratio[m] = round(float(np.median(svc / prof_l)), 3)
            compute_ratio[m] = round(float(np.median(comp / prof_l)), 3)
            handoff[m] = round(float(np.median(svc - comp)) * 1000, 3)
    e2e = np.array([r["e2e_s"] for r in rec if r["status"] == 200])
    part = {
        "simulator": sim_name, "sim_config": {
            "placement": sim_cfg.placement, "n_gpus": sim_cfg.n_gpus, "replicas": list(sim_cfg.replicas),
            "queue_capacity": sim_cfg.queue_capacity, "deadline_scale": sim_cfg.deadline_scale},
        "http_status": status, "client_e2e_p50": float(np.percentile(e2e, 50)) if e2e.size else float("nan"),
        "client_e2e_p99": float(np.percentile(e2e, 99)) if e2e.size else float("nan"),
        "live": live, "sim": sim, "comparison": compare(live, sim, tolerances), "service_ratio": ratio,
        "compute_ratio": compute_ratio, "handoff_ms": handoff,
    }
    arrays = {"model": model, "latency": lat, "served": served_live, "sim_latency": sim_lat, "sim_served": sim_served}
    return part, arrays


# ----------------------------------------------------------------------------- continuous mode (pool=engines)

#: tolerances of the verdict against real engines (issue 13): availability within 3 points,
#: p50 end-to-end within 10% and p50 TTFT within 20% of the continuous simulator's
CONTINUOUS_TOLERANCES = {"availability_points": 3.0, "e2e_p50_rel": 0.10, "ttft_p50_rel": 0.20}


async def _drive_stream(url: str, times, tasks, task_names, prompt_lens, out_lens, timeout: float,
                        chars_per_token: float = 1.0, api_key=None):
    """Open-loop streamed completions; per request the gateway's facts (arrival, TTFT, e2e, model,
    the engine's token counts) from the stream's last chunk, or its error."""
    import httpx
    n = len(times)
    rec = [None] * n
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    salt = secrets.token_hex(3)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits, headers=headers) as client:
        loop = asyncio.get_running_loop()

        async def one(i):
            t = int(tasks[i])
            p_len, o_len = int(prompt_lens[i]), int(out_lens[i])
            body = {"model": "auto", "task": task_names[t], "max_tokens": o_len, "stream": True,
                    "prompt": prompt_for(task_names[t], max(1, int(round(p_len * chars_per_token))), f"{i}-{salt}")}
            sent = loop.time()
            status, facts, err, first = -1, {}, None, None
            try:
                async with client.stream("POST", "/v1/completions", json=body) as r:
                    status = r.status_code
                    if status != 200:
                        d = json.loads(await r.aread() or b"{}")
                        facts, err = d.get("bes") or {}, (d.get("error") or {}).get("code")
                    else:
                        async for line in r.aiter_lines():
                            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                                continue
                            d = json.loads(line[5:])
                            if first is None and any(ch.get("text") or ("text" in ch and not ch.get("finish_reason"))
                                                     for ch in d.get("choices") or []):
                                first = loop.time() - sent
                            if "error" in d:
                                err = d["error"].get("code") or "stream_error"
                                facts = d.get("bes") or facts
                            elif "bes" in d:
                                facts = d["bes"]
            except Exception as e:  # a transport failure counts as a failed request
                err = f"transport: {type(e).__name__}"
            rec[i] = {"i": i, "task": t, "status": status if err is None or status != 200 else 599,
                      "e2e_s": loop.time() - sent, "client_ttft_s": first, "send_s": sent - t0, "bes": facts,
                      "error": err, "prompt_len": p_len, "max_tokens": o_len}

        t0 = loop.time()
        pending = []
        for i in range(n):
            delay = t0 + float(times[i]) - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(asyncio.create_task(one(i)))
        await asyncio.gather(*pending)
    return rec


def _pct(x, q):
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return float(np.percentile(x, q)) if x.size else float("nan")


def summarise_continuous(deadlines, tasks, served, e2e, ttft) -> dict:
    """Availability (served within the end-to-end deadline, over all requests) and percentiles."""
    d = np.asarray(deadlines, float)[np.asarray(tasks)]
    e2e = np.where(served, e2e, np.nan)
    ttft = np.where(served, ttft, np.nan)
    on_time = served & (np.nan_to_num(e2e, nan=np.inf) <= d)
    out = {"n_requests": int(len(tasks)), "n_served": int(served.sum()), "availability": float(on_time.mean())}
    for name, x in (("e2e", e2e), ("ttft", ttft)):
        for q in (50, 90, 99):
            out[f"{name}_p{q}"] = _pct(x, q)
    return out


def compare_continuous(live: dict, sim: dict, tolerances: dict | None = None) -> dict:
    tol = {**CONTINUOUS_TOLERANCES, **(tolerances or {})}

    def rel(a, b):
        return float((a - b) / b) if b else float("nan")
    gap = 100 * (live["availability"] - sim["availability"])
    e2e, ttft = rel(live["e2e_p50"], sim["e2e_p50"]), rel(live["ttft_p50"], sim["ttft_p50"])
    ok = {"availability": bool(abs(gap) <= tol["availability_points"]),
          "e2e_p50": bool(abs(e2e) <= tol["e2e_p50_rel"]), "ttft_p50": bool(abs(ttft) <= tol["ttft_p50_rel"])}
    return {"availability_gap_points": gap, "e2e_p50_rel": e2e, "ttft_p50_rel": ttft,
            "e2e_p99_rel": rel(live["e2e_p99"], sim["e2e_p99"]), "tolerances": tol, "within": ok,
            "passed": all(ok.values())}


def analyse_continuous(profile, health: dict, rec: list, tolerances: dict | None = None) -> tuple[dict, dict]:
    """Replay recorded requests through the continuous reference twin with ``profile``: the same
    arrivals (the gateway's clock), prompt and output token counts (as the engine reported them)
    and model choices; compare availability, p50 end-to-end and p50 TTFT."""
    from bes_jax.reference.continuous import SERVED as CSERVED, ContinuousReferenceSimulator
    from bes_jax.sim_config import sim_config_from_mapping
    n = len(rec)
    midx = {m: i for i, m in enumerate(profile.model_names)}
    tasks = np.array([r["task"] for r in rec], np.int64)
    model = np.array([midx.get((r.get("bes") or {}).get("model"), -1) for r in rec])
    arr = np.array([(r.get("bes") or {}).get("arrival_s", np.nan) if (r.get("bes") or {}).get("arrival_s")
                    is not None else np.nan for r in rec], float)
    served_live = np.array([r["status"] == 200 and not r.get("error") for r in rec])

    def tokens(r, key, fallback):
        v = (r.get("bes") or {}).get(key)
        return int(v) if isinstance(v, (int, float)) and v > 0 else int(fallback)
    prompts = np.array([tokens(r, "prompt_tokens", (r.get("bes") or {}).get("prompt_tokens_counted")
                               or r.get("prompt_len", 1)) for r in rec], np.int64)
    outputs = np.array([tokens(r, "completion_tokens", r.get("max_tokens", 1)) for r in rec], np.int64)
    e2e_live = np.array([(r.get("bes") or {}).get("e2e_s", np.nan) or np.nan for r in rec], float)
    ttft_live = np.array([(r.get("bes") or {}).get("ttft_s", np.nan) or np.nan for r in rec], float)
    known = (model >= 0) & np.isfinite(arr)
    order = np.argsort(np.where(known, arr, np.inf), kind="stable")
    order = order[known[order]]
    sim_cfg = sim_config_from_mapping({**health["sim_config"], "episode_len": max(1, n),
                                       "outcome_slots": max(2048, n + 1)})
    res = ContinuousReferenceSimulator(profile, sim_cfg).run(arr[order] - arr[order][0], tasks[order],
                                                               prompts[order], outputs[order], model[order])
    sim_served = np.zeros(n, bool)
    sim_e2e, sim_ttft = np.full(n, np.nan), np.full(n, np.nan)
    sim_served[order] = np.asarray(res.status) == CSERVED
    sim_e2e[order], sim_ttft[order] = np.asarray(res.latency, float), np.asarray(res.ttft, float)
    deadlines = np.asarray(health["deadlines_s"], float)
    live = summarise_continuous(deadlines, tasks, served_live, e2e_live, ttft_live)
    sim = summarise_continuous(deadlines, tasks, sim_served, sim_e2e, sim_ttft)
    share = {m: float(np.mean(model == i)) for i, m in enumerate(profile.model_names)}
    status = {}
    for r in rec:
        status[str(r["status"])] = status.get(str(r["status"]), 0) + 1
    both = served_live & sim_served
    per_model = {}
    for i, m in enumerate(profile.model_names):
        sel = both & (model == i)
        if sel.any():
            with np.errstate(invalid="ignore", divide="ignore"):
                per_model[m] = {"n": int(sel.sum()),
                                "e2e_ratio_p50": round(float(np.nanmedian(e2e_live[sel] / sim_e2e[sel])), 3),
                                "ttft_ratio_p50": round(float(np.nanmedian(ttft_live[sel] / sim_ttft[sel])), 3)}
    # the pooled p50 of a mix of tasks falls between their modes, where live jitter moves it most:
    # per task, and per request (live / simulated, same request), say how close the model is
    per_task = {}
    for ti, tn in enumerate(profile.task_names):
        sel = both & (tasks == ti)
        if sel.any():
            per_task[tn] = {"n": int(sel.sum()),
                            **{f"{k}_p50_{w}": float(np.nanmedian(x[sel])) for k, w, x in (
                                ("e2e", "live", e2e_live), ("e2e", "sim", sim_e2e),
                                ("ttft", "live", ttft_live), ("ttft", "sim", sim_ttft))}}
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = {k: float(np.nanmedian(a[both] / b[both])) if both.any() else float("nan")
                 for k, a, b in (("e2e", e2e_live, sim_e2e), ("ttft", ttft_live, sim_ttft))}
    part = {"simulator": "bes_jax.reference.continuous.ContinuousReferenceSimulator",
            "sim_config": {k: getattr(sim_cfg, k) for k in ("batching", "placement", "n_gpus", "replicas",
                                                           "queue_capacity", "max_num_seqs",
                                                           "max_num_batched_tokens", "deadline_scale")},
            "http_status": status, "live": live, "sim": sim, "per_model_share": share,
            "per_model_live_over_sim": per_model, "per_task": per_task, "live_over_sim_p50": ratio,
            "comparison": compare_continuous(live, sim, tolerances)}
    arrays = {"model": model, "served": served_live, "e2e": e2e_live, "ttft": ttft_live,
              "sim_served": sim_served, "sim_e2e": sim_e2e, "sim_ttft": sim_ttft,
              "prompts": prompts, "outputs": outputs}
    return part, arrays


def markdown_continuous(rep: dict) -> str:
    L, S, C = rep["live"], rep["sim"], rep["comparison"]
    tol = C["tolerances"]
    out = ["# bes-validate report (continuous batching, real engines)", "",
           f"- server: {rep['url']} (router `{rep['router']}`, profile `{rep['profile']}`)",
           f"- arrivals: {rep['arrivals']}, {rep['n_requests']} requests over {rep['duration_s']:.1f} s "
           f"(offered {rep['offered_rate']:.1f} req/s); HTTP statuses {rep['http_status']}",
           f"- simulator: {rep['simulator']} with {rep['sim_config']}",
           f"- share: {', '.join(f'{m} {v:.0%}' for m, v in rep['per_model_share'].items())}", "",
           "| metric | live | simulator |", "|---|---:|---:|",
           f"| availability | {L['availability']:.2%} | {S['availability']:.2%} |",
           f"| served | {L['n_served']} | {S['n_served']} |"]
    for k in ("ttft_p50", "ttft_p90", "ttft_p99", "e2e_p50", "e2e_p90", "e2e_p99"):
        out.append(f"| {k} | {L[k]:.4f} s | {S[k]:.4f} s |")
    w = C["within"]
    out += ["", f"- **verdict: {'PASSED' if C['passed'] else 'FAILED'}**",
            f"- availability gap {C['availability_gap_points']:+.2f} points "
            f"({'within' if w['availability'] else 'NOT within'} {tol['availability_points']:g})",
            f"- p50 end-to-end {100 * C['e2e_p50_rel']:+.1f}% "
            f"({'within' if w['e2e_p50'] else 'NOT within'} {100 * tol['e2e_p50_rel']:g}%)",
            f"- p50 TTFT {100 * C['ttft_p50_rel']:+.1f}% "
            f"({'within' if w['ttft_p50'] else 'NOT within'} {100 * tol['ttft_p50_rel']:g}%)",
            f"- per model, median live / simulated per request: {rep['per_model_live_over_sim']}",
            f"- every request served in both, median live / simulated: end-to-end "
            f"{rep['live_over_sim_p50']['e2e']:.3f}, TTFT {rep['live_over_sim_p50']['ttft']:.3f}",
            "- per task, p50 live / simulated: " + "; ".join(
                f"{t} (n={v['n']}) end-to-end {1e3 * v['e2e_p50_live']:.1f} / {1e3 * v['e2e_p50_sim']:.1f} ms, "
                f"TTFT {1e3 * v['ttft_p50_live']:.1f} / {1e3 * v['ttft_p50_sim']:.1f} ms"
                for t, v in rep["per_task"].items()), ""]
    return "\n".join(out)


def validate_continuous(cfg, url: str, health: dict) -> dict:
    """``bes-validate`` against ``bes-serve pool=engines``: streamed open-loop load, then the
    continuous reference twin on the same arrivals, token counts and choices."""
    import httpx

    from bes_jax.profile import load_profile
    prof_path = cfg.get("profile") or health["profile_source"]
    if str(prof_path).startswith("<"):
        raise SystemExit("bes-validate: the server profiled its engines at start and has no profile file; give "
                         "profile=FILE (written by bes-profile --engine, then served with pool.profile=FILE)")
    profile = load_profile(prof_path)
    names = profile.task_names
    times, tasks, plens, olens, src = make_requests(int(cfg.n_requests), float(cfg.rate), profile,
                                                    seed=int(cfg.seed), mix=cfg.get("task_mix"),
                                                    trace_path=cfg.get("trace_path"),
                                                    source=str(cfg.get("arrival_source") or "workloads"))
    limits = health.get("limits") or {}
    if limits.get("max_tokens_limit"):  # what the server accepts (the simulator replays what was served)
        clipped = int((olens > int(limits["max_tokens_limit"])).sum())
        olens = np.minimum(olens, int(limits["max_tokens_limit"]))
        if clipped:
            src += f"; {clipped} outputs clipped to serve.max_tokens_limit = {limits['max_tokens_limit']}"
    ctx = int(np.min(profile.ctx_max))
    plens = np.minimum(plens, np.maximum(1, ctx - olens))
    log.info("sending %d streamed requests (%s) to %s", len(times), src, url)
    wall0 = time.time()
    import os
    key_env = cfg.get("api_key_env")
    if key_env and key_env not in os.environ:
        raise SystemExit(f"bes-validate: api_key_env = {key_env!r}: environment variable not set")
    rec = asyncio.run(_drive_stream(url, times, tasks, names, plens, olens, float(cfg.client_timeout_s),
                                    float(cfg.get("chars_per_token", 1.0) or 1.0),
                                    os.environ[key_env] if key_env else None))
    wall = time.time() - wall0
    after = httpx.get(f"{url}/healthz", timeout=10).json()
    tol = {k: float(cfg.get(f"tol_{k}")) for k in CONTINUOUS_TOLERANCES if cfg.get(f"tol_{k}", None) is not None}
    part, a = analyse_continuous(profile, health, rec, tol)
    rep = {"mode": "continuous", "url": url, "router": health["router"], "profile": profile.name,
           "profile_source": str(prof_path), "arrivals": src, "n_requests": len(rec),
           "duration_s": float(times[-1]), "wall_s": wall, "offered_rate": float(len(rec) / max(times[-1], 1e-9)),
           **part, "server_counters_after": after.get("counters")}
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(rep, indent=1) + "\n")
    per = []
    for r in rec:
        i = r["i"]
        per.append({**r, "prompt_tokens": int(a["prompts"][i]), "output_tokens": int(a["outputs"][i]),
                    "sim_served": bool(a["sim_served"][i]),
                    "sim_e2e_s": None if not np.isfinite(a["sim_e2e"][i]) else float(a["sim_e2e"][i]),
                    "sim_ttft_s": None if not np.isfinite(a["sim_ttft"][i]) else float(a["sim_ttft"][i])})
    (out / "requests.json").write_text(json.dumps(per) + "\n")
    (out / "report.md").write_text(markdown_continuous(rep))
    return rep


def validate(cfg) -> dict:
    import httpx

    from bes_jax.profile import load_profile
    url = str(cfg.url).rstrip("/")
    health = httpx.get(f"{url}/healthz", timeout=10).json()
    if health.get("batching") == "continuous":  # bes-serve pool=engines
        return validate_continuous(cfg, url, health)
    prof_path = cfg.get("profile") or health["profile_source"]
    profile = load_profile(prof_path)
    if profile.model_names != health["pool"]["models"]:
        raise SystemExit(f"bes-validate: profile {prof_path} has models {profile.model_names}, "
                         f"the server {health['pool']['models']}")
    names, T = profile.task_names, profile.n_tasks
    times, tasks, src = make_arrivals(int(cfg.n_requests), float(cfg.rate), T, seed=int(cfg.seed),
                                      mix=cfg.get("task_mix"), trace_path=cfg.get("trace_path"))
    plens = [t.prompt_len for t in profile.tasks]
    olens = [t.output_len for t in profile.tasks]
    log.info("sending %d requests (%s) to %s", len(times), src, url)
    wall0 = time.time()
    rec = run_load(url, times, tasks, names, plens, olens, float(cfg.client_timeout_s))
    wall = time.time() - wall0
    after = httpx.get(f"{url}/healthz", timeout=10).json()

    part, a = analyse(profile, health, rec, tolerances_from(cfg))
    n, p = len(rec), health["pool"]
    sim_lat, sim_served = a["sim_latency"], a["sim_served"]
    rep = {
        "url": url, "router": health["router"], "profile": profile.name, "profile_source": str(prof_path),
        "pool": {k: p[k] for k in ("placement", "n_gpus", "replicas", "queue_capacity", "b_max", "device", "num_threads")},
        "arrivals": src, "n_requests": n, "duration_s": float(times[-1]), "wall_s": wall,
        "offered_rate": float(n / max(times[-1], 1e-9)), **part,
        "server_counters_after": after.get("counters"),
    }
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(rep, indent=1) + "\n")
    (out / "requests.json").write_text(json.dumps(
        [{**r, "sim_latency_s": None if not np.isfinite(sim_lat[r["i"]]) else float(sim_lat[r["i"]]),
          "sim_served": bool(sim_served[r["i"]])} for r in rec]) + "\n")
    plot(out / "latency.png", np.nan_to_num(a["latency"], nan=0.0), np.nan_to_num(sim_lat, nan=0.0), a["model"],
         a["served"], sim_served, profile.model_names)
    (out / "report.md").write_text(markdown(rep))
    return rep


def _run(cfg) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    rep = validate(cfg)
    print(markdown_continuous(rep) if rep.get("mode") == "continuous" else markdown(rep))
    if not rep["comparison"]["passed"]:
        raise SystemExit(1)


def main() -> None:
    import hydra
    hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="validate")(_run)()


if __name__ == "__main__":
    main()
