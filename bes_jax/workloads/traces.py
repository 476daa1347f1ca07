"""Loaders for real arrival traces (host side, numpy).

Every malformed input raises :class:`TraceError` naming the file, the line and the value:
a silently mis-parsed trace would quietly change every experiment replayed from it.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

TIMESTAMP_NAMES = ("timestamp", "time", "arrival", "arrival_time", "ts", "time_s", "t")


class TraceError(ValueError):
    """A trace file is malformed; the message names file, line and value."""


def _read_rows(path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    p = Path(path)
    if not p.exists():
        raise TraceError(f"{p}: no such file")
    if p.stat().st_size == 0:
        raise TraceError(f"{p}: line 1: empty file (expected a header row)")
    with p.open(newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise TraceError(f"{p}: line 1: empty file (expected a header row)") from None
        rows = [(i + 2, row) for i, row in enumerate(reader) if row and any(c.strip() for c in row)]
    if not rows:
        raise TraceError(f"{p}: line 2: no data rows after the header {header!r}")
    for line, row in rows:
        if len(row) < len(header):
            raise TraceError(f"{p}: line {line}: truncated row {','.join(row)!r} has {len(row)} fields, "
                             f"header has {len(header)}")
    return [h.strip() for h in header], rows


def load_maf_minute_counts(path, functions=None, minutes=None) -> np.ndarray:
    """Per-minute total invocations of an Azure Functions 2019 trace excerpt.

    ``functions``: row indices (0-based, data rows) to include (default all); ``minutes``:
    ``(start, stop)`` slice of the minute columns.
    """
    header, rows = _read_rows(path)
    fixed = ["HashOwner", "HashApp", "HashFunction", "Trigger"]
    if header[:4] != fixed:
        raise TraceError(f"{path}: line 1: header starts {header[:4]!r}, expected {fixed} then minute columns")
    if len(header) == 4:
        raise TraceError(f"{path}: line 1: no minute columns after {fixed}")
    for c in header[4:]:
        if not c.isdigit():
            raise TraceError(f"{path}: line 1: minute column name {c!r} is not an integer")
    if functions is not None:
        idx = list(functions)
        bad = [i for i in idx if not (0 <= int(i) < len(rows))]
        if bad:
            raise TraceError(f"{path}: functions {bad} out of range (the file has {len(rows)} functions)")
        rows = [rows[int(i)] for i in idx]
    counts = np.zeros(len(header) - 4)
    for line, row in rows:
        for j, cell in enumerate(row[4:len(header)]):
            try:
                v = float(cell)
            except ValueError:
                raise TraceError(f"{path}: line {line}: column {header[4 + j]!r}: value {cell!r} is not a number") from None
            if not np.isfinite(v) or v < 0:
                raise TraceError(f"{path}: line {line}: column {header[4 + j]!r}: value {cell!r} must be a finite count >= 0")
            counts[j] += v
    if minutes is not None:
        lo, hi = int(minutes[0]), int(minutes[1])
        if not (0 <= lo < hi <= counts.size):
            raise TraceError(f"{path}: minutes = {list(minutes)}: need 0 <= start < stop <= {counts.size}")
        counts = counts[lo:hi]
    return counts


def _parse_time(cell: str):
    """Seconds (float) or a datetime (numpy datetime64[ns]); None if neither."""
    s = cell.strip()
    try:
        return float(s)
    except ValueError:
        pass
    try:
        return np.datetime64(s.replace(" ", "T", 1), "ns")
    except ValueError:
        return None


def _to_seconds(path, column, parsed: list, lines: list[int]) -> np.ndarray:
    kinds = {type(v) for v in parsed}
    if len(kinds) > 1:
        first = type(parsed[0])
        for v, line in zip(parsed, lines):
            if type(v) is not first:
                raise TraceError(f"{path}: line {line}: column {column!r}: value {v!r} mixes numbers and datetimes")
    if isinstance(parsed[0], float):
        t = np.asarray(parsed, np.float64)
    else:
        ns = np.asarray(parsed, dtype="datetime64[ns]").astype(np.int64)
        t = (ns - ns[0]) / 1e9
    back = np.nonzero(np.diff(t) < 0)[0]
    if back.size:
        i = int(back[0]) + 1
        raise TraceError(f"{path}: line {lines[i]}: column {column!r}: timestamps go backwards "
                         f"({parsed[i - 1]!r} then {parsed[i]!r}); the trace must be sorted")
    return t - t[0]


def load_timestamp_csv(path, column: str | None = None) -> np.ndarray:
    """Arrival times (seconds from the first) from any CSV with a timestamp column."""
    header, rows = _read_rows(path)
    lower = [h.lower() for h in header]
    if column is None:
        hits = [i for i, h in enumerate(lower) if h in TIMESTAMP_NAMES]
        if not hits:
            raise TraceError(f"{path}: line 1: no timestamp column in header {header!r} "
                             f"(looked for {list(TIMESTAMP_NAMES)}; pass the column name)")
        col = hits[0]
    else:
        if column not in header:
            raise TraceError(f"{path}: line 1: column {column!r} not in header {header!r}")
        col = header.index(column)
    parsed, lines = [], []
    for line, row in rows:
        v = _parse_time(row[col])
        if v is None:
            raise TraceError(f"{path}: line {line}: column {header[col]!r}: value {row[col]!r} is neither "
                             "a number of seconds nor a datetime")
        parsed.append(v)
        lines.append(line)
    return _to_seconds(path, header[col], parsed, lines)


def load_azure_llm_trace(path) -> dict:
    """Azure LLM inference trace 2023: ``TIMESTAMP,ContextTokens,GeneratedTokens``."""
    header, rows = _read_rows(path)
    need = ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]
    missing = [c for c in need if c not in header]
    if missing:
        raise TraceError(f"{path}: line 1: header {header!r} lacks column(s) {missing}")
    ci = [header.index(c) for c in need]
    parsed, lines, ctx, gen = [], [], [], []
    for line, row in rows:
        v = _parse_time(row[ci[0]])
        if v is None or isinstance(v, float):
            raise TraceError(f"{path}: line {line}: column 'TIMESTAMP': value {row[ci[0]]!r} is not a datetime")
        parsed.append(v)
        lines.append(line)
        for name, j, out in (("ContextTokens", ci[1], ctx), ("GeneratedTokens", ci[2], gen)):
            cell = row[j].strip()
            if not cell.isdigit():
                raise TraceError(f"{path}: line {line}: column {name!r}: value {row[j]!r} is not a token count")
            out.append(int(cell))
    return {"times_s": _to_seconds(path, "TIMESTAMP", parsed, lines),
            "context_tokens": np.asarray(ctx), "generated_tokens": np.asarray(gen)}


def load_trace_times(path, column: str | None = None) -> np.ndarray:
    """Arrival times from the Azure LLM format or any timestamp CSV."""
    with Path(path).open() as fh:
        first = fh.readline()
    if first.startswith("TIMESTAMP,ContextTokens"):
        return load_azure_llm_trace(path)["times_s"]
    return load_timestamp_csv(path, column)
