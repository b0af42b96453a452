"""Quantize rows to llama.cpp's k-quants (Q2_K .. Q6_K): a numpy port of ggml's reference quantizers.

Why a port: the `gguf` package (llama.cpp's own Python library) implements these types' *dequantize*
but raises NotImplementedError on their *quantize* (checked in gguf 0.19.0). Without an importance
matrix `llama-quantize` runs exactly the `quantize_row_qN_K_ref` functions of ggml/src/ggml-quants.c
(`quantize_qN_K` calls them when `quant_weights` is NULL), so this module follows those functions
step by step: the same scale searches (`make_qkx2_quants`, `make_q3_quants`, `make_qx_quants`), the
same 6/4-bit scale packing, FP16 super-block scales rounded to nearest-even, round-half-to-even
`nearest_int`, and float32 arithmetic. It writes the bytes of the ggml block structs; the round trip
decodes them with gguf's own `dequantize`, so a layout mistake here would show as damage, not hide.

Known difference: sums run in numpy's (pairwise) order instead of C's sequential one, which can
change the last bit of a float32 sum and, rarely, a scale choice. Imatrix quantization
(`quantize_row_qN_K_impl`) is not ported: plans are for `llama-quantize` without `--imatrix`.

Each function takes float32 super-blocks of shape (n, 256) and returns uint8 of shape (n, type_size).
"""

from __future__ import annotations

import numpy as np

QK_K = 256
_EPS = np.float32(1e-15)  # GROUP_MAX_EPS
F32 = np.float32


def _fp16(x: np.ndarray) -> np.ndarray:
    """The value an FP16 field stores (round to nearest-even), back in float32."""
    return np.asarray(x, dtype=F32).astype(np.float16).astype(F32)


def _half_bytes(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=F32).astype("<f2").view(np.uint8).reshape(-1, 2)


def _nearest(x: np.ndarray) -> np.ndarray:
    return np.rint(x).astype(np.int32)


def _signed_max(x: np.ndarray) -> np.ndarray:
    """Per row, the value of largest magnitude (the first one on ties), as ggml's loops pick it."""
    idx = np.argmax(np.abs(x), axis=1)
    return np.take_along_axis(x, idx[:, None], axis=1)[:, 0]


# The searches below work on blocks as columns, (n, blocks): a sum over axis 0 then runs in C's order
# (numpy reduces a non-contiguous axis row after row; a contiguous one pairwise, which can flip a
# scale choice), and each weight position is one contiguous row.
def _cols(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.T, dtype=F32)


def _sum(x: np.ndarray) -> np.ndarray:
    return x.sum(axis=0, dtype=F32)


def make_qkx2_quants(x, weights, nmax, rmin, rdelta, nstep, use_mad):
    """Asymmetric levels 0..nmax with a scale and a min per row of x: (scale, -min, L)."""
    x, w = _cols(x), _cols(weights)
    mn = np.minimum(x.min(axis=0), F32(0))
    mx = x.max(axis=0)
    sum_w = _sum(w)
    sum_x = _sum(w * x)
    flat = mx == mn
    top = F32(nmax)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = np.where(flat, F32(0), F32(nmax) / (mx - mn)).astype(F32)
        scale = np.where(flat, F32(0), F32(1) / iscale).astype(F32)
        L = np.clip(np.rint(iscale * (x - mn)), F32(0), top)

        def error(s, m, levels):
            diff = s * levels + m - x
            diff = np.abs(diff) if use_mad else diff * diff
            return _sum(w * diff)

        best = error(scale, mn, L)
        for step in range(nstep + 1):
            iscale = ((F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / (mx - mn)).astype(F32)
            laux = np.clip(np.rint(iscale * (x - mn)), F32(0), top)
            wl = w * laux
            sum_l = _sum(wl)
            sum_l2 = _sum(wl * laux)
            sum_xl = _sum(wl * x)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            positive = this_min > 0
            this_min = np.where(positive, F32(0), this_min).astype(F32)
            this_scale = np.where(positive, sum_xl / sum_l2, this_scale).astype(F32)
            cur = error(this_scale, this_min, laux)
            better = (D > 0) & (cur < best) & ~flat
            L = np.where(better, laux, L)
            best = np.where(better, cur, best)
            scale = np.where(better, this_scale, scale).astype(F32)
            mn = np.where(better, this_min, mn).astype(F32)
    L = np.where(flat, F32(0), L)
    scale = np.where(flat, F32(0), scale).astype(F32)
    return scale, (-mn).astype(F32), L.T.astype(np.int32)


def make_q3_quants(x, nmax):
    """Symmetric levels -nmax..nmax-1 refined by coordinate descent (do_rmse): (scale, L + nmax)."""
    mx = _signed_max(x.astype(F32))
    x = _cols(x)
    zero = np.abs(mx) < _EPS
    lo, hi = F32(-nmax), F32(nmax - 1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = np.where(zero, F32(0), F32(-nmax) / mx).astype(F32)
        L = np.clip(np.rint(iscale * x), lo, hi)
        w = x * x
        sumlx = _sum(w * x * L)
        suml2 = _sum(w * L * L)
        for _ in range(5):  # a row with no change in a pass would not change in the next one either
            for i in range(x.shape[0]):
                xi, wi, li = x[i], w[i], L[i]
                slx = (sumlx - wi * xi * li).astype(F32)
                sl2 = (suml2 - wi * li * li).astype(F32)
                new_l = np.clip(np.rint(xi * sl2 / slx), lo, hi)
                slx2 = (slx + wi * xi * new_l).astype(F32)
                sl22 = (sl2 + wi * new_l * new_l).astype(F32)
                accept = (slx > 0) & (new_l != li) & (sl22 > 0) & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22)
                L[i] = np.where(accept, new_l, li)
                sumlx = np.where(accept, slx2, sumlx).astype(F32)
                suml2 = np.where(accept, sl22, suml2).astype(F32)
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0)).astype(F32)
    L = np.where(zero, F32(0), L + F32(nmax))
    return np.where(zero, F32(0), scale).astype(F32), L.T.astype(np.int32)


def make_qx_quants(x, nmax):
    """Symmetric levels with the best of 19 trial scales, weights x² (rmse_type 1): (scale, L + nmax)."""
    mx = _signed_max(x.astype(F32))
    x = _cols(x)
    zero = np.abs(mx) < _EPS
    w = x * x
    lo, hi = F32(-nmax), F32(nmax - 1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = np.where(zero, F32(0), F32(-nmax) / mx).astype(F32)
        L = np.clip(np.rint(iscale * x), lo, hi)
        sumlx = _sum(w * x * L)
        suml2 = _sum(w * L * L)
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0)).astype(F32)
        best = (scale * sumlx).astype(F32)
        for step in range(-9, 10):
            if step == 0:
                continue
            iscale = (-(F32(nmax) + F32(0.1) * F32(step)) / mx).astype(F32)
            trial = np.clip(np.rint(iscale * x), lo, hi)
            slx = _sum(w * x * trial)
            sl2 = _sum(w * trial * trial)
            better = (sl2 > 0) & (slx * slx > best * sl2) & ~zero
            L = np.where(better, trial, L)
            scale = np.where(better, slx / sl2, scale).astype(F32)
            best = np.where(better, scale * slx, best).astype(F32)
    L = np.where(zero, F32(0), L + F32(nmax))
    return np.where(zero, F32(0), scale).astype(F32), L.T.astype(np.int32)


def _pack_2bit(L: np.ndarray) -> np.ndarray:
    """qs of Q2_K / Q3_K: per 128 weights, byte l holds L[l], L[l+32], L[l+64], L[l+96]."""
    halves = L.reshape(-1, 2, 4, 32).astype(np.uint8)
    packed = halves[:, :, 0] | (halves[:, :, 1] << 2) | (halves[:, :, 2] << 4) | (halves[:, :, 3] << 6)
    return packed.reshape(-1, 64)


def quantize_q2_k(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    sub = x.reshape(-1, 16).astype(F32)
    scales, mins, L = make_qkx2_quants(sub, np.abs(sub), 3, -0.5, 0.1, 15, True)
    scales, mins, L = scales.reshape(n, 16), mins.reshape(n, 16), L.reshape(n, 16, 16)
    max_scale = np.maximum(scales.max(axis=1), F32(0))
    max_min = np.maximum(mins.max(axis=1), F32(0))
    with np.errstate(divide="ignore", invalid="ignore"):
        ls = np.where(max_scale[:, None] > 0, _nearest((F32(15) / max_scale)[:, None] * scales), 0)
        lm = np.where(max_min[:, None] > 0, _nearest((F32(15) / max_min)[:, None] * mins), 0)
    sc = (ls.astype(np.uint8) & 0xFF) | ((lm.astype(np.uint8) << 4) & 0xFF)
    d = np.where(max_scale > 0, max_scale / F32(15), F32(0)).astype(F32)
    dmin = np.where(max_min > 0, max_min / F32(15), F32(0)).astype(F32)
    dj = _fp16(d)[:, None] * (sc & 0xF).astype(F32)
    mj = _fp16(dmin)[:, None] * (sc >> 4).astype(F32)
    xs = x.reshape(n, 16, 16).astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = np.clip(_nearest((xs + mj[:, :, None]) / dj[:, :, None]), 0, 3)
    L = np.where((dj != 0)[:, :, None], requant, L).reshape(n, QK_K)
    return np.concatenate([sc, _pack_2bit(L), _half_bytes(d), _half_bytes(dmin)], axis=1)


def quantize_q3_k(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    scales, L = make_q3_quants(x.reshape(-1, 16), 4)
    scales, L = scales.reshape(n, 16), L.reshape(n, 16, 16)
    max_scale = _signed_max(scales)
    has = max_scale != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(has, F32(-32) / max_scale, F32(0)).astype(F32)
        ls = np.clip(_nearest(iscale[:, None] * scales), -32, 31) + 32  # 0..63
        d = np.where(has, F32(1) / iscale, F32(0)).astype(F32)
    ls = np.where(has[:, None], ls, 0).astype(np.uint8)
    packed = np.zeros((n, 12), dtype=np.uint8)
    packed[:, :8] = (ls[:, :8] & 0xF) | ((ls[:, 8:] & 0xF) << 4)
    high = ls >> 4
    for j in range(16):
        packed[:, 8 + j % 4] |= high[:, j] << (2 * (j // 4))
    sc = ls.astype(np.int32) - 32
    dj = _fp16(d)[:, None] * sc.astype(F32)
    xs = x.reshape(n, 16, 16).astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = np.clip(_nearest(xs / dj[:, :, None]), -4, 3) + 4
    L = np.where((dj != 0)[:, :, None], requant, L).reshape(n, QK_K)
    high_bits = (L > 3).astype(np.uint8)  # bit j // 32 of hmask[j % 32]
    L = np.where(L > 3, L - 4, L)
    hmask = np.zeros((n, 32), dtype=np.uint8)
    for bit in range(8):
        hmask |= high_bits[:, bit * 32 : (bit + 1) * 32] << bit
    return np.concatenate([hmask, _pack_2bit(L), packed, _half_bytes(d)], axis=1)


def _scale_min_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """The 12-byte 6-bit scale/min packing of Q4_K / Q5_K (inverse of ggml's get_scale_min_k4)."""
    packed = np.zeros((ls.shape[0], 12), dtype=np.uint8)
    packed[:, 0:4] = ls[:, :4]
    packed[:, 4:8] = lm[:, :4]
    packed[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    packed[:, 0:4] |= (ls[:, 4:] >> 4) << 6
    packed[:, 4:8] |= (lm[:, 4:] >> 4) << 6
    return packed


def _q45_k(x: np.ndarray, nmax: int, rmin: float, nstep: int):
    n = x.shape[0]
    sub = x.reshape(-1, 32).astype(F32)
    av_x = np.sqrt(_sum(_cols(sub * sub)) / F32(32)).astype(F32)
    weights = av_x[:, None] + np.abs(sub)
    scales, mins, L = make_qkx2_quants(sub, weights, nmax, rmin, 0.1, nstep, False)
    scales, mins, L = scales.reshape(n, 8), mins.reshape(n, 8), L.reshape(n, 8, 32)
    max_scale = np.maximum(scales.max(axis=1), F32(0))
    max_min = np.maximum(mins.max(axis=1), F32(0))
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0)).astype(F32)
        inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0)).astype(F32)
    ls = np.minimum(63, _nearest(inv_scale[:, None] * scales)).astype(np.uint8)
    lm = np.minimum(63, _nearest(inv_min[:, None] * mins)).astype(np.uint8)
    d = (max_scale / F32(63)).astype(F32)
    dmin = (max_min / F32(63)).astype(F32)
    dj = _fp16(d)[:, None] * ls.astype(F32)
    mj = _fp16(dmin)[:, None] * lm.astype(F32)
    xs = x.reshape(n, 8, 32).astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = np.clip(_nearest((xs + mj[:, :, None]) / dj[:, :, None]), 0, nmax)
    L = np.where((dj != 0)[:, :, None], requant, L).reshape(n, QK_K)
    head = np.concatenate([_half_bytes(d), _half_bytes(dmin), _scale_min_k4(ls, lm)], axis=1)
    return head, L


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    head, L = _q45_k(x, 15, -1.0, 20)
    pairs = L.reshape(-1, 4, 2, 32).astype(np.uint8)  # per 64 weights: low nibble L[l], high L[l+32]
    qs = (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([head, qs], axis=1)


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    head, L = _q45_k(x, 31, -0.5, 15)
    pairs = L.reshape(-1, 4, 2, 32).astype(np.uint8)
    ql = ((pairs[:, :, 0] & 0xF) | ((pairs[:, :, 1] & 0xF) << 4)).reshape(-1, 128)
    qh = np.zeros((L.shape[0], 32), dtype=np.uint8)
    for k in range(4):  # chunk k of 64 weights: bit 2k for L[l], bit 2k+1 for L[l+32]
        qh |= (pairs[:, k, 0] >> 4) << (2 * k)
        qh |= (pairs[:, k, 1] >> 4) << (2 * k + 1)
    return np.concatenate([head, qh, ql], axis=1)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    scales, L = make_qx_quants(x.reshape(-1, 16), 32)
    scales, L = scales.reshape(n, 16), L.reshape(n, 16, 16)
    max_scale = _signed_max(scales)
    zero = np.abs(max_scale) < _EPS
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(zero, F32(0), F32(-128) / max_scale).astype(F32)
        d = np.where(zero, F32(0), F32(1) / iscale).astype(F32)
    sc = np.where(zero[:, None], 0, np.minimum(127, _nearest(iscale[:, None] * scales))).astype(np.int8)
    dj = _fp16(d)[:, None] * sc.astype(F32)
    xs = x.reshape(n, 16, 16).astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = np.clip(_nearest(xs / dj[:, :, None]), -32, 31) + 32
    L = np.where((dj != 0)[:, :, None], requant, L)
    L = np.where(zero[:, None, None], 0, L).reshape(n, 2, 4, 32).astype(np.uint8)
    ql = np.concatenate([(L[:, :, 0] & 0xF) | ((L[:, :, 2] & 0xF) << 4),
                         (L[:, :, 1] & 0xF) | ((L[:, :, 3] & 0xF) << 4)], axis=2).reshape(n, 128)
    qh = ((L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4) | ((L[:, :, 3] >> 4) << 6))
    return np.concatenate([ql, qh.reshape(n, 64), sc.view(np.uint8), _half_bytes(d)], axis=1)


QUANTIZE = {"Q2_K": quantize_q2_k, "Q3_K": quantize_q3_k, "Q4_K": quantize_q4_k, "Q5_K": quantize_q5_k,
            "Q6_K": quantize_q6_k}
