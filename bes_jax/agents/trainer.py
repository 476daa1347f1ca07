"""Host loop around the jitted learner: chunks, progress, orbax checkpoints, resume.

Stoix style: the device runs `train_chunk` (a `lax.scan` over iterations); between chunks the
host prints progress, evaluates, and saves the whole `TrainState` (networks, optimiser,
replay, environments, RNG key). Rerunning in the same directory resumes from the latest
checkpoint and, the chunk function being deterministic, ends with the same policy as an
uninterrupted run with the same seed.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import logging

import jax
import numpy as np
import orbax.checkpoint as ocp

# orbax logs every save step at INFO through absl; progress lines are ours to print.
logging.getLogger("absl").setLevel(logging.WARNING)


class CheckpointError(RuntimeError):
    """A checkpoint directory cannot be restored into the current configuration."""


def _manager(ckpt_dir: Path, keep: int) -> ocp.CheckpointManager:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    return ocp.CheckpointManager(ckpt_dir.resolve(), options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def run_training(init: Callable, train_chunk: Callable, n_chunks: int, key, ckpt_dir: Path, *,
                 fingerprint: dict, on_chunk: Callable | None = None, keep: int = 2, log=print):
    """Train for `n_chunks` chunks, resuming from `ckpt_dir` when it holds a checkpoint.

    ``fingerprint`` (the config that shapes the run) is stored beside the checkpoints; a
    resume with a different fingerprint is refused rather than silently mixing runs.
    ``on_chunk(chunk_index, ts, logs, seconds)`` is called after every chunk (progress/eval).
    Returns the final TrainState and the list of per-chunk records.
    """
    ckpt_dir = Path(ckpt_dir)
    fp_file = ckpt_dir / "fingerprint.json"
    mngr = _manager(ckpt_dir, keep)
    init_j = jax.jit(init)
    chunk_j = jax.jit(train_chunk)
    history_file = ckpt_dir / "history.json"
    latest = mngr.latest_step()
    if latest is not None:
        if fp_file.exists() and json.loads(fp_file.read_text()) != json.loads(json.dumps(fingerprint, default=str)):
            raise CheckpointError(f"{fp_file}: field 'fingerprint' differs from this run's config; use another "
                                  "output directory (hydra.run.dir=...) or delete the checkpoints")
        abstract = jax.eval_shape(init_j, key)
        try:
            ts = mngr.restore(latest, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # noqa: BLE001 - orbax raises many types
            raise CheckpointError(f"{ckpt_dir}/{latest}: cannot restore checkpoint ({type(e).__name__}: {e})") from e
        history = json.loads(history_file.read_text()) if history_file.exists() else []
        history = [h for h in history if h["chunk"] < latest]
        start = latest
        log(f"resuming from checkpoint {ckpt_dir}/{latest} (chunk {latest}/{n_chunks})")
    else:
        fp_file.write_text(json.dumps(fingerprint, indent=1, default=str) + "\n")
        ts = init_j(key)
        history, start = [], 0
    for c in range(start, n_chunks):
        t0 = time.perf_counter()
        ts, logs = chunk_j(ts)
        jax.block_until_ready(ts)
        seconds = time.perf_counter() - t0
        record = {"chunk": c, "seconds": seconds,
                  **{k: float(np.nanmean(np.asarray(v))) if np.isfinite(np.asarray(v)).any() else float("nan")
                     for k, v in logs.items()}}
        if on_chunk is not None:
            record.update(on_chunk(c, ts, logs, seconds) or {})
        history.append(record)
        mngr.save(c + 1, args=ocp.args.StandardSave(ts))
        mngr.wait_until_finished()
        history_file.write_text(json.dumps(history, indent=1) + "\n")
    mngr.close()
    return ts, history
