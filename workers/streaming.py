"""Weight streaming: a Hugging Face directory whose float32 weights do not fit the job's memory is
analysed with only one repeated block's weights resident at a time.

Why: input_covariance already works block by block (its _StagePlan); what kept a large model out was
that every weight had to be loaded first. Here the model is built with its parameters on the meta
device (buffers stay real: rotary `inv_freq` is computed, not stored), everything outside the
repeated blocks (embeddings, final norm, LM head) is read at once, and a block's weights are read
when it runs and put back on the meta device after. Parameters keep their identity (the tensors are
swapped in place, torch.utils.swap_tensors), so layer discovery, hooks and tied weights see the same
objects whether a block is resident or not.

Tensors are read with plain reads at their offsets in the safetensors files, not through
safetensors' mmap: a mapping of a whole file counts against the job's address-space limit
(RLIMIT_AS), which is exactly the limit a streamed model is over.

Which mode (`plan_weights`): "whole" keeps every weight resident and is refused, naming the option,
when the weights exceed SAFETY × the memory the job may use (workers.memory.free_memory, and
BITPLAN_JOB_MEMORY_LIMIT_MB when set; a service job child is not given that setting and goes by its
RLIMIT_AS, which is the setting, minus what it has mapped once the model's class is imported);
"auto" and "blocks" stream them then. A resident load needs
the float32 parameters plus the files transformers maps while filling them, so both are counted.
"""

from __future__ import annotations

import ctypes
import glob
import json
import mmap
import os
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workers.errors import AnalysisError, ModelLoadError
from workers.memory import SAFETY, free_memory, mapped_allocations

__all__ = [
    "WeightStore",
    "build_on_meta",
    "fp32_weight_bytes",
    "inventory_model",
    "job_memory",
    "layer_weights",
    "load_streamed",
    "place",
    "plan_weights",
    "repeated_blocks",
    "store_of",
    "streamed_forward",
]

_MIB = 2**20
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


@dataclass(frozen=True)
class _Entry:
    file: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    def fp32_bytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        dtype = _DTYPES.get(self.dtype)
        return n * 4 if dtype is None or dtype.is_floating_point else n * dtype.itemsize


def _index(path: str) -> dict[str, _Entry]:
    """Every tensor of the directory's *.safetensors files, from their headers only."""
    entries: dict[str, _Entry] = {}
    for file in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
        try:
            with open(file, "rb") as fh:
                (size,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(size))
        except (OSError, struct.error, ValueError) as exc:
            raise ModelLoadError(f"model: {os.path.basename(file)} is not a readable safetensors file ({exc})") from exc
        for key, meta in header.items():
            if key == "__metadata__":
                continue
            start, end = meta["data_offsets"]
            entries[key] = _Entry(file, meta["dtype"], tuple(meta["shape"]), 8 + size + start, end - start)
    return entries


def _pages(nbytes: int) -> torch.Tensor:
    """nbytes of memory mapped for this tensor alone, unmapped when the tensor is freed: glibc keeps
    freed heap blocks below its mmap threshold (32 MiB once workers.memory has planned), so blocks
    read and dropped in turn would leave the resident set at the size of every block read."""
    if nbytes == 0:
        return torch.empty(0, dtype=torch.uint8)
    try:
        pages = mmap.mmap(-1, nbytes)
    except OSError as exc:  # ENOMEM under RLIMIT_AS: an allocator failure like any other (workers.memory)
        raise MemoryError(f"cannot allocate memory: mapping {nbytes} bytes of weights ({exc})") from exc
    return torch.frombuffer(pages, dtype=torch.uint8)


def _read(entry: _Entry) -> torch.Tensor:
    """One tensor, float32 when it is floating point, read from its byte range."""
    dtype = _DTYPES.get(entry.dtype)
    if dtype is None:
        raise ModelLoadError(f"model: safetensors dtype {entry.dtype} cannot be read")
    buf = _pages(entry.nbytes)
    view = memoryview(buf.numpy()) if entry.nbytes else None
    with open(entry.file, "rb", buffering=0) as fh:
        fh.seek(entry.offset)
        done = 0
        while done < entry.nbytes:
            got = fh.readinto(view[done:])
            if not got:
                raise ModelLoadError(f"model: {os.path.basename(entry.file)} ends inside a tensor")
            done += got
    tensor = buf.view(dtype).reshape(entry.shape)
    if not dtype.is_floating_point or dtype == torch.float32:
        return tensor
    wide = _pages(tensor.numel() * 4).view(torch.float32).reshape(entry.shape)
    return wide.copy_(tensor)


def fp32_weight_bytes(path: str) -> int:
    """The directory's weights in float32 (what load_hf_model holds), from the headers."""
    return sum(e.fp32_bytes() for e in _index(path).values())


def job_memory(device: torch.device) -> tuple[int | None, dict[str, int]]:
    """(the memory this job may still use, its bounds): what is free (workers.memory), the job's limit
    BITPLAN_JOB_MEMORY_LIMIT_MB when the environment gives it, and CUDA's free memory on a GPU."""
    _, bounds = free_memory(torch.device("cpu"))
    bounds = dict(bounds)
    limit = os.environ.get("BITPLAN_JOB_MEMORY_LIMIT_MB", "")
    if limit.strip().isdigit():
        bounds["job_memory_limit"] = int(limit) * _MIB
    if device.type == "cuda":
        bounds.update(free_memory(device)[1])
    return (min(bounds.values()) if bounds else None), bounds


def plan_weights(source: Any, streaming: str | None, device: torch.device, metric: str = "input_covariance"
                 ) -> dict[str, Any]:
    """{"weights": "resident" | "streamed", "weight_mib", "limit_mib", "reason"} for an analysis of
    `source` by `metric`, whose `streaming` option is given (None: the metric cannot stream).
    AnalysisError when the weights do not fit and streaming is "whole" or impossible, naming what to change."""
    if source.format != "hf" or not os.path.isdir(source.path):
        return {"weights": "resident", "reason": "only Hugging Face directories stream"}
    index = _index(source.path)
    size = sum(e.fp32_bytes() for e in index.values())
    files = sum(os.path.getsize(f) for f in {e.file for e in index.values()})
    from workers.hf import hf_config_and_class

    # the model's class first: importing its transformers modules maps ~250 MiB (Llama), which a
    # resident load needs as well and RLIMIT_AS counts. Measured before it, a job child under 1100 MiB
    # saw 480 MiB free (70 %: 336) for a 312 MiB load, had 270 MiB once the class was in, and failed
    hf_config_and_class(source.path)
    limit, bounds = job_memory(device)
    plan = {"weight_mib": round(size / _MIB, 1), "file_mib": round(files / _MIB, 1),
            "limit_mib": None if limit is None else round(limit / _MIB, 1), "safety": SAFETY, "bounds": sorted(bounds)}
    # transformers maps the files while it copies them into float32 parameters: both count (RLIMIT_AS)
    if limit is None or size + files <= SAFETY * limit:
        return {"weights": "resident", **plan, "reason": "the float32 weights fit"}
    over = (f"the model's float32 weights ({size / _MIB:.1f} MiB, with {files / _MIB:.1f} MiB of files mapped while"
            f" loading) exceed the memory this job may use ({SAFETY:.0%} of {limit / _MIB:.1f} MiB)")
    if streaming is None:
        raise AnalysisError(f"{over}: metric {metric!r} needs every weight resident (a backward through the whole"
                            " model); use metric 'input_covariance', which streams the weights block by block")
    if streaming == "whole":
        raise AnalysisError(f"{over}: options.streaming='whole' keeps every weight resident; use"
                            " options.streaming='auto' to stream the weights block by block from the safetensors files")
    return {"weights": "streamed", **plan, "reason": over}


def repeated_blocks(model: nn.Module, owned: set[int]) -> tuple[list[nn.Module], str]:
    """The model's repeated blocks: the nn.ModuleList of ≥ 2 same-type modules holding the most of
    the modules in `owned` (ids); none: a reason why."""
    best: list[nn.Module] = []
    best_count = 0
    for module in model.modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        if any("forward" in child.__dict__ for child in module):
            continue  # an instance-level forward (a wrapper's hook) is not ours to swap
        count = sum(1 for child in module for m in child.modules() if id(m) in owned)
        if count > best_count:
            best, best_count = list(module), count
    if sum(1 for b in best if any(id(m) in owned for m in b.modules())) < 2:
        return [], "no repeated blocks (an nn.ModuleList of same-type modules holding layers) were found"
    return best, f"{len(best)} repeated blocks"


class WeightStore:
    """Where a streamed model's weights come from: each parameter's tensor in the safetensors files,
    which blocks are resident (counted loads, so nested holds are safe), resident bytes and their peak."""

    def __init__(self, path: str, model: nn.Module, blocks: list[nn.Module]):
        self.path, self.blocks, self.device = path, blocks, torch.device("cpu")
        self.index = _index(path)
        prefix = getattr(model, "base_model_prefix", "") or ""
        self.key: dict[int, str] = {}
        for name, p in model.named_parameters():
            candidates = [name, name.removeprefix(prefix + "."), f"{prefix}.{name}"]
            key = next((k for k in candidates if k in self.index), None)
            if key is None:
                raise ModelLoadError(f"model: cannot stream {name!r}: no tensor of the safetensors files holds it")
            self.key[id(p)] = key
        outside = {id(p) for p in _params(model)} - {id(p) for b in blocks for p in _params(b)}
        self.block_params = [[p for p in _params(b) if id(p) not in outside] for b in blocks]
        self.holds = [0] * len(blocks)
        self.position = {id(b): i for i, b in enumerate(blocks)}
        self.resident = 0
        self.peak = 0
        self.reads = 0
        for p in _params(model):
            if id(p) in outside:
                self._swap_in(p)

    def read(self, p: nn.Parameter) -> torch.Tensor:
        """The parameter's values as stored (float32), one tensor read from its file."""
        self.reads += 1
        return _read(self.index[self.key[id(p)]])

    def _swap_in(self, p: nn.Parameter) -> None:
        real = nn.Parameter(self.read(p).to(self.device), requires_grad=p.requires_grad)
        torch.utils.swap_tensors(p, real)
        self.resident += p.numel() * p.element_size()
        self.peak = max(self.peak, self.resident)

    def load(self, block: nn.Module) -> None:
        """Hold the block's weights; all or nothing: a read that fails (out of memory under RLIMIT_AS)
        puts back what it had read, so a retry at a smaller batch reads the whole block again."""
        i = self.position[id(block)]
        if self.holds[i] == 0:
            done = []
            try:
                for p in self.block_params[i]:
                    self._swap_in(p)
                    done.append(p)
            except BaseException:
                self._swap_out(done)
                raise
        self.holds[i] += 1

    def drop(self, block: nn.Module) -> None:
        i = self.position[id(block)]
        self.holds[i] -= 1
        if self.holds[i] == 0:
            self._swap_out(self.block_params[i])
            _malloc_trim()  # the block's activations were freed too; their heap pages go back to the system

    def _swap_out(self, params: list[nn.Parameter]) -> None:
        for p in params:
            self.resident -= p.numel() * p.element_size()
            torch.utils.swap_tensors(p, nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad))

    @contextmanager
    def holding(self, block: nn.Module):
        """The block's weights resident for the duration."""
        self.load(block)
        try:
            yield
        finally:
            self.drop(block)

    @contextmanager
    def streaming(self):
        """Every block loads its weights when it is called and drops them when it returns, so a
        whole forward (no graph kept through the weights) holds one block at a time."""
        handles, held = [], []

        def load(m, args):
            self.load(m)
            held.append(m)

        def drop(m, args, out):  # also when the block raised (always_call): an out-of-memory back-off retries
            if held and held[-1] is m:
                held.pop()
                self.drop(m)

        for block in self.blocks:
            handles.append(block.register_forward_pre_hook(load))
            handles.append(block.register_forward_hook(drop, always_call=True))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def describe(self) -> dict[str, Any]:
        return {"weights": "streamed", "peak_resident_weight_bytes": self.peak,
                "weight_bytes": sum(e.fp32_bytes() for e in self.index.values()), "tensor_reads": self.reads}


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _params(module: nn.Module) -> list[nn.Parameter]:
    return list(module.parameters())


@contextmanager
def _parameters_on_meta():
    """Every parameter registered while this runs lives on the meta device (buffers stay real)."""
    original = nn.Module.register_parameter

    def register(self, name, param):
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        original(self, name, param)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def build_on_meta(path: str) -> nn.Module:
    """The directory's model class built from its config, every parameter on the meta device (nothing
    read yet), buffers real."""
    from workers.hf import hf_config_and_class

    config, cls = hf_config_and_class(path)
    build = cls.from_config if not hasattr(cls, "_from_config") else cls._from_config
    try:
        with _parameters_on_meta(), mapped_allocations():  # each weight is allocated, then dropped
            return build(config, dtype=torch.float32, attn_implementation="eager")
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for one bad directory
        raise ModelLoadError(f"model: cannot build the Hugging Face model ({type(exc).__name__}: {exc})") from exc


def inventory_model(path: str) -> nn.Module:
    """For an upload's inspection of a model over the job's memory: the model on the meta device
    (layers, shapes, ties and config are all inspection reads), every stored tensor checked finite
    one at a time from the files (what workers.models.check_finite checks on a loaded model)."""
    from workers.hf import single_output

    model = build_on_meta(path)
    for key, entry in _index(path).items():
        tensor = _read(entry)
        if tensor.dtype.is_floating_point and not bool(torch.isfinite(tensor).all()):
            raise ModelLoadError(f"model: tensor {key!r} holds NaN or infinite values")
        del tensor
    return single_output(model, path)


def load_streamed(path: str, why: str = "") -> nn.Module:
    """The directory's model with its block weights on the meta device and a WeightStore as
    `model.bitplan_weights`; AnalysisError (after `why`) when it has no repeated blocks."""
    from workers.hf import is_conv1d, single_output

    model = build_on_meta(path)
    layers = {id(m) for m in model.modules()
              if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Embedding) or is_conv1d(m)}
    blocks, reason = repeated_blocks(model, layers)
    if not blocks:
        raise AnalysisError(f"{why or 'weight streaming'}; the weights cannot be streamed: {reason}"
                            " (streaming holds one repeated block at a time)")
    model.bitplan_weights = WeightStore(path, model, blocks)
    index = model.bitplan_weights.index
    for name, buf in model.named_buffers():  # persistent buffers stored with the weights
        if name in index:
            buf.copy_(_read(index[name]).to(buf.dtype))
    return single_output(model, path)


def store_of(model: nn.Module) -> WeightStore | None:
    store = getattr(model, "bitplan_weights", None)
    return store if isinstance(store, WeightStore) else None


def place(model: nn.Module, device: torch.device) -> None:
    """model.to(device), leaving meta (streamed) parameters where they are; streamed blocks then load there."""
    store = store_of(model)
    if store is None:
        model.to(device)
        return
    model._apply(lambda t: t if t.is_meta else t.to(device))
    store.device = device


def streamed_forward(model: nn.Module):
    """A context in which whole forwards of `model` stream its blocks (nothing to do when resident)."""
    store = store_of(model)
    return store.streaming() if store is not None else _nothing()


@contextmanager
def _nothing():
    yield


def layer_weights(model: nn.Module):
    """weight → its float32 values: the parameter itself when resident, else read from the files
    (one tensor at a time, on the store's device)."""
    store = store_of(model)

    def fetch(weight: nn.Parameter) -> torch.Tensor:
        if store is not None and weight.is_meta:
            return store.read(weight).to(store.device)
        return weight.detach().to(torch.float32)

    return fetch
