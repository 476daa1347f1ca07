"""Loaders for real arrival traces (host side, numpy).

Every malformed input raises :class:`TraceError` naming the file, the line and the value:
a silently mis-parsed trace would quietly change every experiment replayed from it.
Line numbers are 1-based physical lines of the file (line 1 is the header).
"""
from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np

#: column names (case-insensitive) taken as the timestamp column when none is given, in order
TIMESTAMP_NAMES = ("timestamp", "time", "arrival", "arrival_time", "arrival_s", "time_s", "ts", "t")

MAF_FIXED = ["HashOwner", "HashApp", "HashFunction", "Trigger"]


class TraceError(ValueError):
    """A trace file is malformed; the message names file, line and value."""


def _read_rows(path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and ``(line, fields)`` data rows; blank lines are skipped; truncated rows raise."""
    p = Path(path)
    if not p.exists():
        raise TraceError(f"{p}: no such file")
    if p.is_dir():
        raise TraceError(f"{p}: is a directory, not a trace file")
    if p.stat().st_size == 0:
        raise TraceError(f"{p}: line 1: empty file (expected a header row)")
    rows = []
    with p.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = None
        for row in reader:
            if not row or not any(c.strip() for c in row):
                continue
            if header is None:
                header = [h.strip() for h in row]
                header_line = reader.line_num
            else:
                rows.append((reader.line_num, row))
    if header is None:
        raise TraceError(f"{p}: line 1: empty file (only blank lines; expected a header row)")
    if not rows:
        raise TraceError(f"{p}: line {header_line + 1}: header only, no data rows after the header {header!r}")
    for line, row in rows:
        if len(row) < len(header):
            raise TraceError(f"{p}: line {line}: truncated row {','.join(row)!r} has {len(row)} fields, "
                             f"header has {len(header)}")
    return header, rows


def load_maf_minute_counts(path, functions=None, minutes=None, top_k: int | None = None,
                           sample_k: int | None = None, seed: int = 0) -> np.ndarray:
    """Per-minute total invocations (float array) of an Azure Functions 2019 trace excerpt.

    The file has ``HashOwner,HashApp,HashFunction,Trigger`` then one column per minute.
    Rows (functions) summed, at most one selector:

    - ``functions``: data-row indices (0-based) to include;
    - ``top_k``: the k functions with the most invocations over the selected minutes;
    - ``sample_k``: k functions drawn uniformly without replacement with ``seed``.

    ``minutes``: ``(start, stop)`` slice of the minute columns (0-based column positions,
    not the minute-of-day labels).
    """
    header, rows = _read_rows(path)
    if header[:4] != MAF_FIXED:
        raise TraceError(f"{path}: line 1: header starts {header[:4]!r}, expected {MAF_FIXED} then minute columns")
    if len(header) == 4:
        raise TraceError(f"{path}: line 1: no minute columns after {MAF_FIXED}")
    for c in header[4:]:
        if not c.isdigit():
            raise TraceError(f"{path}: line 1: minute column name {c!r} is not an integer")
    n_min = len(header) - 4
    table = np.zeros((len(rows), n_min))
    for r, (line, row) in enumerate(rows):
        for j, cell in enumerate(row[4:len(header)]):
            try:
                v = float(cell)
            except ValueError:
                raise TraceError(f"{path}: line {line}: column {header[4 + j]!r}: value {cell!r} is not a number") from None
            if not np.isfinite(v) or v < 0:
                raise TraceError(f"{path}: line {line}: column {header[4 + j]!r}: value {cell!r} must be a finite count >= 0")
            table[r, j] = v
    if minutes is not None:
        lo, hi = (int(m) for m in minutes)
        if not (0 <= lo < hi <= n_min):
            raise TraceError(f"{path}: minutes = {list(minutes)}: need 0 <= start < stop <= {n_min}")
        table = table[:, lo:hi]
    given = [name for name, v in (("functions", functions), ("top_k", top_k), ("sample_k", sample_k)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"load_maf_minute_counts: give at most one of functions/top_k/sample_k, got {given}")
    if functions is not None:
        idx = [int(i) for i in np.atleast_1d(np.asarray(functions))]
        bad = [i for i in idx if not (0 <= i < len(rows))]
        if bad or not idx:
            raise TraceError(f"{path}: functions = {bad or idx}: need indices in 0..{len(rows) - 1} "
                             f"(the file has {len(rows)} functions)")
        table = table[idx]
    for name, k in (("top_k", top_k), ("sample_k", sample_k)):
        if k is not None and not (1 <= int(k) <= len(rows)):
            raise TraceError(f"{path}: {name} = {k}: need 1 <= k <= {len(rows)} (the number of functions)")
    if top_k is not None:
        order = np.argsort(-table.sum(1), kind="stable")
        table = table[order[:int(top_k)]]
    if sample_k is not None:
        pick = np.random.default_rng(seed).choice(len(rows), size=int(sample_k), replace=False)
        table = table[np.sort(pick)]
    return table.sum(0)


def _parse_time(cell: str):
    """Seconds (float) or a datetime (numpy datetime64[ns]); None if neither."""
    s = cell.strip()
    try:
        v = float(s)
        return v if np.isfinite(v) else None
    except ValueError:
        pass
    if not s or s[0] not in "0123456789":
        return None  # numpy would take 'NaT' and 'today'
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # timezone suffixes: numpy converts to UTC and warns
            return np.datetime64(s.replace(" ", "T", 1), "ns")
    except ValueError:
        return None


def _to_seconds(path, column, parsed: list, lines: list[int], raw: list[str]) -> np.ndarray:
    first_is_num = isinstance(parsed[0], float)
    for v, line, cell in zip(parsed, lines, raw):
        if isinstance(v, float) != first_is_num:
            raise TraceError(f"{path}: line {line}: column {column!r}: value {cell!r} mixes numbers and "
                             f"datetimes (line {lines[0]} is {raw[0]!r})")
    if first_is_num:
        t = np.asarray(parsed, np.float64)
    else:
        ns = np.asarray(parsed, dtype="datetime64[ns]").astype(np.int64)
        t = (ns - ns[0]) / 1e9
    back = np.nonzero(np.diff(t) < 0)[0]
    if back.size:
        i = int(back[0]) + 1
        raise TraceError(f"{path}: line {lines[i]}: column {column!r}: value {raw[i]!r} goes backwards "
                         f"(line {lines[i - 1]} is {raw[i - 1]!r}); the trace must be sorted")
    return t - t[0]


def _guess_time_column(path, header: list[str], rows) -> int:
    """The one column whose name looks like a time (``arrived_at``, ``created``, ``Date``)
    or, failing that, the one whose first value is a datetime; else a clear error."""
    hints = ("time", "arriv", "date", "stamp", "created")
    by_name = [i for i, h in enumerate(header) if any(k in h.lower() for k in hints)]
    first = rows[0][1] if rows else []
    by_value = [i for i, cell in enumerate(first) if isinstance(_parse_time(cell), np.datetime64)]
    for found in (by_name, by_value):
        if len(found) == 1:
            return found[0]
    many = by_name if len(by_name) > 1 else by_value
    why = (f"several candidates {[header[i] for i in many]}" if len(many) > 1
           else f"looked for {list(TIMESTAMP_NAMES)}, a name with {list(hints)}, or a datetime value")
    raise TraceError(f"{path}: line 1: no timestamp column in header {header!r} ({why}; pass column=)")


def load_timestamp_csv(path, column: str | None = None) -> np.ndarray:
    """Arrival times in seconds from the first, from any CSV with a timestamp column.

    The column is ``column``, or the first header name in :data:`TIMESTAMP_NAMES`
    (case-insensitive), or the only column whose name or first value looks like a time.
    Values are all numbers (seconds) or all datetimes (``YYYY-MM-DD[ HH:MM:SS[.fraction]]``,
    any number of fractional digits, ns precision).
    """
    header, rows = _read_rows(path)
    lower = [h.lower() for h in header]
    if column is None:
        col = next((lower.index(n) for n in TIMESTAMP_NAMES if n in lower), None)
        if col is None:
            col = _guess_time_column(path, header, rows)
    else:
        if column not in header:
            raise TraceError(f"{path}: line 1: column {column!r} not in header {header!r}")
        col = header.index(column)
    parsed, lines, raw = [], [], []
    for line, row in rows:
        v = _parse_time(row[col])
        if v is None:
            raise TraceError(f"{path}: line {line}: column {header[col]!r}: value {row[col]!r} is neither "
                             "a finite number of seconds nor a datetime")
        parsed.append(v)
        lines.append(line)
        raw.append(row[col])
    return _to_seconds(path, header[col], parsed, lines, raw)


def load_azure_llm_trace(path) -> dict:
    """Azure LLM inference trace 2023 (``TIMESTAMP,ContextTokens,GeneratedTokens``).

    Returns ``{"times_s", "context_tokens", "generated_tokens"}``; times in seconds from the
    first request (the 7 fractional digits of the timestamps are kept, to the nanosecond).
    """
    header, rows = _read_rows(path)
    need = ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]
    missing = [c for c in need if c not in header]
    if missing:
        raise TraceError(f"{path}: line 1: header {header!r} lacks column(s) {missing}")
    ci = [header.index(c) for c in need]
    parsed, lines, raw, ctx, gen = [], [], [], [], []
    for line, row in rows:
        v = _parse_time(row[ci[0]])
        if v is None or isinstance(v, float):
            raise TraceError(f"{path}: line {line}: column 'TIMESTAMP': value {row[ci[0]]!r} is not a datetime")
        parsed.append(v)
        lines.append(line)
        raw.append(row[ci[0]])
        for name, j, out in (("ContextTokens", ci[1], ctx), ("GeneratedTokens", ci[2], gen)):
            cell = row[j].strip()
            if not cell.isdigit():
                raise TraceError(f"{path}: line {line}: column {name!r}: value {row[j]!r} is not a token count")
            out.append(int(cell))
    return {"times_s": _to_seconds(path, "TIMESTAMP", parsed, lines, raw),
            "context_tokens": np.asarray(ctx, np.int64), "generated_tokens": np.asarray(gen, np.int64)}


def load_trace_times(path, column: str | None = None) -> np.ndarray:
    """Arrival times from the Azure LLM format or any timestamp CSV."""
    p = Path(path)
    if p.is_file():
        with p.open(encoding="utf-8-sig") as fh:
            first = fh.readline()
        if first.startswith("TIMESTAMP,ContextTokens") and column in (None, "TIMESTAMP"):
            return load_azure_llm_trace(path)["times_s"]
    return load_timestamp_csv(path, column)
