"""Trace loaders: the real files' documented facts; broken files name file, line and value."""
from __future__ import annotations

import numpy as np
import pytest

from bes_jax.workloads import TraceError, load_azure_llm_trace, load_maf_minute_counts, load_timestamp_csv
from conftest import TRACES

MAF = TRACES / "maf2019_invitro_500fn_min480-959.csv"
AZURE = TRACES / "AzureLLMInferenceTrace_code.csv"


@pytest.mark.skipif(not MAF.exists(), reason="traces absent")
def test_maf_facts():
    c = load_maf_minute_counts(MAF)
    assert c.size == 480 and c.sum() == 3_037_902 and c.min() == 3013 and c.max() == 7603
    assert load_maf_minute_counts(MAF, functions=[0, 1]).sum() < 10
    assert load_maf_minute_counts(MAF, minutes=(10, 20)).size == 10


@pytest.mark.skipif(not AZURE.exists(), reason="traces absent")
def test_azure_facts():
    d = load_azure_llm_trace(AZURE)
    t = d["times_s"]
    assert t.size == 8819 and abs(t[-1] - 3436) < 2 and (np.diff(t) >= 0).all()
    assert np.median(d["context_tokens"]) == 1469 and np.median(d["generated_tokens"]) == 13
    np.testing.assert_allclose(t[1], 0.052, atol=1e-6)  # 7 fractional digits kept
    np.testing.assert_allclose(load_timestamp_csv(AZURE), t)


def _f(tmp_path, text, name="t.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("text,line,value", [
    ("timestamp\n0.1\n0.2\nabc\n", 4, "abc"),
    ("timestamp\n0.1\n0.5\n0.3\n", 4, "0.3"),
    ("time,x\n2023-01-01 00:00:01,1\n2023-01-01 00:00:00,2\n", 3, "2023-01-01T00:00:00"),
    ("time,x\n1.0,2\n2.0\n", 3, "2.0"),
    ("timestamp\n", 2, "header"),
])
def test_timestamp_csv_errors(tmp_path, text, line, value):
    with pytest.raises(TraceError) as e:
        load_timestamp_csv(_f(tmp_path, text))
    msg = str(e.value)
    assert "t.csv" in msg and f"line {line}" in msg and value in msg, msg


def test_empty_and_missing(tmp_path):
    with pytest.raises(TraceError, match="t.csv: line 1: empty"):
        load_timestamp_csv(_f(tmp_path, ""))
    with pytest.raises(TraceError, match="no such file"):
        load_timestamp_csv(tmp_path / "nope.csv")
    with pytest.raises(TraceError, match="no timestamp column"):
        load_timestamp_csv(_f(tmp_path, "a,b\n1,2\n"))


def test_maf_errors(tmp_path):
    head = "HashOwner,HashApp,HashFunction,Trigger,1,2\n"
    with pytest.raises(TraceError, match=r"t.csv: line 3: column '2': value 'x'"):
        load_maf_minute_counts(_f(tmp_path, head + "a,b,c,http,1,2\na,b,c,http,3,x\n"))
    with pytest.raises(TraceError, match=r"line 2: truncated"):
        load_maf_minute_counts(_f(tmp_path, head + "a,b,c,http,1\n"))
    with pytest.raises(TraceError, match="header"):
        load_maf_minute_counts(_f(tmp_path, "x,y\n1,2\n"))


def test_azure_errors(tmp_path):
    with pytest.raises(TraceError, match=r"line 3: column 'ContextTokens': value 'many'"):
        load_azure_llm_trace(_f(tmp_path, "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                                          "2023-11-16 18:17:03.9799600,10,2\n2023-11-16 18:17:04.0,many,3\n"))
