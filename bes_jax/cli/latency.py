"""bes-latency: predicted end-to-end latency of one generation batch of an OPT/GPT model on a GPU.

Prints a per-component breakdown, the model's continuous-batching iteration coefficients and the
same batch run through them; the LAST line is the predicted batch latency in seconds (just the
number), so scripts can read it with `tail -n 1`. Model: docs/latency_model.md.
"""
from __future__ import annotations

import argparse
import sys

from bes_jax import CONF_DIR
from bes_jax.latency.iteration import iteration_coefficients, static_batch_latency
from bes_jax.latency.model import ARCHS, CALIBRATED, GPU, GPUS, breakdown, load_gpus
from bes_jax.profile import ITERATION_FIELDS

DEFAULT_GPU_FILE = CONF_DIR / "gpus.yaml"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bes-latency", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help=f"one of: {', '.join(ARCHS)}")
    ap.add_argument("--gpu", default=None,
                    help=f"one of: {', '.join(GPUS)}, or a name from --gpu-file (default a100-80gb)")
    ap.add_argument("--gpu-file", default=None,
                    help="YAML of extra GPUs, name: {bandwidth_gbps: N, peak_tflops: N} "
                         "(default: the shipped bes_jax/conf/gpus.yaml)")
    ap.add_argument("--bandwidth-gbps", type=float, default=None, help="custom GPU: memory bandwidth, GB/s")
    ap.add_argument("--peak-tflops", type=float, default=None, help="custom GPU: dense fp16 TFLOP/s")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=8)
    return ap


def _fail(msg: str) -> int:
    print(f"bes-latency: error: {msg}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.model not in ARCHS:
        return _fail(f"unknown model {args.model!r}; known models: {', '.join(ARCHS)}")

    if (args.bandwidth_gbps is None) != (args.peak_tflops is None):
        return _fail("--bandwidth-gbps and --peak-tflops go together")
    if args.bandwidth_gbps is not None:
        if not (args.bandwidth_gbps > 0 and args.peak_tflops > 0):
            return _fail(f"--bandwidth-gbps {args.bandwidth_gbps} and --peak-tflops {args.peak_tflops} must be > 0")
        gpu = GPU(args.gpu or "custom", args.bandwidth_gbps * 1e9, args.peak_tflops * 1e12)
    else:
        known = dict(GPUS)
        gpu_file = args.gpu_file or (DEFAULT_GPU_FILE if DEFAULT_GPU_FILE.exists() else None)
        if gpu_file is not None:
            try:
                known.update(load_gpus(gpu_file))
            except (OSError, ValueError) as e:
                return _fail(str(e))
        name = args.gpu or "a100-80gb"
        if name not in known:
            return _fail(f"unknown gpu {name!r}; known gpus: {', '.join(known)} "
                         "(add one with --gpu-file or --bandwidth-gbps/--peak-tflops)")
        gpu = known[name]

    try:
        parts = breakdown(args.model, gpu, args.batch, args.prompt_len, args.output_len, CALIBRATED)
    except ValueError as e:
        return _fail(str(e))
    total = sum(parts.values())
    print(f"{args.model} on {gpu.name} ({gpu.bandwidth / 1e9:g} GB/s, {gpu.peak_flops / 1e12:g} TFLOP/s): "
          f"batch {args.batch}, prompt {args.prompt_len}, output {args.output_len} tokens")
    for k, v in parts.items():
        print(f"  {k:<24s} {v * 1e3:10.3f} ms  {v / total:6.1%}")
    print(f"  {'per generated token':<24s} {total / args.output_len * 1e3:10.3f} ms")
    coef = iteration_coefficients(args.model, gpu, CALIBRATED)
    print("iteration (continuous batching): " + ", ".join(f"{k} {coef[k] * 1e6:.4g} us" for k in ITERATION_FIELDS)
          + f"; KV {ARCHS[args.model].kv_bytes_per_token:,} B/token")
    print(f"  {'same batch via iterations':<24s} "
          f"{static_batch_latency(coef, args.batch, args.prompt_len, args.output_len) * 1e3:10.3f} ms")
    print(f"{total:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
