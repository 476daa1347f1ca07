"""Plots people look at first: the learning curve and the comparison with baselines."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_training(history: list[dict], results: dict, path: Path, progress_workload: str | None = None) -> Path:
    fig, axes = plt.subplots(1, 1 + len(results), figsize=(5 + 4.5 * len(results), 4))
    axes = np.atleast_1d(axes)
    ax = axes[0]
    x = [h.get("decisions", h["chunk"]) for h in history]
    ax.plot(x, [h.get("eval_performance", np.nan) for h in history], marker="o", label="learned (eval)")
    if progress_workload in results:
        # the progress evaluation is a shorter run of one held-out workload: baselines for scale
        rows = results[progress_workload]["routers"]
        for name, style in (("greedy", "b--"), ):
            if name in rows:
                ax.axhline(rows[name]["performance"]["mean"], color=style[0], ls="--", label=f"{name} (final eval)")
        statics = [v["performance"]["mean"] for k, v in rows.items() if k.startswith("static")]
        if statics:
            ax.axhline(max(statics), color="gray", ls=":", label="best static (final eval)")
        ax.legend(fontsize=8)
    ax.set_xlabel("training decisions")
    ax.set_ylabel("performance (mean reward)")
    ax.set_title(f"learning curve ({progress_workload or 'eval'})")
    ax.grid(alpha=0.3)
    for ax, (wname, res) in zip(axes[1:], results.items()):
        names = list(res["routers"])
        means = [res["routers"][n]["performance"]["mean"] for n in names]
        stds = [res["routers"][n]["performance"]["std"] for n in names]
        colors = ["tab:red" if n == "learned" else "tab:gray" if n.startswith("static") else "tab:blue" for n in names]
        ax.bar(range(len(names)), means, yerr=stds, color=colors, capsize=3)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([n.replace("static:", "") for n in names], rotation=35, ha="right", fontsize=8)
        ax.set_title(f"held-out: {wname}")
        ax.set_ylabel("performance")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
