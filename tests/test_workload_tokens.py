"""Tokens in workloads: trace parsers (Azure LLM CSV, Mooncake JSONL, generic CSV), per-request
prompt/output tokens replayed inside jit, kept through rescaling, stacking and families, and the
``_request`` generators agreeing with the plain ones on time and task."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bes_jax import workloads as W
from bes_jax.data import resolve_path
from bes_jax.workloads.from_config import build_workload, trace_part_requests

KEY = jax.random.PRNGKey(0)
PADS = dict(pad_windows=4, pad_trace=8, pad_mix=1)


def _f(tmp_path, text, name):
    p = tmp_path / name
    p.write_text(text)
    return p


def _jsonl(tmp_path, objs, name="m.jsonl"):
    return _f(tmp_path, "\n".join(o if isinstance(o, str) else json.dumps(o) for o in objs) + "\n", name)


def _err(fn, *a, **kw):
    with pytest.raises(W.TraceError) as e:
        fn(*a, **kw)
    return str(e.value)


# ---- parsers -------------------------------------------------------------------------------------

def test_mooncake_jsonl(tmp_path):
    p = _jsonl(tmp_path, [{"timestamp": 1000, "input_length": 12, "output_length": 3, "hash_ids": [1, 2, 3]},
                          "", {"timestamp": 1250, "input_length": 7, "output_length": 1},
                          {"hash_ids": [], "output_length": 40.0, "input_length": 900, "timestamp": 4000}])
    d = W.load_mooncake_trace(p)
    np.testing.assert_allclose(d["times_s"], [0.0, 0.25, 3.0])  # ms -> s from the first
    assert d["prompt"].dtype == np.int32 and d["prompt"].tolist() == [12, 7, 900]
    assert d["output"].tolist() == [3, 1, 40]
    d2 = W.load_trace_requests(p)  # .jsonl -> mooncake
    assert d2["output"].tolist() == [3, 1, 40]
    np.testing.assert_allclose(W.load_trace_times(p), d["times_s"])


def test_generic_token_csv(tmp_path):
    p = _f(tmp_path, "id,arrived,in_tok,out_tok\na,2024-05-01 10:00:00.5,30,4\nb,2024-05-01 10:00:02,8,1\n", "g.csv")
    d = W.load_token_csv(p, column="arrived", prompt_column="in_tok", output_column="out_tok")
    np.testing.assert_allclose(d["times_s"], [0.0, 1.5])
    assert d["prompt"].tolist() == [30, 8] and d["output"].tolist() == [4, 1]
    # default names (case-insensitive) and numeric seconds
    p = _f(tmp_path, "Time,Prompt_Tokens,output_length\n0.0,5,2\n0.5,6,3.0\n", "h.csv")
    d = W.load_trace_requests(p, "csv")
    assert d["prompt"].tolist() == [5, 6] and d["output"].tolist() == [2, 3]
    # timestamps format: no tokens
    d = W.load_trace_requests(p, "timestamps")
    assert d["prompt"].tolist() == [-1, -1] and d["output"].tolist() == [-1, -1]


def test_azure_tokens(tmp_path):
    p = _f(tmp_path, "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,4808,10\n"
                     "2023-11-16 18:17:04.0319600,3180,8", "az.csv")
    d = W.load_azure_llm_trace(p)
    assert d["prompt"].tolist() == [4808, 3180] and d["output"].tolist() == [10, 8]
    assert d["context_tokens"].tolist() == [4808, 3180]  # the old keys stay
    assert W.load_trace_requests(p)["output"].tolist() == [10, 8]  # auto-detected


MC_OK = {"timestamp": 0, "input_length": 5, "output_length": 2}


@pytest.mark.parametrize("bad,line,value", [
    ({"timestamp": 10, "input_length": 5, "output_length": 0}, 2, "0"),
    ({"timestamp": 10, "input_length": 5, "output_length": -4}, 2, "-4"),
    ({"timestamp": 10, "input_length": 5, "output_length": 2.5}, 2, "2.5"),
    ({"timestamp": 10, "input_length": "lots", "output_length": 2}, 2, "'lots'"),
    ({"timestamp": 10, "input_length": 5}, 2, "['output_length']"),
    ({"timestamp": "soon", "input_length": 5, "output_length": 2}, 2, "'soon'"),
    ({"timestamp": -5, "input_length": 5, "output_length": 2}, 2, "-5"),  # goes backwards
    ('{"timestamp": 10, "input_length": 5', 2, "not a JSON object"),
    ("[1, 2, 3]", 2, "[1, 2, 3]"),
])
def test_mooncake_errors_name_file_line_value(tmp_path, bad, line, value):
    msg = _err(W.load_mooncake_trace, _jsonl(tmp_path, [MC_OK, bad], "bad.jsonl"))
    assert "bad.jsonl" in msg and f"line {line}:" in msg and value in msg, msg


@pytest.mark.parametrize("text,kw,line,value", [
    ("t,p,o\n0,5,2\n1,5,0\n", {}, 3, "'0'"),
    ("t,p,o\n0,5,2\n1,x,3\n", {}, 3, "'x'"),
    ("t,p,o\n0,5,2\n1,-2,3\n", {}, 3, "'-2'"),
    ("t,p,o\n0,5,2\n1,3.5,3\n", {}, 3, "'3.5'"),
    ("t,p,o\n0,5,2\n1,,3\n", {}, 3, "''"),
    ("t,p,o\n1,5,2\n0,5,3\n", {}, 3, "goes backwards"),
    ("t,p,o\n0,5,2\n", {"output_column": "gen"}, 1, "'gen'"),
    ("t,q,o\n0,5,2\n", {"output_column": "o"}, 1, "prompt_column"),
])
def test_token_csv_errors_name_file_line_value(tmp_path, text, kw, line, value):
    kw = {"column": "t", "prompt_column": "p", "output_column": "o", **kw}
    if "q" in text:
        kw.pop("prompt_column")
    msg = _err(W.load_token_csv, _f(tmp_path, text, "bad.csv"), **kw)
    assert "bad.csv" in msg and f"line {line}:" in msg and value in msg, msg


def test_azure_zero_output_is_an_error(tmp_path):
    p = _f(tmp_path, "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9,10,2\n"
                     "2023-11-16 18:17:04.0,10,0\n", "az.csv")
    msg = _err(W.load_azure_llm_trace, p)
    assert "az.csv" in msg and "line 3:" in msg and "'GeneratedTokens'" in msg and "'0'" in msg, msg


def test_format_arguments_are_checked(tmp_path):
    p = _f(tmp_path, "t,p,o\n0,5,2\n1,5,3\n", "g.csv")
    with pytest.raises(ValueError, match="format = 'parquet'"):
        W.load_trace_requests(p, "parquet")
    with pytest.raises(ValueError, match="prompt_column = 'p'.*only used with format 'csv'"):
        W.load_trace_requests(p, "timestamps", prompt_column="p")
    with pytest.raises(ValueError, match="format = 'csv' only applies to a file"):
        W.trace(times=[0.0, 1.0], n_tasks=1, format="csv")


# ---- replay inside jit -----------------------------------------------------------------------------

N_REPLAY = 10


@jax.jit
def _replay_jit(key, wp):
    k0, k1 = jax.random.split(key)
    ws, *first = W.workload_init_request(k0, wp)

    def body(ws, k):
        ws, *out = W.workload_next_request(k, ws, wp)
        return ws, tuple(out)

    _, rest = jax.lax.scan(body, ws, jax.random.split(k1, N_REPLAY - 1))
    return tuple(jnp.concatenate([a[None], b]) for a, b in zip(first, rest))


def _replay(wp, key=KEY):
    """`N_REPLAY` requests from workload_init_request / workload_next_request in one jitted scan
    (compiled once: every workload here has the PADS shapes)."""
    return tuple(np.asarray(x) for x in _replay_jit(key, wp))


TIMES = np.array([0.0, 1.0, 1.5, 4.0])
PROMPT = np.array([11, 22, 33, 44])
OUTPUT = np.array([1, 2, 3, 4])


def test_tokens_replayed_in_order_with_wrap_around_and_offset():
    wp = W.trace(times=TIMES, prompt=PROMPT, output=OUTPUT, n_tasks=2, start_offset=1.2, **PADS)
    t, task, p, o = _replay(wp)
    assert p.dtype == np.int32 and o.dtype == np.int32
    # the first entry at or after the offset is 1.5 (index 2), then wrap around (period 4 + 4/3)
    idx = (2 + np.arange(10)) % 4
    assert p.tolist() == PROMPT[idx].tolist() and o.tolist() == OUTPUT[idx].tolist()
    period = 4.0 + 4.0 / 3.0
    np.testing.assert_allclose(t, TIMES[idx] + ((2 + np.arange(10)) // 4) * period - 1.2, rtol=1e-5, atol=1e-5)


def test_tokens_survive_rescaling_and_task_mix():
    base = W.trace(times=TIMES, prompt=PROMPT, output=OUTPUT, n_tasks=2, **PADS)
    fast = W.trace(times=TIMES, prompt=PROMPT, output=OUTPUT, n_tasks=2, target_mean_rate=30.0, **PADS)
    tb, _, pb, ob = _replay(base)
    tf, _, pf, of = _replay(W.with_task_mix(fast, [0.2, 0.8]))
    assert pf.tolist() == pb.tolist() == PROMPT[np.arange(N_REPLAY) % 4].tolist() and of.tolist() == ob.tolist()
    np.testing.assert_allclose(tf, tb * (0.75 / 30.0), rtol=1e-5)  # mean rate 0.75 -> 30 req/s


def test_stacked_and_padded_workloads_keep_their_tokens():
    a = W.trace(times=TIMES, prompt=PROMPT, output=OUTPUT, n_tasks=2)
    b = W.trace(times=[0.0, 0.5], prompt=[7, 8], output=[9, 10], n_tasks=2, pad_trace=3)  # padded itself
    c = W.poisson(5.0, n_tasks=2)
    s = W.stack_workloads([a, b, c])
    assert s.trace_prompt.shape == (3, 4) and s.trace_prompt[1].tolist() == [7, 8, -1, -1]
    keys = jax.random.split(KEY, 3)
    step = jax.jit(jax.vmap(W.workload_next_request))
    ws, *_ = jax.jit(jax.vmap(W.workload_init_request))(keys, s)
    got = []
    for i in range(5):
        ws, t, task, p, o = step(jax.random.split(jax.random.PRNGKey(i), 3), ws, s)
        got.append((np.asarray(p), np.asarray(o)))
    p = np.stack([g[0] for g in got], 1)
    o = np.stack([g[1] for g in got], 1)
    assert p[0].tolist() == PROMPT[np.arange(1, 6) % 4].tolist()
    assert p[1].tolist() == [8, 7, 8, 7, 8] and o[1].tolist() == [10, 9, 10, 9, 10]
    assert (p[2] == -1).all() and (o[2] == -1).all()


def test_family_traces_carry_tokens():
    fam, info = W.sample_workload_family(3, 6, 2, kinds=("poisson", "trace"), trace_times=TIMES,
                                         trace_prompt=PROMPT, trace_output=OUTPUT, return_info=True)
    kinds = [d["kind"] for d in info]
    assert set(kinds) == {"poisson", "trace"}
    for i, k in enumerate(kinds):
        want = PROMPT if k == "trace" else np.full(4, -1)
        assert np.asarray(fam.trace_prompt[i]).tolist() == want.tolist(), (i, k)


@pytest.mark.parametrize("make", [
    lambda: W.poisson(40.0, n_tasks=3, **PADS),
    lambda: W.gamma(40.0, 3.0, n_tasks=3, mix=[0.1, 0.3, 0.6], **PADS),
    lambda: W.schedule([5.0, 0.0, 60.0], 0.2, cv=2.0, n_tasks=3, start_offset=0.1, **PADS),
    lambda: W.trace(times=TIMES, tasks=[0, -1, 2, -1], prompt=[1, -1, 3, 4], output=[5, 6, -1, 8], n_tasks=3,
                    target_mean_rate=50.0, start_offset=0.05, **PADS),
])
def test_request_generators_give_the_same_times_and_tasks(make):
    wp = make()
    t, task = W.sample_arrivals(KEY, wp, 300)
    t2, task2, p, o = W.sample_arrivals(KEY, wp, 300, tokens=True)
    np.testing.assert_array_equal(t, t2)
    np.testing.assert_array_equal(task, task2)
    if int(wp.kind) == W.SCHEDULE:
        assert (p == -1).all() and (o == -1).all()  # the simulator draws them from the profile
    else:
        # rescaled times 0, .015, .0225, .06: the offset 0.05 starts at entry 3
        assert p[:6].tolist() == [4, 1, -1, 3, 4, 1] and o[:6].tolist() == [8, 5, 6, -1, 8, 5]
    ws1, *a = W.workload_init(KEY, wp)
    ws2, *b = W.workload_init_request(KEY, wp)
    for x, y in zip(jax.tree.leaves((ws1, a)), jax.tree.leaves((ws2, b[:2]))):
        np.testing.assert_array_equal(x, y)


def test_request_mode_never_reads_the_token_fields():
    """Request mode's generators cost what they did: they run with the token fields removed."""
    wp = W.trace(times=TIMES, prompt=PROMPT, output=OUTPUT, n_tasks=2, **PADS)
    bare = wp.replace(trace_prompt=None, trace_output=None)
    ws, t0, _ = W.workload_init(KEY, bare)
    _, t1, _ = jax.jit(W.workload_next)(KEY, ws, bare)
    assert float(t1) == 1.0
    with pytest.raises(Exception):
        W.workload_init_request(KEY, bare)


def test_builder_checks_tokens():
    with pytest.raises(ValueError, match=r"output\[1\] = 0"):
        W.trace(times=TIMES, output=[1, 0, 2, 3], n_tasks=1)
    with pytest.raises(ValueError, match=r"prompt has shape \(3,\)"):
        W.trace(times=TIMES, prompt=[1, 2, 3], n_tasks=1)
    with pytest.raises(ValueError, match=r"prompt\[2\] = 2.5"):
        W.trace(times=TIMES, prompt=[1.0, 2.0, 2.5, 3.0], n_tasks=1)


def test_restart_replays_tokens_from_the_offset():
    wp = W.trace(times=TIMES, prompt=PROMPT, output=OUTPUT, n_tasks=2, start_offset=0.5, **PADS)
    ws, *_ = W.workload_init_request(KEY, wp)
    ws, *_ = W.workload_next_request(KEY, ws, wp)
    ws = W.workload_restart(ws)
    _, _, _, p, _ = W.workload_next_request(KEY, ws, wp)
    assert int(p) == PROMPT[1]  # the first entry at or after 0.5 again


# ---- files and configs -----------------------------------------------------------------------------

def test_azure_shipped_trace_tokens_loaded():
    path = resolve_path("pkg:AzureLLMInferenceTrace_code.csv")
    d = W.load_azure_llm_trace(path)
    assert d["prompt"].size == 8819 and d["output"].min() >= 1
    wp = W.trace(path, n_tasks=2, target_mean_rate=100.0)  # auto-detected as azure_llm
    np.testing.assert_array_equal(np.asarray(wp.trace_prompt), d["context_tokens"])
    np.testing.assert_array_equal(np.asarray(wp.trace_output), d["generated_tokens"])


class _Prof:
    n_tasks = 2


def test_config_formats(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _jsonl(tmp_path, [{"timestamp": 100 * i, "input_length": 10 + i, "output_length": 1 + i} for i in range(10)])
    _f(tmp_path, "when,inp,gen\n0,5,1\n0.5,6,2\n2,7,3\n", "g.csv")
    wp = build_workload({"kind": "trace", "path": "m.jsonl", "format": "mooncake", "rate": 4.0, "span": [0.5, 1.0]},
                        _Prof)
    assert np.asarray(wp.trace_prompt).tolist() == [15, 16, 17, 18, 19]
    d = trace_part_requests("m.jsonl", [0.0, 0.3])
    assert d["output"].tolist() == [1, 2, 3]
    wp = build_workload({"kind": "trace", "path": "g.csv", "format": "csv", "column": "when", "prompt_column": "inp",
                         "output_column": "gen"}, _Prof)
    assert np.asarray(wp.trace_output).tolist() == [1, 2, 3]
    wp = build_workload({"kind": "trace", "path": "g.csv", "column": "when"}, _Prof)  # auto: timestamps
    assert np.asarray(wp.trace_output).tolist() == [-1, -1, -1]
    with pytest.raises(ValueError, match=r"workload.format = 'parquet': choose one of"):
        build_workload({"kind": "trace", "path": "g.csv", "format": "parquet"}, _Prof)
    with pytest.raises(ValueError, match=r"evals.x.prompt_column = 'inp': only used with"):
        build_workload({"kind": "trace", "path": "m.jsonl", "format": "mooncake", "prompt_column": "inp"}, _Prof,
                       field="evals.x")


def test_sample_arrivals_fills_missing_tokens_from_the_profile():
    """With a profile the host arrays are complete: given tokens kept, -1 drawn per task."""
    from conftest import continuous_profile_dict
    from bes_jax.profile import profile_from_dict

    prof = profile_from_dict(continuous_profile_dict())  # t0: fixed 48 / 6; t1: uniform 8..300, lognormal
    wp = W.trace(times=TIMES, prompt=[5, -1, 7, -1], output=[-1, 3, 4, -1], n_tasks=2, **PADS)
    t, task, p, o = W.sample_arrivals(KEY, wp, 300, tokens=True, profile=prof)
    t0, task0, p0, o0 = W.sample_arrivals(KEY, wp, 300, tokens=True)
    np.testing.assert_array_equal(t, t0)
    np.testing.assert_array_equal(task, task0)
    given = p0 >= 0
    np.testing.assert_array_equal(p[given], p0[given])
    np.testing.assert_array_equal(o[o0 >= 0], o0[o0 >= 0])
    assert (p >= 1).all() and (o >= 1).all()
    drawn0, drawn1 = ~given & (task == 0), ~given & (task == 1)
    assert drawn0.any() and drawn1.any()
    assert (p[drawn0] == 48).all() and (o[(o0 < 0) & (task == 0)] == 6).all()
    assert (8 <= p[drawn1]).all() and (p[drawn1] <= 300).all() and len(set(p[drawn1].tolist())) > 10
    with pytest.raises(ValueError, match="needs tokens=True"):
        W.sample_arrivals(KEY, wp, 300, profile=prof)
