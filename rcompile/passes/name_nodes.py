"""Give every node a unique name: plans, overrides and reports refer to layers by name."""

from __future__ import annotations

import onnx

from rcompile.passes import PassResult


def name_nodes(model: onnx.ModelProto) -> PassResult:
    """Name unnamed nodes `<OpType>_<index>` and rename duplicates; keep unique names."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    seen: set[str] = set()
    modified = False
    for index, node in enumerate(result.graph.node):
        name = node.name or f"{node.op_type}_{index}"
        while name in seen:
            name = f"{name}_{index}"
        if name != node.name:
            node.name = name
            modified = True
        seen.add(name)
    return PassResult(result, modified)
