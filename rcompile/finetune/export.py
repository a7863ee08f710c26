"""Write fine-tuned weights back into the quantized model, in the storage it already uses:
new integer codes of the same type under the same DequantizeLinear, or the same Cast and Mul
by the step (same scales, so the same formats), or new float16 / float32 values. Nothing else
in the model changes, and the file keeps its size."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from rcompile.graph import per_axis, producers
from rcompile.passes.store_weights import INTEGER_TYPES, NUMPY_TYPES


def write_weights(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` whose graph values `values` (quantized already, within what their
    storage holds) are stored anew."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    made_by = producers(graph)
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    for name, value in values.items():
        source, node = name, made_by.get(name)
        while node is not None and node.op_type == "Reshape":
            # A wide layer's bias: the stored one's float64 value, flattened.
            source = node.input[0]
            node = made_by.get(source)
        if node is None:
            _replace(initializers[source], value.astype(np.float32))
        elif node.op_type == "DequantizeLinear":
            codes, scale = node.input[:2]
            steps = numpy_helper.to_array(initializers[scale]).astype(np.float64)
            _store_codes(initializers[codes], per_axis(node, steps, value.ndim), value)
        elif node.op_type == "Mul" and made_by.get(node.input[0], node).op_type == "Cast":
            codes = made_by[node.input[0]].input[0]
            scale = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float64)
            _store_codes(initializers[codes], scale, value)
        elif node.op_type == "Cast":
            stored = initializers[node.input[0]]
            narrow = value.astype(numpy_helper.to_array(stored).dtype)
            if not np.array_equal(narrow.astype(np.float32), value):
                raise ValueError(f"fine-tuned '{name}' is not exact in its stored type")
            _replace(stored, narrow)
        else:
            raise ValueError(f"cannot store fine-tuned '{name}' made by {node.op_type}")
    return result


def _store_codes(codes: onnx.TensorProto, scale: np.ndarray, value: np.ndarray) -> None:
    """New codes value / scale, in the type the old codes had."""
    integers = value.astype(np.float64) / scale
    if not np.array_equal(integers, np.rint(integers)):
        raise ValueError(f"fine-tuned values of '{codes.name}' are off their quantization grid")
    low, high = next((lo, hi) for t, lo, hi in INTEGER_TYPES if t == codes.data_type)
    if integers.min(initial=0) < low or integers.max(initial=0) > high:
        raise ValueError(f"fine-tuned codes of '{codes.name}' outgrow their stored type")
    _replace(codes, integers.astype(NUMPY_TYPES[codes.data_type]))


def _replace(old: onnx.TensorProto, values: np.ndarray) -> None:
    """The same initializer with new values, as raw bytes (as rcompile first stored it)."""
    old.CopyFrom(numpy_helper.from_array(values.reshape(tuple(old.dims)), old.name))
