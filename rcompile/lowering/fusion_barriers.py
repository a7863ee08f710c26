"""Keep onnxruntime from fusing float ops around a layer normalisation into kernels that round
otherwise.

At ORT_ENABLE_EXTENDED onnxruntime fuses a residual Add into the LayerNormalization that
reads it (SkipLayerNormalization, a contrib kernel that sums and normalises in its own
order); PP-OCRv4's recogniser at dfp8 then differs between levels in 19,875 of 530,000
outputs. The fusion needs the Add's output to go straight into the normalisation (fused at
BASIC, or still decomposed as ReduceMean and Sub), so a `Max(s, s)`, exactly `s` for every
value and NaN, placed between them, leaves every level the same ops.
"""

from __future__ import annotations

import onnx
from onnx import helper

from rcompile.graph import Names, consumers
from rcompile.passes import PassResult

# What reads a value that is normalised: the fused op, or the decomposed form's first ops.
_NORMALISES = frozenset(("LayerNormalization", "ReduceMean", "SimplifiedLayerNormalization"))


def fusion_barriers(model: onnx.ModelProto) -> PassResult:
    """`model` with a `Max(s, s)` between every Add and the normalisation that reads it."""
    graph = model.graph
    readers = consumers(graph)
    sums = [
        node
        for node in graph.node
        if node.op_type == "Add"
        and any(user.op_type in _NORMALISES for user in readers.get(node.output[0], []))
    ]
    if not sums:
        return PassResult(model, False)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    names = Names(graph)
    by_name = {node.name: node for node in graph.node}
    barriers: dict[str, onnx.NodeProto] = {}
    for add in sums:
        total = add.output[0]
        kept = names.fresh(f"{total}_unfused")
        barriers[add.name] = helper.make_node(
            "Max", [total, total], [kept], name=names.fresh(f"{add.name}_barrier")
        )
        for user in readers[total]:
            node = by_name[user.name]
            node.input[:] = [kept if name == total else name for name in node.input]
    nodes = []
    for node in graph.node:
        nodes.append(node)
        if node.name in barriers:
            nodes.append(barriers[node.name])
    del graph.node[:]
    graph.node.extend(nodes)
    return PassResult(result, True)
