"""Small models, data and exact references for the workers tests (CPU, milliseconds each)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torch.func import functional_call

from workers.architectures import build_model

MLP = {"in_features": 6, "hidden": [8], "out_features": 4, "activation": "tanh"}
CNN = {"in_channels": 1, "image_size": 8, "channels": [4, 6], "kernel_size": 3, "num_classes": 3}


def blobs(samples: int = 64, features: int = 6, classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian clusters: a learnable task so trained weights are not flat noise."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, features, generator=gen) * 2
    targets = torch.randint(0, classes, (samples,), generator=gen)
    inputs = centres[targets] + torch.randn(samples, features, generator=gen)
    return inputs, targets


def trained_mlp(hyperparams: dict | None = None, *, steps: int = 150, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A fresh copy of an MLP trained on `blobs` (training is cached; each caller may mutate its copy)."""
    hp = dict(MLP if hyperparams is None else hyperparams)
    state, x, y = _trained_state(json.dumps(hp, sort_keys=True), steps, seed)
    model = build_model("mlp", hp)
    model.load_state_dict(state)
    return model.eval(), x.clone(), y.clone()


@functools.cache
def _trained_state(hp_json: str, steps: int, seed: int) -> tuple[dict, torch.Tensor, torch.Tensor]:
    hp = json.loads(hp_json)
    torch.manual_seed(seed)
    model = build_model("mlp", hp)
    x, y = blobs(features=hp["in_features"], classes=hp["out_features"], seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, x, y


def save_model(path: Path, model: nn.Module) -> str:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def save_dataset(path: Path, inputs: torch.Tensor, targets: torch.Tensor | None = None) -> str:
    tensors = {"inputs": inputs.contiguous()}
    if targets is not None:
        tensors["targets"] = targets.contiguous()
    save_file(tensors, str(path))
    return str(path)


def exact_traces(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, weights: list[str]) -> dict[str, torch.Tensor]:
    """Per-layer Hessian blocks by torch.autograd.functional.hessian on each flattened weight.

    Loss written independently of workers: mean cross-entropy, or with y None the mean
    KL(softmax(f_θ0) ‖ softmax(f_θ)) against the outputs at the current weights.
    """
    base = {k: v.detach().clone().to(torch.float64) for k, v in model.named_parameters()}
    x = x.to(torch.float64)
    with torch.no_grad():
        ref = torch.log_softmax(functional_call(model, base, (x,)), dim=-1)
    blocks = {}
    for name in weights:
        shape = base[name].shape

        def loss(flat: torch.Tensor, name: str = name, shape: torch.Size = shape) -> torch.Tensor:
            params = {**base, name: flat.reshape(shape)}
            out = functional_call(model, params, (x,))
            if y is not None:
                return F.cross_entropy(out, y)
            return F.kl_div(torch.log_softmax(out, -1), ref, reduction="batchmean", log_target=True)

        blocks[name] = torch.autograd.functional.hessian(loss, base[name].reshape(-1))
    return blocks
