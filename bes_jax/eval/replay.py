"""Run a router on given arrivals in either simulator (the basis of `bes-eval`).

Routers that ignore the state (static, random, weighted) get their actions drawn once on the
host, so both simulators see the same decisions; greedy and policy routers run natively in
each simulator on its own state.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from bes_jax.env import make_serving_env
from bes_jax.eval.metrics import run_metrics, to_report
from bes_jax.eval.rollout import eval_config, make_run
from bes_jax.profile import Profile
from bes_jax.routers import Router, make_router
from bes_jax.sim_config import SimConfig


def host_actions(router_cfg: dict, profile: Profile, sim_cfg: SimConfig, n: int, seed: int):
    """Pre-drawn actions for state-free routers, else None."""
    name = router_cfg.get("name")
    if name == "static":
        make_router(router_cfg, profile)  # validates the model name
        return np.full(n, profile.model_index(router_cfg["model"]), np.int64)
    if name in ("random", "weighted"):
        served = np.array([c > 0 for c in sim_cfg.replica_counts(profile.n_models)])
        if name == "random":
            w = served.astype(np.float64)
        else:
            make_router(router_cfg, profile)  # validates the weights
            w = np.asarray(router_cfg.get("weights"), np.float64)
            # like the JAX router: only models with a replica (else the largest weight's, rejected)
            w = np.where(served, w, 0.0) if (w * served).sum() > 0 else (np.arange(w.size) == np.argmax(w)) * 1.0
        rng = np.random.default_rng(seed)
        return rng.choice(profile.n_models, size=n, p=w / w.sum()).astype(np.int64)
    return None


def _replay_router(actions: np.ndarray) -> Router:
    table = jnp.asarray(actions, jnp.int32)

    def act(key, obs, state, params):
        return table[state.decision]
    return Router("replay", act)


#: per-request columns of `requests_out` (SPEC), and the extra ones of continuous batching
REQUEST_COLUMNS = ("arrival", "task", "model", "status", "start", "finish", "reward")
CONTINUOUS_COLUMNS = ("prompt_tokens", "output_tokens", "first_token")


def _tokens_needed(sim_cfg, prompt, output):
    if sim_cfg.batching != "continuous":
        return
    if prompt is None or output is None:
        raise ValueError("continuous batching replays need each request's prompt and output tokens "
                         "(sample_arrivals(..., tokens=True, profile=profile))")


def run_jax_on_arrivals(profile, sim_cfg, router_cfg, times, tasks, n, seed=0, window_s=10.0, prompt=None, output=None):
    """``(report, per_request)`` of the JAX simulator on the given arrivals (and, in continuous
    mode, tokens: the same requests the reference twin gets)."""
    from bes_jax.eval.metrics import metrics_kwargs
    from bes_jax.workloads import trace as trace_workload

    _tokens_needed(sim_cfg, prompt, output)
    cfg = eval_config(sim_cfg, n)
    env = make_serving_env(profile, cfg)
    tok = {} if cfg.batching != "continuous" else {"prompt": np.asarray(prompt), "output": np.asarray(output)}
    wp = trace_workload(times=np.asarray(times), tasks=np.asarray(tasks), n_tasks=profile.n_tasks, **tok)
    params = env.make_params(wp)
    actions = host_actions(router_cfg, profile, sim_cfg, n, seed)
    router = _replay_router(actions) if actions is not None else make_router(router_cfg, profile)
    state = jax.tree.map(lambda x: x[0], jax.jit(make_run(env, router, n))(jax.random.PRNGKey(seed)[None], params))
    n_windows = int(np.ceil((times[n - 1] - times[0]) / window_s)) + 1
    m = run_metrics(state.outcomes, params.quality, params.deadline, jnp.inf, cfg.n_gpus, window_s, n_windows,
                    **metrics_kwargs(params))
    report = to_report(m, profile.model_names, window_s)
    o = jax.tree.map(np.asarray, state.outcomes)
    order = np.argsort(np.where(o.decision >= 0, o.decision, np.iinfo(np.int32).max))[:n]
    per_request = {k: getattr(o, k)[order] for k in REQUEST_COLUMNS}
    if cfg.batching == "continuous":
        per_request.update(prompt_tokens=o.prompt[order], output_tokens=o.output[order],
                           first_token=o.first_token[order])
    return report, per_request


def run_reference_on_arrivals(profile, sim_cfg, router_cfg, times, tasks, n, seed=0, window_s=10.0,
                              prompt=None, output=None):
    """`run_jax_on_arrivals` with the reference twin of the configured batching mode."""
    from bes_jax.reference.continuous import ContinuousReferenceSimulator
    from bes_jax.reference.metrics import compute_metrics
    from bes_jax.reference.simulator import ReferenceSimulator

    _tokens_needed(sim_cfg, prompt, output)
    continuous = sim_cfg.batching == "continuous"
    sim = (ContinuousReferenceSimulator if continuous else ReferenceSimulator)(profile, sim_cfg)
    actions = host_actions(router_cfg, profile, sim_cfg, n, seed)
    name = router_cfg.get("name")
    if actions is not None:
        policy = actions
    elif name == "greedy":
        policy = "greedy"
    elif name == "policy":
        from bes_jax.agents.numpy_router import Router as NumpyRouter
        npr = NumpyRouter.load(router_cfg["path"])
        policy = lambda i, view: int(npr.act(view.observation, view.greedy if npr.greedy_prior else None))
    else:
        raise ValueError(f"router.name = {name!r}: not supported by the reference simulator")
    if continuous:
        res = sim.run(np.asarray(times[:n]), np.asarray(tasks[:n]), np.asarray(prompt[:n]), np.asarray(output[:n]),
                      policy, drain=True)
    else:
        res = sim.run(np.asarray(times[:n]), np.asarray(tasks[:n]), policy, drain=True)
    report = compute_metrics(res, np.asarray(times[:n]), np.asarray(tasks[:n]), profile, sim_cfg, window_s=window_s)
    per_request = {"arrival": np.asarray(times[:n]), "task": np.asarray(tasks[:n]), "model": res.model,
                   "status": res.status, "start": res.start, "finish": res.finish, "reward": res.reward}
    if continuous:
        per_request.update(prompt_tokens=res.prompt_tokens, output_tokens=res.output_tokens,
                           first_token=res.first_token)
    return report, per_request
