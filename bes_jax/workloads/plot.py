"""Figure for docs/workloads.md: a MAF-derived workload against its per-minute source.

    python -m bes_jax.workloads.plot [--out docs/workloads_maf.png] [--maf PATH]

Defaults: the shipped per-minute totals of the MAF excerpt (``pkg:maf2019_minute_totals.csv``,
``bes_jax/data/``) and ``docs/workloads_maf.png`` of the source checkout (``workloads_maf.png`` in the
current directory when the package is installed without one).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MAF = "pkg:maf2019_minute_totals.csv"
DEFAULT_OUT = REPO / "docs" / "workloads_maf.png" if (REPO / "docs").is_dir() else Path("workloads_maf.png")


def maf_rate_series(counts, target_mean_rate: float, time_scale: float, n_arrivals: int, seed: int = 0,
                    bin_s: float | None = None, cv: float = 1.0) -> dict:
    """Arrivals generated from a MAF-derived schedule, binned: the data behind the figure.

    Returns ``{"window_s", "rates"}`` (the schedule), ``{"bin_edges", "arrivals_per_s"}``
    (generated arrivals per second in bins of `bin_s`, default one window) and ``"times"``.
    """
    import jax

    from bes_jax.workloads.builders import maf, sample_arrivals

    wp = maf(counts=counts, target_mean_rate=target_mean_rate, time_scale=time_scale, cv=cv, n_tasks=1)
    times, _ = sample_arrivals(jax.random.PRNGKey(seed), wp, n_arrivals)
    window_s = float(wp.window_s)
    bin_s = window_s if bin_s is None else float(bin_s)
    span = len(counts) * window_s
    edges = np.arange(0.0, span + 1e-9, bin_s)
    hist = np.histogram(times[times < span], bins=edges)[0] / bin_s
    return {"window_s": window_s, "rates": np.asarray(wp.rates)[:len(counts)], "bin_edges": edges,
            "arrivals_per_s": hist, "times": times}


def plot_maf(out=DEFAULT_OUT, maf_path=DEFAULT_MAF, minutes=(0, 120), target_mean_rate: float = 40.0,
             time_scale: float = 6.0, seed: int = 0) -> Path:
    """Write the PNG: generated arrivals/s (per window and per second) vs the source counts."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bes_jax.data import resolve_path
    from bes_jax.workloads.traces import load_maf_minute_counts

    maf_path = resolve_path(maf_path, "--maf")
    counts = load_maf_minute_counts(maf_path, minutes=minutes)
    expect = int(target_mean_rate * len(counts) * 60.0 / time_scale)
    fine = maf_rate_series(counts, target_mean_rate, time_scale, int(expect * 1.05) + 100, seed, bin_s=1.0)
    coarse_edges = np.arange(0.0, len(counts) * fine["window_s"] + 1e-9, fine["window_s"])
    t = fine["times"]
    coarse = np.histogram(t[t < coarse_edges[-1]], bins=coarse_edges)[0] / fine["window_s"]

    fig, ax = plt.subplots(figsize=(10, 4.2))
    ax.plot(fine["bin_edges"][:-1], fine["arrivals_per_s"], color="0.75", lw=0.6, label="generated, per 1 s")
    ax.step(coarse_edges, np.append(coarse, coarse[-1]), where="post", color="C0", lw=1.4,
            label=f"generated, per window ({fine['window_s']:.0f} s = 1 trace minute)")
    ax.step(coarse_edges, np.append(fine["rates"], fine["rates"][-1]), where="post", color="C3", lw=1.0, ls="--",
            label="schedule rate = source counts (right axis)")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("arrivals / s")
    ax.set_ylim(bottom=0)
    right = ax.twinx()
    right.set_ylabel("source invocations / minute")
    lo, hi = ax.get_ylim()
    per_rate = counts.mean() / fine["rates"].mean()  # source count per unit of scheduled rate
    right.set_ylim(lo * per_rate, hi * per_rate)
    with Path(maf_path).open() as fh:
        first_label = int(fh.readline().split(",")[4])  # minute-of-day label of the first column
    start = first_label + minutes[0]
    ax.set_title(f"MAF-derived workload: Azure Functions 2019, 500 functions, minutes {start}-{start + len(counts) - 1} "
                 f"of the day,\nx{time_scale:g} time scale, mean {target_mean_rate:g} req/s, Poisson inside windows, "
                 f"seed {seed}", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--maf", default=str(DEFAULT_MAF))
    ap.add_argument("--rate", type=float, default=40.0)
    ap.add_argument("--time-scale", type=float, default=6.0)
    ap.add_argument("--minutes", type=int, nargs=2, default=(0, 120))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    print(plot_maf(a.out, a.maf, tuple(a.minutes), a.rate, a.time_scale, a.seed))


if __name__ == "__main__":
    main()
