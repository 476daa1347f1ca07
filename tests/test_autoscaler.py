"""The reactive autoscaler (docs/simulator.md "Autoscaler (`autoscale`)"): hand-worked scale-up
with the spin-up delay, scale-down after the cool-down and a drained replica's release,
GPU-seconds by hand, the JAX simulator against the reference twin request by request on bursty
arrivals, and with the autoscaler off (or pinned at the whole pool) nothing changes.

Times and latencies are multiples of 2^-10 s, so float32 and float64 clocks agree exactly.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bes_jax import workloads as W
from bes_jax.env import ServingEnv
from bes_jax.env.autoscaler import run_totals
from bes_jax.env.params import make_env_params
from bes_jax.eval.metrics import autoscale_metrics
from bes_jax.profile import profile_from_dict
from bes_jax.reference.metrics import compute_metrics
from bes_jax.reference.simulator import ReferenceSimulator
from bes_jax.sim_config import ConfigError, SimConfig
from test_sim_vs_reference import Q, quantized_profile

SERVED = 2


def one_second_profile():
    """One model, one task, B_max 1, every request takes exactly 1 s (a replica serves 1 / s)."""
    return profile_from_dict({
        "name": "unit", "hardware": {"name": "synthetic"}, "models": [{"name": "big", "params": 10 ** 9}],
        "tasks": [{"name": "t", "metric": "acc", "deadline_s": 100.0, "prompt_len": 8, "output_len": 8}],
        "B_max": 1, "latency_s": [[[1.0]]], "quality": [[0.5]],
        "provenance": {"latency": "synthetic test table", "quality": "synthetic test table"}}, "unit.json")


L = 320      # decisions per compiled run: shorter cases are padded with far-away arrivals
FAR = 4096.0  # first padding arrival (2^12 s: float32 still exact at 2^-10 s)


@functools.lru_cache(maxsize=None)
def _runner(profile_kind: str, placement: str, drop_expired: bool):
    """One compiled run of L decisions per static layout; every autoscaler number is a param,
    so the hand-worked cases and the cross-check variants share it."""
    prof = one_second_profile() if profile_kind == "unit" else quantized_profile(seed=0)
    cfg = SimConfig(autoscale=True, placement=placement, drop_expired=drop_expired, n_gpus=4, queue_capacity=64 if
                    profile_kind == "unit" else 12, outcome_slots=L + 1, episode_len=10 ** 6, obs_mode="rich")
    env = ServingEnv(prof, cfg)

    @jax.jit
    def run(params, actions):
        def body(carry, _):
            obs, st = carry
            nxt, st, _, _, _ = env.step(jax.random.PRNGKey(0), st, actions[st.decision], params)
            return (nxt, st), (obs, run_totals(st.autoscale))
        obs, st = env.reset(jax.random.PRNGKey(0), params)
        (_, st), (seen, totals) = jax.lax.scan(body, (obs, st), None, length=L)
        return env.drain(st, params).outcomes, seen, totals
    return env, run


def run_jax(profile, cfg, times, tasks, actions, profile_kind="unit"):
    """Route request i at times[i] with actions[i] (i < n); returns (drained outcomes of the n
    requests, totals after the n-th decision, the n observations)."""
    n = len(times)
    assert n <= L
    env, run = _runner(profile_kind, cfg.placement, cfg.drop_expired)
    assert cfg.queue_capacity == env.capacity and cfg.n_gpus == env.cfg.n_gpus and cfg.obs_mode == "rich"
    pad_t = np.concatenate([times, FAR + np.arange(L + 1 - n)])
    pad_k = np.concatenate([tasks, np.zeros(L + 1 - n, np.int64)])
    pad_a = np.concatenate([actions, np.full(L + 1 - n, profile.n_models - 1)])
    params = make_env_params(profile, dataclasses.replace(cfg, outcome_slots=L + 1),
                             W.trace(times=pad_t, tasks=pad_k, n_tasks=profile.n_tasks), env.r_max)
    o, seen, totals = run(params, jnp.asarray(pad_a, jnp.int32))
    o = jax.tree.map(np.asarray, o)
    order = np.argsort(np.where(o.decision < 0, L + 1, o.decision))[:n]
    assert (o.decision[order] == np.arange(n)).all()
    o = jax.tree.map(lambda x: x[order], o)
    return o, {k: float(v[n - 1]) for k, v in totals.items()}, np.asarray(seen)[:n]


def hand_cfg(**kw):
    base = dict(autoscale=True, n_gpus=4, queue_capacity=64, outcome_slots=L + 1, episode_len=10 ** 6, obs_mode="rich",
                autoscale_min=1, autoscale_initial=1, autoscale_interval_s=2.0, autoscale_target=2.0,
                autoscale_spinup_s=3.0, autoscale_cooldown_s=5.0)
    base.update(kw)
    return SimConfig(**base)


def test_config_validation():
    with pytest.raises(ConfigError, match="replicas"):
        SimConfig(autoscale=True, replicas=(1, 1, 2))
    with pytest.raises(ConfigError, match="batching"):
        SimConfig(autoscale=True, batching="continuous")
    with pytest.raises(ConfigError, match="autoscale_min"):
        SimConfig(autoscale=True, autoscale_min=0)
    with pytest.raises(ConfigError, match="autoscale_min"):
        SimConfig(autoscale=True, n_gpus=2, autoscale_min=3)
    with pytest.raises(ConfigError, match="autoscale_initial"):
        SimConfig(autoscale=True, autoscale_min=2, autoscale_initial=1)
    with pytest.raises(ConfigError, match="autoscale_metric"):
        SimConfig(autoscale=True, autoscale_metric="cpu")
    with pytest.raises(ConfigError, match="autoscale_spinup_s"):
        SimConfig(autoscale=True, autoscale_spinup_s=-1.0)
    with pytest.raises(ConfigError, match="autoscale_model"):
        SimConfig(autoscale=True, autoscale_model=3).replica_counts(3)
    assert SimConfig(autoscale=True, n_gpus=8).replica_counts(3) == (0, 0, 8)
    assert SimConfig(autoscale=True, autoscale_model=0, n_gpus=2).replica_counts(3) == (2, 0, 0)
    assert SimConfig().replica_counts(3) == (4, 4, 4)  # off: unchanged


def test_scale_up_waits_for_spinup():
    """4 arrivals / s on one replica that serves 1 / s. At t = 2 (the first decision) requests
    2..7 are in the system (2 running, 3..7 queued): ceil(6 / 2) = 3 replicas, so replicas 1 and
    2 are added, routable at 2 + 3 = 5. At t = 4 requests 4..15 are in the system: ceil(12 / 2)
    = 6, capped at the pool of 4, so replica 3 is added, routable at 7. At t = 6 nothing changes
    (4 active). Requests 0..19 (t < 5) all go to replica 0; request 20 (t = 5) to replica 1, 21 to
    replica 2; no request reaches replica 3 before t = 7. GPU-seconds to the last arrival
    (7.75): 7.75 + 2 x 5.75 + 3.75 = 23. (Dedicated GPUs: both placements are the same.)"""
    prof = one_second_profile()
    times = np.arange(32) * 0.25
    tasks = np.zeros(32, np.int64)
    ready = {0: 0.0, 1: 5.0, 2: 5.0, 3: 7.0}
    refs = {}
    for placement in ("exclusive", "concurrent"):
        ref = refs[placement] = ReferenceSimulator(prof, hand_cfg(placement=placement)).run(
            times, tasks, np.zeros(32, np.int64), drain=True)
        assert ref.autoscale_log == [(2.0, "up", 1), (2.0, "up", 2), (4.0, "up", 3)]
        assert ref.gpu_seconds == 23.0 and ref.n_scale_up == 3 and ref.n_scale_down == 0
        np.testing.assert_array_equal(ref.replica[:20], 0)
        assert ref.replica[20] == 1 and ref.replica[21] == 2
        assert all(times[i] >= ready[int(k)] for i, k in enumerate(ref.replica))
        assert (ref.replica == 3).any() and times[ref.replica == 3].min() >= 7.0
        assert (ref.status == SERVED).all()
    np.testing.assert_array_equal(refs["exclusive"].finish, refs["concurrent"].finish)
    ref = refs["exclusive"]
    o, tot, _ = run_jax(prof, hand_cfg(), times, tasks, np.zeros(32))
    np.testing.assert_array_equal(o.replica, ref.replica)  # one model: JAX slot = replica index k
    for f in ("status", "start", "finish"):
        np.testing.assert_array_equal(getattr(o, f), getattr(ref, f), err_msg=f)
    assert tot == {"gpu_seconds": 23.0, "n_scale_up": 3.0, "n_scale_down": 0.0}


def test_scale_down_after_cooldown_and_release_when_drained():
    """Two replicas, 1 s requests; target 2, decisions every 1 s, cool-down 2 s.
    t=0 -> r0 [0, 1]; t=0.5 -> r1 [0.5, 1.5]; t=0.75 -> r0 (1 each, r0 frees first) [1, 2].
    t=1: 2 in system (r0's second request started at 1, r1's running), desired ceil(2/2) = 1 <
    2 active, but 1 - 0 < cool-down: no change; request 3 -> r1 (1 each, r1 frees at 1.5 < 2),
    [1.5, 2.5]. t=2 (>= 1 + 1): r0 idle since 2, r1 runs request 3: 1 in system, desired 1 and
    2 - 0 >= 2: remove one; both ready at 0, so the higher index, r1, which is busy: it drains.
    Request 4 (t=2) -> r0 [2, 3]. Request 5 (t=2.25) -> r0 [3, 4], though without the removal
    r1 would take it (1 each, r1 frees at 2.5 < 3). t=3: the release pass finds r1 empty since
    2.5 -> released at max(2, 2.5) = 2.5; the decision keeps 1. Request 6 -> r0 [4, 5].
    GPU-seconds to the last arrival (t=3): r0 3 + r1 2.5 = 5.5."""
    prof = one_second_profile()
    cfg = hand_cfg(autoscale_initial=2, autoscale_interval_s=1.0, autoscale_cooldown_s=2.0, autoscale_spinup_s=0.0)
    times = np.array([0.0, 0.5, 0.75, 1.0, 2.0, 2.25, 3.0])
    n = len(times)
    tasks = np.zeros(n, np.int64)
    ref = ReferenceSimulator(prof, cfg).run(times, tasks, np.zeros(n, np.int64), drain=True)
    assert ref.autoscale_log == [(2.0, "down", 1), (2.5, "release", 1)]
    np.testing.assert_array_equal(ref.replica, [0, 1, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(ref.start, [0, 0.5, 1, 1.5, 2, 3, 4])
    np.testing.assert_array_equal(ref.finish, [1, 1.5, 2, 2.5, 3, 4, 5])
    assert ref.gpu_seconds == 5.5 and ref.n_scale_down == 1
    o, tot, _ = run_jax(prof, cfg, times, tasks, np.zeros(n))
    np.testing.assert_array_equal(o.replica, ref.replica)
    np.testing.assert_array_equal(o.finish, ref.finish)
    assert tot == {"gpu_seconds": 5.5, "n_scale_up": 0.0, "n_scale_down": 1.0}
    # without the autoscaler's removal request 5 would go to r1
    fixed = ReferenceSimulator(prof, SimConfig(n_gpus=2, queue_capacity=64)).run(times, tasks, np.zeros(n, np.int64))
    assert fixed.replica[5] == 1
    # the metrics: quality goodput per GPU-second = sum of rewards / GPU-seconds
    m = autoscale_metrics(tot, jax.tree.map(jnp.asarray, o))
    assert float(m["gpu_seconds"]) == 5.5
    np.testing.assert_allclose(float(m["quality_goodput_per_gpu_second"]), n * 0.5 / 5.5, rtol=1e-6)
    rm = compute_metrics(ref, times, tasks, prof, cfg)
    assert rm["gpu_seconds"] == 5.5
    np.testing.assert_allclose(rm["quality_goodput_per_gpu_second"], n * 0.5 / 5.5)


def bursty(rng, n, quiet, burst, phase_len):
    """Alternating quiet and burst phases (a bursty MAF-like minute pattern, compressed)."""
    phase = (np.arange(n) // phase_len) % 2
    gaps = rng.exponential(np.where(phase == 1, 1.0 / burst, 1.0 / quiet))
    times = np.round(np.cumsum(gaps) / Q) * Q
    return times - times[0], rng.integers(0, 2, n)


def check_log_rules(ref, times, cfg, ctx):
    """The doc's rules on the reference's log: no scale-down within the cool-down of the
    previous scale action; no request starts on a replica before the spin-up of its last
    allocation decided before its arrival."""
    actions = sorted({t for t, kind, _ in ref.autoscale_log if kind in ("up", "down")})
    for t, kind, _ in ref.autoscale_log:
        if kind == "down":
            before = [a for a in actions if a < t]
            assert t - (before[-1] if before else times[0]) >= cfg.autoscale_cooldown_s, ctx
    ups = {}
    for t, kind, k in ref.autoscale_log:
        if kind == "up":
            ups.setdefault(k, []).append((t, t + cfg.autoscale_spinup_s))
    for i in np.nonzero(ref.status == SERVED)[0]:
        k = int(ref.replica[i])
        spans = [r for d, r in ups.get(k, []) if d <= times[i]]
        assert not spans or times[i] >= spans[-1], f"{ctx}: request {i} routed to replica {k} before it was ready"


def test_jax_matches_reference_on_bursts(placement="exclusive", drop_expired=False):
    """Request by request, with the autoscaler's numbers varied as params of one program:
    requests-in-system and rate targets, spin-up, cool-down, initial and minimum replicas; the
    static router (model 2, the only one with replicas) and a random one (others are rejected);
    outcomes, observations, scale counts and GPU-seconds. (`concurrent` and `drop_expired`: in
    the batched test below.)"""
    n = 300
    prof = quantized_profile(seed=7)
    base = SimConfig(autoscale=True, placement=placement, drop_expired=drop_expired, n_gpus=4, queue_capacity=12,
                     outcome_slots=n + 1, episode_len=10 ** 6, obs_mode="rich", ewma_alpha=0.2, ref_rate=40.0,
                     autoscale_interval_s=1.0, autoscale_target=4.0, autoscale_spinup_s=2.0,
                     autoscale_cooldown_s=3.0)
    rng = np.random.default_rng(3 if drop_expired else 4)
    variants = [dict(), dict(autoscale_target=2.0, autoscale_spinup_s=0.5, autoscale_cooldown_s=0.0),
                dict(autoscale_metric="rate", autoscale_target=12.0, autoscale_initial=2),
                dict(autoscale_min=2, autoscale_interval_s=0.5, autoscale_spinup_s=4.0)]
    scaled = 0
    for j, kw in enumerate(variants):
        cfg = dataclasses.replace(base, **kw)
        times, tasks = bursty(rng, n, quiet=4.0, burst=60.0, phase_len=60)
        actions = np.full(n, 2) if j % 2 == 0 else rng.choice([0, 2, 2, 2, 1], n)
        o, tot, seen = run_jax(prof, cfg, times, tasks, actions, profile_kind="quantized")
        ref = ReferenceSimulator(prof, cfg).run(times, tasks, actions, drain=True)
        ctx = f"{placement} drop={drop_expired} {kw}"
        for f in ("model", "status", "start", "finish"):
            np.testing.assert_array_equal(getattr(o, f), getattr(ref, f), err_msg=f"{ctx} {f}")
        np.testing.assert_allclose(o.reward, ref.reward, rtol=1e-5, atol=1e-6, err_msg=ctx)
        np.testing.assert_allclose(seen, ref.observations, rtol=1e-6, atol=1e-6, err_msg=ctx)
        assert (tot["n_scale_up"], tot["n_scale_down"]) == (ref.n_scale_up, ref.n_scale_down), ctx
        np.testing.assert_allclose(tot["gpu_seconds"], ref.gpu_seconds, rtol=1e-6, err_msg=ctx)
        check_log_rules(ref, times, cfg, ctx)
        scaled += ref.n_scale_up > 0 and ref.n_scale_down > 0
    assert scaled >= 3  # the bursts made it scale both ways


def test_off_or_pinned_changes_nothing():
    """Off: no autoscaler state or params at all (nothing of it enters the compiled step).
    On with min = initial = the pool: every replica is up all the time, so the run equals the
    fixed layout replicas = (0, 0, G) request by request, and GPU-seconds = G x span."""
    n = 200
    prof = quantized_profile(seed=2)
    fixed = SimConfig(n_gpus=4, replicas=(0, 0, 4), queue_capacity=12, outcome_slots=n + 1, episode_len=10 ** 6,
                      obs_mode="rich")
    env = ServingEnv(prof, fixed)
    params = env.make_params(W.poisson(rate=10.0, n_tasks=2))
    assert not env.autoscale and params.autoscale is None
    _, st = jax.eval_shape(env.reset, jax.random.PRNGKey(0), params)
    assert st.autoscale is None
    pinned = dataclasses.replace(fixed, replicas=None, autoscale=True, autoscale_min=4, autoscale_interval_s=0.5,
                                 autoscale_cooldown_s=0.0, autoscale_target=1.0)
    times, tasks = bursty(np.random.default_rng(0), n, quiet=5.0, burst=80.0, phase_len=40)
    actions = np.full(n, 2)
    want = ReferenceSimulator(prof, fixed).run(times, tasks, actions, drain=True)
    got = ReferenceSimulator(prof, pinned).run(times, tasks, actions, drain=True)
    o, tot, seen = run_jax(prof, pinned, times, tasks, actions, profile_kind="quantized")
    for f in ("model", "status", "start", "finish", "reward"):
        np.testing.assert_array_equal(getattr(got, f), getattr(want, f), err_msg=f)
        np.testing.assert_allclose(getattr(o, f), getattr(want, f), rtol=1e-5, atol=1e-6, err_msg=f)
    np.testing.assert_array_equal(got.observations, want.observations)
    np.testing.assert_allclose(seen, want.observations, rtol=1e-6, atol=1e-6)
    span = times[-1] - times[0]
    assert got.gpu_seconds == 4 * span and got.n_scale_up == got.n_scale_down == 0
    np.testing.assert_allclose(tot["gpu_seconds"], 4 * span, rtol=1e-6)
    assert tot["n_scale_up"] == tot["n_scale_down"] == 0
    rm = compute_metrics(got, times, tasks, prof, pinned)
    np.testing.assert_allclose(rm["quality_goodput_per_gpu_second"], rm["quality_goodput_per_gpu"])


def test_step_batch_with_per_env_autoscaler_params():
    """The batched step (`step_batch` / `drain_batch`, what evaluation and training use) with
    every environment on its own bursty arrivals and its own spin-up and target (params vmapped
    per environment), against the reference, environment by environment; under `concurrent`
    with `drop_expired`."""
    n_envs, n = 24, 150
    prof = quantized_profile(seed=5)
    cfg = SimConfig(autoscale=True, placement="concurrent", drop_expired=True, n_gpus=4, queue_capacity=12,
                    outcome_slots=n + 1, episode_len=10 ** 6, autoscale_interval_s=0.5, autoscale_cooldown_s=1.0)
    env = ServingEnv(prof, cfg)
    rng = np.random.default_rng(8)
    traces = [bursty(rng, n, quiet=4.0, burst=float(rng.choice([30.0, 80.0])), phase_len=30) for _ in range(n_envs)]
    spinup = rng.choice([0.0, 0.5, 2.0], n_envs)
    target = rng.choice([2.0, 4.0], n_envs)
    wps = W.stack_workloads([W.trace(times=t, tasks=k, n_tasks=2) for t, k in traces])
    params = env.make_params(W.trace(times=traces[0][0], tasks=traces[0][1], n_tasks=2))
    f = params.autoscale.spinup.dtype
    params = params.replace(workload=wps, autoscale=params.autoscale.replace(
        spinup=jnp.asarray(spinup, f), target=jnp.asarray(target, f)))
    none = jax.tree.map(lambda _: None, params.autoscale)
    axes = jax.tree.map(lambda _: None, params).replace(
        workload=jax.tree.map(lambda _: 0, wps), autoscale=none.replace(spinup=0, target=0))

    @jax.jit
    def run(params):
        keys = jax.random.split(jax.random.PRNGKey(0), n_envs)
        _, st = jax.vmap(env.reset, in_axes=(0, axes))(keys, params)

        def body(st, _):
            _, st, _, _, _ = env.step_batch(keys, st, jnp.full((n_envs,), 2, jnp.int32), params, axes)
            return st, None
        st, _ = jax.lax.scan(body, st, None, length=n)
        return env.drain_batch(st, params, axes), run_totals(st.autoscale)

    st, totals = run(params)
    o = jax.tree.map(np.asarray, st.outcomes)
    totals = jax.tree.map(np.asarray, totals)
    scaled = 0
    for i, (times, tasks) in enumerate(traces):
        c = dataclasses.replace(cfg, autoscale_spinup_s=float(spinup[i]), autoscale_target=float(target[i]))
        ref = ReferenceSimulator(prof, c).run(times, tasks, np.full(n, 2), drain=True)
        order = np.argsort(o.decision[i])[-n:]
        for field in ("status", "start", "finish"):
            np.testing.assert_array_equal(getattr(o, field)[i][order], getattr(ref, field), err_msg=f"env {i} {field}")
        assert (int(totals["n_scale_up"][i]), int(totals["n_scale_down"][i])) == (ref.n_scale_up, ref.n_scale_down)
        np.testing.assert_allclose(float(totals["gpu_seconds"][i]), ref.gpu_seconds, rtol=1e-6, err_msg=f"env {i}")
        scaled += ref.n_scale_down > 0
    assert scaled >= n_envs // 2
