"""Hypothesis properties of the reference simulator: conservation and scheduling invariants.

Random small profiles, configs (placement, replicas, capacity, drops, reward kind), arrival
gaps (with many exact ties) and routers (fixed actions or greedy).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from bes_jax.profile import profile_from_dict
from bes_jax.reference.metrics import compute_metrics
from bes_jax.reference.simulator import DROPPED, QUEUED, REJECTED, SERVED, ReferenceSimulator
from bes_jax.sim_config import SimConfig
from conftest import synthetic_profile_dict

PROFILES = [profile_from_dict(synthetic_profile_dict(n_models=3, n_tasks=2, b_max=b, seed=s), f"p{b}.json")
            for b, s in ((1, 0), (3, 1), (4, 2))]


@st.composite
def scenarios(draw):
    prof = draw(st.sampled_from(PROFILES))
    n_gpus = draw(st.integers(1, 3))
    replicas = draw(st.one_of(st.none(), st.tuples(*[st.integers(0, 3)] * 3).filter(lambda r: sum(r) > 0)))
    kind = draw(st.sampled_from(["hard", "soft"]))
    cfg = SimConfig(
        placement=draw(st.sampled_from(["concurrent", "exclusive"])), n_gpus=n_gpus, replicas=replicas,
        queue_capacity=draw(st.integers(1, 6)), drop_expired=kind == "hard" and draw(st.booleans()),
        deadline_kind=kind, soft_decay=draw(st.sampled_from(["linear", "exp"])),
        miss_penalty=draw(st.sampled_from([0.0, 0.5])), latency_weight=draw(st.sampled_from([0.0, 0.1])),
        deadline_scale=draw(st.sampled_from([0.2, 1.0, 3.0])), obs_mode=draw(st.sampled_from(["paper", "rich"])))
    n = draw(st.integers(1, 80))
    # gaps on a coarse grid plus zeros: plenty of exact ties between arrivals and completions
    gaps = draw(st.lists(st.sampled_from([0.0, 0.0, 0.005, 0.02, 0.05, 0.2]), min_size=n, max_size=n))
    times = np.cumsum(gaps) - gaps[0]
    tasks = np.asarray(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    if draw(st.booleans()):
        actions = "greedy"
    else:
        actions = np.asarray(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
    return prof, cfg, times, tasks, actions


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _batches(prof, cfg, res):
    """(replica, start) -> member indices, for served requests."""
    out = defaultdict(list)
    for i in np.nonzero(res.status == SERVED)[0]:
        out[(int(res.replica[i]), float(res.start[i]))].append(int(i))
    return out


@SETTINGS
@given(scenarios())
def test_conservation_without_drain(sc):
    prof, cfg, times, tasks, actions = sc
    res = ReferenceSimulator(prof, cfg).run(times, tasks, actions, drain=False)
    n = times.size
    assert res.clock == times[-1]
    served = res.status == SERVED
    completed = served & (res.finish <= res.clock)
    in_flight = served & (res.finish > res.clock)
    parts = np.stack([completed, in_flight, res.status == DROPPED, res.status == REJECTED, res.status == QUEUED])
    assert (parts.sum(axis=0) == 1).all()  # every request is exactly one of these
    assert parts.sum() == n
    # what is realised is realised, the rest is not
    assert np.isfinite(res.reward[completed | (res.status == DROPPED) | (res.status == REJECTED)]).all()
    assert np.isnan(res.reward[in_flight | (res.status == QUEUED)]).all()
    assert np.isnan(res.finish[res.status == QUEUED]).all() and np.isnan(res.start[~served]).all()
    # outcomes are realised no later than the clock, except in-flight completions
    assert (res.finish[res.status == DROPPED] <= res.clock).all()
    assert (res.start[served] <= res.clock).all()
    m = compute_metrics(res, times, tasks, prof, cfg)
    assert m["n_completed"] + m["n_dropped"] + m["n_rejected"] + m["n_in_system"] == n
    assert m["n_in_system"] == int((in_flight | (res.status == QUEUED)).sum())


@SETTINGS
@given(scenarios())
def test_drain_resolves_everything_and_extends_the_undrained_run(sc):
    prof, cfg, times, tasks, actions = sc
    early = ReferenceSimulator(prof, cfg).run(times, tasks, actions, drain=False)
    res = ReferenceSimulator(prof, cfg).run(times, tasks, actions, drain=True)
    assert not (res.status == QUEUED).any()
    assert np.isfinite(res.finish).all() and np.isfinite(res.reward).all()
    # draining only adds events after the last arrival: everything decided before is the same
    np.testing.assert_array_equal(early.model, res.model)
    np.testing.assert_array_equal(early.replica, res.replica)
    np.testing.assert_array_equal(early.observations, res.observations)
    decided = early.status != QUEUED
    np.testing.assert_array_equal(early.status[decided], res.status[decided])
    np.testing.assert_array_equal(early.start[decided], res.start[decided])
    np.testing.assert_array_equal(early.finish[decided], res.finish[decided])
    late = (early.status == QUEUED) & (res.status == SERVED)
    assert (res.start[late] > times[-1]).all()  # whatever waited at the end starts after it
    m = compute_metrics(res, times, tasks, prof, cfg)
    assert m["n_completed"] + m["n_dropped"] + m["n_rejected"] == times.size and m["n_in_system"] == 0


@SETTINGS
@given(scenarios())
def test_scheduling_invariants(sc):
    prof, cfg, times, tasks, actions = sc
    res = ReferenceSimulator(prof, cfg).run(times, tasks, actions, drain=True)
    d = np.asarray(cfg.task_deadlines(prof))[tasks]
    served = np.nonzero(res.status == SERVED)[0]
    assert (res.start[served] >= times[served]).all()
    # replicas of a model with no replica never serve; rejected have no replica
    counts = cfg.replica_counts(prof.n_models)
    assert all(counts[res.model[i]] > 0 for i in served)
    assert (res.replica[res.status == REJECTED] == -1).all()
    assert (res.finish[res.status == REJECTED] == times[res.status == REJECTED]).all()
    # dropped only with drop_expired, and only once expired
    dropped = res.status == DROPPED
    if not cfg.drop_expired:
        assert not dropped.any()
    assert (res.finish[dropped] - times[dropped] > d[dropped]).all()

    batches = _batches(prof, cfg, res)
    spans = defaultdict(list)  # server -> [(start, finish)]
    for (r, s), members in batches.items():
        b = len(members)
        assert 1 <= b <= prof.b_max
        m = int(res.model[members[0]])
        assert (res.model[members] == m).all()
        f = res.finish[members]
        assert (f == f[0]).all()
        assert f[0] == s + max(prof.latency[m, tasks[i], b - 1] for i in members)  # exact: same ops
        server = r if cfg.placement == "concurrent" else int(res.gpu[members[0]])
        spans[server].append((s, f[0]))
    for sv in spans.values():  # one batch at a time per server (replica, or GPU when exclusive)
        sv.sort()
        for (s0, f0), (s1, f1) in zip(sv, sv[1:]):
            assert s1 >= f0
    # FIFO per replica: in arrival (= decision) order, start times never decrease
    for r in set(res.replica[served].tolist()):
        idx = served[res.replica[served] == r]
        assert (np.diff(res.start[idx]) >= 0).all()


@SETTINGS
@given(scenarios())
def test_reward_bounds_and_values(sc):
    prof, cfg, times, tasks, actions = sc
    res = ReferenceSimulator(prof, cfg).run(times, tasks, actions, drain=True)
    d = np.asarray(cfg.task_deadlines(prof))[tasks]
    served = res.status == SERVED
    lat = res.latency
    assert np.isnan(lat[~served]).all()
    max_term = np.nanmax(np.where(served, lat / d, 0.0)) if served.any() else 0.0
    lo = -cfg.miss_penalty - cfg.latency_weight * max_term
    assert (res.reward >= lo - 1e-12).all() and (res.reward <= prof.quality.max() + 1e-12).all()
    q = prof.quality[res.model, tasks]
    on_time = served & (lat <= d)
    np.testing.assert_allclose(res.reward[on_time], (q - cfg.latency_weight * lat / d)[on_time], rtol=1e-12)
    assert (res.reward[~served] == -cfg.miss_penalty).all()
    late = served & ~on_time
    upper = (q - cfg.latency_weight * lat / d)[late]
    assert (res.reward[late] <= upper + 1e-12).all()
    np.testing.assert_array_equal(res.met_deadline, on_time)


@SETTINGS
@given(scenarios())
def test_observation_shape_and_ranges(sc):
    prof, cfg, times, tasks, actions = sc
    res = ReferenceSimulator(prof, cfg).run(times, tasks, actions, drain=False)
    T, M = prof.n_tasks, prof.n_models
    o = res.observations
    assert o.shape == (times.size, T + M + 1 + (M + 1 if cfg.obs_mode == "rich" else 0))
    np.testing.assert_array_equal(o[:, :T], np.eye(T)[tasks])
    counts = np.asarray(cfg.replica_counts(M))
    load = o[:, T:T + M]
    assert (load >= 0).all()
    assert (load <= (cfg.queue_capacity + prof.b_max) / prof.b_max + 1e-12).all()
    assert (load[:, counts == 0] == 0).all()
    assert (o[:, T + M] > 0).all()
    if cfg.obs_mode == "rich":
        wait = o[:, T + M + 1:T + 2 * M + 1]
        assert ((wait >= 0) & (wait <= 10)).all()
        assert (wait[:, counts == 0] == 10).all()
        np.testing.assert_array_equal(o[:, -1], np.asarray(cfg.task_deadlines(prof))[tasks])
