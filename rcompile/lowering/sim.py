"""The passes that make a rewritten model `sim`: bit-true at every onnxruntime optimisation
level. onnxruntime fuses QuantizeLinear/DequantizeLinear patterns into integer kernels whose
results depend on the CPU (on AVX2 without VNNI its u8s8 kernels sum pairs of products in
saturating 16-bit lanes) and whose rounding of ties can differ from QuantizeLinear's; with
no such pattern left, it computes the float ops as written."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rcompile.graph import initializers, per_axis, remove_initializers
from rcompile.onnx_ops import DOMAIN, dfp, format_of, functions_for
from rcompile.onnx_ops.dfp import NAME as DFP_NAME
from rcompile.passes import PassResult


def arithmetic_quantizers(model: onnx.ModelProto) -> PassResult:
    """Every DFP quantizer in its arithmetic body (Mul, Round, Clip, Mul: the same values as
    the QuantizeLinear/DequantizeLinear pair, which onnxruntime would fuse with the layer)."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    changed = False
    for node in result.graph.node:
        if node.domain == DOMAIN and node.op_type == DFP_NAME:
            arithmetic = dfp.overload(format_of(node), "arithmetic")
            changed |= node.overload != arithmetic
            node.overload = arithmetic
    if changed:
        quantizers = [node for node in result.graph.node if node.domain == DOMAIN]
        del result.functions[:]
        result.functions.extend(functions_for(quantizers))
    return PassResult(result, changed)


def dequantize_by_arithmetic(model: onnx.ModelProto) -> PassResult:
    """Stored parameters dequantized by Cast and Mul instead of DequantizeLinear: the same
    exact values (codes times a power of two), which onnxruntime folds into float constants
    for its fastest float kernels instead of fusing them into integer ones. int4 codes keep
    their DequantizeLinear (onnxruntime 1.20 cannot Cast int4); with no DequantizeLinear on
    the layer's input, onnxruntime has no integer kernel to fuse them into."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    constants = initializers(graph)
    nodes, replaced = [], set()
    for node in graph.node:
        dequantizes = node.op_type == "DequantizeLinear"
        if not dequantizes or not all(i in constants for i in node.input) or _int4(node, graph):
            nodes.append(node)
            continue
        nodes.extend(_cast_and_scale(node, constants, graph))
        replaced.update(node.input[1:])
    if len(nodes) == len(graph.node) and not replaced:
        return PassResult(result, False)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    remove_initializers(graph, {name for name in replaced if name not in used})
    return PassResult(result, True)


def _int4(node: onnx.NodeProto, graph: onnx.GraphProto) -> bool:
    codes = next(t for t in graph.initializer if t.name == node.input[0])
    return codes.data_type in (TensorProto.INT4, TensorProto.UINT4)


def _cast_and_scale(node, constants, graph) -> list[onnx.NodeProto]:
    codes = constants[node.input[0]]
    scale = per_axis(node, constants[node.input[1]].astype(np.float32), codes.ndim)
    zero = constants[node.input[2]] if len(node.input) > 2 and node.input[2] else None
    if zero is not None and np.any(zero.astype(np.int64) != 0):
        raise ValueError(f"{node.name}: stored parameters have a nonzero zero point")
    scale_name = f"{node.output[0]}_step"
    graph.initializer.append(numpy_helper.from_array(scale, scale_name))
    floats = f"{node.output[0]}_floats"
    return [
        helper.make_node(
            "Cast", [node.input[0]], [floats], name=f"{node.name}_cast", to=TensorProto.FLOAT
        ),
        helper.make_node("Mul", [floats, scale_name], [node.output[0]], name=f"{node.name}_scale"),
    ]
