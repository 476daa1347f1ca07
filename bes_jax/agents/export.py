"""Export a trained Q-network as ``weights.npz`` + ``metadata.json`` (no JAX needed to load)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1


def flatten_params(params) -> dict[str, np.ndarray]:
    """``{"hidden_0/kernel": ..., ..., "out/bias": ...}`` from a linen param tree."""
    layers = params["params"]
    return {f"{layer}/{name}": np.asarray(v, dtype=np.float32)
            for layer, d in layers.items() for name, v in d.items()}


def unflatten_params(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for k, v in flat.items():
        layer, name = k.split("/")
        tree.setdefault(layer, {})[name] = v
    return {"params": tree}


def export_policy(out_dir: str | Path, params, obs_mean, obs_var, *, obs_mode: str, hidden,
                  profile, sim_config: dict, train_config: dict, extra: dict | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "weights.npz", **flatten_params(params))
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": "double-dqn q-network",
        "activation": "relu",
        "hidden": [int(h) for h in hidden],
        "obs_mode": obs_mode,
        "obs_size": int(np.asarray(obs_mean).shape[0]),
        "obs_norm": {"mean": np.asarray(obs_mean, np.float64).tolist(),
                     "var": np.asarray(obs_var, np.float64).tolist(), "clip": 10.0, "eps": 1e-8},
        "model_names": profile.model_names,
        "task_names": profile.task_names,
        "profile": profile.identity(),
        "sim_config": sim_config,
        "train_config": train_config,
        **(extra or {}),
    }
    (out / "metadata.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
    return out
