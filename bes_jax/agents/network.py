"""The Q-network: a small MLP (linen; plain `jax.jit` over its params is the fast path)."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class QNetwork(nn.Module):
    n_actions: int
    hidden: Sequence[int] = (64, 64)

    @nn.compact
    def __call__(self, x):
        for i, h in enumerate(self.hidden):
            x = nn.relu(nn.Dense(h, name=f"hidden_{i}")(x))
        return nn.Dense(self.n_actions, name="out")(x)


def normalize(obs, mean, var, clip: float = 10.0):
    """Running-statistics normalisation; the same formula runs in the numpy `Router`."""
    return jnp.clip((obs - mean) / jnp.sqrt(var + 1e-8), -clip, clip)
