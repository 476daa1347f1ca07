"""Workloads: arrival processes usable inside `jit`, and loaders for real traces."""
from bes_jax.workloads.builders import (gamma, maf, maf_rates, poisson, sample_arrivals, sample_workload_family,
                                        schedule, stack_workloads, trace, with_task_mix)
from bes_jax.workloads.generators import (gamma_unit_mean, workload_init, workload_init_request, workload_next,
                                          workload_next_request, workload_restart)
from bes_jax.workloads.params import SCHEDULE, TRACE, WorkloadParams, WorkloadState
from bes_jax.workloads.traces import (FORMATS, TraceError, load_azure_llm_trace, load_maf_minute_counts,
                                      load_mooncake_trace, load_timestamp_csv, load_token_csv, load_trace_requests,
                                      load_trace_times)

__all__ = ["WorkloadParams", "WorkloadState", "SCHEDULE", "TRACE", "workload_init", "workload_next",
           "workload_init_request", "workload_next_request",
           "workload_restart", "gamma_unit_mean", "poisson", "gamma", "schedule", "maf", "maf_rates", "trace",
           "with_task_mix", "stack_workloads", "sample_workload_family", "sample_arrivals", "TraceError",
           "load_azure_llm_trace", "load_maf_minute_counts", "load_timestamp_csv", "load_trace_times",
           "load_mooncake_trace", "load_token_csv", "load_trace_requests", "FORMATS"]
