"""Per-sample tensor shapes: shape inference with every dynamic batch dimension set to 1, so
the report can count MACs and buffer sizes for one input."""

from __future__ import annotations

import onnx

from rcompile.importer import graph_inputs


def per_sample_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Static shapes of every value whose shape inference can resolve, batch size 1."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.value_info[:]
    for value in graph_inputs(probe):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = 1
    inferred = onnx.shape_inference.infer_shapes(probe, data_prop=True)
    shapes: dict[str, tuple[int, ...]] = {}
    for value in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    for tensor in inferred.graph.initializer:
        shapes[tensor.name] = tuple(tensor.dims)
    return shapes
