"""Config nodes (Hydra/OmegaConf, or plain dicts) to library objects, and composing the shipped
configs (``bes_jax/conf``) without a command line, for scripts and notebooks."""
from __future__ import annotations

from bes_jax import CONF_DIR
from bes_jax.sim_config import SimConfig, sim_config_from_mapping


def to_plain(node) -> dict:
    """A config node as a plain dict (interpolations resolved)."""
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def sim_config_from(node) -> SimConfig:
    """SimConfig from a ``sim`` node (``bes_jax/conf/sim/default.yaml``)."""
    return sim_config_from_mapping(to_plain(node))


def compose_config(config_name: str, overrides=()):
    """A shipped config (``bes_jax/conf/<config_name>.yaml``) with Hydra overrides, without a run
    directory."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(config_name=config_name, overrides=list(overrides))


def compose_train_config(overrides=()):
    """The bes-train config with Hydra overrides, for scripts (no run directory)."""
    return compose_config("train", overrides)
