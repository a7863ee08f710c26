"""Clamps between integer layers clip the codes themselves (the search's evaluation form).

Between two layers that onnxruntime runs as integer kernels, a ReLU6 reads dequantized
values and its result is quantized again with the same scale and zero point:
DequantizeLinear -> Clip -> QuantizeLinear, three passes over the data in float. Where the
clamp's bounds are whole codes, clipping the codes is the same: dequantizing is exact and
increasing, and quantizing a dequantized code gives it back. So the Clip takes the codes and
the bounds as codes, one pass over 8-bit data, and the DequantizeLinear and QuantizeLinear
become Identity nodes, which onnxruntime drops (they keep their names: the search cuts
networks at nodes by name).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from rcompile.graph import Constants, consumers, output_names, producers
from rcompile.passes.layers import clamp_bounds

CODE_TYPES = {onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.INT8: np.int8}


def clip_codes(model: onnx.ModelProto) -> int:
    """Rewrite every such clamp of `model` in place; return how many were."""
    graph = model.graph
    constants = Constants(graph)
    made_by = producers(graph)
    read_by = consumers(graph)
    outputs = output_names(graph)
    retyped: dict[str, int] = {}
    changed = 0
    for clamp in list(graph.node):
        match = _match(graph, clamp, constants, made_by, read_by, outputs)
        if match is None:
            continue
        dequantize, quantizers, code_type, bounds = match
        names = (f"{clamp.name}_low_code", f"{clamp.name}_high_code")
        low, high = (
            numpy_helper.from_array(np.array(bound, CODE_TYPES[code_type]), name)
            for bound, name in zip(bounds, names, strict=True)
        )
        graph.initializer.extend([low, high])
        _become_identity(dequantize, dequantize.input[0])
        clamp.op_type = "Clip"
        clamp.input[:] = [dequantize.output[0], low.name, high.name]
        for quantizer in quantizers:
            _become_identity(quantizer, clamp.output[0])
        retyped.update(dict.fromkeys((dequantize.output[0], clamp.output[0]), code_type))
        changed += 1
    _set_types(graph, retyped)
    return changed


def _match(graph, clamp, constants, made_by, read_by, outputs):
    """(DequantizeLinear, QuantizeLinears, code type, bounds as codes) where `clamp` sits
    between a per-tensor DequantizeLinear it alone reads and QuantizeLinears of the same
    scale and zero point, with bounds on whole codes; else None."""
    bounds = clamp_bounds(graph, clamp, constants)
    dequantize = made_by.get(clamp.input[0]) if clamp.input else None
    if bounds is None or dequantize is None or dequantize.op_type != "DequantizeLinear":
        return None
    if len(read_by[dequantize.output[0]]) != 1 or clamp.output[0] in outputs:
        return None
    quantizers = read_by[clamp.output[0]]
    if not quantizers or any(
        q.op_type != "QuantizeLinear"
        or q.attribute
        or list(q.input[1:]) != list(dequantize.input[1:])
        for q in quantizers
    ):
        return None
    if dequantize.attribute or len(dequantize.input) != 3:
        return None
    scale, zero_point = constants(dequantize.input[1]), constants(dequantize.input[2])
    if scale is None or zero_point is None or scale.size != 1:
        return None
    code_type = helper.np_dtype_to_tensor_dtype(zero_point.dtype)
    if code_type not in CODE_TYPES or zero_point.size != 1:
        return None
    info = np.iinfo(CODE_TYPES[code_type])
    codes = []
    for bound, limit in zip(bounds, (info.min, info.max), strict=True):
        code = limit if math.isinf(bound) else bound / float(scale) + int(zero_point)
        if not float(code).is_integer():
            return None
        codes.append(min(max(int(code), info.min), info.max))
    return dequantize, quantizers, code_type, tuple(codes)


def _become_identity(node: onnx.NodeProto, source: str) -> None:
    node.op_type = "Identity"
    node.domain = ""
    del node.attribute[:]
    node.input[:] = [source]


def _set_types(graph: onnx.GraphProto, types: dict[str, int]) -> None:
    """Record each value of `types` as a tensor of its element type (the clamps' results
    were float); later passes that cut the graph read its types from here."""
    kept = [value for value in graph.value_info if value.name not in types]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    graph.value_info.extend(helper.make_tensor_value_info(n, t, None) for n, t in types.items())
