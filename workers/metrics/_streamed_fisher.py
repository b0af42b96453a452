"""input_covariance's sampled-Fisher output weights when the weights are streamed (workers.streaming).

The whole-model backward needs every block's weights at once; this one holds one block at a time.
Per calibration batch: (1) a no-grad forward, blocks streamed, keeps each block's input and output
(on the CPU); (2) the model runs again with every block replaying its output, the last one's hidden
state a leaf, so the head's loss (labels drawn from the model, as in the whole pass) gives ∂ℓ/∂h_L;
(3) for each block in reverse, its weights loaded, its forward is recomputed from its stored input
(a leaf) and the gradient arriving from the block after it is pulled back through it; (4) the part
before the first block runs with the gradient at block 1's input. The tensor hooks on the layers'
outputs collect ∂ℓ/∂y exactly as in the whole pass, so B is the same up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workers.errors import AnalysisError
from workers.metrics._common import sample_labels
from workers.metrics._loss import model_device, output_of
from workers.metrics.input_covariance import _replaying, _restore, _Stop, _tapping


def _hidden(value):
    """A block's hidden state: its output tensor, or the first element of the tuple it returns."""
    return value if isinstance(value, torch.Tensor) else value[0]


def _with_hidden(value, hidden):
    return hidden if isinstance(value, torch.Tensor) else type(value)((hidden, *value[1:]))


def _move(value, device):
    if isinstance(value, torch.Tensor):
        return value.detach().to(device)
    if isinstance(value, tuple | list):
        return type(value)(_move(v, device) for v in value)
    return value


def _input_of(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def _substituting(block, hidden, captured: list):
    """The block's forward on `hidden` instead of what it is given; keeps its output and stops."""
    original = type(block).forward.__get__(block)

    def run(*args, **kwargs):
        if args:
            args = (hidden, *args[1:])
        else:
            kwargs = {**kwargs, "hidden_states": hidden}
        captured.append(original(*args, **kwargs))
        raise _Stop

    return run


def _input_capturing(block, captured: list):
    def run(*args, **kwargs):
        captured.append(_input_of(args, kwargs))
        raise _Stop

    return run


def _run(model, x, what: str) -> None:
    try:
        model(x)
    except _Stop:
        return
    except Exception as exc:  # noqa: BLE001 - user models fail in arbitrary ways
        raise AnalysisError(f"model forward failed on a calibration batch of shape {list(x.shape)} ({what},"
                            f" streamed weights): {type(exc).__name__}: {exc}") from exc


def streamed_output_weights(ctx, plan, batches: int, gen, progress) -> int:
    """Σ (∂ℓ/∂y_o)² for every use, as InputCovariance._output_weights, one block resident at a time;
    returns the calibration set's output rows."""
    store, model, blocks = ctx.model.bitplan_weights, ctx.model, plan.blocks
    stage_uses, outside = plan.stages[:-1], plan.stages[-1]
    device = model_device(model)
    rows = seen = 0
    for b, (x, _) in enumerate(ctx.calibration.batches()):
        if b >= batches:
            break
        x = x.to(device)
        inputs, outputs = _forward_keeping(model, store, blocks, x)
        g, rows_b = _head(model, blocks, outside, outputs, x, gen)
        rows += rows_b
        seen += x.shape[0]
        for j in reversed(range(len(blocks))):
            g = _block_backward(model, store, blocks, stage_uses[j], inputs, outputs, j, x, g)
        _prefix_backward(model, blocks, outside, x, g)
        del inputs, outputs, g
        progress(f"batch {b + 1} of {batches} (sampled Fisher, weights streamed)")
    return round(rows / max(seen, 1) * ctx.calibration.samples)


def _forward_keeping(model, store, blocks, x):
    """No-grad forward, blocks streamed; each block's input hidden state and output, on the CPU."""
    inputs, outputs = [None] * len(blocks), [None] * len(blocks)
    handles = []
    for j, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(
            lambda m, args, kwargs, j=j: inputs.__setitem__(j, _move(_input_of(args, kwargs), "cpu")), with_kwargs=True))
        handles.append(block.register_forward_hook(lambda m, args, out, j=j: outputs.__setitem__(j, _move(out, "cpu"))))
    try:
        with torch.no_grad(), store.streaming():
            _run(model, x, "streamed forward")
    finally:
        for h in handles:
            h.remove()
    if any(v is None for v in inputs + outputs):
        raise AnalysisError("input_covariance: not every repeated block ran in the forward, so its gradient cannot be"
                            " streamed; use options.weighting='none'")
    return inputs, outputs


def _leaf_keeper(leaves: list):
    def keep(use, inp, out):
        if out.requires_grad:  # its gradient is consumed as the backward passes it
            out.register_hook(lambda g, use=use: use.add_gradient(g))
        else:
            out.requires_grad_()
            leaves.append((use, out))

    return keep


def _head(model, blocks, outside, outputs, x, gen):
    """Blocks replayed, the last one's hidden state a leaf: the loss of labels drawn from the model,
    and its gradient at that leaf."""
    device = x.device
    last = _hidden(outputs[-1]).to(device).requires_grad_()
    for j, block in enumerate(blocks[:-1]):
        block.forward = _replaying(_move(outputs[j], device))
    blocks[-1].forward = _replaying(_with_hidden(_move(outputs[-1], device), last))
    try:
        with _tapping(model, outside, _leaf_keeper([])):  # before the blocks nothing reaches the loss here
            out = output_of(model, x, "a calibration batch")
    finally:
        _restore(blocks)
    logits = out.reshape(-1, out.shape[-1]).to(torch.float32)
    drawn = sample_labels(logits, gen)
    value = F.cross_entropy(logits, drawn, reduction="sum")
    (g,) = torch.autograd.grad(value, [last], allow_unused=True)
    return (torch.zeros_like(last) if g is None else g.detach()), out[..., 0].numel()


def _block_backward(model, store, blocks, uses, inputs, outputs, j, x, g_out):
    """Block j recomputed from its stored input (weights loaded), the gradient g_out pulled back
    through it; returns the gradient at its input."""
    device = x.device
    hidden = inputs[j].to(device).requires_grad_()
    captured: list = []
    leaves: list = []
    for i in range(j):
        blocks[i].forward = _replaying(_move(outputs[i], device))
    blocks[j].forward = _substituting(blocks[j], hidden, captured)
    with store.holding(blocks[j]):
        try:
            with _tapping(model, uses, _leaf_keeper(leaves)), torch.enable_grad():
                _run(model, x, f"block {j + 1} recomputed")
        finally:
            _restore(blocks)
        out = _hidden(captured[0])
        wrt = [hidden] + [t for _, t in leaves]
        grads = torch.autograd.grad(out, wrt, grad_outputs=g_out.to(out.device, out.dtype), allow_unused=True)
        for (use, t), gl in zip(leaves, grads[1:], strict=True):
            use.add_gradient(torch.zeros_like(t) if gl is None else gl.detach())
        g_in = torch.zeros_like(hidden) if grads[0] is None else grads[0].detach()
        del captured, out, grads, wrt, leaves
    return g_in


def _prefix_backward(model, blocks, outside, x, g_in) -> None:
    """What runs before the first block (embeddings), its outputs' gradients from the first block's."""
    captured: list = []
    leaves: list = []
    blocks[0].forward = _input_capturing(blocks[0], captured)
    try:
        with _tapping(model, outside, _leaf_keeper(leaves)), torch.enable_grad():
            _run(model, x, "embeddings")
    finally:
        _restore(blocks)
    if not leaves:
        return
    h0 = captured[0]
    grads = (torch.autograd.grad(h0, [t for _, t in leaves], grad_outputs=g_in.to(h0.device, h0.dtype),
                                 allow_unused=True) if h0.requires_grad else [None] * len(leaves))
    for (use, t), g in zip(leaves, grads, strict=True):
        use.add_gradient(torch.zeros_like(t) if g is None else g.detach())
