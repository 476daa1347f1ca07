"""Small data files shipped with the package, and the one function that turns a config's
file value into a path.

A config names a shipped file with the prefix ``pkg:`` (``pkg:maf2019_minute_totals.csv``), which
works from any directory and from an installed wheel; any other value is a path, relative to the
directory the command runs in. What ships and where it comes from: ``README.md`` here.
"""
from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
PREFIX = "pkg:"


def shipped() -> list[str]:
    """Names of the shipped data files (``pkg:NAME`` in configs)."""
    return sorted(p.name for p in DATA_DIR.iterdir() if p.suffix == ".csv")


def resolve_path(value, field: str = "path") -> str:
    """The file a config value names: ``pkg:NAME`` is a file shipped in ``bes_jax/data``, anything
    else a path (relative to the current directory). Raises FileNotFoundError naming the config
    field, its value and the current directory when there is no such file."""
    s = str(value)
    if s.startswith(PREFIX):
        name = s[len(PREFIX):]
        path = DATA_DIR / name
        if not name or "/" in name or "\\" in name or not path.is_file():
            raise FileNotFoundError(f"{field} = {s!r}: no shipped data file {name!r} "
                                    f"(shipped: {', '.join(PREFIX + n for n in shipped())})")
        return str(path)
    path = Path(s).expanduser()
    if not path.is_file():
        why = "is a directory, not a file" if path.is_dir() else "no such file"
        raise FileNotFoundError(
            f"{field} = {s!r}: {why} (relative paths are taken from the current directory, {Path.cwd()}). "
            f"Traces are passed by path, e.g. {field}=/path/to/AzureLLMInferenceTrace_code.csv; "
            f"shipped samples: {', '.join(PREFIX + n for n in shipped())}")
    return str(path)
