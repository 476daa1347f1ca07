"""`setup_training`: a training-only miss penalty shapes the learner's reward, never the evaluation's."""
from __future__ import annotations

import pytest

from bes_jax.agents.training import setup_training
from bes_jax.config import compose_train_config

SMALL = ["sim=default", "train_family.bank_size=4", "dqn.iterations=100", "dqn.chunk_iterations=100"]


def test_training_miss_penalty_is_training_only():
    s = setup_training(compose_train_config(SMALL + ["train_family.miss_penalty=0.5"]))
    assert float(s["base_params"].miss_penalty) == 0.5  # what the learner's environments pay for a miss
    assert s["sim_cfg"].miss_penalty == 0.0  # what every evaluation uses
    with pytest.raises(ValueError, match="train_family.miss_penalty = -1"):
        setup_training(compose_train_config(SMALL + ["train_family.miss_penalty=-1"]))
