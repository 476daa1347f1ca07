"""Analytic latency model of batched OPT generation and its iteration-level view (see
docs/latency_model.md)."""
from bes_jax.latency.iteration import (fit_iteration, iteration_coefficients, kv_tokens, static_batch_latency,
                                       static_batch_schedule)
from bes_jax.latency.model import ARCHS, CALIBRATED, GPUS, GPU, Arch, Constants, calibrate, errors, load_rows, predict

__all__ = ["ARCHS", "CALIBRATED", "GPUS", "GPU", "Arch", "Constants", "calibrate", "errors", "load_rows", "predict",
           "fit_iteration", "iteration_coefficients", "kv_tokens", "static_batch_latency", "static_batch_schedule"]
