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


def state_after(env, n_first):
    """Two requests at t=0 routed to model 0, then (after 1 ms, inside the first iteration) the
    pending request whose harm we read."""
    times = [0.0] * n_first + [1e-3, 1000.0]
    wp = W.trace(times=np.asarray(times), tasks=np.zeros(len(times), int), prompt=np.full(len(times), 40),
                 output=np.full(len(times), 6), n_tasks=2, pad_trace=8)
    params = env.make_params(wp)
    _, st = env.reset(jax.random.PRNGKey(0), params)
    first_harm = np.asarray(st.harm)
    for _ in range(n_first):
        _, st, *_ = env.step(jax.random.PRNGKey(1), st, jnp.int32(0), params)
    return first_harm, st


@pytest.mark.parametrize("placement", ["exclusive", "concurrent"])
def test_harm_by_hand(placement):
    env = env_for(placement)
    first, st = state_after(env, 2)
    np.testing.assert_array_equal(first, [0.0, 0.0])  # an empty GPU: nobody to slow down
    assert int(st.n_run[0]) + int(st.queue_len[0]) == 2
    o_bar, p, mean_d = 6.0, 40.0, float(np.mean(D))
    stay = 1 + o_bar  # one prefill iteration (40 <= 256 tokens), then o_bar
    # model 1: its engine is idle; under exclusive it joins the GPU's round, which the two
    # requests on model 0's engine then wait for every iteration; under concurrent nobody shares
    want1 = tau(1, 1, p + o_bar / 2) * stay * 2 / mean_d if placement == "exclusive" else 0.0
    np.testing.assert_allclose(float(st.harm[1]), want1, rtol=1e-6)
    # model 0: the two ahead of it on its own engine get a longer iteration either way
    U, W_ = int(st.kv_used[0]), int(st.wait_prompt[0])
    delta = tau(0, 3, (U + W_ + p) / 3 + o_bar / 2) - tau(0, 2, (U + W_) / 2 + o_bar / 2)
    np.testing.assert_allclose(float(st.harm[0]), delta * stay * 2 / mean_d, rtol=1e-6)
    assert float(st.harm[0]) > 0


def test_harm_grows_with_the_requests_sharing_the_gpu():
    env = env_for("exclusive")
    harms = [float(state_after(env, n)[1].harm[1]) for n in (1, 2, 3)]
    assert 0 < harms[0] < harms[1] < harms[2]
    np.testing.assert_allclose(np.asarray(harms) / harms[0], [1, 2, 3], rtol=1e-6)


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


def test_probe_priced_learner_avoids_the_model_that_slows_the_gpu():
    """Known answer: model 1 is better but takes twice model 0's GPU time per iteration, so every
    request it serves slows the others on the GPU twice as much. Unpriced, the learner sends most
    requests to model 1 (every deadline is met either way); with a large price on the harm it
    sends them to model 0 whenever the GPU is shared. One vmapped program trains both."""
    env = env_for("exclusive")
    bank = W.stack_workloads([W.poisson(6.0, n_tasks=2)])
    base = env.make_params(jax.tree.map(lambda x: x[0], bank))
    cfg = DQNConfig(n_envs=8, iterations=1600, chunk_iterations=400, batch_size=64, learning_starts=200,
                    hidden=(32, 32), lr=3e-3, gamma=0.5, eps_decay_fraction=0.5)
    fns = make_train(cfg, env, base, bank)
    prices = jnp.asarray([0.0, 300.0])
    ts, _ = jax.jit(jax.vmap(fns.train))(jnp.stack([jax.random.PRNGKey(0)] * 2), {"externality_price": prices})

    def share_model0(i):
        act = fns.greedy_policy(jax.tree.map(lambda x: x[i], ts.params), jax.tree.map(lambda x: x[i], ts.obs_stats))

        def body(carry, k):
            obs, st = carry
            a = act(None, obs, st, base)
            shared = st.harm[0] > 0  # someone else is on the GPU
            obs, st, *_ = env.step(k, st, a, base)
            return (obs, st), (a, shared)
        obs, st = env.reset(jax.random.PRNGKey(5), base)
        _, (a, shared) = jax.jit(lambda c: jax.lax.scan(body, c, jax.random.split(jax.random.PRNGKey(6), 400)))((obs, st))
        a, shared = np.asarray(a), np.asarray(shared)
        assert shared.mean() > 0.3  # the load keeps the GPU shared often
        return float((a[shared] == 0).mean())

    unpriced, priced = share_model0(0), share_model0(1)
    assert unpriced < 0.3, unpriced
    assert priced > 0.8, priced


def test_null_price_resolves_per_serving_model():
    from bes_jax.agents.shaping import DEFAULT_PRICE, resolve_price

    assert resolve_price({"externality_price": None}, "continuous")["externality_price"] == DEFAULT_PRICE["continuous"] > 0
    assert resolve_price({"externality_price": None}, "request")["externality_price"] == 0.0
    assert resolve_price({"externality_price": 2.5}, "request")["externality_price"] == 2.5  # the learner refuses it
