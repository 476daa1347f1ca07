"""Hand-computed scenarios for the reference simulator (docs/simulator.md, rule by rule).

The profile below uses binary fractions only, so every start/finish is exact in float64 and is
compared with ``==``. Latency ``L[m, t, b]`` for b = 1..4:

    m0: t0 .125 .25 .375 .5     t1 .25 .375 .5  .625      q = .5   .25
    m1: t0 .5   .75 1.0  1.25   t1 .75 1.0  1.25 1.5      q = .75  .5
    m2: t0 1.0  1.5 2.0  2.5    t1 1.5 2.0  2.5  3.0      q = 1.0  .875

Default deadlines: t0 2.0 s, t1 4.0 s.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

from bes_jax.profile import profile_from_dict
from bes_jax.reference.metrics import compute_metrics
from bes_jax.reference.simulator import (DROPPED, QUEUED, REJECTED, SERVED, STATUS,
                                         ReferenceSimulator, View)
from bes_jax.sim_config import SimConfig

LAT = [
    [[0.125, 0.25, 0.375, 0.5], [0.25, 0.375, 0.5, 0.625]],
    [[0.5, 0.75, 1.0, 1.25], [0.75, 1.0, 1.25, 1.5]],
    [[1.0, 1.5, 2.0, 2.5], [1.5, 2.0, 2.5, 3.0]],
]
QUAL = [[0.5, 0.25], [0.75, 0.5], [1.0, 0.875]]
NAN = float("nan")


@pytest.fixture(scope="module")
def prof():
    return profile_from_dict({
        "name": "hand", "hardware": {"name": "paper"},
        "models": [{"name": f"m{m}", "params": 10 ** (6 + m)} for m in range(3)],
        "tasks": [{"name": "t0", "metric": "acc", "deadline_s": 2.0, "prompt_len": 8, "output_len": 1},
                  {"name": "t1", "metric": "acc", "deadline_s": 4.0, "prompt_len": 8, "output_len": 1}],
        "B_max": 4, "latency_s": LAT, "quality": QUAL,
        "provenance": {"latency": "hand-made test table", "quality": "hand-made test table"},
    }, "hand.json")


def run(prof, times, tasks, actions, drain=True, **cfg):
    cfg.setdefault("n_gpus", 1)
    return ReferenceSimulator(prof, SimConfig(**cfg)).run(np.asarray(times, float), np.asarray(tasks), actions,
                                                          drain=drain)


def eq(a, b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b, dtype=np.asarray(a).dtype))


def test_status_codes():
    assert STATUS == {"QUEUED": QUEUED, "SERVED": SERVED, "DROPPED": DROPPED, "REJECTED": REJECTED}
    assert (QUEUED, SERVED, DROPPED, REJECTED) == (1, 2, 3, 4)


def test_queued_requests_form_one_batch_latency_is_max_over_tasks(prof):
    # one replica of m1; r0 starts alone; r1 (t0), r2 (t1) wait and go together at 0.5;
    # batch of 2: max(L[1,t0,2] = .75, L[1,t1,2] = 1.0) = 1.0; r3 waits for that batch.
    res = run(prof, [0, .25, .25, .5], [0, 0, 1, 0], [1, 1, 1, 1], replicas=(0, 1, 0))
    eq(res.status, [SERVED] * 4)
    eq(res.start, [0, .5, .5, 1.5])
    eq(res.finish, [.5, 1.5, 1.5, 2.0])
    eq(res.latency, [.5, 1.25, 1.25, 1.5])
    eq(res.reward, [.75, .75, .5, .75])
    eq(res.met_deadline, [True] * 4)
    eq(res.replica, [0, 0, 0, 0])
    assert res.clock == math.inf


def test_batch_size_capped_at_b_max(prof):
    # six requests at once to one m0 replica: 1 alone, then B_max = 4, then the last one
    res = run(prof, [0] * 6, [0] * 6, [0] * 6, replicas=(1, 0, 0))
    eq(res.start, [0, .125, .125, .125, .125, .625])
    eq(res.finish, [.125, .625, .625, .625, .625, .75])


def test_run_without_drain_stops_at_last_arrival(prof):
    res = run(prof, [0, .25, .25, .5], [0, 0, 1, 0], [1, 1, 1, 1], drain=False, replicas=(0, 1, 0))
    assert res.clock == .5
    eq(res.status, [SERVED, SERVED, SERVED, QUEUED])
    eq(res.completed, [True, False, False, False])  # r0 finishes exactly at the clock
    eq(res.in_flight, [False, True, True, False])
    eq(res.finish, [.5, 1.5, 1.5, NAN])
    eq(res.reward, [.75, NAN, NAN, NAN])  # in flight and queued: not realised yet
    eq(res.met_deadline, [True, False, False, False])


def test_events_at_the_next_arrival_time_happen_before_it(prof):
    # r0's batch ends at .125 exactly when r1 arrives: r1 finds the replica free and idle
    res = run(prof, [0, .125], [0, 0], [0, 0], replicas=(1, 0, 0))
    eq(res.start, [0, .125])
    eq(res.observations[1, 2:5], [0, 0, 0])  # load seen by r1: nothing in the system


def test_replica_choice_fewest_then_earliest_free_then_lowest_index(prof):
    # m0 has two replicas (concurrent, 2 GPUs)
    times = [0, 0, 0, 0, 1.0]
    tasks = [1, 0, 0, 0, 0]
    res = run(prof, times, tasks, [0] * 5, n_gpus=2, replicas=(2, 0, 0))
    # r0: both empty, tie on now -> replica 0 (busy till .25 with t1)
    # r1: replica 1 has 0 in system -> replica 1 (busy till .125)
    # r2: 1 vs 1, replica 1 frees first (.125 < .25) -> replica 1, queued
    # r3: replica 0 has 1, replica 1 has 2 -> replica 0, queued
    # r4 at 1.0: both idle (replica 0 since .375, replica 1 since .25): tie on now -> replica 0
    eq(res.replica, [0, 1, 1, 0, 0])
    eq(res.gpu, [0, 1, 1, 0, 0])
    eq(res.start, [0, 0, .125, .25, 1.0])
    eq(res.finish, [.25, .125, .25, .375, 1.125])


def test_full_queue_rejects_and_zero_replica_model_rejects(prof):
    # capacity 2: r0 starts at once (queue is then empty), r1, r2 wait, r3 and r4 are rejected
    res = run(prof, [0, 0, 0, 0, .0625, .0625], [0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 1],
              replicas=(1, 0, 1), queue_capacity=2, miss_penalty=0.5)
    eq(res.status, [SERVED, SERVED, SERVED, REJECTED, REJECTED, REJECTED])
    eq(res.finish, [.125, .375, .375, 0, .0625, .0625])  # rejected: realised at arrival
    eq(res.start, [0, .125, .125, NAN, NAN, NAN])
    eq(res.reward, [.5, .5, .5, -.5, -.5, -.5])
    eq(res.replica, [0, 0, 0, -1, -1, -1])
    eq(res.model, [0, 0, 0, 0, 0, 1])  # the choice is recorded even when rejected
    eq(res.latency, [.125, .375, .375, NAN, NAN, NAN])


def test_rejected_when_the_chosen_replica_is_full_even_if_another_has_room(prof):
    # docs/simulator.md literally: pick the replica first (in flight counts), then check its queue
    times = [0, 0, 0, 0, 0, 0, .1875, .1875]
    tasks = [0, 1, 0, 0, 0, 0, 0, 0]
    res = run(prof, times, tasks, [0] * 8, n_gpus=2, replicas=(2, 0, 0), queue_capacity=2)
    # at 0: r0 -> rep 0 (alone, till .125); r1 (t1) -> rep 1 (till .25); r2, r4 queue on rep 0
    # (it frees first), r3, r5 on rep 1; at .125 rep 0 runs {r2, r4} till .375
    # at .1875: r6 -> rep 0 (2 in flight + 0 queued < 1 + 2); r7: 3 vs 3, rep 1 frees first
    # (.25 < .375) but its queue is full -> rejected although rep 0's queue has room
    eq(res.replica, [0, 1, 0, 1, 0, 1, 0, -1])
    eq(res.status, [SERVED] * 7 + [REJECTED])
    eq(res.start, [0, 0, .125, .25, .125, .25, .375, NAN])


def test_drop_expired_all_expired_dropped_when_batch_not_full(prof):
    # deadlines (.5, 4); one m1 replica busy with r0 until .75; queue r1 r2 r3 r4
    # at .75: r1 (waited .75) and r3 (.625) expired, r2 (t1) and r4 (.25) not: batch {r2, r4}
    res = run(prof, [0, 0, .125, .125, .5], [1, 0, 1, 0, 0], [1] * 5, replicas=(0, 1, 0),
              drop_expired=True, deadlines=(.5, 4.0), miss_penalty=0.25)
    eq(res.status, [SERVED, DROPPED, SERVED, DROPPED, SERVED])
    eq(res.start, [0, NAN, .75, NAN, .75])
    eq(res.finish, [.75, .75, 1.75, .75, 1.75])  # batch of 2: max(L[1,t1,2]=1, L[1,t0,2]=.75)
    eq(res.reward, [.5, -.25, .5, -.25, -.25])  # r4 served late (1.25 > .5): a miss
    eq(res.met_deadline, [True, False, True, False, False])


def test_drop_expired_non_prefix_keeps_expired_after_last_taken(prof):
    # m1 busy with r0 until .75; queue: r1 x, r2, r3, r4 x, r5, r6, r7 x, r8 (x: expired at .75)
    tasks = [1, 0, 1, 1, 0, 1, 1, 0, 1]
    times = [0] * 8 + [.5]
    res = run(prof, times, tasks, [1] * 9, replicas=(0, 1, 0), drop_expired=True, deadlines=(.5, 4.0))
    # at .75: drop r1, r4; take r2 r3 r5 r6 (B_max); r7 (expired) and r8 stay queued
    # at 2.25: r7 dropped then, r8 alone
    eq(res.status, [SERVED, DROPPED, SERVED, SERVED, DROPPED, SERVED, SERVED, DROPPED, SERVED])
    eq(res.start, [0, NAN, .75, .75, NAN, .75, .75, NAN, 2.25])
    eq(res.finish, [.75, .75, 2.25, 2.25, .75, 2.25, 2.25, 2.25, 3.0])
    # without drain the clock stops at .5: r7 is still queued, nothing dropped yet
    early = run(prof, times, tasks, [1] * 9, drain=False, replicas=(0, 1, 0), drop_expired=True,
                deadlines=(.5, 4.0))
    eq(early.status, [SERVED] + [QUEUED] * 8)


def test_drop_expired_boundary_is_strict(prof):
    # waited exactly d = .5 at formation: not expired (T - a > d is required), served late
    res = run(prof, [0, 0], [0, 0], [1, 1], replicas=(0, 1, 0), drop_expired=True, deadlines=(.5, 4.0))
    eq(res.status, [SERVED, SERVED])
    eq(res.start, [0, .5])


def test_exclusive_gpu_serves_oldest_head_first(prof):
    # one GPU holds m0, m1, m2; r0 occupies it until 1.0
    res = run(prof, [0, .125, .25, .25], [0] * 4, [2, 1, 0, 1], placement="exclusive", replicas=(1, 1, 1))
    # at 1.0: m1's head (r1, .125) is older than m0's (r2, .25): m1 batch {r1, r3} first
    eq(res.start, [0, 1.0, 1.75, 1.0])
    eq(res.finish, [1.0, 1.75, 1.875, 1.75])
    eq(res.gpu, [0, 0, 0, 0])


def test_exclusive_head_tie_goes_to_lower_model(prof):
    res = run(prof, [0, .25, .25], [0] * 3, [2, 1, 0], placement="exclusive", replicas=(1, 1, 1))
    eq(res.start, [0, 1.125, 1.0])
    eq(res.finish, [1.0, 1.625, 1.125])


def test_concurrent_models_on_one_gpu_do_not_wait(prof):
    res = run(prof, [0, .125, .25, .25], [0] * 4, [2, 1, 0, 1], placement="concurrent", replicas=(1, 1, 1))
    eq(res.start, [0, .125, .25, .625])


def test_exclusive_replica_choice_uses_gpu_busy_time(prof):
    # 2 GPUs; GPU 0 is busy with m2 until 1.0, so m0's replica 1 (GPU 1) frees first
    res = run(prof, [0, 0], [0, 0], [2, 0], placement="exclusive", n_gpus=2, replicas=(2, 1, 1))
    eq(res.replica, [3, 1])  # global numbering, model-major: m0 -> 0, 1; m1 -> 2; m2 -> 3
    eq(res.gpu, [0, 1])
    eq(res.start, [0, 0])


def test_exclusive_all_dropped_batch_lets_next_replica_run_at_once(prof):
    # at 1.5 the GPU frees: m0's head r1 is oldest but expired (dropped), so m1's r2 runs at 1.5
    res = run(prof, [0, 0, .125], [1, 0, 1], [2, 0, 1], placement="exclusive", replicas=(1, 1, 1),
              drop_expired=True, deadlines=(.5, 4.0))
    eq(res.status, [SERVED, DROPPED, SERVED])
    eq(res.start, [0, NAN, 1.5])
    eq(res.finish, [1.5, 1.5, 2.25])


@pytest.mark.parametrize("decay,expected", [
    ("linear", [1.0 * 0.5, 0.0]),                      # 1 - .5/1 ; 1 - 1.5/1 clipped at 0
    ("exp", [math.exp(-0.5 / 0.25), math.exp(-1.5 / 0.25)]),
])
def test_soft_rewards(prof, decay, expected):
    # one m2 replica, d(t0) = .5: r0 latency 1.0, r1 latency 2.0
    res = run(prof, [0, 0], [0, 0], [2, 2], replicas=(0, 0, 1), deadline_kind="soft", soft_decay=decay,
              soft_slack=2.0, soft_tau=0.5, deadlines=(.5, 4.0), miss_penalty=0.75)
    eq(res.finish, [1.0, 2.0])
    np.testing.assert_allclose(res.reward, expected, rtol=1e-15)
    eq(res.met_deadline, [False, False])


def test_latency_weight_and_miss_penalty(prof):
    # hard; d = (.5, 4); lw = .25: r0 (t1) on time, r1 (t0) late, r2 rejected (capacity 1)
    res = run(prof, [0, 0, 0], [1, 0, 0], [2, 2, 2], replicas=(0, 0, 1), queue_capacity=1,
              deadlines=(.5, 4.0), miss_penalty=0.5, latency_weight=0.25)
    eq(res.finish, [1.5, 2.5, 0])
    np.testing.assert_allclose(res.reward, [0.875 - 0.25 * 1.5 / 4.0, -0.5 - 0.25 * 2.5 / 0.5, -0.5],
                               rtol=1e-15)
    # soft: the latency term is added to the decayed quality
    soft = run(prof, [0], [0], [2], replicas=(0, 0, 1), deadline_kind="soft", soft_slack=2.0,
               deadlines=(.5, 4.0), latency_weight=0.25)
    np.testing.assert_allclose(soft.reward, [0.5 - 0.25 * 1.0 / 0.5], rtol=1e-15)


def test_greedy_under_load(prof):
    # one replica per model, d(t0) = 2
    res = run(prof, [0] * 7, [0] * 7, "greedy", replicas=(1, 1, 1), placement="concurrent")
    # r0: m2 predicted 1.0 <= 2.  r1: m2 busy: 1.0 + L[2,0,B]=2.5 -> 3.5 > 2; m1 idle .5 -> m1
    # r2..r5: m1 busy till .5 with q = 0..3 queued: .5 + 1.25 = 1.75 -> m1
    # r6: q = 4: .5 + 1 * 1.25 + 1.25 = 3.0 > 2 -> m0 (idle, .125)
    eq(res.model, [2, 1, 1, 1, 1, 1, 0])
    eq(res.start, [0, 0, .5, .5, .5, .5, 0])
    eq(res.finish, [1.0, .5, 1.75, 1.75, 1.75, 1.75, .125])


def test_greedy_falls_back_to_earliest_prediction(prof):
    # d(t0) = 1/16: nothing is predicted on time, greedy takes the smallest predicted completion
    res = run(prof, [0, 0, 0], [0, 0, 0], "greedy", replicas=(1, 1, 1), deadlines=(.0625, 4.0),
              placement="concurrent")
    # r0: m0 (.125); r1: m0 busy -> .125 + .5 = .625 vs m1 .5 -> m1; r2: m0 .625 < m1 1.75, m2 1.0
    eq(res.model, [0, 1, 0])


def test_greedy_skips_full_and_replica_less_models(prof):
    # m2 has no replica; m1's queue (capacity 1) fills: r2 cannot use m1 although it would be on time
    res = run(prof, [0, 0, 0], [1, 1, 1], "greedy", replicas=(1, 1, 0), queue_capacity=1)
    eq(res.model, [1, 1, 0])
    eq(res.status, [SERVED, SERVED, SERVED])


def test_callable_router_sees_the_greedy_inputs(prof):
    seen = []

    def router(i, view):
        assert isinstance(view, View) and view.i == i
        seen.append(view)
        ok = [m for m in range(3) if view.predicted[m] - view.now <= view.deadline]
        return max(ok, key=lambda m: (QUAL[m][view.task], -m)) if ok else int(np.argmin(view.predicted))

    times, tasks = np.arange(40) * 0.0625, np.arange(40) % 2
    a = run(prof, times, tasks, router, n_gpus=2)
    b = run(prof, times, tasks, "greedy", n_gpus=2)
    eq(a.model, b.model)
    eq(a.finish, b.finish)
    eq(a.observations, b.observations)
    eq(seen[3].observation, a.observations[3])


def test_paper_observation_and_rate_estimate(prof):
    # ref_rate 4, alpha .5: g starts at .25 -> rate obs 1.0; r1 gap 1/16: g = .15625 -> 6.4 / 4
    res = run(prof, [0, .0625, .0625], [0, 1, 0], [0, 0, 1], replicas=(1, 1, 0), ewma_alpha=0.5, ref_rate=4.0)
    o = res.observations
    assert o.shape == (3, 2 + 3 + 1)
    np.testing.assert_allclose(o[0], [1, 0, 0, 0, 0, 1.0])
    # r1: r0 in flight on m0 (1 / (B_max * 1)); r2 also sees r1 queued on m0
    np.testing.assert_allclose(o[1], [0, 1, .25, 0, 0, 1.6])
    g2 = 0.5 * 0 + 0.5 * 0.15625
    np.testing.assert_allclose(o[2], [1, 0, .5, 0, 0, 1 / g2 / 4.0])


def test_rich_observation_wait(prof):
    res = run(prof, [0, 0, .0625], [0, 0, 0], [0, 0, 1], replicas=(1, 1, 0), obs_mode="rich",
              queue_capacity=1, placement="concurrent")
    o = res.observations
    assert o.shape == (3, 2 + 2 * 3 + 2)
    # r1 arrives at 0: m0 busy till .125, queue 0 -> wait .125; m1 idle 0; m2 no replica -> cap 10
    np.testing.assert_allclose(o[1, 6:], [.125 / 2.0, 0, 10.0, 2.0])
    # r2 at 1/16: m0's queue is full (capacity 1) -> 10; m1 idle -> 0
    np.testing.assert_allclose(o[2, 6:], [10.0, 0, 10.0, 2.0])
    np.testing.assert_allclose(o[2, 2:5], [2 / 4, 0, 0])


def test_rich_wait_counts_the_shared_gpus_queued_work(prof):
    # exclusive, one GPU: r0 -> m2 runs alone till 1.0; r1 -> m0 queues behind it. For r2 (task 0,
    # d = 2) every model waits for the GPU (1.0), and m1 and m2 also wait for m0's queued request,
    # which arrived earlier: L[0, 0, 1] = .125 -> (1.0 + .125) / 2
    res = run(prof, [0, 0, 0], [0, 0, 0], [2, 0, 1], replicas=(1, 1, 1), obs_mode="rich", placement="exclusive")
    np.testing.assert_allclose(res.observations[2, 6:], [1.0 / 2, 1.125 / 2, 1.125 / 2, 2.0])
    eq(res.start, [0, 1.0, 1.125])  # and that is what happens: m0's request is served first


def test_rich_wait_counts_full_batches_ahead(prof):
    # m0 busy till .125 with 5 queued: wait = (.125 - 0) + floor(5 / 4) * L[0, t1, 4] (pending task t1)
    res = run(prof, [0] * 7, [0] * 6 + [1], [0] * 7, replicas=(1, 0, 0), obs_mode="rich")
    np.testing.assert_allclose(res.observations[6, 6], (.125 + 1 * .625) / 4.0)


def test_input_checks(prof):
    sim = ReferenceSimulator(prof, SimConfig(n_gpus=1))
    with pytest.raises(ValueError, match="non-decreasing"):
        sim.run([0, 1, .5], [0, 0, 0], [0, 0, 0])
    with pytest.raises(ValueError, match="model index"):
        sim.run([0], [0], [3])
    with pytest.raises(ValueError, match="task"):
        sim.run([0], [2], [0])
    with pytest.raises(ValueError, match="greedy"):
        sim.run([0], [0], "random")
    empty = sim.run([], [], [])
    assert empty.status.size == 0 and empty.observations.shape == (0, 6)


def test_metrics_by_hand(prof):
    cfg = SimConfig(n_gpus=2, replicas=(0, 1, 0), drop_expired=True, deadlines=(.5, 4.0), miss_penalty=0.25)
    times = np.array([0, 0, .125, .125, .5])
    tasks = np.array([1, 0, 1, 0, 0])
    res = ReferenceSimulator(prof, cfg).run(times, tasks, [1] * 5)
    # outcomes as in test_drop_expired_all_expired_dropped_when_batch_not_full
    m = compute_metrics(res, times, tasks, prof, cfg, window_s=0.25)
    rewards = np.array([.5, -.25, .5, -.25, -.25])
    peaks = np.array([.875, 1.0, .875, 1.0, 1.0])
    assert m["n_requests"] == 5 and m["n_completed"] == 3 and m["n_dropped"] == 2 and m["n_rejected"] == 0
    assert m["n_in_system"] == 0
    assert m["performance"] == pytest.approx(rewards.mean())
    assert m["peak"] == pytest.approx(peaks.mean())
    assert m["pct_of_peak"] == pytest.approx(rewards.sum() / peaks.sum())
    assert m["availability"] == pytest.approx(2 / 5)
    # windows of .25 s from the first arrival: [r0 r1 r2 r3], [] (empty, excluded), [r4]
    w0 = rewards[:4].sum() / peaks[:4].sum()
    assert m["windows"]["n_requests"] == [4, 0, 1]
    assert m["windows"]["pct_of_peak"][0] == pytest.approx(w0) and m["windows"]["pct_of_peak"][1] is None
    assert m["frac_windows_ge_96"] == 0.0
    assert m["latency_p50"] == pytest.approx(1.25)  # latencies .75, 1.625, 1.25
    assert m["latency_p99"] == pytest.approx(np.percentile([.75, 1.625, 1.25], 99))
    assert m["quality_goodput_per_gpu"] == pytest.approx(rewards.sum() / 0.5 / 2)
    assert m["per_model_share"] == {"m0": 0.0, "m1": 1.0, "m2": 0.0}


def test_metrics_windows_at_peak(prof):
    cfg = SimConfig(n_gpus=1, replicas=(0, 0, 1))
    times = np.array([0.0, 3.0, 6.0])
    tasks = np.array([0, 1, 0])
    res = ReferenceSimulator(prof, cfg).run(times, tasks, [2, 2, 2])
    m = compute_metrics(res, times, tasks, prof, cfg, window_s=2.0)
    assert m["pct_of_peak"] == 1.0 and m["availability"] == 1.0
    assert m["windows"]["n_requests"] == [1, 1, 0, 1]
    assert m["frac_windows_ge_96"] == 1.0 and m["frac_windows_ge_98"] == 1.0


def test_metrics_without_drain_count_unresolved_as_zero(prof):
    cfg = SimConfig(n_gpus=1, replicas=(0, 1, 0))
    times, tasks = np.array([0, .25, .25, .5]), np.array([0, 0, 1, 0])
    res = ReferenceSimulator(prof, cfg).run(times, tasks, [1] * 4, drain=False)
    m = compute_metrics(res, times, tasks, prof, cfg)
    assert m["n_completed"] == 1 and m["n_in_system"] == 3 and m["n_queued"] == 1
    assert m["performance"] == pytest.approx(.75 / 4)


def test_large_run_is_fast(prof):
    rng = np.random.default_rng(1)
    n = 20_000
    times = np.cumsum(rng.exponential(1 / 12.0, n))
    tasks = rng.integers(0, 2, n)
    t0 = time.perf_counter()
    res = run(prof, times, tasks, "greedy", n_gpus=4, drop_expired=True)
    elapsed = time.perf_counter() - t0
    assert not (res.status == QUEUED).any()
    assert elapsed < 20.0, elapsed  # about 0.3 s on one core; generous for loaded CI machines


@pytest.mark.parametrize("drain", [True, False])
def test_metrics_agree_with_the_jax_metrics_on_the_same_outcomes(prof, drain):
    """Two independent metric implementations, fed the same per-request outcomes."""
    jnp = pytest.importorskip("jax.numpy")
    from bes_jax.env import state as S
    from bes_jax.eval.metrics import run_metrics

    rng = np.random.default_rng(7)
    n = 400
    times = np.round(np.cumsum(rng.exponential(1 / 6.0, n)) * 1024) / 1024
    times -= times[0]
    tasks = rng.integers(0, 2, n)
    cfg = SimConfig(n_gpus=2, queue_capacity=3, drop_expired=True, miss_penalty=0.25, deadlines=(1.0, 2.0))
    res = ReferenceSimulator(prof, cfg).run(times, tasks, rng.integers(0, 3, n), drain=drain)
    window_s = 5.0
    ref = compute_metrics(res, times, tasks, prof, cfg, window_s=window_s)
    code = {QUEUED: S.QUEUED, SERVED: S.SERVED, DROPPED: S.DROPPED, REJECTED: S.REJECTED}
    o = S.Outcomes(decision=jnp.arange(n), arrival=jnp.asarray(times), task=jnp.asarray(tasks),
                   model=jnp.asarray(res.model), replica=jnp.asarray(res.replica), start=jnp.asarray(res.start),
                   finish=jnp.asarray(res.finish), reward=jnp.asarray(np.nan_to_num(res.reward)),
                   status=jnp.asarray([code[s] for s in res.status]))
    n_windows = len(ref["windows"]["n_requests"])
    jm = run_metrics(o, jnp.asarray(prof.quality), jnp.asarray(cfg.task_deadlines(prof)), res.clock,
                     cfg.n_gpus, window_s, n_windows)
    assert ref["n_dropped"] > 0 and ref["n_rejected"] > 0
    for k in ("performance", "peak", "pct_of_peak", "availability", "frac_windows_ge_96", "frac_windows_ge_98",
              "latency_p50", "latency_p90", "latency_p99", "quality_goodput_per_gpu"):
        assert float(jm[k]) == pytest.approx(ref[k], rel=1e-5, abs=1e-6), k
    for k in ("n_requests", "n_completed", "n_dropped", "n_rejected", "n_in_system"):
        assert int(jm[k]) == ref[k], k
    np.testing.assert_allclose(np.asarray(jm["per_model_share"]), list(ref["per_model_share"].values()), rtol=1e-6)
