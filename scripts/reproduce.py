"""Reproduce the paper's experiments under the evaluation protocol (SPEC) and regenerate the
"Paper experiments" section of docs/results.md, docs/results.json and docs/figures/.

    python scripts/reproduce.py --scale small     # 2-core CPU, about 80 minutes
    python scripts/reproduce.py --scale full      # more seeds, requests and grid points (GPU)
    python scripts/reproduce.py --scale small --only request:poisson --out-dir /tmp/repro
    python scripts/reproduce.py --render          # rewrite the section from docs/results.json (no run)

The experiment YAML (bes_jax/conf/experiment/SCALE.yaml) lists *modes*: a serving model and
profile, each with its own `bes-train` overrides and the sections it runs:

- ``poisson``: availability and performance vs Poisson load (multiples of static-largest's
  measured sustainable rate, a geometric grid), and the max-sustainable-rate ratio learned /
  static-largest at each availability threshold, read off that grid by interpolation;
- ``bursty``: windows >= 96% / 98% of peak on bursty MAF-derived workloads of mean load
  k x capacity (`bes_jax.workloads.bursty.bursty_workload`), and quality goodput per GPU
  against static-largest on more GPUs, over the same k;
- ``autoscaler`` (request-level batching only): a reactive autoscaler of the largest model
  against the learned router at equal GPU-seconds, on the same bursty workloads;
- ``extras`` (request-level): placement, latency weight, hard vs soft deadlines, per-task
  deadlines, deadline scale, arrival-pattern and task-mix shift against target-trained routers.

`--only` takes section names, mode names or ``mode:section`` (comma-separated); the learned
routers of a mode are trained once (all seeds in one vmapped program, or one program per seed for
a learner that vmaps badly over seeds, ES) for the sections that need them. Every router set
(each mode's, the extras' variants) is queued at the start and trained by `--train-jobs` worker
processes (`bes_jax.eval.train_pool`; the same numbers as training in this process) while this
process evaluates; the extras run last. `--out-dir` (default docs/) receives results.md (its "Paper experiments" section is
replaced, the rest kept), results.json and figures/.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SECTIONS = ("poisson", "bursty", "autoscaler", "extras")
REQUEST_ONLY = ("autoscaler", "extras")
#: the paper's headline numbers (arXiv 2401.07886 and the earlier results table)
PAPER = {"max_sustainable_rate": 10.0, "frac_windows_ge_96": 4.1, "frac_windows_ge_98": 2.3, "goodput_per_gpu": 3.9}
#: learned and greedy means closer than this count as equal: a float32 mean of thousands of
#: rewards, summed in another order (another program), is off by up to ~sqrt(n) x 1.2e-7, about
#: 1e-5 for 6000 requests (6e-8 between identical availabilities in docs/results.json), while one
#: request's outcome moves an availability mean by 1 / (seeds x eval seeds x requests), 5.6e-5 at
#: the small scale; a real performance gap this small would not matter
ROUNDING = 1e-5
BURSTY_METRICS = ("frac_windows_ge_96", "frac_windows_ge_98", "performance", "availability", "pct_of_peak",
                  "quality_goodput_per_gpu")


def _nanmean(x):
    x = np.asarray(x, np.float64)
    return float(x[np.isfinite(x)].mean()) if np.isfinite(x).any() else float("nan")


def _ms(x):
    x = np.asarray(x, np.float64)
    return {"mean": float(np.mean(x)), "std": float(np.std(x)), "seeds": int(x.size)}


def select_jobs(modes, only):
    """``[(mode, section)]`` to run: every mode's sections, filtered by `only` (a set of
    section names, mode names or ``mode:section``; None = all). Unknown names raise."""
    jobs = [(str(m.name), str(s)) for m in modes for s in m.sections]
    for mname, sec in jobs:
        if sec not in SECTIONS:
            raise ValueError(f"mode {mname!r}: unknown section {sec!r} (choose from {SECTIONS})")
    if only is None:
        return jobs
    known = {s for s in SECTIONS} | {m for m, _ in jobs} | {f"{m}:{s}" for m, s in jobs}
    bad = sorted(set(only) - known)
    if bad:
        raise ValueError(f"--only {','.join(sorted(only))}: unknown {bad}; choose from {sorted(known)}")
    return [(m, s) for m, s in jobs if s in only or m in only or f"{m}:{s}" in only]


class Progress:
    """say() lines with elapsed time and an ETA from per-section cost estimates (seconds, from
    the YAML), rescaled by how the finished sections compared with their estimates."""

    def __init__(self, plan):
        self.t0 = time.perf_counter()
        self.plan = dict(plan)            # label -> estimated seconds
        self.done_est, self.done_real = 0.0, 0.0
        self.left = list(self.plan)
        self._start = None

    def say(self, msg):
        print(f"[{time.perf_counter() - self.t0:6.0f} s] {msg}", flush=True)

    def start(self, label):
        self._start = time.perf_counter()
        self.say(f"{label}: start (estimate {self.plan.get(label, 0):.0f} s)")

    def done(self, label):
        dt = time.perf_counter() - self._start
        self.done_est += self.plan.get(label, 0.0)
        self.done_real += dt
        if label in self.left:
            self.left.remove(label)
        rate = self.done_real / self.done_est if self.done_est > 0 else 1.0
        eta = sum(self.plan[k] for k in self.left) * rate
        self.say(f"{label}: done in {dt:.0f} s; {len(self.left)} section(s) left, ETA {eta / 60:.1f} min")


def machine_meta(t_wall, scale, config, argv):
    import importlib.metadata as md

    import jax

    from bes_jax import REPO_ROOT

    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    versions = {}
    for pkg in ("jax", "jaxlib", "flax", "optax", "numpy", "bes_jax"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    cpu = platform.processor() or None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    # local changes to the code that ran; docs/ (this script's outputs and the prose around them) not counted
    dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)docs"))
    return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": dirty,
            "versions": versions,
            "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpu_model": cpu,
                        "cpu_count": os.cpu_count(), "cpu_usable": affinity,
                        "jax_devices": [str(d) for d in jax.devices()], "jax_backend": jax.default_backend()},
            "wall_time_s": float(t_wall), "scale": scale, "config": str(config), "argv": list(argv)}


def _fmt_list(values) -> str:
    return "[" + ",".join(f"{float(v):g}" for v in values) + "]"


def extras_trainings(x, overrides) -> dict:
    """The router sets the extras train besides the mode's own: ``{label: bes-train overrides}``
    (the mode's `overrides` plus the variant's), in the order the extras use them; listed up
    front so that a `TrainingPool` trains them while other sections run."""
    from bes_jax.config import compose_train_config, sim_config_from
    from bes_jax.profile import load_profile

    cfg = compose_train_config(list(overrides))
    sim_cfg, profile = sim_config_from(cfg.sim), load_profile(cfg.profile)
    base_dl = np.asarray(sim_cfg.task_deadlines(profile), np.float64)
    v = {f"latency weight {float(w):g}": [f"sim.latency_weight={w}"] for w in x.latency_weights
         if float(w) != float(sim_cfg.latency_weight)}  # the default's weight reuses the default routers
    v["soft deadlines"] = ["sim.deadline_kind=soft"]
    v["Poisson only"] = ["train_family.kinds=[poisson]"]
    v["MAF only"] = ["train_family.kinds=[maf]"]
    split = float(x.trace_split)
    v["trace head"] = ["train_family.kinds=[trace]", f"train_family.trace_path={x.trace_path}",
                       f"train_family.trace_span=[0.0,{split}]"]
    for name, mult in x.task_deadline_variants.items():
        d = np.round(base_dl * np.asarray(list(mult), np.float64), 4)
        v[f"deadlines {name}"] = [f"sim.deadlines={_fmt_list(d)}"]
    lo, hi = (float(t) for t in x.deadline_train_range)
    v["deadline scales"] = [f"train_family.deadline_scale_range=[{lo},{hi}]"]
    v["mix train"] = [f"train_family.mix={_fmt_list(x.task_mix_shift.train)}"]
    v["mix test"] = [f"train_family.mix={_fmt_list(x.task_mix_shift.test)}"]
    return {label: list(overrides) + o for label, o in v.items()}


def extras_section(md, exp, curves, results, fig_dir, say, pool, *, seeds, eval_seeds, n, window_s):
    """Request-level extras on one MAF test workload: placement, latency weight, hard vs soft
    deadlines, arrival-pattern shift (and the Azure trace's held-out half), per-task deadlines,
    the deadline-scale sweep and task-mix shift, each against routers trained on the target."""
    import jax.numpy as jnp
    import matplotlib.pyplot as plt

    from bes_jax import workloads as W
    from bes_jax.env import make_serving_env
    from bes_jax.eval.experiments import TrainedRouters
    from bes_jax.eval.rollout import eval_config
    from bes_jax.workloads.bursty import bursty_workload, describe
    from bes_jax.workloads.from_config import trace_part_requests

    x = exp.extras
    profile, sim_cfg, cap, stat = md.profile, md.sim_cfg, md.cap, md.stat
    names = [str(b) for b in x.get("baselines", None) or md.baselines]  # the baselines the extras compare with
    unknown = [b for b in names if b not in md.baselines]
    if unknown:
        raise ValueError(f"extras.baselines: unknown {unknown}; choose from {list(md.baselines)}")
    baselines = {b: md.baselines[b] for b in dict.fromkeys(names + ["greedy", stat])}
    wk = x.workload
    rate_x = float(wk.rate_x)
    wp_w = bursty_workload(exp.bursty.path, k=rate_x, capacity=cap, minutes=[int(v) for v in wk.minutes],
                           time_scale=float(wk.time_scale), n_tasks=profile.n_tasks)
    label_w = f"{describe(exp.bursty.path, list(wk.minutes), None, float(wk.time_scale))}, {rate_x:g}x load"
    base_cols = list(baselines)
    ne = len(eval_seeds)
    pooled = lambda reps, key: float(np.mean([r[key] for r in reps]))

    def on_all(sim, routers, wp, keys):
        """``{key: [value per router]}``, each router evaluated once."""
        e = make_serving_env(profile, eval_config(sim, n))
        if isinstance(routers, TrainedRouters):
            reps = [rs[0] for rs in md.reports(routers, [e.make_params(wp)], e)]
        else:
            reps = [md.reports(r, [e.make_params(wp)], e)[0] for r in routers]
        return {key: [pooled(rr, key) for rr in reps] for key in keys}

    def on(sim, routers, wp, key="performance"):
        return on_all(sim, routers, wp, [key])[key]

    variants = extras_trainings(x, md.overrides)

    def train_variant(label):
        s, rs = pool.get(variants[label])
        return s["sim_cfg"], rs

    def rec(experiment, router, metric, values, load_x=rate_x, workload=label_w, **extra):
        curves.append(md.rec(experiment, workload, load_x, router, metric, values,
                             None if router == "learned" else ne, **extra))

    # placement (optional: extras.placement)
    placement = {}
    for pl in (("concurrent", "exclusive") if x.get("placement", True) else ()):
        e_sim = dataclasses.replace(sim_cfg, placement=pl)
        row = {"greedy": on(e_sim, [baselines["greedy"]], wp_w)[0], stat: on(e_sim, [baselines[stat]], wp_w)[0]}
        lv = on(e_sim, md.learned, wp_w)
        row[f"learned (trained {sim_cfg.placement})"] = _ms(lv)
        placement[pl] = row
        rec("placement", "greedy", "performance", row["greedy"], placement=pl)
        rec("placement", stat, "performance", row[stat], placement=pl)
        rec("placement", "learned", "performance", lv, placement=pl, trained_placement=sim_cfg.placement)
    if placement:
        results["placement"] = {"workload": label_w, "performance": placement}
        say("extras: placement done")

    # latency weight
    tradeoff = []
    for w in x.latency_weights:  # the default's weight reuses the default routers
        rw = md.learned if float(w) == float(sim_cfg.latency_weight) else train_variant(f"latency weight {float(w):g}")[1]
        pt = {"latency_weight": float(w)}
        vals = on_all(sim_cfg, rw, wp_w, ("performance", "latency_p50", "availability"))
        for key, metric in (("quality", "performance"), ("latency_p50", "latency_p50"), ("availability", "availability")):
            v = vals[metric]
            pt[key] = _ms(v)
            rec("latency_weight", "learned", metric, v, latency_weight=float(w))
        tradeoff.append(pt)
    results["latency_weight_tradeoff"] = {"workload": label_w, "points": tradeoff}
    say("extras: latency-weight trade-off done")

    # hard vs soft deadlines
    soft_sim, soft_routers = train_variant("soft deadlines")
    deadlines = {}
    for lbl, sim, routers, router, trained in (
            ("hard-trained, hard reward", sim_cfg, md.learned, "learned", "hard"),
            ("soft-trained, soft reward", soft_sim, soft_routers, "learned", "soft"),
            ("hard-trained, soft reward", soft_sim, md.learned, "learned", "hard"),
            ("greedy, soft reward", soft_sim, [baselines["greedy"]], "greedy", None)):
        v = on(sim, routers, wp_w)
        deadlines[lbl] = _ms(v)
        rec("deadline_kind", router, "performance", v, trained_on=trained, reward=sim.deadline_kind)
    results["deadline_kinds"] = {"workload": label_w, "performance": deadlines}
    say("extras: soft deadlines done")

    # arrival-pattern shift against target-trained routers
    _, poisson_routers = train_variant("Poisson only")
    _, maf_routers = train_variant("MAF only")
    split, azure_x = float(x.trace_split), float(x.trace_rate_x)
    azure_path = str(x.trace_path)
    part = trace_part_requests(azure_path, [split, 1.0])
    azure = W.trace(times=part["times_s"], prompt=part["prompt"], output=part["output"], target_mean_rate=cap * azure_x,
                    n_tasks=profile.n_tasks)
    _, trace_routers = train_variant("trace head")
    azure_label = f"Azure LLM code trace, held-out part ({split:.0%}-100% of its arrivals), {azure_x:g}x load"
    targets = {label_w: (wp_w, rate_x, maf_routers, "MAF only (minutes 0-240 of the day)"),
               azure_label: (azure, azure_x, trace_routers, f"the trace's first {split:.0%} of arrivals")}
    robust = {}
    for lbl, (wp_r, lx, target_routers, target_desc) in targets.items():
        row = {}
        for key, routers, trained in (("trained on Poisson only", poisson_routers, "poisson"),
                                      ("trained on the default family (Poisson, Gamma, MAF)", md.learned, "default"),
                                      ("trained on the target", target_routers, "target")):
            v = on(sim_cfg, routers, wp_r)
            row[key] = _ms(v)
            rec("arrival_shift", "learned", "performance", v, load_x=lx, workload=lbl, trained_on=trained)
        row["target training"] = target_desc
        for name, r in baselines.items():
            row[name] = on(sim_cfg, [r], wp_r)[0]
            rec("arrival_shift", name, "performance", row[name], load_x=lx, workload=lbl)
        robust[lbl] = row
    results["robustness_arrivals"] = robust
    say("extras: arrival-pattern shift done")

    # per-task deadlines and the deadline-scale sweep
    env_e = md.env
    base_dl = np.asarray(sim_cfg.task_deadlines(profile), np.float64)
    dl_variants = {"default": base_dl}
    dl_variants.update({str(k): np.round(base_dl * np.asarray(list(v), np.float64), 4)
                        for k, v in x.task_deadline_variants.items()})
    scales = [float(v) for v in x.deadline_scales]
    dl_list = list(dl_variants.values()) + [base_dl * v for v in scales]
    dtype = env_e.make_params(wp_w).deadline.dtype
    dl_params = [env_e.make_params(wp_w, deadline=jnp.asarray(d, dtype)) for d in dl_list]

    def perf_variants(router, plist):
        """Performance per variant (mean over evaluation seeds), one program; for trained
        routers an array [training seed, variant]."""
        reps = md.reports(router, plist, env_e)
        per = lambda rv: np.asarray([np.mean([r["performance"] for r in v]) for v in rv])
        return np.asarray([per(rv) for rv in reps]) if isinstance(router, TrainedRouters) else per(reps)

    V = len(dl_variants)
    dl_base = {name: perf_variants(r, dl_params) for name, r in baselines.items()}
    dl_default = perf_variants(md.learned, dl_params)  # [seed, variant]
    per_task = {}
    for vi, (vname, d) in enumerate(dl_variants.items()):
        if vname == "default":
            own = dl_default[:, vi]
        else:
            _, rv = train_variant(f"deadlines {vname}")
            own = perf_variants(rv, [dl_params[vi]])[:, 0]
        per_task[vname] = {"deadlines_s": d.tolist(), "trained on these deadlines": _ms(own),
                           "trained on the default deadlines": _ms(dl_default[:, vi])}
        per_task[vname].update({name: float(v[vi]) for name, v in dl_base.items()})
        rec("per_task_deadlines", "learned", "performance", own, deadline_set=vname, trained_on="these deadlines")
        rec("per_task_deadlines", "learned", "performance", dl_default[:, vi], deadline_set=vname,
            trained_on="default deadlines")
        for name, v in dl_base.items():
            rec("per_task_deadlines", name, "performance", float(v[vi]), deadline_set=vname)
    lo, hi = (float(v) for v in x.deadline_train_range)
    ranged_key = f"learned (trained on scales {lo:g}-{hi:g})"
    _, ranged = train_variant("deadline scales")
    dl_ranged = perf_variants(ranged, dl_params[V:])
    scale_curve = {"learned (trained at scale 1)": {"mean": dl_default[:, V:].mean(0).tolist(),
                                                   "std": dl_default[:, V:].std(0).tolist()},
                   ranged_key: {"mean": dl_ranged.mean(0).tolist(), "std": dl_ranged.std(0).tolist()}}
    scale_curve.update({name: v[V:].tolist() for name, v in dl_base.items()})
    for i, sc in enumerate(scales):
        rec("deadline_scale", "learned", "performance", dl_default[:, V + i], deadline_scale=sc, trained_on="scale 1")
        rec("deadline_scale", "learned", "performance", dl_ranged[:, i], deadline_scale=sc,
            trained_on=f"scales {lo:g}-{hi:g}")
        for name, v in dl_base.items():
            rec("deadline_scale", name, "performance", float(v[V + i]), deadline_scale=sc)
    results["per_task_deadlines"] = {"workload": label_w, "tasks": list(profile.task_names), "variants": per_task}
    results["deadline_scale_sweep"] = {"workload": label_w, "scales": scales, "performance": scale_curve}
    say("extras: per-task deadlines and deadline-scale sweep done")
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, lbl in (("learned (trained at scale 1)", "learned (trained at 1)"), (ranged_key, f"learned (trained on {lo:g}-{hi:g})")):
        ax.errorbar(scales, scale_curve[key]["mean"], yerr=scale_curve[key]["std"], marker="o", lw=2.5, label=lbl)
    for name in baselines:
        ax.plot(scales, scale_curve[name], marker="o", ms=3, lw=1.2, label=name)
    ax.set_xlabel("deadline scale (every task)"); ax.set_ylabel("performance"); ax.grid(alpha=0.3)
    ax.legend(fontsize=7); ax.set_title(f"performance vs deadline scale ({label_w})", fontsize=8)
    fig.tight_layout(); fig.savefig(fig_dir / "deadline_scale.png", dpi=110); plt.close(fig)

    # task-mix shift
    mix_train = np.asarray(list(x.task_mix_shift.train), np.float64)
    mix_test = np.asarray(list(x.task_mix_shift.test), np.float64)
    mix_params = [env_e.make_params(W.with_task_mix(wp_w, mx)) for mx in (mix_train, mix_test)]
    fmt_mix = _fmt_list
    _, mix_a = train_variant("mix train")
    _, mix_b = train_variant("mix test")
    mix_cols = {f"trained on mix {fmt_mix(mix_train)}": mix_a,
                f"trained on mix {fmt_mix(mix_test)} (the target)": mix_b,
                "trained on the default family (random mixes)": md.learned}
    mix_perf = {c: perf_variants(rs, mix_params) for c, rs in mix_cols.items()}
    mix_base = {name: perf_variants(r, mix_params) for name, r in baselines.items()}
    mix_shift = {}
    for mi, (tag, mx) in enumerate((("train mix (in distribution)", mix_train), ("shifted mix", mix_test))):
        row = {c: _ms(v[:, mi]) for c, v in mix_perf.items()}
        row.update({name: float(v[mi]) for name, v in mix_base.items()})
        mix_shift[f"{tag} {fmt_mix(mx)}"] = row
        for c, v in mix_perf.items():
            rec("task_mix_shift", "learned", "performance", v[:, mi], test_mix=mx.tolist(), trained_on=c)
        for name, v in mix_base.items():
            rec("task_mix_shift", name, "performance", float(v[mi]), test_mix=mx.tolist())
    results["task_mix_shift"] = {"workload": label_w, "tasks": list(profile.task_names), "performance": mix_shift}
    results["extras"] = {"mode": md.name, "workload": label_w, "base_cols": base_cols,
                         "dl_variants": {k: v.tolist() for k, v in dl_variants.items()},
                         "mix_train": mix_train.tolist(), "mix_test": mix_test.tolist(), "trace_split": split,
                         "trace_path": azure_path, "deadline_train_range": [lo, hi]}
    say("extras: task-mix shift done")


def _train_length(cfg, learner: str):
    """The configured learner's training length: DQN / PQN iterations or ES generations."""
    node = cfg.get(learner)
    for k in ("iterations", "generations"):
        if node is not None and k in node:
            return int(node[k])
    return None


def _f2(d):
    if d is None or d.get("mean") is None:
        return "n/a" if d is None or "note" not in d else f"unbounded ({d['note']})"
    return f"{d['mean']:.2f} ± {d['std']:.2f}"


def _why(values, paper, what):
    """A sentence on why our number differs from the paper's, from the measured curve only."""
    v = [x for x in values if x is not None and np.isfinite(x)]
    if not v:
        return f"We measured no finite {what}, so the paper's number cannot be placed."
    if len(v) < 2:
        return (f"Only one load gives a finite {what} ({v[0]:.2f}); where the static baseline has no such window "
                "the ratio is unbounded, so the number depends on the load it is read at.")
    lo, hi = min(v), max(v)
    spread = f"it varies {hi / lo:.1f}-fold over the loads we test" if lo > 0 else "it reaches 0 at some load"
    side = ("higher than" if paper > hi else "lower than" if paper < lo else "inside")
    return (f"Our {what} depends on the load it is read at ({spread}); the paper reports one hand-picked load, "
            f"and its number is {side} our range.")


def _wl(node) -> str:
    """A workload config node in a few words."""
    parts = [str(node.get("kind", "?"))]
    if "minutes" in node:
        parts.append(f"minutes [{node['minutes'][0]}, {node['minutes'][1]})")
    if "time_scale" in node:
        parts.append(f"x{node['time_scale']:g} time")
    if "path" in node and node.get("kind") == "trace":
        parts.append(str(node["path"]))
    if "rate_x" in node:
        parts.append(f"{node['rate_x']:g}x load")
    return ", ".join(parts)


def _tuning_sets(modes: dict) -> str:
    """The modes' tuning sets: once when every mode has the same, else per mode (a kept mode's
    may be older than the rerun ones')."""
    sets = {name: "; ".join(f"{k} ({_wl(v)})" for k, v in m["tuning_set"].items()) for name, m in modes.items()}
    if len(set(sets.values())) == 1:
        return next(iter(sets.values()))
    return "; ".join(f"mode `{name}`: {text}" for name, text in sets.items())


def _kept_note(doc) -> str:
    """The modes whose records come from an earlier run (`--merge`), with its commit and command."""
    here = (doc["meta"].get("git_commit") or "?")[:10]
    kept = {m: p for m, p in (doc.get("provenance") or {}).items() if (p.get("git_commit") or "?")[:10] != here}
    return "".join(f" Mode `{m}` is kept from an earlier run (`--merge`): commit `{(p.get('git_commit') or '?')[:10]}`, "
                   f"`{p.get('command')}`." for m, p in kept.items())


def learned_below(doc, mode: str, experiment: str, metric: str, against: str = "greedy") -> list:
    """``[(load, learned, baseline's value, baseline)]``, one per load (``load_x`` of `doc`'s curve
    records) of `mode`'s `experiment` where the learned router's mean `metric` is below the
    baseline's by more than :data:`ROUNDING`. `against`: ``greedy``, or ``best static`` (at each
    load the static router whose mean is highest there: the envelope no fixed choice beats)."""
    if against not in ("greedy", "best static"):
        raise ValueError(f"against = {against!r}: choose greedy or best static")
    by = {}
    for r in doc["curves"]:
        if r.get("mode") == mode and r["experiment"] == experiment and r["metric"] == metric:
            by.setdefault(float(r["load_x"]), {})[r["router"]] = float(r["mean"])
    out = []
    for x, v in sorted(by.items()):
        base = {k: m for k, m in v.items() if (k == "greedy" if against == "greedy" else k.startswith("static:"))}
        if "learned" in v and base:
            name = max(base, key=base.get)
            if v["learned"] < base[name] - ROUNDING:
                out.append((x, v["learned"], base[name], name))
    return out


def _below_line(doc, mode, experiment, metric, against, what, fmt) -> str:
    """One report line: where the learned router is below `against` (:func:`learned_below`), and
    the largest gap."""
    gaps = learned_below(doc, mode, experiment, metric, against)
    head = (f"{what} where the learned router's mean {metric} is below "
            + ("greedy's" if against == "greedy" else "the best static router's at that load")
            + f" (by more than float rounding, {ROUNDING:g}): ")
    if not gaps:
        return head + "none."
    x, lv, bv, name = max(gaps, key=lambda g: g[2] - g[1])
    return (head + ", ".join(fmt(g[0]) for g in gaps)
            + f" (largest gap {bv - lv:.2g} at {fmt(x)}: {name} {bv:.4f}, learned {lv:.4f}).")


def report_section(doc) -> str:
    """The "Paper experiments" section of results.md, written from `doc` (results.json)."""
    meta, modes = doc["meta"], doc["modes"]
    lines = ["## Paper experiments (`scripts/reproduce.py`)", "",
             f"Regenerate: `{doc['command']}` ({meta['wall_time_s'] / 60:.0f} min on "
             f"{meta['machine']['cpu_model']}, {meta['machine']['cpu_usable']} usable cores, jax "
             f"{meta['versions']['jax']} on {meta['machine']['jax_backend']}; commit `{(meta['git_commit'] or '?')[:10]}`"
             f"{' with local changes' if meta['git_dirty'] else ''}). Sections run: {', '.join(doc['sections_run'])}. "
             f"Learned router: {len(doc['seeds'])} training seeds (trained in one vmapped program, or one program per "
             "seed for ES" + (f", in {doc['train_jobs']} worker processes beside the evaluations" if doc.get("train_jobs")
                              else "") + "; mean ± std over "
             f"them in every table and in `curves`); baselines: mean over {len(doc['eval_seeds'])} evaluation seeds "
             f"x {doc['n_decisions']} requests (std 0 in `curves`). Every record of every figure is in "
             "`docs/results.json` under `curves` (`{experiment, batching, workload, profile, load_x, router, metric, "
             "mean, std, seeds}`)." + _kept_note(doc), "",
             "### Protocol", "",
             "- Tuning set (chose the learner's defaults; never a test workload): " + _tuning_sets(modes) + ".",
             "- Training family: " + "; ".join(
                 f"{name}: {', '.join(m['training_family']['kinds'])} at {m['training_family']['rate_range_x'][0]:g}-"
                 f"{m['training_family']['rate_range_x'][1]:g}x capacity, MAF minutes "
                 f"[{m['training_family']['maf_minutes'][0]}, {m['training_family']['maf_minutes'][1]})"
                 for name, m in modes.items()) + ".",
             f"- Test set (the same workloads for every router): Poisson at every grid load; bursty workloads "
             f"({'; '.join(doc['protocol']['test_set']['bursty'])}) at k = "
             f"{', '.join(f'{k:g}' for k in doc['protocol']['test_set']['bursty_k'])}; "
             f"{doc['protocol']['test_set']['extras']}.",
             f"- Loads are multiples of the largest model's measured sustainable rate ({doc['protocol']['capacity']}), "
             "per mode:", "",
             "| mode | profile | batching | placement | GPUs | capacity of static-largest (req/s) | learner |",
             "|---|---|---|---|---:|---:|---|"]
    for name, m in modes.items():
        learner = m.get("learner", "dqn") + "".join(f" `{o}`" for o in m.get("learner_overrides", []))
        lines.append(f"| {name} | {m['profile']} | {m['batching']} | {m['placement']} | {m['n_gpus']} | "
                     f"{m['capacity_static_large_req_s']:.3f} | {learner} |")
    lines.append("")
    for name, m in modes.items():
        st = m["static_large"]
        lines += [f"### Mode `{name}`: {m['profile']}, {m['batching']} batching", ""]
        if "poisson" in m:
            pz = m["poisson"]
            lines += [f"Availability vs Poisson load on a geometric grid ({pz['per_doubling']} points per doubling, "
                      f"{pz['grid_x'][0]:g}x to {pz['grid_x'][-1]:g}x); the max sustainable rate is where "
                      "availability crosses the threshold (log-linear between the grid points around it).", "",
                      f"| threshold | {st} (x capacity) | greedy | learned | ratio learned / {st} | paper |",
                      "|---:|---:|---:|---:|---:|---|"]
            for thr, row in pz["msr"].items():
                lx = [x["x"] for x in row["learned"]]
                lines.append(f"| {thr} | {row['static'][st]['x']:.2f} | {row['static']['greedy']['x']:.2f} | "
                             f"{np.mean(lx):.2f} ± {np.std(lx):.2f} | {_f2(row['ratio_learned'])}x | "
                             f"{PAPER['max_sustainable_rate']:g}x |")
            ratios = [row["ratio_learned"]["mean"] for row in pz["msr"].values()]
            thr_s = list(pz["msr"])
            smallest = [k for k in next(iter(pz["msr"].values()))["static"] if k.startswith("static:")]
            caps = {k: next(iter(pz["msr"].values()))["static"][k]["x"] for k in smallest}
            best_static = max(caps, key=caps.get)
            lx0 = float(np.mean([x["x"] for x in next(iter(pz["msr"].values()))["learned"]]))
            lines += ["", f"Where the paper's {PAPER['max_sustainable_rate']:g}x falls: "
                      + P_where(PAPER["max_sustainable_rate"], [float(t) for t in thr_s], ratios, "threshold") + ". "
                      + f"Why ours differs: the ratio is limited by how much more load the fastest model sustains "
                        f"than {st} (here {best_static} sustains {caps[best_static]:.2f}x at availability "
                        f"{thr_s[0]}, and the learned router {lx0:.2f}x, {lx0 / max(caps[best_static], 1e-9):.0%} of "
                        f"that); this is set by the profile's latency table, the deadlines and the placement "
                        f"`{m['placement']}` more than by the router, and it moves with the threshold.",
                      "", _below_line(doc, name, "availability_vs_rate", "availability", "greedy", "Loads",
                                      lambda x: f"{x:.3g}x"),
                      "", _below_line(doc, name, "availability_vs_rate", "performance", "best static", "Loads",
                                      lambda x: f"{x:.3g}x"),
                      "", f"![availability and performance vs load](figures/poisson_{name}.png)", ""]
        if "bursty" in m:
            b = m["bursty"]
            ks = b["k"]
            tab = b["table"]
            lines += [f"Bursty workloads ({b['workload']}), mean load k x capacity; windows of {m['window_s']:g} s.", "",
                      f"| k | windows >= 96%: learned / {st} | windows >= 98%: learned / {st} | goodput per GPU: learned "
                      f"on {m['n_gpus']} / {st} on {2 * m['n_gpus']} | performance learned | greedy | {st} | "
                      f"GPUs {st} needs to match |",
                      "|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for k in ks:
                r = tab[str(k)]
                lines.append(f"| {k:g} | {_f2(r['ratio_frac_windows_ge_96'])} | {_f2(r['ratio_frac_windows_ge_98'])} | "
                             f"{_f2(r['ratio_goodput_per_gpu'])} | {_f2(r['learned']['performance'])} | "
                             f"{r['greedy']['performance']:.3f} | {r[st]['performance']:.3f} | "
                             f"{r['gpus_static_large_needs_to_match_learned']} |")
            lines.append("")
            for key, pname, what in (("ratio_frac_windows_ge_96", "frac_windows_ge_96", "windows >= 96% ratio"),
                                     ("ratio_frac_windows_ge_98", "frac_windows_ge_98", "windows >= 98% ratio"),
                                     ("ratio_goodput_per_gpu", "goodput_per_gpu", "goodput-per-GPU ratio")):
                ys = [tab[str(k)][key]["mean"] for k in ks]
                lines.append(f"- Paper {PAPER[pname]:g}x ({what}): " + P_where(PAPER[pname], ks, ys) + ". "
                             + _why(ys, PAPER[pname], what))
            lines += ["", _below_line(doc, name, "bursty", "performance", "greedy", "Loads k", lambda k: f"{k:g}"),
                      "", _below_line(doc, name, "bursty", "performance", "best static", "Loads k", lambda k: f"{k:g}"),
                      "",
                      f"![bursty workloads](figures/bursty_{name}.png)", ""]
        if "autoscaler" in m:
            a = m["autoscaler"]
            lines += [f"Autoscaler: {st} only, pool of {a['pool_gpus']} GPUs, {a['initial']} replicas at the start, "
                      f"spin-up {a['spinup_s']:g} s, cool-down {a['cooldown_s']:g} s, decisions every {a['interval_s']:g} s "
                      f"on `{a['metric']}`. It runs for every setting (fewest replicas in {a['mins']}) x (load per replica "
                      f"`autoscale_target` in {a['targets']}); at each k it is shown at its best setting (highest "
                      f"performance) whose GPU-seconds are at most the learned router's ({m['n_gpus']} GPUs x the span "
                      f"of arrivals): equal cost or less. Quality per GPU-second is reported for both. A burst is a "
                      f"window among the run's busiest {1 - a['burst']['quantile']:.0%}; it is missed when its "
                      f"availability is below {a['burst']['threshold']:g}.", "",
                      "| k | GPU-s: learned | autoscaler | performance: learned | autoscaler | availability: learned | "
                      "autoscaler | bursts missed: learned | autoscaler | quality / GPU-s: learned | autoscaler | setting |",
                      "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
            for k, r in a["table"].items():
                l, e = r["learned"], r["autoscaler_best_within_budget"]
                note = (f"min {e['autoscale_min']}, target {e['autoscale_target']:g}"
                        + ("" if e["within_budget"] else " (no setting within budget: the cheapest)"))
                lines.append(f"| {float(k):g} | {l['gpu_seconds']['mean']:.0f} | {e['gpu_seconds']:.0f} | "
                             f"{_f2(l['performance'])} | {e['performance']:.3f} | {_f2(l['availability'])} | "
                             f"{e['availability']:.3f} | {_f2(l['frac_bursts_missed'])} | {e['frac_bursts_missed']:.3f} | "
                             f"{_f2(l['quality_goodput_per_gpu_second'])} | {e['quality_goodput_per_gpu_second']:.3f} | "
                             f"{note} |")
            better = [float(k) for k, r in a["table"].items()
                      if r["learned"]["performance"]["mean"] > r["autoscaler_best_within_budget"]["performance"]]
            lines += ["", "The learned router's performance is above the autoscaler's best within the same GPU-seconds "
                      "at k = " + (", ".join(f"{k:g}" for k in better) or "no load") + f" (of {len(a['table'])} loads).",
                      "", f"![autoscaler](figures/autoscaler_{name}.png)", ""]
    if "extras" in doc:
        lines += extras_report(doc)
    return "\n".join(lines)


def P_where(value, xs, ys, x_name="k"):
    from bes_jax.eval.protocol import where_on_curve

    return where_on_curve(value, xs, ys, x_name)


def extras_report(doc) -> list:
    x = doc["extras"]
    label_w, base_cols = x["workload"], x["base_cols"]
    fmt = lambda v: _f2(v) if isinstance(v, dict) else f"{v:.3f}"
    train_note = (f"Learned columns: mean ± std over the {len(doc['seeds'])} training seeds; baselines: mean over "
                  f"the {len(doc['eval_seeds'])} evaluation seeds.")
    lines = [f"### Extras (mode `{x['mode']}`, request-level batching)", ""]
    if "placement" in doc:
        placement = doc["placement"]["performance"]
        lines += [f"#### Placement ({label_w}; performance)", "",
                  "| placement | " + " | ".join(placement["concurrent"]) + " |",
                  "|---|" + "---:|" * len(placement["concurrent"])]
        for pl, row in placement.items():
            lines.append(f"| {pl} | " + " | ".join(fmt(v) for v in row.values()) + " |")
    lines += ["", f"#### Latency-weight trade-off ({label_w}; each weight trains its own router)", "",
              "| latency_weight | quality (hard reward, no latency term) | p50 latency (s) | availability |", "|---:|---:|---:|---:|"]
    for pt in doc["latency_weight_tradeoff"]["points"]:
        lines.append(f"| {pt['latency_weight']:g} | {_f2(pt['quality'])} | {_f2(pt['latency_p50'])} | {_f2(pt['availability'])} |")
    lines += ["", f"#### Hard vs soft deadlines ({label_w}; performance)", "", "| router / reward | performance |", "|---|---:|"]
    lines += [f"| {k} | {_f2(v)} |" for k, v in doc["deadline_kinds"]["performance"].items()]
    split = x["trace_split"]
    lines += ["", "#### Robustness to the arrival pattern, against a router trained on the target (performance)", "",
              f"Every router is trained with the default config except its training family: Poisson only, the default "
              f"Poisson + Gamma + MAF family, or the target (`train_family.kinds=[maf]`, or `[trace]` on the first "
              f"{split:.0%} of the Azure trace's arrivals, which the test never replays). {train_note}", "",
              "| test workload | trained on Poisson only | trained on the default family | trained on the target | "
              + " | ".join(base_cols) + " | target router trained on |", "|---|" + "---:|" * (3 + len(base_cols)) + "---|"]
    for lbl, row in doc["robustness_arrivals"].items():
        lines.append(f"| {lbl} | " + " | ".join(fmt(row[k]) for k in ("trained on Poisson only",
                                                                         "trained on the default family (Poisson, Gamma, MAF)",
                                                                         "trained on the target"))
                     + " | " + " | ".join(fmt(row[k]) for k in base_cols) + f" | {row['target training']} |")
    ptd = doc["per_task_deadlines"]
    tasks = ", ".join(ptd["tasks"])
    lines += ["", f"#### Per-task deadlines ({label_w}; performance under each deadline set)", "",
              f"Each non-default deadline set trains its own router (`sim.deadlines=[...]`); the default router is "
              f"tested unchanged under every set. {train_note}", "",
              f"| deadline set | deadlines (s): {tasks} | trained on these deadlines | trained on the default deadlines | "
              + " | ".join(base_cols) + " |", "|---|---|" + "---:|" * (2 + len(base_cols))]
    for vname, row in ptd["variants"].items():
        lines.append(f"| {vname} | " + ", ".join(f"{v:g}" for v in row["deadlines_s"]) + " | "
                     + " | ".join(fmt(row[k]) for k in ("trained on these deadlines", "trained on the default deadlines"))
                     + " | " + " | ".join(fmt(row[k]) for k in base_cols) + " |")
    sc = doc["deadline_scale_sweep"]
    lo, hi = x["deadline_train_range"]
    ranged_key = f"learned (trained on scales {lo:g}-{hi:g})"
    lines += ["", f"Deadline-scale sweep (every task's deadline x scale). One router is trained at scale 1; the other "
              f"draws a scale per training workload, log-uniform in [{lo:g}, {hi:g}]:", "",
              f"| scale | learned (trained at 1) | learned (trained on {lo:g}-{hi:g}) | " + " | ".join(base_cols) + " |",
              "|---:|" + "---:|" * (2 + len(base_cols))]
    lc, lr = sc["performance"]["learned (trained at scale 1)"], sc["performance"][ranged_key]
    for i, s in enumerate(sc["scales"]):
        lines.append(f"| {s:g} | {lc['mean'][i]:.2f} ± {lc['std'][i]:.2f} | {lr['mean'][i]:.2f} ± {lr['std'][i]:.2f} | "
                     + " | ".join(f"{sc['performance'][k][i]:.3f}" for k in base_cols) + " |")
    mix = doc["task_mix_shift"]["performance"]
    mix_cols = [c for c in next(iter(mix.values())) if c.startswith("trained")]
    lines += ["", "![performance vs deadline scale](figures/deadline_scale.png)", "",
              f"#### Task-mix shift at test time ({label_w}, task mix over {tasks}; performance)", "",
              f"Routers trained with one fixed task mix or the default randomised mixes, tested on the training mix and "
              f"on the shifted one; the router trained on the shifted mix is the target. {train_note}", "",
              "| test mix | " + " | ".join(mix_cols) + " | " + " | ".join(base_cols) + " |",
              "|---|" + "---:|" * (len(mix_cols) + len(base_cols))]
    for lbl, row in mix.items():
        lines.append(f"| {lbl} | " + " | ".join(fmt(row[k]) for k in list(mix_cols) + base_cols) + " |")
    lines.append("")
    return lines


def merge_kept_modes(path: Path, curves: list, results: dict):
    """``(curves, results)`` with what ``path`` (an earlier results.json) holds for the modes this
    run did not rerun: their curve records, mode info, sections and provenance, and the top-level
    results (the extras' tables) this run did not produce."""
    if not path.exists():
        raise SystemExit(f"--merge: {path} does not exist (nothing to keep; run without --merge)")
    try:
        old = json.loads(path.read_text())
        old_modes, old_curves = dict(old["modes"]), list(old["curves"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise SystemExit(f"--merge: {path}: not a results.json written by this script ({e})") from None
    rerun = set(results["modes"])
    kept = [m for m in old_modes if m not in rerun]
    old_prov = old.get("provenance") or {}
    fallback = {"git_commit": old.get("meta", {}).get("git_commit"), "git_dirty": old.get("meta", {}).get("git_dirty"),
                "command": old.get("command")}
    merged = dict(results)
    merged["modes"] = {**{m: old_modes[m] for m in kept}, **results["modes"]}
    merged["provenance"] = {**{m: old_prov.get(m, fallback) for m in kept}, **results["provenance"]}
    merged["sections_run"] = [x for x in old.get("sections_run", []) if x.split(":")[0] in kept] + results["sections_run"]
    for k, v in old.items():
        if k not in merged and k not in ("meta", "curves"):
            merged[k] = v
    return [r for r in old_curves if r.get("mode") in kept] + curves, merged


def render(out_dir: Path | None) -> int:
    """`--render`: the section rewritten from an existing results.json (after a change to the
    report's text or rules), with no experiment run."""
    from bes_jax import REPO_ROOT
    from bes_jax.eval.report import replace_section

    out_dir = out_dir or REPO_ROOT / "docs"
    path = out_dir / "results.json"
    try:
        doc = json.loads(path.read_text())
        section = report_section(doc)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"--render: {path}: not a results.json written by this script ({type(e).__name__}: {e})") from None
    replace_section(out_dir / "results.md", "## Paper experiments (`scripts/reproduce.py`)", section)
    print(f"rewrote the paper-experiments section of {out_dir / 'results.md'} from {path}")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=["small", "full"], default="small")
    ap.add_argument("--config", help="another experiment YAML (default bes_jax/conf/experiment/SCALE.yaml)")
    ap.add_argument("--only", help="comma-separated sections (poisson, bursty, autoscaler, extras), mode names "
                                   "or mode:section; default: everything")
    ap.add_argument("--out-dir", help="where results.md, results.json and figures/ go (default docs/)")
    ap.add_argument("--merge", action="store_true",
                    help="with --only: keep the records of every mode not rerun from the existing results.json "
                         "(each mode's commit and command are recorded under `provenance`)")
    ap.add_argument("--train-jobs", type=int, default=None,
                    help="worker processes that train router sets while this process evaluates (0: train here, "
                         "one set at a time); default: one per usable core beyond the first, up to 2, on a CPU; 0 on an accelerator")
    ap.add_argument("--render", action="store_true",
                    help="run nothing: rewrite results.md's section from the results.json in --out-dir (figures kept)")
    args = ap.parse_args(argv)
    if args.render:
        return render(Path(args.out_dir) if args.out_dir else None)
    if args.train_jobs is not None and args.train_jobs < 0:
        ap.error(f"--train-jobs {args.train_jobs}: need >= 0")
    if args.merge and not args.only:
        ap.error("--merge needs --only (without it every mode is rerun and nothing is kept)")
    argv_used = sys.argv[1:] if argv is None else list(argv)
    from omegaconf import OmegaConf

    from bes_jax import CONF_DIR
    from bes_jax.env.devices import use_host_devices

    config_path = Path(args.config) if args.config else CONF_DIR / "experiment" / f"{args.scale}.yaml"
    exp = OmegaConf.load(config_path)
    # a learner that splits its members over devices (es.devices / pqn.devices in a mode's
    # train_overrides) needs that many CPU devices, asked for before JAX starts
    wanted = []
    for m in exp.modes:
        for o in m.get("train_overrides", []) or []:
            name, _, value = str(o).partition("=")
            if name in ("es.devices", "pqn.devices"):
                if not value.isdigit():
                    raise SystemExit(f"{config_path}: mode {m.get('name')!r} train_overrides {str(o)!r}: "
                                     f"{name} must be a positive integer")
                wanted.append(int(value))
    if wanted and max(wanted) > 1:
        use_host_devices(max(wanted))

    import jax.numpy as jnp
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bes_jax import REPO_ROOT
    from bes_jax.config import compose_train_config
    from bes_jax.env import make_serving_env
    from bes_jax.eval import protocol as P
    from bes_jax.eval.experiments import TrainedRouters, evaluate_variants, evaluate_variants_seeds
    from bes_jax.eval.train_pool import TrainingPool, default_jobs
    from bes_jax.eval.report import replace_section
    from bes_jax.eval.rollout import eval_config
    from bes_jax.eval.sweep import sweep_rates
    from bes_jax.agents.training import LEARNERS
    from bes_jax.routers import greedy, static, uniform_random
    from bes_jax.workloads.bursty import bursty_workload, describe

    import jax
    train_jobs = args.train_jobs if args.train_jobs is not None else (
        default_jobs() if jax.default_backend() == "cpu" else 0)  # workers would share one accelerator
    out_dir = Path(args.out_dir) if args.out_dir else REPO_ROOT / "docs"
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    only = None if not args.only else {s.strip() for s in args.only.split(",") if s.strip()}
    modes = {str(m.name): m for m in exp.modes}
    jobs = select_jobs(exp.modes, only)
    for mname, sec in jobs:
        if sec in REQUEST_ONLY and str(modes[mname].batching) != "request":
            raise ValueError(f"mode {mname!r}: section {sec!r} runs in request-level batching only")
    ordered = [j for j in jobs if j[1] != "extras"] + [j for j in jobs if j[1] == "extras"]  # extras last
    run_modes = list(dict.fromkeys(m for m, _ in ordered))
    plan = []
    for mname, sec in ordered:
        cost = modes[mname].get("cost_s", {}) or {}
        if f"{mname}:train" not in dict(plan):
            plan.append((f"{mname}:train", float(cost.get("train", 60))))
        plan.append((f"{mname}:{sec}", float(cost.get(sec, 60))))
    prog = Progress(plan)
    say = prog.say
    say(f"plan: {', '.join(k for k, _ in plan)}; estimated {sum(v for _, v in plan) / 60:.1f} min; "
        + (f"{train_jobs} worker process(es) train router sets meanwhile" if train_jobs else "training here"))

    seeds = [int(k) for k in exp.seeds]
    eval_seeds = tuple(int(k) for k in exp.eval_seeds)
    n, window_s = int(exp.n_decisions), float(exp.window_s)
    thresholds = [float(x) for x in exp.poisson.thresholds]
    curves = []
    results = {"scale": args.scale, "config": str(config_path.relative_to(REPO_ROOT) if config_path.is_relative_to(REPO_ROOT)
                                                  else config_path),
               "seeds": seeds, "eval_seeds": list(eval_seeds), "n_decisions": n, "window_s": window_s,
               "sections_run": [f"{m}:{s}" for m, s in ordered], "modes": {}, "train_jobs": train_jobs,
               "command": "python scripts/reproduce.py --scale " + args.scale
               + (f" --config {args.config}" if args.config else "") + (f" --only {args.only}" if args.only else "") + (" --merge" if args.merge else "")}
    bursty_cfg = exp.bursty
    bursty_slices = [dict(minutes=[int(x) for x in sl.minutes],
                          time_scale="auto" if str(sl.time_scale) == "auto" else float(sl.time_scale))
                     for sl in bursty_cfg.slices]
    ks = [float(k) for k in bursty_cfg.k]
    results["protocol"] = {
        "tuning_set": "each mode's bes-train `tuning.workloads` (modes.*.tuning_set): the learner's defaults were "
                      "chosen on these only",
        "training": "each mode's bes-train `train_family` (modes.*.training_family)",
        "test_set": {"poisson": "Poisson arrivals, uniform task mix, at every grid load",
                     "bursty": [f"{bursty_cfg.path} minutes {sl['minutes'][0]}-{sl['minutes'][1]}, time scale "
                                + ("auto (one pass over the slice = the run at k = 1)" if sl["time_scale"] == "auto"
                                   else f"x{sl['time_scale']:g}") for sl in bursty_slices],
                     "bursty_k": ks,
                     "extras": "see the extras section (MAF test minutes and the Azure code trace's held-out half)"},
        "capacity": "static serving on the largest model, max_sustainable_rate at availability 0.99 "
                    "(bes_jax.eval.capacity.CAPACITY_PROTOCOL)"}

    class Mode:
        """One serving model and profile: its trained routers, baselines and evaluation env."""

        def __init__(self, node):
            self.node, self.name = node, str(node.name)
            self.overrides = list(node.train_overrides)
            cfg = compose_train_config(self.overrides)
            self.setup, self.learned = pool.get(self.overrides)
            s = self.setup
            self.profile, self.sim_cfg, self.cap = s["profile"], s["sim_cfg"], float(s["cap_large"])
            self.batching = self.sim_cfg.batching
            if self.batching != str(node.batching):
                raise ValueError(f"mode {self.name!r}: batching {node.batching!r} in the YAML, "
                                 f"{self.batching!r} from its train_overrides")
            self.window_s = float(node.get("window_s", None) or window_s)  # metric windows of this mode
            self.large = self.profile.n_models - 1
            self.stat = f"static:{self.profile.model_names[self.large]}"
            self.baselines = {f"static:{m}": static(i, f"static:{m}") for i, m in enumerate(self.profile.model_names)}
            self.baselines.update({"random": uniform_random(), "greedy": greedy()})
            keep = node.get("baselines", None)  # a subset to run (greedy and static-largest always)
            if keep is not None:
                unknown = [b for b in keep if b not in self.baselines]
                if unknown:
                    raise ValueError(f"mode {self.name!r}: baselines {unknown} unknown; choose from {list(self.baselines)}")
                self.baselines = {b: r for b, r in self.baselines.items() if b in set(keep) | {"greedy", self.stat}}
            self.env = make_serving_env(self.profile, eval_config(self.sim_cfg, n))
            self.info = {"profile": self.profile.name, "batching": self.batching, "train_overrides": self.overrides,
                         "capacity_static_large_req_s": self.cap, "static_large": self.stat,
                         "n_gpus": int(self.sim_cfg.n_gpus), "placement": self.sim_cfg.placement,
                         "window_s": self.window_s,
                         "learner": s["learner_name"], "learner_overrides": [o for o in self.overrides
                                                                             if o.split("=")[0].split(".")[0] in LEARNERS],
                         "train_iterations": _train_length(cfg, s["learner_name"])}
            self._bursty = None
            from omegaconf import OmegaConf as _OC
            tf = cfg.train_family
            self.info["tuning_set"] = {k: _OC.to_container(v, resolve=True) for k, v in cfg.tuning.workloads.items()}
            self.info["training_family"] = {"kinds": list(tf.kinds), "rate_range_x": list(tf.rate_range),
                                            "maf_path": str(tf.maf_path), "maf_minutes": list(tf.maf_minutes)}

        def time_scale(self, sl):
            """A slice's time scale; ``auto``: one pass over the slice takes n_decisions / capacity
            seconds (as long as the run at k = 1), so every mode sees the same bursts per request."""
            ts = sl["time_scale"]
            if ts == "auto":
                return (sl["minutes"][1] - sl["minutes"][0]) * 60.0 * self.cap / n
            return float(ts)

        def bursty_label(self):
            return "bursty: " + "; ".join(describe(bursty_cfg.path, sl["minutes"], None, self.time_scale(sl))
                                          for sl in bursty_slices)

        def rec(self, experiment, workload, load_x, router, metric, values, seeds_=None, **extra):
            return P.curve_record(experiment, self.batching, workload, self.profile.name, load_x, router, metric,
                                  values, seeds_, mode=self.name, **extra)

        def reports(self, router, params_list, env=None):
            """``[variant][eval seed]`` reports; for trained routers (a `TrainedRouters` list)
            ``[training seed][variant][eval seed]``, all seeds in one program."""
            if isinstance(router, TrainedRouters):
                return evaluate_variants_seeds(env or self.env, router, params_list, eval_seeds, n, self.window_s,
                                               self.profile.model_names)
            return evaluate_variants(env or self.env, router, params_list, eval_seeds, n, self.window_s,
                                     self.profile.model_names)

        def bursty_reports(self):
            """``{router: reports[variant][seed]}`` (learned: a list over training seeds) on the
            bursty workloads, variants ordered slice-major then k; computed once."""
            if self._bursty is None:
                wps = [bursty_workload(bursty_cfg.path, k=k, capacity=self.cap, minutes=sl["minutes"],
                                       time_scale=self.time_scale(sl), n_tasks=self.profile.n_tasks)
                       for sl in bursty_slices for k in ks]
                self.bursty_wps = wps
                self.bursty_params = [self.env.make_params(wp) for wp in wps]
                reps = {name: self.reports(r, self.bursty_params) for name, r in self.baselines.items()}
                reps["learned"] = self.reports(self.learned, self.bursty_params)
                self._bursty = reps
            return self._bursty

    def pool_k(reps, key, ki):
        """Mean of `key` over the bursty slices and evaluation seeds at k index `ki`."""
        return float(np.mean([r[key] for si in range(len(bursty_slices)) for r in reps[si * len(ks) + ki]]))

    # ---------------------------------------------------------------- sections
    def run_poisson(md):
        pc = md.node.get("poisson", None) or exp.poisson
        grid = P.load_grid(float(pc.lo_x), float(pc.hi_x), int(pc.per_doubling))
        rates = md.cap * grid
        sw = lambda r: sweep_rates(md.profile, md.sim_cfg, r, rates, n_decisions=n, seeds=eval_seeds, window_s=md.window_s)
        out = {name: sw(r) for name, r in md.baselines.items()}
        lp = sw(md.learned)  # every training seed in one program: [seed, rate, eval seed]
        curve = {name: {k: o[k].mean(1) for k in ("availability", "performance")} for name, o in out.items()}
        curve["learned"] = {k: lp[k].mean(2) for k in ("availability", "performance")}
        wl = "poisson, uniform task mix"
        for name, c in curve.items():
            for metric in ("availability", "performance"):
                for i, x in enumerate(grid):
                    v = c[metric][:, i] if name == "learned" else c[metric][i]
                    curves.append(md.rec("availability_vs_rate", wl, x, name, metric, v,
                                         None if name == "learned" else len(eval_seeds)))
        msr = {}
        for thr in thresholds:
            row = {name: P.threshold_crossing(grid, c["availability"], thr) for name, c in curve.items() if name != "learned"}
            row_l = [P.threshold_crossing(grid, a, thr) for a in curve["learned"]["availability"]]
            base = row[md.stat]["x"]
            ratios = [x["x"] / base if base > 0 else np.nan for x in row_l]
            g_ratio = row["greedy"]["x"] / base if base > 0 else np.nan
            for name, v in row.items():
                curves.append(md.rec("max_sustainable_rate", wl, None, name, f"load_x@{thr:g}", v["x"], len(eval_seeds),
                                     threshold=thr, bound=v["bound"]))
            curves.append(md.rec("max_sustainable_rate", wl, None, "learned", f"load_x@{thr:g}", [x["x"] for x in row_l],
                                 threshold=thr, bound=sorted({x["bound"] for x in row_l})))
            curves.append(md.rec("max_sustainable_rate_ratio", wl, None, "learned", f"ratio_vs_{md.stat}@{thr:g}", ratios,
                                 threshold=thr))
            curves.append(md.rec("max_sustainable_rate_ratio", wl, None, "greedy", f"ratio_vs_{md.stat}@{thr:g}", g_ratio,
                                 len(eval_seeds), threshold=thr))
            msr[f"{thr:g}"] = {"static": {k: v for k, v in row.items()}, "learned": row_l,
                               "ratio_learned": _ms(ratios), "ratio_greedy": g_ratio}
        md.info["poisson"] = {"grid_x": grid.tolist(), "per_doubling": int(pc.per_doubling), "msr": msr}
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, metric in zip(axes, ("availability", "performance")):
            for name, c in curve.items():
                if name == "learned":
                    mu, sd = c[metric].mean(0), c[metric].std(0)
                    ax.plot(grid, mu, lw=2.5, label=f"learned ({len(seeds)} seeds)")
                    ax.fill_between(grid, mu - sd, mu + sd, alpha=0.25)
                else:
                    ax.plot(grid, c[metric], lw=1.2, label=name)
            if metric == "availability":
                for thr in thresholds:
                    ax.axhline(thr, color="k", ls=":", lw=0.8)
            ax.set_xscale("log"); ax.set_xlabel(f"Poisson load (x {md.stat} capacity, {md.cap:.2f} req/s)")
            ax.set_ylabel(metric); ax.grid(alpha=0.3); ax.legend(fontsize=7)
        fig.suptitle(f"{md.profile.name}, {md.batching} batching", fontsize=9)
        fig.tight_layout(); fig.savefig(fig_dir / f"poisson_{md.name}.png", dpi=110); plt.close(fig)

    def run_bursty(md):
        reps = md.bursty_reports()
        wl = md.bursty_label()
        g = int(md.sim_cfg.n_gpus)
        table = {}
        for ki, k in enumerate(ks):
            row = {}
            for name in md.baselines:
                row[name] = {m: pool_k(reps[name], m, ki) for m in BURSTY_METRICS}
                for m in BURSTY_METRICS:
                    curves.append(md.rec("bursty", wl, k, name, m, row[name][m], len(eval_seeds), n_gpus=g))
            per_seed = {m: [pool_k(rl, m, ki) for rl in reps["learned"]] for m in BURSTY_METRICS}
            row["learned"] = {m: _ms(v) for m, v in per_seed.items()}
            for m in BURSTY_METRICS:
                curves.append(md.rec("bursty", wl, k, "learned", m, per_seed[m], n_gpus=g))
            for m in ("frac_windows_ge_96", "frac_windows_ge_98"):
                base = row[md.stat][m]
                r = [x / base if base > 0 else np.nan for x in per_seed[m]]
                row[f"ratio_{m}"] = _ms(r) if base > 0 else {"mean": None, "std": None, "seeds": len(r),
                                                             "note": f"{md.stat} has no such window"}
                curves.append(md.rec("bursty_ratio", wl, k, "learned", f"ratio_{m}_vs_{md.stat}", r, n_gpus=g))
                gb = row["greedy"][m] / base if base > 0 else np.nan
                curves.append(md.rec("bursty_ratio", wl, k, "greedy", f"ratio_{m}_vs_{md.stat}", gb, len(eval_seeds), n_gpus=g))
            table[k] = row
        # quality goodput per GPU against static-largest on more GPUs
        gpu_counts = [int(x) for x in (md.node.get("static_gpu_counts", None) or [2 * g])]
        if 2 * g not in gpu_counts:
            gpu_counts.append(2 * g)
        by_gpus = {}
        for gg in sorted(gpu_counts):
            c = dataclasses.replace(md.sim_cfg, n_gpus=gg, replicas=tuple([0] * md.large + [gg]))
            e = make_serving_env(md.profile, eval_config(c, n))
            params = [e.make_params(wp) for wp in md.bursty_wps]
            rg = md.reports(md.baselines[md.stat], params, e)
            by_gpus[gg] = {ki: {m: pool_k(rg, m, ki) for m in ("quality_goodput_per_gpu", "performance", "availability")}
                           for ki in range(len(ks))}
            for ki, k in enumerate(ks):
                for m, v in by_gpus[gg][ki].items():
                    curves.append(md.rec("goodput_per_gpu", wl, k, md.stat, m, v, len(eval_seeds), n_gpus=gg))
        for ki, k in enumerate(ks):
            learned_gp = [pool_k(rl, "quality_goodput_per_gpu", ki) for rl in reps["learned"]]
            base = by_gpus[2 * g][ki]["quality_goodput_per_gpu"]
            r = [x / base if base > 0 else np.nan for x in learned_gp]
            table[k]["ratio_goodput_per_gpu"] = _ms(r)
            curves.append(md.rec("goodput_per_gpu_ratio", wl, k, "learned", f"ratio_vs_{md.stat}_on_{2 * g}_gpus", r,
                                 n_gpus=g, baseline_gpus=2 * g))
            lp = table[k]["learned"]["performance"]["mean"]
            match = [gg for gg in sorted(by_gpus) if by_gpus[gg][ki]["performance"] >= lp]
            table[k]["gpus_static_large_needs_to_match_learned"] = match[0] if match else f"> {max(by_gpus)}"
        md.info["bursty"] = {"workload": wl, "k": ks, "table": {str(k): v for k, v in table.items()},
                             "static_large_by_gpus": {str(gg): {str(ks[ki]): v for ki, v in d.items()}
                                                      for gg, d in by_gpus.items()}}
        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        for ax, m in zip(axes, ("frac_windows_ge_96", "frac_windows_ge_98", "quality_goodput_per_gpu")):
            mu = [table[k]["learned"][m]["mean"] for k in ks]
            sd = [table[k]["learned"][m]["std"] for k in ks]
            ax.errorbar(ks, mu, yerr=sd, marker="o", lw=2.5, label=f"learned ({g} GPUs)")
            for name in ("greedy", md.stat):
                ax.plot(ks, [table[k][name][m] for k in ks], marker="o", ms=3, lw=1.2, label=f"{name} ({g} GPUs)")
            if m == "quality_goodput_per_gpu":
                ax.plot(ks, [by_gpus[2 * g][ki][m] for ki in range(len(ks))], marker="s", ms=3, lw=1.2,
                        label=f"{md.stat} ({2 * g} GPUs)")
            ax.set_xlabel(f"mean load k (x {md.stat} capacity)"); ax.set_ylabel(m); ax.grid(alpha=0.3); ax.legend(fontsize=7)
        fig.suptitle(f"bursty MAF workloads, {md.profile.name}, {md.batching} batching", fontsize=9)
        fig.tight_layout(); fig.savefig(fig_dir / f"bursty_{md.name}.png", dpi=110); plt.close(fig)

    def run_autoscaler(md):
        a = exp.autoscaler
        reps_l = md.bursty_reports()["learned"]
        g = int(md.sim_cfg.n_gpus)
        initial = None if a.get("initial", None) is None else int(a.initial)
        sim_a = dataclasses.replace(md.sim_cfg, autoscale=True, replicas=None, n_gpus=int(a.pool_gpus), autoscale_model=-1,
                                    autoscale_min=1, autoscale_initial=initial,
                                    autoscale_spinup_s=float(a.spinup_s), autoscale_cooldown_s=float(a.cooldown_s),
                                    autoscale_interval_s=float(a.interval_s), autoscale_metric=str(a.metric))
        env_a = make_serving_env(md.profile, eval_config(sim_a, n))
        # settings: (fewest replicas, load per replica), swept in one program
        settings = [(int(lo), float(t)) for lo in a.mins for t in a.targets]
        if any(lo > (initial or 1) for lo, _ in settings):
            raise ValueError(f"autoscaler.mins {list(a.mins)}: each must be <= autoscaler.initial ({initial})")
        params = []
        for wp in md.bursty_wps:
            p = env_a.make_params(wp)
            ap_ = p.autoscale
            params += [p.replace(autoscale=ap_.replace(min_replicas=jnp.asarray(lo, ap_.min_replicas.dtype),
                                                       target=jnp.asarray(t, ap_.target.dtype))) for lo, t in settings]
        reps_a = md.reports(md.baselines[md.stat], params, env_a)  # [workload x setting][seed]
        burst_kw = dict(quantile=float(a.burst_quantile), threshold=float(a.burst_threshold))
        frac_missed = lambda rs: _nanmean([P.missed_bursts(r, **burst_kw)["frac_missed"] for r in rs])
        wl = md.bursty_label()
        T, S = len(settings), len(bursty_slices)
        metrics_a = ("performance", "availability", "frac_bursts_missed", "gpu_seconds", "quality_goodput_per_gpu_second",
                     "mean_replicas", "n_scale_up")
        table = {}
        for ki, k in enumerate(ks):
            vi = [si * len(ks) + ki for si in range(S)]  # this k's workload variants
            lrep = lambda rl: [r for v in vi for r in rl[v]]
            l = {"performance": [float(np.mean([r["performance"] for r in lrep(rl)])) for rl in reps_l],
                 "availability": [float(np.mean([r["availability"] for r in lrep(rl)])) for rl in reps_l],
                 "frac_bursts_missed": [frac_missed(lrep(rl)) for rl in reps_l],
                 "gpu_seconds": [_nanmean([P.fixed_gpu_seconds(r, g) for r in lrep(rl)]) for rl in reps_l],
                 "quality_goodput_per_gpu_second": [float(np.mean([r["quality_goodput_per_gpu"] for r in lrep(rl)]))
                                                    for rl in reps_l]}
            by_s = []
            for si_, (lo, t) in enumerate(settings):
                rs = [r for v in vi for r in reps_a[v * T + si_]]
                row = {m: float(np.mean([r[m] for r in rs])) for m in metrics_a if m != "frac_bursts_missed"}
                row["frac_bursts_missed"] = frac_missed(rs)
                row.update(autoscale_min=lo, autoscale_target=t)
                by_s.append(row)
                for m in metrics_a:
                    curves.append(md.rec("autoscaler_by_setting", wl, k, "autoscaler", m, row[m], len(eval_seeds) * S,
                                         autoscale_min=lo, autoscale_target=t, pool_gpus=int(a.pool_gpus)))
            budget = float(np.mean(l["gpu_seconds"]))
            pick = P.best_within_budget([r["gpu_seconds"] for r in by_s], [r["performance"] for r in by_s], budget)
            best = by_s[pick["index"]]
            for m in metrics_a:
                curves.append(md.rec("autoscaler", wl, k, "autoscaler", m, best[m], len(eval_seeds) * S,
                                     autoscale_min=best["autoscale_min"], autoscale_target=best["autoscale_target"],
                                     within_budget=pick["within_budget"], budget_gpu_seconds=budget,
                                     pool_gpus=int(a.pool_gpus), spinup_s=float(a.spinup_s)))
            for m, v in l.items():
                curves.append(md.rec("autoscaler", wl, k, "learned", m, v, n_gpus=g))
            table[k] = {"learned": {m: _ms(v) for m, v in l.items()}, "budget_gpu_seconds": budget,
                        "autoscaler_best_within_budget": {**best, "within_budget": pick["within_budget"]},
                        "autoscaler_by_setting": by_s}
        md.info["autoscaler"] = {"pool_gpus": int(a.pool_gpus), "initial": initial, "spinup_s": float(a.spinup_s),
                                 "cooldown_s": float(a.cooldown_s), "interval_s": float(a.interval_s),
                                 "metric": str(a.metric), "mins": [int(x) for x in a.mins],
                                 "targets": [float(t) for t in a.targets], "burst": burst_kw,
                                 "table": {str(k): v for k, v in table.items()}}
        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        for ax, m in zip(axes, ("performance", "availability", "frac_bursts_missed")):
            ax.errorbar(ks, [table[k]["learned"][m]["mean"] for k in ks], yerr=[table[k]["learned"][m]["std"] for k in ks],
                        marker="o", lw=2.5, label=f"learned ({g} GPUs)")
            ax.plot(ks, [table[k]["autoscaler_best_within_budget"][m] for k in ks], marker="s", lw=1.5,
                    label=f"autoscaler {md.stat} (best within the same GPU-s)")
            ax.set_xlabel("mean load k (x capacity)"); ax.set_ylabel(m); ax.grid(alpha=0.3); ax.legend(fontsize=7)
        fig.suptitle(f"autoscaler (spin-up {float(a.spinup_s):g} s, pool {int(a.pool_gpus)} GPUs) vs learned router", fontsize=9)
        fig.tight_layout(); fig.savefig(fig_dir / f"autoscaler_{md.name}.png", dpi=110); plt.close(fig)

    def run_extras(md):
        extras_section(md, exp, curves, results, fig_dir, say, pool, seeds=seeds, eval_seeds=eval_seeds, n=n,
                       window_s=window_s)

    runners = {"poisson": run_poisson, "bursty": run_bursty, "autoscaler": run_autoscaler, "extras": run_extras}

    # ---------------------------------------------------------------- run
    # every router set is queued first (each mode's, then the extras' variants); the pool's
    # workers train them while this process evaluates, the extras last (they need the most sets)
    with TrainingPool(seeds, train_jobs) as pool:
        for mname in run_modes:
            pool.submit(modes[mname].train_overrides, label=mname)
        for mname, sec in ordered:
            if sec == "extras":
                for lbl, ov in extras_trainings(exp.extras, modes[mname].train_overrides).items():
                    pool.submit(ov, label=f"{mname} extras: {lbl}")
        mds = {}
        for i, (mname, sec) in enumerate(ordered):
            if mname not in mds:
                prog.start(f"{mname}:train")
                mds[mname] = md = Mode(modes[mname])
                results["modes"][mname] = md.info
                say(f"{mname}: {md.profile.name}, {md.batching} batching, capacity of {md.stat} {md.cap:.3f} req/s, "
                    f"{len(seeds)} routers trained")
                prog.done(f"{mname}:train")
            prog.start(f"{mname}:{sec}")
            runners[sec](mds[mname])
            prog.done(f"{mname}:{sec}")
            if all(m != mname for m, _ in ordered[i + 1:]):
                del mds[mname]  # its routers, reports and compiled programs

    # ---------------------------------------------------------------- write
    P.check_records(curves)
    wall = time.perf_counter() - prog.t0
    meta = machine_meta(wall, args.scale, results["config"], argv_used)
    here = {"git_commit": meta["git_commit"], "git_dirty": meta["git_dirty"], "command": results["command"]}
    results["provenance"] = {m: here for m in results["modes"]}
    if args.merge:
        curves, results = merge_kept_modes(out_dir / "results.json", curves, results)
    doc = {"meta": meta, "curves": curves, **results}
    (out_dir / "results.json").write_text(json.dumps(doc, indent=1, default=float) + "\n")
    section = report_section(doc)
    md_path = out_dir / "results.md"
    replace_section(md_path, "## Paper experiments (`scripts/reproduce.py`)", section)
    say(f"wrote {out_dir / 'results.json'} ({len(curves)} curve records), {md_path} and {fig_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
