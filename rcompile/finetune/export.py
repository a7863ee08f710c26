"""Write fine-tuned weights back into the quantized model, in the storage it already uses:
new integer codes under the same DequantizeLinear, or the same Cast and Mul by the step (same
scales, so the same formats), or new float16 / float32 values. Nothing else in the model
changes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rcompile.graph import per_axis, producers

# Integer code types from narrowest to widest, for codes that outgrow their old type.
WIDER = (TensorProto.INT4, TensorProto.INT8, TensorProto.INT16, TensorProto.INT32)
_LIMITS = {
    TensorProto.INT4: 7,
    TensorProto.INT8: 127,
    TensorProto.INT16: 2**15 - 1,
    TensorProto.INT32: 2**31 - 1,
}


def write_weights(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` whose graph values `values` (quantized already) are stored anew."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    made_by = producers(graph)
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    for name, value in values.items():
        node = made_by.get(name)
        if node is None:
            _replace(initializers[name], numpy_helper.from_array(value.astype(np.float32), name))
        elif node.op_type == "DequantizeLinear":
            codes, scale, zero = node.input[:3]
            steps = numpy_helper.to_array(initializers[scale]).astype(np.float64)
            _store_codes(codes, per_axis(node, steps, value.ndim), value, initializers)
            _retype(initializers[zero], initializers[codes].data_type)
        elif node.op_type == "Mul" and made_by.get(node.input[0], node).op_type == "Cast":
            codes = made_by[node.input[0]].input[0]
            scale = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float64)
            _store_codes(codes, scale, value, initializers)
        elif node.op_type == "Cast":
            half = value.astype(np.float16)
            if not np.array_equal(half.astype(np.float32), value):
                raise ValueError(f"fine-tuned '{name}' is not exact in float16")
            _replace(initializers[node.input[0]], numpy_helper.from_array(half, node.input[0]))
        else:
            raise ValueError(f"cannot store fine-tuned '{name}' made by {node.op_type}")
    return result


def _store_codes(codes_name: str, scale: np.ndarray, value: np.ndarray, initializers) -> None:
    """New codes value / scale in `codes_name`, widened where they outgrow its type."""
    codes = value.astype(np.float64) / scale
    if not np.array_equal(codes, np.rint(codes)):
        raise ValueError(f"fine-tuned values of '{codes_name}' are off their quantization grid")
    data_type = initializers[codes_name].data_type
    largest = np.abs(codes).max(initial=0)
    while largest > _LIMITS[data_type]:
        data_type = WIDER[WIDER.index(data_type) + 1]
    integers = codes.astype(np.int64)
    _replace(
        initializers[codes_name],
        helper.make_tensor(codes_name, data_type, integers.shape, integers.ravel().tolist()),
    )


def _retype(zero: onnx.TensorProto, data_type: int) -> None:
    """A zero point in the (possibly widened) type of its codes."""
    values = numpy_helper.to_array(zero).astype(np.int64)
    _replace(zero, helper.make_tensor(zero.name, data_type, values.shape, values.ravel().tolist()))


def _replace(old: onnx.TensorProto, new: onnx.TensorProto) -> None:
    old.CopyFrom(new)
