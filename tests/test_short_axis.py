"""The unrolled short-axis reductions and the lane compaction equal the jnp operations they
replace, including ties, infinities and empty or overfull masks."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bes_jax import short_axis as sa
from bes_jax.env.core import first_lanes


@pytest.mark.parametrize("width", [1, 3, 4, 12])
def test_reductions_equal_jnp(width):
    rng = np.random.default_rng(width)
    # few distinct values, so ties are common; infinities as the simulator uses them
    x = rng.integers(0, 4, size=(64, 5, width)).astype(np.float32)
    x[rng.random(x.shape) < 0.2] = np.inf
    x[rng.random(x.shape) < 0.1] = -np.inf
    b = rng.random((64, 5, width)) < 0.3
    i = rng.integers(-5, 5, size=(64, 5, width)).astype(np.int32)
    x, b, i = jnp.asarray(x), jnp.asarray(b), jnp.asarray(i)
    np.testing.assert_array_equal(sa.min_last(x), x.min(-1))
    np.testing.assert_array_equal(sa.max_last(x), x.max(-1))
    np.testing.assert_array_equal(sa.sum_last(i), i.sum(-1))
    np.testing.assert_array_equal(sa.any_last(b), b.any(-1))
    np.testing.assert_array_equal(sa.first_true(b), jnp.argmax(b, -1))


@pytest.mark.parametrize("density", [0.0, 0.05, 0.3, 1.0])
@pytest.mark.parametrize("lanes", [1, 16, 200])
def test_first_lanes_equals_nonzero(density, lanes):
    rng = np.random.default_rng(int(density * 100) + lanes)
    due = jnp.asarray(rng.random((37, 12)) < density)
    want = jnp.nonzero(due.ravel(), size=lanes, fill_value=due.size)[0]
    got = jax.jit(first_lanes, static_argnums=1)(due, lanes)
    np.testing.assert_array_equal(got, want)
