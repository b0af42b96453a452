"""Cost of the input_covariance metric on a real causal LM, against one forward pass over the same
calibration set, printed side by side in one run (issue 15's target: ≤ 2× one forward).

    .venv/bin/python bench/input_covariance.py [--windows 64] [--length 128] [--threads 2]

Model: SmolLM2-135M (bench/real_models.py; `bash bench/setup_models.sh`). Calibration: `--windows`
× `--length` tokens of bench/texts.py's calibration documents (the job's text defaults are 64 ×
128). Rows: one no-grad forward over the calibration set; then the metric's own pass (`measure`: its
statistics and damages for 5 candidates int2…int8, rounding included; not the rest of the
analysis) with the whole-model pass and with the block-by-block pass, unweighted and
Fisher-weighted.
Printed per row: wall and CPU seconds, the ratio to the forward (CPU seconds: the 2 cores are
shared with other work, CPU time is steadier), peak resident memory above the loaded model, the
statistics' size (all of them / resident at once) and the largest relative difference of the
damages from the first row of the same weighting.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench.sensitivity import PeakRss  # noqa: E402

CANDIDATES = ["int2", "int3", "int4", "int6", "int8"]


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    with PeakRss() as rss:
        result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu, rss.extra_mib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", default="none/whole,none/blocks,fisher/blocks",
                        help="weighting/streaming pairs to run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from bench.real_models import prepare_smollm2, smollm2_tokenizer
    from bench.texts import documents, token_windows
    from workers.data import Calibration
    from workers.metrics import MetricContext, get_metric
    from workers.models import find_layers, load_model
    from workers.quantizers import parse_candidates

    prep = prepare_smollm2(eval_windows=4, eval_length=args.length)
    model = load_model(prep.source)
    cal_docs, _ = documents()
    ids = token_windows(smollm2_tokenizer(), cal_docs, args.windows, args.length)
    calibration = Calibration(ids, None, args.batch_size, token_ids=True)
    params = sum(p.numel() for p in model.parameters())
    print(f"# {prep.title}: {params / 1e6:.1f} M parameters; calibration {args.windows} × {args.length} tokens,"
          f" batch {args.batch_size}, {args.threads} threads")

    def one_forward():
        with torch.no_grad():
            for x, _ in calibration.batches():
                model(x)

    one_forward()  # warm the allocator and kernels before anything is timed
    _, fwd_wall, fwd_cpu, fwd_mib = timed(one_forward)
    print(f"{'row':<24} {'wall s':>8} {'cpu s':>8} {'× fwd (cpu)':>11} {'peak +MiB':>10} {'stats MiB':>14} {'max rel diff':>12}")
    print(f"{'one forward (no grad)':<24} {fwd_wall:8.1f} {fwd_cpu:8.1f} {1.0:11.2f} {fwd_mib:10.0f} {'':>14} {'':>12}")
    layers = find_layers(model)
    candidates = parse_candidates(CANDIDATES)
    reference: dict[str, list[dict[str, float]]] = {}
    results = []
    for row in args.rows.split(","):
        weighting, streaming = row.split("/")
        metric = get_metric("input_covariance", {"weighting": weighting, "streaming": streaming})
        ctx = MetricContext(model, layers, calibration, candidates, seed=0)
        stats, wall, cpu, mib = timed(lambda m=metric, c=ctx: m.measure(c))
        run = metric.run_info
        damages = [dict(st.extra["damage"]) for st in stats]
        base = reference.setdefault(weighting, damages)
        diff = max(abs(d[c] - b[c]) / max(abs(b[c]), 1e-300) for d, b in zip(damages, base, strict=True) for c in b)
        stats_mib = f"{run['statistics_mib']:.0f}/{run['resident_statistics_mib']:.0f}"
        print(f"{weighting + ' / ' + run['input_statistics']:<24} {wall:8.1f} {cpu:8.1f} {cpu / fwd_cpu:11.2f}"
              f" {mib:10.0f} {stats_mib:>14} {diff:12.1e}", flush=True)
        results.append({"weighting": weighting, "streaming": run["input_statistics"], "wall_s": wall, "cpu_s": cpu,
                        "ratio_cpu": cpu / fwd_cpu, "peak_extra_mib": mib, **run, "max_rel_diff": diff})
    print(json.dumps({"forward": {"wall_s": fwd_wall, "cpu_s": fwd_cpu}, "rows": results}))


if __name__ == "__main__":
    main()
