"""Loaders for real arrival traces (host side, numpy).

Every malformed input raises :class:`TraceError` naming the file, the line and the value:
a silently mis-parsed trace would quietly change every experiment replayed from it.
Line numbers are 1-based physical lines of the file (line 1 is a CSV's header, a JSONL file's
first request). Token counts (prompt, output) are whole numbers >= 1, returned as int32 with
-1 where a format has none; timestamps going backwards are an error (nothing is sorted).
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


def _token_count(path, line, column, cell, field="column") -> int:
    """One token count (an integer >= 1, written ``12`` or ``12.0``) or a TraceError naming
    the file, the line, the column (or JSON key: `field`) and the value."""
    s = cell.strip() if isinstance(cell, str) else cell
    try:
        if isinstance(s, bool):
            raise ValueError
        v = float(s)
    except (TypeError, ValueError):
        raise TraceError(f"{path}: line {line}: {field} {column!r}: value {cell!r} is not a token count") from None
    if not np.isfinite(v) or v != np.floor(v):
        raise TraceError(f"{path}: line {line}: {field} {column!r}: value {cell!r} is not a whole number of tokens")
    if v < 1:
        raise TraceError(f"{path}: line {line}: {field} {column!r}: value {cell!r}: token counts must be >= 1")
    if v > np.iinfo(np.int32).max:
        raise TraceError(f"{path}: line {line}: {field} {column!r}: value {cell!r} is too large for int32")
    return int(v)


def _requests(times, prompt, output) -> dict:
    """The common return value of the request loaders (tokens int32, -1 = not given)."""
    n = np.asarray(times).size
    tok = lambda x: np.full(n, -1, np.int32) if x is None else np.asarray(x, np.int32)
    return {"times_s": np.asarray(times, np.float64), "prompt": tok(prompt), "output": tok(output)}


def load_azure_llm_trace(path) -> dict:
    """Azure LLM inference trace 2023 (``TIMESTAMP,ContextTokens,GeneratedTokens``).

    Returns ``{"times_s", "prompt", "output", "context_tokens", "generated_tokens"}``; times in
    seconds from the first request (the 7 fractional digits of the timestamps are kept, to the
    nanosecond); ``prompt`` / ``output`` are the token columns as int32 (the last two keys are
    the same counts as int64, under the file's names). Token counts must be integers >= 1.
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
            out.append(_token_count(path, line, name, cell))
    d = _requests(_to_seconds(path, "TIMESTAMP", parsed, lines, raw), ctx, gen)
    d.update(context_tokens=np.asarray(ctx, np.int64), generated_tokens=np.asarray(gen, np.int64))
    return d


#: default column names (case-insensitive) of the generic token CSV, in order
PROMPT_NAMES = ("prompt_tokens", "prompt_len", "prompt_length", "input_tokens", "input_length", "contexttokens")
OUTPUT_NAMES = ("output_tokens", "output_len", "output_length", "generated_tokens", "generatedtokens")


def _find_column(path, header, column, names, what):
    lower = [h.lower() for h in header]
    if column is not None:
        if column not in header:
            raise TraceError(f"{path}: line 1: {what} column {column!r} not in header {header!r}")
        return header.index(column)
    col = next((lower.index(n) for n in names if n in lower), None)
    if col is None:
        raise TraceError(f"{path}: line 1: no {what} column in header {header!r} (looked for {list(names)}; "
                         f"pass {what}_column=)")
    return col


def load_token_csv(path, column: str | None = None, prompt_column: str | None = None,
                   output_column: str | None = None) -> dict:
    """Requests from any CSV with a time column and prompt / output token columns.

    ``column``: the time column, found as in :func:`load_timestamp_csv` when None (numbers in
    seconds, or datetimes). ``prompt_column`` / ``output_column``: the token columns, or when
    None the first header among :data:`PROMPT_NAMES` / :data:`OUTPUT_NAMES` (case-insensitive).
    Returns ``{"times_s", "prompt", "output"}`` (tokens int32, integers >= 1).
    """
    header, rows = _read_rows(path)
    times = load_timestamp_csv(path, column)
    cp = _find_column(path, header, prompt_column, PROMPT_NAMES, "prompt")
    co = _find_column(path, header, output_column, OUTPUT_NAMES, "output")
    prompt = [_token_count(path, line, header[cp], row[cp]) for line, row in rows]
    output = [_token_count(path, line, header[co], row[co]) for line, row in rows]
    return _requests(times, prompt, output)


#: the keys of a Mooncake-style JSONL request (other keys, e.g. ``hash_ids``, are ignored)
MOONCAKE_KEYS = ("timestamp", "input_length", "output_length")


def load_mooncake_trace(path) -> dict:
    """Mooncake-style JSONL: one JSON object per line with ``timestamp`` (milliseconds),
    ``input_length`` and ``output_length`` (tokens); other keys are ignored and blank lines
    skipped. Timestamps must not go backwards. Returns ``{"times_s", "prompt", "output"}``
    (seconds from the first request; tokens int32, integers >= 1)."""
    import json

    p = Path(path)
    if not p.exists():
        raise TraceError(f"{p}: no such file")
    if p.is_dir():
        raise TraceError(f"{p}: is a directory, not a trace file")
    ms, lines, raw, prompt, output = [], [], [], [], []
    with p.open(encoding="utf-8-sig") as fh:
        for line, text in enumerate(fh, 1):
            if not text.strip():
                continue
            short = text.strip() if len(text.strip()) <= 80 else text.strip()[:77] + "..."
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise TraceError(f"{p}: line {line}: not a JSON object ({e.msg}): {short!r}") from None
            if not isinstance(obj, dict):
                raise TraceError(f"{p}: line {line}: not a JSON object: {short!r}")
            missing = [k for k in MOONCAKE_KEYS if k not in obj]
            if missing:
                raise TraceError(f"{p}: line {line}: lacks key(s) {missing} (has {sorted(obj)})")
            ts = obj["timestamp"]
            if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not np.isfinite(ts):
                raise TraceError(f"{p}: line {line}: key 'timestamp': value {ts!r} is not a finite number of ms")
            prompt.append(_token_count(p, line, "input_length", obj["input_length"], "key"))
            output.append(_token_count(p, line, "output_length", obj["output_length"], "key"))
            ms.append(float(ts))
            lines.append(line)
            raw.append(ts)
    if not ms:
        raise TraceError(f"{p}: line 1: no requests (empty file or only blank lines)")
    t = np.asarray(ms, np.float64) / 1000.0
    back = np.nonzero(np.diff(t) < 0)[0]
    if back.size:
        i = int(back[0]) + 1
        raise TraceError(f"{p}: line {lines[i]}: key 'timestamp': value {raw[i]!r} goes backwards "
                         f"(line {lines[i - 1]} is {raw[i - 1]!r}); the trace must be sorted")
    return _requests(t - t[0], prompt, output)


#: trace formats of :func:`load_trace_requests` (``auto`` picks one from the file)
FORMATS = ("auto", "timestamps", "azure_llm", "mooncake", "csv")


def _is_azure(path) -> bool:
    p = Path(path)
    if not p.is_file():
        return False
    with p.open(encoding="utf-8-sig") as fh:
        return fh.readline().startswith("TIMESTAMP,ContextTokens")


def detect_format(path, column: str | None = None) -> str:
    """``azure_llm`` for the Azure header (unless `column` names another time column),
    ``mooncake`` for a ``.jsonl`` file, else ``timestamps``."""
    if _is_azure(path) and column in (None, "TIMESTAMP"):
        return "azure_llm"
    return "mooncake" if str(path).lower().endswith(".jsonl") else "timestamps"


def load_trace_requests(path, format: str = "auto", column: str | None = None, prompt_column: str | None = None,
                        output_column: str | None = None) -> dict:
    """Requests of a trace file in one of :data:`FORMATS`: ``{"times_s", "prompt", "output"}``,
    times in seconds from the first request, tokens int32 with -1 where the format has none
    (``timestamps``). ``column`` is the time column (``timestamps``, ``csv``); ``prompt_column``
    and ``output_column`` the token columns (``csv`` only)."""
    if format not in FORMATS:
        raise ValueError(f"format = {format!r}: choose one of {list(FORMATS)}")
    if format == "auto":
        format = detect_format(path, column)
    if format != "csv":
        for name, v in (("prompt_column", prompt_column), ("output_column", output_column)):
            if v is not None:
                raise ValueError(f"{name} = {v!r}: only used with format 'csv' (format is {format!r})")
    if (format == "mooncake" and column is not None) or (format == "azure_llm" and column not in (None, "TIMESTAMP")):
        raise ValueError(f"column = {column!r}: not used with format {format!r} (its time field is fixed)")
    if format == "azure_llm":
        d = load_azure_llm_trace(path)
        return {k: d[k] for k in ("times_s", "prompt", "output")}
    if format == "mooncake":
        return load_mooncake_trace(path)
    if format == "csv":
        return load_token_csv(path, column, prompt_column, output_column)
    return _requests(load_timestamp_csv(path, column), None, None)


def load_trace_times(path, column: str | None = None) -> np.ndarray:
    """Arrival times from the Azure LLM format, a Mooncake ``.jsonl`` or any timestamp CSV."""
    if _is_azure(path) and column in (None, "TIMESTAMP"):
        return load_azure_llm_trace(path)["times_s"]
    if str(path).lower().endswith(".jsonl") and column is None:
        return load_mooncake_trace(path)["times_s"]
    return load_timestamp_csv(path, column)
