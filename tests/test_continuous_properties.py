"""Hypothesis properties of the continuous-batching reference twin: every request ends in
exactly one state, KV reservations stay within budget and return to zero, every completed
request generated exactly its output tokens, and the scheduling invariants of
docs/simulator.md "Continuous batching" (one iteration at a time per server, at most
``max_num_seqs`` sequences and ``max_num_batched_tokens`` tokens per iteration, strict FIFO).

Random small continuous profiles (KV budgets and context limits that bind), configs (placement,
replicas, S, K, capacity, drops, overflow, TTFT/TPOT deadlines, reward kind), arrival gaps with
many exact ties, token lengths, and routers (fixed actions or greedy).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from bes_jax.profile import profile_from_dict
from bes_jax.reference.continuous import (DROPPED, QUEUED, REJECTED, RUNNING, SERVED,
                                          ContinuousReferenceSimulator)
from bes_jax.reference.metrics import compute_metrics
from bes_jax.sim_config import SimConfig
from conftest import continuous_profile_dict

PROFILES = [profile_from_dict(continuous_profile_dict(seed=s, kv_tokens=kv, ctx_max=ctx), f"c{s}.json")
            for s, kv, ctx in ((0, (3000, 2000, 1200), (512, 768, 1024)), (1, (400, 300, 900), (256, 200, 700)),
                               (2, (200, 5000, 250), (128, 2048, 180)))]


@st.composite
def scenarios(draw):
    prof = draw(st.sampled_from(PROFILES))
    kind = draw(st.sampled_from(["hard", "soft"]))
    S = draw(st.integers(1, 5))
    cfg = SimConfig(
        batching="continuous", placement=draw(st.sampled_from(["concurrent", "exclusive"])),
        n_gpus=draw(st.integers(1, 2)),
        replicas=draw(st.one_of(st.none(), st.tuples(*[st.integers(0, 2)] * 3).filter(lambda r: sum(r) > 0))),
        queue_capacity=draw(st.integers(1, 6)), max_num_seqs=S, max_num_batched_tokens=draw(st.integers(S, 80)),
        context_overflow=draw(st.sampled_from(["truncate", "reject"])),
        drop_expired=kind == "hard" and draw(st.booleans()), deadline_kind=kind,
        soft_decay=draw(st.sampled_from(["linear", "exp"])), miss_penalty=draw(st.sampled_from([0.0, 0.5])),
        latency_weight=draw(st.sampled_from([0.0, 0.1])), deadline_scale=draw(st.sampled_from([0.05, 0.3, 1.0])),
        ttft_deadlines=draw(st.sampled_from([None, (0.05, 0.2)])), tpot_deadlines=draw(st.sampled_from([None, (0.01, 0.05)])),
        obs_mode=draw(st.sampled_from(["paper", "rich"])))
    n = draw(st.integers(1, 60))
    gaps = draw(st.lists(st.sampled_from([0.0, 0.0, 0.002, 0.01, 0.05, 0.3]), min_size=n, max_size=n))
    times = np.cumsum(gaps) - gaps[0]
    tasks = np.asarray(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    prompts = np.asarray(draw(st.lists(st.integers(1, 700), min_size=n, max_size=n)))
    outputs = np.asarray(draw(st.lists(st.one_of(st.integers(1, 4), st.integers(1, 150)), min_size=n, max_size=n)))
    actions = "greedy" if draw(st.booleans()) else np.asarray(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
    return prof, cfg, times, tasks, prompts, outputs, actions


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def runs(sc, drain=True):
    prof, cfg, times, tasks, prompts, outputs, actions = sc
    return ContinuousReferenceSimulator(prof, cfg).run(times, tasks, prompts, outputs, actions, drain=drain, trace=True)


@SETTINGS
@given(scenarios())
def test_drained_run_resolves_every_request_and_frees_all_kv(sc):
    prof, cfg, times, tasks, prompts, outputs, actions = sc
    res = runs(sc)
    n = times.size
    parts = np.stack([res.status == s for s in (SERVED, DROPPED, REJECTED)])
    assert (parts.sum(axis=0) == 1).all() and parts.sum() == n  # exactly one final state each
    assert not np.isin(res.status, [QUEUED, RUNNING]).any()
    assert np.isfinite(res.reward).all() and np.isfinite(res.finish).all()
    assert (res.final_reserved == 0).all(), res.final_reserved
    for it in res.trace:  # reservation never exceeds the replica's budget
        assert 0 < it["reserved"] <= res.kv_budget[it["replica"]]
        assert it["kv_in_use"] <= it["reserved"]
    served = res.status == SERVED
    np.testing.assert_array_equal(res.generated[served], res.output_tokens[served])
    assert (res.generated[~served] == 0).all()
    # tokens: generated in iterations == tokens requested by completed requests
    tokens = sum(it["decode"] for it in res.trace) + int(served.sum())  # first token comes with the prefill
    assert tokens == int(res.output_tokens[served].sum())
    assert sum(it["prefill"] for it in res.trace) == int(res.prompt_tokens[served].sum())
    m = compute_metrics(res, times, tasks, prof, cfg)
    assert m["n_completed"] + m["n_dropped"] + m["n_rejected"] == n and m["n_in_system"] == 0
    # the reserved share of the pool, integrated over time, fits in the pool times the busy period
    span = max(times[-1] - times[0], 1e-9)
    busy = (res.finish[served].max() - times[0]) if served.any() else 0.0
    assert 0.0 <= m["kv_utilisation"] * span <= busy * (1 + 1e-12)
    assert m["availability"] == res.met_deadline.sum() / n


@SETTINGS
@given(scenarios())
def test_times_and_tokens_of_each_request(sc):
    prof, cfg, times, tasks, prompts, outputs, actions = sc
    res = runs(sc)
    served = res.status == SERVED
    s, f, e = res.start[served], res.first_token[served], res.finish[served]
    assert (s >= times[served]).all() and (f > s).all() and (e >= f).all()
    assert ((e == f) == (res.output_tokens[served] == 1)).all()  # one token: done with the prefill
    ctx = prof.ctx_max[res.model[served]]
    assert (res.prompt_tokens[served] + res.output_tokens[served] <= ctx).all()
    assert (res.prompt_tokens[served] + res.output_tokens[served] <= prof.kv_tokens[res.model[served]]).all()
    assert (res.prompt_tokens <= res.prompt_in).all()
    if cfg.context_overflow == "reject":
        np.testing.assert_array_equal(res.prompt_tokens, res.prompt_in)
    rej = res.status == REJECTED
    assert (res.finish[rej] == times[rej]).all() and (res.replica[rej] == -1).all()
    dropped = res.status == DROPPED
    d = np.asarray(cfg.task_deadlines(prof))[tasks]
    if not cfg.drop_expired:
        assert not dropped.any()
    assert (res.finish[dropped] - times[dropped] > d[dropped]).all()
    assert np.isnan(res.start[dropped | rej]).all()
    np.testing.assert_allclose(res.ttft[served], (f - times[served]))
    # hard reward: q when every configured deadline holds, else -miss_penalty (plus latency term)
    q = prof.quality[res.model, tasks]
    lat_term = cfg.latency_weight * np.where(served, res.latency, 0.0) / d
    if cfg.deadline_kind == "hard":
        np.testing.assert_allclose(res.reward[served], np.where(res.met_deadline, q, -cfg.miss_penalty)[served]
                                   - lat_term[served], rtol=1e-12, atol=1e-12)
    assert (res.reward[~served] == -cfg.miss_penalty).all()
    assert not res.met_deadline[~served].any()
    assert (res.latency[res.met_deadline] <= d[res.met_deadline]).all()


@SETTINGS
@given(scenarios())
def test_iterations_respect_the_engine_limits_and_strict_fifo(sc):
    prof, cfg, times, tasks, prompts, outputs, actions = sc
    res = runs(sc)
    per_server = defaultdict(list)
    for it in res.trace:
        assert 1 <= it["n"] <= cfg.max_num_seqs
        assert it["decode"] + it["prefill"] <= cfg.max_num_batched_tokens
        assert it["end"] > it["start"]
        per_server[it["server"]].append((it["start"], it["end"]))
    for spans in per_server.values():  # one iteration at a time, in the order they ran
        for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
            assert s1 >= e0
    # strict FIFO per replica: admission order is arrival order
    admitted = ~np.isnan(res.start)
    first = np.concatenate([[0], np.cumsum(cfg.replica_counts(prof.n_models))])
    for r in set(res.replica[admitted].tolist()):
        idx = np.nonzero(admitted & (res.replica == r))[0]
        assert (np.diff(res.start[idx]) >= 0).all()
        m = int(res.model[idx[0]])
        assert (res.model[idx] == m).all() and first[m] <= r < first[m + 1]
        assert (res.gpu[idx] == cfg.gpu_of_replica(m, r - first[m])).all()


@SETTINGS
@given(scenarios())
def test_drain_extends_the_undrained_run(sc):
    prof, cfg, times, tasks, prompts, outputs, actions = sc
    early, res = runs(sc, drain=False), runs(sc)
    assert early.clock == times[-1] and res.clock == np.inf
    parts = np.stack([early.status == s for s in (QUEUED, RUNNING, SERVED, DROPPED, REJECTED)])
    assert (parts.sum(axis=0) == 1).all()
    for f in ("model", "replica", "observations", "prompt_tokens"):
        np.testing.assert_array_equal(getattr(early, f), getattr(res, f))
    final = np.isin(early.status, [SERVED, DROPPED, REJECTED])
    for f in ("status", "finish", "start", "first_token", "reward"):
        np.testing.assert_array_equal(getattr(early, f)[final], getattr(res, f)[final])
    running = early.status == RUNNING
    np.testing.assert_array_equal(early.start[running], res.start[running])
    assert np.isnan(early.reward[~final]).all() and (early.finish[final] <= early.clock).all()
    assert (early.generated[running] < early.output_tokens[running]).all()
    assert (res.finish[~final & (res.status == SERVED)] > times[-1]).all()
    m = compute_metrics(early, times, tasks, prof, cfg)
    assert m["n_in_system"] == int((~final).sum()) and m["n_running"] == int(running.sum())


@SETTINGS
@given(scenarios())
def test_observation_ranges(sc):
    prof, cfg, times, tasks, prompts, outputs, actions = sc
    res = runs(sc, drain=False)
    T, M = prof.n_tasks, prof.n_models
    o = res.observations
    assert o.shape == (times.size, T + M + 1 + (3 * M + 2 if cfg.obs_mode == "rich" else 0))
    assert np.isfinite(o).all()
    np.testing.assert_array_equal(o[:, :T], np.eye(T)[tasks])
    counts = np.asarray(cfg.replica_counts(M))
    load = o[:, T:T + M]
    assert (load >= 0).all() and (load <= (cfg.queue_capacity + cfg.max_num_seqs) / cfg.max_num_seqs + 1e-12).all()
    assert (load[:, counts == 0] == 0).all()
    if cfg.obs_mode == "rich":
        run_, kv, pred = (o[:, T + M + 1 + k * M:T + M + 1 + (k + 1) * M] for k in range(3))
        assert ((run_ >= 0) & (run_ <= 1)).all() and ((kv >= 0) & (kv <= 1)).all()
        assert ((pred >= 0) & (pred <= 10)).all() and (pred[:, counts == 0] == 10).all()
        np.testing.assert_array_equal(o[:, -2], prompts / prof.ctx_max.max())
        np.testing.assert_array_equal(o[:, -1], np.asarray(cfg.task_deadlines(prof))[tasks])
