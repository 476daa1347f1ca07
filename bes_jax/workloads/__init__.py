"""Workloads: arrival processes usable inside `jit`, and loaders for real traces."""
from bes_jax.workloads.builders import gamma, maf, poisson, sample_arrivals, schedule, stack_workloads, trace
from bes_jax.workloads.generators import workload_init, workload_next
from bes_jax.workloads.params import WorkloadParams, WorkloadState
from bes_jax.workloads.traces import (TraceError, load_azure_llm_trace, load_maf_minute_counts,
                                      load_timestamp_csv, load_trace_times)

__all__ = ["WorkloadParams", "WorkloadState", "workload_init", "workload_next", "poisson", "gamma", "schedule",
           "maf", "trace", "stack_workloads", "sample_arrivals", "TraceError", "load_azure_llm_trace",
           "load_maf_minute_counts", "load_timestamp_csv", "load_trace_times"]
