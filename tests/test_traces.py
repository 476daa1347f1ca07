"""Trace loaders: the real files' documented facts; broken files name file, line and value."""
from __future__ import annotations

import numpy as np
import pytest

from bes_jax.workloads import (TraceError, load_azure_llm_trace, load_maf_minute_counts, load_timestamp_csv,
                               load_trace_times)
from conftest import TRACES

MAF = TRACES / "maf2019_invitro_500fn_min480-959.csv"
AZURE = TRACES / "AzureLLMInferenceTrace_code.csv"
need_maf = pytest.mark.skipif(not MAF.exists(), reason="../shared/traces absent")
need_azure = pytest.mark.skipif(not AZURE.exists(), reason="../shared/traces absent")


@pytest.fixture(scope="module")
def maf_counts():
    return load_maf_minute_counts(MAF)


@pytest.fixture(scope="module")
def azure():
    return load_azure_llm_trace(AZURE)


@need_maf
def test_maf_facts(maf_counts):
    c = maf_counts
    assert c.dtype == np.float64 and c.size == 480
    assert c.sum() == 3_037_902 and c.min() == 3013 and c.max() == 7603 and round(c.mean()) == 6329


@need_maf
def test_maf_selection(maf_counts):
    np.testing.assert_array_equal(load_maf_minute_counts(MAF, minutes=(10, 20)), maf_counts[10:20])
    assert load_maf_minute_counts(MAF, functions=[0, 1]).sum() < 10
    np.testing.assert_array_equal(load_maf_minute_counts(MAF, top_k=500), maf_counts)
    assert load_maf_minute_counts(MAF, top_k=1).sum() == 1_915_521  # the busiest function
    a = load_maf_minute_counts(MAF, sample_k=20, seed=1)
    np.testing.assert_array_equal(a, load_maf_minute_counts(MAF, sample_k=20, seed=1))
    assert not np.array_equal(a, load_maf_minute_counts(MAF, sample_k=20, seed=2))
    with pytest.raises(ValueError, match="at most one"):
        load_maf_minute_counts(MAF, functions=[0], top_k=3)


@need_azure
def test_azure_facts(azure):
    t = azure["times_s"]
    assert t.size == 8819 and t[0] == 0.0 and abs(t[-1] - 3436) < 1 and (np.diff(t) >= 0).all()
    np.testing.assert_allclose(t[1], 0.052, atol=1e-9)  # all 7 fractional digits kept
    np.testing.assert_allclose(t[-1], 3435.948056, atol=1e-9)  # 19:14:19.9280160 - 18:17:03.9799600, last line (no newline)
    g = np.diff(t)
    assert abs((t.size - 1) / t[-1] - 2.57) < 0.01 and 12 < g.std() / g.mean() < 14 and 210 < g.max() < 220
    assert np.median(azure["context_tokens"]) == 1469 and np.median(azure["generated_tokens"]) == 13
    assert azure["prompt"].dtype == np.int32 and (azure["prompt"] == azure["context_tokens"]).all()
    assert (azure["output"] == azure["generated_tokens"]).all()
    assert (azure["prompt"].min(), azure["prompt"].max(), azure["output"].min(), azure["output"].max()) == (3, 7437, 6, 1899)
    np.testing.assert_array_equal(load_timestamp_csv(AZURE), t)  # TIMESTAMP auto-detected
    np.testing.assert_array_equal(load_trace_times(AZURE), t)


def _f(tmp_path, text, name="t.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def _err(fn, path, **kw):
    with pytest.raises(TraceError) as e:
        fn(path, **kw)
    return str(e.value)


@pytest.mark.parametrize("text,kw,line,value", [
    ("", {}, 1, "empty"),
    ("\n\n", {}, 1, "empty"),
    ("timestamp\n", {}, 2, "header only"),
    ("a,b\n1,2\n", {}, 1, "no timestamp column"),
    ("id,created_at,updated_time\n1,3,4\n", {}, 1, "several candidates ['created_at', 'updated_time']"),
    ("id,a,b\n1,2023-01-01,2023-01-02\n", {}, 1, "several candidates ['a', 'b']"),
    ("a,b\n1,2\n", {"column": "arrival"}, 1, "'arrival'"),
    ("timestamp\n0.1\n0.2\nabc\n", {}, 4, "'abc'"),
    ("timestamp\n0.1\nnan\n", {}, 3, "'nan'"),
    ("timestamp\n0.1\n0.5\n\n0.3\n", {}, 5, "'0.3'"),  # blank lines count as lines
    ("time,x\n2023-01-01 00:00:01,1\n2023-01-01 00:00:00,2\n", {}, 3, "'2023-01-01 00:00:00'"),
    ("time,x\n2023-01-01 00:00:01,1\n2023-13-01 00:00:02,2\n", {}, 3, "'2023-13-01 00:00:02'"),
    ("time,x\n2023-01-01 00:00:01,1\nNaT,2\n", {}, 3, "'NaT'"),
    ("time,x\n1.0,2\n2.0\n", {}, 3, "'2.0'"),
    ("time\n1.0\n2023-01-01 00:00:00\n", {}, 3, "mixes numbers and datetimes"),
])
def test_timestamp_csv_errors(tmp_path, text, kw, line, value):
    msg = _err(load_timestamp_csv, _f(tmp_path, text), **kw)
    assert "t.csv" in msg and f"line {line}:" in msg and value in msg, msg


def test_timestamp_csv_formats(tmp_path):
    np.testing.assert_allclose(load_timestamp_csv(_f(tmp_path, "id,Arrival\n1,10.5\n2,11\n3,11\n")), [0, 0.5, 0.5])
    t = load_timestamp_csv(_f(tmp_path, "x,when\n1,2023-11-16 23:59:59.9999999\n2,2023-11-17 00:00:01\n"),
                           column="when")
    np.testing.assert_allclose(t, [0.0, 1.0000001], atol=1e-9)


def test_timestamp_column_is_guessed(tmp_path):
    # a name that looks like a time, with ISO datetimes carrying a timezone (converted to UTC)
    t = load_timestamp_csv(_f(tmp_path, "request_id,arrived_at,tokens\n"
                                        "r0,2025-03-01T12:00:00.5+00:00,9\nr1,2025-03-01T13:00:01+01:00,9\n"))
    np.testing.assert_allclose(t, [0.0, 0.5])
    # no telling name: the one column holding datetimes
    t = load_timestamp_csv(_f(tmp_path, "id,when\n7,2023-01-01 00:00:00\n8,2023-01-01 00:00:02\n"))
    np.testing.assert_allclose(t, [0.0, 2.0])


def test_missing_file(tmp_path):
    for fn in (load_timestamp_csv, load_azure_llm_trace, load_maf_minute_counts):
        msg = _err(fn, tmp_path / "nope.csv")
        assert "nope.csv" in msg and "no such file" in msg


MAF_HEAD = "HashOwner,HashApp,HashFunction,Trigger,480,481\n"


@pytest.mark.parametrize("text,kw,line,value", [
    (MAF_HEAD + "a,b,c,http,1,2\na,b,c,http,3,x\n", {}, 3, "'x'"),
    (MAF_HEAD + "a,b,c,http,1,2\na,b,c,http,3,-1\n", {}, 3, "'-1'"),
    (MAF_HEAD + "a,b,c,http,1\n", {}, 2, "'a,b,c,http,1'"),
    (MAF_HEAD, {}, 2, "header only"),
    ("x,y\n1,2\n", {}, 1, "['x', 'y']"),
    ("HashOwner,HashApp,HashFunction,Trigger,480,noon\na,b,c,http,1,2\n", {}, 1, "'noon'"),
])
def test_maf_errors(tmp_path, text, kw, line, value):
    msg = _err(load_maf_minute_counts, _f(tmp_path, text), **kw)
    assert "t.csv" in msg and f"line {line}:" in msg and value in msg, msg


def test_maf_selection_errors(tmp_path):
    p = _f(tmp_path, MAF_HEAD + "a,b,c,http,1,2\na,b,c,http,3,4\n")
    np.testing.assert_array_equal(load_maf_minute_counts(p), [4, 6])
    assert "functions = [5]" in _err(load_maf_minute_counts, p, functions=[0, 5])
    assert "minutes = [1, 1]" in _err(load_maf_minute_counts, p, minutes=(1, 1))
    assert "top_k = 3" in _err(load_maf_minute_counts, p, top_k=3)


AZ_HEAD = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


@pytest.mark.parametrize("text,line,value", [
    (AZ_HEAD + "2023-11-16 18:17:03.9799600,10,2\n2023-11-16 18:17:04.0,many,3", 3, "'many'"),
    (AZ_HEAD + "2023-11-16 18:17:03.9799600,10,2\n2023-11-16 18:17:04.0,5,-3", 3, "'-3'"),
    (AZ_HEAD + "2023-11-16 18:17:03.9799600,10,2\n2023-11-16 18:17:03.0,5,3", 3, "'2023-11-16 18:17:03.0'"),
    (AZ_HEAD + "2023-11-16 18:17:03.9799600,10,2\n18:17:04,5,3", 3, "'18:17:04'"),
    (AZ_HEAD + "2023-11-16 18:17:03.9799600,10,2\n2023-11-16 18:17:04.0,5", 3, "truncated"),
    ("TIMESTAMP,ContextTokens\n2023-11-16 18:17:03.9799600,10\n", 1, "['GeneratedTokens']"),
])
def test_azure_errors(tmp_path, text, line, value):
    msg = _err(load_azure_llm_trace, _f(tmp_path, text, "az.csv"))
    assert "az.csv" in msg and f"line {line}:" in msg and value in msg, msg


def test_azure_small_file_no_trailing_newline(tmp_path):
    d = load_azure_llm_trace(_f(tmp_path, AZ_HEAD + "2023-11-16 18:17:03.9799600,10,2\n"
                                          "2023-11-16 18:17:04.0319600,7,1"))
    np.testing.assert_allclose(d["times_s"], [0.0, 0.052], atol=1e-12)
    assert d["context_tokens"].tolist() == [10, 7] and d["generated_tokens"].tolist() == [2, 1]
