"""The peer's allocation: NVIDIA ModelOpt's `auto_quantize` on the same model, data and formats.

Runs in ModelOpt's own environment (bash bench/setup_modelopt.sh; never in bitplan's
dependencies), called by bench/quality.py:

    .venv-modelopt/bin/python bench/modelopt_peer.py REQUEST.json RESULT.json

REQUEST: {"model": "smollm2" | "efficientnet", "data": safetensors with `inputs` (and for the CNN
`targets`, the float model's top-1 as pseudo-labels), "batch_size", "bits": [int2..int8 weight bits],
"budgets": [{"name", "limit_bytes"}], "bytes": {layer: {candidate: bytes}} (bitplan's own count),
"units": {modelopt module name: bitplan unit}}.

What runs: `mtq.auto_quantize(method="gradient")` (ModelOpt's default), whose score for a layer and
format is Σ (∂L/∂y ⊙ (Q(y) − y))² over the scoring batches (the Fisher approximation of the loss
change from that layer's output perturbation; `_get_auto_quantize_score` in
modelopt/torch/quantization/algorithms.py), solved by its own LP under `effective_bits`. Formats:
weight-only symmetric per-channel integers (`num_bits` b, `axis` 0, max calibration), inputs not
quantized, i.e. the same quantizer bitplan uses; "no quantization" is not allowed (bitplan has no
float candidate either). Loss: next-token cross-entropy on the calibration windows for the LM
(real labels, ModelOpt's intended use); cross-entropy on the float model's own top-1 for the CNN
(no labels here; ModelOpt needs a loss with a gradient). Default grouping rules (q/k/v together,
gate/up together) are kept: that is the peer's behaviour.

ModelOpt counts effective bits without the FP16 scales bitplan counts, so for each byte budget
the effective-bits target starts at the budget's average bits and is lowered in steps of 0.02
until ModelOpt's choice, counted in bitplan's bytes, fits. Scores are computed once per model
(ModelOpt's own checkpoint file restores them for the later targets).
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def fmt(candidate: str) -> dict:
    """ModelOpt's config for one of bitplan's integer candidates: `int4` per output channel,
    `int4_g64` in blocks of 64 along the input dimension (ModelOpt's block_sizes)."""
    bits, _, group = candidate[3:].partition("_g")
    scale = {"block_sizes": {-1: int(group)}} if group else {"axis": 0}
    return {
        "quant_cfg": [
            {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": int(bits), **scale}},
            {"quantizer_name": "*input_quantizer", "enable": False},
            {"quantizer_name": "*output_quantizer", "enable": False},
        ],
        "algorithm": "max",
    }


def register_same_padding_conv() -> None:
    """EfficientNet-Lite's convolutions are a subclass of nn.Conv2d (TF "same" padding) that
    ModelOpt's registry does not match; without this only the classifier would be quantized.
    Registered with ModelOpt's own Conv2d quantizer class (its forward pads, then convolves with the
    quantized weight)."""
    from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding
    from modelopt.torch.quantization.nn import QuantModuleRegistry
    from modelopt.torch.quantization.nn.modules.quant_conv import _QuantConv2d

    if QuantModuleRegistry.get(Conv2dStaticSamePadding) is None:
        QuantModuleRegistry.register({Conv2dStaticSamePadding: "Conv2dStaticSamePadding"})(_QuantConv2d)


def load(name: str):
    from bench import real_models

    if name == "smollm2":
        model, _ = real_models.smollm2_model()

        def forward(m, batch):
            return m(input_ids=batch[0], use_cache=False).logits

        def loss(out, batch):
            ids = batch[0]
            return F.cross_entropy(out[:, :-1].reshape(-1, out.shape[-1]), ids[:, 1:].reshape(-1))

        return model, forward, loss
    if name == "efficientnet":
        model = real_models.efficientnet_lite0()
        register_same_padding_conv()
        return model, (lambda m, batch: m(batch[0])), (lambda out, batch: F.cross_entropy(out, batch[1]))
    raise ValueError(f"model: {name!r}")


def main(request_path: str, result_path: str) -> int:
    import modelopt
    import modelopt.torch.quantization as mtq
    from safetensors.torch import load_file

    warnings.filterwarnings("ignore")
    request = json.loads(Path(request_path).read_text())
    torch.manual_seed(0)
    torch.set_num_threads(int(request.get("threads", 2)))
    model, forward, loss = load(request["model"])
    data = load_file(request["data"])
    x, y = data["inputs"], data.get("targets")
    bs = int(request["batch_size"])
    batches = [(x[i : i + bs], None if y is None else y[i : i + bs]) for i in range(0, len(x), bs)]
    candidates = list(request["candidates"])
    formats = [fmt(c) for c in candidates]
    spaces = [{"module_name_patterns": "*", "quantization_formats": formats, "allow_no_quant": False}]
    unit_of: dict[str, str] = request["units"]
    layer_bytes: dict[str, dict[str, float]] = request["bytes"]
    result = {"modelopt": modelopt.__version__, "torch": torch.__version__, "budgets": {}, "runs": []}
    checkpoint = Path(tempfile.mkdtemp()) / "auto_quantize.pth"
    total_weights = float(request["total_weights"])
    for budget in request["budgets"]:
        target = float(budget["avg_bits"])
        while True:
            started = time.perf_counter()
            work = copy.deepcopy(model)
            _, state = mtq.auto_quantize(
                work,
                constraints={"effective_bits": target},
                quantization_formats=formats,
                module_search_spaces=spaces,
                data_loader=batches,
                forward_step=forward,
                loss_func=loss,
                num_calib_steps=len(batches),
                num_score_steps=len(batches),
                checkpoint=str(checkpoint),
            )
            seconds = time.perf_counter() - started
            choice: dict[str, str] = {}
            for hp_name, recipe in state["best"]["recipe"].items():
                stats = state["candidate_stats"][hp_name]
                index = [str(f) for f in stats["formats"]].index(str(recipe))
                for module in stats["module_names"]:
                    if module in unit_of:
                        choice[unit_of[module]] = candidates[index]
            missing = sorted(set(layer_bytes) - set(choice))
            used = sum(layer_bytes[u][c] for u, c in choice.items())
            result["runs"].append({"budget": budget["name"], "target_effective_bits": target, "seconds": seconds,
                                   "bytes": used, "limit": budget["limit_bytes"], "missing": missing})
            print(f"modelopt {budget['name']}: effective_bits {target:.2f} → {used * 8 / total_weights:.3f} b/w"
                  f" (limit {budget['limit_bytes'] * 8 / total_weights:.3f}), {seconds:.0f} s", flush=True)
            if missing:
                raise RuntimeError(f"ModelOpt left layers undecided (not quantizable for it): {missing[:5]}")
            if used <= budget["limit_bytes"] * (1 + 1e-9) or target <= 2.0:
                break
            target = round(target - 0.02, 4)
        result["budgets"][budget["name"]] = {"assignment": choice, "effective_bits": target,
                                             "score": float(state["best"]["score"])}
    Path(result_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
