"""Costs of a layer in a candidate format beyond its bytes: BOPs and latency.

MACs are measured, not derived from shapes: one forward pass on one calibration sample (batch 1;
without calibration data, on one zero sample of the model's recorded input shape: synthetic_sample)
with a hook on every module that uses a layer weight counts, per weight, the multiply-accumulates
of every call (a tied weight used by the embedding and the LM head gets the head's MACs; a module
called twice counts twice). Linear / HF Conv1D: output elements × in_features. ConvNd: output
elements × in_channels/groups × kernel area (= output elements × weight[0].numel()). Embedding: 0
(a lookup). Exported GraphModules are traced node by node (aten.linear / conv / embedding).

BOPs = MACs × w_bits × a_bits (HAWQ-v3), with the candidate's element width and activation width.

Latency, (a) a user table: layer × candidate → ms, e.g. measured per layer on the target as
HAWQ-v3 did on a T4. (b) a roofline estimate from a `HardwareProfile`, per layer and one sample:
    compute = 2 · MACs / peak_ops[b],  b = the smallest profile width ≥ max(w_bits, a_bits)
              (a W4A16 layer dequantizes and runs FP16 math; W8A8 runs the INT8/FP8 rate)
    memory  = (weight bytes incl. scales + (input + output elements) · a_bits / 8) / bandwidth
              (an embedding reads only its looked-up rows)
    latency = max(compute, memory).
Both ignore what the domain notes warn about (kernels that exist only for some widths, format
conversions between layers, launch overhead): they rank candidates, they do not predict wall time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from workers.models import LayerInfo
    from workers.quantizers import Quantizer

__all__ = [
    "PROFILES",
    "HardwareProfile",
    "LayerTrace",
    "Trace",
    "bops",
    "parse_hardware",
    "parse_latency_table",
    "roofline_ms",
    "synthetic_sample",
    "trace_layers",
]


@dataclass
class LayerTrace:
    """What one sample's forward pass did with one layer weight (summed over its calls)."""

    macs: int = 0
    input_elements: int = 0
    output_elements: int = 0
    calls: int = 0


@dataclass
class Trace:
    """Per layer name, and groups of linear layers that read the very same input tensor (the
    fusable projections: q/k/v of one attention block, gate/up of one MLP)."""

    layers: dict[str, LayerTrace]
    shared_inputs: list[list[str]] = field(default_factory=list)
    sample_shape: list[int] = field(default_factory=list)


def trace_layers(model: nn.Module, layers: Sequence[tuple[LayerInfo, nn.Parameter]], sample: torch.Tensor) -> Trace:
    """One no-grad forward on `sample` (batch 1), counting per layer; the model is left as it was."""
    import torch

    from workers.hf import is_conv1d
    from workers.models import _storage_key

    by_key = {_storage_key(w): info for info, w in layers}
    traces = {info.name: LayerTrace() for info, _ in layers}
    readers: dict[int, tuple[Any, list[str]]] = {}  # id(input) -> (input kept alive, layer names)

    def record(info: LayerInfo, weight: torch.Tensor, kind: str, transposed: bool, inp: Any, out: Any) -> None:
        """`kind` is how this call uses the weight (a tied weight is an embedding in one call and
        a linear head in another); `transposed` whether this call stores it (in, out)."""
        t = traces[info.name]
        t.calls += 1
        x = inp if isinstance(inp, torch.Tensor) else None
        y = out if isinstance(out, torch.Tensor) else None
        if y is not None:
            t.output_elements += int(y.numel())
            if kind != "embedding":
                out_features = int(weight.shape[1] if transposed else weight.shape[0])
                t.macs += int(y.numel()) * (int(weight.numel()) // max(out_features, 1))
        if x is not None and kind != "embedding":
            t.input_elements += int(x.numel())
            if kind == "linear":
                kept, names = readers.setdefault(id(x), (x, []))
                if info.name not in names:
                    names.append(info.name)

    import torch.fx

    if isinstance(model, torch.fx.GraphModule):
        _trace_graph(model, by_key, sample, record)
    else:
        handles = []
        seen: set[int] = set()
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if id(module) in seen or not isinstance(weight, torch.nn.Parameter):
                continue
            info = by_key.get(_storage_key(weight))
            if info is None:
                continue
            seen.add(id(module))
            kind = "embedding" if isinstance(module, torch.nn.Embedding) else "linear"
            if isinstance(module, torch.nn.Conv1d | torch.nn.Conv2d):
                kind = "conv"
            transposed = is_conv1d(module)

            def hook(mod, args, out, info=info, weight=weight, kind=kind, transposed=transposed):
                record(info, weight, kind, transposed, args[0] if args else None, out)

            handles.append(module.register_forward_hook(hook))
        try:
            with torch.no_grad():
                model(sample)
        finally:
            for h in handles:
                h.remove()
    shared = [names for _, names in readers.values() if len(names) > 1]
    return Trace(traces, shared, [int(s) for s in sample.shape])


def _trace_graph(gm, by_key, sample, record) -> None:
    import torch
    import torch.fx

    from workers.models import _storage_key

    aten = torch.ops.aten
    weight_arg = {
        aten.linear.default: 1,
        aten.conv1d.default: 1,
        aten.conv2d.default: 1,
        aten.convolution.default: 1,
        aten.embedding.default: 0,
    }

    class Counter(torch.fx.Interpreter):
        def run_node(self, node):
            out = super().run_node(node)
            index = weight_arg.get(node.target) if node.op == "call_function" else None
            if index is not None and len(node.args) > index and isinstance(node.args[index], torch.fx.Node):
                src = node.args[index]
                if src.op == "get_attr":
                    try:
                        weight = gm.get_parameter(src.target)
                    except AttributeError:
                        return out
                    info = by_key.get(_storage_key(weight))
                    if info is not None:
                        arg = node.args[0] if index == 1 else node.args[1]
                        inp = self.env.get(arg) if isinstance(arg, torch.fx.Node) else None
                        kind = "embedding" if index == 0 else ("linear" if weight.dim() == 2 else "conv")
                        record(info, weight, kind, False, inp, out)
            return out

    with torch.no_grad():
        Counter(gm).run(sample)


def bops(macs: int, candidate: Quantizer) -> float:
    return float(macs) * candidate.weight_bits * candidate.activation_bits


@dataclass(frozen=True)
class HardwareProfile:
    """Peak dense throughput per operand width (ops/s, one MAC = 2 ops, the datasheets' convention)
    and memory bandwidth (bytes/s). `source` names where the figures come from."""

    name: str
    peak_ops: Mapping[int, float]
    bandwidth: float
    source: str = "user-supplied"

    def peak_for(self, bits: int) -> float:
        wide_enough = [b for b in self.peak_ops if b >= bits]
        return self.peak_ops[min(wide_enough)] if wide_enough else min(self.peak_ops.values())

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "peak_ops": {str(k): v for k, v in sorted(self.peak_ops.items())},
                "bandwidth": self.bandwidth, "source": self.source}


# Dense Tensor Core figures (the datasheets' headline numbers with structured sparsity are halved).
PROFILES: dict[str, HardwareProfile] = {
    "t4": HardwareProfile(
        "t4",
        {16: 65e12, 8: 130e12, 4: 260e12},
        320e9,
        "NVIDIA T4 Tensor Core GPU datasheet: FP16 mixed 65 TFLOPS, INT8 130 TOPS, INT4 260 TOPS, 320+ GB/s GDDR6",
    ),
    "a100": HardwareProfile(
        "a100",
        {16: 312e12, 8: 624e12, 4: 1248e12},
        2039e9,
        "NVIDIA A100 Tensor Core GPU datasheet (80GB SXM): FP16 312 TFLOPS, INT8 624 TOPS, INT4 1248 TOPS"
        " (dense), 2,039 GB/s HBM2e",
    ),
    "h100": HardwareProfile(
        "h100",
        {16: 989.5e12, 8: 1979e12},
        3.35e12,
        "NVIDIA H100 Tensor Core GPU datasheet (SXM): FP16 1,979 and FP8/INT8 3,958 TFLOPS/TOPS with"
        " sparsity, i.e. 989.5 and 1,979 dense; 3.35 TB/s HBM3; no INT4 Tensor Core rate (4-bit runs at 8-bit)",
    ),
}


def parse_hardware(value: Any) -> HardwareProfile:
    """A built-in profile name, or {"name", "peak_ops": {bits: ops/s}, "bandwidth": bytes/s}."""
    if isinstance(value, str):
        if value not in PROFILES:
            raise ValueError(f"options.hardware: unknown profile {value!r} (valid: {', '.join(PROFILES)}, or an object)")
        return PROFILES[value]
    if not isinstance(value, Mapping):
        raise ValueError("options.hardware: must be a profile name or an object {name, peak_ops, bandwidth}")
    unknown = sorted(set(value) - {"name", "peak_ops", "bandwidth", "source"})
    if unknown:
        raise ValueError(f"options.hardware.{unknown[0]}: unknown field (valid: name, peak_ops, bandwidth, source)")
    peaks = value.get("peak_ops")
    if not isinstance(peaks, Mapping) or not peaks:
        raise ValueError("options.hardware.peak_ops: must map operand bits to ops/s, e.g. {\"16\": 65e12}")
    parsed: dict[int, float] = {}
    for k, v in peaks.items():
        try:
            bits = int(k)
        except (TypeError, ValueError):
            bits = 0
        if bits < 1 or isinstance(v, bool) or not isinstance(v, int | float) or not (0 < v < math.inf):
            raise ValueError(f"options.hardware.peak_ops: {k!r}: {v!r} must be a positive number of ops/s per bit width")
        parsed[bits] = float(v)
    bandwidth = value.get("bandwidth")
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, int | float) or not (0 < bandwidth < math.inf):
        raise ValueError("options.hardware.bandwidth: must be a positive number of bytes/s")
    return HardwareProfile(str(value.get("name", "custom")), parsed, float(bandwidth), str(value.get("source", "user-supplied")))


def roofline_ms(trace: LayerTrace, info: LayerInfo, candidate: Quantizer, profile: HardwareProfile) -> float:
    bits = max(candidate.weight_bits, candidate.activation_bits)
    compute = 2.0 * trace.macs / profile.peak_for(bits)
    weight_bytes = candidate.storage_bits(info.weight_shape) / 8
    if info.kind == "embedding":
        weight_bytes = min(weight_bytes, trace.output_elements * candidate.bits_per_weight(info.weight_shape) / 8)
    act_bytes = (trace.input_elements + trace.output_elements) * candidate.activation_bits / 8
    memory = (weight_bytes + act_bytes) / profile.bandwidth
    return 1e3 * max(compute, memory)


def parse_latency_table(value: Any, layers: Sequence[str], candidates: Sequence[str]) -> dict[tuple[str, str], float]:
    """{layer: {candidate: ms}} covering every layer × candidate of the analysis."""
    if not isinstance(value, Mapping):
        raise ValueError("options.latency_table: must be an object {layer: {candidate: milliseconds}}")
    extra = sorted(set(value) - set(layers))
    if extra:
        known = ", ".join(list(layers)[:8]) + (", …" if len(layers) > 8 else "")
        raise ValueError(f"options.latency_table: unknown layer {extra[0]!r}; the model's layers: {known}")
    result: dict[tuple[str, str], float] = {}
    for layer in layers:
        row = value.get(layer)
        if not isinstance(row, Mapping):
            raise ValueError(f"options.latency_table: layer {layer!r} missing (every layer × candidate needs a value)")
        for cand in candidates:
            ms = row.get(cand)
            if isinstance(ms, bool) or not isinstance(ms, int | float) or not (0 <= ms < math.inf):
                raise ValueError(
                    f"options.latency_table: layer {layer!r} candidate {cand!r}: needs a finite number of ms ≥ 0, got {ms!r}"
                )
            result[(layer, cand)] = float(ms)
    return result


def synthetic_sample(signature: Mapping[str, Any] | None, max_length: int | None = None) -> tuple[Any, str | None]:
    """One input built from the model's recorded signature (workers.models.input_signature), so MACs
    come from shapes when there is no calibration data: (tensor, None), or (None, why not). The values
    are zeros: a count of multiply-accumulates does not depend on them."""
    import torch

    if not signature:
        return None, "the model's input shape is not known (no input signature); give a dataset to trace on"
    if signature.get("takes") == "token_ids":
        positions = signature.get("max_positions")
        length = max_length or (min(128, positions) if isinstance(positions, int) else 128)
        return torch.zeros((1, int(length)), dtype=torch.long), None
    shape = list(signature.get("shape") or [])
    if not shape:
        return None, "the model's input shape is not known; give a dataset to trace on"
    batch = signature.get("static_batch") or 1
    dims = [batch if shape[0] is None else int(shape[0]), *shape[1:]]
    if any(d is None for d in dims):
        return None, (f"the model's input shape {shape} has a dynamic dimension besides the batch, so its MACs"
                      " depend on data; give a dataset to trace on")
    dtype = getattr(torch, str(signature.get("dtype") or "float32"), None)
    if not isinstance(dtype, torch.dtype):
        return None, f"the model's input dtype {signature.get('dtype')!r} is not a torch dtype"
    return torch.zeros(dims, dtype=dtype), None
