"""Rewrite: quantizers around each layer, weights quantized offline and stored as integers,
the bias on the accumulator grid or added after the layer, and onnxruntime computing exactly
what a NumPy model of the fixed-point datapath computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import rcompile
from rcompile.formats import DFP
from rcompile.graph import producers
from rcompile.lowering.rewrite import rewrite
from rcompile.onnx_ops import DOMAIN, IR_VERSION, OPSET
from rcompile.passes.calibrate import (
    Statistics,
    activation_ranges,
    activation_tensors,
    weight_ranges,
)
from rcompile.passes.layers import find_layers
from rcompile.passes.store_weights import quantize_values
from rcompile.plan import Override, Plan, PlanOptions, make_plan
from rcompile.scheme import FixedRule, parse_rule, parse_scheme

F32 = np.float32
SHAPE = (2, 2, 5, 5)
ON_GRID_BIAS = F32([0.5, -1.25, 0.75])
# Bits finer than the grid of input times weight products (2**-9 with these inputs).
OFF_GRID_BIAS = F32([0.5 + 2**-13, -1.25, 0.75 - 2**-14])
OPTIMIZATIONS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "enabled": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def weights() -> np.ndarray:
    """Small integers, every channel reaching 3: products with 8-bit inputs and their sums are
    exact in float32 in any order, so every backend must agree bit for bit."""
    values = np.random.default_rng(0).integers(-3, 4, size=(3, 2, 3, 3)).astype(F32)
    values[:, 0, 0, 0] = 3
    return values


def conv_model(bias: np.ndarray = ON_GRID_BIAS) -> onnx.ModelProto:
    """x (N, 2, 5, 5) -> Conv (3 channels, 3x3, pad 1, bias) -> y."""
    conv = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [conv],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 5, 5])],
        [numpy_helper.from_array(weights(), "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def inputs(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=1.5, size=SHAPE).astype(F32)


def plan_for(model: onnx.ModelProto, options=None, overrides=()) -> Plan:
    layers = find_layers(model)
    observed = activation_ranges(
        model, activation_tensors(layers), [{"x": inputs(seed=1)}, {"x": inputs(seed=2)}]
    )
    statistics = Statistics(observed.ranges, weight_ranges(model, layers), observed.samples)
    return make_plan(layers, statistics, parse_scheme("dfp8"), options, overrides)


def run(model: onnx.ModelProto, x: np.ndarray, optimization: str) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = OPTIMIZATIONS[optimization]
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, {"x": x})[0]


def reference(x: np.ndarray, bias: np.ndarray, plan: Plan) -> np.ndarray:
    """The fixed-point datapath in NumPy: quantize the input, convolve with the quantized
    weights (float64, exact here), add the quantized bias, quantize the output."""
    (layer,) = plan.layers
    xq = layer.inputs[0].quantize(x).astype(np.float64)
    wq = quantize_values(weights(), layer.weights, 0).astype(np.float64)
    bq = quantize_values(bias, layer.bias, 0).astype(np.float64)
    padded = np.pad(xq, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))
    accumulated = np.einsum("ncijkl,ockl->noij", windows, wq) + bq.reshape(1, -1, 1, 1)
    return layer.output.quantize(accumulated.astype(F32))


@pytest.fixture(scope="module")
def on_grid() -> tuple[onnx.ModelProto, Plan, onnx.ModelProto]:
    model = conv_model()
    plan = plan_for(model)
    return model, plan, rewrite(model, plan).model


@pytest.fixture(scope="module")
def off_grid() -> tuple[Plan, onnx.ModelProto]:
    model = conv_model(OFF_GRID_BIAS)
    override = Override("conv", bias=FixedRule(DFP(16, 14)))
    plan = plan_for(model, PlanOptions(bias="weights"), (override,))
    return plan, rewrite(model, plan).model


def node(model: onnx.ModelProto, op_type: str) -> onnx.NodeProto:
    (found,) = [n for n in model.graph.node if n.op_type == op_type]
    return found


def test_conv_input_comes_from_a_dfp_quantizer_of_x(on_grid):
    _, _, result = on_grid
    source = producers(result.graph)[node(result, "Conv").input[0]]
    assert (source.op_type, source.domain, list(source.input)) == ("QuantizeDFP", DOMAIN, ["x"])


def test_conv_output_goes_through_a_dfp_quantizer_to_y(on_grid):
    _, _, result = on_grid
    quantizer = producers(result.graph)["y"]
    assert (quantizer.op_type, quantizer.domain) == ("QuantizeDFP", DOMAIN)
    assert list(quantizer.input) == [node(result, "Conv").output[0]]


def test_weights_are_dequantized_int8_codes(on_grid):
    _, _, result = on_grid
    dequantize = producers(result.graph)[node(result, "Conv").input[1]]
    assert dequantize.op_type == "DequantizeLinear"
    codes = next(t for t in result.graph.initializer if t.name == dequantize.input[0])
    assert codes.data_type == TensorProto.INT8


def test_no_fp32_weight_is_left(on_grid):
    _, _, result = on_grid
    floats = [t for t in result.graph.initializer if t.data_type == TensorProto.FLOAT]
    assert not {t.name for t in result.graph.initializer} & {"w", "b"}
    assert all(numpy_helper.to_array(t).size < weights().size for t in floats)


def test_bias_on_the_accumulator_grid_is_int32_inside_the_layer(on_grid):
    _, _, result = on_grid
    dequantize = producers(result.graph)[node(result, "Conv").input[2]]
    codes = next(t for t in result.graph.initializer if t.name == dequantize.input[0])
    assert codes.data_type == TensorProto.INT32
    assert not [n for n in result.graph.node if n.op_type == "Add"]


def test_rewritten_model_passes_the_full_checker(on_grid):
    _, _, result = on_grid
    onnx.checker.check_model(result, full_check=True)


@pytest.mark.parametrize("optimization", OPTIMIZATIONS)
def test_output_equals_the_numpy_datapath_bit_for_bit(on_grid, optimization):
    _, plan, result = on_grid
    x = inputs(seed=3)
    actual = run(result, x, optimization)
    expected = reference(x, ON_GRID_BIAS, plan)
    np.testing.assert_array_equal(actual.view(np.uint32), expected.view(np.uint32))


def test_input_model_is_not_mutated():
    model = conv_model()
    before = model.SerializeToString(deterministic=True)
    rewrite(model, plan_for(model))
    assert model.SerializeToString(deterministic=True) == before


def test_rewrite_says_it_modified_the_model(on_grid):
    model, plan, _ = on_grid
    assert rewrite(model, plan).modified


def test_empty_plan_changes_nothing():
    model = conv_model()
    result = rewrite(model, Plan("dfp8", ()))
    assert not result.modified
    assert result.model.SerializeToString(deterministic=True) == model.SerializeToString(
        deterministic=True
    )


def test_bias_off_the_accumulator_grid_is_added_after_the_layer(off_grid):
    _, result = off_grid
    conv, add = node(result, "Conv"), node(result, "Add")
    assert len(conv.input) == 2
    assert conv.output[0] in add.input
    assert list(producers(result.graph)["y"].input) == list(add.output)


@pytest.mark.parametrize("optimization", OPTIMIZATIONS)
def test_bias_added_after_the_layer_gives_the_exact_result(off_grid, optimization):
    plan, result = off_grid
    x = inputs(seed=4)
    expected = reference(x, OFF_GRID_BIAS, plan)
    actual = run(result, x, optimization)
    np.testing.assert_array_equal(actual.view(np.uint32), expected.view(np.uint32))


def test_off_grid_bias_model_passes_the_full_checker(off_grid):
    _, result = off_grid
    onnx.checker.check_model(result, full_check=True)


def two_convs_model() -> onnx.ModelProto:
    """x feeds two Convs with the same weights: x gets the same format for both."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], name="left"),
        helper.make_node("Conv", ["x", "w"], ["z"], name="right"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 3, 3, 3]) for name in "yz"],
        [numpy_helper.from_array(weights(), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def test_tensor_feeding_two_layers_in_one_format_gets_one_quantizer():
    model = two_convs_model()
    result = rewrite(model, plan_for(model)).model
    quantizers = [n for n in result.graph.node if n.op_type == "QuantizeDFP" and "x" in n.input]
    assert len(quantizers) == 1
    convs = [n for n in result.graph.node if n.op_type == "Conv"]
    assert {conv.input[0] for conv in convs} == {quantizers[0].output[0]}


def test_fp32_weights_stay_fp32_under_onnxruntime_optimizations():
    """onnxruntime's WeightBiasQuantization quantizes the float weights of a layer fed by a
    DequantizeLinear; rcompile's input quantizers for such layers must not give it the chance."""
    root = Path(__file__).resolve().parents[1] / "models"
    result = rcompile.compile(
        root / "lenet5.onnx",
        "dfp8",
        root / "mnist_calib.npz",
        overrides=(Override("*", weights=parse_rule("fp32")),),
    )
    images = np.load(root / "mnist_test.npz")["input"][:64]
    model = result.model.SerializeToString()
    default = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    guarded = ort.InferenceSession(
        model, providers=["CPUExecutionProvider"], disabled_optimizers=["WeightBiasQuantization"]
    )
    np.testing.assert_array_equal(
        default.run(None, {"input": images})[0], guarded.run(None, {"input": images})[0]
    )


def padded_conv_model(pad_value: float = 0.0, pad_feeds_output: bool = False) -> onnx.ModelProto:
    """x -> Pad (constant `pad_value`, one pixel each side) -> Conv (no pads, bias) -> y; the
    Pad's result is also a graph output when `pad_feeds_output`."""
    nodes = [
        helper.make_node("Pad", ["x", "pads", "value"], ["padded"], name="pad"),
        helper.make_node("Conv", ["padded", "w", "b"], ["y"], name="conv"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 5, 5])]
    if pad_feeds_output:
        outputs.append(helper.make_tensor_value_info("padded", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])],
        outputs,
        [
            numpy_helper.from_array(weights(), "w"),
            numpy_helper.from_array(ON_GRID_BIAS, "b"),
            numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
            numpy_helper.from_array(F32(pad_value), "value"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


@pytest.fixture(scope="module")
def padded() -> tuple[Plan, onnx.ModelProto]:
    model = padded_conv_model()
    plan = plan_for(model)
    return plan, rewrite(model, plan).model


def test_zero_pad_moves_behind_the_input_quantizer(padded):
    _, result = padded
    made_by = producers(result.graph)
    (pad,) = [n for n in result.graph.node if n.op_type == "Pad"]
    assert made_by[pad.input[0]].op_type == "QuantizeDFP"
    assert made_by[pad.input[0]].input[0] == "x"
    assert node(result, "Conv").input[0] == pad.output[0]


@pytest.mark.parametrize("optimization", OPTIMIZATIONS)
def test_moved_pad_gives_the_datapath_bit_for_bit(padded, optimization):
    plan, result = padded
    x = inputs(seed=7)
    np.testing.assert_array_equal(run(result, x, optimization), reference(x, ON_GRID_BIAS, plan))


def test_moved_pad_folds_into_the_fused_integer_convolution(padded, tmp_path):
    """The point of the move: onnxruntime folds a Pad that feeds a convolution into it."""
    _, result = padded
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(result.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert "Pad" not in optimized and "QLinearConv" in optimized


def test_pad_with_a_nonzero_value_stays_before_the_quantizer():
    model = padded_conv_model(pad_value=0.5)
    result = rewrite(model, plan_for(model)).model
    (pad,) = [n for n in result.graph.node if n.op_type == "Pad"]
    assert pad.input[0] == "x"
    assert producers(result.graph)[node(result, "Conv").input[0]].op_type == "QuantizeDFP"


def test_pad_with_other_users_is_kept_beside_the_moved_copy():
    model = padded_conv_model(pad_feeds_output=True)
    result = rewrite(model, plan_for(model)).model
    pads = {n.input[0]: n for n in result.graph.node if n.op_type == "Pad"}
    assert pads["x"].output[0] == "padded"
    assert len(pads) == 2
    x = inputs(seed=3)
    padded_output = ort.InferenceSession(
        result.SerializeToString(), providers=["CPUExecutionProvider"]
    ).run(["padded"], {"x": x})[0]
    np.testing.assert_array_equal(padded_output, np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))))
