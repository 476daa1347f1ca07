"""Profiles: the latency table ``L[m, t, b]`` and quality table ``q[m, t]`` of one pool.

Profiles v2 add what continuous (iteration-level) batching needs (SPEC "Continuous batching"):
per model ``ctx_max``, ``kv_tokens`` (per replica) and the five-coefficient ``iteration``
model; a task's ``prompt_len`` / ``output_len`` may be a distribution (`bes_jax.lengths`).
They are optional, so request-level profiles stay valid; `Profile.require_continuous` names
what is missing when a continuous run needs it.

A profile is a JSON file (human-readable, diff-friendly). Loading validates every field and
raises :class:`ProfileError` naming the file, the field and the bad value, because a wrong
table silently skews every experiment built on it.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bes_jax import PROFILES_DIR
from bes_jax.lengths import LengthDist, LengthError, parse_length

#: the iteration model's coefficients, in the order of `Profile.iteration`'s columns
ITERATION_FIELDS = ("fixed_s", "per_seq_s", "weights_s", "per_kv_token_s", "per_token_s")

DEFAULT_PROFILE = "opt-a100-80gb"


class ProfileError(ValueError):
    """A profile file is malformed; the message names file, field and value."""

    def __init__(self, source: str, field_path: str, value: Any, problem: str):
        shown = repr(value)
        if len(shown) > 120:
            shown = shown[:117] + "..."
        super().__init__(f"{source}: field '{field_path}' = {shown}: {problem}")
        self.source, self.field, self.value, self.problem = source, field_path, value, problem


@dataclass(frozen=True)
class Task:
    name: str
    metric: str
    deadline_s: float
    prompt_len: int   # the distribution's mean, rounded: what the request-level tables use
    output_len: int
    prompt_dist: LengthDist = None  # None: fixed at prompt_len
    output_dist: LengthDist = None

    def __post_init__(self):
        if self.prompt_dist is None:
            object.__setattr__(self, "prompt_dist", parse_length(self.prompt_len, "prompt_len"))
        if self.output_dist is None:
            object.__setattr__(self, "output_dist", parse_length(self.output_len, "output_len"))


@dataclass(frozen=True)
class Model:
    name: str
    params: int
    ctx_max: int | None = None        # most tokens (prompt + output) of one sequence
    kv_tokens: int | None = None      # KV-cache budget of one replica, in tokens
    iteration: dict | None = None     # {ITERATION_FIELDS: seconds}: one iteration's time
    request_overhead_s: float = 0.0   # continuous batching: seconds the serving stack adds to each
                                      # request's first token and completion as its client sees them

    def to_dict(self) -> dict:
        d = {"name": self.name, "params": self.params}
        for k in ("ctx_max", "kv_tokens", "iteration"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        if self.request_overhead_s:
            d["request_overhead_s"] = self.request_overhead_s
        return d


@dataclass(frozen=True)
class Profile:
    """One pool on one kind of hardware. Tables are numpy arrays (float64)."""

    name: str
    hardware: dict
    models: tuple[Model, ...]
    tasks: tuple[Task, ...]
    b_max: int
    latency: np.ndarray  # [M, T, B_max] seconds for a whole batch of size b = index + 1
    quality: np.ndarray  # [M, T] in [0, 1]
    provenance: dict
    source: str = "<memory>"
    extra: dict = field(default_factory=dict)

    @property
    def model_names(self) -> list[str]:
        return [m.name for m in self.models]

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def deadlines(self) -> np.ndarray:
        return np.array([t.deadline_s for t in self.tasks], dtype=np.float64)

    @property
    def n_models(self) -> int:
        return len(self.models)

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    # ---------------------------------------------------------- continuous batching
    @property
    def supports_continuous(self) -> bool:
        return all(m.ctx_max is not None and m.kv_tokens is not None and m.iteration is not None
                   for m in self.models)

    def require_continuous(self) -> None:
        """Raise `ProfileError` naming the first field a continuous-batching run lacks."""
        for i, m in enumerate(self.models):
            for k in ("ctx_max", "kv_tokens", "iteration"):
                if getattr(m, k) is None:
                    raise ProfileError(self.source, f"models[{i}].{k}", None,
                                       "missing: continuous batching (sim.batching=continuous) needs "
                                       "ctx_max, kv_tokens and iteration for every model")

    @property
    def ctx_max(self) -> np.ndarray:
        """[M] int64 (requires `supports_continuous`)."""
        self.require_continuous()
        return np.array([m.ctx_max for m in self.models], np.int64)

    @property
    def kv_tokens(self) -> np.ndarray:
        """[M] int64 KV budget per replica (requires `supports_continuous`)."""
        self.require_continuous()
        return np.array([m.kv_tokens for m in self.models], np.int64)

    @property
    def iteration(self) -> np.ndarray:
        """[M, 5] float64, columns in `ITERATION_FIELDS` order (requires `supports_continuous`)."""
        self.require_continuous()
        return np.array([[m.iteration[k] for k in ITERATION_FIELDS] for m in self.models], np.float64)

    @property
    def request_overhead(self) -> np.ndarray:
        """[M] float64 seconds per request (0 where the profile gives none; docs/simulator.md
        "Per-request overhead")."""
        return np.array([m.request_overhead_s for m in self.models], np.float64)

    @property
    def mean_prompt_len(self) -> np.ndarray:
        """[T] stated mean prompt length per task (what a router may assume)."""
        return np.array([t.prompt_dist.mean for t in self.tasks], np.float64)

    @property
    def mean_output_len(self) -> np.ndarray:
        """[T] stated mean output length per task (what a router may assume)."""
        return np.array([t.output_dist.mean for t in self.tasks], np.float64)

    def model_index(self, name: str) -> int:
        names = self.model_names
        if name not in names:
            raise KeyError(f"unknown model {name!r}; profile {self.name!r} has {names}")
        return names.index(name)

    def task_index(self, name: str) -> int:
        names = self.task_names
        if name not in names:
            raise KeyError(f"unknown task {name!r}; profile {self.name!r} has {names}")
        return names.index(name)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "hardware": self.hardware,
            "models": [m.to_dict() for m in self.models],
            "tasks": [
                {"name": t.name, "metric": t.metric, "deadline_s": t.deadline_s,
                 "prompt_len": t.prompt_dist.to_json(), "output_len": t.output_dist.to_json()}
                for t in self.tasks
            ],
            "B_max": self.b_max,
            "latency_s": np.round(self.latency, 9).tolist(),
            "quality": np.round(self.quality, 6).tolist(),
            "provenance": self.provenance,
            **self.extra,
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    def identity(self) -> dict:
        """What an exported policy records to say which profile it was trained on."""
        return {"name": self.name, "hardware": self.hardware.get("name"),
                "models": self.model_names, "tasks": self.task_names, "B_max": self.b_max}


# ----------------------------------------------------------------------------- validation

def _req(d: dict, key: str, where: str, src: str):
    if not isinstance(d, dict):
        raise ProfileError(src, where or "<root>", d, "expected an object")
    if key not in d:
        raise ProfileError(src, f"{where}.{key}" if where else key, None, "missing required field")
    return d[key]


def _finite_number(x, src, path, positive=False, lo=None, hi=None) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ProfileError(src, path, x, "expected a number")
    v = float(x)
    if not math.isfinite(v):
        raise ProfileError(src, path, x, "must be finite")
    if positive and v <= 0:
        raise ProfileError(src, path, x, "must be > 0")
    if lo is not None and v < lo:
        raise ProfileError(src, path, x, f"must be >= {lo}")
    if hi is not None and v > hi:
        raise ProfileError(src, path, x, f"must be <= {hi}")
    return v


def _positive_int(x, src, path) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or x <= 0:
        raise ProfileError(src, path, x, "expected a positive integer")
    return x


def _name(x, src, path) -> str:
    if not isinstance(x, str) or not x.strip():
        raise ProfileError(src, path, x, "expected a non-empty string")
    return x


def _unique(names, src, path):
    seen = set()
    for i, n in enumerate(names):
        if n in seen:
            raise ProfileError(src, f"{path}[{i}].name", n, "duplicate name")
        seen.add(n)


def _length(x, src, path) -> LengthDist:
    try:
        return parse_length(x, path)
    except LengthError as e:
        # parse_length's message starts with the field path; re-raise as a ProfileError
        raise ProfileError(src, path, x, str(e)) from None


def _continuous_fields(m: dict, src: str, p: str):
    """``(ctx_max, kv_tokens, iteration, request_overhead_s)`` of a model entry (None when
    absent; the overhead 0)."""
    ctx = m.get("ctx_max")
    kv = m.get("kv_tokens")
    it = m.get("iteration")
    if ctx is not None:
        ctx = _positive_int(ctx, src, f"{p}.ctx_max")
    if kv is not None:
        kv = _positive_int(kv, src, f"{p}.kv_tokens")
    if it is not None:
        if not isinstance(it, dict):
            raise ProfileError(src, f"{p}.iteration", it, f"expected an object with {list(ITERATION_FIELDS)}")
        unknown = sorted(set(it) - set(ITERATION_FIELDS))
        if unknown:
            raise ProfileError(src, f"{p}.iteration.{unknown[0]}", it[unknown[0]],
                               f"unknown coefficient; known: {list(ITERATION_FIELDS)}")
        it = {k: _finite_number(_req(it, k, f"{p}.iteration", src), src, f"{p}.iteration.{k}", lo=0.0)
              for k in ITERATION_FIELDS}
        if it["fixed_s"] + it["per_seq_s"] + it["weights_s"] + it["per_kv_token_s"] + it["per_token_s"] <= 0:
            raise ProfileError(src, f"{p}.iteration", it, "all coefficients are 0: an iteration would take no time")
    ov = m.get("request_overhead_s", 0.0)
    ov = 0.0 if ov is None else _finite_number(ov, src, f"{p}.request_overhead_s", lo=0.0)
    return ctx, kv, it, ov


def profile_from_dict(d: dict, source: str = "<memory>") -> Profile:
    """Validate a parsed profile document and build a :class:`Profile`."""
    src = source
    if not isinstance(d, dict):
        raise ProfileError(src, "<root>", type(d).__name__, "expected a JSON object")
    name = _name(_req(d, "name", "", src), src, "name")
    hardware = _req(d, "hardware", "", src)
    if not isinstance(hardware, dict):
        raise ProfileError(src, "hardware", hardware, "expected an object")
    _name(_req(hardware, "name", "hardware", src), src, "hardware.name")

    models_raw = _req(d, "models", "", src)
    if not isinstance(models_raw, list) or not models_raw:
        raise ProfileError(src, "models", models_raw, "expected a non-empty list")
    models = []
    for i, m in enumerate(models_raw):
        p = f"models[{i}]"
        models.append(Model(_name(_req(m, "name", p, src), src, f"{p}.name"),
                            _positive_int(_req(m, "params", p, src), src, f"{p}.params"),
                            *_continuous_fields(m, src, p)))
    _unique([m.name for m in models], src, "models")

    tasks_raw = _req(d, "tasks", "", src)
    if not isinstance(tasks_raw, list) or not tasks_raw:
        raise ProfileError(src, "tasks", tasks_raw, "expected a non-empty list")
    tasks = []
    for i, t in enumerate(tasks_raw):
        p = f"tasks[{i}]"
        pd, od = (_length(_req(t, k, p, src), src, f"{p}.{k}") for k in ("prompt_len", "output_len"))
        tasks.append(Task(
            name=_name(_req(t, "name", p, src), src, f"{p}.name"),
            metric=_name(_req(t, "metric", p, src), src, f"{p}.metric"),
            deadline_s=_finite_number(_req(t, "deadline_s", p, src), src, f"{p}.deadline_s", positive=True),
            prompt_len=max(1, int(round(pd.mean))), output_len=max(1, int(round(od.mean))),
            prompt_dist=pd, output_dist=od,
        ))
    _unique([t.name for t in tasks], src, "tasks")
    # A KV budget below a task's mean reservation would reject most of that task's requests at
    # routing: almost surely a unit slip (bytes or GB for tokens), so it is an error. A budget
    # below ctx_max is fine (long requests are rejected; SPEC "Continuous batching").
    for i, m in enumerate(models):
        if m.kv_tokens is None:
            continue
        for t in tasks:
            need = t.prompt_dist.mean + t.output_dist.mean
            if m.kv_tokens < need:
                raise ProfileError(src, f"models[{i}].kv_tokens", m.kv_tokens,
                                   f"smaller than task {t.name!r}'s mean prompt + output ({need:g} tokens): "
                                   "most of its requests could never be admitted; kv_tokens counts tokens, not bytes")

    b_max = _positive_int(_req(d, "B_max", "", src), src, "B_max")
    M, T = len(models), len(tasks)

    lat_raw = _req(d, "latency_s", "", src)
    if not isinstance(lat_raw, list) or len(lat_raw) != M:
        raise ProfileError(src, "latency_s", f"<{type(lat_raw).__name__} of len {len(lat_raw) if isinstance(lat_raw, list) else '-'}>",
                           f"expected a list of {M} models x {T} tasks x {b_max} batch sizes")
    lat = np.zeros((M, T, b_max))
    for mi, per_task in enumerate(lat_raw):
        if not isinstance(per_task, list) or len(per_task) != T:
            raise ProfileError(src, f"latency_s[{mi}]", per_task, f"expected {T} task rows")
        for ti, row in enumerate(per_task):
            path = f"latency_s[{mi}][{ti}]"
            if not isinstance(row, list) or len(row) != b_max:
                raise ProfileError(src, path, row, f"expected {b_max} values (batch 1..B_max)")
            for bi, v in enumerate(row):
                lat[mi, ti, bi] = _finite_number(v, src, f"{path}[{bi}]", positive=True)
            dec = np.nonzero(np.diff(lat[mi, ti]) < 0)[0]
            if dec.size:
                bi = int(dec[0]) + 1
                raise ProfileError(src, f"{path}[{bi}]", row[bi],
                                   f"latency must be non-decreasing in batch size (batch {bi} took {row[bi - 1]})")

    q_raw = _req(d, "quality", "", src)
    if not isinstance(q_raw, list) or len(q_raw) != M:
        raise ProfileError(src, "quality", q_raw, f"expected {M} rows (one per model) of {T} values")
    qual = np.zeros((M, T))
    for mi, row in enumerate(q_raw):
        if not isinstance(row, list) or len(row) != T:
            raise ProfileError(src, f"quality[{mi}]", row, f"expected {T} values (one per task)")
        for ti, v in enumerate(row):
            qual[mi, ti] = _finite_number(v, src, f"quality[{mi}][{ti}]", lo=0.0, hi=1.0)

    prov = _req(d, "provenance", "", src)
    if not isinstance(prov, dict) or not prov:
        raise ProfileError(src, "provenance", prov, "expected a non-empty object saying where each number came from")
    for key in ("latency", "quality"):
        if key not in prov:
            raise ProfileError(src, f"provenance.{key}", None, "missing: say where these numbers came from")
    known = {"name", "hardware", "models", "tasks", "B_max", "latency_s", "quality", "provenance"}
    extra = {k: v for k, v in d.items() if k not in known}
    return Profile(name, hardware, tuple(models), tuple(tasks), b_max, lat, qual, prov, src, extra)


def resolve_profile_path(name_or_path: str | Path) -> Path:
    """A bare name means the shipped ``bes_jax/profiles/<name>.json``; anything else is a path."""
    p = Path(name_or_path)
    if p.suffix == ".json" or p.exists() or len(p.parts) > 1:
        return p
    return PROFILES_DIR / f"{name_or_path}.json"


def load_profile(name_or_path: str | Path = DEFAULT_PROFILE) -> Profile:
    path = resolve_profile_path(name_or_path)
    src = str(path)
    if not path.exists():
        avail = sorted(q.stem for q in PROFILES_DIR.glob("*.json"))
        raise ProfileError(src, "<file>", str(name_or_path), f"no such profile file (known profiles: {avail})")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ProfileError(src, f"<line {e.lineno}, column {e.colno}>", e.msg, "not valid JSON") from None
    return profile_from_dict(doc, src)
