"""The JAX continuous-batching simulator on its own: hand-worked cases from docs/simulator.md
"Continuous batching", then batching / vmap / accounting properties.

Float64 throughout (the module fixture), with dyadic iteration coefficients, so hand-worked
times are exact.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bes_jax import workloads as W
from bes_jax.env import (DROPPED, QUEUED, REJECTED, RUNNING, SERVED, ContinuousServingEnv, ServingEnv,
                         make_serving_env, resolved_mask)
from bes_jax.profile import ProfileError, profile_from_dict
from bes_jax.routers import greedy_action
from bes_jax.sim_config import SimConfig
from conftest import continuous_profile_dict, synthetic_profile_dict

# iteration coefficients: model 0 (fast, worse), model 1 = 2x model 0 (slow, better)
COEF = {"fixed_s": 2.0 ** -7, "per_seq_s": 2.0 ** -10, "weights_s": 2.0 ** -6, "per_kv_token_s": 2.0 ** -16,
        "per_token_s": 2.0 ** -12}
FAR = 1000.0  # a last arrival long after the case: routing the case's last request runs it to completion


@pytest.fixture(scope="module", autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def hand_profile():
    d = continuous_profile_dict(n_models=2, n_tasks=2, kv_tokens=(4000, 4000), ctx_max=(4096, 4096))
    for m, entry in enumerate(d["models"]):
        entry["iteration"] = {k: v * 2.0 ** m for k, v in COEF.items()}
    d["tasks"][0]["deadline_s"] = 10.0
    d["tasks"][1]["deadline_s"] = 100.0
    return profile_from_dict(d, "hand.json")


def tau(m, n, C, tokens):
    """docs/simulator.md: fixed_s + per_seq_s n + max(weights_s + per_kv_token_s C, per_token_s (P + D))."""
    s = 2.0 ** m
    return s * COEF["fixed_s"] + s * COEF["per_seq_s"] * n + max(s * COEF["weights_s"] + s * COEF["per_kv_token_s"] * C,
                                                                s * COEF["per_token_s"] * tokens)


_ENVS = {}


def env_for(**cfg):
    key = tuple(sorted(cfg.items()))
    if key not in _ENVS:
        base = dict(batching="continuous", placement="concurrent", n_gpus=1, replicas=(1, 1), queue_capacity=4,
                    max_num_seqs=2, max_num_batched_tokens=256, outcome_slots=64, episode_len=1000, obs_mode="rich")
        base.update(cfg)
        _ENVS[key] = ContinuousServingEnv(hand_profile(), SimConfig(**base))
    return _ENVS[key]


def run_case(env, requests, actions, n_steps=None, **overrides):
    """Route ``requests`` [(time, task, prompt, output)] to ``actions``; a last arrival at FAR
    (never routed) lets the events of the case run out. Returns (outcomes by decision, state)."""
    times, tasks, prompts, outputs = (list(x) for x in zip(*requests))
    times.append(FAR), tasks.append(0), prompts.append(1), outputs.append(1)
    wp = W.trace(times=np.asarray(times), tasks=np.asarray(tasks), prompt=np.asarray(prompts),
                 output=np.asarray(outputs), n_tasks=2, pad_trace=16)
    params = env.make_params(wp, **overrides)
    obs, st = env.reset(jax.random.PRNGKey(0), params)
    for a in actions[:n_steps]:
        obs, st, _, _, _ = env.step(jax.random.PRNGKey(1), st, jnp.asarray(a, jnp.int32), params)
    o = jax.tree.map(np.asarray, st.outcomes)
    order = np.argsort(np.where(o.decision >= 0, o.decision, 1 << 30))[:len(actions[:n_steps])]
    return jax.tree.map(lambda x: x[order], o), st, params


def expect(o, i, start, first, finish, status=SERVED):
    assert o.status[i] == status, (i, o.status[i])
    for name, want, got in (("start", start, o.start[i]), ("first_token", first, o.first_token[i]),
                            ("finish", finish, o.finish[i])):
        if want is None:
            assert np.isnan(got), (i, name, got)
        else:
            assert got == want, (i, name, got, want)


# ---------------------------------------------------------------------------- hand-worked cases
def test_one_request_alone_chunked_prefill():
    """p = 100 under K = 64: two prefill iterations (64 then 36), the first token at the end of
    the second, then one decode per iteration until g = o = 3."""
    o, _, params = run_case(env_for(), [(0.0, 0, 100, 3)], [0], max_batched_tokens=jnp.asarray(64, jnp.int32))
    e1 = tau(0, 1, 64, 64)
    e2 = e1 + tau(0, 1, 100, 36)          # C = f + c = 64 + 36
    e3 = e2 + tau(0, 1, 101, 1)           # decode: C = p + g
    e4 = e3 + tau(0, 1, 102, 1)
    expect(o, 0, 0.0, e2, e4)
    assert o.reward[0] == float(params.quality[0, 0])
    assert (o.prompt[0], o.prompt_in[0], o.output[0], o.replica[0]) == (100, 100, 3, 0)


def test_running_set_limit_binds_and_iterations_mix_decode_and_prefill():
    """max_num_seqs = 2: the third request waits for a completion; an iteration decodes the
    running sequences and prefills the newly admitted one."""
    reqs = [(0.0, 0, 10, 2), (0.001, 0, 10, 2), (0.002, 0, 10, 2)]
    o, _, _ = run_case(env_for(), reqs, [0, 0, 0])
    e1 = tau(0, 1, 10, 10)                # r0 prefills alone; r1 admitted at e1 (r2: set full)
    e2 = e1 + tau(0, 2, 11 + 10, 1 + 10)  # r0 decodes (C = 10 + 1), r1 prefills 10
    e3 = e2 + tau(0, 2, 11 + 10, 1 + 10)  # r0 done at e2, r2 admitted; r1 decodes, r2 prefills
    e4 = e3 + tau(0, 1, 11, 1)
    expect(o, 0, 0.0, e1, e2)
    expect(o, 1, e1, e2, e3)
    expect(o, 2, e2, e3, e4)


def test_chunked_prefill_when_the_token_budget_binds():
    """K = 16: decodes take their token first; prefills share the rest in admission order."""
    env = env_for()
    K16 = dict(max_batched_tokens=jnp.asarray(16, jnp.int32))
    o, _, _ = run_case(env, [(0.0, 0, 8, 3), (0.001, 0, 20, 2)], [0, 0], **K16)
    e1 = tau(0, 1, 8, 8)
    e2 = e1 + tau(0, 2, 9 + 15, 16)       # r0 decodes, r1 gets 16 - 1 = 15
    e3 = e2 + tau(0, 2, 10 + 20, 1 + 5)   # r0 decodes (done), r1 its last 5
    e4 = e3 + tau(0, 1, 21, 1)
    expect(o, 0, 0.0, e1, e3)
    expect(o, 1, e1, e3, e4)
    # two prefills in one iteration: the earlier admitted takes the budget first
    o, _, _ = run_case(env, [(0.0, 0, 30, 2), (0.001, 0, 30, 2)], [0, 0], **K16)
    e1 = tau(0, 1, 16, 16)
    e2 = e1 + tau(0, 2, 30 + 2, 16)       # r0: 14 (done prefilling), r1: 2
    e3 = e2 + tau(0, 2, 31 + 17, 16)      # r0 decodes (done), r1: 15
    e4 = e3 + tau(0, 1, 30, 13)           # r1: last 13
    e5 = e4 + tau(0, 1, 31, 1)
    expect(o, 0, 0.0, e2, e3)
    expect(o, 1, e1, e4, e5)


def test_kv_reservation_binds():
    """A waiting request joins only when the running set's reservation plus its p + o fits."""
    env = env_for()
    reqs = [(0.0, 1, 100, 50), (0.001, 1, 80, 30)]
    e = tau(0, 1, 100, 100)
    first = e
    for g in range(1, 50):
        e += tau(0, 1, 100 + g, 1)
    kv = lambda x: dict(kv_tokens=jnp.asarray([x, 4000], jnp.int32))
    o, _, _ = run_case(env, reqs, [0, 0], **kv(250))   # 150 + 110 > 250: r1 waits for r0
    expect(o, 0, 0.0, first, e)
    f1 = e1 = e + tau(0, 1, 80, 80)
    for g in range(1, 30):
        e1 += tau(0, 1, 80 + g, 1)
    expect(o, 1, e, f1, e1)
    o, _, _ = run_case(env, reqs, [0, 0], **kv(260))   # fits: admitted after r0's first iteration
    assert o.start[1] == first
    # while r0 runs (one step routes it and advances to r1's arrival) it is RUNNING
    o, st, _ = run_case(env, reqs, [0, 0], n_steps=1, **kv(250))
    assert o.status[0] == RUNNING and o.start[0] == 0.0 and np.isnan(o.finish[0])
    assert int(st.kv_reserved[0]) == 150 and int(st.n_run[0]) == 1


def test_context_overflow_truncate_and_reject_and_kv_rejection():
    env = env_for()
    ctx = dict(ctx_max=jnp.asarray([128, 4096], jnp.int32))
    reqs = [(0.0, 0, 200, 28), (1.0, 0, 10, 130), (2.0, 0, 90, 28)]
    o, _, params = run_case(env, reqs, [0, 0, 0], **ctx)
    # truncate: 200 + 28 > 128 -> the last 100 prompt tokens; o >= ctx -> rejected
    assert o.status[0] == SERVED and (o.prompt[0], o.prompt_in[0]) == (100, 200)
    assert o.first_token[0] == tau(0, 1, 100, 100)
    assert o.status[1] == REJECTED and o.finish[1] == 1.0 and (o.prompt[1], o.prompt_in[1]) == (10, 10)
    assert o.reward[1] == -float(params.miss_penalty) and np.isnan(o.start[1])
    o, _, _ = run_case(env, reqs, [0, 0, 0], truncate=jnp.asarray(False), **ctx)
    assert list(o.status) == [REJECTED, REJECTED, SERVED] and o.prompt[0] == 200
    # KV: p + o beyond the whole budget is rejected at routing (prompt as served)
    o, _, _ = run_case(env, reqs, [0, 0, 0], kv_tokens=jnp.asarray([127, 4000], jnp.int32), **ctx)
    assert list(o.status) == [REJECTED, REJECTED, SERVED] and o.prompt[0] == 100


def test_drop_expired_drops_the_head_and_admission_goes_on():
    """r1 (deadline 0.05 s) waits behind r0's KV; at the first iteration end past its deadline it
    is dropped, and r2 behind it (which fits) is admitted at the same time."""
    env = env_for(placement="exclusive", drop_expired=True)  # one GPU, only model 0 used
    deadline = jnp.asarray([0.05, 100.0])
    reqs = [(0.0, 1, 100, 100), (0.001, 0, 10, 60), (0.002, 1, 10, 10)]
    o, _, params = run_case(env, reqs, [0, 0, 0], deadline=deadline, miss_penalty=jnp.asarray(0.5),
                            kv_tokens=jnp.asarray([250, 4000], jnp.int32))
    e1 = tau(0, 1, 100, 100)
    e2 = e1 + tau(0, 1, 101, 1)
    assert e1 - 0.001 <= 0.05 < e2 - 0.001  # r1 expires between the first and second iteration end
    assert o.status[1] == DROPPED and o.finish[1] == e2 and o.reward[1] == -0.5 and np.isnan(o.start[1])
    assert o.status[2] == SERVED and o.start[2] == e2


def test_exclusive_round_robin_two_replicas_on_one_gpu():
    """One GPU holds a replica of each model: iterations alternate between the engines that have
    running sequences, starting after the one served last."""
    env = env_for(placement="exclusive", drop_expired=True)  # nothing expires here
    o, _, _ = run_case(env, [(0.0, 0, 10, 3), (0.001, 0, 10, 2)], [0, 1])
    e1 = tau(0, 1, 10, 10)        # model 0 alone (r1 queued on model 1's replica, admitted at e1)
    e2 = e1 + tau(1, 1, 10, 10)   # model 1: r1 prefills
    e3 = e2 + tau(0, 1, 11, 1)    # model 0: r0 decodes
    e4 = e3 + tau(1, 1, 11, 1)    # model 1: r1 decodes -> done
    e5 = e4 + tau(0, 1, 12, 1)    # model 0: r0 done
    expect(o, 0, 0.0, e1, e5)
    expect(o, 1, e1, e2, e4)
    assert list(o.replica) == [0, 1]
    # concurrent: each replica is its own server, no slicing
    o, _, _ = run_case(env_for(), [(0.0, 0, 10, 3), (0.001, 0, 10, 2)], [0, 1])
    expect(o, 1, 0.001, 0.001 + tau(1, 1, 10, 10), 0.001 + tau(1, 1, 10, 10) + tau(1, 1, 11, 1))


def test_ttft_deadline_miss_and_tpot():
    """Same timeline as the running-set case; a TTFT deadline between r1's and r2's TTFT makes
    r2 a miss although its end-to-end latency is within its deadline."""
    reqs = [(0.0, 0, 10, 2), (0.001, 0, 10, 2), (0.002, 0, 10, 2)]
    e1 = tau(0, 1, 10, 10)
    e2 = e1 + tau(0, 2, 21, 11)
    e3 = e2 + tau(0, 2, 21, 11)
    ttft1, ttft2 = e2 - 0.001, e3 - 0.002
    limit = 0.5 * (ttft1 + ttft2)
    env = env_for()
    o, _, params = run_case(env, reqs, [0, 0, 0], miss_penalty=jnp.asarray(0.5),
                            ttft_deadline=jnp.asarray([limit, np.inf]))
    q = float(params.quality[0, 0])
    assert list(o.reward) == [q, q, -0.5]
    # TPOT = (e2e - ttft) / (o - 1): r0 and r1 decode their second token in a two-sequence
    # iteration, r2 alone (faster); a limit between them misses r0 and r1 only
    e4 = e3 + tau(0, 1, 11, 1)
    tp = [e2 - e1, e3 - e2, e4 - e3]
    assert tp[2] < tp[0] == tp[1]
    lim = 0.5 * (tp[1] + tp[2])
    o, _, _ = run_case(env, reqs, [0, 0, 0], miss_penalty=jnp.asarray(0.5), tpot_deadline=jnp.asarray([lim, np.inf]))
    assert list(o.reward) == [-0.5, -0.5, q]


def test_prediction_and_rich_observation_of_an_empty_pool():
    env = env_for()
    o, st, params = run_case(env, [(0.0, 0, 40, 6)], [], n_steps=0)
    obs = np.asarray(jax.jit(env.observe)(st, params))
    predict, greedy = jax.jit(env._predict), jax.jit(greedy_action)
    T, M = 2, 2
    assert obs.shape == (T + 4 * M + 3,) == (env.obs_size,)
    # empty replica: A = 1, n_b = 1, c = p + o_bar / 2, one prefill iteration, then o_bar - 1 rounds
    o_bar = 6.0
    for m in range(M):
        s = 2.0 ** m
        rnd = s * (COEF["fixed_s"] + COEF["per_seq_s"] + max(COEF["weights_s"] + COEF["per_kv_token_s"] * (40 + 3),
                                                            COEF["per_token_s"]))
        assert float(st.pred_e2e[m]) == (1 + o_bar - 1) * rnd
        assert float(st.pred_ttft[m]) == rnd
    d = 10.0
    np.testing.assert_array_equal(obs[:T], [1, 0])
    np.testing.assert_array_equal(obs[T:T + M + 1 + 2 * M], [0, 0, 1, 0, 0, 0, 0])
    np.testing.assert_allclose(obs[T + 3 * M + 1:T + 4 * M + 1], np.asarray(st.pred_e2e) / d)
    assert obs[-2] == 40 / 4096 and obs[-1] == d
    # greedy: the better model meets the deadline; with a deadline only the fast one meets, it
    # picks that; with none met, the fastest
    assert int(greedy(st, params)) == 1
    tight = params.replace(deadline=jnp.asarray([float(st.pred_e2e[0]), 100.0]))
    assert int(greedy(predict(st, tight), tight)) == 0
    none = params.replace(deadline=jnp.asarray([1e-6, 100.0]))
    assert int(greedy(predict(st, none), none)) == 0


def test_factory_and_missing_fields(synthetic_profile):
    prof = hand_profile()
    assert isinstance(make_serving_env(prof, SimConfig(outcome_slots=4096)), ServingEnv)
    cfg = SimConfig(batching="continuous", outcome_slots=4096)
    assert isinstance(make_serving_env(prof, cfg), ContinuousServingEnv)
    with pytest.raises(ProfileError, match="ctx_max"):
        make_serving_env(synthetic_profile, cfg)
    with pytest.raises(Exception, match="outcome_slots"):
        ContinuousServingEnv(prof, dataclasses.replace(cfg, outcome_slots=16))


# ---------------------------------------------------------------------------- properties
N_ENVS, N_STEPS, EPISODE = 6, 150, 50


@pytest.fixture(scope="module")
def busy():
    """Exclusive, drop_expired, small running sets and KV: every mechanism binds. One compiled
    program runs `vmap(step)` and `step_batch` side by side on environments whose params differ
    (pairs with the same arrivals and actions, deadline d and 8 d), then drains."""
    prof = profile_from_dict(continuous_profile_dict(), "continuous.json")
    cfg = SimConfig(batching="continuous", placement="exclusive", n_gpus=2, queue_capacity=6, max_num_seqs=4,
                    max_num_batched_tokens=64, outcome_slots=512, drop_expired=True, obs_mode="rich",
                    episode_len=EPISODE, miss_penalty=0.25)
    env = ContinuousServingEnv(prof, cfg)
    base = env.make_params(W.gamma(150.0, 2.0, n_tasks=prof.n_tasks))
    scale = jnp.asarray([1.0, 8.0] * (N_ENVS // 2))
    params = base.replace(deadline=base.deadline[None] * scale[:, None])
    axes = jax.tree.map(lambda _: None, base).replace(deadline=0)
    pair = lambda x: jnp.repeat(x, 2, axis=0)  # env 2j and 2j + 1 share keys and actions
    keys = pair(jax.random.split(jax.random.PRNGKey(9), N_ENVS // 2))
    _, states = jax.vmap(env.reset, in_axes=(0, axes))(keys, params)

    @jax.jit
    def both(states, key):
        def body(carry, k):
            s1, s2 = carry
            ks = pair(jax.random.split(k, N_ENVS // 2))
            a = pair(jax.random.randint(k, (N_ENVS // 2,), 0, env.n_models))
            _, s1, r1, d1, _ = jax.vmap(env.step, in_axes=(0, 0, 0, axes))(ks, s1, a, params)
            _, s2, r2, _, _ = env.step_batch(ks, s2, a, params, axes)
            return (s1, s2), (r1, r2, d1)
        (s1, s2), out = jax.lax.scan(body, (states, states), jax.random.split(key, N_STEPS))
        return s1, s2, out, env.drain_batch(s2, params, axes)

    s1, s2, (r1, r2, done), drained = both(states, jax.random.PRNGKey(1))
    # the same run through `step_batch` alone with 2 lanes per loop trip (12 environment-server
    # pairs): the loop takes several trips per step, as it does by default from 1024 environments
    narrow = ContinuousServingEnv(prof, cfg)
    narrow.loop_lanes = lambda n: 2

    @jax.jit
    def few_lanes(states, key):
        def body(s, k):
            ks = pair(jax.random.split(k, N_ENVS // 2))
            a = pair(jax.random.randint(k, (N_ENVS // 2,), 0, env.n_models))
            _, s, r, _, _ = narrow.step_batch(ks, s, a, params, axes)
            return s, r
        return jax.lax.scan(body, states, jax.random.split(key, N_STEPS))

    s3, r3 = few_lanes(states, jax.random.PRNGKey(1))
    return env, params, s1, s2, r1, r2, done, drained, s3, r3


def test_step_batch_equals_vmapped_step(busy):
    env, params, s1, s2, r1, r2, _, _, s3, r3 = busy
    for other, r in ((s2, r2), (s3, r3)):  # default lanes, then 2 lanes per loop trip
        for x, y in zip(jax.tree.leaves(s1), jax.tree.leaves(other)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        np.testing.assert_array_equal(np.asarray(r1), np.asarray(r))
    assert (np.asarray(s1.outcomes.status) == SERVED).sum() > 100


def test_accounting_rewards_and_episodes(busy):
    """Every decision is in the ring once (episodes do not reset the system), the step rewards
    sum to the realised outcome rewards, and a drain empties everything."""
    env, params, st, _, rewards, _, done, drained, _, _ = busy
    done = np.asarray(done)
    assert (done.sum(0) == N_STEPS // EPISODE).all() and done[EPISODE - 1].all() and not done[EPISODE - 2].any()
    o = jax.tree.map(np.asarray, st.outcomes)
    mask = np.asarray(jax.vmap(resolved_mask)(st))
    kv_budget = np.repeat(np.asarray(params.kv_tokens), env.r_max)
    for n in range(N_ENVS):
        used = o.decision[n] >= 0
        assert sorted(o.decision[n][used]) == list(range(N_STEPS))
        status = o.status[n][used]
        assert (status == QUEUED).sum() == int(st.queue_len[n].sum())
        assert (status == RUNNING).sum() == int(st.n_run[n].sum())
        assert np.isclose(float(rewards[:, n].sum()), o.reward[n][mask[n]].sum(), rtol=1e-9, atol=1e-9)
        assert np.isnan(o.reward[n][used & ~mask[n]]).all()
        assert (np.asarray(st.kv_reserved[n]) <= kv_budget).all()
        served = o.status[n] == SERVED
        assert (o.first_token[n][served] > o.start[n][served]).all()
        assert (o.finish[n][served] >= o.first_token[n][served]).all()
    seen = set(np.unique(o.status[o.decision >= 0]))
    assert seen == {SERVED, DROPPED, REJECTED, QUEUED, RUNNING}, seen  # the setup exercises every state
    d = jax.tree.map(np.asarray, drained)
    assert not np.isin(d.outcomes.status, [QUEUED, RUNNING]).any()
    for x in (d.n_run, d.kv_used, d.kv_reserved, d.queue_len, d.wait_prompt, d.n_task):
        assert x.sum() == 0
    assert not d.busy.any()


def test_vmap_over_params_two_deadlines_in_one_program(busy):
    """Pairs see the same arrivals and actions; the looser deadline drops less and meets more."""
    env, params, st, _, _, _, _, _, _, _ = busy
    o = jax.tree.map(np.asarray, st.outcomes)
    d = np.asarray(params.deadline)
    met = ((o.status == SERVED) & (o.finish - o.arrival <= np.take_along_axis(d, o.task, axis=1))).sum(1)
    dropped = (o.status == DROPPED).sum(1)
    np.testing.assert_array_equal(o.arrival[0::2], o.arrival[1::2])
    assert (met[1::2] >= met[0::2]).all() and met[1::2].sum() > met[0::2].sum(), met
    assert dropped[1::2].sum() < dropped[0::2].sum(), dropped
