"""``bes-profile``: measure ``L[m, t, b]`` on a live pool and write a profile JSON.

For every model, task and measured batch size the pool runs the batch exactly as a worker would
(a greedy decode of the task's output length over prompts of the task's prompt length), after
warm-up runs, ``--repeats`` times, and keeps the median. Batch sizes not measured (see
``--batch-sizes``) are filled by linear interpolation between measured ones and the row is made
non-decreasing; the provenance block says which were measured.

Qualities are zero-shot accuracies of the real OPT models (../shared/docs/OPT_FACTS.md); a tiny
model borrows the numbers of the OPT size it stands in for.

Example::

    bes-profile --pool tiny --b-max 8 --repeats 5 --out profiles/tiny-cpu.json

``bes-profile --engine URL [URL ...] --out FILE`` profiles live OpenAI-compatible engines instead
(one per model, in pool order) and writes a continuous-batching profile
(:mod:`bes_jax.serving.engines.profiler`).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from bes_jax.profile import profile_from_dict
from bes_jax.serving.devices import hardware_name
from bes_jax.serving.models import POOL_PRESETS, PRESETS, param_count
from bes_jax.serving.pool import Pool

QUALITY_SOURCE = ("zero-shot accuracy / 100 from EleutherAI/lm-evaluation-harness commit "
                  "8a7077017886d5829a7c6a9265babcfdad2c707a, results/opt/opt-{125m,1.3b,6.7b}/*.json "
                  "(as transcribed in ../shared/docs/OPT_FACTS.md)")
#: zero-shot accuracy (%) of the real OPT models, OPT_FACTS.md
OPT_ACCURACY = {
    "arc_easy": {"opt-125m": 43.52, "opt-1.3b": 57.03, "opt-6.7b": 65.61},
    "piqa": {"opt-125m": 63.00, "opt-1.3b": 71.71, "opt-6.7b": 76.28},
    "winogrande": {"opt-125m": 50.28, "opt-1.3b": 59.75, "opt-6.7b": 65.27},
    "lambada": {"opt-125m": 37.90, "opt-1.3b": 57.93, "opt-6.7b": 67.71},
    "arc_challenge": {"opt-125m": 18.94, "opt-1.3b": 23.12, "opt-6.7b": 30.55},
    "sciq": {"opt-125m": 75.10, "opt-1.3b": 84.50, "opt-6.7b": 90.10},
}
#: (prompt tokens, output tokens) per task, per pool kind. The tiny lengths keep CPU batches short;
#: the opt lengths are typical zero-shot prompts with a short generated answer.
TASK_LENGTHS = {
    "tiny": {"arc_easy": (48, 4), "piqa": (40, 4), "winogrande": (32, 2), "lambada": (64, 6),
             "arc_challenge": (48, 4), "sciq": (64, 4)},
    "opt": {"arc_easy": (128, 8), "piqa": (96, 8), "winogrande": (64, 4), "lambada": (192, 16),
            "arc_challenge": (128, 8), "sciq": (256, 8)},
}
DEFAULT_TASKS = ("arc_easy", "piqa", "winogrande", "lambada")


def parse_batch_sizes(text: str | None, b_max: int) -> list[int]:
    """``"all"``/None = 1..B_max; else a comma list; 1 and B_max are always measured."""
    if not text or text == "all":
        return list(range(1, b_max + 1))
    sizes = {int(x) for x in str(text).split(",") if x.strip()}
    bad = [b for b in sizes if not 1 <= b <= b_max]
    if bad:
        raise ValueError(f"--batch-sizes {text!r}: {bad} outside 1..B_max={b_max}")
    return sorted(sizes | {1, b_max})


def fill_batch_sizes(measured: dict[int, float], b_max: int) -> np.ndarray:
    """Linear interpolation over batch size, then made non-decreasing (running maximum)."""
    bs = sorted(measured)
    row = np.interp(np.arange(1, b_max + 1), bs, [measured[b] for b in bs])
    return np.maximum.accumulate(row)


def measure_batch(pool: Pool, m: int, prompt_len: int, n_out: int, b: int, repeats: int, warmup: int,
                  rng: np.random.Generator, max_spread: float = 0.25, retries: int = 3) -> tuple[float, int]:
    """Median of ``repeats`` timed runs after ``warmup``; re-measured (up to ``retries`` more
    times) while the runs are unstable (interquartile range over median above ``max_spread``,
    e.g. another process took the cores), keeping the most stable attempt. Returns
    ``(median seconds, attempts)``."""
    vocab = min(256 + 4, pool.specs[m].vocab) if pool.weights == "random" else pool.tokenizer.vocab_size
    best = None
    for attempt in range(1 + max(0, retries)):
        times = []
        for i in range(warmup + repeats):
            prompts = rng.integers(4, vocab, size=(b, prompt_len)).tolist()
            t0 = time.perf_counter()
            pool.generate(m, prompts, n_out, 0)
            dt = time.perf_counter() - t0
            if i >= warmup:
                times.append(dt)
        med = float(np.median(times))
        q1, q3 = np.percentile(times, [25, 75])
        spread = float((q3 - q1) / med)
        if best is None or spread < best[1]:
            best = (med, spread)
        if spread <= max_spread:
            break
    return best[0], attempt + 1


def model_quality(model: str, task: str) -> float:
    ref = PRESETS[model].stands_in_for or model
    acc = OPT_ACCURACY.get(task, {}).get(ref)
    if acc is None:
        raise ValueError(f"no published quality for model {ref!r} on task {task!r} (known tasks: {sorted(OPT_ACCURACY)})")
    return acc / 100.0


def run_profile(*, pool_preset: str = "tiny", models=None, tasks=DEFAULT_TASKS, b_max: int = 8,
                batch_sizes: str | None = None, repeats: int = 5, warmup: int = 2,
                deadline_factor: float = 2.5, deadlines=None, lengths: dict | None = None,
                weights: str = "random", sources: dict | None = None, device: str = "auto",
                num_threads: int = 0, name: str | None = None, seed: int = 0, max_spread: float = 0.25,
                retries: int = 3, log=print) -> dict:
    """Measure and return a validated profile document (a dict)."""
    import torch
    import transformers
    models = list(models or POOL_PRESETS[pool_preset])
    tasks = list(tasks)
    kind = "tiny" if all(m.startswith("tiny") for m in models) else "opt"
    lengths = {**TASK_LENGTHS[kind], **(lengths or {})}
    for t in tasks:
        if t not in lengths:
            raise ValueError(f"task {t!r}: no prompt/output length known (give lengths for it)")
    sizes = parse_batch_sizes(batch_sizes, b_max)
    pool = Pool(models, weights=weights, sources=sources, placement="exclusive", n_gpus=1,
                queue_capacity=1, b_max=b_max, device=device, num_threads=num_threads, seed=seed,
                preset=pool_preset)
    rng = np.random.default_rng(seed)
    M, T = len(models), len(tasks)
    lat = np.zeros((M, T, b_max))
    raw: dict = {}
    unstable: dict = {}
    t_start = time.time()
    for mi, m in enumerate(models):
        for ti, t in enumerate(tasks):
            p_len, n_out = lengths[t]
            meas = {}
            for b in sizes:
                meas[b], tries = measure_batch(pool, mi, p_len, n_out, b, repeats, warmup, rng, max_spread, retries)
                if tries > 1:
                    unstable[f"{m}/{t}/b{b}"] = tries
            lat[mi, ti] = fill_batch_sizes(meas, b_max)
            raw[f"{m}/{t}"] = {str(b): round(v, 6) for b, v in meas.items()}
            log(f"{m:>9} {t:>11}: " + " ".join(f"b{b}={1000 * v:.1f}ms" for b, v in meas.items()))
    if deadlines is not None:
        dl = [float(x) for x in deadlines]
        if len(dl) != T:
            raise ValueError(f"--deadlines: need {T} values, one per task {tasks}")
        dl_note = "given on the command line"
    else:
        # the largest model alone meets them at low load (a batch of one) but not under load
        dl = [float(np.ceil(deadline_factor * lat[-1, ti, 0] * 1000) / 1000) for ti in range(T)]
        dl_note = (f"{deadline_factor} x the measured batch-of-one latency of the largest model "
                   f"({models[-1]}), rounded up to 1 ms")
    qual = [[model_quality(m, t) for t in tasks] for m in models]
    dev = pool.device
    interpolated = [b for b in range(1, b_max + 1) if b not in sizes]
    doc = {
        "name": name or f"{pool_preset}-{'gpu' if dev.startswith('cuda') else 'cpu'}",
        "hardware": {"name": hardware_name(dev), "device": dev, "torch_threads": torch.get_num_threads(),
                     "platform": platform.platform()},
        "models": [{"name": m, "params": param_count(PRESETS[m])} for m in models],
        "tasks": [{"name": t, "metric": "acc", "deadline_s": dl[ti], "prompt_len": lengths[t][0],
                   "output_len": lengths[t][1]} for ti, t in enumerate(tasks)],
        "B_max": b_max,
        "latency_s": lat.tolist(),
        "quality": qual,
        "provenance": {
            "latency": (f"measured with bes-profile (bes_jax.serving.profiler) on {hardware_name(dev)}: "
                        f"median of {repeats} runs after {warmup} warm-up runs of a whole batch "
                        f"(greedy decode of output_len tokens over prompt_len-token prompts), "
                        f"one batch at a time; batch sizes measured {sizes}"
                        + (f", {interpolated} linearly interpolated and made non-decreasing" if interpolated else "")),
            "quality": QUALITY_SOURCE + ("; tiny models borrow the numbers of the OPT size they stand in for: "
                                         + ", ".join(f"{m} -> {PRESETS[m].stands_in_for}" for m in models)
                                         if kind == "tiny" else ""),
            "deadlines": dl_note,
            "params": "computed from the model dimensions (tied embeddings, 2 extra position rows)",
            "tool": "bes-profile",
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "repeats": repeats,
            "stability": (f"a point whose runs had an interquartile range above {max_spread} x median was "
                          f"re-measured up to {retries} more times, keeping the most stable attempt"),
            "remeasured_points": unstable,
            "warmup": warmup,
            "batch_sizes_measured": sizes,
            "batch_sizes_interpolated": interpolated,
            "torch_version": torch.__version__,
            "transformers_version": transformers.__version__,
            "python_version": platform.python_version(),
            "pool_preset": pool_preset,
            "weights": weights if weights != "random" else "random (OPTConfig at the preset's dimensions, seeded)",
            "dtype": str(pool.dtype).replace("torch.", ""),
            "duration_s": round(time.time() - t_start, 1),
            "raw_medians_s": raw,
        },
    }
    profile_from_dict(json.loads(json.dumps(doc)), doc["name"])  # validate before anyone writes it
    return doc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bes-profile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pool", default="tiny", choices=sorted(POOL_PRESETS), help="pool preset")
    ap.add_argument("--models", default=None, help="comma list of model presets (default: the pool's)")
    ap.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="comma list of tasks")
    ap.add_argument("--b-max", type=int, default=8)
    ap.add_argument("--batch-sizes", default="all", help="'all' or a comma list (1 and B_max always added)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--deadline-factor", type=float, default=2.5,
                    help="deadline = factor x batch-of-one latency of the largest model")
    ap.add_argument("--deadlines", default=None, help="comma list of per-task deadlines (s), overrides the factor")
    ap.add_argument("--lengths", default=None, help="task=prompt:output,... overrides of the task lengths")
    ap.add_argument("--weights", default="random", choices=["random", "pretrained"])
    ap.add_argument("--source", action="append", default=[], help="model=hub-name-or-dir (pretrained weights)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--num-threads", type=int, default=0, help="torch CPU threads (0 = all cores)")
    ap.add_argument("--name", default=None, help="profile name (default <pool>-cpu / <pool>-gpu)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-spread", type=float, default=0.25,
                    help="re-measure a point whose interquartile range exceeds this fraction of its median")
    ap.add_argument("--retries", type=int, default=3, help="re-measurements of an unstable point")
    ap.add_argument("--out", required=True, help="output JSON path")
    from bes_jax.serving.engines.profiler import add_arguments, main_engine
    add_arguments(ap)
    a = ap.parse_args(argv)
    if a.engine:  # live OpenAI-compatible engines: a continuous-batching profile
        return main_engine(a)
    try:
        lengths = None
        if a.lengths:
            lengths = {}
            for item in a.lengths.split(","):
                t, pl = item.split("=")
                p, o = pl.split(":")
                lengths[t.strip()] = (int(p), int(o))
        sources = dict(s.split("=", 1) for s in a.source)
        doc = run_profile(pool_preset=a.pool, models=a.models.split(",") if a.models else None,
                          tasks=[t.strip() for t in a.tasks.split(",") if t.strip()], b_max=a.b_max,
                          batch_sizes=a.batch_sizes, repeats=a.repeats, warmup=a.warmup,
                          deadline_factor=a.deadline_factor,
                          deadlines=a.deadlines.split(",") if a.deadlines else None, lengths=lengths,
                          weights=a.weights, sources=sources, device=a.device,
                          num_threads=a.num_threads, name=a.name, seed=a.seed,
                          max_spread=a.max_spread, retries=a.retries)
    except ValueError as e:
        print(f"bes-profile: error: {e}", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    profile_from_dict(doc, str(out)).save(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
