"""Peak memory of an input_covariance analysis against model size, weights resident vs streamed.

    .venv/bin/python bench/streaming.py [--sizes 4x256,8x384,12x512,16x768] [--weighting fisher]

Four random-weight Llama directories of growing depth × width (tied embeddings, intermediate 2 × hidden)
are written once; each is analysed by `workers.jobs.run_analysis_job` (8 samples × 32 tokens, folds 2)
twice, each run in a fresh interpreter so its high-water mark (VmHWM) is its own: resident (the
default loader) and streamed (BITPLAN_JOB_MEMORY_LIMIT_MB=1 forces workers.streaming). Prints one
table: float32 weights, the interpreter's peak after imports (the floor), each mode's peak resident
set and wall time, the streamed run's peak resident weights, and the largest relative difference
between the two tables' damages.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VOCAB, SAMPLES, TOKENS = 512, 8, 32


def _hwm() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(args) -> None:
    import torch  # noqa: F401 - the floor: torch, transformers' Llama code and bitplan imported, as a job's are
    from transformers import LlamaForCausalLM  # noqa: F401

    import workers.analysis  # noqa: F401
    from workers.jobs import run_analysis_job

    floor = _hwm()
    started = time.perf_counter()
    out = run_analysis_job({
        "model": {"format": "hf", "path": args.dir}, "dataset_path": args.data, "candidates": ["int4", "int8"],
        "metric": "input_covariance", "seed": 0,
        "options": {"weighting": args.weighting, "folds": 2, "batch_size": 4, "device": "cpu", "ties": "none"},
    })
    run = out["provenance"]["metric_run"]
    print(json.dumps({"floor": floor, "peak": _hwm(), "wall_s": time.perf_counter() - started,
                      "weights": run["weights"], "peak_weights": run["peak_resident_weight_bytes"],
                      "damages": [c["damage"] for row in out["layers"] for c in row["candidates"]]}))


def make(root: Path, layers: int, hidden: int) -> str:
    import torch
    import transformers as tf

    path = root / f"llama-{layers}x{hidden}"
    if not path.is_dir():
        torch.manual_seed(0)
        model = tf.LlamaForCausalLM(tf.LlamaConfig(
            hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
            num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, vocab_size=VOCAB,
            max_position_embeddings=TOKENS + 1, tie_word_embeddings=True))
        model.save_pretrained(path, safe_serialization=True)
        del model
    return str(path)


def run(directory: str, data: str, mode: str, weighting: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.pop("BITPLAN_JOB_MEMORY_LIMIT_MB", None)
    if mode == "streamed":
        env["BITPLAN_JOB_MEMORY_LIMIT_MB"] = "1"
    proc = subprocess.run([sys.executable, __file__, "--child", "--dir", directory, "--data", data,
                           "--weighting", weighting], env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run of {directory} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--dir")
    parser.add_argument("--data")
    parser.add_argument("--weighting", default="fisher", choices=["fisher", "none"])
    parser.add_argument("--sizes", default="4x256,8x384,12x512,16x768", help="layers x hidden, comma-separated")
    parser.add_argument("--root", help="where the model directories are written (default: a temporary folder)")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    import numpy as np

    from workers.streaming import fp32_weight_bytes

    root = Path(args.root or tempfile.mkdtemp(prefix="bitplan-streaming-"))
    root.mkdir(parents=True, exist_ok=True)
    data = root / "tokens.npz"
    np.savez(data, inputs=np.random.default_rng(0).integers(0, VOCAB, (SAMPLES, TOKENS + 1)))
    mib = 2**20
    print(f"input_covariance, weighting {args.weighting}, {SAMPLES} × {TOKENS} tokens, folds 2, CPU; peaks are VmHWM"
          " of a fresh interpreter per run")
    print(f"{'model':>14} {'fp32 MiB':>9} {'floor MiB':>10} {'resident MiB':>13} {'streamed MiB':>13}"
          f" {'saved MiB':>10} {'peak wts MiB':>13} {'res s':>7} {'str s':>7} {'max rel Δ':>10}")
    for size in args.sizes.split(","):
        layers, hidden = (int(v) for v in size.split("x"))
        directory = make(root, layers, hidden)
        res = run(directory, str(data), "resident", args.weighting)
        st = run(directory, str(data), "streamed", args.weighting)
        assert res["weights"] == "resident" and st["weights"] == "streamed", (res["weights"], st["weights"])
        rel = max((abs(a - b) / max(abs(a), 1e-30) for a, b in zip(res["damages"], st["damages"], strict=True)),
                  default=0.0)
        print(f"{layers:>4} × {hidden:<7} {fp32_weight_bytes(directory) / mib:9.1f} {res['floor'] / mib:10.0f}"
              f" {res['peak'] / mib:13.0f} {st['peak'] / mib:13.0f} {(res['peak'] - st['peak']) / mib:10.0f}"
              f" {st['peak_weights'] / mib:13.1f} {res['wall_s']:7.1f} {st['wall_s']:7.1f} {rel:10.1e}", flush=True)


if __name__ == "__main__":
    main()
