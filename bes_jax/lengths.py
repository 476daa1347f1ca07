"""Token-length distributions of a task's prompt and output (profile field ``prompt_len`` /
``output_len``), parsed once on the host and drawn inside `jit`.

A length is a number (every request has it) or an object naming a distribution with stated
parameters, so a profile says exactly what synthetic workloads draw:

- ``{"dist": "fixed", "value": n}``
- ``{"dist": "uniform", "min": a, "max": b}`` (integers a..b, each equally likely)
- ``{"dist": "lognormal", "mean": m, "cv": c, "min": a, "max": b}``: a log-normal with that mean
  and coefficient of variation, rounded to the nearest integer and clipped to [a, b]
  (``min`` defaults to 1, ``max`` to 1,000,000)

Every draw is an integer >= 1. ``mean`` is the stated mean (the uniform's midpoint, the
log-normal's ``mean`` before rounding and clipping): what a router may assume for a task.

Importing this module does not import JAX (profiles are read by the JAX-free serving path);
the jittable parts import it when called.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

FIXED, UNIFORM, LOGNORMAL = 0, 1, 2
KINDS = {"fixed": FIXED, "uniform": UNIFORM, "lognormal": LOGNORMAL}
MAX_LEN = 1_000_000


class LengthError(ValueError):
    """A length distribution is malformed; the message names where, the field and the value."""


@dataclass(frozen=True)
class LengthDist:
    kind: int
    a: float   # fixed: value; uniform: min; lognormal: mean
    b: float   # fixed: value; uniform: max; lognormal: cv
    lo: int
    hi: int

    @property
    def mean(self) -> float:
        if self.kind == FIXED:
            return float(self.a)
        if self.kind == UNIFORM:
            return 0.5 * (self.a + self.b)
        return float(self.a)

    def to_json(self):
        if self.kind == FIXED:
            return int(self.a)
        if self.kind == UNIFORM:
            return {"dist": "uniform", "min": int(self.a), "max": int(self.b)}
        return {"dist": "lognormal", "mean": self.a, "cv": self.b, "min": self.lo, "max": self.hi}


def _int(x, where, name, lo=1) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or float(x) != int(x) or int(x) < lo:
        raise LengthError(f"{where}.{name} = {x!r}: expected an integer >= {lo}" if name else
                          f"{where} = {x!r}: expected an integer >= {lo}")
    return int(x)


def _num(x, where, name) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x <= 0:
        raise LengthError(f"{where}.{name} = {x!r}: expected a finite number > 0")
    return float(x)


def parse_length(x: Any, where: str) -> LengthDist:
    """A number or a distribution object (module doc) -> `LengthDist`; ``where`` names the
    field in errors (e.g. ``"profile.json: tasks[0].output_len"``)."""
    if not isinstance(x, dict):
        v = _int(x, where, "")
        return LengthDist(FIXED, float(v), float(v), v, v)
    kind = x.get("dist")
    if kind not in KINDS:
        raise LengthError(f"{where}.dist = {kind!r}: expected one of {sorted(KINDS)}")
    allowed = {"fixed": {"dist", "value"}, "uniform": {"dist", "min", "max"},
               "lognormal": {"dist", "mean", "cv", "min", "max"}}[kind]
    unknown = sorted(set(x) - allowed)
    if unknown:
        raise LengthError(f"{where}: unknown field(s) {unknown} for dist {kind!r}; allowed: {sorted(allowed)}")
    if kind == "fixed":
        v = _int(x.get("value"), where, "value")
        return LengthDist(FIXED, float(v), float(v), v, v)
    if kind == "uniform":
        lo, hi = _int(x.get("min"), where, "min"), _int(x.get("max"), where, "max")
        if hi < lo:
            raise LengthError(f"{where}.max = {hi}: must be >= min ({lo})")
        return LengthDist(UNIFORM, float(lo), float(hi), lo, hi)
    mean, cv = _num(x.get("mean"), where, "mean"), _num(x.get("cv"), where, "cv")
    lo = _int(x.get("min", 1), where, "min")
    hi = _int(x.get("max", MAX_LEN), where, "max")
    if hi < lo:
        raise LengthError(f"{where}.max = {hi}: must be >= min ({lo})")
    return LengthDist(LOGNORMAL, mean, cv, lo, hi)


class LengthArrays(NamedTuple):
    """Per-task distributions as arrays ``[T]`` (one for prompts, one for outputs); a pytree."""

    kind: Any  # int32
    a: Any
    b: Any
    lo: Any
    hi: Any
    mean: Any


def length_arrays(dists) -> LengthArrays:
    import jax.numpy as jnp

    f = jnp.result_type(float)
    return LengthArrays(
        kind=jnp.asarray([d.kind for d in dists], jnp.int32), a=jnp.asarray([d.a for d in dists], f),
        b=jnp.asarray([d.b for d in dists], f), lo=jnp.asarray([d.lo for d in dists], f),
        hi=jnp.asarray([d.hi for d in dists], f), mean=jnp.asarray([d.mean for d in dists], f))


def draw_length(key, task, la: LengthArrays):
    """One length (int32 >= 1) for a request of ``task``: jittable, fixed cost, vmappable."""
    import jax
    import jax.numpy as jnp

    f = la.a.dtype
    k_u, k_n = jax.random.split(key)
    kind, a, b, lo, hi = la.kind[task], la.a[task], la.b[task], la.lo[task], la.hi[task]
    u = jax.random.uniform(k_u, (), f)
    uniform = jnp.floor(a + u * (b - a + 1.0))
    sigma2 = jnp.log1p(b * b)
    mu = jnp.log(a) - 0.5 * sigma2
    lognormal = jnp.round(jnp.exp(mu + jnp.sqrt(sigma2) * jax.random.normal(k_n, (), f)))
    x = jnp.where(kind == FIXED, a, jnp.where(kind == UNIFORM, uniform, lognormal))
    return jnp.clip(x, jnp.maximum(lo, 1.0), hi).astype(jnp.int32)


def draw_length_np(rng: np.random.Generator, d: LengthDist, size=None):
    """Host twin of `draw_length` (same distribution, not the same stream): for scripts."""
    if d.kind == FIXED:
        x = np.full(size, d.a) if size is not None else d.a
    elif d.kind == UNIFORM:
        x = rng.integers(int(d.a), int(d.b) + 1, size)
    else:
        s2 = math.log1p(d.b * d.b)
        x = np.round(np.exp(math.log(d.a) - 0.5 * s2 + math.sqrt(s2) * rng.standard_normal(size)))
    return np.clip(x, max(d.lo, 1), d.hi).astype(np.int64)
