"""Hand-worked cases for the continuous-batching reference twin and its routing view
(docs/simulator.md, "Continuous batching"), rule by rule.

Iteration coefficients are binary fractions, so every clock is exact in float64 and compared
with ``==``. Two iteration models:

- ``VAR`` (fixed 1/4, per_seq 1/16, weights 1/2, per_kv_token 1/256, per_token 1/32): the
  formula's every term matters;
- ``FLAT`` (fixed 1/4, weights 1/2, per_token 1/256, others 0): ``τ = 0.75`` whenever an
  iteration has at most 128 tokens, so timelines count iterations.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from bes_jax.profile import profile_from_dict
from bes_jax.reference import ContinuousReferenceSimulator
from bes_jax.reference import routing_view_continuous as rvc
from bes_jax.reference.continuous import DROPPED, QUEUED, REJECTED, RUNNING, SERVED, STATUS
from bes_jax.reference.metrics import compute_metrics
from bes_jax.sim_config import SimConfig

VAR = {"fixed_s": 0.25, "per_seq_s": 1 / 16, "weights_s": 0.5, "per_kv_token_s": 1 / 256, "per_token_s": 1 / 32}
FLAT = {"fixed_s": 0.25, "per_seq_s": 0.0, "weights_s": 0.5, "per_kv_token_s": 0.0, "per_token_s": 1 / 256}
HALF = {"fixed_s": 0.25, "per_seq_s": 0.0, "weights_s": 0.25, "per_kv_token_s": 0.0, "per_token_s": 1 / 512}


def hand_profile(iterations=(FLAT, VAR), ctx=(4096, 4096), kv=(100_000, 100_000), quality=((0.5, 0.25), (0.75, 0.5))):
    M = len(iterations)
    return profile_from_dict({
        "name": "hand-continuous", "hardware": {"name": "hand"},
        "models": [{"name": f"m{m}", "params": 10 ** (6 + m), "ctx_max": ctx[m], "kv_tokens": kv[m],
                    "iteration": dict(iterations[m])} for m in range(M)],
        "tasks": [{"name": "t0", "metric": "acc", "deadline_s": 2.0, "prompt_len": 8, "output_len": 6},
                  {"name": "t1", "metric": "acc", "deadline_s": 8.0, "prompt_len": 40, "output_len": 3}],
        "B_max": 1, "latency_s": [[[1.0], [1.0]]] * M, "quality": [list(q) for q in quality[:M]],
        "provenance": {"latency": "hand-made", "quality": "hand-made"},
    }, "hand-continuous.json")


def run(prof, times, tasks, prompts, outputs, actions, drain=True, trace=False, until=None, **cfg):
    cfg.setdefault("n_gpus", 1)
    cfg.setdefault("batching", "continuous")
    cfg.setdefault("replicas", (1,) * prof.n_models)
    sim = ContinuousReferenceSimulator(prof, SimConfig(**cfg))
    return sim.run(np.asarray(times, float), tasks, prompts, outputs, actions, drain=drain, trace=trace, until=until)


def eq(a, b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b, dtype=np.asarray(a).dtype))


def test_status_codes():
    assert STATUS == {"QUEUED": 1, "SERVED": 2, "DROPPED": 3, "REJECTED": 4, "RUNNING": 5}


def test_single_request_chunked_prefill_and_iteration_time():
    # VAR, K = 16, p = 40, o = 3 at 0. τ = 1/4 + n/16 + max(1/2 + C/256, (P + D)/32):
    # it1 prefill 16 (C 16): .3125 + max(.5625, .5)  = .875     -> E .875
    # it2 prefill 16 (C 32): .3125 + max(.625, .5)   = .9375    -> E 1.8125
    # it3 prefill 8  (C 40): .3125 + max(.65625,.25) = .96875   -> E 2.78125, first token (g = 1)
    # it4 decode     (C 41): .3125 + .66015625       = .97265625 -> E 3.75390625 (g = 2)
    # it5 decode     (C 42): .3125 + .6640625        = .9765625 -> E 4.73046875 (g = 3 = o: done)
    prof = hand_profile()
    res = run(prof, [0.0], [1], [40], [3], [1], trace=True, max_num_seqs=4, max_num_batched_tokens=16)
    eq(res.status, [SERVED])
    eq(res.start, [0.0])
    eq(res.first_token, [2.78125])
    eq(res.finish, [4.73046875])
    eq(res.ttft, [2.78125])
    eq(res.latency, [4.73046875])
    eq(res.tpot, [(4.73046875 - 2.78125) / 2])
    eq(res.generated, [3])
    eq(res.prompt_tokens, [40])
    eq([it["end"] for it in res.trace], [.875, 1.8125, 2.78125, 3.75390625, 4.73046875])
    eq([it["context"] for it in res.trace], [16, 32, 40, 41, 42])
    eq([it["prefill"] for it in res.trace], [16, 16, 8, 0, 0])
    eq([it["decode"] for it in res.trace], [0, 0, 0, 1, 1])
    eq([it["kv_in_use"] for it in res.trace], [0, 16, 32, 41, 42])
    eq([it["reserved"] for it in res.trace], [43] * 5)
    eq(res.final_reserved, [0, 0])
    eq(res.reward, [0.5])  # q[1, 1], on time (8 s deadline)
    eq(res.met_deadline, [True])


def test_token_budget_split_in_admission_order():
    # FLAT (τ = .75), K = 16: r0 (p 20) alone at 0 takes 16; r1 (p 20, same arrival) is admitted
    # at .75; it2: r0 finishes its prompt (4, first token 1.5), r1 gets the other 12; it3: r0
    # decodes (1 token), r1 takes its last 8 -> first token 2.25; then one decode each.
    prof = hand_profile()
    res = run(prof, [0, 0], [0, 0], [20, 20], [2, 2], [0, 0], trace=True, max_num_seqs=4, max_num_batched_tokens=16)
    eq(res.start, [0, .75])
    eq(res.first_token, [1.5, 2.25])
    eq(res.finish, [2.25, 3.0])
    eq([it["prefill"] for it in res.trace], [16, 16, 8, 0])
    eq([it["decode"] for it in res.trace], [0, 0, 1, 1])
    eq([it["n"] for it in res.trace], [1, 2, 2, 1])


def test_kv_budget_binds_with_strict_fifo_and_oversized_requests_are_rejected():
    # kv 100, FLAT. r0 (40 + 20 = 60) runs alone; r1 (30 + 20 = 50) does not fit beside it and
    # blocks r2 (10 + 10 = 20), which would fit: both are admitted when r0 completes at
    # 20 * .75 = 15 (first token .75, then 19 decodes). r3 (60 + 50 = 110 > 100) is rejected at
    # routing; r1 and r2 prefill together in it [15, 15.75].
    prof = hand_profile(kv=(100, 100))
    res = run(prof, [0, 0, 0, 0], [1, 1, 1, 1], [40, 30, 10, 60], [20, 20, 10, 50], [0] * 4, trace=True,
              max_num_seqs=4, max_num_batched_tokens=64)
    eq(res.status, [SERVED, SERVED, SERVED, REJECTED])
    eq(res.start[:3], [0, 15, 15])
    eq(res.first_token[:3], [.75, 15.75, 15.75])
    eq(res.finish, [15, 30, 22.5, 0])
    eq(res.replica, [0, 0, 0, -1])
    assert max(it["reserved"] for it in res.trace) == 70 <= 100
    eq(res.final_reserved, [0, 0])


def test_max_num_seqs_binds():
    # S = 2, FLAT, three p 8 / o 2 requests at 0: r0 alone [0, .75]; r1 joins at .75; r2 waits for
    # r0's completion at 1.5.
    prof = hand_profile()
    res = run(prof, [0, 0, 0], [0] * 3, [8] * 3, [2] * 3, [0] * 3, max_num_seqs=2, max_num_batched_tokens=64)
    eq(res.start, [0, .75, 1.5])
    eq(res.first_token, [.75, 1.5, 2.25])
    eq(res.finish, [1.5, 2.25, 3.0])


def test_context_overflow_truncate_and_reject():
    # ctx 64 on both, kv 70 on m0 and 60 on m1. r0 -> m1: 100 + 10 > 64 -> the prompt's last 54
    # tokens, then 54 + 10 > 60 -> KV reject (prompt_tokens 54, as served); r1: o 64 >= ctx ->
    # rejected, prompt_tokens = p_in; r2: 40 + 10 fits; r3: 61 + 4 > 64 -> truncated to 60,
    # 64 <= 70: served.
    prof = hand_profile(ctx=(64, 64), kv=(70, 60))
    kw = dict(max_num_seqs=4, max_num_batched_tokens=64)
    acts = [1, 0, 0, 0]
    res = run(prof, [0, 0, 0, 0], [0] * 4, [100, 5, 40, 61], [10, 64, 10, 4], acts, **kw)
    eq(res.status, [REJECTED, REJECTED, SERVED, SERVED])
    eq(res.prompt_tokens, [54, 5, 40, 60])
    eq(res.prompt_in, [100, 5, 40, 61])
    eq(res.finish[:2], [0, 0])
    # under reject every overflowing request is a miss and keeps its prompt
    res = run(prof, [0, 0, 0, 0], [0] * 4, [100, 5, 40, 61], [10, 64, 10, 4], acts, context_overflow="reject",
              miss_penalty=0.5, **kw)
    eq(res.status, [REJECTED, REJECTED, SERVED, REJECTED])
    eq(res.prompt_tokens, [100, 5, 40, 61])
    eq(res.reward[[0, 1, 3]], [-0.5] * 3)
    # truncation: r3's 60-token prompt is one prefill iteration (.75) then three decodes
    res = run(prof, [0], [0], [61], [4], [0], trace=True, **kw)
    eq(res.prompt_tokens, [60])
    eq([it["prefill"] for it in res.trace], [60, 0, 0, 0])
    eq(res.finish, [3.0])


def test_drop_expired_at_admission_even_when_the_running_set_is_full():
    # S = 1, FLAT, d(t0) = 2. r0 (p 8, o 4) runs [0, 3] (iteration ends .75, 1.5, 2.25, 3).
    # r1 (arrived 0) is dropped at 2.25 (2.25 > 2) though r0 still runs; r2 (arrived .5) is
    # still fine at 2.25 (1.75) but S is full, and expired at 3 (2.5): dropped; r3 (arrived 2)
    # is admitted at 3.
    prof = hand_profile()
    res = run(prof, [0, 0, .5, 2.0], [0] * 4, [8] * 4, [4, 1, 1, 1], [0] * 4, max_num_seqs=1,
              max_num_batched_tokens=16, drop_expired=True, miss_penalty=0.25)
    eq(res.status, [SERVED, DROPPED, DROPPED, SERVED])
    eq(res.finish, [3.0, 2.25, 3.0, 3.75])
    eq(res.start[[0, 3]], [0, 3.0])
    eq(res.reward[1:3], [-0.25, -0.25])
    eq(res.met_deadline, [False, False, False, True])  # r0: 3 > 2
    eq(res.reward[[0, 3]], [-0.25, 0.5])
    # without drop_expired nothing is dropped; r1 and r2 wait their turn
    res = run(prof, [0, 0, .5, 2.0], [0] * 4, [8] * 4, [4, 1, 1, 1], [0] * 4, max_num_seqs=1,
              max_num_batched_tokens=16)
    eq(res.status, [SERVED] * 4)
    eq(res.finish, [3.0, 3.75, 4.5, 5.25])


def test_exclusive_round_robin_of_two_replicas_on_one_gpu():
    # one GPU, m0 (FLAT, τ .75) and m1 (HALF, τ .5). r0 -> m0 at 0 (p 8, o 3); r1 -> m1 at .25
    # (p 8, o 3) waits for the GPU; admitted at .75 when m0's iteration ends. Then turns
    # alternate: m1 [.75, 1.25] (first token), m0 [1.25, 2], m1 [2, 2.5], m0 [2.5, 3.25] (done),
    # m1 [3.25, 3.75] (done).
    prof = hand_profile(iterations=(FLAT, HALF))
    args = ([0, .25], [0, 0], [8, 8], [3, 3], [0, 1])
    res = run(prof, *args, trace=True, placement="exclusive", max_num_seqs=4, max_num_batched_tokens=16)
    eq(res.start, [0, .75])
    eq(res.first_token, [.75, 1.25])
    eq(res.finish, [3.25, 3.75])
    eq(res.gpu, [0, 0])
    eq([it["replica"] for it in res.trace], [0, 1, 0, 1, 0, 1])
    eq([it["start"] for it in res.trace], [0, .75, 1.25, 2.0, 2.5, 3.25])
    # concurrent: each replica is its own server
    res = run(prof, *args, trace=True, placement="concurrent", max_num_seqs=4, max_num_batched_tokens=16)
    eq(res.start, [0, .25])
    eq(res.first_token, [.75, .75])
    eq(res.finish, [2.25, 1.75])


def test_round_robin_starts_after_the_replica_served_last():
    # three replicas on one GPU (m0, m1, m2, one each, all FLAT). r0 -> m2 runs
    # [0, .75]; r1 -> m0, r2 -> m1 arrive at .5 and are admitted at .75; the turn after
    # replica 2 is replica 0 (cyclic), then 1, then 2.
    prof = hand_profile(iterations=(FLAT, FLAT, FLAT), ctx=(4096,) * 3, kv=(1000,) * 3,
                        quality=((0.5, 0.25), (0.75, 0.5), (1.0, 0.9)))
    res = run(prof, [0, .5, .5], [0] * 3, [8] * 3, [2] * 3, [2, 0, 1], trace=True, max_num_seqs=4,
              max_num_batched_tokens=16)
    eq([it["replica"] for it in res.trace], [2, 0, 1, 2, 0, 1])
    eq(res.finish, [3.0, 3.75, 4.5])


def test_ttft_and_tpot_deadlines():
    # the chunked-prefill case: ttft 2.78125, e2e 4.73046875 (<= 8), tpot .974609375
    prof = hand_profile()
    kw = dict(max_num_seqs=4, max_num_batched_tokens=16, miss_penalty=0.5)
    met = lambda **c: run(prof, [0.0], [1], [40], [3], [1], **kw, **c)
    assert met().met_deadline[0] and met().reward[0] == 0.5
    late = met(ttft_deadlines=(1.0, 2.75))
    assert not late.met_deadline[0] and late.reward[0] == -0.5
    ok = met(ttft_deadlines=(1.0, 2.8125))
    assert ok.met_deadline[0] and ok.reward[0] == 0.5
    assert not met(tpot_deadlines=(1.0, 0.96875)).met_deadline[0]
    assert met(tpot_deadlines=(1.0, 0.984375)).met_deadline[0]
    # deadline_scale scales them too: 2.75 * 2 = 5.5 >= ttft
    assert met(ttft_deadlines=(1.0, 2.75), deadlines=(1.0, 4.0), deadline_scale=2.0).met_deadline[0]
    # soft: the TTFT miss counts for availability only; the value is q (e2e on time)
    soft = met(ttft_deadlines=(1.0, 2.75), deadline_kind="soft")
    assert not soft.met_deadline[0] and soft.reward[0] == 0.5
    # soft and late on e2e (d = 4): linear decay q * (1 - (e2e - d) / d)
    soft = met(deadlines=(1.0, 4.0), deadline_kind="soft")
    assert soft.reward[0] == 0.5 * (1 - (4.73046875 - 4.0) / 4.0)


def test_one_output_token_completes_at_its_first_token():
    prof = hand_profile()
    res = run(prof, [0, 0], [0, 0], [8, 8], [1, 3], [0, 0], max_num_seqs=4, max_num_batched_tokens=64)
    # r0 (o 1) completes with its first token at .75; r1 is admitted then: first 1.5, done 3
    eq(res.first_token, [.75, 1.5])
    eq(res.finish, [.75, 3.0])
    assert math.isnan(res.tpot[0]) and res.tpot[1] == .75


def test_undrained_run_keeps_waiting_and_running_requests():
    prof = hand_profile()
    res = run(prof, [0, 0, 1.0], [0] * 3, [8] * 3, [4, 4, 4], [0] * 3, drain=False, max_num_seqs=1,
              max_num_batched_tokens=64)
    assert res.clock == 1.0
    eq(res.status, [RUNNING, QUEUED, QUEUED])
    eq(res.first_token[:1], [.75])
    assert np.isnan(res.finish).all() and np.isnan(res.reward).all()
    eq(res.generated, [1, 0, 0])
    m = compute_metrics(res, [0, 0, 1.0], [0, 0, 0], prof, SimConfig(batching="continuous", n_gpus=1,
                                                                   replicas=(1, 1)))
    assert m["n_running"] == 1 and m["n_queued"] == 2 and m["n_in_system"] == 3
    # `until`: the events up to a later time too (iteration ends 1.5 and 2.25; r0 has 3 tokens)
    res = run(prof, [0, 0, 1.0], [0] * 3, [8] * 3, [4, 4, 4], [0] * 3, drain=False, until=2.25, max_num_seqs=1,
              max_num_batched_tokens=64)
    assert res.clock == 2.25
    eq(res.generated, [3, 0, 0])
    eq(res.status, [RUNNING, QUEUED, QUEUED])
    with pytest.raises(ValueError, match="until = 0.5"):
        run(prof, [0, 0, 1.0], [0] * 3, [8] * 3, [4, 4, 4], [0] * 3, drain=False, until=0.5)


def test_metrics_by_hand():
    # both on m0 (FLAT), S = 4. r0 (p 8, o 2) at 0: [0, .75] first token, [.75, 1.5] done.
    # r1 (p 8, o 4) at 1 (server busy): admitted 1.5, first 2.25, decodes 3, 3.75, 4.5: done.
    prof = hand_profile()
    cfg = SimConfig(batching="continuous", n_gpus=1, replicas=(1, 1), max_num_seqs=4, max_num_batched_tokens=64)
    times, tasks = [0.0, 1.0], [0, 0]
    res = ContinuousReferenceSimulator(prof, cfg).run(times, tasks, [8, 8], [2, 4], [0, 0])
    eq(res.finish, [1.5, 4.5])
    m = compute_metrics(res, times, tasks, prof, cfg)
    assert m["e2e_p50"] == np.percentile([1.5, 3.5], 50) and m["latency_p50"] == m["e2e_p50"]
    assert m["ttft_p99"] == np.percentile([.75, 1.25], 99)
    assert m["tpot_p50"] == .75
    assert m["output_tokens_per_s"] == 6 / 1.0
    # reservations: 10 tokens for 1.5 s and 12 for 3 s over a pool of 2 * 100000 for 1 s
    assert m["kv_utilisation"] == pytest.approx((10 * 1.5 + 12 * 3.0) / 200_000, rel=1e-12)
    assert m["availability"] == 0.5 and m["slo_goodput"] == 1.0  # r1: 3.5 > 2
    assert m["n_completed"] == 2
    # a TTFT deadline r0 misses (.75 > .5) takes it out of availability and goodput
    cfg2 = SimConfig(batching="continuous", n_gpus=1, replicas=(1, 1), max_num_seqs=4, max_num_batched_tokens=64,
                     ttft_deadlines=(0.5, 1.0))
    res2 = ContinuousReferenceSimulator(prof, cfg2).run(times, tasks, [8, 8], [2, 4], [0, 0])
    m2 = compute_metrics(res2, times, tasks, prof, cfg2)
    assert m2["availability"] == 0.0 and m2["slo_goodput"] == 0.0


def test_input_validation():
    prof = hand_profile()
    sim = ContinuousReferenceSimulator(prof, SimConfig(batching="continuous", n_gpus=1, replicas=(1, 1)))
    with pytest.raises(ValueError, match="prompts has 1 entries"):
        sim.run([0, 1], [0, 0], [8], [2, 2], [0, 0])
    with pytest.raises(ValueError, match=r"outputs\[1\] = 0"):
        sim.run([0, 1], [0, 0], [8, 8], [2, 0], [0, 0])
    with pytest.raises(ValueError, match=r"prompts\[0\] = -3"):
        sim.run([0, 1], [0, 0], [-3, 8], [2, 2], [0, 0])
    with pytest.raises(ValueError, match="non-decreasing"):
        sim.run([1, 0], [0, 0], [8, 8], [2, 2], [0, 0])
    with pytest.raises(ValueError, match=r"tasks\[1\] = 5"):
        sim.run([0, 1], [0, 5], [8, 8], [2, 2], [0, 0])
    with pytest.raises(ValueError, match="must be an integer"):
        sim.run([0, 1], [0, 0], [8.5, 8], [2, 2], [0, 0])
    with pytest.raises(ValueError, match="model index"):
        sim.run([0, 1], [0, 0], [8, 8], [2, 2], [0, 7])
    bad = profile_from_dict({**prof.to_dict(), "models": [{"name": "m0", "params": 10}, {"name": "m1", "params": 11}]})
    with pytest.raises(ValueError, match="ctx_max"):
        ContinuousReferenceSimulator(bad, SimConfig(batching="continuous"))


# ---------------------------------------------------------------- the routing view (shared)
def two_replica_view(busy=True):
    """GPU 0 holds replica 0 (m0, VAR) and replica 1 (m1, FLAT), S = 2, K = 16, ō = 6."""
    prof = hand_profile(iterations=(VAR, FLAT), ctx=(512, 512), kv=(4096, 4096))
    cfg = SimConfig(batching="continuous", n_gpus=1, replicas=(1, 1), max_num_seqs=2, max_num_batched_tokens=16,
                    queue_capacity=4, obs_mode="rich")
    eng = rvc.Engines.from_profile(prof, cfg)
    snap = rvc.Snapshot(now=10.0, replica_model=np.array([0, 1]), replica_server=np.array([0, 0]),
                        valid=np.array([True, True]), n_wait=np.array([1, 2]), n_run=np.array([2, 1]),
                        kv_in_use=np.array([100, 60]), wait_prompt=np.array([20, 30]),
                        out_mean_sum=np.array([18.0, 18.0]), server_busy=np.array([busy]),
                        server_busy_until=np.array([10.5]))
    return prof, cfg, eng, snap


def test_prediction_by_hand():
    # task 0 (ō = 6), p_in 30 -> p̂ = 30. Replica 0: A = 4, n_b = 2, c̄ = (100+20+30)/4 + 3 = 40.5,
    # wait_iters = (4-2)*6/2 = 6, prefill_iters = ceil(30/15) = 2,
    # τ_0(2, 40.5) = .25 + .125 + max(.5 + 81/256, 2/32) = 1.19140625; the other replica of the
    # GPU: τ_1(min(3,2), 90/3) = .75 -> round 1.94140625; residual .5.
    # pred = .5 + (6 + 2 + 6 - 1) * round, ttft = .5 + 8 * round.
    # Replica 1: c̄ = (60+30+30)/4 + 3 = 33, τ_1 = .75; the other: τ_0(2, 120/3 = 40) = 1.1875.
    _, _, eng, snap = two_replica_view()
    pred, ttft, rep = rvc.predict(snap, eng, 0, 30)
    eq(rep, [0, 1])
    eq(pred, [.5 + 13 * 1.94140625, .5 + 13 * 1.9375])
    eq(ttft, [.5 + 8 * 1.94140625, .5 + 8 * 1.9375])
    # an idle server has no residual
    _, _, eng, idle = two_replica_view(busy=False)
    eq(rvc.predict(idle, eng, 0, 30)[0], [13 * 1.94140625, 13 * 1.9375])


def test_prediction_limits():
    prof, cfg, eng, snap = two_replica_view()
    # truncate: p̂ = min(600, 512 - 6) = 506 -> prefill_iters = ceil(506/15) = 34
    pred, ttft, _ = rvc.predict(snap, eng, 0, 600)
    c_bar = (100 + 20 + 506) / 4 + 3
    rnd = .375 + max(.5 + 2 * c_bar / 256, 2 / 32) + .75
    assert ttft[0] == .5 + (6 + 34) * rnd
    # reject: p_in + ō > ctx -> cannot take it
    eng_r = rvc.Engines.from_profile(prof, SimConfig(**{**cfg.to_dict(), "context_overflow": "reject"}))
    pred, ttft, _ = rvc.predict(snap, eng_r, 0, 600)
    assert np.isinf(pred).all() and np.isinf(ttft).all()
    assert np.isfinite(rvc.predict(snap, eng_r, 0, 506)[0]).all()
    # full waiting queue (capacity 4), no live replica, KV budget
    full = rvc.Snapshot(**{**snap.__dict__, "n_wait": np.array([4, 2])})
    assert np.isinf(rvc.predict(full, eng, 0, 30)[0][0]) and np.isfinite(rvc.predict(full, eng, 0, 30)[0][1])
    dead = rvc.Snapshot(**{**snap.__dict__, "valid": np.array([True, False])})
    p, _, rep = rvc.predict(dead, eng, 0, 30)
    assert rep[1] == -1 and np.isinf(p[1])
    small = rvc.Engines(**{**eng.__dict__, "kv_tokens": np.array([30, 36])})
    p, _, _ = rvc.predict(snap, small, 0, 30)
    assert np.isinf(p[0]) and np.isfinite(p[1])  # 30 + 6 > 30; 36 fits


def test_replica_choice_ties():
    snap = rvc.Snapshot(now=0.0, replica_model=np.array([0, 0, 0, 0, 1]), replica_server=np.arange(5),
                        valid=np.array([True, True, True, False, True]), n_wait=np.array([1, 0, 0, 0, 0]),
                        n_run=np.array([0, 1, 1, 0, 0]), kv_in_use=np.array([7, 9, 5, 0, 0]),
                        wait_prompt=np.zeros(5), out_mean_sum=np.zeros(5), server_busy=np.zeros(5, bool),
                        server_busy_until=np.zeros(5))
    assert rvc.choose_replica(snap, 0) == 2   # counts 1,1,1 (3 is dead): least KV in use
    snap2 = rvc.Snapshot(**{**snap.__dict__, "kv_in_use": np.array([5, 9, 5, 0, 0])})
    assert rvc.choose_replica(snap2, 0) == 0  # tie on KV too: lowest index
    assert rvc.choose_replica(snap, 1) == 4 and rvc.choose_replica(snap, 2) == -1


def test_greedy_with_ttft_deadlines():
    prof, cfg, eng, snap = two_replica_view()
    d = eng.deadline[0]  # 2.0
    pick = lambda p, t, e=eng: rvc.greedy_choice(np.array(p), np.array(t), e, 0)
    assert pick([1.0, 1.5], [0.5, 0.5]) == 1          # both on time: higher quality
    assert pick([1.0, d + 1e-9], [0.5, 0.5]) == 0
    assert pick([3.0, 2.5], [0.5, 0.5]) == 1          # none: the fastest
    assert pick([np.inf, np.inf], [np.inf, np.inf]) == 0
    eng_t = rvc.Engines.from_profile(prof, SimConfig(**{**cfg.to_dict(), "ttft_deadlines": (0.4, 1.0)}))
    assert pick([1.0, 1.5], [0.3, 0.5], eng_t) == 0   # m1's TTFT misses 0.4
    assert pick([1.5, 1.0], [0.5, 0.5], eng_t) == 1   # neither meets TTFT: the fastest e2e


def test_rich_observation_by_hand():
    prof, cfg, eng, snap = two_replica_view()
    pred, _, _ = rvc.predict(snap, eng, 1, 30)
    obs = rvc.build_observation("rich", snap, eng, 1, 30, 0.75)
    assert obs.shape == (rvc.observation_size("rich", 2, 2),) == (2 + 4 * 2 + 3,)
    expect = [0, 1,                    # one-hot task 1
              3 / 2, 3 / 2,            # (wait + run) / (S * R_m)
              0.75,                    # rate
              2 / 2, 1 / 2,            # running / (S * R_m)
              100 / 4096, 60 / 4096,   # KV in use / (kv_tokens * R_m)
              *np.minimum(pred / 8.0, 10.0),
              30 / 512, 8.0]
    np.testing.assert_array_equal(obs, expect)
    paper = rvc.build_observation("paper", snap, eng, 1, 30, 0.75)
    np.testing.assert_array_equal(paper, expect[:5])
    # a model that cannot take the request reads 10
    full = rvc.Snapshot(**{**snap.__dict__, "n_wait": np.array([4, 2])})
    assert rvc.build_observation("rich", full, eng, 1, 30, 0.75)[9] == 10.0


def test_the_twin_records_the_views_observation_and_greedy():
    # each decision's recorded observation is the routing view's, on the twin's snapshot
    prof = hand_profile(iterations=(FLAT, VAR), ctx=(256, 512), kv=(400, 2000))
    cfg = SimConfig(batching="continuous", n_gpus=1, replicas=(1, 1), max_num_seqs=2, max_num_batched_tokens=32,
                    obs_mode="rich", queue_capacity=3)
    rng = np.random.default_rng(0)
    n = 40
    times = np.cumsum(rng.choice([0, .25, .5], n))
    tasks, prompts, outputs = rng.integers(0, 2, n), rng.integers(1, 200, n), rng.integers(1, 12, n)
    seen = []

    def router(i, view):
        g = rvc.greedy_choice(view.pred, view.pred_ttft, rvc.Engines.from_profile(prof, cfg), view.task)
        seen.append((view.observation, g))
        return g
    a = ContinuousReferenceSimulator(prof, cfg).run(times, tasks, prompts, outputs, router)
    b = ContinuousReferenceSimulator(prof, cfg).run(times, tasks, prompts, outputs, "greedy")
    eq(a.model, b.model)
    eq(a.model, [g for _, g in seen])
    np.testing.assert_array_equal(np.stack([o for o, _ in seen]), b.observations)
    assert len(set(b.status.tolist())) >= 2
