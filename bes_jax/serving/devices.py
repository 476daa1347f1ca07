"""Devices and threads: which torch device a replica uses and what the hardware is called.

Apart from the pool because the profiler names the hardware in a profile's provenance and sets
threads the same way. On a CPU every "device" is the same cores: ``torch.set_num_threads`` is
set once per process and replicas that run at the same time share (and slow down) those cores.
"""
from __future__ import annotations

import os


def pick_device(device: str = "auto") -> str:
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def torch_device(device: str, device_index: int) -> str:
    """The torch device of pool device ``device_index``: ``cuda:<i>`` round robin over the visible
    GPUs when ``device`` is plain ``cuda``, else ``device`` itself (every CPU device is the CPU)."""
    import torch
    if device == "cuda":
        return f"cuda:{device_index % max(1, torch.cuda.device_count())}"
    return device


def setup_threads(num_threads: int = 0) -> int:
    """CPU threads for torch ops; 0 = all cores. Every worker shares them (one process)."""
    import torch
    n = int(num_threads) if num_threads and num_threads > 0 else (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine() or "unknown CPU"


def hardware_name(device: str) -> str:
    import torch
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return f"{cpu_name()} ({torch.get_num_threads()} threads)"
