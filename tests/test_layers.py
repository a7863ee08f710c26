"""find_layers: which nodes are Ristretto layers, their inputs, parameters, output-channel
axis, and the clamp a following Relu or Clip puts on their output."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from conftest import make_model, tensor
from onnx import TensorProto, helper, numpy_helper

from rcompile.passes.layers import Layer, find_layers

F32 = np.float32


def constant(name: str, shape: tuple[int, ...], seed: int = 0) -> onnx.TensorProto:
    values = np.random.default_rng(seed).normal(size=shape).astype(F32)
    return numpy_helper.from_array(values, name)


def scalar(name: str, value: float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, dtype=F32), name)


def result(name: str, rank: int) -> onnx.ValueInfoProto:
    """An output of known rank whose dimensions shape inference fills in."""
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [None] * rank)


def conv_model(*after: onnx.NodeProto, outputs=("y",), extra=(), rank=4) -> onnx.ModelProto:
    """x (N, 2, 5, 5) -> Conv (3 output channels, 3x3, with bias) -> c -> `after` nodes."""
    conv = helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv")
    return make_model(
        [conv, *after],
        [tensor("x", ["N", 2, 5, 5])],
        [result(name, rank) for name in outputs],
        [constant("w", (3, 2, 3, 3)), constant("b", (3,), seed=1), *extra],
    )


def only_layer(model: onnx.ModelProto) -> Layer:
    layers = find_layers(model)
    assert len(layers) == 1
    return layers[0]


def test_conv_layer_has_its_input_weight_bias_and_output_channel_axis():
    model = conv_model(helper.make_node("Relu", ["c"], ["y"], name="relu"))
    layer = only_layer(model)
    assert (layer.node, layer.op_type) == ("conv", "Conv")
    assert (layer.inputs, layer.weight, layer.bias, layer.output) == (("x",), "w", "b", "c")
    assert layer.weight_axis == 0


def test_conv_without_bias_has_no_bias():
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv")
    model = make_model(
        [conv], [tensor("x", ["N", 2, 5, 5])], [result("y", 4)], [constant("w", (3, 2, 3, 3))]
    )
    assert only_layer(model).bias is None


def test_relu_after_a_layer_bounds_its_output_below_by_zero():
    model = conv_model(helper.make_node("Relu", ["c"], ["y"], name="relu"))
    assert only_layer(model).output_bounds == (0.0, math.inf)


def test_constant_clip_after_a_layer_bounds_its_output_to_the_clip_interval():
    clip = helper.make_node("Clip", ["c", "low", "high"], ["y"], name="clip")
    model = conv_model(clip, extra=[scalar("low", 0.0), scalar("high", 6.0)])
    assert only_layer(model).output_bounds == (0.0, 6.0)


def test_clip_with_only_a_maximum_leaves_the_output_unbounded_below():
    clip = helper.make_node("Clip", ["c", "", "high"], ["y"], name="clip")
    model = conv_model(clip, extra=[scalar("high", 6.0)])
    assert only_layer(model).output_bounds == (-math.inf, 6.0)


def test_clip_bound_from_a_constant_node_counts():
    high = helper.make_node(
        "Constant", [], ["high"], name="high", value=numpy_helper.from_array(F32(4.0))
    )
    clip = helper.make_node("Clip", ["c", "low", "high"], ["y"], name="clip")
    model = conv_model(high, clip, extra=[scalar("low", -1.0)])
    assert only_layer(model).output_bounds == (-1.0, 4.0)


def test_clip_with_a_computed_bound_gives_no_bounds():
    high = helper.make_node("ReduceMax", ["x"], ["high"], name="max", keepdims=0)
    clip = helper.make_node("Clip", ["c", "low", "high"], ["y"], name="clip")
    model = conv_model(high, clip, extra=[scalar("low", 0.0)])
    assert only_layer(model).output_bounds is None


def test_output_consumed_twice_has_no_bounds():
    relu = helper.make_node("Relu", ["c"], ["y"], name="relu")
    sigmoid = helper.make_node("Sigmoid", ["c"], ["z"], name="sigmoid")
    model = conv_model(relu, sigmoid, outputs=("y", "z"))
    assert only_layer(model).output_bounds is None


def test_output_read_by_relu_and_graph_output_has_no_bounds():
    relu = helper.make_node("Relu", ["c"], ["y"], name="relu")
    model = conv_model(relu, outputs=("y", "c"))
    assert only_layer(model).output_bounds is None


def test_output_followed_by_another_op_has_no_bounds():
    model = conv_model(helper.make_node("Sigmoid", ["c"], ["y"], name="sigmoid"))
    assert only_layer(model).output_bounds is None


def gemm_model(trans_b: int, trans_a: int = 0) -> onnx.ModelProto:
    weight_shape = (3, 4) if trans_b else (4, 3)
    gemm = helper.make_node(
        "Gemm", ["x", "w", "b"], ["y"], name="gemm", transA=trans_a, transB=trans_b
    )
    x_shape = [4, "N"] if trans_a else ["N", 4]
    return make_model(
        [gemm],
        [tensor("x", x_shape)],
        [result("y", 2)],
        [constant("w", weight_shape), constant("b", (3,), seed=1)],
    )


@pytest.mark.parametrize(("trans_b", "axis"), [(0, 1), (1, 0)])
def test_gemm_output_channel_axis_follows_trans_b(trans_b, axis):
    layer = only_layer(gemm_model(trans_b))
    assert (layer.op_type, layer.inputs, layer.weight, layer.bias) == ("Gemm", ("x",), "w", "b")
    assert layer.weight_axis == axis


def test_gemm_with_trans_a_is_not_a_layer():
    assert find_layers(gemm_model(trans_b=0, trans_a=1)) == []


def test_matmul_with_a_constant_weight_is_a_layer_with_the_last_axis_as_channels():
    matmul = helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")
    model = make_model([matmul], [tensor("x", ["N", 4])], [result("y", 2)], [constant("w", (4, 3))])
    layer = only_layer(model)
    assert (layer.op_type, layer.inputs, layer.weight, layer.bias) == ("MatMul", ("x",), "w", None)
    assert layer.weight_axis == -1


def test_matmul_of_two_activations_quantizes_both_inputs_and_has_no_weight():
    matmul = helper.make_node("MatMul", ["a", "b"], ["y"], name="matmul")
    model = make_model([matmul], [tensor("a", ["N", 4]), tensor("b", [4, 3])], [result("y", 2)])
    layer = only_layer(model)
    assert (layer.inputs, layer.weight, layer.bias, layer.weight_axis) == (
        ("a", "b"),
        None,
        None,
        None,
    )


def test_conv_whose_weight_is_not_constant_is_not_a_layer():
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv")
    model = make_model(
        [conv], [tensor("x", ["N", 2, 5, 5]), tensor("w", [3, 2, 3, 3])], [result("y", 4)]
    )
    assert find_layers(model) == []


def test_conv_whose_weight_comes_from_a_constant_node_is_a_layer():
    weight = helper.make_node("Constant", [], ["w"], name="w", value=constant("w", (3, 2, 3, 3)))
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv")
    model = make_model([weight, conv], [tensor("x", ["N", 2, 5, 5])], [result("y", 4)])
    assert only_layer(model).weight == "w"


def test_lrn_is_a_layer_without_parameters():
    lrn = helper.make_node("LRN", ["x"], ["y"], name="lrn", size=3)
    model = make_model([lrn], [tensor("x", ["N", 2, 5, 5])], [result("y", 4)])
    layer = only_layer(model)
    assert (layer.op_type, layer.inputs, layer.weight, layer.weight_axis) == (
        "LRN",
        ("x",),
        None,
        None,
    )


def test_layers_come_in_graph_order_and_other_ops_are_left_out():
    relu = helper.make_node("Relu", ["c"], ["r"], name="relu")
    flatten = helper.make_node("Flatten", ["r"], ["f"], name="flatten")
    gemm = helper.make_node("Gemm", ["f", "g"], ["y"], name="gemm", transB=1)
    model = conv_model(relu, flatten, gemm, extra=[constant("g", (5, 27), seed=2)], rank=2)
    assert [(layer.node, layer.op_type) for layer in find_layers(model)] == [
        ("conv", "Conv"),
        ("gemm", "Gemm"),
    ]
