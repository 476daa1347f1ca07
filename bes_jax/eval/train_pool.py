"""Train router sets in worker processes while the caller evaluates.

One training or one evaluation is one XLA program, and on a CPU XLA gets little from a second
core for one program (docs/benchmarks.md). A study that trains many router sets (one per
config variant) and evaluates many routers keeps every core busy by training in separate
processes, each with its own JAX, while the calling process evaluates what is already trained
(and, when it has nothing to evaluate, trains the queued sets no worker has started).

A set trained in a worker is the same as one trained in the calling process: the same config,
seeds and program, so the same numbers (tests/test_train_pool.py checks it bit for bit).
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor


def default_jobs() -> int:
    """Worker processes for a CPU run: one per usable core beyond the first (the caller evaluates
    on that one), at least one, at most two. More processes than cores only share them, and each
    JAX process runs its own compute threads: three on two cores ran an ES training ~4x slower
    than one alone (docs/results.md "Notes on the paper experiments")."""
    from bes_jax.env.devices import usable_cores

    return max(1, min(2, usable_cores() - 1))


def train_params(overrides, seeds, label: str = ""):
    """Worker entry point: train the `bes-train` config with `overrides` for every seed and
    return the stacked ``(params, obs_stats)`` as host arrays (picklable)."""
    import jax

    from bes_jax.agents.training import setup_training, train_seeds
    from bes_jax.config import compose_train_config

    setup = setup_training(compose_train_config(list(overrides)))
    prefix = f"[train {label}] " if label else ""
    ts, _ = train_seeds(setup["fns"], [int(s) for s in seeds], log=lambda m: print(prefix + m, flush=True))
    return jax.device_get((ts.params, ts.obs_stats))


class TrainingPool:
    """Router sets keyed by their `bes-train` overrides, trained for `seeds`.

    ``submit(overrides)`` queues a training (once per distinct override list); ``get(overrides)``
    returns ``(setup, TrainedRouters)``, waiting for the worker (or, with ``jobs=0``, training
    in this process). While it waits, the calling process trains the queued sets no worker has
    started, so no core idles while sets are left. Use as a context manager so the workers stop
    with the caller.
    """

    def __init__(self, seeds, jobs: int = 0):
        if int(jobs) < 0:
            raise ValueError(f"training jobs = {jobs!r}: need >= 0 (0 trains in the calling process)")
        self.seeds = [int(s) for s in seeds]
        if not self.seeds:
            raise ValueError("seeds = []: need at least one training seed")
        self.jobs = int(jobs)
        self._futures = {}
        self._labels = {}
        self._here = {}  # sets this process trained itself while it waited (`get`)
        self._ex = (ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context("spawn"))
                    if self.jobs > 0 else None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._ex is not None:
            self._ex.shutdown(wait=True, cancel_futures=True)
            self._ex = None

    @property
    def trained_here(self) -> list:
        """The override lists of the sets the calling process trained itself while it waited."""
        return [list(k) for k in self._here]

    @staticmethod
    def _key(overrides) -> tuple:
        return tuple(str(o) for o in overrides)

    def submit(self, overrides, label: str = "") -> None:
        """Queue the training of `overrides` (nothing if already queued, or with ``jobs=0``);
        the worker's progress lines start with `label`."""
        key = self._key(overrides)
        if self._ex is not None and key not in self._futures and key not in self._here:
            self._labels[key] = label
            self._futures[key] = self._ex.submit(train_params, list(key), self.seeds, label)

    def _take_queued(self, first):
        """A queued set no worker has started, taken back from the workers (`first` if it is
        one, else the one queued last): its key, or None when every set has started."""
        order = [first] + [k for k in reversed(list(self._futures)) if k != first]
        for k in order:
            f = self._futures.get(k)
            if f is not None and f.cancel():
                del self._futures[k]
                return k
        return None

    def get(self, overrides, name: str = "learned"):
        """``(setup, routers)`` for `overrides`: `setup_training`'s dict (built here, cheap) and
        the trained routers, one per seed."""
        from bes_jax.agents.training import setup_training
        from bes_jax.config import compose_train_config
        from bes_jax.eval.experiments import routers_from_params, train_routers

        key = self._key(overrides)
        cfg = compose_train_config(list(key))
        if self._ex is None:
            return train_routers(cfg, self.seeds, name)
        self.submit(key)
        # rather than wait idle for a worker, this process trains queued sets no worker has
        # started (this one first if it is queued; else the one queued last, which the workers
        # would reach last): the same function and program as a worker's, so the same numbers
        while key not in self._here and not self._futures[key].done():
            taken = self._take_queued(key)
            if taken is None:
                break
            label = self._labels.get(taken) or "set"
            self._here[taken] = train_params(list(taken), self.seeds, f"{label} (here)")
        setup = setup_training(cfg)
        params, obs_stats = self._here[key] if key in self._here else self._futures[key].result()
        return setup, routers_from_params(setup, params, obs_stats, name)
