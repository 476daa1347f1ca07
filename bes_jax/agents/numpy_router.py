"""Load an exported policy and route with numpy only (no JAX import): for serving on CPU.

Makes exactly the JAX policy's decisions: same normalisation, same MLP, argmax with the
first index winning ties.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bes_jax.reference.routing_view import WAIT_CAP


class PolicyFormatError(ValueError):
    """An exported policy directory is incomplete or inconsistent (names file, field, value)."""


def read_metadata(path: str | Path) -> dict:
    """``metadata.json`` of an exported policy directory, with a clear error if missing or broken."""
    f = Path(path) / "metadata.json"
    if not f.exists():
        raise PolicyFormatError(f"{f}: missing (an exported policy directory holds metadata.json and weights.npz)")
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise PolicyFormatError(f"{f}: not valid JSON at line {e.lineno}: {e.msg}") from None


LN_EPS = 1e-6  # bes_jax.agents.network.LN_EPS (flax's LayerNorm default)
#: how much say a policy's network has beside greedy's prior (``es.prior_gate``;
#: `bes_jax.agents.network.prior_gate_weight`): ``none``, all of it; ``load``, the observed load
#: of greedy's chosen model (clipped to [0, 1])
PRIOR_GATES = ("none", "load")


class Router:
    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray]], meta: dict, norms=None):
        self.layers, self.meta = layers, meta
        #: per hidden layer (scale, bias) of its LayerNorm, or None (no LayerNorm)
        self.norms = norms
        norm = meta["obs_norm"]
        self.mean = np.asarray(norm["mean"], np.float32)
        self.std = np.sqrt(np.asarray(norm["var"], np.float32) + np.float32(norm.get("eps", 1e-8)))
        self.clip = float(norm.get("clip", 10.0))
        self.obs_mode = meta["obs_mode"]
        self.obs_size = int(meta["obs_size"])
        self.model_names = list(meta["model_names"])
        self.task_names = list(meta["task_names"])
        #: the policy's action mask (bes_jax.agents.network.wait_mask), recorded at export
        self.mask_wait_x = float((meta.get("action_mask") or {}).get("wait_x", 0.0))
        #: weight of greedy's choice added to the network's output (`with_greedy_prior`; 0: none)
        self.greedy_prior = float(meta.get("greedy_prior", 0.0) or 0.0)
        if not self.greedy_prior >= 0:
            raise PolicyFormatError(f"metadata.json: field 'greedy_prior' = {meta.get('greedy_prior')!r}: "
                                    "must be a number >= 0")
        #: the network's weight beside the prior (`bes_jax.agents.network.prior_gate_weight`)
        self.prior_gate = str(meta.get("prior_gate", "none") or "none")
        if self.prior_gate not in PRIOR_GATES:
            raise PolicyFormatError(f"metadata.json: field 'prior_gate' = {meta.get('prior_gate')!r}: "
                                    f"must be one of {list(PRIOR_GATES)}")

    @classmethod
    def load(cls, path: str | Path) -> "Router":
        path = Path(path)
        meta_file, weights_file = path / "metadata.json", path / "weights.npz"
        meta = read_metadata(path)
        if not weights_file.exists():
            raise PolicyFormatError(f"{weights_file}: missing (an exported policy directory holds metadata.json and weights.npz)")
        for key in ("obs_mode", "obs_size", "obs_norm", "hidden", "model_names", "task_names"):
            if key not in meta:
                raise PolicyFormatError(f"{meta_file}: field '{key}' missing")
        with np.load(weights_file) as z:
            flat = {k: z[k] for k in z.files}
        names = [f"hidden_{i}" for i in range(len(meta["hidden"]))] + ["out"]
        layers = []
        width = int(meta["obs_size"])
        for n in names:
            for part in ("kernel", "bias"):
                if f"{n}/{part}" not in flat:
                    raise PolicyFormatError(f"{weights_file}: array '{n}/{part}' missing")
            k, b = flat[f"{n}/kernel"], flat[f"{n}/bias"]
            if k.shape[0] != width or b.shape != (k.shape[1],):
                raise PolicyFormatError(f"{weights_file}: array '{n}/kernel' has shape {k.shape}, "
                                        f"expected ({width}, ...) with a matching bias")
            layers.append((k.astype(np.float32), b.astype(np.float32)))
            width = k.shape[1]
        norms = None
        if meta.get("layer_norm", False):
            norms = []
            for i, h in enumerate(meta["hidden"]):
                for part in ("scale", "bias"):
                    a = flat.get(f"ln_{i}/{part}")
                    if a is None or a.shape != (int(h),):
                        raise PolicyFormatError(f"{weights_file}: array 'ln_{i}/{part}' missing or not of shape ({h},) "
                                                "(metadata field 'layer_norm' is true)")
                norms.append((flat[f"ln_{i}/scale"].astype(np.float32), flat[f"ln_{i}/bias"].astype(np.float32)))
        if width != len(meta["model_names"]):
            raise PolicyFormatError(f"{weights_file}: output width {width} != number of models "
                                    f"{len(meta['model_names'])} in metadata field 'model_names'")
        return cls(layers, meta, norms)

    def q_values(self, obs) -> np.ndarray:
        x = np.asarray(obs, np.float32)
        if x.shape[-1] != self.obs_size:
            raise ValueError(f"observation has {x.shape[-1]} features, policy expects {self.obs_size} ({self.obs_mode} mode)")
        x = np.clip((x - self.mean) / self.std, -self.clip, self.clip)
        for i, (k, b) in enumerate(self.layers):
            x = x @ k + b
            if i < len(self.layers) - 1:
                if self.norms is not None:
                    scale, bias = self.norms[i]
                    mu = x.mean(axis=-1, keepdims=True)
                    var = np.maximum((x * x).mean(axis=-1, keepdims=True) - mu * mu, 0.0)
                    x = (x - mu) / np.sqrt(var + np.float32(LN_EPS)) * scale + bias
                x = np.maximum(x, 0.0)
        return x

    def allowed(self, obs) -> np.ndarray:
        """Models the policy may choose: `bes_jax.agents.network.wait_mask`, the same rule."""
        obs = np.asarray(obs)
        M, T = len(self.model_names), len(self.task_names)
        if self.mask_wait_x <= 0 or self.obs_mode != "rich":
            return np.ones(obs.shape[:-1] + (M,), bool)
        wait = obs[..., T + M + 1:T + 2 * M + 1]
        ok = wait < min(self.mask_wait_x, WAIT_CAP)
        return np.where(ok.any(axis=-1, keepdims=True), ok, wait <= wait.min(axis=-1, keepdims=True))

    def scores(self, obs, greedy=None) -> np.ndarray:
        """The values the policy takes the argmax of: the network's output (times the prior gate's
        weight), plus ``greedy_prior`` on greedy's choice ``greedy`` (required when the policy has
        a prior)."""
        q = self.q_values(obs)
        if self.greedy_prior:
            if greedy is None:
                raise ValueError(f"this policy adds greedy_prior = {self.greedy_prior} to greedy's choice: "
                                 "pass greedy= (the model greedy would pick for this request)")
            g = np.asarray(greedy)
            if self.prior_gate == "load":  # the load column of greedy's choice, clipped to [0, 1]
                T = len(self.task_names)
                load = np.take_along_axis(np.asarray(obs, np.float32), (T + g)[..., None], axis=-1)
                q = np.clip(load, 0.0, 1.0) * q
            q = q + np.float32(self.greedy_prior) * np.eye(q.shape[-1], dtype=np.float32)[g]
        return q

    def act(self, obs, greedy=None) -> int | np.ndarray:
        q = np.where(self.allowed(obs), self.scores(obs, greedy), -np.inf)
        a = np.argmax(q, axis=-1)
        return int(a) if np.ndim(a) == 0 else a
