"""Shipped data samples (bes_jax/data): the same numbers as the traces they come from, and one
resolver for every config file value (``pkg:NAME`` or a path)."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from bes_jax import DATA_DIR
from bes_jax.data import resolve_path, shipped
from bes_jax.workloads import load_maf_minute_counts, load_trace_times
from conftest import TRACES

MAF = TRACES / "maf2019_invitro_500fn_min480-959.csv"
AZURE = TRACES / "AzureLLMInferenceTrace_code.csv"


def test_shipped_files_resolve_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert {"maf2019_minute_totals.csv", "AzureLLMInferenceTrace_code.csv"} <= set(shipped())
    for name in shipped():
        p = resolve_path(f"pkg:{name}", "workload.path")
        assert p.startswith(str(DATA_DIR)) and (DATA_DIR / name).is_file()
    counts = load_maf_minute_counts(resolve_path("pkg:maf2019_minute_totals.csv"))
    assert counts.shape == (480,) and counts.sum() == 3_037_902 and counts.min() == 3013 and counts.max() == 7603
    t = load_trace_times(resolve_path("pkg:AzureLLMInferenceTrace_code.csv"))
    assert t.size == 8819 and t[0] == 0.0


def test_not_found_names_field_value_and_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        resolve_path("../shared/traces/nope.csv", "train_family.maf_path")
    msg = str(e.value)
    assert "train_family.maf_path" in msg and "'../shared/traces/nope.csv'" in msg and str(tmp_path) in msg
    assert "passed by path" in msg and "pkg:maf2019_minute_totals.csv" in msg
    with pytest.raises(FileNotFoundError, match="workload.path = 'pkg:nope.csv': no shipped data file"):
        resolve_path("pkg:nope.csv", "workload.path")
    with pytest.raises(FileNotFoundError, match="is a directory"):
        resolve_path(str(tmp_path), "workload.path")
    f = tmp_path / "t.csv"
    f.write_text("time\n0\n1\n")
    assert resolve_path("t.csv") == "t.csv"


@pytest.mark.skipif(not MAF.exists(), reason="../shared/traces absent")
def test_maf_totals_match_the_full_excerpt():
    full = load_maf_minute_counts(MAF)
    np.testing.assert_array_equal(load_maf_minute_counts(DATA_DIR / "maf2019_minute_totals.csv"), full)
    np.testing.assert_array_equal(load_maf_minute_counts(DATA_DIR / "maf2019_minute_totals.csv", minutes=(300, 330)),
                                  load_maf_minute_counts(MAF, minutes=(300, 330)))
    assert (DATA_DIR / "maf2019_minute_totals.csv").read_text().splitlines()[0] == MAF.open().readline().rstrip("\r\n")


def test_azure_code_trace_is_the_published_file():
    digest = hashlib.sha256((DATA_DIR / "AzureLLMInferenceTrace_code.csv").read_bytes()).hexdigest()
    assert digest == "54e9a6d2a4bd06ba1e060304b900abbc74cbea53de96506e60fe5bb4f2277fb6"
