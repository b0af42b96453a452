"""Memory budgeting: what is free, what one pass of the metric needs, which batch sizes fit.

Why measure rather than guess: the peak of a forward + double backward depends on the model's
activations, the loss and the number of probes sharing one graph, none of which the shapes alone
tell. So before the metric runs, the same pass (workers.metrics' CalibrationLoss + BatchedHvp) is
run on the real model at calibration batch b ∈ {1, 2} and probe batch p ∈ {1, 2} (four passes at
batch ≤ 2, never more: doubling B and P until the pass stood out of the allocator's noise cost a full
expensive pass per doubling, minutes on a 135M-parameter LM; `grow_until` keeps that option); its peak above the memory in use before it (CPU: resident-set high-water, reset through /proc/self/clear_refs;
CUDA: max_memory_allocated) fits the bilinear model

    need(b, p) = c + a·b + g·p + h·b·p      (+ r·(N − b): label-free references of all N samples)

exactly (four points, four unknowns; negative coefficients from measurement noise are clamped and
the constant raised so the model never falls below a measured point). The free memory is the
least of what the machine has (MemAvailable), what the job's cgroup allows and what its
address-space limit (RLIMIT_AS) leaves; on CUDA, mem_get_info plus the allocator's idle cache.
A `SAFETY` share of it is planned with; the out-of-memory back-off in workers.analysis remains
the net for what the extrapolation misses.

Choice: among probe batches p = cap, cap/2, …, 1 and the largest batch b ≤ min(samples, cap) that
fits each, the pair with the lowest estimated cost per probe column: one whole-set batch keeps its
gradient graph (no rebuild per probe batch), several batches rebuild it once per probe batch,
i.e. cost ∝ [nb > 1]/p + 1 + 0.02·nb (nb: batches). A model exported with a static batch S (a
`.pt2` from `torch.export.export(m, (x,))`) only accepts b = S.
"""

from __future__ import annotations

import ctypes
import gc
import math
import os
import resource
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch

__all__ = [
    "SAFETY",
    "BatchPlan",
    "PassCost",
    "PeakMeter",
    "choose_batches",
    "free_memory",
    "is_allocator_failure",
    "mapped_allocations",
    "measure_pass_cost",
    "process_peak",
    "release_freed_memory",
]

SAFETY = 0.7  # share of the free memory planned with
_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory", "defaultcpuallocator",
             "failed to map segment")
# How each metric's expensive pass looks, and which of its options is the probe batch (None: fixed).
# gauss_newton's vmapped jvp over candidates is budgeted as an hvp over as many probes (an upper bound).
_PASSES = {"hutchinson": ("hvp", "probe_batch"), "eigen": ("hvp", None), "fisher": ("grad", None),
           "loss_delta": ("forward", None), "gauss_newton": ("hvp", "candidate_batch"),
           "input_covariance": ("grad", None)}  # its sampled-Fisher backwards (weighting none: forward only)
# sampled_gauss_newton has no batch to plan: it forwards one sample at a time


def is_allocator_failure(exc: BaseException) -> bool:
    """True for an allocator failure of either kind (CUDA's OutOfMemoryError, the CPU allocator's
    "can't allocate memory" RuntimeError, MemoryError) anywhere in the cause / context chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, torch.OutOfMemoryError | MemoryError):
            return True
        if isinstance(current, RuntimeError) and any(t in str(current).lower() for t in _OOM_TEXT):
            return True
        current = current.__cause__ or current.__context__
    return False


# --- what is free -------------------------------------------------------------------------------

def _status() -> dict[str, int]:
    """/proc/self/status sizes in bytes (VmSize, VmRSS, VmHWM); empty off Linux."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmSize", "VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - psutil is optional
        return None


def _read_int(path: str) -> int | None:
    try:
        with open(path) as fh:
            text = fh.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_free() -> int | None:
    """The job's cgroup limit minus its usage (v2, else v1); None when unlimited or unknown."""
    try:
        with open("/proc/self/cgroup") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        controllers, path = parts[1], parts[2]
        if controllers == "":  # v2 unified hierarchy
            for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
                limit = _read_int(f"{root}{path}/memory.max")
                usage = _read_int(f"{root}{path}/memory.current")
                if limit is not None and usage is not None:
                    return max(0, limit - usage)
        elif "memory" in controllers.split(","):
            limit = _read_int(f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
            usage = _read_int(f"/sys/fs/cgroup/memory{path}/memory.usage_in_bytes")
            if limit is not None and usage is not None and limit < 2**60:
                return max(0, limit - usage)
    return None


def free_memory(device: torch.device) -> tuple[int | None, dict[str, int]]:
    """(bytes free for this job on `device`, each bound that went into it); None when unknown."""
    bounds: dict[str, int] = {}
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        idle = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        bounds["cuda_free"] = int(free + max(idle, 0))
    else:
        available = _meminfo_available()
        if available is not None:
            bounds["mem_available"] = available
        cgroup = _cgroup_free()
        if cgroup is not None:
            bounds["cgroup"] = cgroup
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        size = _status().get("VmSize")
        if soft != resource.RLIM_INFINITY and size is not None:
            bounds["rlimit_as"] = max(0, soft - size)
    return (min(bounds.values()) if bounds else None), bounds


# --- what a pass needs --------------------------------------------------------------------------

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def _mallopt(param: int, value: int) -> None:
    try:
        ctypes.CDLL("libc.so.6").mallopt(param, value)
    except (OSError, AttributeError):
        pass


@contextmanager
def mapped_allocations():
    """Blocks of 64 KiB or more mapped (and unmapped when freed) one by one while this runs; after it,
    the threshold workers.memory plans with (32 MiB, fixed). Under RLIMIT_AS the heap's free but
    fragmented chunks still take address space: building a model whose weights are created and dropped
    one by one (workers.streaming.build_on_meta) grew the heap by ~70 % of the float32 weights."""
    _mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
    try:
        yield
    finally:
        _mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)


def release_freed_memory() -> None:
    """Freed heap pages back to the system: between phases, so one phase's leftovers do not sit under
    the next one's peak."""
    _trim()


def _trim() -> None:
    """Return freed heap pages to the system, so resident size reflects live memory.

    Collects the young generations only: a pass's cyclic garbage is young, and a full collection
    walks every object of the imported libraries (~0.3 s each, 24 per planning: most of its time)."""
    gc.collect(1)
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMeter:
    """High-water mark of memory in use above where it stood at `reset()`.

    CPU: VmHWM after writing 5 to /proc/self/clear_refs (Linux ≥ 4.0); where that is refused, the
    process high-water from getrusage (an upper bound: it never goes down). CUDA: the caching
    allocator's max_memory_allocated. `process_peak()` keeps the highest mark ever seen."""

    def __init__(self, device: torch.device):
        self.device = device
        self.base = 0

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return
        _trim()
        _remember_peak()
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            pass
        self.base = _status().get("VmRSS", 0)

    def peak(self) -> int:
        """Bytes above the base at the highest point since `reset()`."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return max(0, torch.cuda.max_memory_allocated(self.device) - self.base)
        return max(0, _rss_high_water() - self.base)


_SEEN_PEAK = [0]


def _rss_high_water() -> int:
    hwm = _status().get("VmHWM")
    if hwm is None:
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return hwm


def _remember_peak() -> None:
    _SEEN_PEAK[0] = max(_SEEN_PEAK[0], _rss_high_water())


def process_peak(device: torch.device) -> dict[str, int]:
    """The job's peak memory so far: resident set (bytes) and, on CUDA, the allocator's peak."""
    _remember_peak()
    out = {"peak_rss_bytes": _SEEN_PEAK[0]}
    if device.type == "cuda":
        out["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return out


@dataclass(frozen=True)
class PassCost:
    """need(b, p) = constant + per_sample·b + per_probe·p + per_sample_probe·b·p + reference·(N − b), bytes."""

    constant: float
    per_sample: float
    per_probe: float
    per_sample_probe: float
    reference_per_sample: float
    measured: tuple[tuple[int, int, int], ...]  # (b, p, peak bytes) of the probe passes

    def need(self, batch: int, probes: int, samples: int) -> float:
        return (self.constant + self.per_sample * batch + self.per_probe * probes
                + self.per_sample_probe * batch * probes + self.reference_per_sample * max(samples - batch, 0))

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row["measured"] = [{"batch": b, "probes": p, "peak_bytes": m} for b, p, m in self.measured]
        return row


def pass_kind(metric: Any) -> tuple[str, str | None] | None:
    """("hvp" | "grad" | "forward", the metric's probe-batch option or None), or None when the
    metric has no calibration pass to budget."""
    return _PASSES.get(getattr(metric, "name", None))


def measure_pass_cost(
    model: torch.nn.Module,
    params: Sequence[torch.nn.Parameter],
    calibration: Any,
    *,
    kind: str,
    output_loss: str,
    device: torch.device,
    batch_cap: int,
    probe_cap: int = 2,
    static_batch: int | None = None,
    grow_until: float = 0.0,
    **loss_options: Any,
) -> PassCost:
    """Fit PassCost from the metric's pass run on the grid {1, B} × {1, P} (P only for "hvp").

    B = P = 2 to start; while the (B, P) pass peaks below `grow_until` bytes both double (up to the
    caps, and to 64 sample-probes), so that the extrapolation starts from a pass big enough to stand
    out of the allocator's page-level noise. A static-batch model runs at b = `static_batch` only."""
    meter = PeakMeter(device)
    gen = torch.Generator().manual_seed(0)
    if device.type == "cpu":
        # glibc keeps freed blocks below its (self-raising) mmap threshold in the heap, so the resident
        # size of a small pass would carry the slack of earlier ones: map every block of 64 KiB or more
        # while measuring, so that resident size follows live memory; afterwards the threshold is fixed
        # where the dynamic one ends up on 64-bit glibc (32 MiB) and trimming follows it.
        _mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
        _mallopt(_M_TRIM_THRESHOLD, 128 * 1024)
    try:
        run = _PassRunner(model, params, calibration, kind, output_loss, meter, gen, loss_options)
        hvp = kind == "hvp"
        b_cap = static_batch or max(1, min(batch_cap, calibration.samples))
        p_cap = max(1, probe_cap) if hvp else 0
        big_b = static_batch or min(2, b_cap)
        big_p = min(2, p_cap) if hvp else 0
        peak = run(big_b, big_p)
        # Past 64 sample-probes a pass still under the target extrapolates to well under the budget.
        while peak < grow_until and big_b * max(big_p, 1) < 64 and (big_b < b_cap or big_p < p_cap):
            next_b = big_b if static_batch else min(2 * big_b, b_cap)
            next_p = min(2 * big_p, p_cap) if hvp else 0
            try:
                peak = run(next_b, next_p)
            except Exception as exc:  # noqa: BLE001 - out of memory ends the growth; the rest is the model's
                if not is_allocator_failure(exc):
                    raise
                break
            big_b, big_p = next_b, next_p
        small_b = static_batch or 1
        small_p = 1 if hvp else 0
        for b, p in ((small_b, small_p), (small_b, big_p), (big_b, small_p)):
            run(b, p)
        grid = {(b, p): m for b, p, m in run.points if b in (small_b, big_b) and p in (small_p, big_p)}
        return _fit(grid, run.reference, tuple(run.points))
    finally:
        _trim()
        if device.type == "cpu":
            _mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)
            _mallopt(_M_TRIM_THRESHOLD, 64 * 2**20)


class _PassRunner:
    """One pass of the metric at (b, p) on the first b calibration samples; peaks above one fixed base."""

    def __init__(self, model, params, calibration, kind, output_loss, meter, gen, loss_options):
        self.model, self.params, self.calibration, self.kind = model, list(params), calibration, kind
        self.output_loss, self.meter, self.gen, self.loss_options = output_loss, meter, gen, loss_options
        self.points: list[tuple[int, int, int]] = []
        self.reference = 0.0
        meter.reset()
        self.base = meter.base

    def __call__(self, b: int, p: int) -> int:
        from workers.data import Calibration
        from workers.metrics._common import BatchedHvp, grad_only_for, rademacher
        from workers.metrics._loss import CalibrationLoss

        for done_b, done_p, peak in self.points:
            if (done_b, done_p) == (b, p):
                return peak
        c = self.calibration
        part = Calibration(c.inputs[:b], None if c.targets is None else c.targets[:b], batch_size=b,
                           token_ids=c.token_ids)
        self.meter.reset()
        self.meter.base = self.base
        from torch.nn.attention import SDPBackend, sdpa_kernel

        # The math attention kernel: fused CPU kernels lack double backward (and forward mode, which
        # gauss_newton's pass uses under this kernel too), so it is what those passes really run.
        with grad_only_for(self.model, self.params), sdpa_kernel([SDPBackend.MATH]):
            if self.kind == "forward":
                with torch.no_grad():
                    loss = CalibrationLoss(self.model, part, output_loss=self.output_loss, **self.loss_options)
                    for value in loss.batch_losses():
                        del value
            else:
                loss = CalibrationLoss(self.model, part, output_loss=self.output_loss, **self.loss_options)
                if self.kind == "hvp":
                    vectors = [rademacher((p, *w.shape), w, self.gen) for w in self.params]
                    out = BatchedHvp(loss, self.params, "memory probe")(vectors, range(len(self.params)))
                    del vectors, out
                else:
                    for value in loss.batch_losses():
                        torch.autograd.grad(value, self.params, allow_unused=True)
        if loss.label_free:
            ref = loss.reference(0)
            self.reference = ref.numel() * ref.element_size() / b
        del loss, part
        peak = self.meter.peak()
        self.points.append((b, p, peak))
        _trim()
        return peak


def _fit(by: dict[tuple[int, int], int], reference: float, measured: tuple) -> PassCost:
    """Exact bilinear fit on a 2 × 2 grid (or a line on 2 × 1 / 1 × 2), negative slopes clamped to 0,
    the constant raised until no grid point lies above the model."""
    bs = sorted({b for b, _ in by})
    ps = sorted({p for _, p in by})
    a = g = h = 0.0
    if len(bs) >= 2 and len(ps) >= 2:
        (b1, b2), (p1, p2) = bs[:2], ps[:2]
        m11, m21, m12, m22 = by[b1, p1], by[b2, p1], by[b1, p2], by[b2, p2]
        h = (m22 - m21 - m12 + m11) / ((b2 - b1) * (p2 - p1))
        a = (m21 - m11) / (b2 - b1) - h * p1
        g = (m12 - m11) / (p2 - p1) - h * b1
    elif len(bs) >= 2:
        a = (by[bs[1], ps[0]] - by[bs[0], ps[0]]) / (bs[1] - bs[0])
    elif len(ps) >= 2:  # static batch: only the probe terms vary; charge them per sample·probe
        h = (by[bs[0], ps[1]] - by[bs[0], ps[0]]) / ((ps[1] - ps[0]) * bs[0])
    a, g, h = max(a, 0.0), max(g, 0.0), max(h, 0.0)
    constant = max(m - a * b - g * p - h * b * p for (b, p), m in by.items())
    return PassCost(max(constant, 0.0), a, g, h, reference, measured)


# --- the choice ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchPlan:
    batch_size: int
    probe_batch: int | None
    estimated_bytes: float
    free_bytes: int | None
    fits: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_batches(
    cost: PassCost,
    free: int | None,
    *,
    samples: int,
    batch_cap: int,
    probe_cap: int | None,
    static_batch: int | None = None,
    fixed_probes: int | None = None,
) -> BatchPlan:
    """The (batch, probe batch) of lowest estimated cost per probe column that fits SAFETY·free
    (see the module docstring); the smallest pair, with fits=False, when none does. Without a probe
    cap the metric's probe count is fixed (`fixed_probes`, e.g. eigen's layer chunk)."""
    usable = math.inf if free is None else SAFETY * free
    probe_options = [None] if probe_cap is None else _halvings(probe_cap)
    best: tuple[tuple[float, int], BatchPlan] | None = None
    for p in probe_options:
        pp = (fixed_probes or 1) if p is None else p
        if static_batch is not None:
            sizes = [static_batch]
        else:
            top = max(1, min(samples, batch_cap))
            per = cost.per_sample + cost.per_sample_probe * pp - cost.reference_per_sample
            room = usable - cost.constant - cost.per_probe * pp - cost.reference_per_sample * samples
            fit = top if per <= 0 else int(min(top, room // per)) if room > 0 else 0
            sizes = [fit] if fit >= 1 else []
        for b in sizes:
            need = cost.need(b, pp, samples)
            if need > usable:
                continue
            nb = -(-samples // b)
            score = ((1.0 / pp if nb > 1 else 0.0) + 1.0 + 0.02 * nb, -pp)
            plan = BatchPlan(b, p, need, free, True)
            if best is None or score < best[0]:
                best = (score, plan)
    if best is not None:
        return best[1]
    b = static_batch or 1
    p = None if probe_cap is None else 1
    return BatchPlan(b, p, cost.need(b, p or fixed_probes or 1, samples), free, False)


def _halvings(cap: int) -> list[int]:
    out = [cap]
    while out[-1] > 1:
        out.append(out[-1] // 2)
    return out
