"""Keep onnxruntime's blocked (NCHWc) layout from taking a global average pool.

At ORT_ENABLE_ALL onnxruntime runs every 4-D float GlobalAveragePool whose channels are a
multiple of its block (8 with AVX2, 16 with AVX-512) in its NCHWc layout, which sums each
channel in another order than the plain kernel the reference runs: on inputs off the codes'
grid (after a hard-swish, say) the means differ by an ulp, and the next quantizer turns
that into other codes (the PP-OCR classifier, 5,309 of 6,400 pooled values on an AVX2 CPU).
The plain kernel gives the same bits for a 3-D tensor (N, C, H*W), measured on every shape
tried, and the blocked layout takes only 4-D ones, so each such pool reads its input
flattened and its (N, C, 1) mean is reshaped back.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from rcompile.graph import Names
from rcompile.passes import PassResult


def plain_pools(model: onnx.ModelProto) -> PassResult:
    """`model` with every GlobalAveragePool over a 4-D input computed over a 3-D one."""
    ranks = _ranks(model)
    pools = [
        node
        for node in model.graph.node
        if node.op_type == "GlobalAveragePool" and ranks.get(node.input[0]) == 4
    ]
    if not pools:
        return PassResult(model, False)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    names = Names(graph)
    flat = names.fresh("pool_flat_shape")
    pooled = names.fresh("pool_mean_shape")
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([0, 0, -1], np.int64), flat),
            numpy_helper.from_array(np.array([0, 0, 1, 1], np.int64), pooled),
        ]
    )
    rewritten = {node.name for node in pools}
    nodes = []
    for node in graph.node:
        if node.name not in rewritten:
            nodes.append(node)
            continue
        flattened = names.fresh(f"{node.input[0]}_flat")
        mean = names.fresh(f"{node.output[0]}_flat")
        nodes += [
            helper.make_node(
                "Reshape", [node.input[0], flat], [flattened], name=names.fresh(f"{node.name}_flat")
            ),
            helper.make_node("GlobalAveragePool", [flattened], [mean], name=node.name),
            helper.make_node(
                "Reshape", [mean, pooled], [node.output[0]], name=names.fresh(f"{node.name}_back")
            ),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    return PassResult(result, True)


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """The rank of every value of the main graph that shape inference can tell."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    return {
        value.name: len(value.type.tensor_type.shape.dim)
        for value in (*graph.input, *graph.value_info, *graph.output)
        if value.type.tensor_type.HasField("shape")
    }
