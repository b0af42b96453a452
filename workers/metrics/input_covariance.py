"""Probe-free damage from the layer's input covariance (the statistic GPTQ uses), optionally
weighted per output channel by a sampled Fisher (a K-FAC Gauss-Newton form with a diagonal
output factor).

For a layer Y = X Wᵀ stored as candidate c, ΔW = Q_c(W) − W (rounded exactly as the analysis
rounds, LayerInfo.quantize). With A = Σ_tokens x xᵀ, summed over every position at which the
layer sees an input on the calibration set (one forward pass, forward hooks, float64), the damage is

    d(l, c) = ½ Σ_o B_oo · ΔW_o A ΔW_oᵀ = ½ vec(ΔW)ᵀ (A ⊗ diag B) vec(ΔW)   (ΔW_o: output row o)

`weighting`:
- "none": B = I, so d = ½ Σ_tokens ‖ΔW x‖², the layer's own output error (forward only; its
  scale is that of the layer's outputs, so layers are compared by raw output error).
- "fisher" (default): B_oo = (1/R) · mean over tokens of (∂ℓ/∂y_o)², from `fisher_batches`
  backward passes of the summed loss ℓ = Σ_rows CE(f(x), ŷ) with labels ŷ ~ softmax(f(x)) drawn
  from the float model itself (seeded), R the calibration set's output rows. E[g gᵀ] for such a
  label is the output-space Gauss-Newton matrix (diag p − ppᵀ, that of KL and of cross-entropy),
  so d ≥ 0 and d ≈ gauss_newton's ½ΔWᵀGΔW under the K-FAC factorisation G ≈ (1/R) A ⊗ E[δδᵀ]
  with the output factor kept diagonal and averaged over positions. Cheap: a few backwards,
  no per-candidate passes through the model.

Layers: nn.Linear and HF Conv1D (transposed linear); nn.Conv1d / nn.Conv2d from unfolded input
patches, one A per group (depthwise: kernel-sized A's), accumulated batch by batch; nn.Embedding
with A = diag(token counts). A weight used by several modules (tied embedding / LM head) sums
the damage of every use (the cross terms between uses are ignored). Any other module owning a
layer weight is an AnalysisError naming the layer.

Memory and time: modules that read the same tensor (q/k/v, gate/up) share one A; products run in
float32 and sum in float64. A large model's statistics (folds × Σ d_in² float64 values) are built
block by block (see _StagePlan), so only one block's are resident; the analysis's provenance says
which pass ran (`metric_run`). A model loaded with streamed weights (workers.streaming) always runs
block by block, each block's weights resident only during its stage; its Fisher backward runs block
by block too (workers.metrics._streamed_fisher).

Confidence interval: the calibration samples are split into `folds` (a seeded permutation), each
fold's A is kept apart, each fold gives its own
estimate of d, and the 95% half-width is 1.96 · s / √folds over those estimates. B is shared by
the folds, so the interval covers the input statistic, not the Fisher draws.

Statistic: the largest d(l, c) over the candidates (the layer's worst case), its half-width and
the number of folds; damage is d(l, c) for the candidate asked.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from workers.errors import AnalysisError
from workers.metrics._base import LayerStatistic, Metric, MetricContext
from workers.metrics._common import (
    candidate_statistic,
    Z95, calibrated_params, check_loss, check_positive_ints, grad_only_for, measured_damage, sample_labels,
)
from workers.metrics._loss import forward, model_device, uses_label_free
from workers.streaming import layer_weights, repeated_blocks, store_of, streamed_forward

if TYPE_CHECKING:
    from workers.quantizers import Quantizer

WEIGHTINGS = ("fisher", "none")
STREAMINGS = ("auto", "blocks", "whole")
# above this many bytes of input statistics, "auto" works block by block
STREAM_ABOVE_BYTES = 256 * 2**20
# unfolded convolution patches built at once (bounded by whole samples)
PATCH_BYTES = 64 * 2**20


@dataclass
class InputCovariance(Metric):
    """Options: `weighting` ("fisher" or "none"; see the module docstring); `folds` the calibration
    samples are split into for the confidence interval; `fisher_batches` calibration batches whose
    backward pass (with labels drawn from the model) gives the output weights B; `loss` as for the
    other metrics (it only names the table's loss: the Gauss-Newton matrix of cross-entropy and of
    KL is the same, so the weights are the same); `streaming` "auto" (block by block once the
    statistics pass STREAM_ABOVE_BYTES), "blocks" or "whole" (see _StagePlan); for a Hugging Face
    directory whose float32 weights exceed the job's memory, "auto" and "blocks" also stream the
    weights and "whole" is refused (workers.streaming, decided when the job loads the model)."""

    weighting: str = "fisher"
    folds: int = 8
    fisher_batches: int = 4
    loss: str = "auto"
    streaming: str = "auto"

    name: ClassVar[str] = "input_covariance"
    statistic: ClassVar[str] = "max_quadratic_damage"
    needs_data: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"options.weighting: must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")
        check_positive_ints(self, "folds", "fisher_batches")
        if self.folds < 2:
            raise ValueError("options.folds: at least 2 folds are needed for a confidence interval")
        check_loss(self.loss)
        if self.streaming not in STREAMINGS:
            raise ValueError(f"options.streaming: must be one of {', '.join(STREAMINGS)}, got {self.streaming!r}")
        self.run_info: dict = {}

    def measure(self, ctx: MetricContext) -> list[LayerStatistic]:
        params = calibrated_params(self.name, ctx)
        calibration = ctx.calibration
        uses_label_free(ctx.model, calibration, self.loss)  # validates options.loss against the data
        uses = [_uses(ctx.model, info, weight) for info, weight in ctx.layers]
        flat = [use for layer in uses for use in layer]
        store = store_of(ctx.model)
        for use in flat:
            use.home = store.device if store is not None else None
        samples = calibration.samples
        folds = min(self.folds, samples)
        gen = torch.Generator().manual_seed(int(ctx.seed))
        fold_of = torch.empty(samples, dtype=torch.long)
        fold_of[torch.randperm(samples, generator=gen)] = torch.arange(samples) % folds
        fisher_batches = min(self.fisher_batches, len(calibration)) if self.weighting == "fisher" else 0
        with torch.no_grad(), streamed_forward(ctx.model):
            _share_inputs(ctx.model, calibration, flat)
        plan = _StagePlan.of(ctx.model, flat, folds, self.streaming, store)
        self.run_info = plan.describe()
        chunks = _fold_chunks(calibration, fold_of, folds)
        steps = fisher_batches + len(plan.stages) * len(chunks)
        started = time.perf_counter()
        done = [0]

        def progress(what: str) -> None:
            done[0] += 1
            eta = (time.perf_counter() - started) / done[0] * (steps - done[0])
            ctx.report(done[0] / steps, f"input_covariance: {what}, ETA {eta:.0f} s")

        # no weight needs a gradient: the graph starts at the layers' outputs (made leaves below), so
        # the backward keeps no inputs for weight gradients and computes none
        with grad_only_for(ctx.model, []), torch.enable_grad():
            if fisher_batches:
                if store is not None:
                    from workers.metrics._streamed_fisher import streamed_output_weights

                    rows = streamed_output_weights(ctx, plan, fisher_batches, gen, progress)
                else:
                    rows = self._output_weights(ctx, flat, fisher_batches, gen, progress)
                for use in flat:
                    use.finish_weights(rows)
        sizes = torch.bincount(fold_of, minlength=folds).to(torch.float64)
        stats: list[LayerStatistic | None] = [None] * len(uses)
        pending = set(range(len(uses)))
        fetch = layer_weights(ctx.model)
        for stage in plan.run(ctx.model, chunks, folds, progress, store):
            for i in sorted(pending):
                if not all(use.stat.finished for use in uses[i]):
                    continue
                stats[i] = self._statistic(ctx.layers[i], uses[i], ctx.candidates, sizes, folds, fetch)
                pending.discard(i)
        self.run_info.update(store.describe() if store is not None else _resident(ctx.model))
        ctx.report(
            1.0,
            f"input_covariance: {len(params)} layers × {len(ctx.candidates)} candidates, {samples} samples,"
            f" weighting {self.weighting}, {plan.mode} pass",
        )
        return stats

    def _statistic(self, layer, layer_uses, candidates, sizes, folds, fetch) -> LayerStatistic:
        """The layer's damages once every use's input statistic is complete; the statistics of
        this layer's uses are freed (unless a use of a layer still pending shares them)."""
        info, weight = layer
        damage, half = {}, {}
        with torch.no_grad():
            w = fetch(weight)
        for q in candidates:
            with torch.no_grad():
                delta = info.quantize(q, w) - w
            per_fold = sum(use.fold_damages(delta) for use in layer_uses)
            damage[q.name], half[q.name] = _damage_ci(per_fold, sizes)
        for use in layer_uses:
            use.release()
        return candidate_statistic(self.name, damage, half, folds, "the activations")

    def _output_weights(self, ctx, flat, batches, gen, progress) -> int:
        """Σ (∂ℓ/∂y_o)² and the positions it sums over, for every use, ℓ the summed cross-entropy
        of labels drawn from the model's own softmax; returns the calibration set's output rows
        (the R of B = mean / R), from the rows per sample of these batches."""
        outputs: dict[int, list[torch.Tensor]] = {}
        rows = seen = 0

        index = {id(use): i for i, use in enumerate(flat)}

        def keep(use, x, out):
            if out.requires_grad:  # its gradient is consumed as the backward passes it, then freed
                out.register_hook(lambda g, use=use: use.add_gradient(g))
            else:
                out.requires_grad_()  # a first layer's output: the graph starts here
                outputs.setdefault(index[id(use)], []).append(out)

        for b, (x, _) in enumerate(ctx.calibration.batches()):
            if b >= batches:
                break
            outputs.clear()
            with _tapping(ctx.model, flat, keep):
                out = forward(ctx.model, x)
            rows += out[..., 0].numel()
            seen += x.shape[0]
            logits = out.reshape(-1, out.shape[-1]).to(torch.float32)
            drawn = sample_labels(logits, gen)
            value = F.cross_entropy(logits, drawn, reduction="sum")
            order = [(i, t) for i in sorted(outputs) for t in outputs[i]]  # the graph's leaves
            grads = torch.autograd.grad(value, [t for _, t in order], allow_unused=True) if order else []
            for (i, t), g in zip(order, grads, strict=True):
                flat[i].add_gradient(torch.zeros_like(t) if g is None else g.detach())
            del out, logits, value, grads, order
            outputs.clear()
            progress(f"batch {b + 1} of {batches} (sampled Fisher)")
        return round(rows / max(seen, 1) * ctx.calibration.samples)

    def damage(
        self, stat: LayerStatistic, candidate: Quantizer, weight: torch.Tensor, quantized: torch.Tensor
    ) -> float:
        return measured_damage(self.name, stat, candidate)


def _damage_ci(per_fold: torch.Tensor, sizes: torch.Tensor) -> tuple[float, float]:
    """The total over folds, and the 95% half-width of the folds' own estimates of it (each fold's
    damage scaled up by samples / fold size)."""
    value = float(per_fold.sum())
    g = per_fold.numel()
    if g < 2:
        return value, math.inf
    estimates = (per_fold * (sizes.sum() / sizes)).tolist()
    mean = math.fsum(estimates) / g
    var = math.fsum((e - mean) ** 2 for e in estimates) / (g - 1)
    return value, Z95 * math.sqrt(var / g)


class _InputStat:
    """A = Σ x xᵀ per fold for one input, shared by every use that reads the same tensor (q/k/v
    projections read one normalised hidden state: one A, not three). Per-batch products run in
    float32 (the fast kernels) and are summed in float64."""

    def __init__(self):
        self.a: torch.Tensor | None = None
        self.rows = 0
        self.users = 0
        self.last: torch.Tensor | None = None  # the input last added (identity marks a shared read)
        self.finished = False

    def nbytes(self, shape: tuple[int, ...]) -> int:
        return math.prod(shape) * 8

    def allocate(self, shape: tuple[int, ...], device) -> None:
        if self.a is None:
            self.a = torch.zeros(shape, dtype=torch.float64, device=device)

    def release(self) -> None:
        self.users -= 1
        if self.users <= 0:
            self.a = None


class _Use:
    """One module's use of a layer weight: its input statistic (maybe shared) and output weights B.
    Subclasses know how the module's input maps to rows x (and its weight to ΔW rows)."""

    def __init__(self, module: nn.Module | None, transposed: bool = False, *, node=None, weight=None):
        self.module = module  # None for a call in an exported graph (then `node` is that call)
        self.node = node
        self._weight = weight if weight is not None else module.weight
        self.transposed = transposed
        self.fold = 0
        self.rows = 0
        self.stat = _InputStat()
        self.stat.users = 1
        self.b_sum: torch.Tensor | None = None
        self.b_positions = 0
        self.b: torch.Tensor | None = None  # None: weighting "none" (B = I)
        self.input_arg = 0  # which argument of a graph call is the input
        self.home = None  # where its statistics live when the weight is streamed (on the meta device)

    # --- output weights
    def add_gradient(self, g: torch.Tensor) -> None:
        per_channel, positions = self._output_squares(g.detach().to(torch.float32))
        self.b_sum = per_channel if self.b_sum is None else self.b_sum + per_channel
        self.b_positions += positions

    def _output_squares(self, g: torch.Tensor) -> tuple[torch.Tensor, int]:
        flat = g.reshape(-1, g.shape[-1])
        return flat.pow(2).sum(dim=0, dtype=torch.float64), flat.shape[0]

    def finish_weights(self, rows: int) -> None:
        if self.b_sum is None:
            self.b = torch.zeros(self.out_channels(), dtype=torch.float64, device=self.device())
        else:
            self.b = self.b_sum / max(self.b_positions, 1) / max(rows, 1)
        self.b_sum = None

    # --- input statistic
    def weight(self) -> torch.Tensor:
        return self._weight

    def device(self) -> torch.device:
        return self.home if self.home is not None else self.weight().device

    def where(self) -> str:
        return type(self.module).__name__ if self.module is not None else f"graph call {self.node.name}"

    def out_channels(self) -> int:
        w = self.weight()
        return int(w.shape[1] if self.transposed else w.shape[0])

    def shape(self, folds: int) -> tuple[int, ...]:
        raise NotImplementedError

    def start(self, folds: int) -> None:
        self.stat.allocate(self.shape(folds), self.device())

    def capture(self, module, inputs, out) -> None:
        x = inputs[0]
        self.rows += self._rows(x)
        stat = self.stat
        if stat.last is x:  # a sibling sharing this statistic already added this very tensor
            return
        stat.last = x
        stat.rows += self._rows(x)
        self._add(x.detach(), stat.a[self.fold])

    def _rows(self, x: torch.Tensor) -> int:
        return int(x.numel() // x.shape[-1])

    def _add(self, x: torch.Tensor, a: torch.Tensor) -> None:
        raise NotImplementedError

    def fold_damages(self, delta: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def release(self) -> None:
        self.stat.release()


def _quadratic(a: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """½ ⟨A_f, M⟩ for every fold f (A: (folds, *shape), M: shape), in float64 without a
    folds-sized temporary."""
    return 0.5 * (a.reshape(a.shape[0], -1) @ m.reshape(-1).to(torch.float64)).cpu()


class _LinearUse(_Use):
    def d_in(self) -> int:
        w = self.weight()
        return int(w.shape[0] if self.transposed else w.shape[1])

    def shape(self, folds: int) -> tuple[int, ...]:
        return (folds, self.d_in(), self.d_in())

    def _add(self, x: torch.Tensor, a: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).to(torch.float32)
        a.add_(x.T @ x)

    def fold_damages(self, delta: torch.Tensor) -> torch.Tensor:
        a = self.stat.a
        dw = (delta.T if self.transposed else delta).to(a.device, torch.float32)  # (out, in)
        weighted = dw if self.b is None else dw * self.b.to(torch.float32).unsqueeze(1)
        return _quadratic(a, weighted.T @ dw)  # M = Σ_o B_o ΔW_oᵀ ΔW_o


class _ConvUse(_Use):
    """nn.Conv1d / nn.Conv2d: rows x are the unfolded input patches of one group."""

    def _output_squares(self, g: torch.Tensor) -> tuple[torch.Tensor, int]:
        dims = [0, *range(2, g.dim())]  # all but the output channels
        return g.pow(2).sum(dim=dims, dtype=torch.float64), g.numel() // g.shape[1]

    def __init__(self, module: nn.Module | None, *, node=None, weight=None):
        super().__init__(module, node=node, weight=weight)
        self.geometry = _module_geometry(module) if module is not None else _graph_geometry(node, self.weight())

    def shape(self, folds: int) -> tuple[int, ...]:
        k = int(self.weight()[0].numel())  # in/groups × kernel
        return (folds, self.geometry["groups"], k, k)

    def _rows(self, x: torch.Tensor) -> int:
        return int(x.shape[0])

    def _add(self, x: torch.Tensor, a: torch.Tensor) -> None:
        """Unfolded patches are kernel-size times the input: a few samples at a time keep them small."""
        one_d = self.geometry["one_d"]
        if x.dim() == (2 if one_d else 3):  # an unbatched input
            x = x.unsqueeze(0)
        per_sample = x[0].numel() * math.prod(self.weight().shape[2:]) * 4
        for part in x.split(max(1, PATCH_BYTES // max(per_sample, 1))):
            self._add_patches(part, a)

    def _add_patches(self, x: torch.Tensor, a: torch.Tensor) -> None:
        geo = self.geometry
        one_d = geo["one_d"]
        if geo["pad"] is not None and any(geo["pad"]):
            x = F.pad(x, geo["pad"], mode=geo["pad_mode"])
        kernel = tuple(self.weight().shape[2:])
        dilation, stride, padding = geo["dilation"], geo["stride"], geo["padding"]
        if one_d:
            x = x.unsqueeze(2)
            kernel, dilation, stride, padding = (1, *kernel), (1, *dilation), (1, *stride), (0, *padding)
        patches = F.unfold(x.to(torch.float32), kernel, dilation=dilation, padding=padding, stride=stride)
        groups = geo["groups"]
        k = patches.shape[1] // groups
        patches = patches.reshape(patches.shape[0], groups, k, -1).permute(1, 0, 3, 2).reshape(groups, -1, k)
        a.add_(torch.bmm(patches.transpose(1, 2), patches))

    def fold_damages(self, delta: torch.Tensor) -> torch.Tensor:
        a = self.stat.a
        groups = self.geometry["groups"]
        dw = delta.to(a.device, torch.float32).reshape(groups, delta.shape[0] // groups, -1)  # (G, out/G, k)
        weighted = dw if self.b is None else dw * self.b.to(torch.float32).reshape(groups, -1, 1)
        return _quadratic(a, weighted.transpose(1, 2) @ dw)  # (G, k, k)


class _EmbeddingUse(_Use):
    """nn.Embedding: y = W[token], so x is one-hot, A = diag(token counts) and output channel o
    is column o of the (vocab, dim) weight."""

    def out_channels(self) -> int:
        return int(self.weight().shape[1])

    def shape(self, folds: int) -> tuple[int, ...]:
        return (folds, int(self.weight().shape[0]))

    def _rows(self, x: torch.Tensor) -> int:
        return int(x.numel())

    def _add(self, x: torch.Tensor, a: torch.Tensor) -> None:
        a.add_(torch.bincount(x.reshape(-1), minlength=a.shape[0]).to(torch.float64))

    def fold_damages(self, delta: torch.Tensor) -> torch.Tensor:
        a = self.stat.a
        sq = delta.to(a.device, torch.float64).pow(2)  # (vocab, dim)
        per_token = sq.sum(dim=1) if self.b is None else sq @ self.b
        return 0.5 * (a @ per_token).cpu()


def _module_geometry(m: nn.Module) -> dict:
    """How an nn.Conv1d / nn.Conv2d turns its input into patches (its padding applied by F.pad, so
    every padding mode is exact)."""
    mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
    zeros = (0,) * len(m.kernel_size)
    return {"one_d": isinstance(m, nn.Conv1d), "stride": tuple(m.stride), "dilation": tuple(m.dilation),
            "padding": zeros, "pad": tuple(m._reversed_padding_repeated_twice), "pad_mode": mode, "groups": m.groups}


def _graph_geometry(node, weight: torch.Tensor) -> dict:
    """The same, read from an exported graph's aten.conv1d / conv2d / convolution call (constants in
    its arguments; zero padding, the only kind aten's convolution has)."""
    aten = torch.ops.aten
    one_d = weight.dim() == 3
    names = (["input", "weight", "bias", "stride", "padding", "dilation", "transposed", "output_padding", "groups"]
             if node.target == aten.convolution.default else
             ["input", "weight", "bias", "stride", "padding", "dilation", "groups"])
    args = dict(zip(names, node.args, strict=False))
    args.update(node.kwargs)
    if args.get("transposed"):
        raise AnalysisError(f"input_covariance: graph call {node.name} is a transposed convolution, which this metric"
                            " cannot handle")
    dims = 1 if one_d else 2

    def ints(value, default):
        value = default if value is None else value
        value = [value] * dims if isinstance(value, int) else list(value)
        if len(value) == 1:
            value = value * dims
        if not all(isinstance(v, int) for v in value):
            raise AnalysisError(f"input_covariance: graph call {node.name} has a non-constant convolution geometry")
        return tuple(value)

    groups = args.get("groups", 1)
    if not isinstance(groups, int):
        raise AnalysisError(f"input_covariance: graph call {node.name} has a non-constant number of groups")
    return {"one_d": one_d, "stride": ints(args.get("stride"), 1), "dilation": ints(args.get("dilation"), 1),
            "padding": ints(args.get("padding"), 0), "pad": None, "pad_mode": "constant", "groups": groups}


class _Tap(torch.fx.Interpreter):
    """Runs an exported graph node by node and hands each layer call's input and output to `on`."""

    def __init__(self, gm, by_node: dict, on):
        super().__init__(gm)
        self.by_node, self.on = by_node, on

    def run_node(self, n):
        uses = self.by_node.get(n)
        if not uses:
            return super().run_node(n)
        with self._set_current_node(n):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            result = getattr(self, n.op)(n.target, args, kwargs)
        for use in uses:
            self.on(use, args[use.input_arg], result)
        return result


@contextmanager
def _tapping(model: nn.Module, uses: list[_Use], on):
    """Call on(use, input, output) at every call of every use while the model runs: forward hooks on
    modules; for an exported graph, its forward runs through _Tap for the time being."""
    handles = [u.module.register_forward_hook(lambda m, i, o, u=u: on(u, i[0], o)) for u in uses if u.node is None]
    by_node: dict = {}
    for use in uses:
        if use.node is not None:
            by_node.setdefault(use.node, []).append(use)
    if by_node:
        tap = _Tap(model, by_node, on)
        model.forward = lambda *args: tap.run(*args)
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        if by_node:
            model.__dict__.pop("forward", None)


def _fold_chunks(calibration, fold_of: torch.Tensor, folds: int) -> list[tuple[torch.Tensor, int]]:
    """(inputs, fold) batches of at most the calibration's batch size, each within one fold, so a
    fold's statistic is summed over full batches."""
    chunks = []
    for g in range(folds):
        idx = (fold_of == g).nonzero().squeeze(1)
        for i in range(0, idx.numel(), calibration.batch_size):
            chunks.append((calibration.inputs[idx[i : i + calibration.batch_size]], g))
    return chunks


def _share_inputs(model: nn.Module, calibration, uses: list[_Use]) -> None:
    """Linear uses that read the very same input tensor (found on one sample) share one A."""
    linear = [u for u in uses if isinstance(u, _LinearUse)]
    if len(linear) < 2:
        return
    seen: dict[int, list[torch.Tensor]] = {}
    index = {id(use): i for i, use in enumerate(linear)}

    def keep(use, x, out):
        seen.setdefault(index[id(use)], []).append(x)

    x, _ = next(iter(calibration.batches()))
    with _tapping(model, linear, keep):
        forward(model, x[:1])
    leaders: list[tuple[list[torch.Tensor], _LinearUse]] = []
    for i, use in enumerate(linear):
        mine = seen.get(i, [])
        for theirs, leader in leaders:
            if (mine and len(mine) == len(theirs) and all(m is t for m, t in zip(mine, theirs, strict=True))
                    and leader.d_in() == use.d_in() and leader.weight().device == use.weight().device):
                use.stat = leader.stat
                leader.stat.users += 1
                break
        else:
            leaders.append((mine, use))


class _Stop(Exception):
    """Raised after the block a streamed stage works on: the rest of the model is not needed."""


@dataclass
class _StagePlan:
    """Which pass accumulates the input statistics.

    "whole": one forward of the whole model with every use hooked; all statistics live at once.
    "blocks": the model's repeated blocks (the largest nn.ModuleList of same-type modules holding
    layers) are worked on one at a time: stage s runs every calibration chunk through block s only
    (blocks before it replay their outputs captured in stage s − 1, the forward stops after it), so
    only block s's statistics and one block's boundary activations are resident; a last stage
    replays every block and runs what lies outside them (embeddings, LM head). With streamed weights
    the stages are the store's blocks, and block s's weights are resident from its stage until the
    statistics it completed have been turned into damages (the caller's work after each yield)."""

    mode: str
    blocks: list[nn.Module]
    stages: list[list[_Use]]
    statistic_bytes: int
    peak_statistic_bytes: int
    reason: str

    @classmethod
    def of(cls, model: nn.Module, uses: list[_Use], folds: int, streaming: str, store=None) -> _StagePlan:
        stats = {id(u.stat): (u.stat, u.shape(folds)) for u in uses}
        total = sum(st.nbytes(shape) for st, shape in stats.values())
        blocks, reason = (store.blocks, "weights streamed") if store is not None else _find_blocks(model, uses)
        want = store is not None or streaming == "blocks" or (streaming == "auto" and total > STREAM_ABOVE_BYTES)
        if streaming == "auto" and not want:
            reason = f"the statistics fit ({total / 2**20:.0f} MiB ≤ {STREAM_ABOVE_BYTES / 2**20:.0f} MiB)"
        if not (want and blocks):
            return cls("whole", [], [uses], total, total, reason)
        stage_of: dict[int, int] = {}
        for s, block in enumerate(blocks):
            for module in block.modules():
                stage_of.setdefault(id(module), s)
        stages: list[list[_Use]] = [[] for _ in range(len(blocks) + 1)]
        for use in uses:
            stages[stage_of.get(id(use.module), len(blocks))].append(use)
        peak = max(sum(st.nbytes(shape) for st, shape in {id(u.stat): (u.stat, u.shape(folds)) for u in stage}.values())
                   for stage in stages)
        why = f"{len(blocks)} repeated blocks" + (", weights streamed" if store is not None else "")
        return cls("blocks", blocks, stages, total, peak, why)

    def describe(self) -> dict:
        return {
            "input_statistics": self.mode,
            "blocks": len(self.blocks),
            "statistics_mib": round(self.statistic_bytes / 2**20, 1),
            "resident_statistics_mib": round(self.peak_statistic_bytes / 2**20, 1),
            "reason": self.reason,
        }

    def run(self, model: nn.Module, chunks, folds: int, progress, store=None):
        """Accumulate every stage; yields after each one (its statistics complete)."""
        carried: list = []
        last = len(self.stages) - 1
        for s, stage in enumerate(self.stages):
            holding = store.holding(self.blocks[s]) if store is not None and s < len(self.blocks) else nullcontext()
            with holding:
                carried = yield from self._stage(model, chunks, folds, progress, s, stage, carried, last)

    def _stage(self, model, chunks, folds, progress, s, stage, carried, last):
        """Stage s over every chunk; yields s once its statistics are complete, returns what the next stage replays."""
        for use in stage:
            use.start(folds)
        tapping = _tapping(model, stage, lambda use, x, out: use.capture(None, (x,), out))
        tapping.__enter__()
        outputs: list = []
        try:
            where = f"block {s + 1} of {len(self.blocks)}" if s < len(self.blocks) else "whole model"
            for c, (x, g) in enumerate(chunks):
                for use in stage:
                    use.fold = g
                with torch.no_grad():
                    self._chunk(model, x, s, carried[c] if carried else None, outputs)
                progress(f"{where}, batch {c + 1} of {len(chunks)} (input covariance)")
        finally:
            tapping.__exit__(None, None, None)
            _restore(self.blocks)
        carried = outputs
        for use in stage:
            use.stat.last = None
            if use.rows != use.stat.rows:
                raise AnalysisError(
                    f"input_covariance: a module grouped as sharing its input with another read a different"
                    f" input ({use.where()}); run with options.streaming='whole'"
                )
            use.stat.finished = True
        if s == last:
            carried = []
        yield s
        return carried

    def _chunk(self, model, x, s: int, replay, outputs: list) -> None:
        if not self.blocks:
            forward(model, x)
            return
        for j, block in enumerate(self.blocks):
            if j < s:
                block.forward = _replaying(replay)
            elif j == s:
                block.forward = _stopping(block, outputs)
        try:
            model(x.to(model_device(model)))
        except _Stop:
            return
        except Exception as exc:  # noqa: BLE001 - user models fail in arbitrary ways
            raise AnalysisError(
                f"model forward failed on a calibration batch of shape {list(x.shape)} (streamed block"
                f" {s + 1}): {type(exc).__name__}: {exc}; run with options.streaming='whole'"
            ) from exc


def _replaying(value):
    def replay(*args, **kwargs):
        return value

    return replay


def _stopping(block: nn.Module, outputs: list):
    original = type(block).forward.__get__(block)

    def run(*args, **kwargs):
        outputs.append(original(*args, **kwargs))
        raise _Stop

    return run


def _restore(blocks: list[nn.Module]) -> None:
    for block in blocks:
        block.__dict__.pop("forward", None)


def _find_blocks(model: nn.Module, uses: list[_Use]) -> tuple[list[nn.Module], str]:
    """The model's repeated blocks holding the most layer uses (workers.streaming.repeated_blocks)."""
    return repeated_blocks(model, {id(u.module) for u in uses if u.module is not None})


def _resident(model: nn.Module) -> dict:
    """metric_run's weight entries for a model whose weights are all resident."""
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"weights": "resident", "peak_resident_weight_bytes": size, "weight_bytes": size}


def _uses(model: nn.Module, info, weight: nn.Parameter) -> list[_Use]:
    """Every module of `model` whose weight is this layer's (every aten call taking it, in an exported
    graph); AnalysisError naming the layer when one of them is of a kind this metric cannot handle,
    or when nothing uses it."""
    from workers.hf import is_conv1d

    if isinstance(model, torch.fx.GraphModule):
        return _graph_uses(model, info, weight)
    found: list[_Use] = []
    for name, module in model.named_modules(remove_duplicate=False):
        if getattr(module, "weight", None) is not weight:
            continue
        if any(u.module is module for u in found):
            continue
        if is_conv1d(module) and weight.dim() == 2:
            found.append(_LinearUse(module, transposed=True))
        elif isinstance(module, nn.Linear):
            found.append(_LinearUse(module))
        elif isinstance(module, nn.Conv1d | nn.Conv2d):
            found.append(_ConvUse(module))
        elif isinstance(module, nn.Embedding):
            found.append(_EmbeddingUse(module))
        else:
            raise AnalysisError(
                f"input_covariance: layer {name or info.name!r} is a {type(module).__name__}, which this"
                " metric cannot handle (nn.Linear, Conv1D, nn.Conv1d, nn.Conv2d, nn.Embedding)"
            )
    if not found:
        raise AnalysisError(
            f"input_covariance: layer {info.name!r}: no module owns its weight (a functional use), so its"
            " inputs cannot be captured"
        )
    return found


def _graph_uses(gm: torch.fx.GraphModule, info, weight: nn.Parameter) -> list[_Use]:
    from workers.models import graph_layer_calls

    found: list[_Use] = []
    for node, _, kind, param in graph_layer_calls(gm):
        if param is not weight:
            continue
        if kind == "linear":
            found.append(_LinearUse(None, node=node, weight=weight))
        elif kind == "embedding":
            use = _EmbeddingUse(None, node=node, weight=weight)
            use.input_arg = 1  # aten.embedding(weight, indices)
            found.append(use)
        else:
            found.append(_ConvUse(None, node=node, weight=weight))
    if not found:
        raise AnalysisError(f"input_covariance: layer {info.name!r}: no call of the exported graph takes its weight")
    return found
