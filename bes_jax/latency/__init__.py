"""Analytic latency model of batched OPT generation (see docs/latency_model.md)."""
from bes_jax.latency.model import ARCHS, CALIBRATED, GPUS, GPU, Arch, Constants, calibrate, errors, load_rows, predict

__all__ = ["ARCHS", "CALIBRATED", "GPUS", "GPU", "Arch", "Constants", "calibrate", "errors", "load_rows", "predict"]
