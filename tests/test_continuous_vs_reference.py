"""The JAX continuous-batching simulator against its independent reference twin, request by
request: admission, first token, completion, status, served prompt, reward, and the
observation each decision was made on (docs/simulator.md "Continuous batching"); and the two
metric implementations on the same runs.

Under x64 with the dyadic test profile (``conftest.continuous_profile_dict``) and arrival times
on a 2^-20 s grid, every clock is exact in both simulators; the tolerance (1e-9) only covers the
prediction's divisions. Cases vary, per compiled layout, what the params can vary: the token
budget (binding or not), KV budgets and context limits (binding or not), truncate / reject,
TTFT / TPOT deadlines, hard / soft rewards, load, random and greedy routing, bursty arrivals
(the Azure code trace's own timestamps, rescaled, or synthetic bursts) with the trace's token
lengths or tokens the JAX simulator draws from the profile (fed to the twin from its outcome
ring). Layouts (one compile each, about 10-17 s of CPU: the reason there are only two): both
placements, ``drop_expired``, a model without replicas, two engines time-slicing one GPU.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bes_jax import workloads as W
from bes_jax.profile import profile_from_dict
from bes_jax.reference.continuous import REJECTED, ContinuousReferenceSimulator
from bes_jax.reference.metrics import compute_metrics
from bes_jax.routers import greedy_action
from bes_jax.sim_config import SimConfig
from conftest import TRACES, continuous_profile_dict

env_mod = pytest.importorskip("bes_jax.env.continuous", reason="the JAX continuous simulator is not there yet")
ContinuousServingEnv = env_mod.ContinuousServingEnv

Q = 2.0 ** -20
N = 200
TOL = dict(rtol=0.0, atol=1e-9)
AZURE = TRACES / "AzureLLMInferenceTrace_code.csv"


@pytest.fixture(scope="module", autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _azure():
    if not AZURE.exists():
        return None
    from bes_jax.workloads.traces import load_trace_requests
    return load_trace_requests(AZURE)


def arrivals(rng, azure, rate):
    """N bursty arrivals on the Q grid starting at 0, tasks, and trace tokens (or None)."""
    if azure is not None and rng.random() < 0.6:
        j = int(rng.integers(0, azure["times_s"].size - N))
        t = azure["times_s"][j:j + N] - azure["times_s"][j]
        t = t * ((N - 1) / max(t[-1], 1e-9)) / rate  # the window's mean rate -> rate
        scale = float(rng.choice([1 / 16, 1 / 8, 1 / 4]))
        prompt = np.maximum(np.round(azure["prompt"][j:j + N] * scale), 1).astype(np.int64)
        output = np.clip(azure["output"][j:j + N], 1, 160).astype(np.int64)
    else:
        phase = (np.arange(N) // 15) % 2
        gaps = rng.exponential(np.where(phase == 1, 0.15 / rate, 2.0 / rate))
        t = np.cumsum(gaps) - gaps[0]
        prompt = output = None
        if azure is None and rng.random() < 0.5:  # no trace here: synthetic heavy-tailed tokens
            prompt = np.maximum(np.round(rng.lognormal(4.5, 1.0, N)), 1).astype(np.int64)
            output = np.clip(np.round(rng.lognormal(2.5, 1.0, N)), 1, 160).astype(np.int64)
    times = np.round(t / Q) * Q
    return times, rng.integers(0, 2, N), prompt, output


def case(rng, base: SimConfig, azure):
    """One random (profile, config, arrivals, actions) within the layout of ``base``."""
    S = base.max_num_seqs
    kv_bind = rng.random() < 0.5
    kv = (3000, 2000, 1200) if kv_bind else (200_000, 200_000, 200_000)
    ctx = tuple(int(x) for x in rng.choice([[512, 768, 1024], [256, 4096, 384], [8192, 8192, 8192]]))
    d = continuous_profile_dict(seed=int(rng.integers(0, 3)), kv_tokens=kv, ctx_max=ctx)
    ov = rng.spawn(1)[0]  # a child stream: the cases' own draws from `rng` stay as they were
    if ov.random() < 0.5:  # a per-request overhead per model (dyadic, so clocks stay exact)
        for m in d["models"]:
            m["request_overhead_s"] = float(ov.integers(0, 40)) * 2.0 ** -12
    prof = profile_from_dict(d, "c.json")
    soft = not base.drop_expired and rng.random() < 0.3
    cfg = dataclasses.replace(
        base, max_num_batched_tokens=int(rng.choice([S, 32, 96, 4096])),
        context_overflow=str(rng.choice(["truncate", "reject"])),
        deadline_kind="soft" if soft else "hard", soft_decay=str(rng.choice(["linear", "exp"])),
        miss_penalty=float(rng.choice([0.0, 0.5])), latency_weight=float(rng.choice([0.0, 0.125])),
        deadline_scale=float(rng.choice([0.25, 0.5, 1.0, 2.0])),
        ttft_deadlines=(0.0625, 0.25) if rng.random() < 0.4 else None,
        tpot_deadlines=(0.03125, 0.0625) if rng.random() < 0.3 else None)
    times, tasks, prompt, output = arrivals(rng, azure, float(rng.choice([10.0, 40.0, 150.0, 500.0])))
    greedy = rng.random() < 0.5
    actions = rng.integers(0, prof.n_models, N)
    return dict(prof=prof, cfg=cfg, times=times, tasks=tasks, prompt=prompt, output=output, greedy=greedy,
                actions=actions, kv_bind=kv_bind)


def run_jax(env, cases):
    """Every case of one layout through one compiled program (N decisions, then drain); the
    cases differ only in params, so it compiles once (vmapping them costs more to compile)."""
    def one(params, actions, use_greedy):
        def body(carry, _):
            obs, st = carry
            a = jnp.where(use_greedy, greedy_action(st, params), actions[st.decision])
            nxt, st, _, _, _ = env.step(jax.random.PRNGKey(0), st, a, params)
            return (nxt, st), (a, obs)
        obs, st = env.reset(jax.random.PRNGKey(0), params)
        (_, st), (acts, seen) = jax.lax.scan(body, (obs, st), None, length=N)
        early = (st.outcomes, st.now)  # before the drain: advanced to the next (wrapped) arrival
        st = env.drain(st, params)
        return st.outcomes, acts, seen, (st.kv_reserved, st.n_run, st.queue_len, st.busy), early

    run = jax.jit(one)
    for c in cases:
        params = ContinuousServingEnv(c["prof"], c["cfg"]).make_params(W.trace(
            times=c["times"], tasks=c["tasks"], n_tasks=2, prompt=c["prompt"], output=c["output"]))
        out = run(params, jnp.asarray(c["actions"], jnp.int32), jnp.asarray(c["greedy"]))
        yield jax.tree.map(np.asarray, out) + (params,)


def check_metrics(o, params, ref, c, ctx):
    """`bes_jax.eval.metrics.run_metrics` on the JAX outcomes = `compute_metrics` on the twin's."""
    from bes_jax.eval.metrics import CONTINUOUS_METRICS, SCALAR_METRICS, metrics_kwargs, run_metrics
    o_j = jax.tree.map(jnp.asarray, o)
    got = run_metrics(o_j, params.quality, params.deadline, jnp.inf, c["cfg"].n_gpus, 10.0, 64,
                      **metrics_kwargs(params))
    want = compute_metrics(ref, c["times"], c["tasks"], c["prof"], c["cfg"], window_s=10.0)
    for k in SCALAR_METRICS + CONTINUOUS_METRICS:
        np.testing.assert_allclose(float(got[k]), want[k], rtol=1e-9, atol=1e-12, err_msg=f"{ctx} metric {k}")


def flat_to_jax_replica(cfg, n_models, r_max):
    counts = cfg.replica_counts(n_models)
    return np.array([m * r_max + k for m in range(n_models) for k in range(counts[m])], np.int64)


LAYOUTS = {
    "concurrent": SimConfig(batching="continuous", placement="concurrent", n_gpus=2, replicas=(2, 1, 2),
                            max_num_seqs=4, queue_capacity=6, obs_mode="rich", ewma_alpha=0.2, ref_rate=40.0,
                            outcome_slots=N + 1, episode_len=N),
    "exclusive-drop-no-replica": SimConfig(batching="continuous", placement="exclusive", n_gpus=2, replicas=(2, 0, 1),
                                           max_num_seqs=3, queue_capacity=5, drop_expired=True, obs_mode="rich",
                                           ewma_alpha=0.1, ref_rate=40.0, outcome_slots=N + 1, episode_len=N),
}
N_CASES = 12


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_same_per_request_outcomes(layout):
    base = LAYOUTS[layout]
    rng = np.random.default_rng(sum(map(ord, layout)))
    azure = _azure()
    cases = [case(rng, base, azure) for _ in range(N_CASES)]
    env = ContinuousServingEnv(cases[0]["prof"], base)
    to_jax = flat_to_jax_replica(base, env.n_models, env.r_max)
    seen_kinds = set()
    for c_i, (c, (o, acts, seen, final, early, params)) in enumerate(zip(cases, run_jax(env, cases))):
        ctx = (f"{layout} case {c_i}: K={c['cfg'].max_num_batched_tokens} overflow={c['cfg'].context_overflow} "
               f"kv_bind={c['kv_bind']} {c['cfg'].deadline_kind} ttft={c['cfg'].ttft_deadlines} "
               f"greedy={c['greedy']}")
        assert (o.decision[:N] == np.arange(N)).all(), ctx
        # the JAX simulator's own invariants after the drain: nothing waits, runs or holds KV
        kv_reserved, n_run, queue_len, busy = final
        assert not kv_reserved.any() and not n_run.any() and not queue_len.any() and not busy.any(), ctx
        served = o.status[:N] == 2
        assert np.isin(o.status[:N], [2, 3, 4]).all(), ctx
        assert (o.first_token[:N][served] <= o.finish[:N][served]).all(), ctx
        assert (o.start[:N][served] >= o.arrival[:N][served]).all(), ctx
        take = lambda x: x[:N]
        prompt_in, output = take(o.prompt_in), take(o.output)
        if c["prompt"] is not None:
            np.testing.assert_array_equal(prompt_in, c["prompt"], err_msg=ctx)
            np.testing.assert_array_equal(output, c["output"], err_msg=ctx)
        ref = ContinuousReferenceSimulator(c["prof"], c["cfg"]).run(
            c["times"], c["tasks"], prompt_in, output, "greedy" if c["greedy"] else c["actions"])
        np.testing.assert_array_equal(take(o.model), ref.model, err_msg=ctx)
        np.testing.assert_array_equal(acts, ref.model, err_msg=ctx)
        np.testing.assert_array_equal(take(o.status), ref.status, err_msg=ctx)
        kept = ref.status != REJECTED
        np.testing.assert_array_equal(take(o.replica)[kept], to_jax[ref.replica[kept]], err_msg=ctx)
        np.testing.assert_array_equal(take(o.prompt), ref.prompt_tokens, err_msg=ctx)
        for f_jax, f_ref in (("start", "start"), ("first_token", "first_token"), ("finish", "finish"),
                             ("reward", "reward")):
            np.testing.assert_allclose(take(getattr(o, f_jax)), getattr(ref, f_ref), err_msg=f"{ctx} {f_jax}", **TOL)
        np.testing.assert_allclose(seen, ref.observations, err_msg=f"{ctx} observation", **TOL)
        # before the drain: the same waiting / running requests, first tokens and unrealised rewards
        o_early, next_arrival = early
        part = ContinuousReferenceSimulator(c["prof"], c["cfg"]).run(
            c["times"], c["tasks"], prompt_in, output, "greedy" if c["greedy"] else c["actions"], drain=False,
            until=float(next_arrival))
        np.testing.assert_array_equal(o_early.status[:N], part.status, err_msg=f"{ctx} before drain")
        for f in ("start", "first_token", "finish", "reward"):
            np.testing.assert_allclose(getattr(o_early, f)[:N], getattr(part, f), err_msg=f"{ctx} {f} before drain", **TOL)
        seen_kinds.update(f"early status {int(s)}" for s in np.unique(part.status))
        # both metric implementations on the same run
        if c_i % 3 == 0:
            check_metrics(o, params, ref, c, ctx)
        # what this case exercised
        seen_kinds.update(f"status {int(s)}" for s in np.unique(ref.status))
        seen_kinds.update(k for k, v in ref.admission_stops.items() if v)
        if (ref.prompt_tokens < ref.prompt_in).any():
            seen_kinds.add("truncated")
        if (ref.status == REJECTED).any() and (ref.prompt_in + ref.output_tokens > c["prof"].ctx_max[ref.model]).any():
            seen_kinds.add("context")
        d = np.asarray(c["cfg"].task_deadlines(c["prof"]))[c["tasks"]]
        if ((ref.latency <= d) & ~ref.met_deadline).any():
            seen_kinds.add("ttft/tpot miss")
        if ((ref.first_token - ref.start) > 0.05).any():
            seen_kinds.add("long prefill")
    want = {"status 2", "status 4", "early status 1", "early status 5", "max_num_seqs", "kv", "truncated", "context", "ttft/tpot miss", "long prefill"}
    if base.drop_expired:
        want.add("status 3")
    assert want <= seen_kinds, want - seen_kinds
