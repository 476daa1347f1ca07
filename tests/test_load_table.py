"""The load table: a router that lets the candidate fit best for the observed arrival rate
decide, and its fit in the simulator (a probe whose right answer is known)."""
from __future__ import annotations

from types import SimpleNamespace

import jax
import numpy as np
import pytest

from bes_jax.eval.capacity import nominal_capacity
from bes_jax.eval.load_table import fit_load_table
from bes_jax.eval.sweep import sweep_rates
from bes_jax.routers import greedy, static
from bes_jax.routers.load_table import bin_edges, load_table
from bes_jax.sim_config import SimConfig

CFG = SimConfig(queue_capacity=8, outcome_slots=512)


def test_a_rate_goes_to_the_grid_point_nearest_it_on_a_log_scale():
    np.testing.assert_allclose(bin_edges([1.0, 4.0, 16.0]), [2.0, 8.0])
    r = load_table([static(0), static(1), static(2)], [1.0, 4.0, 16.0], [2, 1, 0])
    act = jax.jit(lambda gap: r.act(jax.random.PRNGKey(0), None, SimpleNamespace(ewma_gap=gap), None))
    got = [int(act(np.float32(1.0 / rate))) for rate in (0.1, 1.9, 2.1, 7.9, 8.1, 1000.0)]
    assert got == [2, 2, 1, 1, 0, 0]


@pytest.mark.parametrize("rates, choice, match", [
    ([4.0, 1.0], [0, 0], "strictly increasing"),
    ([0.0, 1.0], [0, 0], "positive"),
    ([1.0, 2.0], [0], "per grid rate"),
    ([1.0, 2.0], [0, 3], r"in \[0, 3\)"),
])
def test_a_bad_table_is_refused_with_its_values(rates, choice, match):
    with pytest.raises(ValueError, match=match):
        load_table([static(0), static(1), static(2)], rates, choice)


def test_the_fit_keeps_the_better_model_at_each_load_and_the_table_routes_as_fit(synthetic_profile):
    """Probe: at a tenth of the large model's capacity the large (better) model serves every
    request in time, so it wins; at twice the small model's capacity only the small one keeps
    up. The table picks them, and routes in the simulator as well as the better of the two."""
    cap = nominal_capacity(synthetic_profile, CFG)
    rates = [cap[-1] / 10, cap[0] * 2]
    cands = [static(2, "large"), static(0, "small")]
    table = fit_load_table(synthetic_profile, CFG, cands, rates, seeds=(0,), n_decisions=600)
    assert table.names == ("large", "small") and table.choice.tolist() == [0, 1], table.scores
    assert [s[1] for s in table.summary()] == ["large", "small"]
    routed = sweep_rates(synthetic_profile, CFG, table.router(cands), rates, n_decisions=600, seeds=(5,))
    got = routed["performance"][:, 0]
    best = table.scores.max(0)
    worst = table.scores.min(0)
    assert np.all(got > worst + 0.05) and np.all(got > best - 0.02), (got, table.scores)
    with pytest.raises(ValueError, match="fit on routers"):
        table.router(cands[::-1])


def test_the_fit_refuses_bad_candidates_and_metrics(synthetic_profile):
    with pytest.raises(ValueError, match="distinct names"):
        fit_load_table(synthetic_profile, CFG, [static(0, "a"), static(1, "a")], [1.0, 2.0])
    with pytest.raises(ValueError, match="metric = 'nope'"):
        fit_load_table(synthetic_profile, CFG, [greedy()], [1.0, 2.0], n_decisions=200, metric="nope")
