"""Validate the continuous-batching simulator against a third-party engine, end to end:
three tiny random-weight Qwen2 models (small / medium / large, built here, nothing downloaded)
served by ``transformers serve --continuous-batching`` on loopback, profiled with
``bes-profile --engine``, routed by ``bes-serve pool=engines`` (its own process), loaded by
``bes-validate`` at several Poisson rates and on bursty trace slices with the trace's own token
counts; every run is replayed through the continuous reference twin on the same arrivals, tokens
and choices (``bes_jax.serving.validate``). Progress and time left are printed per run.

Writes ``DIR/summary.json`` (every run's report) and, with ``--write-docs``, the table of
``docs/validation.md``. Timings need quiet cores: run nothing else beside it.

    python scripts/validate_engines.py [--rates 2,50,150] [--n-requests 120] [--router greedy]
        [--policy DIR] [--trace pkg:AzureLLMInferenceTrace_code.csv --trace-rates 4,12]
        [--work-dir DIR] [--write-docs]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NAMES = ["qwen-s", "qwen-m", "qwen-l"]
TASKS = {"short": (16, 8), "long": (96, 16)}


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> dict:
    import httpx
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"bes-serve exited with {proc.returncode} before answering {url}/healthz")
        try:
            r = httpx.get(f"{url}/healthz", timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"bes-serve did not answer {url}/healthz within {timeout:.0f} s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", type=_floats, default=[2.0, 50.0, 150.0], help="Poisson rates, req/s (comma-separated)")
    ap.add_argument("--n-requests", type=int, default=120, help="requests per run")
    ap.add_argument("--trace", default=None, help="a token trace (e.g. pkg:AzureLLMInferenceTrace_code.csv)")
    ap.add_argument("--trace-rates", type=_floats, default=[], help="mean rates of the trace slices")
    ap.add_argument("--router", default="greedy", help="bes-serve router (greedy, static, random, policy)")
    ap.add_argument("--router-args", nargs="*", default=[], help="extra router.* overrides, e.g. router.model=qwen-l")
    ap.add_argument("--policy", default=None, help="exported policy directory (with --router policy)")
    ap.add_argument("--placement", default="exclusive", choices=["exclusive", "concurrent"])
    ap.add_argument("--max-num-seqs", type=int, default=16)
    ap.add_argument("--profile-repeats", type=int, default=3)
    ap.add_argument("--profile", default=None, help="reuse this engine profile instead of measuring one")
    ap.add_argument("--profile-through", choices=["router", "engines"], default="router",
                    help="measure the profile through bes-serve (URL#MODEL: what its clients see, its own "
                         "routing and relaying included; the default) or at the engines directly")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--work-dir", default=None)
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from bes_jax import REPO_ROOT
    from bes_jax.serving.engines.local import build_tiny_models, free_port, start_engines
    from bes_jax.serving.engines.profiler import run_engine_profile

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bes_validate_engines_"))
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.monotonic()
    log = lambda msg: print(f"[{time.monotonic() - t_all:6.0f} s] {msg}", flush=True)
    log(f"work dir {work}")
    dirs = build_tiny_models(work / "models")
    procs = start_engines([dirs[n] for n in NAMES], log_dir=work, timeout=300)
    serve = None
    runs = []
    try:
        log("engines up: " + ", ".join(f"{n} {p.url}" for n, p in zip(NAMES, procs)))
        prof = Path(args.profile) if args.profile else work / "engines.json"

        def profile(urls, out: Path, what: str):
            # prompts up to near the context limit: trace slices carry prompts of ~1000 tokens, and
            # an iteration model fitted on short prompts only extrapolates their prefill badly
            doc = run_engine_profile(urls, names=NAMES, tasks=TASKS, prompt_lens=(8, 128, 512, 900),
                                     concurrencies=(1, 4, 8), decode_prompt_lens=(16, 256), decode_tokens=8,
                                     repeats=args.profile_repeats, kv_tokens=procs[0].kv_tokens,
                                     max_num_batched_tokens=256, ctx_max=1024, deadline_factor=4.0,
                                     name="tiny-qwen-engines", log=lambda *a: None)
            out.write_text(json.dumps(doc, indent=1))
            log(f"profiled {what}: {out} (fit error {doc['provenance'].get('fit_error')})")

        if not args.profile:
            profile([p.url for p in procs], prof, "the engines directly")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        urls = "[" + ",".join(p.url for p in procs) + "]"
        router = [f"router={args.router}"] + list(args.router_args)
        if args.policy:
            router.append(f"router.path={args.policy}")

        def start_serve(profile_path: Path):
            cmd = ["bes-serve", "pool=engines", f"pool.urls={urls}", f"pool.profile={profile_path}",
                   f"pool.tokenizer={dirs['qwen-s']}", f"pool.max_num_seqs={args.max_num_seqs}",
                   "pool.max_num_batched_tokens=256", f"pool.placement={args.placement}", "pool.n_gpus=1",
                   f"server.port={port}", *router]
            proc = subprocess.Popen(cmd, stdout=open(work / "serve.log", "a"), stderr=subprocess.STDOUT)
            _wait_healthy(url, proc)
            log(f"bes-serve up at {url} ({' '.join(router)}; profile {profile_path.name})")
            return proc

        serve = start_serve(prof)
        if not args.profile and args.profile_through == "router":
            # what the router's clients see: each model addressed by name through bes-serve
            # (explicit requests: no routing choice), then the router restarted on that profile
            via = work / "engines_via_router.json"
            profile([f"{url}#{n}" for n in NAMES], via, "through bes-serve")
            serve.terminate()
            serve.wait(30)
            serve = None
            prof = via
            serve = start_serve(prof)

        from omegaconf import OmegaConf

        from bes_jax.serving import validate as V
        plan = [("poisson", r, None) for r in args.rates] + [("trace", r, args.trace) for r in args.trace_rates]
        if args.trace_rates and not args.trace:
            raise SystemExit("--trace-rates needs --trace PATH")
        for k, (kind, rate, trace) in enumerate(plan):
            t0 = time.monotonic()
            cfg = OmegaConf.create({"url": url, "rate": rate, "n_requests": args.n_requests, "seed": args.seed,
                                    "trace_path": trace, "arrival_source": "workloads", "task_mix": None,
                                    "profile": None, "client_timeout_s": 60.0, "chars_per_token": 1.0,
                                    "api_key_env": None, "out_dir": str(work / f"run{k}_{kind}_{rate:g}")})
            rep = V.validate(cfg)
            runs.append({"kind": kind, "rate": rate, "trace": trace, "report": rep})
            C, L, S = rep["comparison"], rep["live"], rep["sim"]
            spent = time.monotonic() - t0
            left = spent * (len(plan) - k - 1)
            log(f"{kind} {rate:g} req/s: availability {L['availability']:.1%} / {S['availability']:.1%}, "
                f"TTFT p50 {1e3 * L['ttft_p50']:.0f} / {1e3 * S['ttft_p50']:.0f} ms, e2e p50 "
                f"{1e3 * L['e2e_p50']:.0f} / {1e3 * S['e2e_p50']:.0f} ms: {'passed' if C['passed'] else 'FAILED'} "
                f"({spent:.0f} s; about {left:.0f} s left)")
    finally:
        if serve is not None:
            serve.terminate()
            try:
                serve.wait(30)
            except subprocess.TimeoutExpired:
                serve.kill()
        for p in procs:
            p.stop()

    import jax
    meta = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "python": platform.python_version(), "jax": jax.__version__,
            "load_average": os.getloadavg(), "wall_s": time.monotonic() - t_all, "args": vars(args)}
    (work / "summary.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=1, default=str) + "\n")
    rows = ["| workload | offered rate | requests | availability live / sim | p50 TTFT live / sim | "
            "p50 e2e live / sim | per request live / sim, e2e / TTFT (median) | share s / m / l | verdict |",
            "|---|---:|---:|---|---|---|---|---|---|"]
    for r in runs:
        rep = r["report"]
        L, S, C = rep["live"], rep["sim"], rep["comparison"]
        share = " / ".join(f"{rep['per_model_share'].get(n, 0):.2f}" for n in NAMES)
        rows.append(f"| {r['kind']} | {rep['offered_rate']:.1f} req/s | {rep['n_requests']} | "
                    f"{L['availability']:.1%} / {S['availability']:.1%} ({C['availability_gap_points']:+.1f} pt) | "
                    f"{1e3 * L['ttft_p50']:.0f} / {1e3 * S['ttft_p50']:.0f} ms ({100 * C['ttft_p50_rel']:+.0f}%) | "
                    f"{1e3 * L['e2e_p50']:.0f} / {1e3 * S['e2e_p50']:.0f} ms ({100 * C['e2e_p50_rel']:+.0f}%) | "
                    f"{rep['live_over_sim_p50']['e2e']:.2f} / {rep['live_over_sim_p50']['ttft']:.2f} | "
                    f"{share} | {'passed' if C['passed'] else 'failed'} |")
    print("\n".join(rows))
    if args.write_docs:
        from bes_jax.eval.report import replace_section
        # one section per setting (a rerun replaces its own, never another's: the heading is
        # matched as a line prefix, so it names everything that changes the figures)
        how = ("given (`--profile`)" if args.profile else
               "through bes-serve" if args.profile_through == "router" else "at the engines")
        heading = f"## Router `{args.router}`, placement `{args.placement}`, profile {how}"
        # the command as a reader would type it: no paths of this machine
        shown = []
        for a in (argv or sys.argv[1:]):
            for path, name in ((args.work_dir, "DIR"), (args.policy, "POLICY_DIR"), (args.profile, "PROFILE.json")):
                if path and a == path:
                    a = name
            shown.append(a)
        section = "\n".join([heading, "", f"`python scripts/validate_engines.py {' '.join(shown)}` "
                             f"({meta['machine']}, load average {meta['load_average'][0]:.1f} at the end, "
                             f"{meta['wall_s'] / 60:.1f} min)", "", *rows, ""])
        replace_section(REPO_ROOT / "docs" / "validation.md", heading, section,
                        title="# Simulator vs a real engine (`transformers serve --continuous-batching`)\n")
    return 0 if all(r["report"]["comparison"]["passed"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
