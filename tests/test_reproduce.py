"""`scripts/reproduce.py`'s pieces: the bursty generator (mean load k x capacity, from MAF minutes
or any timestamp trace), curve records, threshold crossings on a load grid, the autoscaler's
GPU-seconds against a fixed layout's, the best setting within a budget, missed bursts, section selection."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from omegaconf import OmegaConf

from bes_jax import workloads as W
from bes_jax.eval import protocol as P
from bes_jax.workloads.bursty import arrival_counts, bursty_workload, held_out
from conftest import REPO, synthetic_profile_dict

sys.path.insert(0, str(REPO / "scripts"))
import reproduce  # noqa: E402


def _long_run_rate(wp, n=20000, seed=0):
    t, _ = W.sample_arrivals(seed, wp, n)
    return (n - 1) / (t[-1] - t[0])


@pytest.mark.parametrize("k", [0.5, 3.0])
def test_bursty_maf_mean_rate_is_k_times_capacity(k):
    cap = 7.0
    wp = bursty_workload("pkg:maf2019_minute_totals.csv", k=k, capacity=cap, minutes=[330, 360], time_scale=6.0,
                         n_tasks=4)
    rates = np.asarray(wp.rates)[:int(wp.n_windows)]
    assert rates.size == 30 and float(wp.window_s) == pytest.approx(10.0)
    assert rates.mean() == pytest.approx(k * cap, rel=1e-5)
    counts = W.load_maf_minute_counts(str(REPO / "bes_jax" / "data" / "maf2019_minute_totals.csv"))[330:360]
    np.testing.assert_allclose(rates / rates.mean(), counts / counts.mean(), rtol=1e-5)  # the bursts' shape is kept
    # enough arrivals to cover the 300-s cycle many times: the long-run rate is the mean
    assert _long_run_rate(wp, n=int(k * cap * 300 * 8)) == pytest.approx(k * cap, rel=0.05)


def test_bursty_any_timestamp_trace(tmp_path):
    rng = np.random.default_rng(1)
    # an unseen trace: 20 minutes, the rate jumps 4x in minutes 5-9
    rate = np.r_[np.full(5, 2.0), np.full(5, 8.0), np.full(10, 2.0)]
    times = np.sort(np.concatenate([m * 60 + rng.uniform(0, 60, rng.poisson(r * 60)) for m, r in enumerate(rate)]))
    c = arrival_counts(times=times)
    assert c.size == 20 and c.sum() == times.size
    assert c[5:10].mean() > 3 * c[:5].mean()
    f = tmp_path / "trace.csv"
    f.write_text("timestamp\n" + "\n".join(f"{x:.6f}" for x in times) + "\n")
    for wp in (bursty_workload(f, k=2.0, capacity=5.0, n_tasks=2), bursty_workload(times=times, k=2.0, capacity=5.0, n_tasks=2)):
        r = np.asarray(wp.rates)[:int(wp.n_windows)]
        assert r.size == 20 and r.mean() == pytest.approx(10.0, rel=1e-5)
        np.testing.assert_allclose(r, c / c.mean() * 10.0, rtol=1e-5)
    # the held-out part: the second half of the bins
    wp = bursty_workload(times=times, k=1.0, capacity=5.0, span=(0.5, 1.0), n_tasks=2)
    assert int(wp.n_windows) == 10
    assert _long_run_rate(wp, n=20000) == pytest.approx(5.0, rel=0.05)
    with pytest.raises(ValueError, match="minutes"):
        held_out(c, minutes=[10, 30])
    with pytest.raises(ValueError, match="exactly one"):
        arrival_counts(f, times=times)
    with pytest.raises(ValueError, match="k ="):
        bursty_workload(times=times, k=0.0, capacity=5.0, n_tasks=2)


def test_curve_records_schema():
    r = P.curve_record("bursty", "request", "w", "p", 1.5, "learned", "performance", [0.5, 0.7, 0.6])
    assert {k: r[k] for k in ("mean", "seeds", "load_x")} == {"mean": pytest.approx(0.6), "seeds": 3, "load_x": 1.5}
    assert r["std"] == pytest.approx(np.std([0.5, 0.7, 0.6]))
    b = P.curve_record("bursty", "continuous", "w", "p", 1.5, "greedy", "performance", 0.4, 2)
    assert (b["std"], b["seeds"]) == (0.0, 2)
    P.check_records([r, b])
    with pytest.raises(ValueError, match="batching"):
        P.curve_record("x", "exclusive", "w", "p", 1.0, "greedy", "m", 1.0)
    with pytest.raises(ValueError, match="missing"):
        P.check_records([{k: v for k, v in r.items() if k != "std"}])
    nan = P.curve_record("x", "request", "w", "p", None, "learned", "m", [np.nan, 2.0])
    assert nan["mean"] == 2.0 and nan["seeds"] == 2 and nan["load_x"] is None


def test_load_grid_and_threshold_crossing():
    g = P.load_grid(0.25, 128.0, 4)
    assert g[0] == 0.25 and g[-1] == pytest.approx(128.0) and len(g) == 37
    np.testing.assert_allclose(g[4::4] / g[:-4:4], 2.0)
    x = np.array([1.0, 2.0, 4.0, 8.0])
    y = np.array([1.0, 0.99, 0.95, 0.5])
    c = P.threshold_crossing(x, y, 0.97)
    assert c["bound"] == "interpolated" and c["x"] == pytest.approx(2.0 * 2.0 ** 0.5)  # halfway in log x
    assert P.threshold_crossing(x, y, 0.95)["x"] == pytest.approx(4.0)
    assert P.threshold_crossing(x, y, 0.2) == {"x": 8.0, "bound": "above_grid"}
    assert P.threshold_crossing(x, y, 1.01) == {"x": 0.0, "bound": "below_grid"}
    # a dip then a recovery: the first failure decides
    assert P.threshold_crossing(x, np.array([1.0, 0.9, 1.0, 1.0]), 0.95)["x"] < 2.0


def test_autoscaler_gpu_seconds_equal_a_fixed_layouts_when_pinned():
    """With the autoscaler pinned at its whole pool (min = initial = n_gpus) it is a fixed layout of
    n_gpus GPUs: its GPU-seconds equal what the comparison charges the fixed layout
    (`fixed_gpu_seconds`: n_gpus x the span of arrivals); at min 1 it is charged less."""
    from bes_jax.env import make_serving_env
    from bes_jax.eval.experiments import evaluate_variants
    from bes_jax.eval.rollout import eval_config
    from bes_jax.profile import profile_from_dict
    from bes_jax.routers import static
    from bes_jax.sim_config import SimConfig

    prof = profile_from_dict(synthetic_profile_dict(), "synthetic.json")
    wp = W.poisson(4.0, n_tasks=prof.n_tasks)
    n, g = 300, 3
    out = {}
    for lo in (g, 1):
        cfg = eval_config(SimConfig(autoscale=True, n_gpus=g, autoscale_min=lo, autoscale_initial=lo,
                                    autoscale_spinup_s=5.0, autoscale_cooldown_s=5.0, autoscale_interval_s=2.0), n)
        env = make_serving_env(prof, cfg)
        out[lo] = evaluate_variants(env, static(prof.n_models - 1), [env.make_params(wp)], (0, 1), n, 5.0,
                                    prof.model_names)[0]
    for r in out[g]:
        assert r["gpu_seconds"] == pytest.approx(P.fixed_gpu_seconds(r, g), rel=1e-4)
        assert r["mean_replicas"] == pytest.approx(g, rel=1e-4)
        assert r["quality_goodput_per_gpu_second"] == pytest.approx(r["quality_goodput_per_gpu"], rel=1e-4)
    for r in out[1]:
        assert 0 < r["gpu_seconds"] < P.fixed_gpu_seconds(r, g)


def test_missed_bursts_and_best_within_budget():
    rep = {"windows": {"n_requests": [10, 10, 40, 0, 40, 10], "availability": [1.0, 1.0, 0.5, None, 0.99, 1.0]}}
    assert P.missed_bursts(rep, quantile=0.7, threshold=0.95) == {"bursts": 2, "missed": 1, "frac_missed": 0.5}
    assert P.missed_bursts(rep, quantile=0.7, threshold=0.4)["missed"] == 0
    b = P.best_within_budget([100.0, 200.0, 150.0, 400.0], [0.5, 0.9, 0.7, 0.99], 160.0)
    assert b == {"index": 2, "within_budget": True}
    assert P.best_within_budget([100.0, 200.0], [0.5, 0.9], 50.0) == {"index": 0, "within_budget": False}


def test_select_jobs():
    modes = OmegaConf.create([{"name": "request", "sections": ["poisson", "bursty", "autoscaler"]},
                              {"name": "continuous", "sections": ["poisson", "bursty"]}])
    assert len(reproduce.select_jobs(modes, None)) == 5
    assert reproduce.select_jobs(modes, {"poisson"}) == [("request", "poisson"), ("continuous", "poisson")]
    assert reproduce.select_jobs(modes, {"continuous", "request:autoscaler"}) == [
        ("request", "autoscaler"), ("continuous", "poisson"), ("continuous", "bursty")]
    with pytest.raises(ValueError, match="unknown"):
        reproduce.select_jobs(modes, {"qwen"})


def test_evaluate_variants_seeds_matches_one_router_at_a_time():
    """All training seeds in one program give each seed's own reports."""
    import jax.numpy as jnp

    from bes_jax.env import make_serving_env
    from bes_jax.eval.experiments import TrainedRouters, evaluate_variants, evaluate_variants_seeds
    from bes_jax.eval.rollout import eval_config
    from bes_jax.profile import profile_from_dict
    from bes_jax.routers import Router, static
    from bes_jax.sim_config import SimConfig

    prof = profile_from_dict(synthetic_profile_dict(), "synthetic.json")
    n = 200
    env = make_serving_env(prof, eval_config(SimConfig(n_gpus=2), n))
    plist = [env.make_params(W.poisson(r, n_tasks=prof.n_tasks)) for r in (2.0, 20.0)]
    policy = lambda p, st: (lambda key, obs, state, params: p["m"].astype(jnp.int32))
    stacked = {"m": jnp.asarray([0, 2])}
    routers = TrainedRouters([Router("learned", policy({"m": jnp.asarray(m)}, None)) for m in (0, 2)], policy, stacked,
                             jnp.zeros(2))
    got = evaluate_variants_seeds(env, routers, plist, (0, 1), n, 5.0, prof.model_names)
    for i, m in enumerate((0, 2)):
        want = evaluate_variants(env, static(m), plist, (0, 1), n, 5.0, prof.model_names)
        for v in range(2):
            for e in range(2):
                assert got[i][v][e]["performance"] == pytest.approx(want[v][e]["performance"], rel=1e-6)
                assert got[i][v][e]["per_model_share"] == want[v][e]["per_model_share"]
    assert got[0][1][0]["performance"] != got[1][1][0]["performance"]
    from bes_jax.eval.sweep import sweep_rates
    cfg = SimConfig(n_gpus=2)
    sw = sweep_rates(prof, cfg, routers, [2.0, 20.0], n_decisions=n, seeds=(0, 1))
    assert sw["availability"].shape == (2, 2, 2)
    for i, m in enumerate((0, 2)):
        np.testing.assert_allclose(sw["performance"][i], sweep_rates(prof, cfg, static(m), [2.0, 20.0], n_decisions=n,
                                                                      seeds=(0, 1))["performance"], rtol=1e-6)


def test_merge_keeps_the_modes_not_rerun(tmp_path):
    """`--merge`: a rerun of one mode keeps the other modes' records, info, sections and
    provenance from the earlier results.json, and replaces the rerun mode's."""
    rec = lambda mode, v: {"experiment": "bursty", "mode": mode, "router": "learned", "mean": v}
    old = {"meta": {"git_commit": "a" * 40, "git_dirty": False}, "command": "python scripts/reproduce.py --scale small",
           "curves": [rec("request", 1.0), rec("continuous", 2.0)], "modes": {"request": {"x": 1}, "continuous": {"x": 2}},
           "sections_run": ["request:bursty", "continuous:bursty"], "extras": {"kept": True}}
    path = tmp_path / "results.json"
    path.write_text(reproduce.json.dumps(old))
    here = {"git_commit": "b" * 40, "git_dirty": False, "command": "python scripts/reproduce.py --only continuous"}
    new = {"modes": {"continuous": {"x": 3}}, "provenance": {"continuous": here}, "sections_run": ["continuous:bursty"],
           "command": here["command"]}
    curves, merged = reproduce.merge_kept_modes(path, [rec("continuous", 3.0)], new)
    assert sorted((r["mode"], r["mean"]) for r in curves) == [("continuous", 3.0), ("request", 1.0)]
    assert merged["modes"] == {"request": {"x": 1}, "continuous": {"x": 3}}
    assert merged["sections_run"] == ["request:bursty", "continuous:bursty"]
    assert merged["provenance"]["request"]["git_commit"] == "a" * 40 and merged["provenance"]["continuous"] == here
    assert merged["extras"] == {"kept": True} and merged["command"] == here["command"]
    note = reproduce._kept_note({"meta": {"git_commit": "b" * 40}, "provenance": merged["provenance"]})
    assert "Mode `request` is kept" in note and "aaaaaaaaaa" in note and "continuous" not in note
    with pytest.raises(SystemExit, match="does not exist"):
        reproduce.merge_kept_modes(tmp_path / "none.json", [], new)


def test_tuning_sets_are_listed_per_mode_when_they_differ():
    a = {"tuning_set": {"t1": {"kind": "gamma", "cv": 2.0, "rate_x": 1.0}}}
    b = {"tuning_set": {"t1": {"kind": "gamma", "cv": 2.0, "rate_x": 1.0}, "t2": {"kind": "gamma", "cv": 3.0, "rate_x": 2.0}}}
    same = reproduce._tuning_sets({"request": a, "continuous": a})
    assert same.startswith("t1 (") and "mode" not in same
    both = reproduce._tuning_sets({"request": a, "continuous": b})
    assert both.startswith("mode `request`: t1 (") and "mode `continuous`: t1 (" in both and "t2 (" in both


def test_train_length_reads_the_configured_learner():
    cfg = OmegaConf.create({"dqn": {"iterations": 5000}, "es": {"generations": 60}, "pqn": {"n_envs": 4}})
    assert reproduce._train_length(cfg, "dqn") == 5000
    assert reproduce._train_length(cfg, "es") == 60
    assert reproduce._train_length(cfg, "pqn") is None and reproduce._train_length(cfg, "other") is None


def test_below_greedy_counts_gaps_beyond_float_rounding_only():
    """The report's "below greedy" loads: a gap of float32 rounding (identical outcomes averaged
    by another program) is no gap; one request's worth is; other modes and metrics are apart."""
    def rec(mode, x, router, mean, metric="availability"):
        return {"experiment": "availability_vs_rate", "mode": mode, "load_x": x, "router": router,
                "metric": metric, "mean": mean}
    doc = {"curves": [rec("m", 1.0, "greedy", 0.99), rec("m", 1.0, "learned", 0.99 - 6e-8),
                      rec("m", 2.0, "greedy", 0.90), rec("m", 2.0, "learned", 0.90 - 5.6e-5),
                      rec("m", 4.0, "greedy", 0.50), rec("m", 4.0, "learned", 0.60),
                      rec("other", 1.0, "greedy", 0.9), rec("other", 1.0, "learned", 0.1),
                      rec("m", 1.0, "learned", 0.0, "performance")]}
    below = lambda mode: [g[0] for g in reproduce.learned_below(doc, mode, "availability_vs_rate", "availability")]
    assert below("m") == [2.0] and below("other") == [1.0]


def test_below_best_static_takes_the_best_static_router_at_each_load():
    """Against ``best static`` the baseline at each load is whichever static router is highest
    there (greedy and random are not static); the line names the largest gap."""
    def rec(x, router, mean):
        return {"experiment": "bursty", "mode": "m", "load_x": x, "router": router, "metric": "performance",
                "mean": mean}
    doc = {"curves": [rec(1, "static:big", 0.7), rec(1, "static:small", 0.4), rec(1, "learned", 0.7),
                      rec(2, "static:big", 0.3), rec(2, "static:small", 0.5), rec(2, "learned", 0.45),
                      rec(2, "greedy", 0.9), rec(2, "random", 0.95),
                      rec(3, "static:big", 0.1), rec(3, "static:small", 0.4), rec(3, "learned", 0.2)]}
    gaps = reproduce.learned_below(doc, "m", "bursty", "performance", "best static")
    assert [(g[0], g[3]) for g in gaps] == [(2.0, "static:small"), (3.0, "static:small")]
    line = reproduce._below_line(doc, "m", "bursty", "performance", "best static", "Loads k", lambda k: f"{k:g}")
    assert line.endswith("2, 3 (largest gap 0.2 at 3: static:small 0.4000, learned 0.2000).")
    assert reproduce.learned_below(doc, "m", "bursty", "performance", "greedy") == [(2.0, 0.45, 0.9, "greedy")]
    with pytest.raises(ValueError, match="against = 'random'"):
        reproduce.learned_below(doc, "m", "bursty", "performance", "random")


def test_render_rewrites_the_section_from_results_json_and_keeps_the_rest(tmp_path):
    """`--render` runs nothing: the paper-experiments section comes from results.json (here the
    repository's), the other sections of results.md stay; a bad results.json is named."""
    import shutil
    shutil.copy(REPO / "docs" / "results.json", tmp_path / "results.json")
    head = "# Results\n\n## Mine\n\nkept text\n\n"
    (tmp_path / "results.md").write_text(head + "## Paper experiments (`scripts/reproduce.py`)\n\nstale\n")
    assert reproduce.main(["--render", "--out-dir", str(tmp_path)]) == 0
    md = (tmp_path / "results.md").read_text()
    assert md.startswith(head) and "stale" not in md
    assert "below greedy's (by more than float rounding" in md and "### Mode `request`" in md
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(SystemExit, match="results.json: not a results.json"):
        reproduce.main(["--render", "--out-dir", str(tmp_path)])
