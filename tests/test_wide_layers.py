"""Layers float32 cannot sum exactly are summed in float64 and rounded once (sim)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_lowering import assert_bit_true

import rcompile
from rcompile.api import load_source
from rcompile.exporter import finish_model
from rcompile.formats import DFP
from rcompile.lowering import lower
from rcompile.onnx_ops import OPSET
from rcompile.plan import Accumulator, PlanOptions
from rcompile.reference import Reference

F32 = np.float32


def strided_network(dead_channel: bool = False) -> onnx.ModelProto:
    """A grouped, strided, dilated, padded convolution, a 1x1 one and a Gemm; with
    `dead_channel`, the first convolution's first channel has near-zero weights and a bias
    of 3, so its bias sits on a grid too fine for float32 to hold it."""
    rng = np.random.default_rng(7)
    parameters = {
        "w1": rng.standard_normal((6, 2, 3, 3)),
        "b1": rng.standard_normal(6),
        "w2": rng.standard_normal((4, 6, 1, 1)),
        "w3": rng.standard_normal((4 * 4 * 5, 5)),
        "b3": rng.standard_normal(5),
    }
    nodes = [
        helper.make_node(
            "Conv",
            ["x", "w1", "b1"],
            ["c1"],
            "conv1",
            group=2,
            strides=[2, 1],
            pads=[1, 2, 1, 0],
            dilations=[1, 2],
        ),
        helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], "conv2"),
        helper.make_node("Flatten", ["c2"], ["f"], "flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], "fc"),
    ]
    if dead_channel:
        parameters["w1"][0] *= 1e-6
        parameters["b1"][0] = 3.0
    initializers = [numpy_helper.from_array(v.astype(F32), k) for k, v in parameters.items()]
    graph = helper.make_graph(
        nodes,
        "strided",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    x = np.random.default_rng(8).standard_normal((16, 4, 8, 7)).astype(F32) * 4
    path = tmp_path_factory.mktemp("wide") / "calib.npz"
    np.savez(path, x=x)
    return {"path": path, "feeds": {"x": x}}


@pytest.mark.parametrize("scheme", ["dfp16", "fp8e4m3", "dfp:w16a8", "fp16"])
def test_wide_layers_are_the_reference_at_every_optimisation_level(scheme, data):
    result = rcompile.compile(strided_network(), scheme, data["path"])
    ops = [node.op_type for node in result.model.graph.node]
    assert any(op.startswith(("WideConv_", "WideGemm_")) for op in ops), ops
    assert_bit_true(result.model, data["feeds"])


def test_layers_float32_sums_exactly_stay_float32_convolutions(data):
    result = rcompile.compile(strided_network(), "dfp8", data["path"])
    ops = [node.op_type for node in result.model.graph.node]
    layers = [n for n in result.model.graph.node if not n.input[-1].startswith("rounding_constant")]
    assert [n.op_type for n in layers].count("Conv") == 2 and "Gemm" in ops
    assert not any(op.startswith("Wide") for op in ops)
    assert_bit_true(result.model, data["feeds"])


def test_the_planner_keeps_biases_within_24_bits_so_layers_stay_float32(data):
    """A near-zero channel's fine grid would put its bias of 3 past 2**24 steps; the planner
    coarsens that channel's (all but zero) weights instead."""
    result = rcompile.compile(strided_network(dead_channel=True), "dfp8", data["path"])
    assert not any(node.op_type.startswith("Wide") for node in result.model.graph.node)
    assert_bit_true(result.model, data["feeds"])


def test_a_bias_float32_cannot_hold_is_added_in_float64_to_float32_products(data):
    """With the near-zero channel on its own fine grid (pinned, as an override could), the
    bias takes 3 * 2**25 steps there: the products stay float32, the bias is added in
    float64."""
    model = strided_network(dead_channel=True)
    plan = rcompile.compile(model, "dfp8", data["path"]).plan
    conv = plan.layers[0]
    fine = 25 - conv.inputs[0].fl  # product grid 2**-25 for channel 0
    weights = (DFP(8, fine), *conv.weights[1:])
    bias = (DFP(32, conv.inputs[0].fl + fine), *conv.bias[1:])
    plan = replace(plan, layers=(replace(conv, weights=weights, bias=bias), *plan.layers[1:]))
    lowered = finish_model(
        lower(load_source(model).model, plan).model, {"rcompile.plan": plan.as_dict()}
    )
    calls = [node for node in lowered.graph.node if node.op_type.startswith("WideConv_")]
    assert len(calls) == 1
    body = next(f for f in lowered.functions if f.name == calls[0].op_type)
    assert [node.op_type for node in body.node][:2] == ["Conv", "Cast"]
    assert_bit_true(lowered, data["feeds"])


@pytest.mark.parametrize("overflow", ["wrap", "saturate"])
def test_a_narrow_accumulator_overflows_as_the_reference_at_every_level(overflow, data):
    narrow = PlanOptions(accumulator=Accumulator(12, overflow))
    result = rcompile.compile(strided_network(), "dfp8", data["path"], options=narrow)
    wide = rcompile.compile(strided_network(), "dfp8", data["path"])
    assert {layer.accumulator for layer in result.plan.layers} == {Accumulator(12, overflow)}
    assert_bit_true(result.model, data["feeds"])
    narrow_out = Reference(result.model).run(data["feeds"])[0]
    assert not np.array_equal(narrow_out, Reference(wide.model).run(data["feeds"])[0])
