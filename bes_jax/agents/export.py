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
                  profile, sim_config: dict, train_config: dict, mask_wait_x: float = 0.0,
                  extra: dict | None = None, layer_norm: bool = False, kind: str = "double-dqn q-network",
                  greedy_prior: float = 0.0, prior_gate: str = "none") -> Path:
    """``mask_wait_x``: the learner's action mask (`bes_jax.agents.network.wait_mask`; 0: none),
    which the numpy router applies as the JAX policy does. ``greedy_prior``: the policy routes by
    ``argmax(q + greedy_prior * onehot(greedy's choice))`` (`bes_jax.agents.network.with_greedy_prior`), the network's output weighed by
    ``prior_gate`` (`bes_jax.agents.network.prior_gate_weight`). ``layer_norm``: the network has a
    LayerNorm after each hidden Dense (PQN's; arrays ``ln_i/scale``, ``ln_i/bias``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "weights.npz", **flatten_params(params))
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "activation": "relu",
        "hidden": [int(h) for h in hidden],
        "layer_norm": bool(layer_norm),
        "obs_mode": obs_mode,
        "obs_size": int(np.asarray(obs_mean).shape[0]),
        "obs_norm": {"mean": np.asarray(obs_mean, np.float64).tolist(),
                     "var": np.asarray(obs_var, np.float64).tolist(), "clip": 10.0, "eps": 1e-8},
        "model_names": profile.model_names,
        "task_names": profile.task_names,
        "action_mask": {"kind": "wait", "wait_x": float(mask_wait_x)},
        "greedy_prior": float(greedy_prior),
        "prior_gate": str(prior_gate),
        "profile": profile.identity(),
        "sim_config": sim_config,
        "train_config": train_config,
        **(extra or {}),
    }
    (out / "metadata.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
    return out


# ----------------------------------------------------------------------------- reading it back

#: SimConfig fields that define every policy's observation: its layout (obs_mode) and the
#: arrival-rate feature (EWMA smoothing, reference rate).
OBS_FIELDS = ("obs_mode", "batching", "ewma_alpha", "ref_rate")
#: observation layouts: adopted from the policy even over an explicit setting
LAYOUT_FIELDS = ("obs_mode", "batching")
#: ... under continuous batching, the engine settings the observation and prediction read
CONTINUOUS_OBS_FIELDS = ("max_num_seqs", "max_num_batched_tokens", "context_overflow")
#: ... and, in ``rich`` mode (the pending task's deadline and wait / deadline are inputs), the deadlines.
RICH_OBS_FIELDS = ("deadlines", "deadline_scale")


def read_policy_metadata(path: str | Path) -> dict:
    """``metadata.json`` of an exported policy directory (a clear error if missing or broken)."""
    from bes_jax.agents.numpy_router import PolicyFormatError, read_metadata

    f = Path(path) / "metadata.json"
    meta = read_metadata(path)
    if not isinstance(meta, dict) or "obs_mode" not in meta:
        raise PolicyFormatError(f"{f}: field 'obs_mode' missing")
    if not isinstance(meta.get("sim_config") or {}, dict):
        raise PolicyFormatError(f"{f}: field 'sim_config' = {meta['sim_config']!r}: must be an object")
    return meta


def policy_observation_settings(path: str | Path) -> dict:
    """``{SimConfig field: value}`` that define the observation of the policy at ``path``, as it
    was trained: ``obs_mode`` always, the others as far as its ``sim_config`` records them."""
    meta = read_policy_metadata(path)
    sc = meta.get("sim_config") or {}
    fields = OBS_FIELDS + (RICH_OBS_FIELDS if meta["obs_mode"] == "rich" else ())
    if sc.get("batching", "request") == "continuous":
        fields += CONTINUOUS_OBS_FIELDS
    out = {"obs_mode": meta["obs_mode"]}
    out.update({k: sc[k] for k in fields if k != "obs_mode" and k in sc})
    return out


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return a is not None and b is not None and list(a) == list(b)
    return a == b


def adopt_policy_sim_config(path: str | Path, sim_cfg, explicit=(), *, prefix: str = "sim.", note=None):
    """``sim_cfg`` with the observation settings of the policy at ``path`` adopted (the one
    place `bes-eval`, `bes-serve` and `bes-validate` get them from).

    Every field of :func:`policy_observation_settings` takes the policy's value, except those
    named in ``explicit`` (set by the user on purpose: a deadline sweep, say), which are kept;
    ``obs_mode`` is adopted even then (another mode has another observation size). Each value
    that is overridden, or kept although it differs from the policy's, is reported through
    ``note`` (default: printed to stderr), naming the setting as ``prefix + field``.
    """
    import dataclasses
    import sys

    if note is None:
        def note(msg):
            print(msg, file=sys.stderr)
    explicit = set(explicit)
    pol = policy_observation_settings(path)
    changes = {}
    for k, v in pol.items():
        if k == "deadlines" and v is not None:
            v = tuple(float(x) for x in v)
        cur = getattr(sim_cfg, k)
        if _same(cur, v):
            continue
        shown = list(v) if isinstance(v, tuple) else v
        cur_shown = list(cur) if isinstance(cur, tuple) else cur
        if k in explicit and k not in LAYOUT_FIELDS:
            note(f"router=policy: {prefix}{k} = {cur_shown!r} kept as set; the policy at {path} "
                 f"was trained with {shown!r}")
            continue
        note(f"router=policy: {prefix}{k} = {cur_shown!r} -> {shown!r}, the value the policy at {path} "
             f"was trained with" + (" (its observation has no other layout)" if k in LAYOUT_FIELDS else ""))
        changes[k] = v
    return dataclasses.replace(sim_cfg, **changes) if changes else sim_cfg
