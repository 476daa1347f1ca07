"""A model in its own process (``pool.executor: process``).

Batches run outside the serving interpreter, so the HTTP event loop and the model's
Python-heavy decode loop never compete for one GIL (docs/serving.md, validation). The process
is ``python -m bes_jax.serving.runner`` talking over two pipes: nothing re-imports the
caller's ``__main__``, and this module imports no serving state, so the child starts cheaply.
"""
from __future__ import annotations

import os
import time

from bes_jax.serving.decode import greedy_decode
from bes_jax.serving.models import load_model


def child_main(rx, tx) -> None:
    """A model process: receives ``(load_args, num_threads)``, loads the model, then runs
    ``(prompts, n_out)`` batches until ``None`` or end of input."""
    import torch
    load_args, num_threads = rx.recv()
    torch.set_num_threads(max(1, int(num_threads)))
    try:
        model = load_model(*load_args)
        dev = load_args[4]
        tx.send(("ready", None))
    except Exception as e:  # reported to the parent, which refuses to start
        tx.send(("err", f"{type(e).__name__}: {e}"))
        return
    while True:
        try:
            msg = rx.recv()
        except EOFError:
            return
        if msg is None:
            return
        prompts, n_out = msg
        try:
            t0 = time.perf_counter()
            toks = greedy_decode(model, prompts, n_out, dev)
            tx.send(("ok", (toks, time.perf_counter() - t0)))
        except Exception as e:
            tx.send(("err", f"{type(e).__name__}: {e}"))


class ChildRunner:
    """The parent's end of one model process (one per replica)."""

    def __init__(self, load_args: tuple, num_threads: int):
        import subprocess
        import sys
        from multiprocessing.connection import Connection
        c_r, p_w = os.pipe()  # parent -> child
        p_r, c_w = os.pipe()  # child -> parent
        self.proc = subprocess.Popen([sys.executable, "-m", "bes_jax.serving.runner", str(c_r), str(c_w)],
                                     pass_fds=(c_r, c_w))
        os.close(c_r)
        os.close(c_w)
        self.tx, self.rx = Connection(p_w, readable=False), Connection(p_r, writable=False)
        self.tx.send((load_args, num_threads))

    def wait_ready(self, timeout: float = 300.0) -> None:
        if not self.rx.poll(timeout):
            raise RuntimeError("model process did not start in time")
        kind, info = self.rx.recv()
        if kind != "ready":
            raise RuntimeError(f"model process failed to load: {info}")

    def run(self, prompts, n_out: int):
        """Tokens of the batch; ``self.last_compute`` is the decode time inside the process."""
        self.tx.send(([list(p) for p in prompts], int(n_out)))
        kind, val = self.rx.recv()  # EOFError if the process died
        if kind != "ok":
            raise RuntimeError(f"model process: {val}")
        toks, self.last_compute = val
        return toks

    def close(self) -> None:
        try:
            self.tx.send(None)
        except OSError:
            pass
        try:
            self.proc.wait(5)
        except Exception:
            self.proc.kill()
        self.tx.close()
        self.rx.close()


if __name__ == "__main__":
    import sys
    from multiprocessing.connection import Connection
    child_main(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
