"""The sums of products of a layer's integer codes, exact.

float64 BLAS computes them while every partial sum stays below 2**53 (checked from the codes'
magnitudes before it runs, whatever order BLAS adds in); larger sums are added in int64, and
beyond 2**62 (16-bit mini floats span some 80 bits) in Python integers."""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from rcompile.errors import ReferenceError

FLOAT64_EXACT = 2**53
INT64_EXACT = 2**62


def exact_product(contract, x: np.ndarray, w: np.ndarray, bound: float) -> np.ndarray:
    """`contract(x, w)` (a bilinear map of integer arrays) as exact int64; `bound` caps the
    magnitude of every partial sum."""
    if bound < FLOAT64_EXACT:
        return contract(x.astype(np.float64), w.astype(np.float64)).astype(np.int64)
    if bound >= INT64_EXACT:
        return contract(python_ints(x), python_ints(w))
    return contract(x.astype(np.int64), w.astype(np.int64))


def python_ints(values: np.ndarray) -> np.ndarray:
    """`values` as an object array of Python integers (numpy integers inside an object array
    still overflow at 2**63)."""
    return np.frompyfunc(int, 1, 1)(values).astype(object)


def sum_bound(x: np.ndarray, w: np.ndarray, reduce_axes: tuple[int, ...]) -> float:
    """max|x| times the largest sum of |w| over the reduced axes of `w`: no partial sum of
    products of x and w can exceed it."""
    if x.size == 0 or w.size == 0:
        return 0.0
    largest = float(np.abs(x).max())
    return largest * float(np.abs(w.astype(np.float64)).sum(axis=reduce_axes).max())


def conv(x: np.ndarray, w: np.ndarray, attributes: dict) -> np.ndarray:
    """ONNX Conv of integer codes x [N, C, *S] and w [O, C/group, *K], without bias."""
    spatial = x.ndim - 2
    kernel = w.shape[2:]
    strides = attributes.get("strides", [1] * spatial)
    dilations = attributes.get("dilations", [1] * spatial)
    group = attributes.get("group", 1)
    pads = _pads(attributes, x.shape[2:], kernel, strides, dilations)
    padded = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + spatial]) for i in range(spatial)])
    reach = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    windows = sliding_window_view(padded, reach, axis=tuple(range(2, 2 + spatial)))
    picks = (slice(None), slice(None))
    picks += tuple(slice(None, None, s) for s in strides)
    picks += tuple(slice(None, None, d) for d in dilations)
    windows = windows[picks]
    n, c = x.shape[:2]
    out = windows.shape[2 : 2 + spatial]
    windows = windows.reshape(n, group, c // group, *out, *kernel)
    weights = w.reshape(group, w.shape[0] // group, *w.shape[1:])
    letters = "ijklm"[:spatial]
    kernels = "pqrst"[:spatial]
    equation = f"ngc{letters}{kernels},goc{kernels}->ngo{letters}"

    def contract(a, b):
        if a.dtype != object:
            return np.einsum(equation, a, b, optimize=True)
        return _grouped_matmul(a, b, spatial)

    bound = sum_bound(x, w, tuple(range(1, w.ndim)))
    return exact_product(contract, windows, weights, bound).reshape(n, w.shape[0], *out)


def _grouped_matmul(windows: np.ndarray, weights: np.ndarray, spatial: int) -> np.ndarray:
    """The convolution's contraction as one matmul per group, for Python integers (numpy's
    einsum passes them through C longs; matmul keeps them exact). windows [N, G, C, *out,
    *K], weights [G, O, C, *K] -> [N, G, O, *out]."""
    n, groups = windows.shape[:2]
    out = windows.shape[3 : 3 + spatial]
    order = (1, 0, *range(3, 3 + spatial), 2, *range(3 + spatial, windows.ndim))
    rows = windows.transpose(order).reshape(groups, n * math.prod(out), -1)
    columns = weights.reshape(groups, weights.shape[1], -1).transpose(0, 2, 1)
    products = np.matmul(rows, columns).reshape(groups, n, *out, weights.shape[1])
    return np.moveaxis(np.moveaxis(products, 0, 1), -1, 2)


def _pads(attributes, size, kernel, strides, dilations) -> list[int]:
    spatial = len(kernel)
    mode = attributes.get("auto_pad", "NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode in ("NOTSET", ""):
        return list(attributes.get("pads", [0] * 2 * spatial))
    if mode == "VALID":
        return [0] * 2 * spatial
    begins, ends = [], []
    for length, k, s, d in zip(size, kernel, strides, dilations, strict=True):
        total = max((-(-length // s) - 1) * s + (k - 1) * d + 1 - length, 0)
        small, large = total // 2, total - total // 2
        begins.append(large if mode == "SAME_LOWER" else small)
        ends.append(small if mode == "SAME_LOWER" else large)
    return begins + ends


def matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """ONNX MatMul (numpy broadcasting) of integer codes."""
    reduce_axes = (w.ndim - 2,) if w.ndim > 1 else (0,)
    return exact_product(np.matmul, x, w, sum_bound(x, w, reduce_axes))


def conv_transpose(x: np.ndarray, w: np.ndarray, node) -> np.ndarray:
    """ONNX ConvTranspose of integer codes x [N, C, *S] and w [C, O/group, *K], without
    bias, by `onnx.reference` on float64 (exact below 2**53)."""
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    bound = sum_bound(x, np.moveaxis(w, 1, 0), tuple(range(1, w.ndim)))
    if bound >= FLOAT64_EXACT:
        raise ReferenceError(
            f"ConvTranspose {node.name}: its sums of products pass 2**53 steps, which the "
            "reference computes in float64 and cannot hold exactly (16-bit and wider mini "
            "floats); give the layer a narrower format to verify it"
        )
    layer = helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="layer")
    layer.attribute.extend(node.attribute)
    tensors = [helper.make_tensor_value_info(n, TensorProto.DOUBLE, None) for n in "xwy"]
    model = helper.make_model(helper.make_graph([layer], "layer", tensors[:2], tensors[2:]))
    feeds = {"x": x.astype(np.float64), "w": w.astype(np.float64)}
    return ReferenceEvaluator(model).run(None, feeds)[0].astype(np.int64)
