"""An exported policy as a jittable router (for `bes-eval router=policy router.path=DIR`)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from bes_jax.agents.export import unflatten_params
from bes_jax.agents.network import QNetwork, normalize, prior_gate_weight, wait_mask, with_greedy_prior
from bes_jax.agents.numpy_router import PolicyFormatError, Router as NumpyRouter
from bes_jax.profile import Profile
from bes_jax.routers.baselines import Router, greedy_action


def load_policy_router(path, profile: Profile) -> Router:
    npr = NumpyRouter.load(path)
    meta = npr.meta
    if npr.model_names != profile.model_names or npr.task_names != profile.task_names:
        raise PolicyFormatError(
            f"{path}/metadata.json: field 'model_names'/'task_names' = {npr.model_names}/{npr.task_names} "
            f"do not match profile {profile.name!r} ({profile.model_names}/{profile.task_names})")
    with np.load(f"{path}/weights.npz") as z:
        params = unflatten_params({k: jnp.asarray(z[k]) for k in z.files})
    net = QNetwork(len(npr.model_names), tuple(meta["hidden"]), layer_norm=bool(meta.get("layer_norm", False)))
    mean = jnp.asarray(meta["obs_norm"]["mean"], jnp.float32)
    var = jnp.asarray(meta["obs_norm"]["var"], jnp.float32)

    masked = npr.mask_wait_x > 0 and npr.obs_mode == "rich"
    T, M = len(npr.task_names), len(npr.model_names)

    def act(key, obs, state, env_params):
        x = normalize(obs.astype(jnp.float32), mean, var)
        q = net.apply(params, x)
        if npr.greedy_prior:  # anchored on greedy's choice, as in training and in the numpy router
            g = greedy_action(state, env_params)
            q = with_greedy_prior(q, g, npr.greedy_prior, prior_gate_weight(obs.astype(jnp.float32), g, T, npr.prior_gate))
        if masked:  # the learner's action mask, as in training and in the numpy router
            q = jnp.where(wait_mask(obs, T, M, npr.mask_wait_x), q, -jnp.inf)
        return jnp.argmax(q).astype(jnp.int32)

    return Router(f"policy:{path}", act, obs_mode=npr.obs_mode)
