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
import time
from pathlib import Path

import numpy as np

from bes_jax import CONF_DIR

log = logging.getLogger("bes_jax.serving.validate")

#: outcome codes, the same as bes_jax.env.state (not imported: that pulls in JAX)
EMPTY, QUEUED, SERVED, DROPPED, REJECTED = 0, 1, 2, 3, 4


# ----------------------------------------------------------------------------- arrivals

def make_arrivals(n: int, rate: float, n_tasks: int, *, seed: int = 0, mix=None, trace_path=None):
    """``(times, tasks, source)``: arrival times from 0 (s) and task indices, drawn by the same
    workload code the simulator uses (so a validation run is a simulator workload)."""
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


def prompt_for(task_name: str, prompt_len: int, i: int) -> str:
    """An ASCII prompt of exactly ``prompt_len`` bytes (= tokens for the byte tokenizer)."""
    base = f"[{task_name} #{i}] Answer the question about the passage below. "
    text = (base * (prompt_len // len(base) + 1))[:prompt_len]
    return text


# ----------------------------------------------------------------------------- load generator

async def _drive(url: str, times, tasks, task_names, prompt_lens, out_lens, timeout: float):
    import httpx
    n = len(times)
    rec = [None] * n
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        loop = asyncio.get_running_loop()

        async def one(i):
            t = int(tasks[i])
            body = {"model": "auto", "task": task_names[t], "max_tokens": int(out_lens[t]),
                    "prompt": prompt_for(task_names[t], int(prompt_lens[t]), i)}
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


def validate(cfg) -> dict:
    import httpx

    from bes_jax.profile import load_profile
    url = str(cfg.url).rstrip("/")
    health = httpx.get(f"{url}/healthz", timeout=10).json()
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
    print(markdown(rep))
    if not rep["comparison"]["passed"]:
        raise SystemExit(1)


def main() -> None:
    import hydra
    hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="validate")(_run)()


if __name__ == "__main__":
    main()
