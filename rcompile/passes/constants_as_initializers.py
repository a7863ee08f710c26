"""Constant nodes as initializers. Exporters such as Paddle's give weights, BatchNormalization
statistics and clamp bounds as `Constant` nodes; as initializers, every pass finds them in
one place, quantized weights replace them, and folding and dead-value removal see them."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from rcompile.passes import PassResult

_LISTS = {"value_floats": np.float32, "value_ints": np.int64}
_SCALARS = {"value_float": np.float32, "value_int": np.int64}


def constants_as_initializers(model: onnx.ModelProto) -> PassResult:
    """`model` with the main graph's numeric Constant nodes replaced by initializers of the
    same name (string and sparse constants stay nodes)."""
    tensors = {}
    for node in model.graph.node:
        if _is_constant(node):
            tensor = _tensor(node.attribute[0], node.output[0])
            if tensor is not None:
                tensors[node.output[0]] = tensor
    if not tensors:
        return PassResult(model, False)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    kept = [node for node in graph.node if not (_is_constant(node) and node.output[0] in tensors)]
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(tensors.values())
    return PassResult(result, True)


def _is_constant(node: onnx.NodeProto) -> bool:
    standard = node.domain in ("", "ai.onnx")
    return node.op_type == "Constant" and standard and len(node.attribute) == 1


def _tensor(attribute: onnx.AttributeProto, name: str) -> onnx.TensorProto | None:
    if attribute.name == "value" and attribute.t.data_type != onnx.TensorProto.STRING:
        tensor = onnx.TensorProto()
        tensor.CopyFrom(attribute.t)
        tensor.name = name
        return tensor
    if attribute.name in _LISTS:
        values = onnx.helper.get_attribute_value(attribute)
        return numpy_helper.from_array(np.array(values, _LISTS[attribute.name]), name)
    if attribute.name in _SCALARS:
        values = onnx.helper.get_attribute_value(attribute)
        return numpy_helper.from_array(np.array(values, _SCALARS[attribute.name]), name)
    return None
