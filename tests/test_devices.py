"""Sharding environments over several CPU devices gives the same simulation as one device."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from bes_jax.env.devices import shard_envs, use_host_devices

SCRIPT = textwrap.dedent("""
    import sys
    from bes_jax.env.devices import shard_envs, use_host_devices
    use_host_devices(2)
    import jax, jax.numpy as jnp, numpy as np
    from bes_jax import workloads as W
    from bes_jax.env import ServingEnv
    from bes_jax.profile import load_profile
    from bes_jax.routers import greedy_action
    from bes_jax.sim_config import SimConfig
    assert jax.local_device_count() == 2, jax.local_device_count()
    profile = load_profile("opt-a100-80gb")
    env = ServingEnv(profile, SimConfig(queue_capacity=16, outcome_slots=1024))
    params = env.make_params(W.gamma(400.0, 2.0, n_tasks=profile.n_tasks))

    def run(keys):
        _, st = jax.vmap(env.reset, in_axes=(0, None))(keys, params)
        def body(st, t):
            a = jax.vmap(greedy_action, in_axes=(0, None))(st, params)
            ks = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, t)
            _, st, r, _, _ = env.step_batch(ks, st, a, params)
            return st, r
        st, r = jax.lax.scan(body, st, jnp.arange(60))
        return st.outcomes.finish, r.T

    keys = jax.random.split(jax.random.PRNGKey(0), 64)
    one = jax.jit(run)(keys)
    two = shard_envs(run)(keys)
    assert len(two[0].sharding.device_set) == 2
    for a, b in zip(one, two):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    print("same")
""")


def test_sharded_over_two_cpu_devices_matches_one_device():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("same")


def test_one_device_is_plain_jit_and_bad_counts_are_refused():
    f = shard_envs(lambda x: x * 2, n_devices=1)
    np.testing.assert_array_equal(np.asarray(f(jnp.arange(3.0))), [0.0, 2.0, 4.0])
    with pytest.raises(ValueError, match="host devices"):
        use_host_devices(0)


def test_bench_sim_script_runs_and_reports(tmp_path):
    """The benchmark script, at toy size on 2 CPU devices: it runs both layouts and the
    reference and ends with its JSON line (figures are not checked: speed is not a test)."""
    import json
    from bes_jax import REPO_ROOT
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "bench_sim.py"), "--n-envs", "4", "--steps", "5",
           "--reference-decisions", "200", "--devices", "2", "--repeats", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "XLA_FLAGS": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert sum(line.startswith("JAX  N=") for line in lines) == 2  # 4 envs on 1 device, 8 on 2
    last = json.loads(lines[-1])
    assert last["decisions_per_s"] > 0 and last["ratio_vs_reference"] > 0 and last["n_envs"] in (4, 8)


def test_bench_comparison_script_runs_and_reports():
    """The comparison benchmark at toy size (request mode, 100 requests): one device against one
    per core, the same metrics, its JSON line last; an unknown workload is refused by name."""
    import json
    from bes_jax import REPO_ROOT
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "bench_comparison.py"), "--requests", "100", "--repeats", "1",
           "sim=default"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "XLA_FLAGS": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert last["devices"] == len(os.sched_getaffinity(0)) and last["agree"] and last["ratio_later_calls"] > 0
    bad = subprocess.run(cmd[:2] + ["--workload", "nope"], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "--workload 'nope': not one of eval.workloads" in bad.stderr


def test_bench_sim_continuous_reports_its_mode_and_occupancy():
    """`--batching continuous` (trace token lengths): the JSON line names the mode, and
    `--occupancy` prints how full the running sets and queues were."""
    import json
    import re
    from bes_jax import REPO_ROOT
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "bench_sim.py"), "--batching", "continuous", "--n-envs", "4",
           "--steps", "5", "--reference-decisions", "50", "--devices", "1", "--repeats", "1", "--occupancy", "60"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "XLA_FLAGS": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert last["batching"] == "continuous" and last["decisions_per_s"] > 0
    m = re.search(r"occupancy over 60 decisions \(max_num_seqs (\d+)\): running set per replica mean ([\d.]+)", out.stdout)
    assert m and 0 < float(m.group(2)) <= int(m.group(1)), out.stdout[-1500:]


COMPARISON = textwrap.dedent("""
    import json, sys
    from bes_jax.agents.training import request_learner_devices
    from bes_jax.config import compose_train_config
    request_learner_devices(compose_train_config(["sim=default"]))  # what bes-train asks for: one per core
    import jax, jax.numpy as jnp, numpy as np
    from bes_jax import workloads as W
    from bes_jax.env import make_serving_env
    from bes_jax.eval.rollout import eval_config, evaluate_on_devices, metric_windows
    from bes_jax.profile import load_profile
    from bes_jax.routers import baseline_routers
    from bes_jax.sim_config import SimConfig
    prof = load_profile("opt-a100-80gb")
    cfg = SimConfig(queue_capacity=16)
    env = make_serving_env(prof, eval_config(cfg, 300))
    wp = W.gamma(40.0, cv=3.0, n_tasks=prof.n_tasks)
    params, routers = env.make_params(wp), baseline_routers(prof)[:3]
    keys = jnp.stack([jax.random.PRNGKey(s) for s in (1, 2, 3)])
    args = (env, routers, 300, 1.0, metric_windows(300, 1.0, wp), keys, params)
    one, two = evaluate_on_devices(*args, n_devices=1), evaluate_on_devices(*args)
    close = lambda a, b: np.allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=0, equal_nan=True)
    print(json.dumps({"devices": jax.local_device_count(), "n": int(two["performance"].shape[0]),
                      "host": all(isinstance(x, np.ndarray) for x in jax.tree.leaves(two)),
                      "equal": all(np.array_equal(one[k], two[k]) for k in ("performance", "availability")),
                      "close": jax.tree.structure(one) == jax.tree.structure(two) and all(
                          close(a, b) for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two))),
                      "routers_differ": len(set(np.asarray(one["performance"]).round(6).tolist())) > 1}))
""")


def test_the_comparison_over_one_device_per_core_equals_one_device():
    """`bes-train`'s device request gives a CPU one device per core, and the comparison's runs
    (3 routers x 3 seeds: 9 environments, padded to 10 on 2 devices) split over them give exactly
    the one-device metrics, each router's runs in their place (a percentile's interpolation may
    round differently in the last float bits: the main job's p99 latencies within 1e-5). The
    metrics come back on the host: a JAX op on the split arrays would be a program with a
    collective in it, which XLA:CPU aborts (after 40 s) when one device's share of routers runs
    that much longer than the other's (seen under the test suite's load)."""
    import json
    env = {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count", "--unused")}
    env["XLA_FLAGS"] = " ".join(f for f in env["XLA_FLAGS"].split() if not f.startswith("--unused"))
    out = subprocess.run([sys.executable, "-c", COMPARISON], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["devices"] == len(os.sched_getaffinity(0)) and res["n"] == 9 and res["host"]
    assert res["equal"] and res["close"] and res["routers_differ"]
