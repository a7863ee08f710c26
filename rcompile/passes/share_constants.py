"""One initializer for each distinct constant. A lowering makes many equal small constants
(the blocked rounding's per-channel vectors, one set per quantizer; the steps of equal
formats); a file holds each once."""

from __future__ import annotations

import onnx

from rcompile.graph import output_names, subgraphs
from rcompile.passes import PassResult


def share_constants(model: onnx.ModelProto) -> PassResult:
    """`model` with initializers equal in type, shape and bytes merged into the first, the
    nodes that read the others (in subgraphs too) reading it. Graph outputs and inputs keep
    their own."""
    graph = model.graph
    exposed = output_names(graph) | {value.name for value in graph.input}
    first: dict[tuple, str] = {}
    renamed: dict[str, str] = {}
    for tensor in graph.initializer:
        if tensor.name in exposed or tensor.data_location == onnx.TensorProto.EXTERNAL:
            continue
        key = (tensor.data_type, tuple(tensor.dims), _content(tensor))
        if key in first:
            renamed[tensor.name] = first[key]
        else:
            first[key] = tensor.name
    if not renamed:
        return PassResult(model, False)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    kept = [t for t in result.graph.initializer if t.name not in renamed]
    del result.graph.initializer[:]
    result.graph.initializer.extend(kept)
    _rename_reads(result.graph, renamed)
    return PassResult(result, True)


def _content(tensor: onnx.TensorProto) -> bytes:
    """The tensor's values and type as bytes, however they are stored."""
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    copy.name = ""
    copy.doc_string = ""
    return copy.SerializeToString(deterministic=True)


def _rename_reads(graph: onnx.GraphProto, renamed: dict[str, str]) -> None:
    for scope in [graph, *subgraphs(graph)]:
        for node in scope.node:
            node.input[:] = [renamed.get(name, name) for name in node.input]
