"""A real, small, offline model and data set: an MLP or CNN trained on scikit-learn's 8×8 digits.

Used by the demo, the tests and the benchmarks, so every one of them exercises a trained network
(flat random weights would make every layer look alike).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class DigitsModel:
    architecture: str
    hyperparams: dict
    accuracy: float
    weights_path: Path
    calibration_path: Path
    evaluation_path: Path


def digits_arrays(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test), inputs scaled to [0, 1] as float32, a fixed 75/25 split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.75 * len(x))
    tr, te = order[:cut], order[cut:]
    return x[tr], y[tr], x[te], y[te]


def train_digits(
    out_dir: Path, *, architecture: str = "mlp", epochs: int = 40, calibration_samples: int = 256, seed: int = 0
) -> DigitsModel:
    """Train on the digits, write weights (safetensors), calibration and evaluation sets to `out_dir`."""
    import torch
    from safetensors.torch import save_file

    from workers.architectures import build_model

    torch.manual_seed(seed)
    x_tr, y_tr, x_te, y_te = digits_arrays(seed)
    if architecture == "mlp":
        hyper = {"in_features": 64, "hidden": [128, 64], "out_features": 10, "activation": "relu"}
        shape = (-1, 64)
    elif architecture == "cnn":
        hyper = {"in_channels": 1, "image_size": 8, "channels": [16, 32], "kernel_size": 3, "num_classes": 10}
        shape = (-1, 1, 8, 8)
    else:
        raise ValueError(f"architecture: digits demo knows 'mlp' and 'cnn', not {architecture!r}")
    model = build_model(architecture, hyper)
    xt, yt = torch.from_numpy(x_tr).reshape(shape), torch.from_numpy(y_tr)
    xe, ye = torch.from_numpy(x_te).reshape(shape), torch.from_numpy(y_te)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(xe).argmax(1) == ye).float().mean())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / f"digits_{architecture}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    calib = out_dir / "digits_calibration.safetensors"
    n = min(calibration_samples, len(xt))
    save_file({"inputs": xt[:n].contiguous(), "targets": yt[:n].contiguous()}, str(calib))
    evaluation = out_dir / "digits_evaluation.safetensors"
    save_file({"inputs": xe.contiguous(), "targets": ye.contiguous()}, str(evaluation))
    return DigitsModel(architecture, hyper, accuracy, weights, calib, evaluation)
