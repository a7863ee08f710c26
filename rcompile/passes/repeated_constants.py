"""Convolution and BatchNormalization parameters that repeat one value, made at load time.
The blocked rounding of a sim model adds its constants (a shift of 1.5 * 2**23 steps) with
1x1 depthwise convolutions, whose weights (1) and biases are stored once per channel: a
fifth of a small network's file. A `ConstantOfShape` node holds the value once; onnxruntime
folds it back into the same initializer at every optimisation level above none, where its
blocked kernels want one."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from rcompile.graph import bodies, output_names, values_read
from rcompile.passes import PassResult

# Below this many values a vector costs fewer bytes than the node and its shape.
MIN_VALUES = 32
PARAMETER_INPUTS = {"BatchNormalization": range(1, 5), "Conv": range(1, 3)}


def repeated_constants(model: onnx.ModelProto) -> PassResult:
    """`model` with each main-graph initializer of at least MIN_VALUES equal values, read
    only as Conv or BatchNormalization parameters, made by a ConstantOfShape node of the
    same output name, placed first; one int64 shape per shape."""
    graph = model.graph
    repeated = _repeated(graph)
    if not repeated:
        return PassResult(model, False)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    kept = [tensor for tensor in graph.initializer if tensor.name not in repeated]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    shapes: dict[tuple[int, ...], str] = {}
    nodes = []
    for name, (dims, value) in repeated.items():
        if dims not in shapes:
            shapes[dims] = f"{name}_shape"
            graph.initializer.append(
                numpy_helper.from_array(np.array(dims, np.int64), shapes[dims])
            )
        nodes.append(
            helper.make_node(
                "ConstantOfShape", [shapes[dims]], [name], name=f"{name}_fill", value=value
            )
        )
    later = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *later])
    return PassResult(result, True)


def _repeated(graph: onnx.GraphProto) -> dict[str, tuple[tuple[int, ...], onnx.TensorProto]]:
    """Name -> (dims, one-value tensor) of the initializers this pass replaces."""
    exposed = output_names(graph) | {value.name for value in graph.input}
    parameters, other_reads = set(), set()
    for node in graph.node:
        for position, name in enumerate(node.input):
            is_parameter = position in PARAMETER_INPUTS.get(node.op_type, ())
            (parameters if is_parameter else other_reads).add(name)
        for body in bodies(node):
            other_reads.update(name for inner in body.node for name in values_read(inner))
    found = {}
    for tensor in graph.initializer:
        name = tensor.name
        if name in exposed or name in other_reads or name not in parameters:
            continue
        values = numpy_helper.to_array(tensor).reshape(-1)
        if not tensor.dims or values.size < MIN_VALUES:
            continue
        if (values.view(np.uint8).reshape(values.size, -1) == values[:1].view(np.uint8)).all():
            found[name] = (tuple(tensor.dims), numpy_helper.from_array(values[:1], "value"))
    return found
