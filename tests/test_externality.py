"""The externality signal of continuous batching (docs/simulator.md "Externality of a decision")
and the learners' training-only price on it (bes_jax.agents.shaping)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bes_jax import workloads as W
from bes_jax.agents.dqn import DQNConfig, make_train
from bes_jax.agents.pqn import PQN, PQNConfig
from bes_jax.env import ContinuousServingEnv, ServingEnv
from bes_jax.profile import profile_from_dict
from bes_jax.sim_config import SimConfig
from conftest import continuous_profile_dict, synthetic_profile_dict

# model 1 = 2x model 0 per iteration (slower, better); powers of two keep the clock exact
COEF = {"fixed_s": 2.0 ** -7, "per_seq_s": 2.0 ** -10, "weights_s": 2.0 ** -6, "per_kv_token_s": 2.0 ** -16,
        "per_token_s": 2.0 ** -12}
D = (10.0, 30.0)  # deadlines of the two tasks


def hand_profile():
    d = continuous_profile_dict(n_models=2, n_tasks=2, kv_tokens=(4000, 4000), ctx_max=(4096, 4096))
    for m, entry in enumerate(d["models"]):
        entry["iteration"] = {k: v * 2.0 ** m for k, v in COEF.items()}
    for t, task in enumerate(d["tasks"]):
        task["deadline_s"] = D[t]
        task["prompt_len"], task["output_len"] = 40, 6
    return profile_from_dict(d, "hand.json")


def tau(m, n, c):
    s = 2.0 ** m
    return s * (COEF["fixed_s"] + COEF["per_seq_s"] * n + max(COEF["weights_s"] + COEF["per_kv_token_s"] * n * c,
                                                             COEF["per_token_s"] * n))


def env_for(placement, **kw):
    cfg = dict(batching="continuous", placement=placement, n_gpus=1, replicas=(1, 1), queue_capacity=8,
               max_num_seqs=4, max_num_batched_tokens=256, outcome_slots=256, episode_len=200, obs_mode="rich")
    cfg.update(kw)
    return ContinuousServingEnv(hand_profile(), SimConfig(**cfg))


def state_after(env, n_first, deadline=None):
    """``n_first`` requests at t=0 routed to model 0, then (after 1 ms, inside the first
    iteration) the pending request whose harm we read; ``deadline`` overrides both tasks'."""
    times = [0.0] * n_first + [1e-3, 1000.0]
    wp = W.trace(times=np.asarray(times), tasks=np.zeros(len(times), int), prompt=np.full(len(times), 40),
                 output=np.full(len(times), 6), n_tasks=2, pad_trace=8)
    params = env.make_params(wp) if deadline is None else env.make_params(wp, deadline=[deadline, deadline])
    _, st = env.reset(jax.random.PRNGKey(0), params)
    first_harm = np.asarray(st.harm)
    for _ in range(n_first):
        _, st, *_ = env.step(jax.random.PRNGKey(1), st, jnp.int32(0), params)
    return first_harm, st


def by_hand(deadline_margin):
    """One request (40 prompt, 6 output tokens) on model 0's engine since t=0, in its first
    iteration (a 40-token prefill) when the pending request arrives: its predicted finish plus
    ``deadline_margin``, and the delays (seconds over its remaining iterations) that choosing
    model 0 or model 1 would impose on it."""
    o_bar, p = 6.0, 40.0
    first_end = tau(0, 1, p)  # its prefill iteration (one sequence, 40 tokens)
    rem = 1 + 6  # the prefill iteration still running (F = 0) and its 6 output tokens
    finish = first_end + rem * tau(0, 1, 0.0)  # its engine holds no KV yet: context 0 per sequence
    stay = 1 + o_bar  # the pending request: one prefill iteration, then o_bar
    delay0 = (tau(0, 2, p / 2 + o_bar / 2) - tau(0, 1, o_bar / 2)) * min(stay, rem)
    delay1 = tau(1, 1, p + o_bar / 2) * min(stay, rem)  # model 1's idle engine joins the GPU's round
    return finish + deadline_margin, delay0, delay1


@pytest.mark.parametrize("placement", ["exclusive", "concurrent"])
def test_harm_by_hand(placement):
    env = env_for(placement)
    first, _ = state_after(env, 2)
    np.testing.assert_array_equal(first, [0.0, 0.0])  # an empty GPU: nobody to slow down
    finish, delay0, delay1 = by_hand(0.0)  # finish: the resident's predicted latency (it arrived at 0)
    shared = placement == "exclusive"  # model 1's engine shares the GPU with model 0's only then
    for d in (10.0, 0.5, finish, 0.05):
        _, st = state_after(env, 1, deadline=d)
        used = min(finish / d, 1.0)  # share of its deadline the resident is predicted to use
        want = [delay0 / d * used, delay1 / d * used if shared else 0.0]
        np.testing.assert_allclose(np.asarray(st.harm), want, rtol=1e-5, err_msg=f"deadline {d}")
    # delay that leaves a request far inside its deadline costs almost nothing
    light, tight = (float(state_after(env, 1, deadline=d)[1].harm[0]) for d in (10.0, finish))
    assert 0 < light < 1e-3 * tight


def test_harm_sums_over_the_requests_sharing_the_gpu():
    env = env_for("exclusive")
    # a deadline every resident is predicted to miss: each counts its whole delay in deadlines
    harms = [float(state_after(env, n, deadline=0.01)[1].harm[1]) for n in (1, 2, 3)]
    _, _, delay1 = by_hand(0.0)
    np.testing.assert_allclose(harms, [n * delay1 / 0.01 for n in (1, 2, 3)], rtol=1e-5)


def test_price_needs_continuous_batching_and_is_non_negative():
    prof = profile_from_dict(synthetic_profile_dict(), "p.json")
    env = ServingEnv(prof, SimConfig(queue_capacity=8, outcome_slots=256, episode_len=100))
    bank = W.stack_workloads([W.poisson(1.0, n_tasks=prof.n_tasks)])
    base = env.make_params(jax.tree.map(lambda x: x[0], bank))
    with pytest.raises(ValueError, match="dqn.externality_price = 1.0: externality pricing needs sim.batching=continuous"):
        make_train(DQNConfig(externality_price=1.0), env, base, bank)
    with pytest.raises(ValueError, match="pqn.externality_price = 0.5"):
        PQN(PQNConfig(n_envs=16, minibatches=4, delay_rollouts=4, externality_price=0.5), env, base, bank)
    cenv = env_for("exclusive")
    cbank = W.stack_workloads([W.poisson(1.0, n_tasks=2)])
    with pytest.raises(ValueError, match="dqn.externality_price = -1.0: must be >= 0"):
        make_train(DQNConfig(externality_price=-1.0), cenv, cenv.make_params(jax.tree.map(lambda x: x[0], cbank)), cbank)


def test_probe_priced_learner_avoids_making_others_late():
    """Known answer: model 1 is better but takes twice model 0's GPU time per iteration. Task 1
    has a deadline no choice can miss (30 s); task 0's (0.3 s) is met on model 0 alone but not
    once model 1's engine joins the GPU's round. Unpriced, the learner sends task-1 requests to
    model 1 (its own reward is higher and never late); priced, it sends them to model 0 while a
    task-0 request is on model 0's engine (a request using most of its deadline, which model 1's
    round would delay). One vmapped program trains both."""
    env = env_for("exclusive")
    bank = W.stack_workloads([W.poisson(6.0, n_tasks=2)])
    base = env.make_params(jax.tree.map(lambda x: x[0], bank), deadline=[0.3, 30.0])
    assert float(base.quality[1, 1]) > float(base.quality[0, 1])
    cfg = DQNConfig(n_envs=8, iterations=1600, chunk_iterations=400, batch_size=64, learning_starts=200,
                    hidden=(32, 32), lr=3e-3, gamma=0.5, eps_decay_fraction=0.5)
    fns = make_train(cfg, env, base, bank)
    prices = jnp.asarray([0.0, 20.0])
    ts, _ = jax.jit(jax.vmap(fns.train))(jnp.stack([jax.random.PRNGKey(0)] * 2), {"externality_price": prices})

    def spare_others(i):
        act = fns.greedy_policy(jax.tree.map(lambda x: x[i], ts.params), jax.tree.map(lambda x: x[i], ts.obs_stats))

        def body(carry, k):
            obs, st = carry
            a = act(None, obs, st, base)
            at_risk = (st.task == 1) & (st.n_task[0, 0] > 0)  # a task-0 request on model 0's engine
            obs, st, *_ = env.step(k, st, a, base)
            return (obs, st), (a, at_risk)
        obs, st = env.reset(jax.random.PRNGKey(5), base)
        _, (a, at_risk) = jax.jit(lambda c: jax.lax.scan(body, c, jax.random.split(jax.random.PRNGKey(6), 600)))((obs, st))
        a, at_risk = np.asarray(a), np.asarray(at_risk)
        assert at_risk.sum() >= 20, at_risk.sum()  # the load often puts a task-0 request at risk
        return float((a[at_risk] == 0).mean())

    unpriced, priced = spare_others(0), spare_others(1)
    assert unpriced < 0.3, unpriced
    assert priced > 0.8, priced


def test_null_price_resolves_per_serving_model():
    from bes_jax.agents.shaping import DEFAULT_PRICE, resolve_price

    assert resolve_price({"externality_price": None}, "continuous")["externality_price"] == DEFAULT_PRICE["continuous"] > 0
    assert resolve_price({"externality_price": None}, "request")["externality_price"] == 0.0
    assert resolve_price({"externality_price": 2.5}, "request")["externality_price"] == 2.5  # the learner refuses it
