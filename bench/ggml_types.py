"""GGUF round trips: seconds per candidate for one weight, side by side with int4_g128 in one run.

The k-quants run bitplan's numpy port of ggml's reference quantizers, the legacy types the gguf
package's own numpy code; an analysis calls one round trip per layer × candidate, so this is the
share GGUF candidates add to its "quantize" phase. Ratios are what to compare across machines.

    .venv/bin/python bench/ggml_types.py [--rows 4096] [--cols 4096] [--repeat 1]

Target: every GGUF type within 20x of int4_g128's time (a 7B model's 4096x4096 projections then
quantize in minutes, not hours, per candidate on one core).
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    import torch

    from workers.quantizers import parse_candidate

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    torch.manual_seed(0)
    weight = torch.randn(args.rows, args.cols) * 0.02
    names = ["int4_g128", "gguf_q2_k", "gguf_q3_k", "gguf_q4_k", "gguf_q5_k", "gguf_q6_k", "gguf_q8_0", "gguf_q4_0",
             "gguf_q5_0", "gguf_mxfp4"]
    seconds = {}
    for name in names:
        q = parse_candidate(name)
        best = float("inf")
        for _ in range(args.repeat):
            started = time.perf_counter()
            out = q.quantize(weight)
            best = min(best, time.perf_counter() - started)
        seconds[name] = best
        err = float((out - weight).pow(2).sum() / weight.pow(2).sum())
        print(f"{name:11s} {best:7.2f} s  {seconds[name] / seconds['int4_g128']:5.1f}x int4_g128"
              f"  bits/weight {q.bits_per_weight(weight.shape):.4f}  relative error {err:.5f}")
    worst = max(v / seconds["int4_g128"] for k, v in seconds.items() if k != "int4_g128")
    print(f"slowest GGUF type: {worst:.1f}x int4_g128 (target: within 20x)")


if __name__ == "__main__":
    main()
