"""Property tests (hypothesis): conservation and scheduling invariants in both simulators."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from bes_jax import workloads as W
from bes_jax.env import DROPPED, QUEUED, REJECTED, SERVED, ServingEnv
from bes_jax.profile import profile_from_dict
from bes_jax.reference.simulator import ReferenceSimulator
from bes_jax.sim_config import SimConfig
from conftest import synthetic_profile_dict

N = 120
PROFILE = profile_from_dict(synthetic_profile_dict(b_max=3), "prop.json")
CFG = SimConfig(queue_capacity=4, outcome_slots=N + 1, episode_len=N, drop_expired=True, n_gpus=2)
ENV = ServingEnv(PROFILE, CFG)


@jax.jit
def _run(key, times, actions, scale):
    params = ENV.make_params(W.trace(times=np.zeros(N), n_tasks=2)).replace(
        workload=W.trace(times=np.zeros(N), n_tasks=2).replace(trace_times=times, trace_period=times[-1] + 0.01))
    params = params.replace(deadline=params.deadline * scale)
    obs, s = ENV.reset(key, params)

    def body(s, a):
        _, s, r, _, _ = ENV.step(key, s, a, params)
        return s, r
    s, r = jax.lax.scan(body, s, actions)
    return s, r


def _times(gaps):
    t = np.cumsum(np.asarray(gaps, np.float64))
    return t - t[0]


gaps_st = st.lists(st.floats(0.0, 0.3, allow_nan=False), min_size=N, max_size=N)
actions_st = st.lists(st.integers(0, 2), min_size=N, max_size=N)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gaps=gaps_st, actions=actions_st, scale=st.floats(0.2, 3.0), seed=st.integers(0, 2**16))
def test_jax_conservation(gaps, actions, scale, seed):
    times = _times(gaps)
    s, r = _run(jax.random.PRNGKey(seed), jnp.asarray(times, jnp.float32), jnp.asarray(actions, jnp.int32), scale)
    o = jax.tree.map(np.asarray, s.outcomes)
    used = o.decision >= 0
    assert used.sum() == N
    status = o.status[used]
    clock = float(s.now)
    completed = (status == SERVED) & (o.finish[used] <= clock)
    in_flight = (status == SERVED) & (o.finish[used] > clock)
    parts = [completed, in_flight, status == QUEUED, status == DROPPED, status == REJECTED]
    assert (np.sum(parts, axis=0) == 1).all()  # exactly one state each
    assert (status == QUEUED).sum() == int(s.queue_len.sum())
    assert int(ENV.running(s).sum()) == in_flight.sum()
    served = status == SERVED
    assert (o.start[used][served] >= o.arrival[used][served] - 1e-6).all()


@settings(max_examples=25, deadline=None)
@given(gaps=gaps_st, actions=actions_st, placement=st.sampled_from(["concurrent", "exclusive"]),
       drop=st.booleans(), cap=st.integers(1, 6))
def test_reference_invariants(gaps, actions, placement, drop, cap):
    cfg = SimConfig(placement=placement, drop_expired=drop, queue_capacity=cap, n_gpus=2)
    times = _times(gaps)
    tasks = np.arange(N) % 2
    res = ReferenceSimulator(PROFILE, cfg).run(times, tasks, np.asarray(actions), drain=False)
    clock = res.clock
    completed = (res.status == SERVED) & (res.finish <= clock)
    in_flight = (res.status == SERVED) & (res.finish > clock)
    parts = [completed, in_flight, res.status == 1, res.status == 3, res.status == 4]
    assert (np.sum(parts, axis=0) == 1).all()
    done = ReferenceSimulator(PROFILE, cfg).run(times, tasks, np.asarray(actions), drain=True)
    assert not (done.status == 1).any()
    served = np.nonzero(done.status == SERVED)[0]
    # batches never exceed B_max; per server, batches never overlap; FIFO per replica
    batches = {}
    for i in served:
        batches.setdefault((done.replica[i], done.start[i]), []).append(i)
    assert all(len(v) <= PROFILE.b_max for v in batches.values())
    server_of = {}
    for (rep, start), members in batches.items():
        key = rep if placement == "concurrent" else _gpu(rep)
        server_of.setdefault(key, []).append((start, done.finish[members[0]]))
    for spans in server_of.values():
        spans.sort()
        for (s0, f0), (s1, f1) in zip(spans, spans[1:]):
            assert s1 >= f0 - 1e-12
    for rep in set(done.replica[served]):
        idx = served[done.replica[served] == rep]
        assert (np.diff(done.start[idx]) >= 0).all()  # arrival order => start order


def _gpu(rep):
    """Reference replica numbering is compact per model with counts (2, 2, 2) on 2 GPUs: k = rep % 2."""
    return rep % 2
