"""Only the shapes the input declared. Import infers a shape for every value, which the
passes read; written out, those inferred entries add a tenth to a small model's file and
tell onnxruntime nothing it does not infer itself."""

from __future__ import annotations

import onnx

from rcompile.passes import PassResult


def declared_names(model: onnx.ModelProto) -> frozenset[str]:
    """The values whose shapes `model`'s main graph declares (`value_info`), before import."""
    return frozenset(value.name for value in model.graph.value_info)


def keep_declared_shapes(model: onnx.ModelProto, declared: frozenset[str]) -> PassResult:
    """`model` with the main graph's `value_info` cut to the entries named in `declared`."""
    graph = model.graph
    kept = [value for value in graph.value_info if value.name in declared]
    if len(kept) == len(graph.value_info):
        return PassResult(model, False)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    del result.graph.value_info[:]
    result.graph.value_info.extend(kept)
    return PassResult(result, True)
