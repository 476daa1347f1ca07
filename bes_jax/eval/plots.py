"""Plots people look at first: the learning curve and the comparison with baselines."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_training(history: list[dict], results: dict, path: Path) -> Path:
    fig, axes = plt.subplots(1, 1 + len(results), figsize=(5 + 4.5 * len(results), 4))
    axes = np.atleast_1d(axes)
    ax = axes[0]
    x = [h.get("decisions", h["chunk"]) for h in history]
    ax.plot(x, [h.get("eval_performance", np.nan) for h in history], marker="o", label="learned (eval)")
    ax.set_xlabel("training decisions")
    ax.set_ylabel("performance (mean reward)")
    ax.set_title("learning curve")
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
