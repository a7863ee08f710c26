"""ONNX operators in PyTorch: a focused set, enough for the models in models/, the shared
EfficientNet-Lite and the third-party corpus (PP-OCR detector, recogniser and classifier,
YOLOv8n): convolutions, fully connected layers, activations, pooling, resizing, reductions,
and the shape arithmetic of exported models, with ONNX semantics (opset 21).

Each handler takes the node, its input tensors (None for an omitted optional input) and its
attributes, and returns its outputs. An operator outside the set is an error naming it.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from rcompile.errors import UserError


class UnsupportedOperator(UserError):
    """The fine-tuning engine does not implement an operator of the model."""


def _optional(inputs: list, count: int) -> list:
    """The inputs padded with None up to `count` (omitted optional inputs)."""
    return [*inputs, *([None] * (count - len(inputs)))][:count]


def _ints(tensor: torch.Tensor) -> list[int]:
    return [int(v) for v in tensor.reshape(-1).tolist()]


def _pad_spatial(x: torch.Tensor, pads: list[int], value: float = 0.0) -> torch.Tensor:
    """ONNX pads (begin..., end...) over the spatial axes, as F.pad wants them (last first)."""
    half = len(pads) // 2
    flat = []
    for axis in reversed(range(half)):
        flat += [pads[axis], pads[axis + half]]
    return F.pad(x, flat, value=value) if any(flat) else x


def conv(node, inputs, attrs):
    x, weight, bias = _optional(inputs, 3)
    spatial = weight.dim() - 2
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise UnsupportedOperator(f"node '{node.name}': Conv auto_pad is not supported")
    x = _pad_spatial(x, list(attrs.get("pads", [0] * 2 * spatial)))
    function = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[spatial]
    return [
        function(
            x,
            weight,
            bias,
            stride=attrs.get("strides", 1),
            dilation=attrs.get("dilations", 1),
            groups=attrs.get("group", 1),
        )
    ]


def conv_transpose(node, inputs, attrs):
    x, weight, bias = _optional(inputs, 3)
    spatial = weight.dim() - 2
    pads = list(attrs.get("pads", [0] * 2 * spatial))
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or "output_shape" in attrs:
        raise UnsupportedOperator(
            f"node '{node.name}': ConvTranspose with auto_pad or output_shape is not supported"
        )
    if pads[:spatial] != pads[spatial:]:
        raise UnsupportedOperator(f"node '{node.name}': ConvTranspose pads must be symmetric")
    function = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[spatial]
    return [
        function(
            x,
            weight,
            bias,
            stride=attrs.get("strides", 1),
            padding=pads[:spatial],
            output_padding=attrs.get("output_padding", 0),
            groups=attrs.get("group", 1),
            dilation=attrs.get("dilations", 1),
        )
    ]


def resize(node, inputs, attrs):
    """Nearest-neighbour upsampling by whole factors (every coordinate mode but
    align_corners gives repeated pixels) and bilinear resizing (half_pixel,
    pytorch_half_pixel or align_corners), on the spatial axes."""
    x, _, scales, sizes = _optional(inputs, 4)
    mode = _text(attrs.get("mode", b"nearest"))
    transform = _text(attrs.get("coordinate_transformation_mode", b"half_pixel"))
    if sizes is not None and sizes.numel():
        size = _ints(sizes)[2:]
    else:
        factors = [float(v) for v in scales.reshape(-1).tolist()]
        if factors[:2] != [1.0, 1.0]:
            raise UnsupportedOperator(f"node '{node.name}': Resize of the batch or channel axis")
        size = [math.floor(n * f) for n, f in zip(x.shape[2:], factors[2:], strict=True)]
    if mode == "nearest":
        factors = [out / n for out, n in zip(size, x.shape[2:], strict=True)]
        if transform == "align_corners" or any(f != int(f) or f < 1 for f in factors):
            raise UnsupportedOperator(
                f"node '{node.name}': nearest Resize only by whole factors, not align_corners"
            )
        for axis, factor in enumerate(factors, start=2):
            x = torch.repeat_interleave(x, int(factor), dim=axis)
        return [x]
    if mode == "linear" and transform in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        kind = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
        return [F.interpolate(x, size, mode=kind, align_corners=transform == "align_corners")]
    raise UnsupportedOperator(f"node '{node.name}': Resize mode {mode} with {transform}")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def reduce_mean(node, inputs, attrs):
    x, axes = _optional(inputs, 2)
    axes = _ints(axes) if axes is not None else list(attrs.get("axes", []))
    if not axes:
        if attrs.get("noop_with_empty_axes", 0):
            return [x]
        axes = list(range(x.dim()))
    return [x.mean(dim=tuple(axes), keepdim=bool(attrs.get("keepdims", 1)))]


def split(node, inputs, attrs):
    x, sizes = _optional(inputs, 2)
    axis = attrs.get("axis", 0) % x.dim()
    if sizes is not None:
        parts = _ints(sizes)
    elif "split" in attrs:
        parts = list(attrs["split"])
    else:
        count = attrs.get("num_outputs", len(node.output))
        chunk = math.ceil(x.shape[axis] / count)
        parts = [min(chunk, x.shape[axis] - i * chunk) for i in range(count)]
    return list(torch.split(x, parts, dim=axis))


def expand(node, inputs, attrs):
    x, shape = inputs
    return [x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(_ints(shape))))]


def range_(node, inputs, attrs):
    start, limit, delta = inputs
    return [torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)]


def gemm(node, inputs, attrs):
    a, b, c = _optional(inputs, 3)
    if attrs.get("transA", 0):
        a = a.transpose(0, 1)
    if attrs.get("transB", 0):
        b = b.transpose(0, 1)
    y = attrs.get("alpha", 1.0) * (a @ b)
    return [y if c is None else y + attrs.get("beta", 1.0) * c]


def pool(node, inputs, attrs):
    x = inputs[0]
    kernel = list(attrs["kernel_shape"])
    pads = list(attrs.get("pads", [0] * 2 * len(kernel)))
    stride = attrs.get("strides", kernel)
    ceil = bool(attrs.get("ceil_mode", 0))
    if node.op_type == "MaxPool":
        x = _pad_spatial(x, pads, value=-math.inf)
        return [F.max_pool2d(x, kernel, stride, ceil_mode=ceil)]
    x = _pad_spatial(x, pads)
    return [
        F.avg_pool2d(
            x,
            kernel,
            stride,
            ceil_mode=ceil,
            count_include_pad=bool(attrs.get("count_include_pad", 0)),
        )
    ]


def clip(node, inputs, attrs):
    x, low, high = _optional(inputs, 3)
    return [
        torch.clamp(x, None if low is None else float(low), None if high is None else float(high))
    ]


def batch_normalization(node, inputs, attrs):
    """Inference mode: (x - mean) * scale / sqrt(var + epsilon) + bias, per channel (axis 1).
    A sim model rounds with it (scale 1, variance 1, epsilon 0: an exact addition)."""
    x, scale, bias, mean, var = inputs
    shape = [1, -1] + [1] * (x.dim() - 2)
    factor = (scale / torch.sqrt(var + attrs.get("epsilon", 1e-5))).reshape(shape)
    return [(x - mean.reshape(shape)) * factor + bias.reshape(shape)]


def hard_sigmoid(node, inputs, attrs):
    alpha, beta = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
    return [torch.clamp(inputs[0] * alpha + beta, 0.0, 1.0)]


def reshape(node, inputs, attrs):
    x, shape = inputs
    dims = _ints(shape)
    dims = [
        x.shape[i] if d == 0 and not attrs.get("allowzero", 0) else d for i, d in enumerate(dims)
    ]
    return [x.reshape(dims)]


def flatten(node, inputs, attrs):
    x = inputs[0]
    axis = attrs.get("axis", 1) % max(x.dim(), 1)
    return [x.reshape(math.prod(x.shape[:axis]), -1)]


def pad(node, inputs, attrs):
    x, pads, value, axes = _optional(inputs, 4)
    if attrs.get("mode", b"constant") not in (b"constant", "constant"):
        raise UnsupportedOperator(f"node '{node.name}': only constant Pad is supported")
    pads = _ints(pads)
    axes = _ints(axes) if axes is not None else list(range(x.dim()))
    full = [0] * (2 * x.dim())
    for i, axis in enumerate(axes):
        full[axis % x.dim()], full[axis % x.dim() + x.dim()] = pads[i], pads[i + len(axes)]
    flat = []
    for axis in reversed(range(x.dim())):
        flat += [full[axis], full[axis + x.dim()]]
    return [F.pad(x, flat, value=0.0 if value is None else float(value))]


def slice_(node, inputs, attrs):
    x, starts, ends, axes, steps = _optional(inputs, 5)
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes) if axes is not None else list(range(len(starts)))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        size = x.shape[axis]
        start, end = start + size if start < 0 else start, end + size if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), size), min(max(end, 0), size)
        else:
            start, end = min(max(start, 0), size - 1), min(max(end, -1), size - 1)
        index = torch.arange(start, end, step, dtype=torch.int64)
        x = torch.index_select(x, axis % x.dim(), index)
    return [x]


def cast(node, inputs, attrs):
    dtype = onnx.helper.tensor_dtype_to_np_dtype(attrs["to"])
    return [inputs[0].to(torch.from_numpy(np.zeros(0, dtype)).dtype)]


def dequantize(node, inputs, attrs):
    codes, scale, zero = _optional(inputs, 3)
    axis = attrs.get("axis", 1)
    values = codes.to(torch.float32) - (
        0 if zero is None else zero.to(torch.float32).reshape(_shape(scale, codes, axis))
    )
    return [values * scale.reshape(_shape(scale, codes, axis))]


def _shape(scale: torch.Tensor, codes: torch.Tensor, axis: int) -> list[int]:
    if scale.dim() == 0:
        return []
    shape = [1] * codes.dim()
    shape[axis % codes.dim()] = scale.numel()
    return shape


def constant(node, inputs, attrs):
    for name in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if name in attrs:
            value = attrs[name]
            array = (
                onnx.numpy_helper.to_array(value)
                if isinstance(value, onnx.TensorProto)
                else np.array(value)
            )
            return [torch.from_numpy(np.array(array))]
    raise UnsupportedOperator(f"node '{node.name}': Constant without a supported value")


def constant_of_shape(node, inputs, attrs):
    value = attrs.get("value")
    array = np.array(
        onnx.numpy_helper.to_array(value) if value is not None else np.zeros(1, np.float32)
    )
    return [
        torch.full(
            _ints(inputs[0]), array.reshape(-1)[0].item(), dtype=torch.from_numpy(array).dtype
        )
    ]


HANDLERS = {
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "Resize": resize,
    "ReduceMean": reduce_mean,
    "Split": split,
    "Expand": expand,
    "Range": range_,
    "Max": lambda n, i, a: [functools.reduce(torch.maximum, i)],
    "Min": lambda n, i, a: [functools.reduce(torch.minimum, i)],
    "Pow": lambda n, i, a: [torch.pow(i[0], i[1])],
    "Sqrt": lambda n, i, a: [torch.sqrt(i[0])],
    "Gemm": gemm,
    "MatMul": lambda n, i, a: [torch.matmul(i[0], i[1])],
    "Relu": lambda n, i, a: [F.relu(i[0])],
    "Sigmoid": lambda n, i, a: [torch.sigmoid(i[0])],
    "Tanh": lambda n, i, a: [torch.tanh(i[0])],
    "Clip": clip,
    "BatchNormalization": batch_normalization,
    "HardSigmoid": hard_sigmoid,
    "MaxPool": pool,
    "AveragePool": pool,
    "GlobalAveragePool": lambda n, i, a: [i[0].mean(dim=tuple(range(2, i[0].dim())), keepdim=True)],
    "Flatten": flatten,
    "Reshape": reshape,
    "Transpose": lambda n, i, a: [
        i[0].permute(*a["perm"]) if "perm" in a else i[0].permute(*reversed(range(i[0].dim())))
    ],
    "Concat": lambda n, i, a: [torch.cat(i, dim=a["axis"])],
    "Add": lambda n, i, a: [i[0] + i[1]],
    "Sub": lambda n, i, a: [i[0] - i[1]],
    "Mul": lambda n, i, a: [i[0] * i[1]],
    "Div": lambda n, i, a: [i[0] / i[1]],
    "Softmax": lambda n, i, a: [torch.softmax(i[0], dim=a.get("axis", -1))],
    "Pad": pad,
    "Slice": slice_,
    "Shape": lambda n, i, a: [
        torch.tensor(list(i[0].shape)[a.get("start", 0) : a.get("end", None)], dtype=torch.int64)
    ],
    "Gather": lambda n, i, a: [
        torch.index_select(i[0], a.get("axis", 0), i[1].reshape(-1)).reshape(
            list(i[0].shape[: a.get("axis", 0)])
            + list(i[1].shape)
            + list(i[0].shape[a.get("axis", 0) + 1 :])
        )
    ],
    "Unsqueeze": lambda n, i, a: [i[0].reshape(_unsqueezed(i[0], _ints(i[1])))],
    "Squeeze": lambda n, i, a: [i[0].squeeze(tuple(_ints(i[1]))) if len(i) > 1 else i[0].squeeze()],
    "Cast": cast,
    "Identity": lambda n, i, a: [i[0]],
    "Constant": constant,
    "ConstantOfShape": constant_of_shape,
    "DequantizeLinear": dequantize,
}


def _unsqueezed(x: torch.Tensor, axes: list[int]) -> list[int]:
    rank = x.dim() + len(axes)
    shape = list(x.shape)
    for axis in sorted(a % rank for a in axes):
        shape.insert(axis, 1)
    return shape


def handler(node: onnx.NodeProto):
    try:
        return HANDLERS[node.op_type]
    except KeyError:
        raise UnsupportedOperator(
            f"node '{node.name}': operator {node.op_type} is not supported by the fine-tuning "
            "engine"
        ) from None
