"""`bes-latency`: predicted end-to-end batch latency of an OPT model on a GPU (last line, s)."""
from __future__ import annotations

import argparse
import sys

from bes_jax.latency.model import ARCHS, CALIBRATED, GPUS, _terms, load_gpus, predict


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bes-latency", description=__doc__)
    ap.add_argument("--model", required=True, help=f"one of {sorted(ARCHS)}")
    ap.add_argument("--gpu", required=True, help=f"one of {sorted(GPUS)} or a name from --gpu-file")
    ap.add_argument("--gpu-file", help="YAML with extra GPUs: name: {bandwidth_gbps, peak_tflops}")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=8)
    args = ap.parse_args(argv)
    gpus = dict(GPUS)
    if args.gpu_file:
        try:
            gpus.update(load_gpus(args.gpu_file))
        except (OSError, ValueError) as e:
            print(f"bes-latency: error: {e}", file=sys.stderr)
            return 2
    if args.model not in ARCHS:
        print(f"bes-latency: error: unknown model {args.model!r}; known: {sorted(ARCHS)}", file=sys.stderr)
        return 2
    if args.gpu not in gpus:
        print(f"bes-latency: error: unknown gpu {args.gpu!r}; known: {sorted(gpus)} (add one with --gpu-file)", file=sys.stderr)
        return 2
    try:
        total = predict(args.model, gpus[args.gpu], args.batch, args.prompt_len, args.output_len)
    except ValueError as e:
        print(f"bes-latency: error: {e}", file=sys.stderr)
        return 2
    roof, feats = _terms(ARCHS[args.model], gpus[args.gpu], CALIBRATED, args.batch, args.prompt_len, args.output_len)
    print(f"{args.model} on {args.gpu}: batch {args.batch}, prompt {args.prompt_len}, output {args.output_len} tokens")
    print(f"  weights/matmuls (roofline)  {roof:.6f} s")
    print(f"  KV-cache reads              {feats[0] * CALIBRATED.kv_cost:.6f} s")
    print(f"  fixed overheads             {feats[1] * CALIBRATED.layer_s + feats[2] * CALIBRATED.step_s + feats[3] * CALIBRATED.seq_layer_s:.6f} s")
    print(f"{total:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
